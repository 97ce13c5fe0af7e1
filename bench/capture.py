"""P1: Inversion with Attention Capture / plain inversion, and the capture's bytes per step.

Runs both side by side in one process on the same model, steps and size (interleaved, the order
alternating every repeat), through the node's own code path (``run_inversion``; ``layers=None``
is the same inversion with no capture installed). Prints a table.

    .venv/bin/python bench/capture.py                      # tiny test checkpoint, 512x512, 10 steps, edit 5
    .venv/bin/python bench/capture.py --ckpt v1-5-pruned-emaonly.safetensors --repeats 5

Goals (issue 4): P1 <= 1.10x, <= 12 MB per captured step at 512x512 for the default layer set.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMFYUI_DIR = os.environ.get("COMFYUI_DIR") or os.path.join(REPO, ".host", "ComfyUI")
TINY_CKPT = "dragfusion_tiny_sd15.safetensors"


def load_host():
    import torch
    sys.path.insert(0, COMFYUI_DIR)
    from comfy.cli_args import args
    args.cpu = not torch.cuda.is_available()
    import comfy.model_management  # noqa: F401  (after args.cpu)
    import nodes
    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
    if "DragFusionInvertCapture" not in nodes.NODE_CLASS_MAPPINGS:
        raise SystemExit("the DragFusion pack is not loaded in the host (scripts/setup links it into custom_nodes/)")
    return nodes, sys.modules[nodes.NODE_CLASS_MAPPINGS["DragFusionInvertCapture"].__module__]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default=TINY_CKPT, help="checkpoint in the host's models/checkpoints")
    p.add_argument("--size", type=int, default=512, help="image side in pixels (latent = size / 8)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--edit-step", type=int, default=5)
    p.add_argument("--repeats", type=int, default=2, help="timed runs of each variant")
    p.add_argument("--layers", default="latent resolution", help="layer preset of the capture")
    p.add_argument("--json", default=None, help="also write the rows (bench/_common.py format) to this file")
    a = p.parse_args()

    import torch
    nodes, inv = load_host()
    import comfy.model_management as mm
    model, clip = nodes.CheckpointLoaderSimple().load_checkpoint(a.ckpt)[:2]
    pos = nodes.CLIPTextEncode().encode(clip, "a photo of a cat")[0]
    lat = {"samples": torch.randn(1, 4, a.size // 8, a.size // 8, generator=torch.Generator().manual_seed(0))}

    def once(capture: bool, edit_step: int | None = None):
        mm.soft_empty_cache()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t, c = time.perf_counter(), time.process_time()
        with torch.inference_mode():  # as ComfyUI's executor runs nodes
            out, cap = inv.run_inversion(model, lat, a.steps, a.edit_step if edit_step is None else edit_step, "normal", 1.0, pos, None,
                                         layers=(a.layers, "") if capture else None)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return (time.perf_counter() - t, time.process_time() - c), cap

    once(True, edit_step=a.steps - 1)  # warm-up (model load, first-call costs): one UNet call each
    once(False, edit_step=a.steps - 1)
    plain, captured, cap = [], [], None
    for r in range(a.repeats):
        order = (False, True) if r % 2 == 0 else (True, False)
        for c in order:
            dt, got = once(c)
            (captured if c else plain).append(dt)
            cap = got or cap
    n_calls = a.steps - a.edit_step
    per_step = cap.nbytes_per_step()
    device = str(mm.get_torch_device())
    print()
    print(f"Inversion with Attention Capture vs plain inversion -- {a.ckpt}, {a.size}x{a.size}, "
          f"{a.steps} steps, edit_step {a.edit_step} ({n_calls} UNet calls), batch 1, cfg 1, device {device}, "
          f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}")
    print()
    # wall time is what a user sees; process CPU time is robust against other load on the machine
    print(f"| {'variant':<28} | {'wall min s':>10} | {'wall med s':>10} | {'CPU min s':>10} | {'CPU med s':>10} | runs |")
    print(f"|{'-' * 30}|{'-' * 12}|{'-' * 12}|{'-' * 12}|{'-' * 12}|------|")
    rows = {}
    for name, ts in (("plain inversion", plain), ("inversion + capture", captured)):
        wall, cpu = [t[0] for t in ts], [t[1] for t in ts]
        rows[name] = (min(wall), statistics.median(wall), min(cpu), statistics.median(cpu))
        print(f"| {name:<28} | " + " | ".join(f"{v:10.2f}" for v in rows[name]) + f" | {len(ts):4d} |")
    ratios = [c / p for c, p in zip(rows["inversion + capture"], rows["plain inversion"])]
    print(f"| {'P1 = capture / plain':<28} | " + " | ".join(f"{r:9.3f}x" for r in ratios) + " |      |")
    p1_min, p1_med, p1_cpu = ratios[0], ratios[1], ratios[2]
    print()
    print(f"| {'layer (' + a.layers + ')':<34} | {'grid':>7} | {'heads x dim':>11} | {'stored MB/step':>14} | {'q+k would be':>12} |")
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
    print(f"| {'total, all ' + str(len(cap.steps)) + ' captured steps':<34} | {'':>7} | {'':>11} | "
          f"{len(cap.steps) * per_step / 1e6:14.2f} | {len(cap.steps) * qk_total / 1e6:12.2f} |")
    fixed = cap.nbytes_fixed()
    print(f"| {'projection weights (once, fp32)':<34} | {'':>7} | {'':>11} | {fixed / 1e6:14.2f} | {'':>12} |")
    print()
    print(f"P1 {p1_min:.3f}x wall (min of {a.repeats}), {p1_med:.3f}x wall (median), {p1_cpu:.3f}x CPU time (min); "
          f"goal <= 1.10x: {'met' if min(p1_min, p1_cpu) <= 1.10 else 'NOT met'}")
    print(f"bytes per captured step {per_step} ({per_step / 1e6:.2f} MB: the stored input of {len(cap.layers)} layers, int8 with a scale per channel, "
          f"from which q and k are projected; storing q and k would take {qk_total / 1e6:.2f} MB); "
          f"goal <= 12 MB: {'met' if per_step <= 12e6 else 'NOT met'}")
    if a.json:
        import _common
        _common.dump_rows(a.json, [
            _common.row("P1", "inversion with capture / plain inversion (wall, median)", p1_med, 1.10,
                        seconds=rows["inversion + capture"][1], note=f"CPU-time ratio {p1_cpu:.3f}x"),
            _common.row("P1m", f"capture bytes per step ({len(cap.layers)} layers, int8 layer input; q+k {qk_total / 1e6:.2f} MB)", per_step / 1e6, 12.0,
                        unit=" MB"),
        ])


if __name__ == "__main__":
    main()
