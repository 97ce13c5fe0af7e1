"""guidance/pni.py against hand-computed values and independent references (pure torch)."""
import math

import pytest
import torch

from dragfusion.guidance import pni
from dragfusion.guidance.inversion_data import Inversion



@pytest.fixture(autouse=True)
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


# --- Eq. 9: L1 soft threshold -----------------------------------------------------------------

def test_prox_l1_hand_values_and_boundaries():
    x = torch.tensor([-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 1.25, 3.0])
    out = pni.prox_l1_soft_threshold(x, 1.0)
    assert out.tolist() == [-2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.25, 2.0]  # |x| = lambda -> 0 (Eq. 9's middle case)
    assert torch.equal(pni.prox_l1_soft_threshold(x, 0.0), x)


def _grid(lo=-6.0, hi=6.0, step=1e-3):
    k = torch.arange(int(round(lo / step)), int(round(hi / step)) + 1, dtype=torch.float64)
    return k * step  # contains 0 exactly


@pytest.mark.parametrize("lam", [0.0, 0.3, 1.0, 2.5])
def test_prox_l1_is_the_argmin_by_brute_force(lam):
    g = torch.Generator().manual_seed(1)
    v = (torch.rand(200, generator=g) * 10 - 5)
    z = _grid()
    cost = 0.5 * (z[None, :] - v[:, None]) ** 2 + lam * z.abs()[None, :]
    brute = z[cost.argmin(dim=1)]
    assert torch.allclose(pni.prox_l1_soft_threshold(v, lam), brute, atol=1.1e-3)


# --- Eq. 10: L0 hard threshold at sqrt(2 lambda) ----------------------------------------------

def test_prox_l0_hand_values_and_sqrt_2_lambda_threshold():
    lam = 2.0  # threshold sqrt(2*2) = 2
    x = torch.tensor([-3.0, -2.0, -1.999, 0.0, 1.5, 2.0, 2.001, 5.0])
    out = pni.prox_l0_hard_threshold(x, lam)
    assert out.tolist() == [-3.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.001, 5.0]
    lam = 0.125  # threshold 0.5: lambda itself is not the threshold
    x = torch.tensor([0.2, 0.4, 0.5, 0.51])
    assert pni.prox_l0_hard_threshold(x, lam).tolist() == [0.0, 0.0, 0.0, 0.51]


@pytest.mark.parametrize("lam", [0.05, 0.5, 2.0])
def test_prox_l0_is_the_argmin_by_brute_force(lam):
    g = torch.Generator().manual_seed(2)
    v = (torch.rand(200, generator=g) * 10 - 5)
    v = v[(v.abs() - math.sqrt(2 * lam)).abs() > 1e-2]  # away from the tie |v| = sqrt(2 lambda)
    z = _grid()
    cost = 0.5 * (z[None, :] - v[:, None]) ** 2 + lam * (z != 0).to(z.dtype)[None, :]
    brute = z[cost.argmin(dim=1)]
    assert torch.allclose(pni.prox_l0_hard_threshold(v, lam), brute, atol=1.1e-3)


def test_prox_eq8_dispatch_and_errors():
    x = torch.linspace(-2, 2, 9)
    assert torch.equal(pni.prox(x, 0.5, "L1"), pni.prox_l1_soft_threshold(x, 0.5))
    assert torch.equal(pni.prox(x, 0.5, "L0"), pni.prox_l0_hard_threshold(x, 0.5))
    with pytest.raises(ValueError, match="L2"):
        pni.prox(x, 0.5, "L2")
    with pytest.raises(ValueError):
        pni.prox_l1_soft_threshold(x, -1.0)


# --- Algorithm 1 lines 6, 7, 11 ---------------------------------------------------------------

def _eps_pair(seed=3, shape=(2, 4, 8, 8)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


def test_proximal_guided_noise_hand_value():
    e_src, e_tar = torch.tensor([1.0, 1.0, 1.0]), torch.tensor([1.2, 3.0, -1.0])
    # differences 0.2, 2, -2; lambda 0.5: L1 -> 0, 1.5, -1.5; w = 2
    assert torch.allclose(pni.proximal_guided_noise(e_src, e_tar, 2.0, 0.5, "L1"), torch.tensor([1.0, 4.0, -2.0]))
    # L0 at lambda 0.5 (threshold 1): 0, 2, -2
    assert torch.allclose(pni.proximal_guided_noise(e_src, e_tar, 2.0, 0.5, "L0"), torch.tensor([1.0, 5.0, -3.0]))


@pytest.mark.parametrize("mode", ["L1", "L0"])
def test_lambda_zero_is_plain_cfg_with_source_as_negative(mode):
    e_src, e_tar = _eps_pair()
    cfg = 5.0
    plain_cfg = e_src + cfg * (e_tar - e_src)  # CFG: uncond = negative = source
    assert torch.allclose(pni.proximal_guided_noise(e_src, e_tar, cfg, 0.0, mode), plain_cfg, atol=1e-12)


@pytest.mark.parametrize("mode", ["L1", "L0"])
def test_lambda_infinite_is_the_source_noise(mode):
    e_src, e_tar = _eps_pair()
    assert torch.equal(pni.proximal_guided_noise(e_src, e_tar, 5.0, 1e9, mode), e_src)


def test_unedited_mask_semantics():
    e_src = torch.zeros(6)
    e_tar = torch.tensor([0.0, 0.1, -0.1, 0.25, -0.2501, 3.0])
    m = pni.unedited_mask(e_src, e_tar, 0.25)
    assert m.tolist() == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0]  # |d| <= lambda, boundary included, element-wise
    e_src, e_tar = _eps_pair()
    m = pni.unedited_mask(e_src, e_tar, 0.5)
    assert m.shape == e_src.shape and set(m.unique().tolist()) <= {0.0, 1.0}
    # M is exactly where L1's prox zeroes the CFG difference: the region the edit leaves alone
    assert torch.equal(m.bool(), pni.prox_l1_soft_threshold(e_tar - e_src, 0.5) == 0)
    assert pni.unedited_mask(e_src, e_src, 0.0).all()  # target = source: nothing is edited


# --- L0: the unedited mask uses the prox's own threshold sqrt(2 lambda) --------------------------

def test_l0_unedited_mask_hand_values_at_sqrt_2_lambda():
    lam = 0.125  # Eq. 10's threshold sqrt(2 * 0.125) = 0.5, not lambda
    e_src = torch.zeros(6)
    e_tar = torch.tensor([0.0, 0.125, -0.2, 0.5, -0.5001, 3.0])
    assert pni.unedited_mask(e_src, e_tar, lam, "L0").tolist() == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    assert pni.unedited_mask(e_src, e_tar, lam, "L1").tolist() == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert pni.prox_threshold(0.125, "L0") == 0.5 and pni.prox_threshold(0.125, "L1") == 0.125


@pytest.mark.parametrize("mode,lam", [("L0", 0.5), ("L0", 0.02), ("L1", 0.5), ("L0", 0.0)])
def test_unedited_mask_is_exactly_where_the_prox_zeroes(mode, lam):
    """Algorithm 1 line 7's M marks the entries prox_lambda drops (line 6), in both modes."""
    e_src, e_tar = _eps_pair(seed=21)
    m = pni.unedited_mask(e_src, e_tar, lam, mode)
    zeroed = pni.prox(e_tar - e_src, lam, mode) == 0
    assert torch.equal(m.bool(), zeroed)
    assert 0 < int(zeroed.sum()) < zeroed.numel() or lam == 0.0


# --- adaptive lambda: a quantile of |eps_tar - eps_src| per step (ProxEdit) --------------------

def _deltas():
    """Two batch elements, |delta| = 0.1 .. 1.0 (signs mixed) and ten times that."""
    a = torch.tensor([0.3, -0.1, 0.9, -0.5, 0.2, 1.0, -0.7, 0.4, -0.8, 0.6]).reshape(1, 1, 2, 5)
    return torch.cat([a, 10 * a])


def test_abs_quantile_hand_computed():
    d = _deltas()
    # sorted |delta| of element 0: 0.1 .. 1.0; the 0.7-quantile (linear) sits at position 0.7 * 9 = 6.3:
    # 0.7 + 0.3 * (0.8 - 0.7) = 0.73; element 1: 7.3
    tau = pni.abs_quantile(d, 0.7)
    assert tau.shape == (2, 1, 1, 1)
    assert torch.allclose(tau.flatten(), torch.tensor([0.73, 7.3]), atol=1e-12)
    assert torch.allclose(tau.flatten(), torch.quantile(d.abs().flatten(1), 0.7, dim=1), atol=1e-12)
    assert torch.allclose(pni.abs_quantile(d, 0.0).flatten(), torch.tensor([0.1, 1.0]))
    assert torch.allclose(pni.abs_quantile(d, 1.0).flatten(), torch.tensor([1.0, 10.0]))
    assert torch.allclose(pni.abs_quantile(d[0].flatten(), 0.5), torch.tensor(0.55))  # one unbatched tensor


def test_quantile_lambda_puts_the_prox_threshold_at_the_quantile():
    d = _deltas()
    for mode in ("L1", "L0"):
        lam = pni.quantile_lambda(d, 0.7, mode)
        assert torch.allclose(pni.prox_threshold(lam, mode).flatten(), torch.tensor([0.73, 7.3]), atol=1e-12)
    # L1: lambda is the quantile itself; L0: sqrt(2 lambda) is, lambda = tau^2 / 2
    assert torch.allclose(pni.quantile_lambda(d, 0.7, "L1").flatten(), torch.tensor([0.73, 7.3]), atol=1e-12)
    assert torch.allclose(pni.quantile_lambda(d, 0.7, "L0").flatten(), torch.tensor([0.73 ** 2 / 2, 7.3 ** 2 / 2]),
                          atol=1e-12)


def test_quantile_mode_hand_values_of_lines_6_and_7():
    d = _deltas()
    e_src = torch.ones_like(d)
    e_tar = e_src + d
    keep = torch.tensor([0.0, 0.0, 0.9, 0.0, 0.0, 1.0, 0.0, 0.0, -0.8, 0.0]).reshape(1, 1, 2, 5)  # |d| > 0.73
    # L1: the three largest shrink by 0.73 (by 7.3 in element 1), the rest drop; w = 2
    l1 = (keep - 0.73 * keep.sign())
    want = e_src + 2.0 * torch.cat([l1, 10 * l1])
    got = pni.proximal_guided_noise(e_src, e_tar, 2.0, 123.0, "L1", quantile=0.7)  # the fixed lambda is not used
    assert torch.allclose(got, want, atol=1e-12)
    # L0: the three largest are kept as they are
    want = e_src + 2.0 * torch.cat([keep, 10 * keep])
    assert torch.allclose(pni.proximal_guided_noise(e_src, e_tar, 2.0, 123.0, "L0", quantile=0.7), want, atol=1e-12)
    # M: the seven smallest of each element, in both modes
    for mode in ("L1", "L0"):
        m = pni.unedited_mask(e_src, e_tar, 123.0, mode, quantile=0.7)
        assert torch.equal(m, torch.cat([keep == 0, keep == 0]).to(m.dtype))
        assert torch.equal(m.bool(), pni.proximal_guided_noise(e_src, e_tar, 1.0, 0.0, mode, quantile=0.7) == e_src)


def test_inversion_guidance_step():
    z = torch.tensor([1.0, 2.0, 3.0, 4.0])
    zs = torch.tensor([0.0, 0.0, 0.0, 0.0])
    m = torch.tensor([1.0, 0.0, 1.0, 0.0])
    assert pni.inversion_guidance_step(z, zs, m, 0.25).tolist() == [0.75, 2.0, 2.25, 4.0]
    assert pni.inversion_guidance_step(z, zs, m, 1.0).tolist() == [0.0, 2.0, 0.0, 4.0]  # eta 1 = replace
    assert torch.equal(pni.inversion_guidance_step(z, zs, m, 0.0), z)


# --- DDIM in sigma space ----------------------------------------------------------------------

def test_ddim_step_is_algorithm_1_lines_8_9_in_alpha_space():
    assert pni.ddim_step(torch.tensor(1.0), 2.0, 1.0, torch.tensor(0.5)).item() == pytest.approx(0.5)
    # Algorithm 1 lines 8-9 in alpha space, z = sqrt(a) x, sigma = sqrt((1 - a)/a)
    g = torch.Generator().manual_seed(4)
    z_t, eps = torch.randn(4, 4, generator=g), torch.randn(4, 4, generator=g)
    a_t, a_prev = 0.3, 0.8
    z0 = z_t / math.sqrt(a_t) - math.sqrt(1 / a_t - 1) * eps
    z_prev = math.sqrt(a_prev) * z0 + math.sqrt(1 - a_prev) * eps
    s = lambda a: math.sqrt((1 - a) / a)
    x_prev = pni.ddim_step(z_t / math.sqrt(a_t), s(a_t), s(a_prev), eps)
    assert torch.allclose(x_prev * math.sqrt(a_prev), z_prev, atol=1e-12)
    d = pni.denoised_from_eps(z_t, eps, 0.7)
    assert torch.allclose(pni.eps_from_denoised(z_t, d, 0.7), eps, atol=1e-12)


SIGMAS = torch.tensor([14.6, 6.0, 2.5, 1.1, 0.45, 0.12, 0.0], dtype=torch.float64)
SIGMA_MIN = 0.03


def invert(eps_fn, x0):
    """guidance/ddim_inversion.py's loop; returns the trajectory aligned with SIGMAS (x*_T first)."""
    up = pni.ddim_invert(lambda x, s: pni.denoised_from_eps(x, eps_fn(x, float(s)), float(s)), x0, SIGMAS.flip(0),
                         sigma_min=SIGMA_MIN)
    return up[::-1]


@pytest.mark.parametrize("mode", ["L1", "L0"])
def test_inversion_then_pni_sampling_returns_the_start_latent(mode):
    """eps constant along the path: DDIM inversion is exactly invertible, so must PNI sampling be."""
    g = torch.Generator().manual_seed(6)
    x0 = torch.randn(1, 4, 8, 8, generator=g)
    base = torch.randn(1, 4, 8, 8, generator=g)
    eps_src = lambda x, s: base
    traj = invert(eps_src, x0)
    assert len(traj) == len(SIGMAS) and traj[-1] is x0
    assert torch.allclose(traj[0], x0 + 14.6 * base)
    for eta in (0.0, 0.3):
        out = pni.pni_sample(eps_src, eps_src, traj, SIGMAS, cfg=5.0, lam=0.1, mode=mode, eta=eta)
        assert torch.allclose(out, x0, atol=1e-10)


def _x_dependent_eps(seed, scale=0.3):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(1, 4, 8, 8, generator=g)
    return lambda x, s: torch.tanh(scale * x + w) * (1 + 0.1 * s)


def test_eta_one_with_target_equal_source_reconstructs_exactly_any_eps():
    g = torch.Generator().manual_seed(8)
    x0 = torch.randn(1, 4, 8, 8, generator=g)
    eps = _x_dependent_eps(9)
    traj = invert(eps, x0)
    plain = pni.pni_sample(eps, eps, traj, SIGMAS, cfg=5.0, lam=0.0)  # target = source, no guidance: plain DDIM
    assert (plain - x0).abs().max() > 1e-3  # DDIM inversion is only approximate for this eps
    out = pni.pni_sample(eps, eps, traj, SIGMAS, cfg=5.0, lam=0.0, eta=1.0)
    assert torch.allclose(out, x0, atol=1e-10)  # M = 1 everywhere, eta = 1: the trajectory itself


@pytest.mark.parametrize("mode,eta,until,q", [("L1", 0.0, None, None), ("L1", 0.4, None, None), ("L0", 0.7, 3, None),
                                              ("L1", 1.0, 0, None), ("L1", 0.6, 2, None), ("L0", 0.5, 5, None),
                                              ("L1", 0.4, 4, 0.7), ("L0", 0.8, 2, 0.5), ("L0", 0.3, None, 0.9)])
def test_guidance_on_denoised_equals_algorithm_1(mode, eta, until, q):
    """PNIGuidance.denoised + ComfyUI's euler/ddim step == Algorithm 1's loop (pni_sample)."""
    g = torch.Generator().manual_seed(10)
    x0 = torch.randn(2, 4, 8, 8, generator=g)
    e_src, e_tar = _x_dependent_eps(11), _x_dependent_eps(12, scale=0.5)
    traj = invert(e_src, x0)
    cfg, lam = 4.0, 0.2
    ref = pni.pni_sample(e_src, e_tar, traj, SIGMAS, cfg, lam, mode, eta, until, quantile=q)
    n = len(SIGMAS) - 1
    guide = pni.PNIGuidance(SIGMAS, traj, cfg, lam, mode, eta, n if until is None else until, quantile=q)
    x = traj[0]
    for i in range(n):  # k-diffusion sample_euler, as ComfyUI's "euler" and "ddim" samplers run it
        s = float(SIGMAS[i])
        d = guide.denoised(x, SIGMAS[i] * torch.ones(2),  # ComfyUI passes one sigma per batch element
                           pni.denoised_from_eps(x, e_src(x, s), s), pni.denoised_from_eps(x, e_tar(x, s), s))
        assert guide.last_step == i
        x = x + (x - d) / SIGMAS[i] * (SIGMAS[i + 1] - SIGMAS[i])
    assert torch.allclose(x, ref, atol=1e-9)


def _still_eps(x, s):
    return torch.zeros_like(x)


# eps = 0: every DDIM step keeps x; a guided step i moves x by eta * (z*_{i+1} - x) (M = 1: target = source).
# Trajectory z*_k = k, start 0, eta = 0.5, 6 steps; by hand:
#   last 2 steps guided (i = 4, 5):  0 -> 0.5*5 = 2.5 -> 2.5 + 0.5*(6 - 2.5) = 4.25
#   last 1 step (i = 5):             0 -> 0.5*6 = 3
#   all 6:  0.5, 1.25, 2.125, 3.0625, 4.03125, 5.015625;  none: 0
WINDOW_CASES = [(2, 4.25), (1, 3.0), (6, 5.015625), (0, 0.0), (None, 5.015625)]


@pytest.mark.parametrize("until,want", WINDOW_CASES)
def test_inversion_guidance_acts_on_the_last_low_noise_steps(until, want):
    """Algorithm 1 line 10: guidance when t < T_inv, the late, low-noise steps (ProxEdit's recon_t)."""
    traj = [torch.full((1, 4, 2, 2), float(k)) for k in range(len(SIGMAS))]
    out = pni.pni_sample(_still_eps, _still_eps, traj, SIGMAS, cfg=5.0, lam=0.1, eta=0.5, guidance_until=until)
    assert torch.allclose(out, torch.full_like(out, want), atol=1e-12)


@pytest.mark.parametrize("until,want", WINDOW_CASES)
def test_guidance_window_on_denoised_hand_computed(until, want):
    traj = [torch.full((1, 4, 2, 2), float(k)) for k in range(len(SIGMAS))]
    n = len(SIGMAS) - 1
    guide = pni.PNIGuidance(SIGMAS, traj, 5.0, 0.1, "L1", 0.5, until)
    x, moved = traj[0], []
    for i in range(n):
        d = guide.denoised(x, SIGMAS[i:i + 1], x, x)  # eps = 0: denoised = x
        x_next = x + (x - d) / SIGMAS[i] * (SIGMAS[i + 1] - SIGMAS[i])
        moved.append(bool((x_next != x).any()))
        x = x_next
    assert torch.allclose(x, torch.full_like(x, want), atol=1e-12)
    k = n if until is None else until
    assert moved == [False] * (n - k) + [True] * k
    assert [pni.guided_step(i, n, until) for i in range(n)] == moved


def test_guidance_off_grid_sigma_gets_prox_only():
    traj = [torch.zeros(1, 4, 2, 2)] * len(SIGMAS)
    guide = pni.PNIGuidance(SIGMAS, traj, 2.0, 0.0, "L1", 1.0)
    assert guide.step_index(3.0) is None and guide.step_index(torch.tensor([2.5, 2.5])) == 2
    x = torch.ones(1, 4, 2, 2)
    d_src, d_tar = torch.full_like(x, 0.5), torch.full_like(x, 0.25)
    out = guide.denoised(x, torch.tensor([3.0]), d_src, d_tar)
    assert torch.allclose(out, d_src + 2.0 * (d_tar - d_src))  # lambda 0: plain CFG on denoised


def _inversion(**kw):
    args = dict(sigmas=SIGMAS, trajectory=tuple(torch.zeros(1, 4, 2, 2) for _ in SIGMAS), source_cond=[],
                cfg=5.0, lam=0.1, prox="L1", eta=0.1, guidance_until=6)
    args.update(kw)
    return Inversion(**args)


def test_inversion_validate():
    assert _inversion().validate() is not None
    assert _inversion().steps == 6
    assert _inversion(lam_quantile=0.7).validate().lam_quantile == 0.7
    for kw, text in [({"prox": "L2"}, "prox"), ({"lam": -1.0}, "lambda"), ({"guidance_until": 7}, "guidance_until"),
                     ({"lam_quantile": 1.5}, "quantile"), ({"lam_quantile": math.nan}, "quantile"),
                     ({"sigmas": SIGMAS.flip(0)}, "descending"), ({"trajectory": ()}, "trajectory")]:
        with pytest.raises(ValueError, match=text) as e:
            _inversion(**kw).validate("PNI Guider", "inversion")
        assert "PNI Guider: input 'inversion'" in str(e.value)


def test_pni_from_inversion_carries_every_setting():
    inv = _inversion(lam_quantile=0.6, prox="L0", guidance_until=2)
    g = pni.PNIGuidance.from_inversion(inv)
    assert (g.cfg, g.lam, g.mode, g.eta, g.guidance_until, g.quantile) == (5.0, 0.1, "L0", 0.1, 2, 0.6)
    assert g.trajectory == list(inv.trajectory)
    other = [torch.ones(1, 4, 2, 2)] * len(SIGMAS)
    assert pni.PNIGuidance.from_inversion(inv, other).trajectory == other


def _imports(path):
    """Every module a file imports, anywhere in it (functions included), as written."""
    import ast
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            out.add("." * node.level + (node.module or ""))
            out.update("." * node.level + a.name for a in node.names if not node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_no_import_circle_between_pni_and_inversion_data():
    import os
    here = os.path.join(os.path.dirname(os.path.abspath(pni.__file__)))
    pni_imports = _imports(os.path.join(here, "pni.py"))
    data_imports = _imports(os.path.join(here, "inversion_data.py"))
    assert not any(m.endswith("inversion_data") for m in pni_imports), pni_imports
    assert not any(m.endswith("pni") for m in data_imports), data_imports
