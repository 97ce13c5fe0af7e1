"""INVERSION: a PNI (Proximal Negative-Prompt Inversion) trajectory and what sampling needs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .errors import input_error
from .pni_modes import PROX_MODES

__all__ = ["Inversion", "PROX_MODES"]


@dataclass(frozen=True)
class Inversion:
    sigmas: torch.Tensor        # sampling schedule, descending, n + 1 values
    trajectory: tuple           # model-space latents z*_t per sigma, aligned with ``sigmas`` (z*_T first, z_0 last)
    source_cond: Any            # the source CONDITIONING (used as the negative prompt)
    cfg: float
    lam: float                  # lambda of prox_lambda (the fixed one; unused when lam_quantile is set)
    prox: str                   # "L1" (soft threshold) or "L0" (hard threshold)
    eta: float                  # inversion-guidance step size
    guidance_until: int         # inversion guidance on the LAST guidance_until sampling steps, the low-noise end
                                # (Algorithm 1's t < T_inv): steps i >= steps - guidance_until; 0 = none, steps = all
    scheduler: str = ""         # the ComfyUI scheduler that made ``sigmas`` (for display / re-use)
    lam_quantile: float | None = None  # None: the fixed lam; q in 0..1: lambda per step such that the prox
                                       # threshold is the q-quantile of |eps_tar - eps_src| (ProxEdit)

    def validate(self, node: str = "INVERSION", input_name: str = "inversion") -> "Inversion":
        if self.prox not in PROX_MODES:
            raise input_error(node, input_name, f"prox mode {self.prox!r} is not one of {PROX_MODES}")
        if not (self.lam >= 0 and self.eta >= 0 and self.cfg > 0):
            raise input_error(node, input_name, f"lambda ({self.lam}) and eta ({self.eta}) must be >= 0 and cfg ({self.cfg}) > 0")
        if len(self.trajectory) != len(self.sigmas):
            raise input_error(node, input_name, f"trajectory has {len(self.trajectory)} latents for {len(self.sigmas)} sigmas")
        if len(self.sigmas) < 2 or not bool((self.sigmas[1:] < self.sigmas[:-1]).all()) or float(self.sigmas[-1]) != 0.0:
            raise input_error(node, input_name, "sigmas must be strictly descending and end at 0")
        if not (0 <= self.guidance_until <= len(self.sigmas) - 1):
            raise input_error(node, input_name, f"guidance_until {self.guidance_until} is outside 0..{len(self.sigmas) - 1}")
        if self.lam_quantile is not None and not (0 <= self.lam_quantile <= 1):
            raise input_error(node, input_name, f"lambda quantile {self.lam_quantile} is outside 0..1")
        return self

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1

    # The sampling state built from an Inversion is guidance/pni.py's PNIGuidance.from_inversion (this module does
    # not import pni.py: no import circle).
