"""Which ComfyUI samplers the guiders' per-step corrections are exact for.

PNI's inversion guidance (Algorithm 1 line 11) and the dual-branch energy's x0-only update (DragonDiffusion) are
applied through the denoised prediction a guider returns: it is chosen so that the Euler / DDIM step from
(x, sigma) to sigma_next, x_next = denoised + sigma_next * (x - denoised) / sigma, lands on the corrected latent.
A multistep sampler (dpmpp_2m, deis, ipndm, uni_pc, ...) mixes that prediction with earlier ones, a two-stage one
(heun, dpm_2, ...) with a second evaluation between grid points, and an ancestral or LCM sampler adds fresh noise:
none of them lands there, so they are refused instead of giving a silently different edit.
"""
from __future__ import annotations

from ..attention_patch import comfy_host as host
from ..guidance.errors import input_error

EULER_STEP_SAMPLERS = ("euler", "ddim")            # ComfyUI's "ddim" is k-diffusion's Euler step
_EULER_FUNCTIONS = ("sample_euler",)


def is_euler_step(sampler) -> bool:
    return host.sampler_function_name(sampler) in _EULER_FUNCTIONS


def require_euler_step(sampler, node: str, why: str) -> None:
    """Raise a ValueError naming ``node`` unless ``sampler`` takes plain Euler / DDIM steps."""
    if not is_euler_step(sampler):
        name = host.sampler_function_name(sampler) or type(sampler).__name__
        name = name.removeprefix("sample_")
        raise input_error(node, "sampler", f"the sampler {name!r} is not supported ({why}: exact only for a sampler "
                                           f"that takes one Euler / DDIM step per sigma); use one of "
                                           f"{', '.join(EULER_STEP_SAMPLERS)}")
