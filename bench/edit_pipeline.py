"""The AttentionDrag edit as the example workflow wires it, run in-process through the pack's own
nodes (and ComfyUI's core nodes), for the benchmarks and the evaluation harness; and VersaFusion's
dual-branch drag as dual_branch_drag.json wires it (PNI Invert + Dual-Branch Guided Sampler).

    load_models(ckpt) -> Models;  attention_drag(models, image, points, mask, prompt, **options) -> Edit
    dual_branch_drag(models, image, points, mask, prompt, steps=20) -> Edit
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))
import harness  # noqa: E402


@dataclass
class Models:
    nodes: object
    model: object
    clip: object
    vae: object
    name: str


@dataclass
class Edit:
    image: torch.Tensor     # [1, H, W, 3] result
    mask: torch.Tensor      # [1, H, W] the edit mask used
    latent: torch.Tensor    # the final latent (output space)


def core(nodes, name, **kw):
    """A core node of the real host, under torch.inference_mode as the executor runs it (harness.call_node)."""
    return harness.call_node(name, **kw)


def load_models(ckpt: str) -> Models:
    nodes = harness.load_host()
    import folder_paths
    if not folder_paths.get_full_path("checkpoints", ckpt):
        raise SystemExit(f"no checkpoint {ckpt!r} in ComfyUI's models/checkpoints "
                         f"(have: {folder_paths.get_filename_list('checkpoints')})")
    model, clip, vae = core(nodes, "CheckpointLoaderSimple", ckpt_name=ckpt)[:3]
    return Models(nodes, model, clip, vae, ckpt)


def attention_drag(m: Models, image, points, mask, prompt: str = "", steps: int = 10, edit_step: int = 5,
                   tau: float = 2.0, reference: str = "mean", automask: bool = True, fill: str = "attention",
                   kv: bool = True, lcm: bool = True, scheduler: str = "simple", seed: int = 0) -> Edit:
    """One drag edit. automask=False moves the user mask's cells (no AutoMask); fill picks
    AttentionInterpolate's fill (attention | nearest | zero | noise); points=None -> inpainting."""
    nodes, run = m.nodes, harness.run_node
    model = core(nodes, "ModelSamplingDiscrete", model=m.model, sampling="lcm", zsnr=False)[0] if lcm else m.model
    pos = core(nodes, "CLIPTextEncode", clip=m.clip, text=prompt)[0]
    neg = core(nodes, "ConditioningZeroOut", conditioning=pos)[0]
    latent = core(nodes, "VAEEncode", pixels=image, vae=m.vae)[0]
    z, cap = run("DragFusionInvertCapture", model=model, latent=latent, steps=steps, edit_step=edit_step,
                 scheduler=scheduler, cfg=1.0, layers="latent resolution", capture_values=kv, positive=pos,
                 **({"points": points} if points is not None else {})).result
    if points is None:
        edit_mask = mask
        z = run("DragFusionAttentionInterpolate", capture=cap, latent=z, mask=mask, fill=fill, mode="inpaint",
                seed=seed).result[0]
    else:
        if automask:
            edit_mask = run("DragFusionAutoMask", capture=cap, points=points, tau=tau, reference=reference,
                            mask=mask, mask_mode="union").result[0]
        else:
            edit_mask = mask
        z, blank = run("DragFusionSemanticMove", capture=cap, latent=z, points=points, mask=edit_mask).result
        z = run("DragFusionAttentionInterpolate", capture=cap, latent=z, mask=blank, fill=fill, mode="drag",
                seed=seed).result[0]
    if kv:
        model = run("DragFusionKVConsistency", model=model, capture=cap, enabled=True, strength=1.0).result[0]
    out = core(nodes, "KSamplerAdvanced", model=model, add_noise="disable", noise_seed=seed, steps=steps, cfg=1.0,
               sampler_name="euler", scheduler=scheduler, positive=pos, negative=neg, latent_image=z,
               start_at_step=edit_step, end_at_step=10000, return_with_leftover_noise="disable")[0]
    img = core(nodes, "VAEDecode", samples=out, vae=m.vae)[0]
    return Edit(img, edit_mask, out["samples"])


def node_defaults(nodes, node_id: str) -> dict:
    """The widget defaults of a node's schema (required and optional inputs that have one), read at run
    time: what the UI sends for a freshly added node."""
    types = nodes.NODE_CLASS_MAPPINGS[node_id].INPUT_TYPES()
    return {k: v[1]["default"] for sec in ("required", "optional") for k, v in types.get(sec, {}).items()
            if len(v) > 1 and isinstance(v[1], dict) and "default" in v[1]}


def dual_branch_drag(m: Models, image, points, mask, prompt: str = "", steps: int = 20) -> Edit:
    """VersaFusion's dual-branch drag at the nodes' own defaults: PNI Invert of the image with its prompt
    (``steps`` DDIM steps; guidance_until scaled with them as its default is to its default steps), then the
    Dual-Branch Guided Sampler, task 'drag', sampler 'euler', the points and ``mask`` as the editable region.
    The plain checkpoint model (no LCM sampling), as the example workflow."""
    nodes, run = m.nodes, harness.run_node
    pos = core(nodes, "CLIPTextEncode", clip=m.clip, text=prompt)[0]
    latent = core(nodes, "VAEEncode", pixels=image, vae=m.vae)[0]
    inv_kw = node_defaults(nodes, "DragFusionPNIInvert")
    inv_kw["guidance_until"] = max(0, round(inv_kw["guidance_until"] * steps / inv_kw["steps"]))
    inv_kw["steps"] = steps
    inv = run("DragFusionPNIInvert", model=m.model, latent=latent, source=pos, **inv_kw).result[0]
    kw = node_defaults(nodes, "DragFusionDualBranchGuidedSampler")
    kw.update(task="drag", sampler_name="euler", points=points, mask=mask)
    out = run("DragFusionDualBranchGuidedSampler", model=m.model, inversion=inv, target=pos, **kw).result[0]
    img = core(nodes, "VAEDecode", samples=out, vae=m.vae)[0]
    return Edit(img, mask, out["samples"])
