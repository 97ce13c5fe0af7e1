"""DDIM inversion in sigma space against diffusers' DDIM / DDIM-inverse scheduler formulas."""
import pytest
import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler, LCMScheduler

from dragfusion.guidance.ddim_inversion import (alphas_cumprod, ddim_invert, ddim_sample, ddim_step,
                                                from_vp, inversion_sigmas, schedule_sigmas,
                                                schedule_timesteps, sigma_from_alpha, to_vp)

SD15 = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
            clip_sample=False, set_alpha_to_one=True, prediction_type="epsilon")
SPACING = {"normal": dict(timestep_spacing="leading", steps_offset=1), "lcm": dict(timestep_spacing="trailing", steps_offset=0)}


def eps_fn(x, sigma):
    """A smooth analytic eps that depends nonlinearly on x and on sigma."""
    s = float(sigma)
    return torch.tanh(0.8 * x + 0.05 * s) + 0.3 * torch.sin(1.7 * x) * (1.0 / (1.0 + s))


def denoiser(fn):
    return lambda x, s: x - float(s) * fn(x, s)


def latent(seed=0, dtype=torch.float64):
    return torch.randn(2, 4, 6, 5, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def diffusers_sigmas(sched):
    """The schedule's descending sigmas (+ 0) from diffusers' own alphas_cumprod."""
    ac = sched.alphas_cumprod.double()
    return torch.cat([sigma_from_alpha(ac[sched.timesteps]), torch.zeros(1, dtype=torch.float64)])


@pytest.mark.parametrize("kind", ["normal", "lcm"])
@pytest.mark.parametrize("steps,edit_step", [(10, 5), (10, 0), (4, 3)])
def test_inversion_equals_diffusers_inverse_scheduler(kind, steps, edit_step):
    inv = DDIMInverseScheduler(**SD15, **SPACING[kind])
    inv.set_timesteps(steps)
    fwd = DDIMScheduler(**SD15, **SPACING[kind])
    fwd.set_timesteps(steps)
    sigmas = diffusers_sigmas(fwd)
    up = inversion_sigmas(sigmas, edit_step)
    sigma_min = float(sigma_from_alpha(inv.alphas_cumprod[0].double()))
    x0 = latent()
    ours = ddim_invert(denoiser(eps_fn), x0, up, sigma_min)
    assert len(ours) == steps - edit_step + 1
    # diffusers: VP latents, its own step(); eps from the same function at the same point
    xv = x0.clone()
    for i, t in enumerate(inv.timesteps[:steps - edit_step]):
        s_cur = float(up[i])
        eps = eps_fn(from_vp(xv, s_cur), max(s_cur, sigma_min))
        xv = inv.step(eps, t, xv).prev_sample
        torch.testing.assert_close(ours[i + 1], from_vp(xv, float(up[i + 1])), atol=1e-5, rtol=1e-6)
        torch.testing.assert_close(to_vp(ours[i + 1], float(up[i + 1])), xv, atol=1e-5, rtol=1e-6)


@pytest.mark.parametrize("kind", ["normal", "lcm"])
def test_sampling_step_equals_diffusers_ddim_scheduler(kind):
    fwd = DDIMScheduler(**SD15, **SPACING[kind])
    fwd.set_timesteps(10)
    sigmas = diffusers_sigmas(fwd)
    xT = latent(1) * float(sigmas[0])
    ours = ddim_sample(denoiser(eps_fn), xT, sigmas)
    xv = to_vp(xT, float(sigmas[0]))
    for i, t in enumerate(fwd.timesteps):
        eps = eps_fn(from_vp(xv, float(sigmas[i])), float(sigmas[i]))
        xv = fwd.step(eps, t, xv, eta=0.0).prev_sample
        torch.testing.assert_close(ours[i + 1], from_vp(xv, float(sigmas[i + 1])), atol=1e-5, rtol=1e-6)


def test_schedules_equal_diffusers():
    for kind, lcm in (("normal", False), ("lcm", True)):
        fwd = DDIMScheduler(**SD15, **SPACING[kind])
        fwd.set_timesteps(10)
        assert schedule_timesteps(10, lcm) == fwd.timesteps.tolist()
        torch.testing.assert_close(schedule_sigmas(10, lcm).double(), diffusers_sigmas(fwd), atol=1e-5, rtol=1e-5)
    lcm = LCMScheduler(**{k: v for k, v in SD15.items() if k != "clip_sample"}, original_inference_steps=50)
    for n in (4, 8, 10):
        lcm.set_timesteps(n)
        assert schedule_timesteps(n, lcm=True) == lcm.timesteps.tolist()
    ref = DDIMScheduler(**SD15).alphas_cumprod.double()
    torch.testing.assert_close(alphas_cumprod(), ref, atol=1e-6, rtol=1e-6)


def eps_invariant(x, sigma):
    """eps that varies with x but is constant along every DDIM path: channel 0 moves by
    tanh(channel 1) + 0.5, the other channels never move. The ODE is then exactly invertible."""
    eps = torch.zeros_like(x)
    eps[:, 0] = torch.tanh(2 * x[:, 1]) + 0.5
    return eps


@pytest.mark.parametrize("kind", ["normal", "lcm"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_invert_then_sample_returns_the_start_latent(kind, dtype):
    sigmas = schedule_sigmas(10, lcm=kind == "lcm").to(dtype)
    x0 = latent(2, dtype)
    for edit_step in (0, 5, 9):
        traj = ddim_invert(denoiser(eps_invariant), x0, inversion_sigmas(sigmas, edit_step), sigma_min=0.0292)
        back = ddim_sample(denoiser(eps_invariant), traj[-1], sigmas[edit_step:])
        torch.testing.assert_close(back[-1], x0, atol=1e-5, rtol=1e-5)
        # every intermediate latent matches too (same sigmas visited in reverse)
        for a, b in zip(traj, reversed(back)):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_round_trip_is_not_exact_for_a_generic_eps():
    """The exactness above is a property of the eps, not of the test: a generic eps drifts."""
    sigmas = schedule_sigmas(10).double()
    x0 = latent(3)
    traj = ddim_invert(denoiser(eps_fn), x0, inversion_sigmas(sigmas, 5), sigma_min=0.0292)
    back = ddim_sample(denoiser(eps_fn), traj[-1], sigmas[5:])
    assert (back[-1] - x0).abs().max() > 1e-3


def test_first_step_is_evaluated_at_sigma_min_and_steps_are_reported():
    seen = []
    sig = torch.tensor([0.0, 0.5, 1.5])
    ddim_invert(denoiser(eps_fn), latent(), sig, sigma_min=0.03, on_step=lambda j, s: seen.append((j, float(s))))
    assert seen == [(0, pytest.approx(0.03)), (1, pytest.approx(0.5))]
    x = latent()
    torch.testing.assert_close(ddim_step(x, 0.5, 1.5, torch.ones_like(x)), x + 1.0)


def test_bad_arguments():
    sigmas = schedule_sigmas(10)
    with pytest.raises(ValueError, match="edit_step must be in 0..9"):
        inversion_sigmas(sigmas, 10)
    with pytest.raises(ValueError, match="ascend"):
        ddim_invert(denoiser(eps_fn), latent(), sigmas, 0.03)
    with pytest.raises(ValueError, match="sigma_min"):
        ddim_invert(denoiser(eps_fn), latent(), sigmas.flip(0), 0.0)
    with pytest.raises(ValueError, match="at most 50"):
        schedule_timesteps(60, lcm=True)
