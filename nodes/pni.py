"""PNI Invert and PNI Guider: Proximal Negative-Prompt Inversion (VersaFusion, Algorithm 1).

PNI Invert runs DDIM inversion with the source prompt (cfg 1, Algorithm 1 line 1) through ComfyUI's own
sampling machinery: a CFGGuider drives a KSAMPLER function that walks the schedule's sigmas upwards and
records the trajectory. PNI Guider is a CFGGuider for SamplerCustomAdvanced: each step it evaluates the
target and the source (= negative) prompt in one batch and returns the proximal, inversion-guided
prediction (guidance/pni.py, PNIGuidance). Sample it from the inverted latent with DisableNoise, an
euler or ddim sampler and the sigmas output of PNI Invert: then it is Algorithm 1 exactly.
"""
from __future__ import annotations

import torch
from comfy_api.latest import io

from ..guidance.errors import input_error
from ..guidance.inversion_data import Inversion
from ..guidance.pni import PNIGuidance
from ..guidance.pni_modes import DEFAULT_QUANTILE, LAMBDA_MODES, PROX_MODES
from ..guidance.ddim_inversion import ddim_invert
from .types import CATEGORY_VERSAFUSION, InversionType
from ..attention_patch import comfy_host as host
from ..sampling.sampler_check import require_euler_step
from .architecture import SUPPORTED, check_model

INVERT = "PNI Invert"
GUIDER = "PNI Guider"
DEFAULT_SCHEDULER = "ddim_uniform"


def schedule(model, scheduler: str, steps: int, node: str = INVERT) -> torch.Tensor:
    if scheduler not in host.SCHEDULER_NAMES:
        raise input_error(node, "scheduler", f"{scheduler!r} is not one of {host.SCHEDULER_NAMES}")
    sigmas = host.calculate_sigmas(model.get_model_object("model_sampling"), scheduler, steps).cpu().float()
    # (ComfyUI's ddim_uniform gives one step more for step counts that do not divide 1000 evenly, as in KSampler)
    if len(sigmas) < 2 or not bool((sigmas[1:] < sigmas[:-1]).all()) or float(sigmas[-1]) != 0.0:
        raise input_error(node, "scheduler", f"{scheduler!r} with {steps} steps does not give strictly descending "
                                             f"sigmas ending at 0; choose another scheduler or step count")
    return sigmas


class _TrajectoryRecorder:
    """The KSAMPLER function of the inversion: walks ascending sigmas with guidance/ddim_inversion.py's
    ddim_invert (eps at max(sigma, sigma_min) on the current latent) and records every latent."""

    def __init__(self, steps: int):
        self.trajectory: list[torch.Tensor] = []
        self.pbar = host.ProgressBar(steps)

    def __call__(self, model, x, sigmas, extra_args=None, callback=None, disable=None):
        extra_args = {} if extra_args is None else extra_args
        s_in = x.new_ones([x.shape[0]])
        keep = host.intermediate_device()
        sigma_min = float(model.inner_model.inner_model.model_sampling.sigma_min)

        def denoise(z, sigma):
            return model(z, sigma * s_in, **extra_args)

        def on_step(j, sigma):
            host.throw_if_interrupted()
            if j > 0:
                self.pbar.update(1)

        xs = ddim_invert(denoise, x, sigmas, sigma_min=sigma_min, on_step=on_step)
        self.pbar.update(1)
        self.trajectory = [z.detach().to(keep, copy=True) for z in xs]
        return xs[-1]


def ddim_invert_with_comfy(model, latent_image: torch.Tensor, cond, sigmas: torch.Tensor, seed: int = 0):
    """DDIM inversion (cfg 1, ``cond``) along descending ``sigmas`` via CFGGuider + KSAMPLER.

    Returns (z_T in output space, trajectory in model space aligned with ``sigmas``: z*_T first)."""
    guider = host.CFGGuider(model)
    guider.set_conds(cond, cond)  # cfg 1: the negative is never evaluated
    guider.set_cfg(1.0)
    recorder = _TrajectoryRecorder(len(sigmas) - 1)
    sampler = host.KSAMPLER(recorder)
    noise = torch.zeros(latent_image.shape, dtype=latent_image.dtype, device="cpu")
    z_T = guider.sample(noise, latent_image, sampler, sigmas.flip(0), disable_pbar=True, seed=seed)
    z_T = z_T.to(host.intermediate_device())
    return z_T, tuple(recorder.trajectory[::-1])


class PNIInvert(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DragFusionPNIInvert",
            display_name=INVERT,
            category=CATEGORY_VERSAFUSION,
            description=("Proximal Negative-Prompt Inversion, step 1 (VersaFusion Algorithm 1): DDIM-inverts the latent "
                         "with the source prompt along the chosen schedule and stores the trajectory and the PNI "
                         "settings in an INVERSION for PNI Guider / the dual-branch sampler. Sample the z_T output with "
                         "SamplerCustomAdvanced + DisableNoise + an euler or ddim sampler + the sigmas output."),
            inputs=[
                io.Model.Input("model", tooltip=f"The diffusion model. Supported: {SUPPORTED}."),
                io.Latent.Input("latent", tooltip="The VAE-encoded source image to invert."),
                io.Conditioning.Input("source", tooltip="The source prompt C describing the image: used for the inversion "
                                                        "and, at sampling time, as the negative prompt."),
                io.Int.Input("steps", default=50, min=1, max=1000,
                             tooltip="DDIM steps of the inversion; sampling must use the same sigmas (output 'sigmas')."),
                io.Float.Input("cfg", default=5.0, min=0.01, max=100.0, step=0.1, round=0.01,
                               tooltip="Guidance scale w of the proximal CFG at sampling time "
                                       "(eps = eps_src + w*prox(eps_tar - eps_src)). The inversion itself runs at cfg 1."),
                io.Float.Input("lam", display_name="lambda", default=0.02, min=0.0, max=100.0, step=0.001, round=0.0001,
                               tooltip="lambda of prox_lambda in eps units (lambda_mode 'fixed'): L1 drops CFG differences "
                                       "|eps_tar - eps_src| <= lambda and shrinks the rest by lambda; L0 drops those <= "
                                       "sqrt(2*lambda) and keeps the rest. The dropped entries are the unedited mask M that "
                                       "inversion guidance pulls. 0 = plain CFG."),
                io.Combo.Input("prox", options=list(PROX_MODES), default="L1",
                               tooltip="L1: soft threshold (Eq. 9). L0: hard threshold at sqrt(2*lambda) (Eq. 10)."),
                io.Float.Input("eta", default=0.1, min=0.0, max=1.0, step=0.01,
                               tooltip="Inversion-guidance step: each guided step pulls the unedited region M towards the "
                                       "inversion trajectory, z <- z - eta*M*(z - z*). 1 = replace, 0 = off."),
                io.Int.Input("guidance_until", default=50, min=0, max=1000,
                             tooltip="Inversion guidance acts on the LAST guidance_until sampling steps, the low-noise end "
                                     "(Algorithm 1: t < T_inv): with 50 steps, 20 guides steps 31-50. 0 = none; steps or "
                                     "more = every step (the default 50 with 50 steps: every step)."),
                io.Combo.Input("scheduler", options=list(host.SCHEDULER_NAMES), default=DEFAULT_SCHEDULER,
                               tooltip="ComfyUI scheduler for the sigmas (ddim_uniform = the DDIM timesteps of the paper)."),
                io.Combo.Input("lambda_mode", options=list(LAMBDA_MODES), default="fixed", optional=True,
                               tooltip="fixed: lambda as set above (the default). quantile: lambda adapts every step so "
                                       "that the fraction 'quantile' of the CFG difference |eps_tar - eps_src| (the "
                                       "smallest entries) is dropped and marked unedited, in L1 and L0 alike (ProxEdit); "
                                       "the lambda input is then not used."),
                io.Float.Input("quantile", default=DEFAULT_QUANTILE, min=0.0, max=1.0, step=0.01, optional=True,
                               tooltip="lambda_mode 'quantile' only: the fraction of the CFG difference dropped each step "
                                       "(per image of the batch): 0.7 as ProxEdit; near 0 = plain CFG, 1 = all dropped (no edit)."),
            ],
            outputs=[
                InversionType.Output(display_name="inversion"),
                io.Latent.Output(display_name="z_T"),
                io.Sigmas.Output(display_name="sigmas"),
            ],
        )

    @classmethod
    def validate_inputs(cls, steps, prox, guidance_until, scheduler):
        # listing these four here turns off the host's own min/max/options checks for them only
        if prox is not None and prox not in PROX_MODES:
            return f"{INVERT}: input 'prox': {prox!r} is not one of {PROX_MODES}"
        if scheduler is not None and scheduler not in host.SCHEDULER_NAMES:
            return f"{INVERT}: input 'scheduler': {scheduler!r} is not one of {host.SCHEDULER_NAMES}"
        if steps is not None and not 1 <= steps <= 1000:
            return f"{INVERT}: input 'steps': {steps} must lie in 1..1000"
        if guidance_until is not None and guidance_until < 0:
            return f"{INVERT}: input 'guidance_until': {guidance_until} must be >= 0"
        return True

    @classmethod
    def execute(cls, model, latent, source, steps, cfg, lam, prox, eta, guidance_until, scheduler,
                lambda_mode="fixed", quantile=DEFAULT_QUANTILE) -> io.NodeOutput:
        checks = [
            (lambda_mode in LAMBDA_MODES, "lambda_mode", f"{lambda_mode!r} is not one of {LAMBDA_MODES}"),
            (isinstance(quantile, (int, float)) and 0 <= quantile <= 1, "quantile", f"{quantile} must lie in 0..1"),
            (steps >= 1, "steps", f"{steps} must be >= 1"),
            (cfg > 0, "cfg", f"{cfg} must be > 0"),
            (lam >= 0, "lam", f"lambda {lam} must be >= 0"),
            (prox in PROX_MODES, "prox", f"{prox!r} is not one of {PROX_MODES}"),
            (0 <= eta <= 1, "eta", f"{eta} must lie in 0..1 (1 = replace by the trajectory)"),
            (guidance_until >= 0, "guidance_until", f"{guidance_until} must be >= 0 (0 = no inversion guidance)"),
        ]
        for ok, name, msg in checks:
            if not ok:
                raise input_error(INVERT, name, msg)
        if not isinstance(latent, dict) or not isinstance(latent.get("samples"), torch.Tensor):
            raise input_error(INVERT, "latent", "expected a LATENT (a dict with 'samples')")
        samples = host.fix_empty_latent_channels(model, latent["samples"])
        if samples.ndim != 4 or torch.count_nonzero(samples) == 0:
            raise input_error(INVERT, "latent", f"expected the VAE encoding of an image (a non-empty 4-D latent), got shape "
                                                f"{tuple(samples.shape)}{' of zeros' if samples.ndim == 4 else ''}")
        if not torch.isfinite(samples).all():
            raise input_error(INVERT, "latent", "holds NaN or inf")
        if not isinstance(source, list) or len(source) == 0:
            raise input_error(INVERT, "source", "expected a non-empty CONDITIONING (CLIP Text Encode of the source prompt)")
        check_model(model, INVERT)
        sigmas = schedule(model, scheduler, steps)
        if guidance_until >= steps:  # "every step", also when the scheduler made one more
            guidance_until = len(sigmas) - 1
        z_T, trajectory = ddim_invert_with_comfy(model, samples, source, sigmas)
        inversion = Inversion(sigmas=sigmas, trajectory=trajectory, source_cond=source, cfg=float(cfg), lam=float(lam),
                              prox=prox, eta=float(eta), guidance_until=int(guidance_until), scheduler=scheduler,
                              lam_quantile=float(quantile) if lambda_mode == "quantile" else None
                              ).validate(INVERT, "latent")
        out = {k: v for k, v in latent.items() if k != "noise_mask"}
        out["samples"] = z_T
        return io.NodeOutput(inversion, out, sigmas.clone())


class PNIGuiderImpl(host.CFGGuider):
    """Proximal negative-prompt sampling from an INVERSION (Algorithm 1, lines 3-13).

    conds: "positive" = the target prompt, "negative" = the source prompt stored in the inversion. Per step
    it runs both in one batch (calc_cond_batch) and returns ``self.pni.denoised(...)``. A dual-branch sampler
    reuses the step through ``reconstruction_denoised`` (or ``PNIGuidance.from_inversion`` directly) on its own
    batch's predictions."""

    def __init__(self, model_patcher, inversion: Inversion):
        super().__init__(model_patcher)
        self.inversion = inversion
        self.cfg = inversion.cfg
        self.pni = PNIGuidance.from_inversion(inversion)

    def set_target(self, target):
        self.inner_set_conds({"positive": target, "negative": self.inversion.source_cond})

    def check_run(self, noise: torch.Tensor, latent_image: torch.Tensor, sigmas: torch.Tensor):
        inv = self.inversion
        z = inv.trajectory[0]
        if tuple(latent_image.shape[1:]) != tuple(z.shape[1:]) or latent_image.shape[0] % z.shape[0] != 0:
            raise input_error(GUIDER, "inversion", f"the latent being sampled {tuple(latent_image.shape)} does not match "
                                                   f"the inverted latent {tuple(z.shape)}; sample PNI Invert's z_T")
        if torch.count_nonzero(noise) > 0:
            raise input_error(GUIDER, "inversion", "PNI samples deterministically from the inverted z_T: connect "
                                                   "DisableNoise to SamplerCustomAdvanced's noise input")
        s = sigmas.detach().float().cpu()
        full = inv.sigmas.float().cpu()
        start = int(torch.argmin((full - s[0]).abs()))
        run = full[start:start + len(s)]
        if len(run) != len(s) or not torch.allclose(run, s, rtol=1e-4, atol=1e-6):
            raise input_error(GUIDER, "inversion", f"SamplerCustomAdvanced's sigmas ({len(s) - 1} steps from "
                                                   f"{float(s[0]):.4g}) are not the inversion's schedule ({inv.steps} "
                                                   f"steps, {inv.scheduler or 'custom'}); connect PNI Invert's sigmas output")

    def sample(self, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None, disable_pbar=False, seed=None):
        if sigmas.shape[-1] > 0:
            self.check_run(noise, latent_image, sigmas)
            if self.inversion.eta > 0:
                require_euler_step(sampler, GUIDER, "PNI's inversion guidance (eta > 0)")
        self.pni = PNIGuidance.from_inversion(self.inversion)  # fresh per-run state
        return super().sample(noise, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar, seed)

    def reconstruction_denoised(self, x, timestep, denoised_tar, denoised_src):
        return self.pni.denoised(x, timestep, denoised_src, denoised_tar)

    def predict_noise(self, x, timestep, model_options={}, seed=None):
        target, source = self.conds.get("positive", None), self.conds.get("negative", None)
        conds = [target, source]
        out = host.calc_cond_batch(self.inner_model, conds, x, timestep, model_options)
        for fn in model_options.get("sampler_pre_cfg_function", []):
            out = fn({"conds": conds, "conds_out": out, "cond_scale": self.cfg, "timestep": timestep, "input": x,
                      "sigma": timestep, "model": self.inner_model, "model_options": model_options})
        denoised_tar, denoised_src = out
        result = self.reconstruction_denoised(x, timestep, denoised_tar, denoised_src)
        for fn in model_options.get("sampler_post_cfg_function", []):
            result = fn({"denoised": result, "cond": target, "uncond": source, "cond_scale": self.cfg,
                         "model": self.inner_model, "uncond_denoised": denoised_src, "cond_denoised": denoised_tar,
                         "sigma": timestep, "model_options": model_options, "input": x})
        return result


class PNIGuider(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DragFusionPNIGuider",
            display_name=GUIDER,
            category=CATEGORY_VERSAFUSION,
            description=("Proximal Negative-Prompt Inversion, step 2: a GUIDER for SamplerCustomAdvanced that edits the "
                         "inverted image towards the target prompt. The source prompt is the negative prompt, the CFG "
                         "difference goes through prox_lambda, and the unedited region is pulled towards the inversion "
                         "trajectory. Use DisableNoise, an euler/ddim sampler, PNI Invert's sigmas and z_T. With target = "
                         "source it reconstructs the image."),
            inputs=[
                io.Model.Input("model", tooltip="The same model PNI Invert used (patches such as LoRA are fine; it is not modified)."),
                InversionType.Input("inversion", tooltip="PNI Invert's inversion: trajectory, source prompt, cfg, lambda, prox, eta."),
                io.Conditioning.Input("target", tooltip="The target prompt C' describing the edited image."),
            ],
            outputs=[io.Guider.Output()],
        )

    @classmethod
    def execute(cls, model, inversion, target) -> io.NodeOutput:
        if not isinstance(inversion, Inversion):
            raise input_error(GUIDER, "inversion", f"expected PNI Invert's INVERSION, got {type(inversion).__name__}")
        inversion.validate(GUIDER, "inversion")
        if not isinstance(target, list) or len(target) == 0:
            raise input_error(GUIDER, "target", "expected a non-empty CONDITIONING (CLIP Text Encode of the target prompt)")
        check_model(model, GUIDER)
        guider = PNIGuiderImpl(model, inversion)
        guider.set_target(target)
        return io.NodeOutput(guider)


NODES = [PNIInvert, PNIGuider]
