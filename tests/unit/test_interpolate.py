"""Eq. 13 renormalised per blank cell, against a brute-force evaluation; the ablation fills."""
import math

import pytest
import torch

from dragfusion.guidance.interpolate import attention_fill, fill_blanks, nearest_fill, noise_fill, zero_fill


def full_attention(b, n, heads=3, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, heads, n, d, generator=g, dtype=torch.float64)
    k = torch.randn(b, heads, n, d, generator=g, dtype=torch.float64)
    return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), -1).mean(1)  # [B, N, N]


def test_attention_fill_equals_brute_force():
    b, c, h, w = 2, 4, 6, 7
    n = h * w
    a = full_attention(b, n)
    g = torch.Generator().manual_seed(3)
    z = torch.randn(b, c, h, w, generator=g)
    blank = torch.rand(b, n, generator=g) < 0.3
    calls = []

    def rows_fn(pos):
        calls.append(pos.numel())
        return a[:, pos].float()

    out = attention_fill(z, blank, rows_fn, chunk=5)
    assert max(calls) <= 5 and sum(calls) == int(blank.any(0).sum())
    zf = z.reshape(b, c, n).double()
    expected = zf.clone()
    for i in range(b):
        for p in range(n):
            if blank[i, p]:
                num = torch.zeros(c, dtype=torch.float64)
                den = 0.0
                for q in range(n):
                    if not blank[i, q]:
                        num += a[i, p, q] * zf[i, :, q]
                        den += float(a[i, p, q])
                expected[i, :, p] = num / den
    assert torch.allclose(out.reshape(b, c, n).double(), expected, atol=1e-5)
    # non-blank cells untouched, bit for bit
    keep = ~blank
    assert torch.equal(out.reshape(b, c, n)[keep[:, None].expand(-1, c, -1)], z.reshape(b, c, n)[keep[:, None].expand(-1, c, -1)])
    # blank cells differ from one another (the printed Eq. 13 would give all the same value)
    vals = out.reshape(b, c, n)[0][:, blank[0]]
    assert vals.std(dim=1).min() > 1e-3


def test_no_blanks_is_identity_and_all_blank_is_an_error():
    z = torch.randn(1, 4, 3, 3)
    same = attention_fill(z, torch.zeros(1, 9, dtype=torch.bool), lambda p: pytest.fail("rows asked"))
    assert torch.equal(same, z)
    with pytest.raises(ValueError, match="every cell is blank"):
        attention_fill(z, torch.ones(1, 9, dtype=torch.bool), lambda p: torch.ones(1, p.numel(), 9) / 9)


def test_nearest_zero_noise():
    z = torch.arange(2 * 4 * 5, dtype=torch.float32).reshape(1, 2, 4, 5)
    blank = torch.zeros(1, 4, 5, dtype=torch.bool)
    blank[0, 1:3, 1:4] = True  # a 2x3 hole
    nz = nearest_fill(z, blank)
    # cell (1,1) (y=1,x=1): nearest non-blank at distance 1: (0,1) idx 1 and (1,0) idx 5 -> lower index 1
    assert torch.equal(nz[0, :, 1, 1], z[0, :, 0, 1])
    # cell (2,2): nearest (3,2) at distance 1
    assert torch.equal(nz[0, :, 2, 2], z[0, :, 3, 2])
    assert torch.equal(nz[0][:, ~blank[0]], z[0][:, ~blank[0]])
    zz = zero_fill(z, blank)
    assert (zz[0][:, blank[0]] == 0).all() and torch.equal(zz[0][:, ~blank[0]], z[0][:, ~blank[0]])
    big = torch.randn(1, 4, 32, 32) * 3 + 1
    hole = torch.zeros(1, 32, 32, dtype=torch.bool)
    hole[0, :16] = True
    n1, n2 = noise_fill(big, hole, seed=5), noise_fill(big, hole, seed=5)
    assert torch.equal(n1, n2) and not torch.equal(n1, noise_fill(big, hole, seed=6))
    filled = n1[0][:, hole[0]]
    ref = big[0][:, ~hole[0]]
    assert torch.allclose(filled.mean(1), ref.mean(1), atol=0.35)
    assert torch.allclose(filled.std(1), ref.std(1), rtol=0.15)
    with pytest.raises(ValueError):
        fill_blanks(z, blank, "bilinear")
