"""Automatic mask generation (AttentionDrag, Sec. 3.3, Eq. 11-12). Pure torch.

Inputs are attention rows of the handle cells, already head- and layer-averaged:
``rows[s, b, i, :]`` = the attention of handle ``i`` over all latent cells at captured step ``s``
(each row sums to 1). Eq. 11 averages them over the steps; Eq. 12 thresholds the ratio of each
cell's attention to a reference:

* ``reference="handle"`` (the paper, literally): ``A[p] / A[h] > tau``, the handle's attention to
  itself as the reference. This is empty whenever the handle attends most to itself.
* ``reference="mean"``: ``A[p] / (1/N) > tau``, attention relative to the uniform level 1/N.

Several handles: the union of the per-handle masks.
"""
from __future__ import annotations

import torch

REFERENCES = ("handle", "mean")


def handle_cells(pairs_cells, h: int, w: int) -> torch.Tensor:
    """Flat latent-cell indices (y * w + x) of each pair's handle; pairs in cell units (floats)."""
    idx = []
    for (hx, hy), _ in pairs_cells:
        x = min(max(int(hx // 1), 0), w - 1)
        y = min(max(int(hy // 1), 0), h - 1)
        idx.append(y * w + x)
    return torch.tensor(idx, dtype=torch.long)


def average_maps(rows: torch.Tensor) -> torch.Tensor:
    """Eq. 11: [S, B, P, N] -> [B, P, N], the mean over the captured steps (a [B, P, N] input is returned)."""
    rows = rows.float()
    return rows.mean(0) if rows.ndim == 4 else rows


def reference_values(maps: torch.Tensor, handle_idx: torch.Tensor, reference: str) -> torch.Tensor:
    """[B, P] denominators of Eq. 12 for maps [B, P, N]."""
    if reference == "handle":
        idx = handle_idx.to(maps.device).view(1, -1, 1).expand(maps.shape[0], -1, 1)
        return maps.gather(2, idx)[..., 0]
    if reference == "mean":
        return torch.full(maps.shape[:2], 1.0 / maps.shape[-1], dtype=maps.dtype, device=maps.device)
    raise ValueError(f"reference must be one of {REFERENCES}, got {reference!r}")


def auto_mask(rows: torch.Tensor, handle_idx: torch.Tensor, tau: float = 2.0,
              reference: str = "handle") -> torch.Tensor:
    """Eq. 11-12 for every handle, united: bool [B, N]."""
    maps = average_maps(rows)
    ref = reference_values(maps, handle_idx, reference)
    per_handle = maps > tau * ref[..., None]  # A / ref > tau, without dividing by a tiny ref
    return per_handle.any(dim=1)


def dilate(mask: torch.Tensor, cells: int) -> torch.Tensor:
    """Grow a bool mask [B, h, w] by ``cells`` cells (a square structuring element)."""
    if cells <= 0:
        return mask
    m = mask.float()[:, None]
    m = torch.nn.functional.max_pool2d(m, kernel_size=2 * cells + 1, stride=1, padding=cells)
    return m[:, 0] > 0.5
