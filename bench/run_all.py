"""Every ratio benchmark of the pack, side by side in one run, one table, JSON and a PNG chart.

Each benchmark script runs in its own process (so its peak memory is its own) on the same
checkpoint and size, and hands back its rows with ``--json``:

  P1  bench/capture.py        inversion with capture as the shipped workflow sets it (values on) / plain inversion;
                              P1q the same with q/k only; capture bytes per step; peak memory above the resident model
  P2  bench/attentiondrag.py  full AttentionDrag edit / plain sampling; P3 10 pairs / 1 pair
  PNI bench/pni.py            PNI inversion + reconstruction / DDIM inversion + sampling
  P4  bench/dual_branch.py    dual-branch drag / plain sampling; P4a appearance (3 UNet rows: gud, ref, gen);
                              P4m / P4am peak memory above the resident model, dual / plain
  P5  (CUDA only)             seconds per 512x512 edit and peak VRAM, from the P2 run
  P6  bench/live_reedit.py    re-edit after a point move / full edit, the canvas workflow through a real server

    scripts/bench [--ckpt NAME] [--size 512] [--only capture,attentiondrag,pni,dual_branch,live_reedit] [--threads N]

On a CPU shared with other jobs, --threads 1 keeps torch's worker threads from spinning at each other's barriers
(which inflates wall and CPU time of whichever run it hits); the table's title names the threads and load.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import _common  # noqa: E402

BENCHES = ("capture", "attentiondrag", "pni", "dual_branch", "live_reedit")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", default="dragfusion_tiny_sd15.safetensors",
                    help="checkpoint in the host's models/checkpoints (default: the tiny test checkpoint)")
    ap.add_argument("--size", type=int, default=512, help="image side in pixels")
    ap.add_argument("--only", default=",".join(BENCHES), help="comma-separated subset of " + ",".join(BENCHES))
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--threads", type=int, default=0,
                    help="torch / OpenMP threads of every benchmark (OMP_NUM_THREADS; 0: leave as is)")
    a = ap.parse_args(argv)
    env = dict(os.environ)
    if a.threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(a.threads)
    import torch
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    rows, failed = [], []
    load0 = os.getloadavg()
    for name in [n.strip() for n in a.only.split(",") if n.strip()]:
        if name not in BENCHES:
            raise SystemExit(f"unknown benchmark {name!r}; choose from {BENCHES}")
        with tempfile.TemporaryDirectory() as tmp:
            jpath = os.path.join(tmp, "rows.json")
            cmd = [sys.executable, os.path.join(HERE, f"{name}.py"), "--ckpt", a.ckpt, "--size", str(a.size), "--json", jpath]
            print(f"[bench] {' '.join(cmd[1:])}", flush=True)
            t0 = time.time()
            r = subprocess.run(cmd, env=env)
            if r.returncode != 0 or not os.path.exists(jpath):
                failed.append(name)
                print(f"[bench] {name} failed (exit {r.returncode})", flush=True)
                continue
            with open(jpath, encoding="utf-8") as f:
                got = json.load(f)
            for row in got:
                row["bench"] = name
            rows.extend(got)
            print(f"[bench] {name}: {time.time() - t0:.0f} s", flush=True)
    threads = a.threads or env.get("OMP_NUM_THREADS") or torch.get_num_threads()
    load = os.getloadavg()
    meta = {"device": device, "ckpt": a.ckpt, "size": a.size, "torch": torch.__version__, "threads": int(threads),
            "load_average": [round(x, 2) for x in load], "load_average_start": [round(x, 2) for x in load0],
            "python": platform.python_version(), "when": time.strftime("%Y-%m-%d %H:%M:%S"), "failed": failed}
    print()
    _common.print_table(rows, f"DragFusion benchmarks: {a.ckpt}, {a.size}x{a.size}, {device}, {threads} torch threads, "
                              f"load average {load0[0]:.1f} at the start, {load[0]:.1f} / {load[1]:.1f} (1 / 5 min) at the end")
    jp, pp = _common.write_results(rows, a.out, meta)
    print(f"\n{jp}\n{pp}")
    if failed:
        raise SystemExit(f"benchmarks that failed: {failed}")


if __name__ == "__main__":
    main()
