"""Proximal Negative-Prompt Inversion (VersaFusion, Algorithm 1; Eq. 8-10), pure torch.

Everything works in ComfyUI's sigma space (k-diffusion convention) for epsilon models:

    x = x0 + sigma * eps,        eps = (x - denoised) / sigma,        denoised = x - sigma * eps

where x = z / sqrt(alpha_bar) and sigma = sqrt((1 - alpha_bar) / alpha_bar). In this space the
deterministic DDIM update (Algorithm 1, lines 8-9) is ``x_next = x0_hat + sigma_next * eps`` and DDIM
inversion is the same update with sigma_next > sigma. The inversion-guidance step (line 11) is linear,
so it reads the same in x as in z.

One function per equation / algorithm line:

    prox_l1_soft_threshold   Eq. 9   (prox of lambda*||.||_1)
    prox_l0_hard_threshold   Eq. 10  (prox of lambda*||.||_0, threshold sqrt(2*lambda))
    prox_threshold           the magnitude at or below which prox_lambda zeroes an entry: lambda (L1), sqrt(2*lambda) (L0)
    prox                     Eq. 8   (dispatch by mode)
    abs_quantile             the q-quantile of |delta| per batch element (ProxEdit's adaptive threshold)
    quantile_lambda          the lambda whose prox threshold is that quantile: tau (L1), tau^2/2 (L0)
    step_lambda              the lambda of one step: the fixed one, or quantile_lambda of that step's delta
    proximal_guided_noise    Alg. 1 line 6: eps = eps_src + w * prox(eps_tar - eps_src)
    unedited_mask            Alg. 1 line 7: M = |eps_tar - eps_src| <= prox_threshold(lambda), the entries prox zeroes
    inversion_guidance_step  Alg. 1 line 11: z <- z - eta * M * (z - z*)
    guided_step              Alg. 1 line 10: t < T_inv, i.e. sampling step i is among the last guidance_until steps
    ddim_step, ddim_invert   Alg. 1 lines 8-9 and line 1 in sigma space: reused from guidance/ddim_inversion.py
    pni_sample               Alg. 1 lines 2-14 as a plain loop over given eps functions (the reference)

Lambda: Algorithm 1 uses one lambda for the prox (line 6) and the mask (line 7). The paper states the mask as
|delta| <= lambda, which is the L1 prox's threshold; for L0 the prox drops |delta| <= sqrt(2*lambda) (Eq. 10), and
the mask uses that same threshold, so that M is exactly the set of entries the prox zeroes in both modes. Besides
a fixed lambda, lambda can adapt per step as in ProxEdit (Han et al. 2023, the prox "quantile" option): the prox
threshold is then the q-quantile of |eps_tar - eps_src| of that step (per batch element), so a fraction q of the
CFG difference is dropped and marked unedited in either mode.

``PNIGuidance`` is the per-step logic of PNI sampling expressed on the model's *denoised* predictions,
the quantity a ComfyUI guider returns: given x, sigma and the source / target denoised predictions it
returns the denoised prediction whose DDIM step lands exactly on the PNI-guided latent. The PNI Guider
node uses it; a dual-branch sampler uses it for its reconstruction branch.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence, Union

import torch

from .ddim_inversion import ddim_invert, ddim_step, eps_from_denoised
from .pni_modes import PROX_MODES

__all__ = ["prox_l1_soft_threshold", "prox_l0_hard_threshold", "prox_threshold", "prox", "abs_quantile",
           "quantile_lambda", "step_lambda", "proximal_guided_noise", "unedited_mask", "inversion_guidance_step",
           "guided_step", "ddim_step", "ddim_invert", "eps_from_denoised", "denoised_from_eps", "pni_sample",
           "pni_guided_denoised", "PNIGuidance"]

Lambda = Union[float, torch.Tensor]  # a number, or one value per batch element shaped (B, 1, ..., 1) to broadcast


def _check_lambda(lam: Lambda) -> None:
    """A number must be >= 0 (a tensor lambda comes from quantile_lambda, >= 0 by construction: not checked, which
    would wait for the device every step)."""
    if not isinstance(lam, torch.Tensor) and not lam >= 0:
        raise ValueError(f"lambda must be >= 0, got {lam}")


def _check_mode(mode: str) -> None:
    if mode not in PROX_MODES:
        raise ValueError(f"prox mode {mode!r} is not one of {PROX_MODES}")


# --- Eq. 8-10: proximal operators -------------------------------------------------------------

def prox_l1_soft_threshold(x: torch.Tensor, lam: Lambda) -> torch.Tensor:
    """Eq. 9: [S_lambda(x)]_i = x_i - lambda if x_i > lambda; 0 if |x_i| <= lambda; x_i + lambda if x_i < -lambda.

    The closed form of argmin_z 0.5*||z - x||^2 + lambda*||z||_1.
    """
    _check_lambda(lam)
    return torch.sign(x) * torch.clamp(x.abs() - lam, min=0)


def prox_threshold(lam: Lambda, mode: str = "L1") -> Lambda:
    """The magnitude at or below which prox_{lambda, mode} zeroes an entry: lambda for L1 (Eq. 9), sqrt(2*lambda)
    for L0 (Eq. 10). A tensor lambda gives a tensor of the same shape."""
    _check_mode(mode)
    if mode == "L1":
        return lam
    return torch.sqrt(2.0 * lam) if isinstance(lam, torch.Tensor) else math.sqrt(2.0 * lam)


def prox_l0_hard_threshold(x: torch.Tensor, lam: Lambda) -> torch.Tensor:
    """Eq. 10: [prox_{lambda,L0}(x)]_i = x_i if |x_i| > sqrt(2*lambda) else 0.

    The closed form of argmin_z 0.5*||z - x||^2 + lambda*||z||_0 (at |x_i| = sqrt(2 lambda) both 0 and x_i
    are minimisers; Eq. 10 keeps 0, so does this function).
    """
    _check_lambda(lam)
    return torch.where(x.abs() > prox_threshold(lam, "L0"), x, torch.zeros_like(x))


def prox(x: torch.Tensor, lam: Lambda, mode: str = "L1") -> torch.Tensor:
    """Eq. 8: prox_{lambda, L_p}(x) = argmin_z 0.5*||z - x||_2^2 + lambda*||z||_p for p in {1, 0}."""
    _check_mode(mode)
    return prox_l1_soft_threshold(x, lam) if mode == "L1" else prox_l0_hard_threshold(x, lam)


# --- adaptive lambda (ProxEdit): the prox threshold at a quantile of |eps_tar - eps_src| ----------

def abs_quantile(delta: torch.Tensor, q: float) -> torch.Tensor:
    """The q-quantile (torch.quantile, linear interpolation) of |delta| over each batch element (dim 0), shaped
    (B, 1, ..., 1) to broadcast against ``delta``; a 0- or 1-D ``delta`` is one element (a 0-D result)."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must lie in 0..1, got {q}")
    a = delta.detach().abs()
    work = a if a.dtype in (torch.float32, torch.float64) else a.float()  # torch.quantile's dtypes
    if delta.ndim <= 1:
        return torch.quantile(work.flatten(), q).to(delta.dtype)
    rows = work.flatten(1)
    tau = torch.stack([torch.quantile(r, q) for r in rows])  # one row at a time: torch.quantile's size limit
    return tau.to(delta.dtype).view(delta.shape[0], *([1] * (delta.ndim - 1)))


def quantile_lambda(delta: torch.Tensor, q: float, mode: str = "L1") -> torch.Tensor:
    """The lambda whose prox threshold (prox_threshold) is tau = abs_quantile(delta, q): tau for L1, tau^2/2 for L0.
    prox_lambda then zeroes the fraction q of the entries of each batch element with the smallest |delta|."""
    _check_mode(mode)
    tau = abs_quantile(delta, q)
    return tau if mode == "L1" else 0.5 * tau * tau


def step_lambda(delta: torch.Tensor, lam: float, mode: str = "L1", quantile: float | None = None) -> Lambda:
    """The lambda of one sampling step: ``lam`` when ``quantile`` is None, else quantile_lambda(delta, quantile)."""
    return lam if quantile is None else quantile_lambda(delta, quantile, mode)


# --- Algorithm 1, lines 6, 7, 10, 11 ----------------------------------------------------------

def proximal_guided_noise(eps_src: torch.Tensor, eps_tar: torch.Tensor, cfg: float, lam: Lambda,
                          mode: str = "L1", quantile: float | None = None) -> torch.Tensor:
    """Algorithm 1 line 6: eps~ = eps_src + w * prox_lambda(eps_tar - eps_src).

    The source prompt plays the negative prompt; with lambda = 0 this is plain CFG
    eps_src + w*(eps_tar - eps_src). With ``quantile`` lambda is step_lambda's (``lam`` is not used)."""
    delta = eps_tar - eps_src
    return eps_src + cfg * prox(delta, step_lambda(delta, lam, mode, quantile), mode)


def unedited_mask(eps_src: torch.Tensor, eps_tar: torch.Tensor, lam: Lambda, mode: str = "L1",
                  quantile: float | None = None) -> torch.Tensor:
    """Algorithm 1 line 7: M = |eps_tar - eps_src| <= prox_threshold(lambda), element-wise, as a float 0/1 tensor.

    The threshold is the prox's own (lambda for L1, sqrt(2*lambda) for L0), so M marks exactly the entries that
    prox_lambda zeroes in line 6. With ``quantile`` lambda is step_lambda's (``lam`` is not used)."""
    delta = eps_tar - eps_src
    lam = step_lambda(delta, lam, mode, quantile)
    _check_lambda(lam)
    return (delta.abs() <= prox_threshold(lam, mode)).to(eps_src.dtype)


def inversion_guidance_step(z: torch.Tensor, z_star: torch.Tensor, mask: torch.Tensor, eta: float) -> torch.Tensor:
    """Algorithm 1 line 11: z <- z - eta * M * (z - z*). eta = 1 replaces the masked entries by z*."""
    return z - eta * mask * (z - z_star)


def guided_step(i: int, n: int, guidance_until: int | None = None) -> bool:
    """Algorithm 1 line 10 (t < T_inv): whether sampling step i of n (i = 0 the noisiest, i = n-1 the last, which
    lands on sigma 0) gets inversion guidance. Algorithm 1 counts t = T .. 1 down to the clean end, so t < T_inv
    picks the late, low-noise steps, as ProxEdit's recon_t does: the last ``guidance_until`` steps,
    i >= n - guidance_until (T_inv = guidance_until + 1 in steps). None or >= n: every step; 0: none."""
    until = n if guidance_until is None else guidance_until
    return 0 <= i < n and i >= n - until


# --- DDIM in ComfyUI's sigma space: the step functions of guidance/ddim_inversion.py ----------
# ddim_step(x, sigma, sigma_next, eps) = x + (sigma_next - sigma)*eps  (Algorithm 1 lines 8-9: x0^ = x - sigma*eps,
# x_next = x0^ + sigma_next*eps; upwards it is one DDIM inversion step, Algorithm 1 line 1) and ddim_invert
# (the inversion loop, eps taken at max(sigma, sigma_min) on the current latent) are reused from there.

def denoised_from_eps(x: torch.Tensor, eps: torch.Tensor, sigma) -> torch.Tensor:
    """denoised = x - sigma * eps (sigma a float: one noise level for the whole batch)."""
    return x - sigma * eps


EpsFn = Callable[[torch.Tensor, float], torch.Tensor]


def pni_sample(eps_src_fn: EpsFn, eps_tar_fn: EpsFn, trajectory: Sequence[torch.Tensor], sigmas: Sequence[float],
               cfg: float, lam: float, mode: str = "L1", eta: float = 0.0, guidance_until: int | None = None,
               quantile: float | None = None) -> torch.Tensor:
    """Algorithm 1 (lines 2-14) as a plain loop, in sigma space. Reference for tests and benchmarks.

    ``trajectory`` is the inversion aligned with ``sigmas`` (x*_T first). Inversion guidance applies to the
    last ``guidance_until`` sampling steps, the low-noise end (guided_step; default: all steps). ``quantile``:
    lambda per step from that quantile of |eps_tar - eps_src| (step_lambda) instead of ``lam``."""
    sig = [float(s) for s in sigmas]
    n = len(sig) - 1
    x = trajectory[0]
    for i in range(n):
        e_src, e_tar = eps_src_fn(x, sig[i]), eps_tar_fn(x, sig[i])
        eps = proximal_guided_noise(e_src, e_tar, cfg, lam, mode, quantile)
        x = ddim_step(x, sig[i], sig[i + 1], eps)
        if eta > 0 and guided_step(i, n, guidance_until):
            x = inversion_guidance_step(x, trajectory[i + 1], unedited_mask(e_src, e_tar, lam, mode, quantile), eta)
    return x


# --- the per-step logic on denoised predictions (what a ComfyUI guider returns) ---------------

def pni_guided_denoised(x: torch.Tensor, sigma: float, sigma_next: float | None, denoised_src: torch.Tensor,
                        denoised_tar: torch.Tensor, cfg: float, lam: float, mode: str = "L1", eta: float = 0.0,
                        z_star_next: torch.Tensor | None = None, quantile: float | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of Algorithm 1 expressed as a denoised prediction.

    Returns (denoised, M): ``denoised`` is chosen so that the DDIM (= euler) step from (x, sigma) to
    sigma_next lands on  x_next - eta*M*(x_next - z*_next)  with x_next the DDIM step of the proximal
    noise (lines 6-11). Without ``z_star_next`` (or eta = 0, or sigma_next unknown = None) it is the
    plain proximal prediction x - sigma*eps~. ``quantile``: lambda per step (step_lambda) instead of ``lam``."""
    eps_src = eps_from_denoised(x, denoised_src, sigma)
    eps_tar = eps_from_denoised(x, denoised_tar, sigma)
    lam = step_lambda(eps_tar - eps_src, lam, mode, quantile)  # once, for line 6 and line 7 alike
    eps = proximal_guided_noise(eps_src, eps_tar, cfg, lam, mode)
    mask = unedited_mask(eps_src, eps_tar, lam, mode)
    denoised = denoised_from_eps(x, eps, sigma)
    if z_star_next is None or eta == 0 or sigma_next is None:
        return denoised, mask
    x_next = ddim_step(x, sigma, sigma_next, eps)
    x_guided = inversion_guidance_step(x_next, z_star_next, mask, eta)
    # x_next = r*x + (1 - r)*denoised with r = sigma_next / sigma, so a shift of x_next by delta is a shift
    # of denoised by delta / (1 - r); r < 1 on a descending schedule.
    return denoised + (x_guided - x_next) / (1.0 - sigma_next / sigma), mask


class PNIGuidance:
    """Per-step PNI sampling state for one inversion: finds the step from sigma, applies Algorithm 1.

    ``sigmas`` (descending, n+1 values) and ``trajectory`` (x*_T ... x*_0, model space) come from the
    inversion. ``denoised(x, sigma, denoised_src, denoised_tar)`` is what a guider returns for that step.
    Inversion guidance applies on the last ``guidance_until`` steps of the grid (guided_step: the low-noise end,
    Algorithm 1's t < T_inv) whose sigma lies on the inversion's grid (samplers that evaluate between grid
    points, e.g. heun's second stage, get the proximal noise only). ``quantile`` (None: the fixed ``lam``):
    lambda per step from that quantile of |eps_tar - eps_src| (step_lambda).
    """

    def __init__(self, sigmas: torch.Tensor, trajectory: Sequence[torch.Tensor], cfg: float, lam: float,
                 mode: str = "L1", eta: float = 0.0, guidance_until: int | None = None,
                 quantile: float | None = None):
        _check_mode(mode)
        if quantile is not None and not 0.0 <= float(quantile) <= 1.0:
            raise ValueError(f"quantile must lie in 0..1, got {quantile}")
        self.sigmas = [float(s) for s in torch.as_tensor(sigmas).flatten()]
        self.trajectory = list(trajectory)
        self.cfg, self.lam, self.mode, self.eta = float(cfg), float(lam), mode, float(eta)
        self.quantile = None if quantile is None else float(quantile)
        n = len(self.sigmas) - 1
        self.guidance_until = n if guidance_until is None else int(guidance_until)
        self._on_device: dict = {}
        self.last_mask: torch.Tensor | None = None
        self.last_step: int | None = None

    @classmethod
    def from_inversion(cls, inversion, trajectory: Sequence[torch.Tensor] | None = None) -> "PNIGuidance":
        """A fresh per-run PNIGuidance with every setting of an INVERSION (guidance/inversion_data.py: sigmas,
        cfg, lam, prox, eta, guidance_until, lam_quantile); ``trajectory`` replaces the inversion's own."""
        inv = inversion
        return cls(inv.sigmas, inv.trajectory if trajectory is None else trajectory, inv.cfg, inv.lam, inv.prox,
                   inv.eta, inv.guidance_until, quantile=getattr(inv, "lam_quantile", None))

    def step_index(self, sigma) -> int | None:
        """Index i with sigmas[i] == sigma (relative tolerance 1e-4), or None when off the grid."""
        s = float(torch.as_tensor(sigma).flatten()[0])
        for i, t in enumerate(self.sigmas[:-1]):
            if abs(t - s) <= 1e-4 * max(abs(t), 1e-6):
                return i
        return None

    def target(self, i: int, like: torch.Tensor) -> torch.Tensor:
        key = (i, like.device, like.dtype)
        if key not in self._on_device:
            z = self.trajectory[i].to(device=like.device, dtype=like.dtype)
            if z.shape != like.shape:
                if z.shape[1:] == like.shape[1:] and like.shape[0] % z.shape[0] == 0:
                    z = z.repeat((like.shape[0] // z.shape[0],) + (1,) * (z.ndim - 1))
                else:
                    raise ValueError(f"latent {tuple(like.shape)} does not match the inversion's {tuple(z.shape)}")
            self._on_device = {k: v for k, v in self._on_device.items() if k[0] >= i - 1}
            self._on_device[key] = z
        return self._on_device[key]

    def denoised(self, x: torch.Tensor, sigma, denoised_src: torch.Tensor, denoised_tar: torch.Tensor) -> torch.Tensor:
        i = self.step_index(sigma)
        sigma = float(torch.as_tensor(sigma).flatten()[0])  # ComfyUI samples a batch at one noise level
        guide = i is not None and self.eta > 0 and guided_step(i, len(self.sigmas) - 1, self.guidance_until)
        sigma_next = self.sigmas[i + 1] if i is not None else None
        z_star = self.target(i + 1, x) if guide else None
        out, mask = pni_guided_denoised(x, sigma, sigma_next, denoised_src, denoised_tar, self.cfg, self.lam,
                                        self.mode, self.eta if guide else 0.0, z_star, self.quantile)
        self.last_mask, self.last_step = mask, i
        return out
