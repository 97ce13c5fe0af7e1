"""Semantic-based element movement (AttentionDrag, Sec. 3.2, Eq. 5-9). Pure torch.

* Eq. 5: the drag vector of pair i, V_i = target_i - handle_i, in latent cells.
* Eq. 6: at captured step t, v_t,i[p] = A_t,i[p] / A_t,i[h_i] * V_i, where A_t,i is the attention
  row of handle i (head- and layer-averaged).
* Eq. 7: v_i[p] = mean over the captured steps of v_t,i[p].
* Several pairs (DESIGN.md): v[p] = sum_i w_i[p] v_i[p] with w_i[p] = A_i[p] / sum_j A_j[p], the
  cell's share of the step-averaged attention of the handles. One pair: exactly Eq. 6-7.
* Eq. 8: v[p] = 0 outside the mask.
* ``rigid=True`` (an option, not the paper): the ratio of Eq. 6 is replaced by 1, so every mask
  cell moves by the whole drag vector (several pairs: still weighted by the cell's share of the
  handles' attention). Eq. 6 moves a cell by the fraction A[p] / A[h] of the drag, which keeps an
  object in one piece only where the self-attention is broad over it; with a local self-attention
  the object is stretched and left behind.
* Eq. 9, a forward warp: the content of cell p is written to round(p + v[p]) (round half up);
  writes that land outside the grid are dropped. Every cell writes, cells outside the mask to
  themselves. Collisions: the source most attended by the handles wins (score = the largest
  step-averaged handle attention A_i[p] over i; ties: the lower flat index). Blanks are the mask
  cells that nothing was written to; they keep their old value until interpolation fills them.
"""
from __future__ import annotations

import torch


def drag_vectors(pairs_cells) -> torch.Tensor:
    """Eq. 5: [P, 2] (dx, dy) in cells, from ((hx, hy), (tx, ty)) pairs in cells."""
    return torch.tensor([[tx - hx, ty - hy] for (hx, hy), (tx, ty) in pairs_cells], dtype=torch.float32)


def movement_field(rows: torch.Tensor, handle_idx: torch.Tensor, drags: torch.Tensor,
                   mask: torch.Tensor | None = None, eps: float = 1e-12, rigid: bool = False) -> torch.Tensor:
    """Eq. 6-8 (+ the multi-pair weighting): per-cell movement [B, N, 2] (dx, dy) in cells.

    rows: [S, B, P, N] handle attention rows per captured step (or [B, P, N] for one step);
    handle_idx: [P] flat handle cells; drags: [P, 2]; mask: bool [B, N] or None (= everywhere).
    rigid: the whole drag vector instead of Eq. 6's fraction A[p] / A[h] of it.
    """
    rows = rows.float()
    if rows.ndim == 3:
        rows = rows[None]
    s, b, p, n = rows.shape
    if rigid:
        ratio = torch.ones_like(rows[0])                        # the whole drag: [B, P, N]
    else:
        idx = handle_idx.to(rows.device).view(1, 1, p, 1).expand(s, b, p, 1)
        ref = rows.gather(3, idx).clamp_min(eps)                # A_t,i[h_i]
        ratio = (rows / ref).mean(0)                            # Eq. 6-7 without V: [B, P, N]
    if p == 1:
        weights = torch.ones_like(ratio)
    else:
        avg = rows.mean(0)
        weights = avg / avg.sum(1, keepdim=True).clamp_min(eps)  # normalised across handles
    v = torch.einsum("bpn,pd->bnd", weights * ratio, drags.to(rows.device).float())
    if mask is not None:
        v = v * mask.to(v.device).reshape(b, n, 1).float()       # Eq. 8
    return v


def collision_score(rows: torch.Tensor) -> torch.Tensor:
    """[B, N]: how strongly the handles attend to each cell (max over handles of the step mean)."""
    rows = rows.float()
    if rows.ndim == 4:
        rows = rows.mean(0)
    return rows.max(dim=1).values


def forward_warp(z: torch.Tensor, v: torch.Tensor, score: torch.Tensor,
                 mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 9. z: [B, C, h, w]; v: [B, N, 2]; score: [B, N]; mask: bool [B, N].

    Returns (z', blank) with blank bool [B, N]. Deterministic; cells outside the mask that no
    moved cell lands on are copied bit for bit.
    """
    b, c, h, w = z.shape
    n = h * w
    dev = z.device
    ys, xs = torch.meshgrid(torch.arange(h, device=dev), torch.arange(w, device=dev), indexing="ij")
    xs, ys = xs.reshape(-1), ys.reshape(-1)
    out = z.clone()
    blank = torch.zeros(b, n, dtype=torch.bool, device=dev)
    src_all = torch.arange(n, device=dev)
    for i in range(b):
        vi = v[i].to(dev).float() * mask[i].to(dev).reshape(n, 1).float()
        dx = torch.floor(vi[:, 0] + 0.5).long()
        dy = torch.floor(vi[:, 1] + 0.5).long()
        tx, ty = xs + dx, ys + dy
        inside = (tx >= 0) & (tx < w) & (ty >= 0) & (ty < h)
        dest = (ty * w + tx)[inside]
        src = src_all[inside]
        # unique ranks: higher score wins, then the lower index
        sc = score[i].to(dev).float()[src]
        order = torch.argsort(src.float() * -1.0, stable=True)          # by index, descending
        order = order[torch.argsort(sc[order], stable=True)]            # then by score, ascending
        rank = torch.empty_like(order)
        rank[order] = torch.arange(order.numel(), device=dev)
        best = torch.full((n,), -1, dtype=torch.long, device=dev)
        best = best.scatter_reduce(0, dest, rank, reduce="amax", include_self=True)
        written = best >= 0
        winner = src[order[best[written]]]
        flat = z[i].reshape(c, n)
        out_flat = flat.clone()
        out_flat[:, written] = flat[:, winner]
        out[i] = out_flat.reshape(c, h, w)
        blank[i] = mask[i].to(dev).reshape(n) & ~written
    return out, blank


def semantic_move(z: torch.Tensor, rows: torch.Tensor, handle_idx: torch.Tensor, drags: torch.Tensor,
                  mask: torch.Tensor, rigid: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eq. 5-9 end to end: (z', blank [B, N], v [B, N, 2]). mask: bool [B, N]."""
    if rows.ndim == 3:
        rows = rows[None]
    b = z.shape[0]
    if rows.shape[1] != b:
        rows = rows.expand(rows.shape[0], b, *rows.shape[2:])
    mask = mask.reshape(b, -1).bool()
    v = movement_field(rows, handle_idx, drags, mask, rigid=rigid)
    z2, blank = forward_warp(z, v, collision_score(rows), mask)
    return z2, blank, v
