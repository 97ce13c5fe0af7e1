"""Dual-Branch Guider / Guided Sampler in the real ComfyUI host (in-process) on the tiny SD1.5 checkpoint.

Everything runs under torch.inference_mode() (the checkpoint is loaded there too), as ComfyUI's
executor does, so the gradient pass is exercised on inference-mode weights.
"""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import harness

STEPS = 4
SIZE = 64
IMAGE = "dragbench-dev/animals/JH_2023-09-14-1820-16/original_image.png"
SAMPLER = "DragFusionDualBranchGuidedSampler"
GUIDER = "DragFusionDualBranchGuider"


@pytest.fixture(scope="module")
def kit(host, data_dir):
    import comfy.sd
    import folder_paths
    path = folder_paths.get_full_path("checkpoints", harness.TINY_CKPT)
    with torch.inference_mode():
        model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(path, output_vae=True, output_clip=True)
        enc = lambda text: host.CLIPTextEncode().encode(clip, text)[0]
        img = Image.open(os.path.join(data_dir, IMAGE)).convert("RGB").resize((SIZE, SIZE), Image.LANCZOS)
        pixels = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)[None]
        latent = host.VAEEncode().encode(vae, pixels)[0]
        src, tar = enc("a photo of a dog"), enc("a photo of a cat")
        inv = {}
        for eta in (0.0, 0.1):
            inv[eta], z_T, sigmas = harness.run_node(
                "DragFusionPNIInvert", model=model, latent=latent, source=src, steps=STEPS, cfg=5.0, lam=0.02,
                prox="L1", eta=eta, guidance_until=STEPS, scheduler="ddim_uniform").result
    return {"model": model, "latent": latent, "src": src, "tar": tar, "inv": inv, "z_T": z_T, "sigmas": sigmas}


def params(model):
    return {k: v.detach().clone() for k, v in model.model.diffusion_model.state_dict().items()}


def run(kit, task="drag", eta=0.1, target=None, **kw):
    args = dict(model=kit["model"], inversion=kit["inv"][eta], target=target or kit["src"], task=task,
                sampler_name="euler", w_edit=4.0, w_share=6.0, energy_scale=40.0, guidance_fraction=0.6,
                kv_replace=True)
    args.update(kw)
    with torch.inference_mode():
        return harness.run_node(SAMPLER, **args).result[0]["samples"]


def drag_points(pairs=(((20.0, 30.0), (40.0, 30.0)),)):
    from dragfusion.guidance.drag_points import DragPoints
    return DragPoints(SIZE, SIZE, tuple(pairs))


def host_module(host):
    """nodes/dual_branch.py as the host loaded it (the classes the nodes use)."""
    import sys
    return sys.modules[host.NODE_CLASS_MAPPINGS[SAMPLER].__module__]


def guider_impl(kit, task="drag", eta=0.0, target=None, settings=None, **kw):
    mod = host_module(harness.load_host())
    s = settings or mod.DualBranchSettings()
    return mod.build_guider("test", kit["model"], kit["inv"][eta], target or kit["src"], task, s, **kw)


def sample_pni(kit, eta, target):
    import comfy.samplers
    import comfy_extras.nodes_custom_sampler as ncs
    with torch.inference_mode():
        g = harness.run_node("DragFusionPNIGuider", model=kit["model"], inversion=kit["inv"][eta], target=target).result[0]
        return harness.run_node("SamplerCustomAdvanced", noise=ncs.Noise_EmptyNoise(), guider=g,
                                sampler=comfy.samplers.sampler_object("euler"), sigmas=kit["sigmas"],
                                latent_image=kit["z_T"]).result[0]["samples"]


def test_drag_runs_and_leaves_model_unchanged(kit):
    model = kit["model"]
    before = params(model)
    opts = json.dumps(model.model_options, default=str, sort_keys=True)
    wrappers = dict(model.weight_wrapper_patches)
    out = run(kit, points=drag_points())
    assert out.shape == kit["z_T"]["samples"].shape and torch.isfinite(out).all()
    plain = run(kit, points=drag_points(), energy_scale=0.0)
    assert (out - plain).abs().max() > 1e-4, "the energy gradient changed nothing"
    after = params(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert json.dumps(model.model_options, default=str, sort_keys=True) == opts
    assert dict(model.weight_wrapper_patches) == wrappers


def test_energy_is_logged_on_guided_steps_only(kit):
    run_guider = host_module(harness.load_host()).run_guider
    g = guider_impl(kit, "drag", eta=0.1, points=drag_points())
    with torch.inference_mode():
        run_guider(g, "euler")
    steps = [i for i, _, _ in g.energy_log]
    assert steps == [0, 1]                            # round(0.6 * 4) = 2 guided steps
    assert all(np.isfinite(e) and e > 0 for _, e, _ in g.energy_log)
