"""Semantic-based interpolation (AttentionDrag, Sec. 3.4, Eq. 13) and the ablation fills. Pure torch.

Eq. 13 as printed gives every blank cell the same value. DESIGN.md: each blank cell p uses its own
attention row over the non-blank cells, renormalised:

    z_hat[p] = sum_{q not blank} A[p, q] z'[q] / sum_{q not blank} A[p, q]

The rows are requested in chunks of blank cells from ``rows_fn(positions) -> [B, P, N]`` (the
capture's chunked, head- and layer-averaged, step-averaged attention rows), so no N x N map is
ever held. A blank cell whose row has (numerically) no weight on non-blank cells takes the mean of
the non-blank cells.

Fills for the paper's ablation (Table 2): ``nearest`` (the value of the nearest non-blank cell,
Euclidean distance in cells, ties: the lower flat index), ``zero`` and ``noise`` (Gaussian noise
with each channel's mean and standard deviation over the non-blank cells, from a seed).
"""
from __future__ import annotations

from typing import Callable

import torch

FILLS = ("attention", "nearest", "zero", "noise")


def _check(z: torch.Tensor, blank: torch.Tensor) -> torch.Tensor:
    b, _, h, w = z.shape
    blank = blank.reshape(b, h * w).bool().to(z.device)
    if (blank.all(dim=1)).any():
        raise ValueError("every cell is blank: there is nothing to interpolate from")
    return blank


def attention_fill(z: torch.Tensor, blank: torch.Tensor, rows_fn: Callable[[torch.Tensor], torch.Tensor],
                   chunk: int = 512, progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Eq. 13, renormalised per blank cell. z [B, C, h, w]; blank bool [B, h*w] or [B, h, w]."""
    b, c, h, w = z.shape
    n = h * w
    blank = _check(z, blank)
    out = z.clone()
    any_blank = blank.any(0).nonzero()[:, 0]
    if any_blank.numel() == 0:
        return out
    flat = z.reshape(b, c, n).float()
    keep = (~blank).float()                                        # [B, N]
    mean = (flat * keep[:, None]).sum(-1) / keep.sum(-1, keepdim=True)  # [B, C]
    out_flat = out.reshape(b, c, n)
    total = any_blank.numel()
    for start in range(0, total, chunk):
        pos = any_blank[start:start + chunk]
        a = rows_fn(pos.cpu()).to(z.device).float()                # [B, P, N]
        if a.shape[0] != b:
            a = a.expand(b, -1, -1)
        a = a * keep[:, None, :]
        den = a.sum(-1)                                            # [B, P]
        num = torch.einsum("bpn,bcn->bcp", a, flat)                # [B, C, P]
        ok = den > 1e-30
        val = torch.where(ok[:, None, :], num / den.clamp_min(1e-30)[:, None, :], mean[:, :, None])
        sel = blank[:, pos]                                        # [B, P]
        cur = out_flat[:, :, pos]
        out_flat[:, :, pos] = torch.where(sel[:, None, :], val.to(out.dtype), cur)
        if progress is not None:
            progress(min(start + chunk, total), total)
    return out


def nearest_fill(z: torch.Tensor, blank: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    b, c, h, w = z.shape
    n = h * w
    blank = _check(z, blank)
    ys, xs = torch.meshgrid(torch.arange(h, device=z.device), torch.arange(w, device=z.device), indexing="ij")
    coords = torch.stack([xs.reshape(-1), ys.reshape(-1)], -1).float()
    out = z.clone()
    for i in range(b):
        src = (~blank[i]).nonzero()[:, 0]
        dst = blank[i].nonzero()[:, 0]
        flat = z[i].reshape(c, n)
        o = out[i].reshape(c, n)
        for start in range(0, dst.numel(), chunk):
            d = dst[start:start + chunk]
            dist = torch.cdist(coords[d], coords[src])             # ties -> argmin's first = lower index
            o[:, d] = flat[:, src[dist.argmin(1)]]
    return out


def zero_fill(z: torch.Tensor, blank: torch.Tensor) -> torch.Tensor:
    b, c, h, w = z.shape
    blank = blank.reshape(b, 1, h, w).bool().to(z.device)
    return torch.where(blank, torch.zeros((), dtype=z.dtype, device=z.device), z)


def noise_fill(z: torch.Tensor, blank: torch.Tensor, seed: int = 0) -> torch.Tensor:
    b, c, h, w = z.shape
    n = h * w
    blank = _check(z, blank)
    flat = z.reshape(b, c, n).float()
    keep = (~blank).float()[:, None]
    cnt = keep.sum(-1, keepdim=True)
    mean = (flat * keep).sum(-1, keepdim=True) / cnt
    std = (((flat - mean) ** 2 * keep).sum(-1, keepdim=True) / cnt.clamp_min(1)).sqrt()
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    noise = torch.randn((b, c, n), generator=g).to(z.device)
    val = (mean + std * noise).to(z.dtype)
    return torch.where(blank[:, None], val, z.reshape(b, c, n)).reshape(b, c, h, w)


def fill_blanks(z: torch.Tensor, blank: torch.Tensor, fill: str = "attention",
                rows_fn: Callable | None = None, chunk: int = 512, seed: int = 0,
                progress: Callable | None = None) -> torch.Tensor:
    if fill == "attention":
        if rows_fn is None:
            raise ValueError("fill 'attention' needs attention rows")
        return attention_fill(z, blank, rows_fn, chunk, progress)
    if fill == "nearest":
        return nearest_fill(z, blank)
    if fill == "zero":
        return zero_fill(z, blank)
    if fill == "noise":
        return noise_fill(z, blank, seed)
    raise ValueError(f"fill must be one of {FILLS}, got {fill!r}")
