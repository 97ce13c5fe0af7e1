"""Self-attention rows from captured queries and keys, in chunks.

A row is ``softmax(q[p] . k^T / sqrt(d))`` for one query position ``p`` over all key tokens
(paper Eq. 3-4). It is computed per head and then averaged over heads. The full
tokens x tokens map is never built: positions are processed in chunks whose
``[B, heads, chunk, tokens]`` score block stays under ``max_elements`` float32 values.

Pure torch; no ComfyUI.
"""
from __future__ import annotations

import math

import torch

# 2**24 float32 values = 64 MiB for one chunk's score block (and as much again for its softmax).
DEFAULT_MAX_ELEMENTS = 1 << 24


def chunk_size(batch: int, heads: int, tokens: int, max_elements: int = DEFAULT_MAX_ELEMENTS) -> int:
    """How many query positions fit in one chunk of at most ``max_elements`` scores."""
    return max(1, int(max_elements // max(1, batch * heads * tokens)))


def attention_rows(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor,
                   max_elements: int = DEFAULT_MAX_ELEMENTS, device=None) -> torch.Tensor:
    """Head-averaged attention rows.

    q, k: ``[B, heads, tokens, dim]`` (any float dtype; computed in float32).
    positions: LongTensor ``[P]`` of query token indices in ``0..tokens-1``.
    Returns float32 ``[B, P, tokens]``; every row sums to 1.
    """
    if q.dim() != 4 or k.dim() != 4:
        raise ValueError(f"q and k must be [B, heads, tokens, dim], got {tuple(q.shape)} and {tuple(k.shape)}")
    if q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} do not match in batch, heads or dim")
    positions = torch.as_tensor(positions, dtype=torch.long).reshape(-1)
    b, h, tq, d = q.shape
    tk = k.shape[2]
    if positions.numel() and (int(positions.min()) < 0 or int(positions.max()) >= tq):
        raise ValueError(f"positions must be in 0..{tq - 1}, got {positions.min().item()}..{positions.max().item()}")
    device = torch.device(device) if device is not None else q.device
    positions = positions.to(device)
    kt = k.to(device=device, dtype=torch.float32).transpose(-1, -2)  # [B, H, d, Tk]
    scale = 1.0 / math.sqrt(d)
    out = torch.empty((b, positions.numel(), tk), dtype=torch.float32, device=device)
    step = chunk_size(b, h, tk, max_elements)
    for start in range(0, positions.numel(), step):
        idx = positions[start:start + step]
        qs = q.index_select(2, idx.to(q.device)).to(device=device, dtype=torch.float32)  # [B, H, c, d]
        scores = torch.matmul(qs, kt).mul_(scale)                                    # [B, H, c, Tk]
        out[:, start:start + idx.numel()] = scores.softmax(dim=-1).mean(dim=1)
        del scores, qs
    return out


def grid_position(positions: torch.Tensor, src_hw: tuple, dst_hw: tuple) -> torch.Tensor:
    """Map flat cell indices on ``src_hw`` to flat indices on ``dst_hw`` by floor scaling."""
    (sh, sw), (dh, dw) = src_hw, dst_hw
    positions = torch.as_tensor(positions, dtype=torch.long)
    y, x = positions // sw, positions % sw
    return (y * dh) // sh * dw + (x * dw) // sw


def nearest_index(src_hw: tuple, dst_hw: tuple, device=None) -> torch.Tensor:
    """For each cell of ``dst_hw`` (flat), the flat index of the ``src_hw`` cell it falls in."""
    (sh, sw), (dh, dw) = src_hw, dst_hw
    ys = (torch.arange(dh, device=device) * sh) // dh
    xs = (torch.arange(dw, device=device) * sw) // dw
    return (ys[:, None] * sw + xs[None, :]).reshape(-1)


def upsample_rows(rows: torch.Tensor, src_hw: tuple, dst_hw: tuple) -> torch.Tensor:
    """Nearest-upsample rows ``[..., sh*sw]`` to ``[..., dh*dw]``, dividing every value by the
    number of destination cells that copy the same source cell, so each row keeps its sum."""
    if tuple(src_hw) == tuple(dst_hw):
        return rows
    idx = nearest_index(src_hw, dst_hw, rows.device)
    count = torch.bincount(idx, minlength=src_hw[0] * src_hw[1]).to(rows.dtype)
    if bool((count == 0).any()):
        raise ValueError(f"cannot upsample a {src_hw} grid to the smaller {dst_hw} grid")
    return rows.index_select(-1, idx) / count[idx]
