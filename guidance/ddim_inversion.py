"""Deterministic DDIM inversion in ComfyUI's sigma space (pure torch).

ComfyUI's eps-prediction models live in "sigma space": ``x = x0 + sigma * eps`` (the VP latent
divided by ``sqrt(alpha_bar)``, with ``sigma = sqrt((1 - alpha_bar) / alpha_bar)``). There the
deterministic DDIM update between two noise levels is the Euler step of the probability-flow ODE:

    x' = x + (sigma' - sigma) * eps,        eps = (x - denoised(x, sigma)) / sigma

Sampling walks the sigmas down, inversion walks them up. The first inversion step starts at
sigma = 0 where eps is undefined; the denoiser is then evaluated at ``max(sigma, sigma_min)``
(the model's smallest trained sigma). With that, ``invert`` followed by a DDIM / Euler sampler on
the same schedule is the usual DDIM-inversion pair (exact where eps is constant along the path).

Schedules: ComfyUI computes its own (``comfy.samplers.calculate_sigmas``); the helpers below give
the two reference schedules of diffusers for SD1.5 -- the normal DDIM one (``leading`` spacing,
steps_offset 1 == ComfyUI's ``ddim_uniform``) and the LCM one (timesteps 999, 899, ... of the
50-step LCM grid == ComfyUI's ``simple`` on ModelSamplingDiscrete ``lcm``).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

SD15_BETA_START = 0.00085
SD15_BETA_END = 0.012
SD15_TRAIN_STEPS = 1000
LCM_ORIGINAL_STEPS = 50


# ------------------------------------------------------------------------------------ schedules
def alphas_cumprod(beta_start: float = SD15_BETA_START, beta_end: float = SD15_BETA_END,
                   train_steps: int = SD15_TRAIN_STEPS) -> torch.Tensor:
    """SD1.5's "scaled_linear" alpha_bar_t, t = 0..train_steps-1 (float64)."""
    betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, train_steps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def sigma_from_alpha(alpha_bar) -> torch.Tensor:
    alpha_bar = torch.as_tensor(alpha_bar, dtype=torch.float64)
    return ((1.0 - alpha_bar) / alpha_bar).sqrt()


def alpha_from_sigma(sigma) -> torch.Tensor:
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    return 1.0 / (1.0 + sigma * sigma)


def to_vp(x: torch.Tensor, sigma) -> torch.Tensor:
    """Sigma-space latent -> variance-preserving latent (``sqrt(alpha_bar) * x``)."""
    return x / (1.0 + float(sigma) ** 2) ** 0.5


def from_vp(x: torch.Tensor, sigma) -> torch.Tensor:
    return x * (1.0 + float(sigma) ** 2) ** 0.5


def schedule_timesteps(steps: int, lcm: bool = False, train_steps: int = SD15_TRAIN_STEPS,
                       original_steps: int = LCM_ORIGINAL_STEPS) -> list:
    """Descending integer timesteps of the n-step schedule.

    normal: diffusers DDIM ``leading`` spacing with steps_offset 1 (1, 1 + r, ..., reversed).
    lcm: LCM's grid ``(i + 1) * train_steps / original_steps - 1`` sampled every
    ``original_steps / steps`` entries from the top (999, 899, ... for 10 steps).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if lcm:
        if steps > original_steps:
            raise ValueError(f"the LCM schedule has at most {original_steps} steps, got {steps}")
        grid = [(i + 1) * (train_steps // original_steps) - 1 for i in range(original_steps)][::-1]
        return [grid[int(i * original_steps / steps)] for i in range(steps)]
    ratio = train_steps // steps
    return [i * ratio + 1 for i in range(steps)][::-1]


def schedule_sigmas(steps: int, lcm: bool = False, **kw) -> torch.Tensor:
    """Descending sigmas of :func:`schedule_timesteps` plus the final 0 (n + 1 values, float32)."""
    ac = alphas_cumprod(**{k: kw[k] for k in ("beta_start", "beta_end", "train_steps") if k in kw})
    ts = schedule_timesteps(steps, lcm, **{k: kw[k] for k in ("train_steps", "original_steps") if k in kw})
    return torch.cat([sigma_from_alpha(ac[ts]), torch.zeros(1, dtype=torch.float64)]).float()


# ---------------------------------------------------------------------------------- the steps
def ddim_step(x: torch.Tensor, sigma, sigma_next, eps: torch.Tensor) -> torch.Tensor:
    """One deterministic DDIM step in sigma space, either direction: ``x + (sigma' - sigma) eps``."""
    return x + (sigma_next - sigma) * eps


def eps_from_denoised(x: torch.Tensor, denoised: torch.Tensor, sigma) -> torch.Tensor:
    return (x - denoised) / sigma


def inversion_sigmas(sigmas: torch.Tensor, edit_step: int) -> torch.Tensor:
    """The ascending sigmas an inversion to ``edit_step`` of a descending schedule walks:
    ``sigmas[n], sigmas[n-1], ..., sigmas[edit_step]``."""
    n = len(sigmas) - 1
    if not (0 <= edit_step < n):
        raise ValueError(f"edit_step must be in 0..{n - 1} for a {n}-step schedule, got {edit_step}")
    return sigmas[edit_step:].flip(0)


def eval_sigma(sigma, sigma_min):
    """The sigma at which the denoiser is evaluated for a step starting at ``sigma``."""
    if isinstance(sigma, torch.Tensor):
        return torch.clamp(sigma, min=float(sigma_min))
    return max(float(sigma), float(sigma_min))


def ddim_invert(denoise: Callable, x0: torch.Tensor, sigmas_up: Sequence, sigma_min: float = 0.0,
                on_step: Callable | None = None) -> list:
    """DDIM inversion along the ascending ``sigmas_up`` (first usually 0).

    ``denoise(x, sigma)`` returns the model's denoised estimate; step ``j`` evaluates it at
    ``max(sigmas_up[j], sigma_min)`` and moves ``x`` to ``sigmas_up[j + 1]``. ``on_step(j, s)`` is
    called before each evaluation. Returns the whole trajectory ``[x0, x1, ..., x_last]``.
    """
    if len(sigmas_up) < 2:
        raise ValueError("an inversion needs at least two sigmas")
    for a, b in zip(sigmas_up[:-1], sigmas_up[1:]):
        if float(b) < float(a):
            raise ValueError("inversion sigmas must ascend")
    if float(sigmas_up[0]) <= 0 and float(sigma_min) <= 0:
        raise ValueError("the inversion starts at sigma 0: give the model's sigma_min (> 0)")
    xs = [x0]
    x = x0
    for j in range(len(sigmas_up) - 1):
        s, s_next = sigmas_up[j], sigmas_up[j + 1]
        s_eval = eval_sigma(s, sigma_min)
        if on_step is not None:
            on_step(j, s_eval)
        eps = eps_from_denoised(x, denoise(x, s_eval), s_eval)
        x = ddim_step(x, s, s_next, eps)
        xs.append(x)
    return xs


def ddim_sample(denoise: Callable, x: torch.Tensor, sigmas_down: Sequence) -> list:
    """Deterministic DDIM sampling along descending sigmas (== ComfyUI's ``euler``): trajectory."""
    xs = [x]
    for j in range(len(sigmas_down) - 1):
        s, s_next = sigmas_down[j], sigmas_down[j + 1]
        eps = eps_from_denoised(x, denoise(x, s), s)
        x = ddim_step(x, s, s_next, eps)
        xs.append(x)
    return xs
