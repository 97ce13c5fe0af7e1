"""ShapeDrag evaluation: MD and background fidelity of drag edits on the trained ShapeDrag model.

    scripts/evaluate --shapedrag [--n 12] [--seed 0] [--methods none,copy,ad,...,ad-rigid,...,dual]
    scripts/evaluate --shapedrag --task all|drag,... [--n 4] [--seed 0] [--out DIR]   every task against its
                                                                       ground truth (task_eval.py)

Everything runs in this process through the real ComfyUI host and the pack's own nodes
(tests/harness.py load_host / run_node): the samples are written in DragBench format into the
host's input folder and read back with "Load DragBench Sample"; the checkpoint is loaded by
CheckpointLoaderSimple, the prompt encoded by CLIPTextEncode, the image by VAEEncode. Every method
shares one "Inversion with Attention Capture" per sample (DDIM, `--steps` steps of the `--scheduler`
schedule, inverted to `--edit-step`, no CFG, keys and values captured), then finishes with
ComfyUI's KSamplerAdvanced from the edit step (euler = the DDIM step, add_noise off) and VAEDecode:

  none            no edit: the inversion round trip (what the model and the VAE alone preserve)
  copy            naive latent copy-paste: the user mask's latent cells copied by the drag vector
                  (rounded to cells) at the edit step; the source cells are left as they were
  ad              AttentionDrag: AutoMask (tau, reference 'mean', union with the user mask),
                  SemanticMove, AttentionInterpolate (fill 'attention'), KV consistency
  ad-user         AttentionDrag without AutoMask (the user mask)          -- paper: w/o AMG
  ad-nearest      AttentionDrag with nearest fill instead of attention    -- paper: w/o SBI
  ad-user-nearest without both                                            -- paper: baseline
  ad-nokv, ad-user-nokv   ad / ad-user without KV consistency in the regeneration
  ad-rigid, ad-rigid-user, ad-rigid-nearest, ad-rigid-nokv
                  the same with SemanticMove's 'rigid' movement (every mask cell moves by the whole drag)
                  instead of the paper's Eq. 6 fraction A[cell] / A[handle] of it
  dual            VersaFusion's dual-branch drag: PNI Invert (`--dual-steps` DDIM steps of ddim_uniform, the
                  prompt as source and target) + Dual-Branch Guided Sampler (task drag, the sample's points
                  and mask, the node's defaults; `--dual-energy` sets energy_scale)

Scoring: bench/shapedrag/score.py (MD from the dragged object's colour segmentation; PSNR/SSIM
outside the edited region). Writes every result PNG and results.json under --out.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "tests"))
sys.path.insert(0, os.path.join(REPO, "bench"))
sys.path.insert(0, os.path.join(REPO, "scripts"))

import harness  # noqa: E402
from shapedrag import dataset, score  # noqa: E402

CKPT = "dragfusion_shapedrag.safetensors"
WEIGHTS = os.path.join(REPO, "models", CKPT)
INPUT_SUBDIR = "dragfusion_shapedrag"
METHODS = {
    "none": "no edit (inversion round trip)",
    "copy": "latent copy-paste",
    "ad": "AttentionDrag (AutoMask + attention fill)",
    "ad-user": "AttentionDrag w/o AutoMask",
    "ad-nearest": "AttentionDrag w/o semantic interpolation",
    "ad-user-nearest": "AttentionDrag w/o both",
    "ad-nokv": "AttentionDrag w/o KV consistency",
    "ad-user-nokv": "AttentionDrag w/o AutoMask, w/o KV",
    "ad-rigid": "AttentionDrag, rigid movement",
    "ad-rigid-user": "AttentionDrag, rigid, w/o AutoMask",
    "ad-rigid-nearest": "AttentionDrag, rigid, w/o semantic interp.",
    "ad-rigid-nokv": "AttentionDrag, rigid, w/o KV consistency",
    "dual": "dual-branch drag (PNI + VersaFusion)",
}


def core(nodes, name, **kw):
    cls = nodes.NODE_CLASS_MAPPINGS[name]
    return getattr(cls(), cls.FUNCTION)(**kw)


def ensure_checkpoint(ckpt_dir: str | None = None) -> str:
    """The host's checkpoint, assembled from models/ + the tiny checkpoint when missing or older."""
    ckpt_dir = ckpt_dir or os.path.join(harness.COMFYUI_DIR, "models", "checkpoints")
    out = os.path.join(ckpt_dir, CKPT)
    if not os.path.isfile(WEIGHTS):
        raise FileNotFoundError(f"no trained ShapeDrag weights at {WEIGHTS}; run scripts/train_shapedrag.py")
    if os.path.isfile(out) and os.path.getmtime(out) >= os.path.getmtime(WEIGHTS):
        return out
    tiny = os.path.join(ckpt_dir, harness.TINY_CKPT)
    if not os.path.isfile(tiny):
        raise FileNotFoundError(f"no tiny checkpoint {tiny}; run scripts/setup")
    import install_shapedrag
    install_shapedrag.assemble(WEIGHTS, tiny, out)
    return out


def write_samples(n: int, seed: int, size: int = 128) -> list[str]:
    """Samples in ComfyUI's input folder -> their names relative to it."""
    import folder_paths
    base = os.path.join(folder_paths.get_input_directory(), INPUT_SUBDIR, f"seed{seed}")
    names = []
    for i in range(n):
        folder = os.path.join(base, f"shape_{i:04d}")
        dataset.write_sample(dataset.make_sample(seed, i, size), folder)   # cheap; never stale
        names.append(f"{INPUT_SUBDIR}/seed{seed}/shape_{i:04d}")
    return names


class Evaluator:
    def __init__(self, ckpt: str = CKPT, steps: int = 10, edit_step: int = 5, scheduler: str = "simple",
                 tau: float = 2.0, reference: str = "mean", dual_steps: int = 20, layers: str = "latent resolution",
                 dual_energy: float | None = None):
        self.nodes = harness.load_host()
        self.steps, self.edit_step, self.scheduler = steps, edit_step, scheduler
        self.dual_steps, self.layers, self.dual_energy = dual_steps, layers, dual_energy
        self.tau, self.reference = tau, reference
        self.model, self.clip, self.vae = core(self.nodes, "CheckpointLoaderSimple", ckpt_name=ckpt)[:3]
        self._prompts = {}

    def cond(self, prompt: str):
        if prompt not in self._prompts:
            pos = core(self.nodes, "CLIPTextEncode", clip=self.clip, text=prompt)[0]
            neg = core(self.nodes, "ConditioningZeroOut", conditioning=pos)[0]
            self._prompts[prompt] = (pos, neg)
        return self._prompts[prompt]

    def regenerate(self, model, latent, pos, neg):
        out = core(self.nodes, "KSamplerAdvanced", model=model, add_noise="disable", noise_seed=0, steps=self.steps,
                   cfg=1.0, sampler_name="euler", scheduler=self.scheduler, positive=pos, negative=neg,
                   latent_image=latent, start_at_step=self.edit_step, end_at_step=10000,
                   return_with_leftover_noise="disable")[0]
        return core(self.nodes, "VAEDecode", samples=out, vae=self.vae)[0]

    def dual_drag(self, latent, pos, points, mask):
        """VersaFusion's drag through the pack's nodes: PNI Invert, then the Dual-Branch Guided Sampler."""
        run = harness.run_node
        inversion = run("DragFusionPNIInvert", model=self.model, latent=latent, source=pos, steps=self.dual_steps,
                        cfg=1.0, lam=0.02, prox="L1", eta=0.1, guidance_until=self.dual_steps,
                        scheduler="ddim_uniform").result[0]
        energy = {} if self.dual_energy is None else {"energy_scale": self.dual_energy}
        out = run("DragFusionDualBranchGuidedSampler", model=self.model, inversion=inversion, target=pos, task="drag",
                  sampler_name="euler", points=points, mask=mask, **energy).result[0]   # the node's defaults otherwise
        return core(self.nodes, "VAEDecode", samples=out, vae=self.vae)[0]

    def run_sample(self, sample: str, methods) -> dict:
        """-> {method: (image float [H, W, 3], seconds)}; the inversion is shared and timed once."""
        run = harness.run_node
        image, points, mask, prompt = run("DragFusionLoadDragBenchSample", sample=sample, size="original").result
        pos, neg = self.cond(prompt)
        t0 = time.perf_counter()
        latent = core(self.nodes, "VAEEncode", pixels=image, vae=self.vae)[0]
        z, cap = run("DragFusionInvertCapture", model=self.model, latent=latent, steps=self.steps,
                     edit_step=self.edit_step, scheduler=self.scheduler, cfg=1.0, layers=self.layers,
                     capture_values=True, positive=pos, points=points).result
        t_inv = time.perf_counter() - t0
        out = {}
        for m in methods:
            t1 = time.perf_counter()
            if m == "dual":   # its own inversion, timed with it
                img = self.dual_drag(latent, pos, points, mask)
                out[m] = (img[0].float().cpu().numpy(), time.perf_counter() - t1)
                continue
            if m == "none":
                img = self.regenerate(self.model, z, pos, neg)
            elif m == "copy":
                img = self.regenerate(self.model, copy_paste(z, points, mask), pos, neg)
            elif m.startswith("ad"):
                automask = "-user" not in m
                fill = "nearest" if "nearest" in m else "attention"
                if automask:
                    edit_mask = run("DragFusionAutoMask", capture=cap, points=points, tau=self.tau,
                                    reference=self.reference, mask=mask, mask_mode="union").result[0]
                else:
                    edit_mask = mask
                z2, blank = run("DragFusionSemanticMove", capture=cap, latent=z, points=points, mask=edit_mask,
                                movement_mode="rigid" if "-rigid" in m else "attention ratio (Eq. 6)").result
                z2 = run("DragFusionAttentionInterpolate", capture=cap, latent=z2, mask=blank, fill=fill,
                         mode="drag", seed=0).result[0]
                model = run("DragFusionKVConsistency", model=self.model, capture=cap, enabled="-nokv" not in m,
                            strength=1.0).result[0]
                img = self.regenerate(model, z2, pos, neg)
            else:
                raise ValueError(f"unknown method {m!r}; choose from {list(METHODS)}")
            out[m] = (img[0].float().cpu().numpy(), time.perf_counter() - t1 + t_inv)
        return out


def copy_paste(latent: dict, points, mask) -> dict:
    """Naive copy-paste at the edit step: mask cells (any of their 8x8 pixels) shifted by the drag."""
    (hx, hy), (tx, ty) = points.pairs[0]
    dx, dy = int(round((tx - hx) / 8)), int(round((ty - hy) / 8))
    m = np.asarray(mask.reshape(mask.shape[-2:]).float().cpu().numpy() > 0.5)
    return latent_copy(latent, [(m, (dx, dy, 1.0))])


def latent_copy(latent: dict, moves: list) -> dict:
    """Naive latent copy-paste: for each (pixel mask, (dx, dy, scale) in cells), the mask's cells (any of their
    8x8 pixels) are written at their place scaled about the mask's box centre and shifted (nearest cell); the
    source cells are left as they were."""
    import torch
    z = latent["samples"]
    h, w = z.shape[-2:]
    out = z.clone()
    for mask, (dx, dy, scale) in moves:
        m = torch.from_numpy(np.asarray(mask, bool).reshape(h, 8, w, 8).any(axis=(1, 3)))
        ys, xs = torch.nonzero(m, as_tuple=True)
        if len(xs) == 0:
            continue
        cx, cy = (float(xs.min()) + float(xs.max()) + 1) / 2, (float(ys.min()) + float(ys.max()) + 1) / 2
        gy, gx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
        qx = torch.floor(cx + (gx - cx - dx) / scale).long()       # the source cell each cell reads
        qy = torch.floor(cy + (gy - cy - dy) / scale).long()
        ok = (qx >= 0) & (qx < w) & (qy >= 0) & (qy < h)
        take = ok & m[qy.clamp(0, h - 1), qx.clamp(0, w - 1)]
        ty, tx = torch.nonzero(take, as_tuple=True)
        out[:, :, ty, tx] = z[:, :, qy[ty, tx], qx[ty, tx]]
    return {**{k: v for k, v in latent.items() if k != "noise_mask"}, "samples": out}


def evaluate(n: int = 12, seed: int = 0, methods=tuple(METHODS), out_dir: str | None = None,
             progress: bool = True, **kw) -> dict:
    ensure_checkpoint()
    ev = Evaluator(**kw)
    import comfy.utils
    bars = comfy.utils.PROGRESS_BAR_ENABLED
    comfy.utils.set_progress_bar_enabled(False)    # one bar over the samples, not one per sampler call
    try:
        return _evaluate(ev, n, seed, methods, out_dir, progress)
    finally:
        comfy.utils.set_progress_bar_enabled(bars)


def _evaluate(ev, n, seed, methods, out_dir, progress) -> dict:
    import folder_paths
    names = write_samples(n, seed)
    rows = {m: [] for m in methods}
    grid = []
    try:
        from tqdm import tqdm
        it = tqdm(names, desc="ShapeDrag", disable=not progress)
    except ImportError:
        it = names
    for name in it:
        folder = os.path.join(folder_paths.get_input_directory(), name)
        meta = dataset.load_meta(folder)
        from PIL import Image
        original = np.asarray(Image.open(os.path.join(folder, "original_image.png")).convert("RGB"), np.float32) / 255
        import torch
        with torch.inference_mode():
            results = ev.run_sample(name, methods)
        if len(grid) < 8:
            grid.append([marked(original, meta)] + [marked(img, meta) for img, _ in results.values()])
        for m, (img, secs) in results.items():
            s = score.score(img, original, meta)
            s.update(sample=name, seconds=secs)
            rows[m].append(s)
            if out_dir:
                os.makedirs(os.path.join(out_dir, m), exist_ok=True)
                Image.fromarray((np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)).save(
                    os.path.join(out_dir, m, os.path.basename(name) + ".png"))
    if out_dir and grid:
        save_grid(grid, os.path.join(out_dir, "grid.png"))
    summary = {m: summarize(r) for m, r in rows.items()}
    report = dict(n=n, seed=seed, checkpoint=CKPT, steps=ev.steps, edit_step=ev.edit_step, scheduler=ev.scheduler,
                  tau=ev.tau, reference=ev.reference, summary=summary, samples=rows)
    if out_dir:
        with open(os.path.join(out_dir, "results.json"), "w") as f:
            json.dump(report, f, indent=1, default=float)
    return report


def marked(img: np.ndarray, meta: dict) -> np.ndarray:
    """A copy with the handle (red) and target (blue) as small squares."""
    out = np.clip(img, 0, 1).copy()
    for (x, y), c in ((meta["handle"], (1, 0, 0)), (meta["target"], (0, 0, 1))):
        out[max(0, y - 2):y + 3, max(0, x - 2):x + 3] = c
    return out


def save_grid(rows: list, path: str):
    """Rows of equal-size images (original, then one per method) -> one PNG."""
    from PIL import Image
    pad = 2
    h, w = rows[0][0].shape[:2]
    cols = len(rows[0])
    canvas = np.ones((len(rows) * (h + pad), cols * (w + pad), 3), np.float32)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            canvas[i * (h + pad):i * (h + pad) + h, j * (w + pad):j * (w + pad) + w] = img
    Image.fromarray((canvas * 255 + 0.5).astype(np.uint8)).save(path)


def summarize(r: list) -> dict:
    def mean(k):
        return float(np.mean([x[k] for x in r])) if r else math.nan
    return dict(md=mean("md"), md0=mean("md0"), iou=mean("iou"), psnr=mean("psnr"), ssim=mean("ssim"),
                lost=int(sum(x["lost"] for x in r)), seconds=mean("seconds"), n=len(r))


def table(report: dict) -> str:
    lines = [f"ShapeDrag: {report['n']} samples (seed {report['seed']}), {report['checkpoint']}, "
             f"{report['steps']} steps, edit at {report['edit_step']}, scheduler {report['scheduler']}, tau {report['tau']}",
             f"{'method':<44} {'MD px':>7} {'IoU':>6} {'PSNR dB':>8} {'SSIM':>6} {'lost':>5} {'s/edit':>7}"]
    for m, s in report["summary"].items():
        lines.append(f"{METHODS.get(m, m):<44} {s['md']:7.2f} {s['iou']:6.3f} {s['psnr']:8.2f} {s['ssim']:6.3f} "
                     f"{s['lost']:5d} {s['seconds']:7.2f}")
    first = next(iter(report["summary"].values()))
    lines.append(f"(MD of the drag itself, |target - handle|: {first['md0']:.2f} px; PSNR/SSIM outside the edited region)")
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a == "--task" or a.startswith("--task=") for a in argv):   # ShapeDrag-GT: every task against its GT
        from shapedrag import task_eval
        return task_eval.main(argv)
    ap = argparse.ArgumentParser(prog="scripts/evaluate --shapedrag", description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=12, help="number of ShapeDrag samples (default 12)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma list from {list(METHODS)}")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--edit-step", type=int, default=5)
    ap.add_argument("--scheduler", default="simple")
    ap.add_argument("--tau", type=float, default=2.0)
    ap.add_argument("--reference", default="mean", choices=["handle", "mean"])
    ap.add_argument("--layers", default="latent resolution", help="the capture's layer preset")
    ap.add_argument("--dual-energy", type=float, default=None,
                    help="energy_scale of the dual-branch drag (default: the node's, 0.25 normalised)")
    ap.add_argument("--dual-steps", type=int, default=20, help="DDIM steps of the dual-branch drag (PNI + sampler)")
    ap.add_argument("--out", default=os.path.join(REPO, "out", "shapedrag"))
    a = ap.parse_args(argv)
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        ap.error(f"unknown method(s) {bad}; choose from {list(METHODS)}")
    if not os.path.isfile(WEIGHTS):
        print(f"evaluate --shapedrag: no trained weights at {WEIGHTS}; run scripts/train_shapedrag.py", file=sys.stderr)
        return 2
    t0 = time.time()
    report = evaluate(a.n, a.seed, methods, a.out, steps=a.steps, edit_step=a.edit_step, scheduler=a.scheduler,
                      tau=a.tau, reference=a.reference, dual_steps=a.dual_steps, layers=a.layers, dual_energy=a.dual_energy)
    print(table(report))
    print(f"results: {a.out}/results.json and one PNG per method and sample ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
