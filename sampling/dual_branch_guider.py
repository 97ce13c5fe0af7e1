"""The dual-branch sampler of VersaFusion (Fig. 3, Eq. 5-7) as a ComfyUI guider (a CFGGuider subclass): the
sampling machinery behind the Dual-Branch Guider and Dual-Branch Guided Sampler nodes (nodes/dual_branch.py).

Per sampling step one batched UNet call runs

    gud      the guidance branch: the source image reconstructed along PNI Invert's INVERSION
             (PNI sampling with target = source, guidance/pni.py PNIGuidance)
    ref      the reference branch (appearance, paste, style): the reference's own INVERSION
    gen_neg  the generation branch under the source prompt (PNI's negative prompt); left out when it equals
             the target prompt and no image prompt is connected (the two rows would be one row twice)
    gen_pos  the generation branch under the target prompt
    feat     on guided steps only: the generation latent again under the target prompt, with plain
             self-attention (no KV injection); the energy reads its features and only it keeps autograd history

The generation rows' self-attention reads the guidance rows' keys and values (attention_patch/
kv_replace.py). On the guided steps (the first ``guidance_fraction`` of the schedule, 80 % by default;
DragonDiffusion guides 30 of 50) the call keeps autograd history up to the decoder blocks whose features the
energy reads (attention_patch/feature_hook.py); Eq. 6 on those features (guidance/energy.py), with the task's
masks and correspondence (guidance/dual_branch_tasks.py), gives grad_z L. By default (energy_mode 'normalised,
x0 only') that gradient is rescaled to the noise prediction's RMS over the edit region and moves only the x0
estimate of the step, DragonDiffusion's update: the step's direction term keeps the unguided noise,
x_next = (x - sigma * (eps + s * g)) + sigma_next * eps, which the guider returns as the denoised prediction
denoised - s * g * sigma^2 / (sigma - sigma_next) for the Euler / DDIM step to land on (guidance/energy.py
x0_guided_denoised; s = energy_scale times the task's factor, g the normalised grad_z). Eq. 7 as printed
(eps~ = eps_PNI + energy_scale * grad_z L in both terms) is the 'raw, both terms' mode. Guidance runs on
DragonDiffusion's sparse schedule by default (every guided step for the first third, then every other one).
The generation branch is otherwise PNI sampling (proximal CFG + inversion guidance), except that the inversion
guidance leaves the edit region alone. The per-step corrections are exact only for samplers that take one Euler /
DDIM step per sigma (euler, ddim); others are refused (sampling/sampler_check.py).

Choices the paper leaves open (documented here and in the tooltips), defaults measured on ShapeDrag-GT
(bench/shapedrag/db_sweep.py):
- energy_mode: by default the gradient enters the x0 estimate only (DragonDiffusion's update; Eq. 7 read
  literally adds it to both terms, which shrinks each step's pull by (sigma - sigma_next) / sigma), and
  it is rescaled to the noise prediction's RMS over the edit region, so energy_scale is dimensionless.
- region_split: the edit terms' gradient acts inside the edit region, the preservation term's outside
  (DragonDiffusion); off, one gradient of Eq. 6 for the whole latent, as the paper writes it. Drag and
  move add DragonDiffusion's removal terms (contrast, inpaint) over the cells the edit empties.
- Scales are averaged.
- Sampling starts from the inversion's z_T (padded for outpaint: new cells get seeded noise); the
  guider needs DisableNoise and PNI Invert's sigmas.
- The energy reads the feat row (target prompt, no KV injection, as DragonDiffusion's feature pass), the
  guidance branch its source-prompt rows.
- Image-prompt tokens: cond tokens on gen_pos and feat, uncond tokens on the other rows.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..attention_patch import comfy_host as host
from ..attention_patch.feature_hook import (decoder_feature_points, grad_modules, grad_weights, install_feature_hook,
                                            parse_feature_blocks)
from ..attention_patch.kv_replace import (CALL_KEY, KV_LAYER_CHOICES, KV_MODES, BranchCall, check_kv_masks,
                                          install_kv_replace)
from ..guidance.dual_branch_tasks import TaskGeometry, pad_latent
from ..guidance.energy import ALPHA, BETA, rms_normalised_gradient, split_multiscale_energy, x0_guided_denoised
from ..guidance.errors import input_error
from ..guidance.inversion_data import Inversion
from ..guidance.pni import PNIGuidance, pni_guided_denoised
from .sampler_check import require_euler_step

GUIDER_NODE = "Dual-Branch Guider"
# How the energy's gradient joins the sampling step (energy_mode):
ENERGY_NORMALISED = "normalised, x0 only"               # default: RMS-matched to eps over the edit region, x0 term only
ENERGY_X0 = "raw, x0 only (DragonDiffusion)"            # DragonDiffusion's update at a raw scale
ENERGY_EQ7 = "raw, both terms (Eq. 7 as printed)"      # eps~ = eps + s * grad in x0 and direction alike
ENERGY_MODES = (ENERGY_NORMALISED, ENERGY_X0, ENERGY_EQ7)
DEFAULT_ENERGY_SCALE = {ENERGY_NORMALISED: 0.25, ENERGY_X0: 40.0, ENERGY_EQ7: 40.0}   # normalised: ShapeDrag-GT
# With the normalised energy, the scale is multiplied per task (as DragonDiffusion's guidance functions carry a
# constant of their own per task): tasks that keep most of the image want a gentler pull. Measured on ShapeDrag-GT
# (bench/shapedrag/db_sweep.py, seed 0, 2 scenes, 20 steps): landmarks IoU 0.871 at 0.05 against 0.814 at 0.25,
# outpaint PSNR in the new area 18.71 dB against 18.07, style 15.18 dB at 0.1 against 14.88.
TASK_ENERGY_FACTOR = {"landmarks": 0.2, "outpaint": 0.2, "style": 0.4}


@dataclass(frozen=True)
class DualBranchSettings:
    w_edit: float = 4.0
    w_share: float = 6.0
    alpha: float = ALPHA
    beta: float = BETA
    energy_scale: float = DEFAULT_ENERGY_SCALE[ENERGY_NORMALISED]   # raw modes: DragonDiffusion 1 (UI) * 1e3 * 4e-2 = 40
    energy_mode: str = ENERGY_NORMALISED
    gamma: float = 0.1                    # image-prompt strength (Eq. 11); DragonDiffusion / DiffEditor 0.05-0.1
    region_split: bool = True             # DragonDiffusion: the edit terms' gradient inside the edit region, the
                                          # preservation term's outside; False: one gradient of Eq. 6 everywhere
    w_contrast: float = 0.2               # DragonDiffusion's removal terms on the vacated cells (drag, move)
    w_inpaint: float = 0.8
    feature_row: bool = True              # the energy reads a row of its own without KV injection (DragonDiffusion's
                                          # feature pass); False: the gen_pos row, KV and all (a measurement switch)
    guidance_fraction: float = 0.8        # guide the first 80 % of the steps (ShapeDrag-GT; DragonDiffusion: 30 of 50)
    kv: bool = True
    kv_layers: str = "decoder"
    kv_mode: str = "replace"
    kv_fraction: float = 1.0              # KV replacement until this fraction of the steps
    kv_start: float = 0.0                 # ... from this fraction of the steps (DragonDiffusion's drag: step 5 of 50)
    sparse_guidance: bool = True          # DragonDiffusion: every step for the first third of the guided steps,
                                          # then every other step
    protect_edit_region: bool = True      # no inversion guidance on the generation branch's edit region
    feature_blocks: str = ""              # "" = auto (decoder level outputs); else output block ids "5,8"
    seed: int = 0                         # noise of outpaint's new cells

    @property
    def energy_on(self) -> bool:
        return (self.w_edit != 0 or self.w_share != 0) and self.energy_scale != 0


def same_conditioning(a, b) -> bool:
    """Two CONDITIONING lists that give the same UNet input (tensors equal, same extra entries)."""
    def same(u, v):
        if torch.is_tensor(u) or torch.is_tensor(v):
            return torch.is_tensor(u) and torch.is_tensor(v) and u.shape == v.shape and bool(torch.equal(u, v))
        if isinstance(u, dict) and isinstance(v, dict):
            return u.keys() == v.keys() and all(same(u[k], v[k]) for k in u)
        if isinstance(u, (list, tuple)) and isinstance(v, (list, tuple)):
            return len(u) == len(v) and all(same(p, q) for p, q in zip(u, v))
        try:
            return bool(u == v)
        except Exception:   # objects without a usable ==: treat as different
            return False
    return same(a, b)


def check_settings(s: DualBranchSettings, node: str):
    checks = [
        (math.isfinite(s.w_edit) and s.w_edit >= 0, "w_edit", f"{s.w_edit} must be >= 0"),
        (math.isfinite(s.w_share) and s.w_share >= 0, "w_share", f"{s.w_share} must be >= 0"),
        (s.alpha > 0 and s.beta >= 0, "alpha", f"alpha ({s.alpha}) must be > 0 and beta ({s.beta}) >= 0"),
        (math.isfinite(s.energy_scale) and s.energy_scale >= 0, "energy_scale", f"{s.energy_scale} must be >= 0"),
        (0 <= s.guidance_fraction <= 1, "guidance_fraction", f"{s.guidance_fraction} must lie in 0..1"),
        (0 <= s.kv_fraction <= 1, "kv_fraction", f"{s.kv_fraction} must lie in 0..1"),
        (0 <= s.kv_start <= 1, "kv_start", f"{s.kv_start} must lie in 0..1"),
        (s.kv_layers in KV_LAYER_CHOICES, "kv_layers", f"{s.kv_layers!r} is not one of {KV_LAYER_CHOICES}"),
        (s.kv_mode in KV_MODES, "kv_mode", f"{s.kv_mode!r} is not one of {KV_MODES}"),
        (s.energy_mode in ENERGY_MODES, "energy_mode", f"{s.energy_mode!r} is not one of {ENERGY_MODES}"),
        (math.isfinite(s.gamma) and 0 <= s.gamma <= 10, "image_prompt_strength", f"{s.gamma} must lie in 0..10"),
        (math.isfinite(s.w_contrast) and s.w_contrast >= 0, "w_contrast", f"{s.w_contrast} must be >= 0"),
        (math.isfinite(s.w_inpaint) and s.w_inpaint >= 0, "w_inpaint", f"{s.w_inpaint} must be >= 0"),
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
            m = apply_image_prompt(model, image_prompt, gamma=settings.gamma, node=node, input_name="image_prompt")  # a clone
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
        if self.kv_layers:
            try:
                check_kv_masks(unet, self.kv_layers, geometry.hw, {"kv_mask": geometry.kv_mask,
                                                                   "kv_ref_mask": geometry.kv_ref_mask})
            except ValueError as e:
                raise input_error(node, "kv_replace", f"{e}; switch kv_replace off or change the masks") from None
        install_feature_hook(m)
        # the layers a gradient pass crosses; their detaching weight functions are on during that pass only
        self.grad_modules = grad_modules(m, self.detach_from) if settings.energy_on else []
        super().__init__(m)
        self.inversion, self.reference, self.geometry, self.settings = inversion, reference, geometry, settings
        self.cfg = inversion.cfg
        conds = {"positive": target, "negative": inversion.source_cond}
        if reference is not None:
            conds["reference"] = reference.source_cond
        self.inner_set_conds(conds)
        # target = source prompt (drag, move, ...): the generation branch's two rows would be one row computed twice
        self.one_gen_row = image_prompt is None and same_conditioning(target, inversion.source_cond)
        g = geometry    # on the CPU here: which masks have cells, known once instead of read back every guided step
        self.nonempty = {name: getattr(g, name) is not None and bool(getattr(g, name).sum() > 0)
                         for name in ("m_gen", "m_share", "m_vacate", "edit_region")}
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
        return PNIGuidance.from_inversion(inv, trajectory)

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
        self.kv_from = int(round(self.settings.kv_start * n))
        self.energy_log = []
        self.saved_bytes = 0      # the largest activation memory kept for one guided step's backward pass
        self._token_cache = {}    # KV token selections per grid, for the whole run
        self._geo = None

    def sample(self, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None, disable_pbar=False, seed=None):
        if sigmas.shape[-1] == 0:
            return latent_image
        start = self.check_run(noise, sigmas)
        require_euler_step(sampler, self.node, "the energy's x0 update, the guidance branch's reconstruction and "
                                               "PNI's inversion guidance")
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
        cond_or_uncond = [0 if label in ("gen_pos", "feat") else 1 for label in labels]
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

    def _energy(self, call: BranchCall, feat_call: BranchCall, rows: int, device):
        g = self._geometry_on(device)
        f_gen = self._features(feat_call, "feat" if self.settings.feature_row else "gen_pos", rows)
        f_gud = self._features(call, "gud", rows)
        f_src = self._features(call, "ref", rows) if g.edit_source == "ref" else f_gud
        s = self.settings
        return split_multiscale_energy(f_gen, f_src, f_gud, g.m_gen, g.edit_grid, g.m_share, g.share_grid, s.w_edit,
                                       s.w_share, s.alpha, s.beta, g.edit_mode, m_edit_src=g.m_gud, m_vacate=g.m_vacate,
                                       w_contrast=s.w_contrast, w_inpaint=s.w_inpaint, nonempty=self.nonempty)

    def _gradient(self, inside, outside, x_leaf):
        """grad_x of the energy. Region split (DragonDiffusion): the inside energy's gradient in the edit region,
        the outside energy's in the geometry's preserve region (outside the edit region, or for style everywhere;
        a backward pass each); else the gradient of their sum (one pass)."""
        if not (inside.requires_grad or outside.requires_grad):
            return None
        if not self.settings.region_split:
            grad, = torch.autograd.grad(inside + outside, x_leaf)
            return grad
        r = self._region(x_leaf)
        grad = torch.zeros_like(x_leaf)
        if inside.requires_grad:
            g_in, = torch.autograd.grad(inside, x_leaf, retain_graph=outside.requires_grad)
            grad = grad + g_in * r
        if outside.requires_grad:
            g_out, = torch.autograd.grad(outside, x_leaf)
            grad = grad + g_out * self._geometry_on(x_leaf.device).preserve_region.to(x_leaf.dtype)[None, None]
        return grad

    def _region(self, like) -> torch.Tensor:
        return self._geometry_on(like.device).edit_region.to(like.dtype)[None, None]

    def _guided_pass(self, parts, x, i, timestep, model_options, call):
        """A guided step: the branches' batch, and the energy's gradient w.r.t. the generation latent.

        feature_row (default): the batch runs without autograd; the energy reads a second UNet call of the
        generation latent alone under the target prompt with plain self-attention (DragonDiffusion's feature
        pass), the only call that keeps activations for the backward pass. Otherwise the gen_pos row of the
        batch itself carries the gradient (the whole batch keeps activations)."""
        saved = {}

        def pack(t):  # what the backward pass keeps (memory diagnostic, deduplicated by storage)
            saved[(t.data_ptr(), t.numel(), t.dtype)] = t.numel() * t.element_size()
            return t

        pos = self.conds.get("positive")
        feat_call = call
        if self.settings.feature_row:
            with torch.no_grad():
                outs = self._run_batch(parts, timestep, model_options, call)
            feat_call = BranchCall(branches=(), latent_hw=call.latent_hw, kv=False, token_cache=call.token_cache,
                                   capture_at=dict(call.capture_at), node=self.node)
        with torch.inference_mode(False), torch.enable_grad(), grad_weights(self.grad_modules):
            x_leaf = x.detach().clone().requires_grad_(True)
            feat_call.detach_from = self.detach_from
            grad_parts = [("feat", x_leaf, pos)] if self.settings.feature_row else parts[:-1] + [("gen_pos", x_leaf, pos)]
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                out_g = self._run_batch(grad_parts, timestep, model_options, feat_call)
            self.saved_bytes = max(self.saved_bytes, sum(saved.values()))
            if not self.settings.feature_row:
                outs = {k: v.detach() for k, v in out_g.items()}
            del out_g
            inside, outside, info = self._energy(call, feat_call, x.shape[0], x.device)
            grad = self._gradient(inside, outside, x_leaf)
            self.energy_log.append((i, (inside + outside).detach(), info["scales"], info["removal"]))
        call.features.clear()
        feat_call.features.clear()
        return grad, outs

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
        parts += ([] if self.one_gen_row else [("gen_neg", x, neg)]) + [("gen_pos", x, pos)]
        call = BranchCall(branches=(), latent_hw=tuple(x.shape[-2:]), kv=self.settings.kv and self.kv_from <= i_low < self.kv_until,
                          kv_mode=self.settings.kv_mode, kv_mask=self.geometry.kv_mask,
                          kv_ref_mask=self.geometry.kv_ref_mask, token_cache=self._token_cache, node=self.node)
        grad = None
        if guided:
            call.capture_at = {p: f"f{p}" for p in self.feature_points}
            grad, outs = self._guided_pass(parts, x, i, timestep, model_options, call)
        else:
            with torch.no_grad():
                outs = self._run_batch(parts, timestep, model_options, call)
        self._advance("gud", self.pni_gud, i, parts[0][1], outs["gud"], timestep)
        if self.reference is not None:
            self._advance("ref", self.pni_ref, i, parts[1][1], outs["ref"], timestep)
        d_pos = outs["gen_pos"]
        d_neg = d_pos if self.one_gen_row else outs["gen_neg"]
        denoised = self.pni_gen.denoised(x, timestep, d_neg, d_pos)
        if self.settings.protect_edit_region and self.inversion.eta > 0 and self.nonempty["edit_region"]:
            plain, _ = pni_guided_denoised(x, sigma, None, d_neg, d_pos, self.inversion.cfg, self.inversion.lam,
                                           self.inversion.prox, quantile=getattr(self.inversion, "lam_quantile", None))
            keep = (1.0 - self._geometry_on(x.device).edit_region).to(x.dtype)[None, None]
            denoised = plain + keep * (denoised - plain)
        if grad is not None:
            denoised = self.apply_energy(x, denoised, grad, sigma, i)
        return denoised

    def apply_energy(self, x, denoised, grad, sigma: float, i: int) -> torch.Tensor:
        """Eq. 7 with the gradient w.r.t. z = x / sqrt(1 + sigma^2) (the UNet's input), in the chosen mode."""
        s = self.settings
        grad_z = grad.to(x.dtype) * math.sqrt(1.0 + sigma * sigma)
        if s.energy_mode == ENERGY_EQ7:            # eps~ = eps + s * grad_z in both terms: denoised = x - sigma * eps~
            return denoised - sigma * self.energy_scale * grad_z
        if s.energy_mode == ENERGY_NORMALISED:
            eps = (x - denoised) / sigma
            grad_z = rms_normalised_gradient(grad_z, eps, self._geometry_on(x.device).edit_region)
        return x0_guided_denoised(denoised, grad_z, sigma, float(self.pni_gen.sigmas[i + 1]), self.energy_scale)

    @property
    def energy_scale(self) -> float:
        """The scale the x0 modes apply: energy_scale, times the task's factor in the normalised mode."""
        s = self.settings
        factor = TASK_ENERGY_FACTOR.get(self.geometry.task, 1.0) if s.energy_mode == ENERGY_NORMALISED else 1.0
        return s.energy_scale * factor
