"""A batch of two images equals two runs of one, in every node that samples (real host, tiny SD1.5 checkpoint).

Inversion with Attention Capture (+ KV Consistency + KSamplerAdvanced), PNI Invert + PNI Guider
(SamplerCustomAdvanced), and the Dual-Branch Guided Sampler (drag: energy, KV, the generation branch's protected
edit region; appearance: a reference branch and KV token masks). Each B = 2 result is compared with the two B = 1
results it must hold, element by element.
"""
import numpy as np
import pytest
import torch

import harness

SIZE = 64
STEPS = 3
ATOL = 2e-4


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Every test of this module on one intra-op thread (tests/conftest.py)."""


def _image(seed: int) -> torch.Tensor:
    """A smooth picture with a bright disk: [1, SIZE, SIZE, 3] in 0..1."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    img = np.stack([0.5 + 0.3 * np.sin(6 * x + seed), 0.4 + 0.3 * y, 0.3 + 0.2 * np.cos(4 * y - seed)], -1)
    cx, cy = rng.uniform(20, 44, 2)
    img[(np.mgrid[0:SIZE, 0:SIZE][1] - cx) ** 2 + (np.mgrid[0:SIZE, 0:SIZE][0] - cy) ** 2 < 80] = (0.9, 0.2, 0.2)
    return torch.from_numpy(img.astype(np.float32))[None]


@pytest.fixture(scope="module")
def kit(host):
    model, clip, vae = harness.load_tiny_checkpoint("sd15")
    (pos,) = harness.call_node("CLIPTextEncode", clip=clip, text="a photo")
    with torch.inference_mode():
        singles = [harness.call_node("VAEEncode", vae=vae, pixels=_image(s))[0] for s in (1, 2)]
        reference = harness.call_node("VAEEncode", vae=vae, pixels=_image(3))[0]
    pair = {"samples": torch.cat([z["samples"] for z in singles])}
    return dict(model=model, pos=pos, singles=singles, pair=pair, reference=reference)


def _same(pair: torch.Tensor, singles: list, what: str):
    assert pair.shape[0] == 2, what
    for i, one in enumerate(singles):
        err = float((pair[i:i + 1] - one).abs().max())
        assert err < ATOL * max(1.0, float(one.abs().max())), f"{what}: batch entry {i} differs by {err:.3g}"


def _attentiondrag(kit, latent):
    """Inversion with Attention Capture, KV Consistency from the capture, KSamplerAdvanced from the edit step."""
    out, cap = harness.run_node("DragFusionInvertCapture", model=kit["model"], latent=latent, steps=4, edit_step=2,
                                scheduler="simple", cfg=1.0, capture_values=True, positive=kit["pos"]).result
    (kv,) = harness.run_node("DragFusionKVConsistency", model=kit["model"], capture=cap, enabled=True,
                             strength=1.0).result
    (res,) = harness.call_node("KSamplerAdvanced", model=kv, add_noise="disable", noise_seed=0, steps=4, cfg=1.0,
                               sampler_name="euler", scheduler="simple", positive=kit["pos"], negative=kit["pos"],
                               latent_image=out, start_at_step=2, end_at_step=10000,
                               return_with_leftover_noise="disable")
    return out["samples"], res["samples"]


def test_inversion_capture_and_kv_regeneration(kit):
    pair = _attentiondrag(kit, kit["pair"])
    singles = [_attentiondrag(kit, z) for z in kit["singles"]]
    _same(pair[0], [s[0] for s in singles], "Inversion with Attention Capture")
    _same(pair[1], [s[1] for s in singles], "KV Consistency + KSamplerAdvanced")


def _pni(kit, latent, eta=0.1):
    inv, z_T, sigmas = harness.run_node("DragFusionPNIInvert", model=kit["model"], latent=latent, source=kit["pos"],
                                        steps=STEPS, cfg=5.0, lam=0.02, prox="L1", eta=eta, guidance_until=STEPS,
                                        scheduler="ddim_uniform").result
    return inv, z_T, sigmas


def test_pni_invert_and_guider(kit):
    import comfy.samplers
    import comfy_extras.nodes_custom_sampler as ncs

    def run(latent):
        inv, z_T, sigmas = _pni(kit, latent)
        (guider,) = harness.run_node("DragFusionPNIGuider", model=kit["model"], inversion=inv, target=kit["pos"]).result
        out = harness.run_node("SamplerCustomAdvanced", noise=ncs.Noise_EmptyNoise(), guider=guider,
                               sampler=comfy.samplers.sampler_object("ddim"), sigmas=sigmas,
                               latent_image=z_T).result[0]["samples"]
        return z_T["samples"], out

    pair = run(kit["pair"])
    singles = [run(z) for z in kit["singles"]]
    _same(pair[0], [s[0] for s in singles], "PNI Invert")
    _same(pair[1], [s[1] for s in singles], "PNI Guider")


def _dual(kit, latent, task, reference=None, **kw):
    inv, _, _ = _pni(kit, latent)
    args = dict(model=kit["model"], inversion=inv, target=kit["pos"], task=task, sampler_name="euler", w_edit=4.0,
                w_share=6.0, energy_scale=0.25, guidance_fraction=0.6, kv_replace=True)
    if reference is not None:
        args["reference"] = _pni(kit, reference)[0]
    args.update(kw)
    return harness.run_node("DragFusionDualBranchGuidedSampler", **args).result[0]["samples"]


def _drag_points():
    from dragfusion.guidance.drag_points import DragPoints
    return DragPoints(SIZE, SIZE, (((20.0, 30.0), (40.0, 30.0)),))


@pytest.mark.parametrize("task", ["drag", "appearance"])
def test_dual_branch_guided_sampler(kit, task):
    if task == "drag":
        kw = dict(points=_drag_points())
    else:
        mask = torch.zeros(1, SIZE, SIZE)
        mask[:, 16:40, 16:40] = 1
        kw = dict(mask=mask, reference=kit["reference"], reference_mask=mask)
    pair = _dual(kit, kit["pair"], task, **kw)
    singles = [_dual(kit, z, task, **kw) for z in kit["singles"]]
    _same(pair, singles, f"Dual-Branch Guided Sampler ({task})")


def test_dual_branch_guider_through_sampler_custom_advanced(kit):
    import comfy.samplers
    import comfy_extras.nodes_custom_sampler as ncs

    def run(latent):
        inv, z_T, sigmas = _pni(kit, latent)
        (g,) = harness.run_node("DragFusionDualBranchGuider", model=kit["model"], inversion=inv, target=kit["pos"],
                                task="drag", points=_drag_points(), w_edit=4.0, w_share=6.0, energy_scale=0.25,
                                guidance_fraction=0.6, kv_replace=True).result
        return harness.run_node("SamplerCustomAdvanced", noise=ncs.Noise_EmptyNoise(), guider=g,
                                sampler=comfy.samplers.sampler_object("euler"), sigmas=sigmas,
                                latent_image=z_T).result[0]["samples"]

    _same(run(kit["pair"]), [run(z) for z in kit["singles"]], "Dual-Branch Guider")
