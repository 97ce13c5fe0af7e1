"""ProjectionBank: q / k / v projected from a stored layer input equal the Linear's own output,
and AttnCapture.rows() over a bank equals a naive softmax(q k^T / sqrt(d)) of those q and k."""
import math

import pytest
import torch

from dragfusion.guidance.attn_capture import AttnCapture
from dragfusion.guidance.projection_bank import (Projection, ProjectionBank, effective_projection, project_heads,
                                                  unique_nbytes)


def linear(c_in, c_out, bias, seed):
    torch.manual_seed(seed)
    lin = torch.nn.Linear(c_in, c_out, bias=bias)
    if bias:
        torch.nn.init.normal_(lin.bias)
    return lin


@pytest.mark.parametrize("bias", [False, True])
def test_effective_projection_reads_the_weights_off_the_outputs(bias):
    lin = linear(12, 16, bias, 0)
    p = effective_projection(lin, 12, heads=4, device="cpu", dtype=torch.float32, store_device="cpu")
    torch.testing.assert_close(p.weight_t, lin.weight.detach().t())
    if bias:
        torch.testing.assert_close(p.bias, lin.bias.detach())
    else:
        assert p.bias is None
    assert p.dim == 4 and p.nbytes == (12 * 16 + (16 if bias else 0)) * 4


def test_effective_projection_includes_whatever_the_callable_adds():
    """A LoRA-like delta applied inside the call is part of the effective weights."""
    lin = linear(8, 8, False, 1)
    delta = torch.randn(8, 8, generator=torch.Generator().manual_seed(2)) * 0.1

    def patched(x):
        return lin(x) + x @ delta.t()

    p = effective_projection(patched, 8, heads=2, device="cpu", dtype=torch.float32, store_device="cpu")
    torch.testing.assert_close(p.weight_t, (lin.weight.detach() + delta).t())


@pytest.mark.parametrize("bias", [False, True])
def test_bank_projection_equals_the_linear_split_into_heads(bias):
    b, t, c, heads = 2, 10, 12, 3
    lin = linear(c, c, bias, 3)
    x = torch.randn(b, t, c, generator=torch.Generator().manual_seed(4)).half()
    p = effective_projection(lin, c, heads, "cpu", torch.float32, "cpu")
    bank = ProjectionBank({(0, "L"): x}, {"L": p})
    with torch.no_grad():
        expect = lin(x.float()).reshape(b, t, heads, c // heads).permute(0, 2, 1, 3)
    got = bank[(0, "L")]
    assert got.dtype == torch.float16 and got.shape == (b, heads, t, c // heads) == bank.shape((0, "L"))
    torch.testing.assert_close(got.float(), expect, atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(bank.project((0, "L")), expect, atol=1e-5, rtol=1e-5)
    tokens = torch.tensor([7, 0, 7])
    torch.testing.assert_close(bank.project((0, "L"), tokens=tokens), expect[:, :, tokens], atol=1e-5, rtol=1e-5)
    assert list(bank) == [(0, "L")] and len(bank) == 1 and (0, "L") in bank and (1, "L") not in bank
    assert torch.equal(project_heads(x, p), bank.project((0, "L")))


def test_shared_tensors_count_once():
    x = torch.zeros(2, 5, 8, dtype=torch.float16)
    y = torch.zeros(2, 5, 8, dtype=torch.float16)
    assert unique_nbytes([x, x, y]) == 2 * x.numel() * 2


def test_rows_over_a_bank_equal_naive_softmax_and_the_bytes_are_the_inputs():
    b, (h, w), c, heads = 2, (6, 5), 16, 4
    g = torch.Generator().manual_seed(5)
    wq, wk = linear(c, c, False, 6), linear(c, c, True, 7)
    layers = {"input.1.0": (6, 5), "input.4.0": (3, 3)}
    xs = {(s, l): (torch.randn(b, hw[0] * hw[1], c, generator=g) * 2).half() for s in (0, 1) for l, hw in layers.items()}
    proj = lambda lin: {l: effective_projection(lin, c, heads, "cpu", torch.float32, "cpu") for l in layers}  # noqa: E731
    q, k = ProjectionBank(xs, proj(wq)), ProjectionBank(xs, proj(wk))
    cap = AttnCapture(latent_hw=(h, w), sigmas=torch.linspace(10, 0, 6), edit_step=3,
                      trajectory=tuple(torch.zeros(b, 4, h, w) for _ in range(3)), steps=(0, 1),
                      layers=tuple(layers), layer_hw=layers, q=q, k=k).validate()
    positions = torch.tensor([0, 4, 17, h * w - 1])
    got = cap.rows(positions, reduce_steps=False, max_elements=64)
    expect = torch.zeros(2, b, len(positions), h * w, dtype=torch.float64)
    for si, s in enumerate((0, 1)):
        for l, (lh, lw) in layers.items():
            with torch.no_grad():
                x = xs[(s, l)].double()
                qq = (x @ wq.weight.double().t()).reshape(b, -1, heads, c // heads).permute(0, 2, 1, 3)
                kk = (x @ wk.weight.double().t() + wk.bias.double()).reshape(b, -1, heads, c // heads).permute(0, 2, 1, 3)
            full = torch.softmax(qq @ kk.transpose(-1, -2) / math.sqrt(c // heads), -1).mean(1)  # [B, T, T]
            for i, p in enumerate(positions.tolist()):
                py, px = divmod(p, w)
                lp = (py * lh // h) * lw + (px * lw // w)
                for y in range(h):
                    for x_ in range(w):
                        cell = (y * lh // h) * lw + (x_ * lw // w)
                        area = sum(1 for yy in range(h) for xx in range(w) if (yy * lh // h) * lw + (xx * lw // w) == cell)
                        expect[si, :, i, y * w + x_] += full[:, lp, cell] / area / len(layers)
    torch.testing.assert_close(got.double(), expect, atol=1e-5, rtol=1e-4)
    assert cap.batch == b
    assert cap.nbytes_per_step(0) == sum(t.numel() * 2 for (s, _), t in xs.items() if s == 0)  # x once for q and k
    assert cap.nbytes_fixed() == 2 * 2 * c * c * 4 + 2 * c * 4  # Wq, Wk per layer, k's bias
    # a key cache kept across calls projects each layer's keys once, and gives the same rows
    calls = []
    project = k.project
    k.project = lambda key, **kw: calls.append((key, kw.get("tokens"))) or project(key, **kw)
    cache = {}
    chunks = [cap.rows(positions[i:i + 2], reduce_steps=False, max_elements=64, k_cache=cache) for i in (0, 2)]
    torch.testing.assert_close(torch.cat(chunks, 2), got)
    assert sorted(calls, key=str) == sorted(((s, l), None) for s in (0, 1) for l in layers) and set(cache) == set(xs)


def test_project_flat_is_the_attention_backend_layout():
    b, t, c, heads = 2, 7, 12, 3
    lin = linear(c, c, True, 9)
    x = torch.randn(b, t, c, generator=torch.Generator().manual_seed(10)).half()
    bank = ProjectionBank({(0, "L"): x}, {"L": effective_projection(lin, c, heads, "cpu", torch.float32, "cpu")})
    flat = bank.project_flat((0, "L"), dtype=torch.float16)
    with torch.no_grad():
        expect = lin(x.float())
    assert flat.shape == (b, t, c) and flat.dtype == torch.float16 and flat.is_contiguous()
    torch.testing.assert_close(flat.float(), expect, atol=2e-3, rtol=2e-3)
    heads_view = bank.project((0, "L"))
    torch.testing.assert_close(heads_view.permute(0, 2, 1, 3).reshape(b, t, c), expect, atol=1e-5, rtol=1e-5)


def test_membership_does_not_project():
    """``key in bank`` answers from the stored inputs: every node's capture check asks it for each
    (step, layer), and projecting there cost ~0.1 s per node (a quarter of the edit's overhead).
    The projection here cannot multiply with the input, so projecting would raise."""
    x = torch.randn(1, 4, 8, dtype=torch.float16)
    bad = Projection(weight_t=torch.zeros(3, 8), bias=None, heads=2)
    bank = ProjectionBank({(0, "L"): x}, {"L": bad})
    assert (0, "L") in bank
    assert (1, "L") not in bank and (0, "M") not in bank
    with pytest.raises(RuntimeError):
        bank[(0, "L")]
