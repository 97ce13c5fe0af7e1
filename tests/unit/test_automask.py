"""AutoMask (Eq. 11-12) on hand-built queries and keys with known answers."""
import math

import pytest
import torch

from dragfusion.guidance.automask import auto_mask, dilate, handle_cells, reference_values


def softmax_rows(q, k, positions):
    """Naive head-averaged attention rows: q, k [B, heads, N, d] -> [B, P, N]."""
    a = torch.softmax(q[:, :, positions].double() @ k.double().transpose(-1, -2) / math.sqrt(q.shape[-1]), -1)
    return a.mean(1).float()


def region_qk(h, w, region, handle, own_key_zero, heads=2, d=8, strength=6.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = h * w
    q = 0.05 * torch.randn(1, heads, n, d, generator=g)
    k = 0.05 * torch.randn(1, heads, n, d, generator=g)
    e = torch.zeros(d)
    e[0] = strength
    for p in region:
        q[0, :, p] = e
        k[0, :, p] = e
    q[0, :, handle] = e
    if own_key_zero:
        k[0, :, handle] = 0.0
    return q, k


def cells(h, w, x0, y0, x1, y1):
    return [y * w + x for y in range(y0, y1) for x in range(x0, x1)]


def test_reference_mean_returns_exactly_the_region():
    h, w = 12, 10
    region = cells(h, w, 2, 3, 6, 7)
    handle = region[5]
    q, k = region_qk(h, w, region, handle, own_key_zero=False)
    steps = [softmax_rows(q, k, torch.tensor([handle])) for _ in range(3)]
    rows = torch.stack(steps)  # [S, B, P, N]
    m = auto_mask(rows, torch.tensor([handle]), tau=2.0, reference="mean")
    expected = torch.zeros(1, h * w, dtype=torch.bool)
    expected[0, region] = True
    assert torch.equal(m, expected)


def test_reference_handle_is_the_papers_literal_ratio():
    h, w = 8, 8
    region = cells(h, w, 4, 1, 7, 4)
    handle = 2 * w + 2  # outside the region, attends to it, its own key is weak
    q, k = region_qk(h, w, region, handle, own_key_zero=True)
    rows = softmax_rows(q, k, torch.tensor([handle]))[None]
    m = auto_mask(rows, torch.tensor([handle]), tau=2.0, reference="handle")
    expected = torch.zeros(1, h * w, dtype=torch.bool)
    expected[0, region] = True
    assert torch.equal(m, expected)
    # when the handle attends most to itself the literal Eq. 12 is empty (documented)
    q2, k2 = region_qk(h, w, region, region[0], own_key_zero=False)
    rows2 = softmax_rows(q2, k2, torch.tensor([region[0]]))[None]
    assert not auto_mask(rows2, torch.tensor([region[0]]), 2.0, "handle").any()
    assert auto_mask(rows2, torch.tensor([region[0]]), 2.0, "mean").any()


def test_eq11_averages_over_steps_before_thresholding():
    # cell 1: ratio 3.8 at step 1 but 0.1 at step 2 -> mean 1.95, out; cell 2: mean 2.2, in
    r1 = torch.tensor([0.1, 0.38, 0.30, 0.22])
    r2 = torch.tensor([0.1, 0.01, 0.14, 0.75])
    rows = torch.stack([r1, r2])[:, None, None, :]
    m = auto_mask(rows, torch.tensor([0]), tau=2.0, reference="handle")
    assert m[0].tolist() == [False, False, True, True]


def test_several_handles_union_and_batch():
    h, w = 10, 10
    ra, rb = cells(h, w, 0, 0, 3, 3), cells(h, w, 6, 6, 10, 10)
    qa, ka = region_qk(h, w, ra, ra[0], False, seed=1)
    # second region on its own axis
    for p in rb:
        qa[0, :, p] = 0
        ka[0, :, p] = 0
        qa[0, :, p, 1] = 6.0
        ka[0, :, p, 1] = 6.0
    rows = softmax_rows(qa, ka, torch.tensor([ra[0], rb[0]]))
    rows = torch.cat([rows, rows.flip(1)])  # batch of 2 (pair order swapped: same union)
    m = auto_mask(rows[None], torch.tensor([ra[0], rb[0]]), 2.0, "mean")
    expected = torch.zeros(h * w, dtype=torch.bool)
    expected[ra + rb] = True
    assert torch.equal(m[0], expected)
    m1 = auto_mask(rows[None, :1, :1], torch.tensor([ra[0]]), 2.0, "mean")
    assert m1[0].sum() == len(ra)


def test_handle_cells_border_and_reference_values():
    idx = handle_cells([((9.99, 7.5), (1.0, 1.0)), ((0.0, 0.0), (2, 2))], h=8, w=10)
    assert idx.tolist() == [7 * 10 + 9, 0]
    maps = torch.rand(2, 2, 80)
    ref = reference_values(maps, idx, "handle")
    assert torch.equal(ref[:, 0], maps[:, 0, 79]) and torch.equal(ref[:, 1], maps[:, 1, 0])
    assert torch.allclose(reference_values(maps, idx, "mean"), torch.full((2, 2), 1 / 80))
    with pytest.raises(ValueError):
        reference_values(maps, idx, "median")


def test_dilate_square():
    m = torch.zeros(1, 7, 7, dtype=torch.bool)
    m[0, 3, 3] = True
    d = dilate(m, 2)
    assert d.sum() == 25 and d[0, 1:6, 1:6].all()
    assert torch.equal(dilate(m, 0), m)
