"""VersaFusion energy (Eq. 5-7) against the formulas on hand-built features."""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from dragfusion.guidance.energy import (ALPHA, BETA, energy_eq6, energy_term, identity_grid, multiscale_energy,
                                        region_mean, resize_grid, resize_mask, rms_normalised_gradient,
                                        score_with_energy, similarity_eq5, split_multiscale_energy, warp_features,
                                        x0_guided_denoised)


def unit(v):
    v = torch.tensor(v, dtype=torch.float32)
    return v / v.norm()


def fill(vec, h=4, w=4):
    """[1, C, h, w] with the same vector in every cell."""
    return vec.view(1, -1, 1, 1).expand(1, vec.numel(), h, w).clone()


@pytest.mark.parametrize("b, cos", [([1.0, 0.0, 0.0], 1.0), ([0.0, 1.0, 0.0], 0.0), ([-1.0, 0.0, 0.0], -1.0),
                                    ([1.0, 1.0, 0.0], 1 / math.sqrt(2))])
def test_eq5_local_is_half_cos_plus_one(b, cos):
    a = fill(unit([1.0, 0.0, 0.0]))
    f_b = fill(unit(b))
    m = torch.ones(4, 4)
    s = similarity_eq5(a, f_b, m)
    assert s.shape == (1,)
    assert float(s) == pytest.approx(0.5 * (cos + 1), abs=1e-6)


def test_eq5_local_weighted_mean_over_mask_only():
    a = fill(unit([1.0, 0.0]))
    b = fill(unit([1.0, 0.0]))
    b[:, :, :, 2:] = -b[:, :, :, 2:]          # right half opposite: S = 0 there, 1 on the left
    m = torch.zeros(4, 4)
    m[:, 1:3] = 1                              # one column each side -> mean 0.5
    assert float(similarity_eq5(a, b, m)) == pytest.approx(0.5)
    m2 = torch.zeros(4, 4)
    m2[:, 0] = 1.0
    m2[:, 3] = 0.25                            # soft weights: (1*1 + 0.25*0) / 1.25
    assert float(similarity_eq5(a, b, m2)) == pytest.approx(0.8)


def test_eq5_global_uses_region_means():
    g = torch.zeros(1, 2, 2, 2)
    g[0, 0, 0, 0] = 1.0                         # gen region mean = (0.5, 0.5) over two cells
    g[0, 1, 0, 1] = 1.0
    r = fill(unit([1.0, 0.0]), 2, 2)
    m = torch.zeros(2, 2)
    m[0] = 1
    assert torch.allclose(region_mean(g, m), torch.tensor([[0.5, 0.5]]))
    s = similarity_eq5(g, r, m, mode="global", m_gud=torch.ones(2, 2))
    assert float(s) == pytest.approx(0.5 * (1 / math.sqrt(2) + 1), abs=1e-6)


def test_eq5_stops_gradient_into_guidance_branch():
    a = torch.randn(1, 3, 4, 4, requires_grad=True)
    b = torch.randn(1, 3, 4, 4, requires_grad=True)
    similarity_eq5(a, b, torch.ones(4, 4)).sum().backward()
    assert a.grad is not None and a.grad.abs().sum() > 0
    assert b.grad is None


@given(s_e=st.floats(0, 1), s_p=st.floats(0, 1), w_e=st.floats(0, 20), w_p=st.floats(0, 20))
@settings(max_examples=50, deadline=None)
def test_eq6_formula(s_e, s_p, w_e, w_p):
    got = energy_eq6(torch.tensor(s_e), torch.tensor(s_p), w_e, w_p)
    assert float(got) == pytest.approx(w_e / (1 + 4 * s_e) + w_p / (1 + 4 * s_p), rel=1e-5, abs=1e-6)
    assert (ALPHA, BETA) == (1.0, 4.0)


def test_eq6_bounds_identical_and_opposite():
    assert float(energy_term(torch.tensor(1.0), 5.0)) == pytest.approx(1.0)   # w / 5
    assert float(energy_term(torch.tensor(0.0), 5.0)) == pytest.approx(5.0)   # w / 1
    assert float(energy_term(torch.tensor(0.5), 6.0, alpha=2, beta=2)) == pytest.approx(2.0)


def test_warp_reads_shifted_cells_exactly():
    torch.manual_seed(0)
    f = torch.randn(1, 5, 8, 8)
    g = identity_grid((8, 8))
    g[..., 0] -= 2 * 3 / 8                        # every cell reads 3 cells to its left
    out = warp_features(f, g)
    assert torch.allclose(out[..., 3:], f[..., :5], atol=1e-6)
    assert torch.allclose(warp_features(f, identity_grid((8, 8))), f, atol=1e-6)


def test_resize_helpers():
    m = torch.zeros(8, 8)
    m[:4, :4] = 1
    assert torch.equal(resize_mask(m, (2, 2)), torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    assert resize_mask(m, (16, 16)).sum() == 64
    g = identity_grid((8, 8)) + torch.tensor([0.25, -0.5])
    assert torch.allclose(resize_grid(g, (4, 4)), identity_grid((4, 4)) + torch.tensor([0.25, -0.5]), atol=1e-6)


def test_multiscale_energy_matches_per_scale_formula():
    torch.manual_seed(1)
    fg = [torch.randn(1, 4, 8, 8), torch.randn(1, 6, 4, 4)]
    fs = [torch.randn(1, 4, 8, 8), torch.randn(1, 6, 4, 4)]
    m_gen = torch.zeros(8, 8)
    m_gen[2:4, 2:4] = 1
    m_share = 1 - m_gen
    grid = identity_grid((8, 8))
    grid[..., 0] += 2 * 2 / 8                    # read 2 cells to the right
    total, info = multiscale_energy(fg, fs, fs, m_gen, grid, m_share, None, w_e=3.0, w_p=2.0)
    expect = 0.0
    for k in range(2):
        hw = fg[k].shape[-2:]
        s_e = similarity_eq5(fg[k], fs[k], resize_mask(m_gen, hw), resize_grid(grid, hw))
        s_p = similarity_eq5(fg[k], fs[k], resize_mask(m_share, hw))
        expect += 0.5 * float(3.0 / (1 + 4 * s_e) + 2.0 / (1 + 4 * s_p))
        assert float(info[k][0]) == pytest.approx(float(s_e))
    assert float(total) == pytest.approx(expect, rel=1e-6)
    # an empty edit mask or zero weight drops the term
    t2, info2 = multiscale_energy(fg, fs, fs, torch.zeros(8, 8), grid, m_share, None, w_e=3.0, w_p=0.0)
    assert float(t2) == 0.0 and info2[0] == (None, None)


def test_split_energy_is_eq6_plus_the_removal_terms_by_hand():
    """inside = edit term + w_c * S_local(vacated) + w_i / (1 + 4 S_global(vacated mean, background mean));
    outside = the preservation term; with the removal weights 0 their sum is Eq. 6 (multiscale_energy)."""
    torch.manual_seed(5)
    fg, fs = [torch.randn(1, 5, 8, 8)], [torch.randn(1, 5, 8, 8)]
    m_gen = torch.zeros(8, 8)
    m_gen[2:4, 4:6] = 1
    m_vac = torch.zeros(8, 8)
    m_vac[2:4, 1:3] = 1
    m_share = 1 - torch.maximum(m_gen, m_vac)
    grid = identity_grid((8, 8))
    inside, outside, info = split_multiscale_energy(fg, fs, fs, m_gen, grid, m_share, None, 3.0, 2.0, m_vacate=m_vac,
                                                    w_contrast=0.5, w_inpaint=0.7)
    s_e = float(similarity_eq5(fg[0], fs[0], m_gen, grid))
    s_p = float(similarity_eq5(fg[0], fs[0], m_share))
    cos = lambda a, b: float(torch.nn.functional.cosine_similarity(a, b, dim=0))
    vac_gen = fg[0][0][:, m_vac > 0]                           # [C, cells]
    vac_src = fs[0][0][:, m_vac > 0]
    s_c = sum(0.5 * (cos(vac_gen[:, j], vac_src[:, j]) + 1) for j in range(vac_gen.shape[1])) / vac_gen.shape[1]
    s_i = 0.5 * (cos(vac_gen.mean(1), fs[0][0][:, m_share > 0].mean(1)) + 1)
    assert float(outside) == pytest.approx(2.0 / (1 + 4 * s_p), rel=1e-5)
    assert float(inside) == pytest.approx(3.0 / (1 + 4 * s_e) + 0.5 * s_c + 0.7 / (1 + 4 * s_i), rel=1e-5)
    (rc, ri), = info["removal"]
    assert float(rc) == pytest.approx(s_c, rel=1e-5) and float(ri) == pytest.approx(s_i, rel=1e-5)
    plain, _ = multiscale_energy(fg, fs, fs, m_gen, grid, m_share, None, 3.0, 2.0)
    i0, o0, _ = split_multiscale_energy(fg, fs, fs, m_gen, grid, m_share, None, 3.0, 2.0, m_vacate=m_vac)
    assert float(i0 + o0) == pytest.approx(float(plain), rel=1e-6)
    flags = dict(m_gen=True, m_share=True, m_vacate=False)     # told the vacated mask is empty: no removal terms
    i1, _, info1 = split_multiscale_energy(fg, fs, fs, m_gen, grid, m_share, None, 3.0, 2.0, m_vacate=m_vac,
                                           w_contrast=0.5, w_inpaint=0.7, nonempty=flags)
    assert float(i1) == pytest.approx(float(i0), rel=1e-6) and info1["removal"] == []


def test_gradient_step_lowers_energy():
    """On synthetic features a gradient step on the generation features lowers L (Eq. 6 at two scales)."""
    torch.manual_seed(2)
    f_gud = [torch.randn(1, 8, 8, 8), torch.randn(1, 8, 4, 4)]
    x = torch.randn(1, 8, 8, 8, requires_grad=True)
    m_gen = torch.zeros(8, 8)
    m_gen[1:4, 5:8] = 1
    grid = identity_grid((8, 8))
    grid[..., 0] -= 2 * 4 / 8
    m_share = torch.zeros(8, 8)
    m_share[5:, :] = 1

    def energy(z):
        feats = [z, torch.nn.functional.avg_pool2d(z, 2)]
        return multiscale_energy(feats, f_gud, f_gud, m_gen, grid, m_share, None, 1.0, 1.0)[0]

    e0 = energy(x)
    g, = torch.autograd.grad(e0, x)
    for lr in (0.5, 2.0):
        e1 = energy(x.detach() - lr * g)
        assert float(e1.detach()) < float(e0.detach())


def test_score_with_energy_moves_latent_downhill():
    """Eq. 7: a DDIM step with eps~ = eps + s*grad L changes the latent by -(sigma - sigma_next)*s*grad L."""
    z = torch.tensor([1.0, -2.0], requires_grad=True)
    loss = (z ** 2).sum()
    g, = torch.autograd.grad(loss, z)
    eps = torch.zeros(2)
    sigma, sigma_next = 2.0, 1.0
    x0 = z.detach() - sigma * score_with_energy(eps, g, 0.1)
    z_next = x0 + sigma_next * score_with_energy(eps, g, 0.1)
    assert float((z_next ** 2).sum()) < float(loss)


def test_x0_guided_denoised_gives_dragondiffusions_step_through_an_euler_step():
    """DragonDiffusion: x_next = (x - sigma (eps + s g)) + sigma_next eps. The sampler's Euler (= DDIM) step from the
    returned denoised prediction must land there, i.e. move by -sigma s g, not by -(sigma - sigma_next) s g as Eq. 7
    read literally (eps~ in both terms) does."""
    gen = torch.Generator().manual_seed(0)
    x, eps, g = (torch.randn(2, 4, 5, 6, generator=gen) for _ in range(3))
    sigma, sigma_next, s = 2.5, 1.75, 0.3
    denoised = x - sigma * eps

    def euler(d):
        return x + (sigma_next - sigma) * (x - d) / sigma

    expect = (x - sigma * (eps + s * g)) + sigma_next * eps
    got = euler(x0_guided_denoised(denoised, g, sigma, sigma_next, s))
    torch.testing.assert_close(got, expect, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got - euler(denoised), -sigma * s * g, atol=1e-5, rtol=1e-5)
    literal = euler(x - sigma * score_with_energy(eps, g, s))               # Eq. 7 in both terms
    torch.testing.assert_close(literal - euler(denoised), -(sigma - sigma_next) * s * g, atol=1e-5, rtol=1e-5)
    last = x0_guided_denoised(denoised, g, sigma, 0.0, s)                     # last step: x_next = x0~
    torch.testing.assert_close(last, x - sigma * (eps + s * g), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="must exceed"):
        x0_guided_denoised(denoised, g, 1.0, 1.0, s)


def test_rms_normalised_gradient_matches_the_noise_prediction_inside_the_region():
    eps = torch.zeros(2, 4, 3, 3)
    eps[0, :, 0, 0] = 2.0                        # batch 0: RMS over the region {(0,0), (0,1)} = sqrt(4 / 2) = sqrt(2)
    eps[1] = 0.5                                 # batch 1: RMS 0.5 everywhere
    grad = torch.zeros(2, 4, 3, 3)
    grad[:, :, 0, 1] = 3.0                       # RMS over the region: sqrt(9 / 2)
    grad[:, :, 2, 2] = 100.0                     # outside the region: scaled alike, not counted
    region = torch.zeros(3, 3)
    region[0, :2] = 1
    out = rms_normalised_gradient(grad, eps, region)
    torch.testing.assert_close(out[0], grad[0] * math.sqrt(2.0) / math.sqrt(4.5))
    torch.testing.assert_close(out[1], grad[1] * 0.5 / math.sqrt(4.5))
    rms_in = (out[:, :, 0, :2] ** 2).mean(dim=(1, 2)).sqrt()
    torch.testing.assert_close(rms_in, torch.tensor([math.sqrt(2.0), 0.5]))
    # no region, or an empty one: every cell
    whole = rms_normalised_gradient(grad, eps)
    torch.testing.assert_close(rms_normalised_gradient(grad, eps, torch.zeros(3, 3)), whole)
    torch.testing.assert_close((whole ** 2).mean(dim=(1, 2, 3)), (eps ** 2).mean(dim=(1, 2, 3)))
    # scale-free: the gradient's own magnitude does not matter
    torch.testing.assert_close(rms_normalised_gradient(1000 * grad, eps, region), out)
