"""P1: Inversion with Attention Capture / plain inversion, as the shipped workflow runs it, and the capture's
bytes per step and peak memory.

The capture's settings are the Inversion node's widgets in example_workflows/attention_drag.json (steps,
edit_step, scheduler, cfg, layers, capture_steps, capture_values -- on: keys and values for KV consistency, one
more UNet call at the edit step --, kv_layers, capture_precision), read from the file, so the figure follows the
workflow. Three variants run side by side in one process on the same model, prompt and size, interleaved (the
order rotating every repeat), through the node's own code path (``run_inversion``; ``layers=None`` is the same
inversion with no capture installed):

  plain      the inversion alone
  shipped    the capture as the workflow sets it                 P1  = shipped / plain   (goal <= 1.10x)
  qk only    the same with capture_values off (q/k only)         P1q = qk only / plain   (what P1 measured before, which also
                                                                 used the 'normal' scheduler)

Peak memory: after the timed runs, each variant once more on its own, its peak above the process's memory at
rest with the model loaded (_common.resident_bytes / peak_above: CUDA max_memory_allocated, CPU VmHWM after
malloc_trim); the capture the run returns is inside that peak.

    .venv/bin/python bench/capture.py                      # tiny test checkpoint, 512x512
    .venv/bin/python bench/capture.py --ckpt v1-5-pruned-emaonly.safetensors --repeats 5

Goals (issue 4): P1 <= 1.10x, <= 12 MB per captured step at 512x512 for the default layer set.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMFYUI_DIR = os.environ.get("COMFYUI_DIR") or os.path.join(REPO, ".host", "ComfyUI")
TINY_CKPT = "dragfusion_tiny_sd15.safetensors"
WORKFLOW = os.path.join(REPO, "example_workflows", "attention_drag.json")
NODE_ID = "DragFusionInvertCapture"


def load_host():
    import torch
    sys.path.insert(0, COMFYUI_DIR)
    from comfy.cli_args import args
    args.cpu = not torch.cuda.is_available()
    import comfy.model_management  # noqa: F401  (after args.cpu)
    import utils.install_util  # noqa: F401  (ComfyUI's utils package before nodes.py shadows it, as tests/harness.py)
    import nodes
    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
    if NODE_ID not in nodes.NODE_CLASS_MAPPINGS:
        raise SystemExit("the DragFusion pack is not loaded in the host (scripts/setup links it into custom_nodes/)")
    return nodes, sys.modules[nodes.NODE_CLASS_MAPPINGS[NODE_ID].__module__]


def shipped_settings(node_cls, path: str = WORKFLOW) -> dict:
    """The Inversion node's widget values in the shipped workflow, by input name (the widgets in schema order)."""
    from comfy_api.latest import io
    with open(path, encoding="utf-8") as f:
        graph = json.load(f)
    found = [n for n in graph["nodes"] if n.get("type") == NODE_ID]
    if len(found) != 1:
        raise SystemExit(f"{path}: expected one {NODE_ID} node, found {len(found)}")
    names = [i.id for i in node_cls.define_schema().inputs if isinstance(i, io.WidgetInput)]
    values = found[0].get("widgets_values") or []
    if len(values) != len(names):
        raise SystemExit(f"{path}: {len(values)} widget values for the {len(names)} widgets {names}")
    return dict(zip(names, values))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default=TINY_CKPT, help="checkpoint in the host's models/checkpoints")
    p.add_argument("--size", type=int, default=512, help="image side in pixels (latent = size / 8)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each variant")
    p.add_argument("--workflow", default=WORKFLOW, help="the workflow whose Inversion node sets the capture")
    p.add_argument("--json", default=None, help="also write the rows (bench/_common.py format) to this file")
    a = p.parse_args()

    import torch
    nodes, inv = load_host()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import _common
    import comfy.model_management as mm
    w = shipped_settings(nodes.NODE_CLASS_MAPPINGS[NODE_ID], a.workflow)
    steps, edit_step = int(w["steps"]), int(w["edit_step"])
    model, clip = nodes.CheckpointLoaderSimple().load_checkpoint(a.ckpt)[:2]
    pos = nodes.CLIPTextEncode().encode(clip, "a photo of a cat")[0]
    lat = {"samples": torch.randn(1, 4, a.size // 8, a.size // 8, generator=torch.Generator().manual_seed(0))}
    variants = {"plain inversion": None, "shipped capture": bool(w["capture_values"]), "capture, q/k only": False}

    def run(values, edit=edit_step):
        return inv.run_inversion(model, lat, steps, edit, w["scheduler"], float(w["cfg"]), pos, None,
                                 layers=None if values is None else (w["layers"], w["custom_layers"]),
                                 capture_steps=w["capture_steps"], capture_values=bool(values),
                                 kv_layers=(w["kv_layers"], w["custom_kv_layers"]), precision=w["capture_precision"])

    def once(values, edit=edit_step):
        mm.soft_empty_cache()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t, c = time.perf_counter(), time.process_time()
        with torch.inference_mode():  # as ComfyUI's executor runs nodes
            out, cap = run(values, edit)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return (time.perf_counter() - t, time.process_time() - c), cap

    for v in variants.values():        # warm-up (model load, first-call costs): one UNet call each (+1 with values)
        once(v, edit=steps - 1)
    times = {k: [] for k in variants}
    caps = {}
    names = list(variants)
    for r in range(a.repeats):
        for k in names[r % len(names):] + names[:r % len(names)]:   # rotating order
            dt, got = once(variants[k])
            times[k].append(dt)
            caps[k] = got or caps.get(k)
    with torch.inference_mode():
        floor = _common.resident_bytes()            # the model loaded and resident
        mems = {k: _common.peak_above(lambda v=v: run(v), floor) for k, v in variants.items()}
    cap = caps["shipped capture"]
    n_calls = steps - edit_step + int(bool(w["capture_values"]))
    per_step = cap.nbytes_per_step()
    device = str(mm.get_torch_device())
    print()
    print(f"Inversion with Attention Capture vs plain inversion -- {a.ckpt}, {a.size}x{a.size}, the Inversion node of "
          f"{os.path.relpath(a.workflow, REPO)}: {steps} steps, edit_step {edit_step}, scheduler {w['scheduler']}, cfg {w['cfg']}, "
          f"layers {w['layers']}, capture_values {w['capture_values']}, kv_layers {w['kv_layers']}, {w['capture_precision']} "
          f"({n_calls} UNet calls; plain and q/k only {steps - edit_step}), batch 1, device {device}, "
          f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}")
    print()
    # wall time is what a user sees; process CPU time is less sensitive to other load on the machine
    print(f"| {'variant':<28} | {'wall min s':>10} | {'wall med s':>10} | {'CPU min s':>10} | {'CPU med s':>10} | runs | "
          f"{'peak above resident MB':>22} |")
    print(f"|{'-' * 30}|{'-' * 12}|{'-' * 12}|{'-' * 12}|{'-' * 12}|------|{'-' * 24}|")
    stats = {}
    for name, ts in times.items():
        wall, cpu = [t[0] for t in ts], [t[1] for t in ts]
        stats[name] = (min(wall), statistics.median(wall), min(cpu), statistics.median(cpu))
        print(f"| {name:<28} | " + " | ".join(f"{v:10.2f}" for v in stats[name]) + f" | {len(ts):4d} | "
              f"{mems[name].delta_bytes / 2**20:22.1f} |")
    ratios = {}
    for pid, name, label in (("P1", "shipped capture", "P1 = shipped / plain"), ("P1q", "capture, q/k only", "P1q = q/k only / plain")):
        ratios[pid] = [c / p for c, p in zip(stats[name], stats["plain inversion"])]
        print(f"| {label:<28} | " + " | ".join(f"{r:9.3f}x" for r in ratios[pid])
              + f" |      | {mems[name].delta_bytes / max(mems['plain inversion'].delta_bytes, 1):21.3f}x |")
    print(f"(resident floor {floor / 2**20:.0f} MB: the process at rest with the model loaded)")
    p1_min, p1_med, p1_cpu = ratios["P1"][:3]
    print()
    print(f"| {'layer (' + str(w['layers']) + ')':<34} | {'grid':>7} | {'heads x dim':>11} | {'stored MB/step':>14} | {'q+k would be':>12} |")
    print(f"|{'-' * 36}|{'-' * 9}|{'-' * 13}|{'-' * 16}|{'-' * 14}|")
    step = cap.steps[0]
    qk_total = 0
    for layer in cap.layers:
        b, heads, tokens, dim = cap.q.shape((step, layer))
        stored = cap.q.inputs[(step, layer)]
        qk = 2 * b * heads * tokens * dim * 2
        qk_total += qk
        hw = cap.layer_hw[layer]
        print(f"| {layer:<34} | {hw[0]:>3}x{hw[1]:<3} | {heads:>4} x {dim:<4} | "
              f"{stored.nbytes / 1e6:14.2f} | {qk / 1e6:12.2f} |")
    print(f"| {'total per captured step':<34} | {'':>7} | {'':>11} | {per_step / 1e6:14.2f} | {qk_total / 1e6:12.2f} |")
    all_steps = sorted(set(cap.steps) | set(cap.kv_steps))
    total = sum(cap.nbytes_per_step(s) for s in all_steps)
    print(f"| {'total, ' + str(len(all_steps)) + ' steps (q/k ' + str(len(cap.steps)) + ', KV ' + str(len(cap.kv_steps)) + ')':<34} | "
          f"{'':>7} | {'':>11} | {total / 1e6:14.2f} | {'':>12} |")
    fixed = cap.nbytes_fixed()
    print(f"| {'projection weights (once, fp32)':<34} | {'':>7} | {'':>11} | {fixed / 1e6:14.2f} | {'':>12} |")
    print()
    print(f"P1 {p1_min:.3f}x wall (min of {a.repeats}), {p1_med:.3f}x wall (median), {p1_cpu:.3f}x CPU time (min); "
          f"goal <= 1.10x: {'met' if min(p1_min, p1_cpu) <= 1.10 else 'NOT met'}  (q/k only: {ratios['P1q'][1]:.3f}x wall median)")
    print(f"bytes per captured step {per_step} ({per_step / 1e6:.2f} MB, the most any step holds: the stored input of "
          f"{len(cap.layers)} q/k and {len(cap.kv_layers)} KV layers, once per layer, int8 with a scale per channel, from "
          f"which q, k and v are projected; storing q and k would take {qk_total / 1e6:.2f} MB); "
          f"goal <= 12 MB: {'met' if per_step <= 12e6 else 'NOT met'}")
    if a.json:
        _common.dump_rows(a.json, [
            _common.row("P1", f"inversion + capture as shipped (values {'on' if w['capture_values'] else 'off'}) / plain",
                        p1_med, 1.10, seconds=stats["shipped capture"][1], mem=mems["shipped capture"],
                        note=f"wall median; CPU-time ratio {p1_cpu:.3f}x; {n_calls} UNet calls against {steps - edit_step}"),
            _common.row("P1q", "inversion + q/k capture only (values off) / plain", ratios["P1q"][1], 1.10,
                        seconds=stats["capture, q/k only"][1], mem=mems["capture, q/k only"],
                        note=f"wall median; CPU-time ratio {ratios['P1q'][2]:.3f}x"),
            _common.row("P1m", f"capture bytes per step ({len(cap.layers)} layers, int8 layer input; q+k {qk_total / 1e6:.2f} MB)",
                        per_step / 1e6, 12.0, unit=" MB"),
        ])


if __name__ == "__main__":
    main()
