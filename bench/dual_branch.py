"""Benchmark P4: dual-branch edit / plain CFG sampling with the same model, sampler and steps, and the
peak memory above the resident weights, side by side in one run, in the real ComfyUI host (in-process).

    .venv/bin/python bench/dual_branch.py                      # tiny checkpoint, 256 px, 20 steps, drag + appearance
    .venv/bin/python bench/dual_branch.py --ckpt v1-5-pruned-emaonly.safetensors --size 512 --steps 50

Tasks (--tasks; each its own rows, all against the same plain baseline, all in the same rounds):
  drag        one point pair, target = source prompt: UNet rows gud + gen_pos (+ feat on guided steps)
  appearance  the shipped appearance workflow's inputs: the sample's mask, Drag100 cat_8 as the reference (its own
              PNI inversion, untimed, as the source's) and its mask: rows gud + ref + gen_pos (+ feat)
  move        mask + offset, target = source prompt: rows gud + gen_pos (+ feat)
Rows (--repeat rounds after a warm-up; each round runs every variant back to back and the ratios are the median of
the per-round ratios, so that load changes on a shared machine hit both sides alike):
  plain    SamplerCustomAdvanced + CFGGuider (target prompt, source prompt as negative, cfg) from PNI Invert's
           z_T with the same sampler and sigmas -- the baseline (CFG: 2 rows)
  <task>   Dual-Branch Guided Sampler (energy on the node's guided fraction or --fraction, KV replacement)
  <task>0  the same with energy_scale 0 (no backward pass): the cost of the batched branches alone
P4 = dual drag / plain (goal <= 1.8), P4a = dual appearance / plain (the same goal; P4v move, P4o outpaint);
P4b / P4ab: the same without energy.
P4m / P4am = the peak memory above the resident floor, dual / plain: the floor is the process's memory at rest once
the model is loaded and resident (after the warm-up; CUDA memory_allocated, CPU RSS after a garbage collection and
malloc_trim, _common.resident_bytes), and each variant's peak is taken in a run of its own after the timed rounds
(CUDA max_memory_allocated; CPU the exact VmHWM and 5 ms RSS samples, after handing freed heap pages back, so that
a bigger run's leftovers do not count: _common.peak_above). The inversions (shared by all rows) are not timed;
they are part of the floor. Each ratio row also gives the CPU-time ratio (more robust on a loaded machine).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from _common import interleaved, peak_above, print_table, resident_bytes, row, write_results  # noqa: E402

SAMPLE = "dragbench-dev/animals/JH_2023-09-14-1820-16"
REFERENCE = "drag100/cat_8"              # the reference of example_workflows/dual_branch_appearance.json
TASKS = ("drag", "appearance", "move", "outpaint")
ROW_ID = {"drag": "P4", "appearance": "P4a", "move": "P4v", "outpaint": "P4o"}


def pni_invert(model, latent, src, args):
    with torch.inference_mode():  # the gradient pass must cope with inference weights
        return harness.run_node(
            "DragFusionPNIInvert", model=model, latent=latent, source=src, steps=args.steps, cfg=args.cfg, lam=0.02,
            prox="L1", eta=0.1, guidance_until=args.steps, scheduler="ddim_uniform").result


def load(args, tasks):
    from _common import load_sample, sample_image
    host, model, enc, latent, vae = load_sample(args.ckpt, args.size, SAMPLE, with_vae=True)  # inference mode
    src = enc(args.prompt)
    inversion, z_T, sigmas = pni_invert(model, latent, src, args)
    reference = None
    if "appearance" in tasks:   # Drag100 has no prompt: the shipped workflow encodes its empty prompt output
        with torch.inference_mode():
            ref_latent = {"samples": host.VAEEncode().encode(vae, sample_image(REFERENCE, args.size))[0]["samples"].clone()}
        reference = pni_invert(model, ref_latent, enc(""), args)[0]
    return model, src, inversion, reference, z_T, sigmas
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


def unet_rows(g) -> int:
    """The rows of a guider's batched UNet call on an unguided step: gud (+ ref) + gen_pos (+ gen_neg)."""
    return 1 + (g.reference is not None) + (1 if g.one_gen_row else 2)


def guider(model, src, inversion, reference, args, task, energy_scale):
    """The Dual-Branch Guided Sampler's guider for ``task`` (build_guider of the loaded node module, the node's defaults)."""
    from _common import sample_mask
    host = harness.load_host()
    mod = sys.modules[host.NODE_CLASS_MAPPINGS["DragFusionDualBranchGuidedSampler"].__module__]
    from dragfusion.guidance.drag_points import DragPoints
    s = args.size
    extra = {}
    if task == "drag":
        extra["points"] = DragPoints(s, s, (((0.4 * s, 0.5 * s), (0.6 * s, 0.5 * s)),))
    elif task == "move":
        m = torch.zeros(1, s, s)
        m[:, s // 4:s // 2, s // 4:s // 2] = 1
        extra.update(mask=m, offset_x=float(max(8, s // 8 // 8 * 8)))
    elif task == "appearance":
        extra.update(mask=sample_mask(SAMPLE, s), reference=reference, reference_mask=sample_mask(REFERENCE, s))
    elif task == "outpaint":
        extra["pad"] = (0, max(8, s // 8 // 8 * 8), 0, 0)
    settings = mod.DualBranchSettings()                                  # the node's defaults
    if args.fraction is not None:
        settings = dataclasses.replace(settings, guidance_fraction=args.fraction)
    if energy_scale is not None:
        settings = dataclasses.replace(settings, energy_scale=energy_scale)
    return mod.build_guider(mod.SAMPLER_NODE, model, inversion, src, task, settings, **extra), mod


def dual(model, src, inversion, reference, args, task, energy_scale):
    """The Dual-Branch Guided Sampler's own code path (build_guider + run_guider of the loaded node module)."""
    g, mod = guider(model, src, inversion, reference, args, task, energy_scale)
    out = mod.run_guider(g, args.sampler)["samples"]
    info = LAST.setdefault(task, {})
    info["rows"] = unet_rows(g)
    if g.settings.energy_scale:
        info["saved_bytes"] = g.saved_bytes
    return out


def cpu_timed(fn, into: list):
    """fn with its process CPU time appended to ``into`` (all threads of the process)."""
    def run():
        c = time.process_time()
        try:
            return fn()
        finally:
            into.append(time.process_time() - c)
    return run


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", default=harness.TINY_CKPT)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--cfg", type=float, default=5.0)
    ap.add_argument("--sampler", default="euler")
    ap.add_argument("--tasks", default="drag,appearance",
                    help=f"comma-separated dual-branch tasks, each against the same plain baseline ({', '.join(TASKS)})")
    ap.add_argument("--fraction", type=float, default=None,
                    help="guided fraction of the steps (default: the node's, 0.8; DragonDiffusion: 30 of 50)")
    ap.add_argument("--prompt", default="a photo of a dog")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: leave as is)")
    ap.add_argument("--out", default=os.path.join(REPO, "bench", "results", "dual_branch"))
    ap.add_argument("--json", default="", help="also write the rows (a JSON list) here, for bench/run_all.py")
    args = ap.parse_args()
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    bad = [t for t in tasks if t not in TASKS]
    if bad or not tasks:
        raise SystemExit(f"unknown task(s) {bad}; choose from {TASKS}")
    if args.threads:
        torch.set_num_threads(args.threads)
    model, src, inversion, reference, z_T, sigmas = load(args, tasks)
    import comfy.model_management
    device = str(comfy.model_management.get_torch_device())
    print(f"device {device}, torch threads {torch.get_num_threads()}, {args.ckpt}, {args.size}x{args.size}, "
          f"{args.steps} steps, sampler {args.sampler}, cfg {args.cfg}, tasks {', '.join(tasks)}, guided fraction "
          f"{args.fraction if args.fraction is not None else 'the node default'}, load average {os.getloadavg()[0]:.1f}")
    fns = {"plain": lambda: plain(model, src, z_T, sigmas, args)}
    for t in tasks:
        fns[t] = lambda t=t: dual(model, src, inversion, reference, args, t, None)
        fns[t + "0"] = lambda t=t: dual(model, src, inversion, reference, args, t, 0.0)
    cpu = {k: [] for k in fns}
    with torch.inference_mode():
        rounds = interleaved([cpu_timed(fn, cpu[k]) for k, fn in fns.items()], args.repeat)
        cpu = {k: v[-args.repeat:] for k, v in cpu.items()}     # the warm-up's are first
        floor = resident_bytes()                                # model loaded and resident, inversions included
        mems = {k: peak_above(fn, floor) for k, fn in fns.items()}
    res = {k: [r[j][0] for r in rounds] for j, k in enumerate(fns)}
    # paired ratios: each round's variants ran back to back, so a change of machine load hits them alike
    mid = lambda xs: sorted(xs)[len(xs) // 2]
    ratio = {k: mid([res[k][j] / res["plain"][j] for j in range(args.repeat)]) for k in fns}
    cpu_ratio = {k: mid([cpu[k][j] / cpu["plain"][j] for j in range(args.repeat)]) for k in fns}
    sec = {k: mid(v) for k, v in res.items()}
    above = {k: m.delta_bytes for k, m in mems.items()}
    kind = "cuda max_memory_allocated" if mems["plain"].cuda else "CPU RSS (VmHWM)"
    rows = []
    for t in tasks:
        i, n = ROW_ID[t], LAST[t]["rows"]
        saved_mb = LAST[t].get("saved_bytes", 0) / 2**20
        rows.append(row(i, f"dual-branch {t} ({n} rows) / plain CFG ({args.steps} steps, {args.sampler})", ratio[t], 1.8,
                        seconds=sec[t], mem=mems[t], note=f"CPU-time ratio {cpu_ratio[t]:.3f}x"))
        rows.append(row(i + "m", f"peak memory above resident, dual {t} / plain CFG", above[t] / max(above["plain"], 1), 4.0,
                        mem=mems[t], note=f"{kind}: {above[t] / 2**20:.0f} MB / {above['plain'] / 2**20:.0f} MB above a "
                                          f"resident {floor / 2**20:.0f} MB; kept for backward per guided step: {saved_mb:.1f} MB"))
        rows.append(row(i + "b", f"dual-branch {t} without energy (branches + KV only) / plain", ratio[t + "0"], 2.5,
                        seconds=sec[t + "0"], mem=mems[t + "0"], note=f"CPU-time ratio {cpu_ratio[t + '0']:.3f}x"))
    rows.append(row("base", "plain CFG sampling (seconds)", sec["plain"], float("inf"), unit="s", seconds=sec["plain"],
                    mem=mems["plain"]))
    print_table(rows, "\nP4: dual-branch editing cost (same model, sampler, sigmas)")
    print(f"\nresident floor (model loaded, inversions held; {kind if mems['plain'].cuda else 'CPU RSS after gc + malloc_trim'}): "
          f"{floor / 2**20:.0f} MB; load average {os.getloadavg()[0]:.1f}")
    print(f"| {'variant':<16} | {'wall med s':>10} | {'CPU med s':>9} | {'wall ratio':>10} | {'CPU ratio':>9} | "
          f"{'peak MB':>8} | {'above resident MB':>17} | {'rest MB':>7} |")
    print(f"|{'-' * 18}|{'-' * 12}|{'-' * 11}|{'-' * 12}|{'-' * 11}|{'-' * 10}|{'-' * 19}|{'-' * 9}|")
    for k in fns:
        m = mems[k]
        print(f"| {k:<16} | {sec[k]:10.2f} | {mid(cpu[k]):9.2f} | {ratio[k]:9.3f}x | {cpu_ratio[k]:8.3f}x | "
              f"{m.peak_bytes / 2**20:8.0f} | {m.delta_bytes / 2**20:17.1f} | {m.start_bytes / 2**20:7.0f} |")
    print("(rest MB: the memory just before the variant's memory run, after the same collection; it stays at the floor "
          "when nothing accumulates)")
    meta = {"device": device, "ckpt": args.ckpt, "size": args.size, "steps": args.steps, "sampler": args.sampler,
            "tasks": tasks, "fraction": args.fraction, "threads": torch.get_num_threads(), "repeat": args.repeat,
            "load_average": os.getloadavg(), "resident_floor_mb": round(floor / 2**20, 1), "memory_kind": kind,
            "rows_per_task": {t: LAST[t]["rows"] for t in tasks},
            "saved_for_backward_mb": {t: round(LAST[t].get("saved_bytes", 0) / 2**20, 2) for t in tasks},
            "all_seconds": {k: [round(x, 3) for x in v] for k, v in res.items()},
            "all_cpu_seconds": {k: [round(x, 3) for x in v] for k, v in cpu.items()},
            "peak_mb": {k: round(m.peak_bytes / 2**20, 1) for k, m in mems.items()},
            "above_resident_mb": {k: round(v / 2**20, 1) for k, v in above.items()}}
    j, p = write_results(rows, args.out, meta)
    print(f"\nwrote {j} and {p}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump([r for r in rows if r["id"] != "base"], f, indent=1)


if __name__ == "__main__":
    main()
