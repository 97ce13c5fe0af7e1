"""Benchmark: PNI inversion + reconstruction vs plain DDIM inversion + sampling (same steps), with a
null-text-inversion (NTI) anchor, side by side in one run, in the real ComfyUI host (in-process).

    .venv/bin/python bench/pni.py                       # tiny checkpoint, 256 px, 20 steps
    .venv/bin/python bench/pni.py --ckpt v1-5-pruned-emaonly.safetensors --size 512 --steps 50

Rows (each the best of --repeat runs, wall-clock seconds):
  DDIM   DDIM inversion (source prompt, cfg 1) + SamplerCustomAdvanced with a CFGGuider (cfg, empty negative)
  PNI    PNI Invert + SamplerCustomAdvanced with the PNI Guider (target = source: a reconstruction)
  NTI    null-text inversion (Mokady et al.): the same DDIM inversion, then per step --nti-iters Adam steps on
         the null embedding (UNet forward + backward) and a cfg step; timed on --nti-steps steps and
         extrapolated to all steps; + a cfg sampling pass.
Reconstruction error: RMS difference of the final latent to the source latent (output space).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))
import harness  # noqa: E402

SAMPLE = "dragbench-dev/animals/JH_2023-09-14-1820-16"
NTI_CPU_MAX_SIZE = 256


def load(args):
    from _common import load_sample
    _, model, enc, latent = load_sample(args.ckpt, args.size, SAMPLE, inference=False)  # NTI backpropagates
    return model, latent, enc(args.prompt), enc("")


def sample(guider, z_T, sigmas):
    import comfy.samplers
    import comfy_extras.nodes_custom_sampler as ncs
    return harness.run_node("SamplerCustomAdvanced", noise=ncs.Noise_EmptyNoise(), guider=guider,
                            sampler=comfy.samplers.sampler_object("ddim"), sigmas=sigmas,
                            latent_image=z_T).result[0]["samples"]


def run_ddim(model, latent, src, empty, args):
    import comfy.samplers
    from dragfusion.nodes.pni import ddim_invert_with_comfy, schedule
    sigmas = schedule(model, args.scheduler, args.steps)
    z_T, _ = ddim_invert_with_comfy(model, latent["samples"], src, sigmas)
    g = comfy.samplers.CFGGuider(model)
    g.set_conds(src, empty)
    g.set_cfg(args.cfg)
    return sample(g, {"samples": z_T}, sigmas)


def run_pni(model, latent, src, empty, args):
    inv, z_T, sigmas = harness.run_node(
        "DragFusionPNIInvert", model=model, latent=latent, source=src, steps=args.steps, cfg=args.cfg, lam=args.lam,
        prox="L1", eta=args.eta, guidance_until=args.steps, scheduler=args.scheduler).result
    guider = harness.run_node("DragFusionPNIGuider", model=model, inversion=inv, target=src).result[0]
    return sample(guider, z_T, sigmas)


def run_nti_partial(model, latent, src, empty, args):
    """DDIM inversion + NTI optimisation on the first --nti-steps steps. Returns ((wall, CPU) seconds of the
    inversion, (wall, CPU) seconds per optimised step)."""
    import comfy.model_management
    from dragfusion.guidance import pni
    from dragfusion.nodes.pni import ddim_invert_with_comfy, schedule
    t0, c0 = time.perf_counter(), time.process_time()
    sigmas = schedule(model, args.scheduler, args.steps)
    _, traj = ddim_invert_with_comfy(model, latent["samples"], src, sigmas)
    t_inv, c_inv = time.perf_counter() - t0, time.process_time() - c0
    comfy.model_management.load_models_gpu([model])
    dev = comfy.model_management.get_torch_device()
    dtype = model.model_dtype()
    bm = model.model
    c_src = src[0][0].to(dev, dtype)
    null = empty[0][0].to(dev, dtype).clone()
    x = traj[0].to(dev, dtype)
    t1, c1 = time.perf_counter(), time.process_time()
    n = min(args.nti_steps, args.steps)
    for i in range(n):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        st = torch.full((x.shape[0],), s, device=dev)
        with torch.no_grad():
            d_c = bm.apply_model(x, st, c_crossattn=c_src)
        null = null.detach().requires_grad_(True)
        opt = torch.optim.Adam([null], lr=1e-2 * (1.0 - i / 100.0))
        target = traj[i + 1].to(dev, dtype)
        for _ in range(args.nti_iters):
            with torch.enable_grad():
                d_u = bm.apply_model(x, st, c_crossattn=null)
                d = d_u + args.cfg * (d_c - d_u)
                x_next = pni.ddim_step(x, s, s_next, pni.eps_from_denoised(x, d, s))
                loss = torch.nn.functional.mse_loss(x_next, target)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            d_u = bm.apply_model(x, st, c_crossattn=null.detach())
            d = d_u + args.cfg * (d_c - d_u)
            x = pni.ddim_step(x, s, s_next, pni.eps_from_denoised(x, d, s))
    return (t_inv, c_inv), ((time.perf_counter() - t1) / n, (time.process_time() - c1) / n)


def timed(fn, *a):
    """(wall seconds, process CPU seconds, result): CPU time is the fairer figure on a shared, loaded machine."""
    t, c = time.perf_counter(), time.process_time()
    out = fn(*a)
    return time.perf_counter() - t, time.process_time() - c, out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", default=harness.TINY_CKPT)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--scheduler", default="ddim_uniform")
    ap.add_argument("--cfg", type=float, default=5.0)
    ap.add_argument("--lam", type=float, default=0.02)
    ap.add_argument("--eta", type=float, default=0.1)
    ap.add_argument("--prompt", default="a photo of a dog")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--nti-steps", type=int, default=2, help="steps of NTI actually optimised (then extrapolated)")
    ap.add_argument("--nti-iters", type=int, default=10, help="Adam iterations per step (NTI's default: 10)")
    ap.add_argument("--no-nti", action="store_true")
    ap.add_argument("--json", default=None, help="also write the rows (bench/_common.py format) to this file")
    args = ap.parse_args()
    if not args.no_nti and not torch.cuda.is_available() and args.size > NTI_CPU_MAX_SIZE:
        # the null-text anchor backpropagates through the UNet: at 512 that took > 24 GB of RAM (OOM-killed)
        print(f"[pni] on CPU at {NTI_CPU_MAX_SIZE}x{NTI_CPU_MAX_SIZE} instead of {args.size}: the NTI anchor's "
              f"backward pass does not fit in a 24 GB machine at {args.size} (--no-nti keeps the size)", flush=True)
        args.size = NTI_CPU_MAX_SIZE
    model, latent, src, empty = load(args)
    import comfy.model_management
    x0 = latent["samples"]
    rms = lambda a: float((a.float() - x0.float()).pow(2).mean().sqrt())
    print(f"device {comfy.model_management.get_torch_device()}, torch threads {torch.get_num_threads()}, "
          f"{args.ckpt}, {args.size}x{args.size}, {args.steps} steps ({args.scheduler}), cfg {args.cfg}, "
          f"lambda {args.lam}, eta {args.eta}")
    run_ddim(model, latent, src, empty, argparse.Namespace(**{**vars(args), "steps": 2}))  # warm-up
    wall = {"DDIM": float("inf"), "PNI": float("inf")}
    cpu = dict(wall)
    err = {}
    with torch.inference_mode():
        for _ in range(args.repeat):  # interleaved so that load changes hit both alike
            for name, fn in (("DDIM", run_ddim), ("PNI", run_pni)):
                t, c, out = timed(fn, model, latent, src, empty, args)
                wall[name], cpu[name] = min(wall[name], t), min(cpu[name], c)
                err[name] = rms(out)
    rows = [("DDIM inversion + sampling (cfg, empty negative)", wall["DDIM"], cpu["DDIM"], err["DDIM"]),
            ("PNI inversion + reconstruction (PNI Guider)", wall["PNI"], cpu["PNI"], err["PNI"])]
    if not args.no_nti:
        (t_inv, c_inv), (per_step, per_step_cpu) = run_nti_partial(model, latent, src, empty, args)
        # + one cfg sampling pass, estimated as the DDIM row minus its inversion
        nti = t_inv + per_step * args.steps + max(wall["DDIM"] - t_inv, 0.0)
        nti_cpu = c_inv + per_step_cpu * args.steps + max(cpu["DDIM"] - c_inv, 0.0)
        rows.append((f"NTI anchor ({args.nti_iters} iters per step; {args.nti_steps} step(s) timed, extrapolated)",
                     nti, nti_cpu, None))
    print(f"\n{'method':<68} {'wall s':>8} {'x DDIM':>7} {'CPU s':>8} {'x DDIM':>7} {'recon RMS':>10}")
    for name, t, c, e in rows:
        print(f"{name:<68} {t:8.2f} {t / wall['DDIM']:7.2f} {c:8.2f} {c / cpu['DDIM']:7.2f} "
              f"{('%.5f' % e) if e is not None else '-':>10}")
    print(f"\nPNI / DDIM: wall {wall['PNI'] / wall['DDIM']:.3f}, CPU {cpu['PNI'] / cpu['DDIM']:.3f}")
    if not args.no_nti:
        print(f"NTI: {per_step:.2f} s wall / {per_step_cpu:.2f} s CPU per optimised step "
              f"({per_step / args.nti_iters:.3f} s wall per iteration); NTI / PNI: wall {rows[2][1] / wall['PNI']:.1f}x, "
              f"CPU {rows[2][2] / cpu['PNI']:.1f}x")
    if args.json:
        import _common
        out = [_common.row("PNI", f"PNI invert + reconstruct / DDIM invert + sample ({args.steps} steps, wall)",
                           wall["PNI"] / wall["DDIM"], 1.2, seconds=wall["PNI"],
                           note=f"CPU-time ratio {cpu['PNI'] / cpu['DDIM']:.3f}x; recon RMS PNI {err['PNI']:.4f} vs DDIM {err['DDIM']:.4f}")]
        if not args.no_nti:
            out.append(_common.row("NTI", "null-text inversion anchor / PNI (must be far above 1)", rows[2][1] / wall["PNI"],
                                   float("inf"), seconds=rows[2][1], note="extrapolated from the optimised steps"))
        _common.dump_rows(args.json, out)


if __name__ == "__main__":
    main()
