"""The dual-branch sampler of VersaFusion (Fig. 3, Eq. 5-7) as a ComfyUI guider (a CFGGuider subclass): the
sampling machinery behind the Dual-Branch Guider and Dual-Branch Guided Sampler nodes (nodes/dual_branch.py).

Per sampling step one batched UNet call runs

    gud      the guidance branch: the source image reconstructed along PNI Invert's INVERSION
             (PNI sampling with target = source, guidance/pni.py PNIGuidance)
    ref      the reference branch (appearance, paste, style): the reference's own INVERSION
    gen_neg  the generation branch under the source prompt (PNI's negative prompt)
    gen_pos  the generation branch under the target prompt

The generation rows' self-attention reads the guidance rows' keys and values (attention_patch/
kv_replace.py). On the guided steps (the first ``guidance_fraction`` of the schedule, DragonDiffusion's
30 of 50) the call keeps autograd history up to the decoder blocks whose features the energy reads
(attention_patch/feature_hook.py); Eq. 6 on those features (guidance/energy.py), with the task's masks
and correspondence (guidance/dual_branch_tasks.py), gives grad_z L, which joins the noise prediction
(Eq. 7): eps~ = eps_PNI + energy_scale * grad_z L (by default on DragonDiffusion's sparse schedule: every guided
step for the first third, then every other one). The generation branch is otherwise PNI sampling
(proximal CFG + inversion guidance), except that the inversion guidance leaves the edit region alone.

Choices the paper leaves open (documented here and in the tooltips):
- L is Eq. 6 as written, one gradient for the whole latent (DragonDiffusion instead splits the two
  terms' gradients by region); scales are averaged.
- Sampling starts from the inversion's z_T (padded for outpaint: new cells get seeded noise); the
  guider needs DisableNoise and PNI Invert's sigmas.
- The energy reads the gen_pos rows (target prompt), the guidance branch its source-prompt rows.
- Image-prompt tokens: cond tokens on gen_pos, uncond tokens on the other rows.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..attention_patch import comfy_host as host
from ..attention_patch.feature_hook import (decoder_feature_points, install_feature_hook, install_grad_weights,
                                            parse_feature_blocks)
from ..attention_patch.kv_replace import CALL_KEY, KV_LAYER_CHOICES, KV_MODES, BranchCall, install_kv_replace
from ..guidance.dual_branch_tasks import TaskGeometry, pad_latent
from ..guidance.energy import ALPHA, BETA, multiscale_energy
from ..guidance.errors import input_error
from ..guidance.inversion_data import Inversion
from ..guidance.pni import PNIGuidance, pni_guided_denoised

GUIDER_NODE = "Dual-Branch Guider"


@dataclass(frozen=True)
class DualBranchSettings:
    w_edit: float = 4.0
    w_share: float = 6.0
    alpha: float = ALPHA
    beta: float = BETA
    energy_scale: float = 40.0            # DragonDiffusion: energy_scale 1 (UI) * 1e3 * 4e-2
    guidance_fraction: float = 0.6        # guide the first 60 % of the steps (30 of 50)
    kv: bool = True
    kv_layers: str = "decoder"
    kv_mode: str = "replace"
    kv_fraction: float = 1.0              # KV replacement on the first kv_fraction of the steps
    sparse_guidance: bool = True          # DragonDiffusion: every step for the first third of the guided steps,
                                          # then every other step
    protect_edit_region: bool = True      # no inversion guidance on the generation branch's edit region
    feature_blocks: str = ""              # "" = auto (decoder level outputs); else output block ids "5,8"
    seed: int = 0                         # noise of outpaint's new cells

    @property
    def energy_on(self) -> bool:
        return (self.w_edit != 0 or self.w_share != 0) and self.energy_scale != 0


def check_settings(s: DualBranchSettings, node: str):
    checks = [
        (math.isfinite(s.w_edit) and s.w_edit >= 0, "w_edit", f"{s.w_edit} must be >= 0"),
        (math.isfinite(s.w_share) and s.w_share >= 0, "w_share", f"{s.w_share} must be >= 0"),
        (s.alpha > 0 and s.beta >= 0, "alpha", f"alpha ({s.alpha}) must be > 0 and beta ({s.beta}) >= 0"),
        (math.isfinite(s.energy_scale) and s.energy_scale >= 0, "energy_scale", f"{s.energy_scale} must be >= 0"),
        (0 <= s.guidance_fraction <= 1, "guidance_fraction", f"{s.guidance_fraction} must lie in 0..1"),
        (0 <= s.kv_fraction <= 1, "kv_fraction", f"{s.kv_fraction} must lie in 0..1"),
        (s.kv_layers in KV_LAYER_CHOICES, "kv_layers", f"{s.kv_layers!r} is not one of {KV_LAYER_CHOICES}"),
        (s.kv_mode in KV_MODES, "kv_mode", f"{s.kv_mode!r} is not one of {KV_MODES}"),
    ]
    for ok, name, msg in checks:
        if not ok:
            raise input_error(node, name, msg)


class DualBranchGuiderImpl(host.CFGGuider):
    """The dual-branch sampler as a CFGGuider: run it with SamplerCustomAdvanced (DisableNoise, any
    sampler, PNI Invert's sigmas). Patches live on a clone of the model passed in."""

    def __init__(self, model, inversion: Inversion, target, geometry: TaskGeometry, settings: DualBranchSettings,
                 reference: Inversion | None = None, image_prompt=None, node: str = GUIDER_NODE):
        self.node = node
        if image_prompt is not None:
            from ..attention_patch.image_prompt import apply_image_prompt
            m = apply_image_prompt(model, image_prompt, node=node, input_name="image_prompt")  # a clone
        else:
            m = model.clone()
        unet = m.get_model_object("diffusion_model")
        n_out = len(getattr(unet, "output_blocks", []) or [])
        if settings.feature_blocks.strip():
            try:
                points = parse_feature_blocks(settings.feature_blocks, n_out)
            except ValueError as e:
                raise input_error(node, "feature_blocks", str(e)) from None
        else:
            points = decoder_feature_points(unet)
        if settings.energy_on and not points:
            raise input_error(node, "model", "the UNet has no decoder block whose features the energy could read")
        self.feature_points = points
        self.detach_from = max(points) if points else None
        self.kv_layers = install_kv_replace(m, settings.kv_layers) if settings.kv else []
        install_feature_hook(m)
        if settings.energy_on:
            install_grad_weights(m, self.detach_from)
        super().__init__(m)
        self.inversion, self.reference, self.geometry, self.settings = inversion, reference, geometry, settings
        self.cfg = inversion.cfg
        conds = {"positive": target, "negative": inversion.source_cond}
        if reference is not None:
            conds["reference"] = reference.source_cond
        self.inner_set_conds(conds)
        self.trajectory = self._padded_trajectory()
        self.energy_log: list = []

    # ----------------------------------------------------------------------------- set-up
    def _padded_trajectory(self) -> tuple:
        traj = self.inversion.trajectory
        pad = self.geometry.pad
        if sum(pad) == 0:
            return tuple(traj)
        z = traj[0]
        left, right, top, bottom = pad
        shape = (z.shape[0], z.shape[1], z.shape[2] + top + bottom, z.shape[3] + left + right)
        g = torch.Generator(device="cpu").manual_seed(int(self.settings.seed))
        noise = torch.randn(shape, generator=g, dtype=torch.float32).to(z) * float(self.inversion.sigmas[0])
        return (pad_latent(z, pad, noise),) + tuple(pad_latent(t, pad) for t in traj[1:])

    def _pni(self, inv: Inversion, trajectory) -> PNIGuidance:
        return PNIGuidance(inv.sigmas, trajectory, inv.cfg, inv.lam, inv.prox, inv.eta, inv.guidance_until)

    def check_run(self, noise, sigmas) -> int:
        if torch.count_nonzero(noise) > 0:
            raise input_error(self.node, "noise", "the dual-branch sampler starts from the inversion's z_T: connect "
                                                  "DisableNoise to SamplerCustomAdvanced's noise input")
        s = sigmas.detach().float().cpu()
        full = self.inversion.sigmas.float().cpu()
        start = int(torch.argmin((full - s[0]).abs()))
        run = full[start:start + len(s)]
        if len(run) != len(s) or not torch.allclose(run, s, rtol=1e-4, atol=1e-6):
            raise input_error(self.node, "inversion", f"the sampler's sigmas ({len(s) - 1} steps from {float(s[0]):.4g}) "
                                                      f"are not the inversion's schedule ({self.inversion.steps} steps); "
                                                      f"connect PNI Invert's sigmas output")
        return start

    def start_latent(self, start: int = 0) -> torch.Tensor:
        """The generation branch's first latent in output space (what a LATENT holds)."""
        return self.model_patcher.model.process_latent_out(self.trajectory[start].clone().float())

    def reset(self, start: int = 0):
        n = self.inversion.steps
        self.pni_gen = self._pni(self.inversion, self.trajectory)
        self.pni_gud = self._pni(self.inversion, self.trajectory)
        self.state = {"gud": {start: self.trajectory[start]}}
        self.eps = {"gud": {}}
        if self.reference is not None:
            self.pni_ref = self._pni(self.reference, self.reference.trajectory)
            self.state["ref"] = {start: self.reference.trajectory[start]}
            self.eps["ref"] = {}
        self.guide_until = int(round(self.settings.guidance_fraction * n))
        self.dense_until = int(round(self.guide_until / 3))
        self.kv_until = int(round(self.settings.kv_fraction * n))
        self.energy_log = []
        self.saved_bytes = 0      # the largest activation memory kept for one guided step's backward pass
        self._geo = None

    def sample(self, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None, disable_pbar=False, seed=None):
        if sigmas.shape[-1] == 0:
            return latent_image
        start = self.check_run(noise, sigmas)
        self.reset(start)
        z = self.start_latent(start)
        return super().sample(torch.zeros_like(z), z, sampler, sigmas, None, callback, disable_pbar, seed)

    # ------------------------------------------------------------------------- per step
    def is_guided_step(self, i: int) -> bool:
        """Energy guidance on step i: the first guidance_fraction of the steps; with sparse_guidance (DragonDiffusion's
        schedule) every step for the first third of those, then every other step."""
        if i >= self.guide_until:
            return False
        return not self.settings.sparse_guidance or i < self.dense_until or i % 2 == 0

    def _grid_below(self, sigma: float) -> int:
        sig = self.pni_gen.sigmas
        j = 0
        for k in range(len(sig) - 1):
            if sig[k] >= sigma:
                j = k
        return j

    def _branch_x(self, name: str, i, i_low: int, sigma: float, like: torch.Tensor) -> torch.Tensor:
        states = self.state[name]
        traj = self.trajectory if name == "gud" else self.reference.trajectory
        if i is not None:
            x = states.get(i, traj[i])
        else:  # between grid points (e.g. dpm_2's midpoint): the DDIM line through the step's own eps
            x = states.get(i_low, traj[i_low])
            eps = self.eps[name].get(i_low)
            if eps is not None:
                x = x.to(like) + (sigma - self.pni_gen.sigmas[i_low]) * eps
        x = x.to(device=like.device, dtype=like.dtype)
        if x.shape[0] != like.shape[0]:
            x = x.expand(like.shape[0], *x.shape[1:]) if x.shape[0] == 1 else x
        return x

    def _advance(self, name: str, pni: PNIGuidance, i, x_b, d_b, timestep):
        """The branch's own PNI reconstruction step (target = source): store its next latent."""
        if i is None:
            return
        sigma = pni.sigmas[i]
        d = pni.denoised(x_b, timestep, d_b, d_b)
        eps = (x_b - d) / sigma
        self.eps[name][i] = eps
        if i + 1 not in self.state[name]:
            self.state[name][i + 1] = d + pni.sigmas[i + 1] * eps

    def _run_batch(self, parts, timestep, model_options, call: BranchCall) -> dict:
        """One UNet call over [(label, x, cond)]; returns label -> denoised (conds' masks/strengths applied)."""
        model = self.inner_model
        chunks = []
        for label, xp, cond in parts:
            for entry in cond or []:
                p = host.get_area_and_mult(entry, xp, timestep)
                if p is None:
                    continue
                if p.area is not None:
                    raise input_error(self.node, "target", "conditioning with an area (Conditioning Set Area) is not "
                                                           "supported by the dual-branch sampler; use a plain prompt")
                if p.control is not None:
                    raise input_error(self.node, "target", "ControlNet conditioning is not supported by the dual-branch "
                                                           "sampler")
                chunks.append((label, p))
        labels = tuple(label for label, _ in chunks)
        missing = {label for label, _, _ in parts} - set(labels)
        if missing:
            raise input_error(self.node, "target", f"no active conditioning for {sorted(missing)} at this step")
        call.branches = labels
        input_x = torch.cat([p.input_x for _, p in chunks])
        c = host.cond_cat([p.conditioning for _, p in chunks])
        timestep_ = torch.cat([timestep] * len(chunks))
        host.prepare_state(model.current_patcher, timestep, model_options)
        to = model.current_patcher.apply_hooks(hooks=None)
        if "transformer_options" in model_options:
            to = host.merge_nested_dicts(to, model_options["transformer_options"], copy_dict1=False)
        cond_or_uncond = [0 if label == "gen_pos" else 1 for label in labels]
        to["cond_or_uncond"] = cond_or_uncond
        to["uuids"] = [p.uuid for _, p in chunks]
        to["sigmas"] = timestep
        to[CALL_KEY] = call
        c["transformer_options"] = to
        grad_mode = torch.is_grad_enabled()
        try:
            if "model_function_wrapper" in model_options:
                out = model_options["model_function_wrapper"](model.apply_model, {
                    "input": input_x, "timestep": timestep_, "c": c, "cond_or_uncond": cond_or_uncond})
            else:
                out = model.apply_model(input_x, timestep_, **c)
        finally:
            torch.set_grad_enabled(grad_mode)  # the feature hook turns it off for the decoder's tail
        acc, cnt = {}, {}
        for (label, p), o in zip(chunks, out.chunk(len(chunks))):
            acc[label] = acc.get(label, 0) + o * p.mult
            cnt[label] = cnt.get(label, 0) + p.mult
        return {label: acc[label] / cnt[label].clamp_min(1e-37) for label in acc}

    def _features(self, call: BranchCall, label: str, rows: int) -> list:
        i = call.branches.index(label)
        feats = [call.features[f"f{p}"][i * rows:(i + 1) * rows].float() for p in self.feature_points]  # fp16 models
        if len({tuple(f.shape[-2:]) for f in feats}) < 2:  # one resolution only: add a 2x coarser scale
            feats = feats + [F.avg_pool2d(f, 2) for f in feats if min(f.shape[-2:]) >= 2]
        return feats

    def _geometry_on(self, device) -> TaskGeometry:
        if self._geo is None or self._geo.m_gen.device != device:
            with torch.inference_mode(False):
                self._geo = self.geometry.to(device)
        return self._geo

    def _energy(self, call: BranchCall, rows: int, device):
        g = self._geometry_on(device)
        f_gen = self._features(call, "gen_pos", rows)
        f_gud = self._features(call, "gud", rows)
        f_src = self._features(call, "ref", rows) if g.edit_source == "ref" else f_gud
        s = self.settings
        return multiscale_energy(f_gen, f_src, f_gud, g.m_gen, g.edit_grid, g.m_share, g.share_grid, s.w_edit, s.w_share,
                                 s.alpha, s.beta, g.edit_mode, m_edit_src=g.m_gud)

    def predict_noise(self, x, timestep, model_options={}, seed=None):
        host.throw_if_interrupted()
        sigma = float(timestep.flatten()[0])
        i = self.pni_gen.step_index(timestep)
        i_low = i if i is not None else self._grid_below(sigma)
        guided = self.settings.energy_on and i is not None and self.is_guided_step(i)
        neg, pos = self.conds.get("negative"), self.conds.get("positive")
        parts = [("gud", self._branch_x("gud", i, i_low, sigma, x), neg)]
        if self.reference is not None:
            parts.append(("ref", self._branch_x("ref", i, i_low, sigma, x), self.conds.get("reference")))
        parts += [("gen_neg", x, neg), ("gen_pos", x, pos)]
        call = BranchCall(branches=(), latent_hw=tuple(x.shape[-2:]), kv=self.settings.kv and i_low < self.kv_until,
                          kv_mode=self.settings.kv_mode, kv_mask=self.geometry.kv_mask)
        grad = None
        if guided:
            call.capture_at = {p: f"f{p}" for p in self.feature_points}
            call.detach_from = self.detach_from
            saved = {}

            def pack(t):  # what the backward pass keeps (memory diagnostic, deduplicated by storage)
                saved[(t.data_ptr(), t.numel(), t.dtype)] = t.numel() * t.element_size()
                return t

            with torch.inference_mode(False), torch.enable_grad():
                x_leaf = x.detach().clone().requires_grad_(True)
                parts[-1] = ("gen_pos", x_leaf, pos)
                with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                    outs = self._run_batch(parts, timestep, model_options, call)
                self.saved_bytes = max(self.saved_bytes, sum(saved.values()))
                outs = {k: v.detach() for k, v in outs.items()}
                energy, info = self._energy(call, x.shape[0], x.device)
                if energy.requires_grad:
                    grad, = torch.autograd.grad(energy, x_leaf)
                self.energy_log.append((i, float(energy.detach()), info))
            call.features.clear()
        else:
            with torch.no_grad():
                outs = self._run_batch(parts, timestep, model_options, call)
        self._advance("gud", self.pni_gud, i, parts[0][1], outs["gud"], timestep)
        if self.reference is not None:
            self._advance("ref", self.pni_ref, i, parts[1][1], outs["ref"], timestep)
        d_neg, d_pos = outs["gen_neg"], outs["gen_pos"]
        denoised = self.pni_gen.denoised(x, timestep, d_neg, d_pos)
        if (self.settings.protect_edit_region and self.inversion.eta > 0
                and float(self.geometry.edit_region.sum()) > 0):
            plain, _ = pni_guided_denoised(x, timestep, None, d_neg, d_pos, self.inversion.cfg, self.inversion.lam,
                                           self.inversion.prox)
            keep = (1.0 - self._geometry_on(x.device).edit_region).to(x.dtype)[None, None]
            denoised = plain + keep * (denoised - plain)
        if grad is not None:
            # Eq. 7: eps~ = eps + s * grad_z L, z = x / sqrt(1 + sigma^2) the UNet's input; denoised = x - sigma * eps~
            grad_z = grad.to(x.dtype) * math.sqrt(1.0 + sigma * sigma)
            denoised = denoised - sigma * self.settings.energy_scale * grad_z
        return denoised
