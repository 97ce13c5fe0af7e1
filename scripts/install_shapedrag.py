"""Assemble the ShapeDrag checkpoint for the host: models/dragfusion_shapedrag.safetensors (the
trained UNet + VAE) + every tensor it leaves out (the frozen CLIP-L text encoder, and the
cross-attention key/value projections when the file does not carry trained ones) taken from the tiny
test checkpoint, which scripts/make_tiny_checkpoint.py rebuilds deterministically. A tensor the file
carries always wins over the tiny checkpoint's. No torch import (safetensors.numpy).

    python scripts/install_shapedrag.py --tiny CKPT_DIR/dragfusion_tiny_sd15.safetensors \
        --out CKPT_DIR/dragfusion_shapedrag.safetensors [--src models/dragfusion_shapedrag.safetensors]
"""
from __future__ import annotations

import argparse
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(REPO, "models", "dragfusion_shapedrag.safetensors")


def assemble(src: str, tiny: str, out: str) -> int:
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    trained = load_file(src)
    with safe_open(src, framework="np") as f:
        metadata = f.metadata() or {}
    base = load_file(tiny)
    missing = [k for k in base if k not in trained]
    stray = [k for k in trained if k not in base]
    if stray:
        raise SystemExit(f"install_shapedrag: {src} has tensors the tiny checkpoint lacks: {stray[:5]}")
    for k in missing:
        if not (k.startswith("cond_stage_model.") or ".attn2.to_k." in k or ".attn2.to_v." in k):
            raise SystemExit(f"install_shapedrag: {src} lacks the trained tensor {k}")
    merged = dict(trained)
    merged.update({k: base[k] for k in missing})
    tmp = out + ".tmp"
    save_file(merged, tmp, metadata=metadata)
    os.chmod(tmp, 0o644)
    os.replace(tmp, out)
    return len(missing)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", default=SRC)
    ap.add_argument("--tiny", required=True, help="the tiny test checkpoint (dragfusion_tiny_sd15.safetensors)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    n = assemble(a.src, a.tiny, a.out)
    print(f"wrote {a.out} ({os.path.getsize(a.out) / 2**20:.0f} MiB; {n} frozen tensors from {os.path.basename(a.tiny)})")


if __name__ == "__main__":
    main()
