"""Shared by the benchmarks: wall time side by side, peak memory, the table, JSON and a PNG chart.

Peak memory: torch.cuda.max_memory_allocated on CUDA; on CPU the peak resident-set size of this
process (or of another one, ``pid``: a server) while the measured function runs, minus the resident size
just before it (sampled every 5 ms in a thread; for this process also the kernel's exact high-water mark,
VmHWM, reset at the start through /proc/self/clear_refs where Linux allows it).

A peak is only comparable across variants when it is taken above the same floor: ``resident_bytes`` is the
memory the process holds at rest (CUDA: allocated tensors, the loaded weights among them; CPU: the RSS after
a garbage collection and glibc's malloc_trim, so that heap pages a previous run freed but the allocator kept
do not count), and ``peak_above`` measures one run's peak above such a floor.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import json
import os
import threading
import time

import psutil
import torch


_LIBC = []


def release_freed():
    """Collect garbage and hand the heap pages freed since back to the OS (glibc ``malloc_trim(0)``; elsewhere
    only the collection), so that the RSS that follows counts live memory, not what a previous run freed."""
    gc.collect()
    if not _LIBC:
        try:
            _LIBC.append(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"))
        except OSError:
            _LIBC.append(None)
    trim = getattr(_LIBC[0], "malloc_trim", None)
    if trim is not None:
        trim(0)


def resident_bytes() -> int:
    """The memory this process holds at rest: CUDA memory_allocated (after a synchronise and a collection),
    else the RSS after ``release_freed``. Taken once the model is loaded (after a warm-up run, which is when
    ComfyUI moves the weights to the device), it is the floor that ``peak_above`` subtracts."""
    if torch.cuda.is_available():
        gc.collect()
        torch.cuda.synchronize()
        return int(torch.cuda.memory_allocated())
    release_freed()
    return int(psutil.Process(os.getpid()).memory_info().rss)


def _reset_hwm() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def vm_hwm() -> int:
    """The process's peak RSS since the last reset (VmHWM) in bytes, 0 where /proc is missing."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class PeakMemory:
    """``peak_bytes``: the absolute peak while the block runs; ``delta_bytes``: that peak above ``base`` (given:
    a floor such as ``resident_bytes()``; by default ``start_bytes``, the memory just before the block)."""

    def __init__(self, interval: float = 0.005, pid: int | None = None, base: int | None = None):
        self.interval, self.pid, self.floor = interval, pid, base
        self.cuda = pid is None and torch.cuda.is_available()   # another process: its resident memory only
        self.peak_bytes = 0
        self.hwm = False

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start_bytes = torch.cuda.memory_allocated()
            self.base = self.start_bytes if self.floor is None else self.floor
            return self
        self.proc = psutil.Process(self.pid or os.getpid())
        self.start_bytes = self.proc.memory_info().rss
        self.base = self.start_bytes if self.floor is None else self.floor
        self.peak = self.start_bytes
        self.hwm = self.pid is None and _reset_hwm()     # the kernel's exact peak of this process
        self.stop = threading.Event()

        def watch():
            while not self.stop.is_set():
                try:
                    self.peak = max(self.peak, self.proc.memory_info().rss)
                except psutil.Error:    # the watched process ended
                    return
                time.sleep(self.interval)

        self.thread = threading.Thread(target=watch, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.peak_bytes = torch.cuda.max_memory_allocated()
            self.delta_bytes = self.peak_bytes - self.base
        else:
            self.stop.set()
            self.thread.join()
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            except psutil.Error:
                pass
            if self.hwm:
                self.peak = max(self.peak, vm_hwm())
            self.peak_bytes = self.peak
            self.delta_bytes = self.peak - self.base
        return False


def sample_image(sample: str, size: int) -> torch.Tensor:
    """A DragBench (original_image.png) or Drag100 (original.jpg) sample of data/ as an IMAGE [1, size, size, 3]."""
    import numpy as np
    from PIL import Image

    import harness
    folder = os.path.join(harness.DATA, sample)
    name = next((n for n in ("original_image.png", "original.jpg") if os.path.isfile(os.path.join(folder, n))), None)
    if name is None:
        raise SystemExit(f"no original_image.png or original.jpg in {folder}")
    img = Image.open(os.path.join(folder, name)).convert("RGB").resize((size, size), Image.LANCZOS)
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)[None]


def sample_mask(sample: str, size: int) -> torch.Tensor:
    """The sample's mask.png as a MASK [1, size, size] of 0/1 (nearest resampling, as the sample loader node)."""
    import numpy as np
    from PIL import Image

    import harness
    m = Image.open(os.path.join(harness.DATA, sample, "mask.png")).convert("L").resize((size, size), Image.NEAREST)
    return torch.from_numpy((np.asarray(m, dtype=np.float32) / 255.0 > 0.5).astype(np.float32))[None]


def load_sample(ckpt: str, size: int, sample: str, inference: bool = True, with_vae: bool = False):
    """Host nodes, a checkpoint from ComfyUI's checkpoints folder, a text encoder and a DragBench sample
    VAE-encoded at size x size -> ``(host, model, encode, latent)`` (``with_vae``: and the VAE, last).
    ``inference``: load under ``torch.inference_mode`` as ComfyUI's executor does; False for code that
    backpropagates through the weights (the null-text anchor)."""
    import contextlib

    import harness  # tests/, on sys.path in every benchmark
    host = harness.load_host()
    harness.import_pack()
    import comfy.sd
    import folder_paths
    path = folder_paths.get_full_path("checkpoints", ckpt)
    if not path:
        raise SystemExit(f"no checkpoint {ckpt!r} in ComfyUI's checkpoints folder")
    with torch.inference_mode() if inference else contextlib.nullcontext():
        model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(path, output_vae=True, output_clip=True)
    with torch.inference_mode():
        latent = {"samples": host.VAEEncode().encode(vae, sample_image(sample, size))[0]["samples"].clone()}

    def encode(text: str):
        with torch.inference_mode() if inference else contextlib.nullcontext():
            return host.CLIPTextEncode().encode(clip, text)[0]

    return (host, model, encode, latent, vae) if with_vae else (host, model, encode, latent)


def timed(fn, repeat: int = 1, warmup: bool = True):
    """(median seconds over ``repeat`` runs after one warm-up, PeakMemory of the last run, last result)."""
    if warmup:
        fn()
    times, result = [], None
    for _ in range(max(1, repeat)):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        with PeakMemory() as mem:
            t0 = time.perf_counter()
            result = fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2], mem, result


def peak_above(fn, floor: int) -> PeakMemory:
    """One run of ``fn`` on its own, its peak memory above ``floor`` (``resident_bytes()`` taken once the model
    is resident): freed heap pages are handed back first, so that the peak is what this run needs, not what an
    earlier, bigger run left in the allocator. Not timed: the trim would make the run pay page faults that a
    warm process does not."""
    release_freed()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    with PeakMemory(base=floor) as mem:
        fn()
    return mem


def interleaved(fns, repeat: int, warmup: int = 1) -> list:
    """Rounds of [(seconds, PeakMemory)], one per function of ``fns``, the functions timed back to back in each
    round (after ``warmup`` untimed runs of each), so that a load that comes and goes on a shared machine hits
    them alike: compare them by per-round ratios."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    return [[timed(fn, repeat=1, warmup=False)[:2] for fn in fns] for _ in range(repeat)]


def row(id: str, what: str, value: float, goal: float, unit: str = "x", seconds: float | None = None,
        mem: PeakMemory | None = None, note: str = "") -> dict:
    """One line of the table: value <= goal passes."""
    r = {"id": id, "what": what, "value": round(float(value), 4), "goal": goal, "unit": unit,
         "pass": bool(value <= goal), "note": note}
    if seconds is not None:
        r["seconds"] = round(float(seconds), 3)
    if mem is not None:
        r["peak_mem_mb"] = round(mem.delta_bytes / 2**20, 1)
        r["mem_kind"] = ("cuda max_memory_allocated" if mem.cuda else "peak RSS") + (
            " above the resident floor" if mem.floor is not None else " delta")
    return r


def dump_rows(path: str, rows: list[dict]):
    """What a benchmark script hands to scripts/bench (``--json PATH``)."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(rows, f, indent=1)


def print_table(rows: list[dict], title: str = ""):
    if title:
        print(title)
    head = f"{'id':<5} {'what':<58} {'value':>9} {'goal':>8} {'pass':>5} {'sec':>8} {'peak MB':>8}"
    print(head)
    print("-" * len(head))
    for r in rows:
        v = f"{r['value']:.3f}{r['unit']}" if r["unit"] == "x" else f"{r['value']:.2f}{r['unit']}"
        g = f"{r['goal']:g}{r['unit']}"
        sec = f"{r['seconds']:.2f}" if "seconds" in r else ""
        mb = f"{r['peak_mem_mb']:.0f}" if "peak_mem_mb" in r else ""
        print(f"{r['id']:<5} {r['what'][:58]:<58} {v:>9} {g:>8} {'yes' if r['pass'] else 'NO':>5} {sec:>8} {mb:>8}")


def write_results(rows: list[dict], out_dir: str, meta: dict) -> tuple[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    jpath = os.path.join(out_dir, "bench.json")
    with open(jpath, "w", encoding="utf-8") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    ppath = os.path.join(out_dir, "bench.png")
    chart(rows, ppath, meta)
    return jpath, ppath


def chart(rows: list[dict], path: str, meta: dict):
    """Horizontal bars of each ratio against its goal (PIL only)."""
    from PIL import Image, ImageDraw
    ratios = [r for r in rows if r["unit"] == "x"]
    w, bar_h, left = 900, 34, 330
    h = 60 + bar_h * max(1, len(ratios))
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    d.text((10, 10), f"DragFusion benchmarks ({meta.get('device', '')}, {meta.get('ckpt', '')}, {meta.get('size', '')} px)", fill="black")
    top = max([r["value"] for r in ratios] + [r["goal"] for r in ratios] + [1.0]) * 1.1
    scale = (w - left - 40) / top
    for i, r in enumerate(ratios):
        y = 40 + i * bar_h
        d.text((10, y + 8), f"{r['id']} {r['what'][:44]}", fill="black")
        colour = (60, 160, 90) if r["pass"] else (210, 70, 60)
        d.rectangle([left, y + 4, left + r["value"] * scale, y + bar_h - 6], fill=colour)
        gx = left + r["goal"] * scale
        d.line([gx, y, gx, y + bar_h - 2], fill="black", width=2)
        d.text((left + r["value"] * scale + 4, y + 8), f"{r['value']:.2f}x", fill="black")
    img.save(path)
