"""Dual-Branch Guider and Dual-Branch Guided Sampler: VersaFusion's energy-guided editing (Fig. 3, Eq. 5-7).

The nodes: schema, input checks, the task's geometry from the node inputs, and a call into the guider
(sampling/dual_branch_guider.py), which holds the sampling machinery and the choices the paper leaves open.
"""
from __future__ import annotations

import dataclasses

import torch
from comfy_api.latest import io

from ..attention_patch.kv_replace import KV_LAYER_CHOICES, KV_MODES
from ..guidance.drag_points import DragPoints
from ..guidance.dual_branch_tasks import (REFERENCE_TASKS, TASKS, TaskGeometry, appearance_geometry, drag_geometry,
                                          landmark_geometry, mask_to_latent, move_geometry, outpaint_geometry,
                                          parse_landmarks_json, paste_geometry, style_geometry)
from ..guidance.errors import input_error
from ..guidance.inversion_data import Inversion
from ..sampling.sampler_check import EULER_STEP_SAMPLERS, is_euler_step
from ..sampling.dual_branch_guider import (DEFAULT_ENERGY_SCALE, ENERGY_MODES, ENERGY_NORMALISED, ENERGY_X0, GUIDER_NODE,
                                           DualBranchGuiderImpl, DualBranchSettings, check_settings)
from .architecture import SUPPORTED, check_model
from .types import CATEGORY_VERSAFUSION, DragPointsType, ImagePromptType, InversionType
from ..attention_patch import comfy_host as host

SAMPLER_NODE = "Dual-Branch Guided Sampler"
DEFAULT_SAMPLER = "euler"


# ------------------------------------------------------------------------------------------------
# building a guider from node inputs

def _is(obj, cls) -> bool:
    """isinstance, or the same class loaded under another package name (tests import the repo twice)."""
    return isinstance(obj, cls) or (type(obj).__name__ == cls.__name__ and hasattr(obj, "validate"))


def _latent_hw(inversion: Inversion) -> tuple:
    z = inversion.trajectory[0]
    return int(z.shape[-2]), int(z.shape[-1])


def build_geometry(node: str, task: str, hw: tuple, points=None, mask=None, offset_x: float = 0.0, offset_y: float = 0.0,
                   scale: float = 1.0, reference: Inversion | None = None, reference_mask=None, pad=(0, 0, 0, 0),
                   landmarks_json: str = "", point_radius: float = 16.0) -> TaskGeometry:
    """Node inputs (image pixels) -> the task's TaskGeometry on the latent grid; clear errors for bad combinations."""
    if task not in TASKS:
        raise input_error(node, "task", f"{task!r} is not one of {TASKS}")
    h, w = hw
    W, H = w * 8, h * 8
    radius = max(0.5, float(point_radius) / 8.0)
    if task in REFERENCE_TASKS and reference is None:
        raise input_error(node, "reference", f"task '{task}' needs a reference: PNI Invert the reference image and "
                                             f"connect its INVERSION")
    if reference is not None and task in REFERENCE_TASKS and _latent_hw(reference) != hw:
        rh, rw = _latent_hw(reference)
        raise input_error(node, "reference", f"the reference latent is {rw * 8}x{rh * 8} px, the image {W}x{H}; "
                                             f"scale the reference image to the image's size before inverting it")
    if task == "drag":
        if points is None:
            raise input_error(node, "points", "task 'drag' needs DRAG_POINTS (handle -> target pairs)")
        if not _is(points, DragPoints):
            raise input_error(node, "points", f"expected DRAG_POINTS, got {type(points).__name__}")
        points.validate(node, "points").check_size(W, H, node, "points")
        editable = None if mask is None else mask_to_latent(mask, hw, node, "mask")
        if editable is not None and float(editable.sum()) == 0:
            editable = None
        return drag_geometry(points.in_cells(8), hw, radius, editable, node, "points")
    if task == "move":
        if mask is None:
            raise input_error(node, "mask", "task 'move' needs a MASK of the object to move / resize")
        return move_geometry(mask_to_latent(mask, hw, node, "mask"), hw, offset_x / 8.0, offset_y / 8.0, scale, node, "mask")
    if task == "appearance":
        if mask is None:
            raise input_error(node, "mask", "task 'appearance' needs a MASK of the object whose appearance changes")
        if reference_mask is None:
            raise input_error(node, "reference_mask", "task 'appearance' needs a MASK of the reference object")
        return appearance_geometry(mask_to_latent(mask, hw, node, "mask"),
                                   mask_to_latent(reference_mask, hw, node, "reference_mask"), hw, hw, node)
    if task == "paste":
        if reference_mask is None:
            raise input_error(node, "reference_mask", "task 'paste' needs a MASK of the object to take from the reference")
        return paste_geometry(mask_to_latent(reference_mask, hw, node, "reference_mask"), hw, hw, offset_x / 8.0,
                              offset_y / 8.0, scale, node)
    if task == "outpaint":
        cells = []
        for name, px in zip(("pad_left", "pad_right", "pad_top", "pad_bottom"), pad):
            if px < 0 or px % 8:
                raise input_error(node, name, f"{px} px must be a non-negative multiple of 8")
            cells.append(int(px) // 8)
        if sum(cells) == 0:
            raise input_error(node, "pad_left", "task 'outpaint' needs padding on at least one side (all four pads are 0)")
        return outpaint_geometry(hw, tuple(cells), node)
    if task == "style":
        return style_geometry(hw)
    # landmarks
    if landmarks_json and landmarks_json.strip():
        src, tgt = parse_landmarks_json(landmarks_json, W, H, node, "landmarks_json")
    elif points is not None:
        points.validate(node, "points").check_size(W, H, node, "points")
        if len(points.pairs) != 68:
            raise input_error(node, "points", f"task 'landmarks' from the canvas needs 68 pairs (source landmark -> "
                                              f"target landmark, 68-point scheme), got {len(points.pairs)}")
        src = [p[0] for p in points.pairs]
        tgt = [p[1] for p in points.pairs]
    else:
        raise input_error(node, "landmarks_json", "task 'landmarks' needs two 68-point landmark sets: landmarks_json "
                                                  "or 68 pairs on the canvas (points)")
    cells = lambda pts: [(x / 8.0, y / 8.0) for x, y in pts]
    return landmark_geometry(cells(src), cells(tgt), hw, radius, node, "landmarks_json")


def build_guider(node: str, model, inversion, target, task: str, settings: DualBranchSettings, points=None, mask=None,
                 offset_x=0.0, offset_y=0.0, scale=1.0, reference=None, reference_mask=None, pad=(0, 0, 0, 0),
                 landmarks_json="", point_radius=16.0, image_prompt=None, reference_image_prompt=None):
    if not _is(inversion, Inversion):
        raise input_error(node, "inversion", f"expected PNI Invert's INVERSION, got {type(inversion).__name__}")
    inversion.validate(node, "inversion")
    if reference is not None:
        if not _is(reference, Inversion):
            raise input_error(node, "reference", f"expected PNI Invert's INVERSION, got {type(reference).__name__}")
        reference.validate(node, "reference")
        if len(reference.sigmas) != len(inversion.sigmas) or not torch.allclose(reference.sigmas.float(),
                                                                                 inversion.sigmas.float(), rtol=1e-4):
            raise input_error(node, "reference", "the reference was inverted with another schedule; invert both images "
                                                 "with the same steps and scheduler")
    if not isinstance(target, list) or len(target) == 0:
        raise input_error(node, "target", "expected a non-empty CONDITIONING (CLIP Text Encode of the target prompt)")
    check_model(model, node)
    check_settings(settings, node)
    geometry = build_geometry(node, task, _latent_hw(inversion), points, mask, offset_x, offset_y, scale, reference,
                              reference_mask, pad, landmarks_json, point_radius)
    use_ref = reference if task in REFERENCE_TASKS else None
    prompt = image_prompt
    if reference_image_prompt is not None:
        if prompt is None:
            raise input_error(node, "reference_image_prompt", "give the source image's image_prompt too: the reference "
                                                              "tokens are concatenated to the source tokens (Eq. 11)")
        prompt = prompt.concat(reference_image_prompt, node, "reference_image_prompt")
    return DualBranchGuiderImpl(model, inversion, target, geometry, settings, use_ref, prompt, node)


def _inputs(include_sampler: bool) -> list:
    ins = [
        io.Model.Input("model", tooltip=f"The model PNI Invert used. Supported: {SUPPORTED}. It is not modified: the patches go on a clone."),
        InversionType.Input("inversion", tooltip="PNI Invert's INVERSION of the image to edit: the guidance branch "
                                                 "reconstructs it, and sampling starts from its z_T."),
        io.Conditioning.Input("target", tooltip="The target prompt of the generation branch (often the source prompt; "
                                                "the source prompt from the inversion is its negative prompt)."),
        io.Combo.Input("task", options=list(TASKS), default="drag",
                       tooltip="drag: points; move: mask + offset + scale (resize); appearance: mask + reference + "
                               "reference_mask; paste: reference + reference_mask + offset + scale; outpaint: pads; "
                               "style: reference; landmarks: landmarks_json or 68 canvas pairs."),
    ]
    if include_sampler:
        ins.append(io.Combo.Input("sampler_name", options=list(host.SAMPLER_NAMES), default=DEFAULT_SAMPLER,
                                  tooltip="Any ComfyUI sampler; euler / ddim are exactly DDIM (Algorithm 1's update)."))
    ins += [
        io.Float.Input("w_edit", default=4.0, min=0.0, max=100.0, step=0.1,
                       tooltip="w_e of Eq. 6: weight of the edit term (m_gen must look like m_gud)."),
        io.Float.Input("w_share", default=6.0, min=0.0, max=100.0, step=0.1,
                       tooltip="w_p of Eq. 6: weight of the preservation term (m_share must stay as it was)."),
        io.Float.Input("energy_scale", default=DEFAULT_ENERGY_SCALE[ENERGY_NORMALISED], min=0.0, max=10000.0, step=0.05,
                       tooltip="s in eps~ = eps + s * grad_z L (Eq. 7); 0 = no energy. With energy_mode 'normalised, x0 only' "
                               "(default) s is dimensionless: the gradient is rescaled to the noise prediction's RMS over the "
                               "edit region, so s = 1 moves the x0 estimate as far as the whole noise prediction does, on any "
                               f"model, size or mask; landmarks and outpaint use 0.2 x, style 0.4 x of it (measured on ShapeDrag-GT). "
                               f"Raw modes: DragonDiffusion's default is {DEFAULT_ENERGY_SCALE[ENERGY_X0]:g}."),
        io.Float.Input("guidance_fraction", default=0.8, min=0.0, max=1.0, step=0.05,
                       tooltip="The energy guides the first fraction of the steps. 0.8 (default) measured on ShapeDrag-GT "
                               "(drag MD 5.3 px against 8.6 at 0.6, seed 0); DragonDiffusion guides 30 of 50 (0.6)."),
        io.Boolean.Input("kv_replace", default=True,
                         tooltip="Cross-branch self-attention: the generation branch reads the guidance branch's keys and values."),
        io.Combo.Input("kv_layers", options=list(KV_LAYER_CHOICES), default="decoder", optional=True,
                       tooltip="Which self-attention layers do KV replacement."),
        io.Combo.Input("kv_mode", options=list(KV_MODES), default="replace", optional=True,
                       tooltip="replace: K,V := guidance's (the paper); concat: the generation branch keeps its own K,V too."),
        io.Float.Input("kv_fraction", default=1.0, min=0.0, max=1.0, step=0.05, optional=True,
                       tooltip="KV replacement until this fraction of the steps (DragonDiffusion: 0.7 for appearance and paste)."),
        io.Float.Input("kv_start", default=0.0, min=0.0, max=1.0, step=0.05, optional=True,
                       tooltip="KV replacement from this fraction of the steps (DragonDiffusion's drag: concat from step 5 "
                               "of 50, 0.1); 0 = from the first step."),
        DragPointsType.Input("points", optional=True,
                             tooltip="drag: handle -> target pairs (image pixels). landmarks: 68 pairs from the canvas."),
        io.Mask.Input("mask", optional=True,
                      tooltip="move / appearance: the object (image pixels, the image's size). drag: optional editable area."),
        io.Float.Input("offset_x", default=0.0, min=-8192.0, max=8192.0, step=8.0, optional=True,
                       tooltip="move / paste: horizontal shift in pixels (right positive)."),
        io.Float.Input("offset_y", default=0.0, min=-8192.0, max=8192.0, step=8.0, optional=True,
                       tooltip="move / paste: vertical shift in pixels (down positive)."),
        io.Float.Input("scale", default=1.0, min=0.1, max=8.0, step=0.05, optional=True,
                       tooltip="move / paste: resize factor about the object's box centre (1 = same size)."),
        InversionType.Input("reference", optional=True,
                            tooltip="appearance / paste / style: PNI Invert's INVERSION of the reference image (same size and schedule)."),
        io.Mask.Input("reference_mask", optional=True,
                      tooltip="appearance / paste: the object in the reference image."),
        io.Int.Input("pad_left", default=0, min=0, max=4096, step=8, optional=True, tooltip="outpaint: pixels added on the left (multiple of 8)."),
        io.Int.Input("pad_right", default=0, min=0, max=4096, step=8, optional=True, tooltip="outpaint: pixels added on the right."),
        io.Int.Input("pad_top", default=0, min=0, max=4096, step=8, optional=True, tooltip="outpaint: pixels added on top."),
        io.Int.Input("pad_bottom", default=0, min=0, max=4096, step=8, optional=True, tooltip="outpaint: pixels added at the bottom."),
        io.String.Input("landmarks_json", default="", multiline=True, optional=True,
                        tooltip='landmarks: {"width": W, "height": H, "source": [[x, y] x 68], "target": [[x, y] x 68]} in image pixels.'),
        io.Float.Input("point_radius", default=16.0, min=4.0, max=256.0, step=4.0, optional=True,
                       tooltip="drag / landmarks: radius in pixels of the neighbourhood each point carries."),
        ImagePromptType.Input("image_prompt", optional=True,
                              tooltip="Image Prompt Encoder's tokens of the source image (decoupled cross-attention, Eq. 11)."),
        ImagePromptType.Input("reference_image_prompt", optional=True,
                              tooltip="Reference tasks: the reference's tokens, concatenated to the source's."),
        io.Int.Input("seed", default=0, min=0, max=0xffffffffffffffff, optional=True,
                     tooltip="outpaint: the noise of the new canvas area."),
        io.Combo.Input("energy_mode", options=list(ENERGY_MODES), default=ENERGY_NORMALISED, optional=True,
                       tooltip="How the energy's gradient joins the step. 'normalised, x0 only' (default): DragonDiffusion's "
                               "update (the gradient enters the x0 estimate, the direction term keeps the unguided noise) "
                               "with the gradient RMS-matched to the noise prediction; 'raw, x0 only (DragonDiffusion)': the "
                               "same update at a raw scale; 'raw, both terms (Eq. 7 as printed)': eps~ in both terms, which "
                               "shrinks each step's pull by (sigma - sigma_next) / sigma."),
        io.Float.Input("image_prompt_strength", default=0.1, min=0.0, max=10.0, step=0.01, optional=True,
                       tooltip="gamma of the decoupled cross-attention (Eq. 11) for image_prompt / reference_image_prompt: "
                               "out = Attn(text) + gamma * Attn(image). DragonDiffusion / DiffEditor use 0.05-0.1; 1.0 is "
                               "IP-Adapter's full strength."),
        io.Boolean.Input("region_split", default=True, optional=True,
                         tooltip="DragonDiffusion: the gradient of the edit terms acts inside the edit region, that of "
                                 "the preservation term outside it (two backward passes on a guided step). Off: one "
                                 "gradient of Eq. 6 everywhere, as the paper writes it."),
        io.Float.Input("w_contrast", default=0.2, min=0.0, max=100.0, step=0.05, optional=True,
                       tooltip="drag / move: weight of the term that makes the place the content left stop looking like "
                               "it (DragonDiffusion's contrast term); 0 = off (the paper has no removal terms)."),
        io.Float.Input("w_inpaint", default=0.8, min=0.0, max=100.0, step=0.05, optional=True,
                       tooltip="drag / move: weight of the term that makes the place the content left look like the "
                               "background (DragonDiffusion's inpainting term); 0 = off."),
        io.Boolean.Input("sparse_guidance", default=True, optional=True,
                         tooltip="DragonDiffusion's schedule: guide every step for the first third of the guided steps, "
                                 "then every other step (about 40 % fewer gradient passes). Off: every guided step."),
    ]
    return ins


# node input -> DualBranchSettings field, for every setting input
SETTING_FIELDS = {name: name for name in ("w_edit", "w_share", "energy_scale", "guidance_fraction", "energy_mode",
                                          "region_split", "w_contrast", "w_inpaint", "sparse_guidance", "seed",
                                          "kv_layers", "kv_mode", "kv_fraction", "kv_start")}
SETTING_FIELDS.update(image_prompt_strength="gamma", kv_replace="kv")
TASK_INPUTS = ("points", "mask", "offset_x", "offset_y", "scale", "reference", "reference_mask", "landmarks_json",
               "point_radius", "image_prompt", "reference_image_prompt")


def _settings(kw: dict) -> DualBranchSettings:
    """The node's setting inputs -> DualBranchSettings (inputs left out keep the settings' defaults), each value
    of its field's type (a widget may send 1 for 1.0)."""
    kind = {f.name: type(f.default) for f in dataclasses.fields(DualBranchSettings)}
    return DualBranchSettings(**{field: kind[field](kw[name]) for name, field in SETTING_FIELDS.items() if name in kw})


def _guider_from_inputs(node: str, model, inversion, target, task, kw: dict) -> DualBranchGuiderImpl:
    pad = tuple(int(kw.get(k, 0)) for k in ("pad_left", "pad_right", "pad_top", "pad_bottom"))
    return build_guider(node, model, inversion, target, task, _settings(kw), pad=pad,
                        **{k: kw[k] for k in TASK_INPUTS if k in kw})


class DualBranchGuider(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DragFusionDualBranchGuider",
            display_name=GUIDER_NODE,
            category=CATEGORY_VERSAFUSION,
            description=("VersaFusion's dual-branch energy-guided editing as a GUIDER for SamplerCustomAdvanced "
                         "(DisableNoise, any sampler, PNI Invert's sigmas). Each step runs the guidance branch "
                         "(reconstruction of the inverted image) and the generation branch in one batch; the generation "
                         "branch reads the guidance branch's self-attention keys/values and follows the gradient of "
                         "the task's energy (Eq. 5-7) on the early steps. The output latent starts from the inversion's "
                         "z_T (padded for outpaint)."),
            inputs=_inputs(include_sampler=False),
            outputs=[io.Guider.Output()],
        )

    @classmethod
    def execute(cls, model, inversion, target, task, **kw) -> io.NodeOutput:
        return io.NodeOutput(_guider_from_inputs(GUIDER_NODE, model, inversion, target, task, kw))


def run_guider(guider: DualBranchGuiderImpl, sampler_name: str, node: str = SAMPLER_NODE) -> dict:
    """Sample the whole schedule with a ComfyUI sampler; returns a LATENT (output space)."""
    if sampler_name not in host.SAMPLER_NAMES:
        raise input_error(node, "sampler_name", f"{sampler_name!r} is not one of {host.SAMPLER_NAMES}")
    sampler = host.sampler_object(sampler_name)
    if not is_euler_step(sampler):
        raise input_error(node, "sampler_name", f"{sampler_name!r} is not supported: the energy's x0 update and PNI's "
                                                f"inversion guidance are exact only for one Euler / DDIM step per sigma; "
                                                f"use one of {', '.join(EULER_STEP_SAMPLERS)}")
    sigmas = guider.inversion.sigmas.clone()
    start = guider.start_latent()
    callback = host.prepare_callback(guider.model_patcher, sigmas.shape[-1] - 1)
    samples = guider.sample(torch.zeros_like(start), start, sampler, sigmas, callback=callback,
                            disable_pbar=not host.progress_bar_enabled(), seed=guider.settings.seed)
    return {"samples": samples.to(host.intermediate_device())}


class DualBranchGuidedSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DragFusionDualBranchGuidedSampler",
            display_name=SAMPLER_NODE,
            category=CATEGORY_VERSAFUSION,
            description=("VersaFusion in one node: builds the Dual-Branch Guider and samples the inversion's whole "
                         "schedule with the chosen sampler. Tasks: drag, move / resize, appearance, paste, outpaint, "
                         "style, face landmarks. Returns the edited LATENT (larger for outpaint)."),
            inputs=_inputs(include_sampler=True),
            outputs=[io.Latent.Output(display_name="latent")],
        )

    @classmethod
    def execute(cls, model, inversion, target, task, sampler_name=DEFAULT_SAMPLER, **kw) -> io.NodeOutput:
        guider = _guider_from_inputs(SAMPLER_NODE, model, inversion, target, task, kw)
        return io.NodeOutput(run_guider(guider, sampler_name))


NODES = [DualBranchGuider, DualBranchGuidedSampler]
