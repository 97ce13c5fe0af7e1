"""Benchmark P4: dual-branch edit / plain CFG sampling with the same model, sampler and steps, and the
peak-memory ratio, side by side in one run, in the real ComfyUI host (in-process).

    .venv/bin/python bench/dual_branch.py                      # tiny checkpoint, 256 px, 20 steps, drag
    .venv/bin/python bench/dual_branch.py --ckpt v1-5-pruned-emaonly.safetensors --size 512 --steps 50

Rows (--repeat repetitions after a warm-up; each repetition runs the rows back to back and the ratios are the
median of the per-repetition ratios, so that load changes on a shared machine hit both sides alike):
  plain   SamplerCustomAdvanced + CFGGuider (target prompt, source prompt as negative, cfg) from PNI Invert's
          z_T with the same sampler and sigmas -- the baseline
  dual    Dual-Branch Guided Sampler (task --task, energy on the first --fraction of the steps, KV replacement)
  dual0   the same with energy_scale 0 (no backward pass): the cost of the batched branches alone
P4 = dual / plain (goal <= 1.8); memory ratio = peak(dual) / peak(plain) (CUDA max_memory_allocated, or on
CPU the peak RSS delta while the row runs). The inversion (shared by all rows) is not timed.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from _common import interleaved, print_table, row, write_results  # noqa: E402

SAMPLE = "dragbench-dev/animals/JH_2023-09-14-1820-16"


def load(args):
    from _common import load_sample
    _, model, enc, latent = load_sample(args.ckpt, args.size, SAMPLE)  # inference mode, as the executor
    src = enc(args.prompt)
    with torch.inference_mode():  # the gradient pass must cope with inference weights
        inversion, z_T, sigmas = harness.run_node(
            "DragFusionPNIInvert", model=model, latent=latent, source=src, steps=args.steps, cfg=args.cfg, lam=0.02,
            prox="L1", eta=0.1, guidance_until=args.steps, scheduler="ddim_uniform").result
    return model, src, inversion, z_T, sigmas


def plain(model, src, z_T, sigmas, args):
    import comfy.samplers
    import comfy_extras.nodes_custom_sampler as ncs
    g = comfy.samplers.CFGGuider(model)
    g.set_conds(src, src)
    g.set_cfg(args.cfg)
    return harness.run_node("SamplerCustomAdvanced", noise=ncs.Noise_EmptyNoise(), guider=g,
                            sampler=comfy.samplers.sampler_object(args.sampler), sigmas=sigmas,
                            latent_image=z_T).result[0]["samples"]


LAST = {}


def dual(model, src, inversion, args, energy_scale):
    """The Dual-Branch Guided Sampler's own code path (build_guider + run_guider of the loaded node module)."""
    host = harness.load_host()
    mod = sys.modules[host.NODE_CLASS_MAPPINGS["DragFusionDualBranchGuidedSampler"].__module__]
    from dragfusion.guidance.drag_points import DragPoints
    s = args.size
    extra = {}
    if args.task == "drag":
        extra["points"] = DragPoints(s, s, (((0.4 * s, 0.5 * s), (0.6 * s, 0.5 * s)),))
    elif args.task == "move":
        m = torch.zeros(1, s, s)
        m[:, s // 4:s // 2, s // 4:s // 2] = 1
        extra.update(mask=m, offset_x=float(max(8, s // 8 // 8 * 8)))
    elif args.task == "outpaint":
        extra["pad"] = (0, max(8, s // 8 // 8 * 8), 0, 0)
    settings = mod.DualBranchSettings()                                  # the node's defaults
    if args.fraction is not None:
        settings = dataclasses.replace(settings, guidance_fraction=args.fraction)
    if energy_scale is not None:
        settings = dataclasses.replace(settings, energy_scale=energy_scale)
    g = mod.build_guider(mod.SAMPLER_NODE, model, inversion, src, args.task, settings, **extra)
    out = mod.run_guider(g, args.sampler)["samples"]
    if settings.energy_scale:
        LAST["saved_bytes"] = g.saved_bytes
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", default=harness.TINY_CKPT)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--cfg", type=float, default=5.0)
    ap.add_argument("--sampler", default="euler")
    ap.add_argument("--task", default="drag", choices=("drag", "move", "outpaint"))
    ap.add_argument("--fraction", type=float, default=None,
                    help="guided fraction of the steps (default: the node's, 0.8; DragonDiffusion: 30 of 50)")
    ap.add_argument("--prompt", default="a photo of a dog")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: leave as is)")
    ap.add_argument("--out", default=os.path.join(REPO, "bench", "results", "dual_branch"))
    ap.add_argument("--json", default="", help="also write the rows (a JSON list) here, for bench/run_all.py")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, src, inversion, z_T, sigmas = load(args)
    import comfy.model_management
    device = str(comfy.model_management.get_torch_device())
    print(f"device {device}, torch threads {torch.get_num_threads()}, {args.ckpt}, {args.size}x{args.size}, "
          f"{args.steps} steps, sampler {args.sampler}, cfg {args.cfg}, task {args.task}, guided fraction "
          f"{args.fraction if args.fraction is not None else 'the node default'}")
    fns = {"plain": lambda: plain(model, src, z_T, sigmas, args),
           "dual": lambda: dual(model, src, inversion, args, None),
           "dual0": lambda: dual(model, src, inversion, args, 0.0)}
    with torch.inference_mode():
        rounds = interleaved(list(fns.values()), args.repeat)
    res = {k: [r[j] for r in rounds] for j, k in enumerate(fns)}
    # paired ratios: each repetition's rows ran back to back, so a change of machine load hits both alike
    mid = lambda xs: sorted(xs)[len(xs) // 2]
    ratio = {k: mid([res[k][j][0] / res["plain"][j][0] for j in range(args.repeat)]) for k in ("dual", "dual0")}
    med = {k: sorted(v, key=lambda x: x[0])[len(v) // 2] for k, v in res.items()}
    t_plain, m_plain = med["plain"]
    t_dual, m_dual = med["dual"]
    t_dual0, m_dual0 = med["dual0"]
    saved_mb = LAST.get("saved_bytes", 0) / 2**20
    if m_dual.cuda:
        mem_ratio, mem_note = m_dual.peak_bytes / max(m_plain.peak_bytes, 1), "cuda max_memory_allocated (absolute)"
    else:  # RSS deltas of a warm process are mostly allocator noise: compare the absolute peaks
        mem_ratio, mem_note = m_dual.peak_bytes / max(m_plain.peak_bytes, 1), "CPU: peak RSS of the process (absolute)"
    rows = [
        row("P4", f"dual-branch {args.task} / plain CFG ({args.steps} steps, {args.sampler})", ratio["dual"], 1.8,
            seconds=t_dual, mem=m_dual),
        row("P4m", "peak memory dual-branch / plain CFG", mem_ratio, 4.0, mem=m_dual,
            note=f"{mem_note}; kept for backward per guided step: {saved_mb:.1f} MB"),
        row("P4b", "dual-branch without energy (branches + KV only) / plain", ratio["dual0"], 2.5,
            seconds=t_dual0, mem=m_dual0),
        row("base", "plain CFG sampling (seconds)", t_plain, float("inf"), unit="s", seconds=t_plain, mem=m_plain),
    ]
    print_table(rows, "\nP4: dual-branch editing cost (same model, sampler, sigmas)")
    print(f"peak memory: dual {m_dual.peak_bytes / 2**20:.0f} MB, plain {m_plain.peak_bytes / 2**20:.0f} MB ({mem_note}); "
          f"activations kept for one guided step's backward pass: {saved_mb:.1f} MB")
    meta = {"device": device, "ckpt": args.ckpt, "size": args.size, "steps": args.steps, "sampler": args.sampler,
            "task": args.task, "fraction": args.fraction, "threads": torch.get_num_threads(), "repeat": args.repeat, "saved_for_backward_mb": round(saved_mb, 2),
            "all_seconds": {k: [round(t, 3) for t, _ in v] for k, v in res.items()}}
    j, p = write_results(rows, args.out, meta)
    print(f"\nwrote {j} and {p}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump([r for r in rows if r["id"] != "base"], f, indent=1)


if __name__ == "__main__":
    main()
