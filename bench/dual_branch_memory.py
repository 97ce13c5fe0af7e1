"""Peak memory of one dual-branch edit on SD1.5's full-size UNet (issue #19 item 8, the memory part).

    .venv/bin/python bench/dual_branch_memory.py                       # CPU, fp32, 512x512, 2 steps (1 guided)
    .venv/bin/python bench/dual_branch_memory.py --dtype fp16 --device cuda --json mem.json   # on a GPU

Goal: <= 8 GB in fp16 for one 512x512 dual-branch edit (FastDrag 5.85 GB, GoodDrag < 13 GB).

What runs, in the real ComfyUI host loaded in-process (tests/harness.py), nothing stubbed:
- the model: ComfyUI's own SD1.5 model (comfy.supported_models.SD15 through model_detection, from the UNet
  configuration ComfyUI detects in a v1-5 checkpoint, bench/capture_layout.py's SD15_UNET) wrapped in a
  ModelPatcher, with random weights (no file on disk: normal std 0.02, norm weights 1, biases 0), built and
  filled under torch.inference_mode as ComfyUI's executor loads a checkpoint;
- the inputs, without PNI Invert (its full-size UNet calls are not what is measured): an INVERSION with
  PNI Invert's schedule for --steps (the node's own ``schedule``, scheduler ddim_uniform), a random
  trajectory shaped like an inversion's (x*_t = x0 + sigma_t * eps, model space, [1, 4, size/8, size/8]),
  a random CLIP-L-shaped source CONDITIONING [[randn(1, 77, 768), {}]] and PNI Invert's defaults for cfg,
  lambda, prox, eta and guidance_until (read from its schema);
- the edit: the Dual-Branch Guided Sampler's own code (build_guider + run_guider of the loaded node
  module), task drag with one point pair, sampler euler, DualBranchSettings() = the node's defaults
  (guidance_fraction 0.6: with 2 steps the first is a guided step with the energy's backward pass),
  under torch.inference_mode as the executor runs nodes. The target is the source prompt (as a drag
  edit uses it): rows gud, gen_pos (+ feat on guided steps); --other-target adds gen_neg.

What is measured:
- CUDA: torch.cuda.max_memory_allocated over the run (reset just before it) -- absolute (weights included)
  and over the allocation just before the run;
- CPU: the process's resident set (RSS) sampled every 50 ms in a thread during the run -- the absolute
  peak and the peak minus the RSS just before the run ("run peak over baseline"); also VmHWM (the
  process's lifetime high-water mark) for reference;
- the model's parameter bytes, the activations kept for one guided step's backward pass (the guider's
  saved_bytes, deduplicated by storage: with ComfyUI's cast copies of the weights included), the wall
  time and memory per step (each predict_noise call is one euler step).
For a CPU fp32 run an fp16 ESTIMATE is printed (weights bytes / 2 + run peak over baseline / 2), labelled
as such: a real fp16 figure needs a GPU (--dtype fp16 --device cuda).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import threading
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from _common import vm_hwm  # noqa: E402
from capture_layout import SD15_UNET  # noqa: E402

GOAL_GB = 8.0
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
GB = 1e9


def load_host(device: str):
    """The real host in-process. harness.load_host() runs ComfyUI with --cpu; for a CUDA run the model
    management module is imported first with --cpu off (it reads the flag once, at import)."""
    if device.startswith("cuda"):
        if harness.COMFYUI_DIR not in sys.path:
            sys.path.insert(0, harness.COMFYUI_DIR)
        from comfy.cli_args import args
        args.cpu = False
        import comfy.model_management  # noqa: F401
    return harness.load_host()


def random_sd15(device: torch.device, dtype: torch.dtype, seed: int):
    """ComfyUI's SD1.5 model (BaseModel + ModelPatcher) with random weights; nothing read from disk."""
    import comfy.model_detection
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models
    config = comfy.model_detection.model_config_from_unet_config(dict(SD15_UNET))
    if not isinstance(config, comfy.supported_models.SD15):
        raise SystemExit(f"ComfyUI detects {type(config).__name__} from SD15_UNET, not SD15")
    config.set_inference_dtype(dtype, mm.unet_manual_cast(dtype, device, config.supported_inference_dtypes))
    gen = torch.Generator(device="cpu").manual_seed(seed)
    with torch.inference_mode():   # as the executor loads a checkpoint: the weights are inference tensors
        model = config.get_model({}, "", device=device)
        for name, p in model.named_parameters():   # ComfyUI's ops leave weights uninitialised (torch.empty)
            if name.endswith("bias"):
                p.zero_()
            elif p.ndim == 1:       # GroupNorm / LayerNorm scales
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
        for b in model.buffers():
            if b.is_floating_point() and not torch.isfinite(b).all():
                raise SystemExit("a buffer of the model is not finite")
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=mm.unet_offload_device())
    n_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    n_params = sum(p.numel() for p in model.parameters())
    return patcher, n_params, n_bytes


def inversion_inputs(nodes, model, args):
    """An INVERSION like PNI Invert's (its schedule, defaults and trajectory shape) from random latents."""
    pni = sys.modules[nodes.NODE_CLASS_MAPPINGS["DragFusionPNIInvert"].__module__]
    defaults = {i.id: getattr(i, "default", None)
                for i in nodes.NODE_CLASS_MAPPINGS["DragFusionPNIInvert"].define_schema().inputs}
    sigmas = pni.schedule(model, args.scheduler, args.steps)
    gen = torch.Generator(device="cpu").manual_seed(args.seed)
    h = w = args.size // 8
    x0 = torch.randn(1, 4, h, w, generator=gen)           # model space (process_latent_in): unit scale
    eps = torch.randn(1, 4, h, w, generator=gen)
    trajectory = tuple(x0 + float(s) * eps for s in sigmas)   # z*_T ~ sigma_max * N(0, 1) first, x0 last
    source = [[torch.randn(1, 77, 768, generator=gen), {}]]   # CLIP-L-shaped CONDITIONING
    target = [[torch.randn(1, 77, 768, generator=gen), {}]] if args.other_target else source
    n = len(sigmas) - 1
    until = n if int(defaults["guidance_until"]) >= args.steps else int(defaults["guidance_until"])
    mod = sys.modules[nodes.NODE_CLASS_MAPPINGS["DragFusionDualBranchGuidedSampler"].__module__]
    inversion = mod.Inversion(sigmas=sigmas, trajectory=trajectory, source_cond=source, cfg=float(defaults["cfg"]),
                              lam=float(defaults["lam"]), prox=defaults["prox"], eta=float(defaults["eta"]),
                              guidance_until=until, scheduler=args.scheduler).validate()
    return mod, inversion, target


class RSSWatch:
    """RSS samples (time, bytes) of this process every ``interval`` seconds in a thread."""

    def __init__(self, interval: float):
        import psutil
        self.proc = psutil.Process(os.getpid())
        self.interval = interval
        self.samples: list = []
        self.stop = threading.Event()

    def rss(self) -> int:
        return self.proc.memory_info().rss

    def __enter__(self):
        self.samples.append((time.perf_counter(), self.rss()))
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self):
        while not self.stop.wait(self.interval):
            self.samples.append((time.perf_counter(), self.rss()))

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.samples.append((time.perf_counter(), self.rss()))
        return False

    def peak(self, t0: float = float("-inf"), t1: float = float("inf")) -> int:
        inside = [b for t, b in self.samples if t0 <= t <= t1]
        return max(inside) if inside else 0


def crossed_weight_bytes(patcher, detach_from) -> int:
    """Bytes of the weights the guided pass's backward crosses (the layers install_grad_weights wraps: all but
    the output blocks >= detach_from and the out head): ComfyUI's cast step copies each of them on a guided
    call and autograd keeps the copies, so they are part of saved_bytes (biases are not kept)."""
    skip = [] if detach_from is None else [f"diffusion_model.output_blocks.{k}." for k in range(detach_from, 1000)]
    skip.append("diffusion_model.out.")
    total = 0
    for name, module in patcher.model.named_modules():
        if not hasattr(module, "weight_function") or not name.startswith("diffusion_model."):
            continue
        if any((name + ".").startswith(p) for p in skip) or getattr(module, "weight", None) is None:
            continue
        total += module.weight.numel() * module.weight.element_size()
    return total


def plain(x):
    """The energy log's similarities (tensors in nested tuples) as JSON-able numbers."""
    if torch.is_tensor(x):
        v = x.detach().float().flatten().cpu()
        return [round(float(t), 5) for t in v] if v.numel() <= 8 else round(float(v.mean()), 5)
    if isinstance(x, (list, tuple)):
        return [plain(t) for t in x]
    return x


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n", 2)[2],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="", help="torch device (default: cuda when available, else ComfyUI's device)")
    ap.add_argument("--dtype", default="", choices=("", *DTYPES), help="weight dtype (default: fp16 on CUDA, fp32 on CPU)")
    ap.add_argument("--size", type=int, default=512, help="image side in pixels (latent = size / 8)")
    ap.add_argument("--steps", type=int, default=2, help="PNI schedule steps (guidance_fraction 0.6: round(0.6 n) guided)")
    ap.add_argument("--scheduler", default="ddim_uniform")
    ap.add_argument("--other-target", action="store_true", help="a target prompt other than the source (adds the gen_neg row)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--interval", type=float, default=0.05, help="CPU: RSS sampling interval in seconds")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: leave as is)")
    ap.add_argument("--json", default="", help="also write the figures (a JSON object) here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    want = args.device or ("cuda" if torch.cuda.is_available() else "")
    nodes = load_host(want or "cpu")
    import comfy.ldm.modules.attention as attention
    import comfy.model_management as mm
    device = torch.device(want) if want else mm.get_torch_device()
    cuda = device.type == "cuda"
    dtype = DTYPES[args.dtype or ("fp16" if cuda else "fp32")]
    dtype_name = {v: k for k, v in DTYPES.items()}[dtype]

    t_build = time.perf_counter()
    model, n_params, param_bytes = random_sd15(device, dtype, args.seed)
    mod, inversion, target = inversion_inputs(nodes, model, args)
    s = args.size
    points = mod.DragPoints(s, s, (((200.0 * s / 512, 256.0 * s / 512), (300.0 * s / 512, 256.0 * s / 512)),))
    settings = mod.DualBranchSettings()   # the node's defaults
    g = mod.build_guider(mod.SAMPLER_NODE, model, inversion, target, "drag", settings, points=points)
    t_build = time.perf_counter() - t_build

    steps = []   # (step index, start, end) of every predict_noise call (euler: one per step)
    inner = g.predict_noise

    def timed_predict_noise(x, timestep, model_options={}, seed=None):
        t0 = time.perf_counter()
        try:
            return inner(x, timestep, model_options, seed)
        finally:
            if cuda:
                torch.cuda.synchronize(device)
            steps.append((g.pni_gen.step_index(timestep), t0, time.perf_counter()))

    g.predict_noise = timed_predict_noise
    n_steps = inversion.steps
    guided = [i for i in range(n_steps) if settings.energy_on and i < round(settings.guidance_fraction * n_steps)
              and (not settings.sparse_guidance or i < round(round(settings.guidance_fraction * n_steps) / 3) or i % 2 == 0)]
    rows = 1 + (1 if args.other_target else 0) + 1
    print(f"device {device}, dtype {dtype_name}, torch threads {torch.get_num_threads()}, "
          f"attention {attention.optimized_attention.__name__}")
    print(f"SD1.5 full-size UNet, random weights: {n_params / 1e6:.1f} M parameters, {param_bytes / GB:.3f} GB")
    print(f"{s}x{s} (latent {s // 8}x{s // 8}), {n_steps} steps ({args.scheduler}, sigmas "
          f"{', '.join(f'{float(v):.3f}' for v in inversion.sigmas)}), euler, task drag, 1 point pair, "
          f"node defaults; guided steps {guided}; UNet batch rows {rows} (+1 feat row on guided steps)")

    gc.collect()
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    watch = RSSWatch(args.interval)
    hwm_before = vm_hwm()
    with watch, torch.inference_mode():
        rss_before = watch.samples[0][1]
        t0 = time.perf_counter()
        out = mod.run_guider(g, "euler")["samples"]
        if cuda:
            torch.cuda.synchronize(device)
        wall = time.perf_counter() - t0
    hwm_after = vm_hwm()
    if not torch.isfinite(out).all():
        raise SystemExit("the edited latent holds NaN or inf")
    if not g.energy_log:
        raise SystemExit("no guided step ran: the energy log is empty")

    per_step = []
    for i, a, b in steps:
        per_step.append({"step": i, "guided": i in guided, "seconds": round(b - a, 2),
                         "rss_peak_gb": round(watch.peak(a, b) / GB, 3)})
    res = {"device": str(device), "dtype": dtype_name, "size": s, "steps": n_steps, "guided_steps": guided,
           "rows": rows, "threads": torch.get_num_threads(), "attention": attention.optimized_attention.__name__,
           "params": n_params, "param_bytes": param_bytes, "saved_bytes": int(g.saved_bytes),
           "wall_seconds": round(wall, 2), "seconds_per_step": round(wall / n_steps, 2), "per_step": per_step,
           "build_seconds": round(t_build, 1), "crossed_weight_bytes": crossed_weight_bytes(model, g.detach_from),
           "feature_points": list(g.feature_points),
           "energy_log": [{"step": int(i), "energy": float(e.float().sum()), "scales": plain(sc), "removal": plain(rm)}
                          for i, e, sc, rm in g.energy_log],
           "goal_fp16_gb": GOAL_GB}
    if cuda:
        peak = torch.cuda.max_memory_allocated(device)
        res.update(kind="cuda max_memory_allocated", peak_bytes=peak, baseline_bytes=base, run_over_baseline_bytes=peak - base)
    else:
        peak = watch.peak()
        res.update(kind="CPU resident set (RSS), sampled every %g s" % args.interval, peak_bytes=peak,
                   baseline_bytes=rss_before, run_over_baseline_bytes=peak - rss_before,
                   vm_hwm_before_bytes=hwm_before, vm_hwm_after_bytes=hwm_after)
    if dtype == torch.float32:
        est = param_bytes / 2 + res["run_over_baseline_bytes"] / 2
        res["fp16_estimate_bytes"] = int(est)

    print("\nenergy log (step, energy, scales, removal):")
    for e in res["energy_log"]:
        print(f"  step {e['step']}: energy {e['energy']:.6g}, scales (s_edit, s_share) {e['scales']}, removal {e['removal']}")
    print("\nper step:")
    for p in per_step:
        print(f"  step {p['step']} ({'guided' if p['guided'] else 'plain'}): {p['seconds']:.2f} s, "
              f"RSS peak {p['rss_peak_gb']:.2f} GB" if not cuda else
              f"  step {p['step']} ({'guided' if p['guided'] else 'plain'}): {p['seconds']:.2f} s")
    print(f"\nPeak memory of one {s}x{s} dual-branch edit, SD1.5 full size, {device} {dtype_name} ({res['kind']})")
    lines = [("model parameters", param_bytes / GB, "GB"),
             ("peak, absolute (weights included)", peak / GB, "GB"),
             ("run peak over baseline (before the run)", res["run_over_baseline_bytes"] / GB, "GB"),
             ("kept for one guided step's backward (saved_bytes)", g.saved_bytes / GB, "GB"),
             ("  of which weight copies (~, crossed layers)", res["crossed_weight_bytes"] / GB, "GB"),
             ("  of which activations (~, the rest)", (g.saved_bytes - res["crossed_weight_bytes"]) / GB, "GB"),
             ("wall time per step (mean)", wall / n_steps, "s")]
    if not cuda:
        lines.append(("VmHWM after the run (process lifetime)", hwm_after / GB, "GB"))
    for what, v, unit in lines:
        print(f"  {what:<52} {v:9.3f} {unit}")
    if "fp16_estimate_bytes" in res:
        print(f"  {'fp16 ESTIMATE (weights/2 + run over baseline/2)':<52} {res['fp16_estimate_bytes'] / GB:9.3f} GB"
              f"   goal <= {GOAL_GB:g} GB in fp16: {'met' if res['fp16_estimate_bytes'] / GB <= GOAL_GB else 'NOT met'}"
              f" (an estimate from an fp32 run, not a measurement)")
    elif dtype == torch.float16:
        print(f"  goal <= {GOAL_GB:g} GB in fp16: {'met' if peak / GB <= GOAL_GB else 'NOT met'} (measured peak)")
    print("  (FastDrag 5.85 GB, GoodDrag < 13 GB)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(res, f, indent=1)
        print(f"wrote {args.json}")
    return res


if __name__ == "__main__":
    main()
