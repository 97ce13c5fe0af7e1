"""AttentionDrag benchmark, in the real ComfyUI host (in-process), side by side in one run:

  P2 = full edit / plain sampling, same model and step count     (goal <= 1.25x)
  P3 = full edit with 10 pairs / full edit with 1 pair           (goal <= 1.10x)

Full edit = Inversion with Attention Capture (to step 5 of 10, q/k/v) + AutoMask + Semantic Move +
Attention Interpolate + KV Consistency + KSamplerAdvanced from step 5; plain sampling =
KSamplerAdvanced over all 10 steps from an empty latent. Latent to latent (no VAE) at 512 x 512,
LCM schedule (ModelSamplingDiscrete 'lcm', scheduler 'simple', euler), cfg 1. After one warm-up of
each, the three runs are interleaved (plain, 1 pair, 10 pairs; --repeat rounds), so that a load that
comes and goes on a shared machine hits them alike; the ratios are the medians of the per-round ratios.

    .venv/bin/python bench/attentiondrag.py [--ckpt NAME] [--size 512] [--repeat 5]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))
import harness  # noqa: E402
from _common import interleaved  # noqa: E402

harness.import_pack()

SAMPLE = "dragfusion_data/dragbench-dev/animals/JH_2023-09-14-1820-16"
STEPS, EDIT = 10, 5


def legacy(nodes, name, **kw):
    cls = nodes.NODE_CLASS_MAPPINGS[name]
    return getattr(cls(), cls.FUNCTION)(**kw)


def ten_pairs(points):
    """The sample's own pair plus nine more spread over the image, each dragged 24 px."""
    from dragfusion.guidance.drag_points import DragPoints
    w, h = points.width, points.height
    pairs = [points.pairs[0]]
    for i in range(9):
        x, y = w * (0.2 + 0.3 * (i % 3)), h * (0.2 + 0.3 * (i // 3))
        pairs.append(((x, y), (x + 24 * (-1) ** i, y + 16)))
    return DragPoints(w, h, tuple(pairs)).validate()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", default=harness.TINY_CKPT, help="checkpoint in the host's models/checkpoints")
    ap.add_argument("--size", type=int, default=512, help="image side (the sample is scaled to fit)")
    ap.add_argument("--repeat", type=int, default=5, help="interleaved rounds")
    ap.add_argument("--json", default=None, help="also write the P2/P3 rows (bench/_common.py format) to this file")
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs of each variant first (the model is loaded beforehand anyway)")
    a = ap.parse_args()

    nodes = harness.load_host()
    harness.ensure_data_link()
    import comfy.model_management as mm
    import torch
    run = harness.run_node
    model, clip, vae = legacy(nodes, "CheckpointLoaderSimple", ckpt_name=a.ckpt)[:3]
    (model,) = legacy(nodes, "ModelSamplingDiscrete", model=model, sampling="lcm", zsnr=False)
    image, points, sample_mask, prompt = run("DragFusionLoadDragBenchSample", sample=SAMPLE,
                                             size=f"fit {a.size} (multiple of 8)").result
    (latent,) = legacy(nodes, "VAEEncode", pixels=image, vae=vae)
    (pos,) = legacy(nodes, "CLIPTextEncode", clip=clip, text=prompt)
    (neg,) = legacy(nodes, "ConditioningZeroOut", conditioning=pos)
    (empty,) = legacy(nodes, "EmptyLatentImage", width=image.shape[2], height=image.shape[1], batch_size=1)

    def ksampler(m, lat, start, add_noise):
        return legacy(nodes, "KSamplerAdvanced", model=m, add_noise=add_noise, noise_seed=0, steps=STEPS, cfg=1.0,
                      sampler_name="euler", scheduler="simple", positive=pos, negative=neg, latent_image=lat,
                      start_at_step=start, end_at_step=10000, return_with_leftover_noise="disable")[0]

    def plain():
        ksampler(model, empty, 0, "enable")

    def edit(pts, record=None):
        t = [time.perf_counter()]
        zl, cap = run("DragFusionInvertCapture", model=model, latent=latent, steps=STEPS, edit_step=EDIT,
                      scheduler="simple", cfg=1.0, capture_values=True, positive=pos).result
        t.append(time.perf_counter())
        mask = run("DragFusionAutoMask", capture=cap, points=pts, tau=4.0, reference="mean",
                      mask=sample_mask, mask_mode="union").result[0]
        moved, blank = run("DragFusionSemanticMove", capture=cap, latent=zl, points=pts, mask=mask).result
        (filled,) = run("DragFusionAttentionInterpolate", capture=cap, latent=moved, mask=blank).result
        (kv,) = run("DragFusionKVConsistency", model=model, capture=cap, enabled=True, strength=1.0).result
        t.append(time.perf_counter())
        ksampler(kv, filled, EDIT, "disable")
        mm.soft_empty_cache()
        t.append(time.perf_counter())
        if record is not None:
            record.append((t[1] - t[0], t[2] - t[1], t[3] - t[2], int(blank.sum().item() / 64)))

    many = ten_pairs(points)
    mm.load_models_gpu([model])
    with torch.inference_mode():
        r1, r10 = [], []
        rounds = [[t for t, _ in r] for r in interleaved([plain, lambda: edit(points, r1), lambda: edit(many, r10)],
                                                          a.repeat, a.warmup)]
    all_plain, all_one, all_ten = ([r[i] for r in rounds] for i in range(3))
    t_plain, t_one, t_ten = (statistics.median(x) for x in (all_plain, all_one, all_ten))

    h, w = image.shape[1], image.shape[2]
    print(f"\nAttentionDrag bench: {a.ckpt}, {w}x{h}, {STEPS} steps, edit at {EDIT}, LCM/simple/euler, cfg 1, "
          f"device {mm.get_torch_device()}, {a.repeat} interleaved rounds after {a.warmup} warm-up")
    print(f"{'run':<34}{'median s':>10}   all runs")
    for name, t, al in (("plain sampling (10 steps)", t_plain, all_plain),
                        ("full edit, 1 pair", t_one, all_one), ("full edit, 10 pairs", t_ten, all_ten)):
        print(f"{name:<34}{t:>10.3f}   {' '.join(f'{x:.3f}' for x in al)}")
    for name, rec in (("1 pair", r1), ("10 pairs", r10)):
        inv, mid, regen, blanks = (statistics.median(x[i] for x in rec[a.warmup:] or rec) for i in range(4))
        print(f"  {name}: inversion+capture {inv:.3f} s, mask+move+interpolate+kv {mid:.3f} s, "
              f"regeneration {regen:.3f} s, blank cells {blanks:.0f}")
    p2 = statistics.median(r[1] / r[0] for r in rounds)
    p3 = statistics.median(r[2] / r[1] for r in rounds)
    print(f"  P2 per round: {' '.join(f'{r[1] / r[0]:.3f}' for r in rounds)}; "
          f"11 UNet calls (6 inversion+capture, 5 regeneration) against 10 is 1.100x by count")
    print(f"\n{'metric':<40}{'value':>8}{'goal':>10}")
    print(f"{'P2 full edit / plain sampling':<40}{p2:>7.3f}x{'<= 1.25x':>10}  {'ok' if p2 <= 1.25 else 'MISSED'}")
    print(f"{'P3 10 pairs / 1 pair':<40}{p3:>7.3f}x{'<= 1.10x':>10}  {'ok' if p3 <= 1.10 else 'MISSED'}")
    if a.json:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import _common
        _common.dump_rows(a.json, [
            _common.row("P2", "AttentionDrag full edit / plain sampling (10 steps)", p2, 1.25, seconds=t_one,
                        note=f"plain {t_plain:.2f} s"),
            _common.row("P3", "AttentionDrag edit, 10 pairs / 1 pair", p3, 1.10, seconds=t_ten),
        ])


if __name__ == "__main__":
    main()
