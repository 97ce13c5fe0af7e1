"""AttnCapture.rows() against a naive full softmax(q k^T / sqrt(d)) on the same tensors."""
import math

import pytest
import torch

from dragfusion.guidance.attention_rows import attention_rows, chunk_size, grid_position, upsample_rows
from dragfusion.guidance.attn_capture import AttnCapture


def make_capture(latent_hw=(8, 8), layers=(("input.1.0", (8, 8)), ("input.4.0", (4, 4)), ("output.2.0", (8, 8))),
                 steps=(0, 2), batch=2, heads=4, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, layer_hw = {}, {}, {}
    for name, hw in layers:
        layer_hw[name] = hw
        for s in steps:
            t = hw[0] * hw[1]
            q[(s, name)] = (torch.randn(batch, heads, t, dim, generator=g) * 2).half()
            k[(s, name)] = (torch.randn(batch, heads, t, dim, generator=g) * 2).half()
    traj = tuple(torch.zeros(batch, 4, *latent_hw) for _ in range(max(steps) + 2))
    return AttnCapture(latent_hw=latent_hw, sigmas=torch.linspace(10, 0, 6), edit_step=5 - (max(steps) + 1),
                       trajectory=traj, steps=tuple(steps), layers=tuple(n for n, _ in layers),
                       layer_hw=layer_hw, q=q, k=k, step_sigmas={s: 1.0 + s for s in steps}).validate()


def naive_rows(cap, positions, steps, layers):
    """Full map per head in float64, head mean, then per latent cell by explicit loops."""
    h, w = cap.latent_hw
    per_step = []
    for s in steps:
        acc = torch.zeros(cap.q[(s, layers[0])].shape[0], len(positions), h * w, dtype=torch.float64)
        for l in layers:
            q, k = cap.q[(s, l)].double(), cap.k[(s, l)].double()
            full = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1).mean(1)  # [B, T, T]
            lh, lw = cap.layer_hw[l]
            owner = [[(y * lh // h) * lw + (x * lw // w) for x in range(w)] for y in range(h)]
            counts = {}
            for row in owner:
                for c in row:
                    counts[c] = counts.get(c, 0) + 1
            for i, p in enumerate(positions):
                py, px = divmod(int(p), w)
                lp = (py * lh // h) * lw + (px * lw // w)
                for y in range(h):
                    for x in range(w):
                        c = owner[y][x]
                        acc[:, i, y * w + x] += full[:, lp, c] / counts[c]
        per_step.append(acc / len(layers))
    return torch.stack(per_step)


@pytest.mark.parametrize("latent_hw,layers", [
    ((8, 8), (("input.1.0", (8, 8)), ("input.4.0", (4, 4)), ("output.2.0", (8, 8)))),
    ((7, 5), (("input.1.0", (7, 5)), ("input.4.0", (4, 3)), ("middle.0.0", (2, 2)))),
])
def test_rows_equal_naive_softmax(latent_hw, layers):
    cap = make_capture(latent_hw=latent_hw, layers=layers)
    h, w = latent_hw
    positions = torch.tensor([0, 3, w + 1, h * w - 1, (h // 2) * w + w // 2])
    names = [n for n, _ in layers]
    ref = naive_rows(cap, positions, cap.steps, names)
    got = cap.rows(positions, reduce_steps=False)
    assert got.dtype == torch.float32 and got.shape == (2, 2, 5, h * w)
    torch.testing.assert_close(got.double(), ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(cap.rows(positions).double(), ref.mean(0), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(got.sum(-1), torch.ones(2, 2, 5), atol=1e-5, rtol=0)
    # subsets of steps and layers; tiny chunks give the same answer
    sub = cap.rows(positions, steps=[2], layers=[names[1]], max_elements=1)
    torch.testing.assert_close(sub.double(), naive_rows(cap, positions, [2], [names[1]])[0], atol=1e-6, rtol=1e-5)


def test_single_layer_matches_plain_softmax_rows():
    cap = make_capture(layers=(("output.0.0", (8, 8)),), steps=(1,), batch=1, heads=3, dim=5)
    q, k = cap.q[(1, "output.0.0")].float(), cap.k[(1, "output.0.0")].float()
    full = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(5), -1).mean(1)
    pos = torch.tensor([5, 17, 63])
    torch.testing.assert_close(cap.rows(pos), full[:, pos], atol=1e-6, rtol=1e-5)


def test_chunking_bounds_the_score_block():
    assert chunk_size(1, 8, 4096, 1 << 24) == 512
    assert chunk_size(4, 8, 4096, 10) == 1
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(2, 4, 50, 8, generator=g), torch.randn(2, 4, 50, 8, generator=g)
    pos = torch.arange(50)
    torch.testing.assert_close(attention_rows(q, k, pos, max_elements=2 * 4 * 50 * 3), attention_rows(q, k, pos))


def test_grid_mapping_and_upsampling_keep_mass():
    pos = torch.tensor([0, 7, 8 * 7 + 7, 8 * 3 + 5])
    assert grid_position(pos, (8, 8), (4, 4)).tolist() == [0, 3, 15, 4 * 1 + 2]
    rows = torch.softmax(torch.randn(3, 6), -1)
    up = upsample_rows(rows, (2, 3), (5, 7))
    torch.testing.assert_close(up.sum(-1), torch.ones(3))


def test_bad_positions_steps_layers_raise_value_errors():
    cap = make_capture()
    with pytest.raises(ValueError, match="positions must be in 0..63"):
        cap.rows(torch.tensor([64]))
    with pytest.raises(ValueError, match="integer"):
        cap.rows(torch.tensor([1.5]))
    with pytest.raises(ValueError, match="step 1 was not captured"):
        cap.rows(torch.tensor([1]), steps=[1])
    with pytest.raises(ValueError, match="not captured"):
        cap.rows(torch.tensor([1]), layers=["output.9.0"])
    assert cap.position(3, 2) == 19
    assert "AttnCapture(latent 8x8" in repr(cap)
    # fp16 (2 bytes) x (q, k) x [two 8x8 layers + one 4x4 layer] x batch 2 x 4 heads x dim 8
    assert cap.nbytes_per_step() == 2 * 2 * (2 * 64 + 16) * 2 * 4 * 8
