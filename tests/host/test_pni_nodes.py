"""PNI Invert and PNI Guider in the real ComfyUI host (in-process) on the tiny SD1.5 checkpoint.

References are independent of the nodes: the UNet called directly (BaseModel.apply_model) inside the
pure-torch loops of guidance/pni.py (ddim_invert, pni_sample = Algorithm 1 written out).
"""
import dataclasses
import os

import numpy as np
import pytest
import torch
from PIL import Image

import harness

STEPS = 3
SIZE = 64
IMAGE = "dragbench-dev/animals/JH_2023-09-14-1820-16/original_image.png"


@pytest.fixture(scope="module")
def kit(host, data_dir):
    import comfy.sd
    import folder_paths
    path = folder_paths.get_full_path("checkpoints", harness.TINY_CKPT)
    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(path, output_vae=True, output_clip=True)
    enc = lambda text: host.CLIPTextEncode().encode(clip, text)[0]
    img = Image.open(os.path.join(data_dir, IMAGE)).convert("RGB").resize((SIZE, SIZE), Image.LANCZOS)
    pixels = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)[None]
    with torch.inference_mode():
        latent = host.VAEEncode().encode(vae, pixels)[0]
    latent = {"samples": latent["samples"].clone()}
    return {"model": model, "latent": latent, "src": enc("a photo of a dog"), "tar": enc("a photo of a cat"),
            "empty": enc("")}


@pytest.fixture(scope="module")
def base(kit):
    """One inversion for the module; variants of its sampling settings via dataclasses.replace."""
    return invert(kit)


def invert(kit, **kw):
    args = dict(model=kit["model"], latent=kit["latent"], source=kit["src"], steps=STEPS, cfg=5.0, lam=0.02,
                prox="L1", eta=0.1, guidance_until=STEPS, scheduler="ddim_uniform")
    args.update(kw)
    return harness.run_node("DragFusionPNIInvert", **args).result


def sample(guider, z_T, sigmas, noise=None):
    import comfy.samplers
    import comfy_extras.nodes_custom_sampler as ncs
    out = harness.run_node("SamplerCustomAdvanced", noise=noise or ncs.Noise_EmptyNoise(), guider=guider,
                           sampler=comfy.samplers.sampler_object("ddim"), sigmas=sigmas, latent_image=z_T)
    return out.result[0]["samples"]


def pni_guider(kit, inversion, target):
    return harness.run_node("DragFusionPNIGuider", model=kit["model"], inversion=inversion, target=target).result[0]


def cfg_guider(kit, positive, negative, cfg):
    import comfy.samplers
    g = comfy.samplers.CFGGuider(kit["model"])
    g.set_conds(positive, negative)
    g.set_cfg(cfg)
    return g


def eps_fn(kit, cond):
    """eps(x, sigma) from the UNet called directly (model space)."""
    import comfy.model_management
    model = kit["model"]
    comfy.model_management.load_models_gpu([model])
    c = cond[0][0]

    def f(x, sigma):
        with torch.inference_mode():
            s = torch.full((x.shape[0],), float(sigma))
            d = model.model.apply_model(x, s, c_crossattn=c.expand(x.shape[0], -1, -1))
        return ((x - d) / float(sigma)).float()
    return f


def rms(a, b):
    return float((a.float() - b.float()).pow(2).mean().sqrt())


def test_invert_outputs_and_trajectory_match_reference(kit, base):
    import comfy.samplers
    from dragfusion.guidance import pni
    inv, z_T, sigmas = base
    model = kit["model"]
    expect = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "ddim_uniform", STEPS).float()
    assert torch.allclose(sigmas, expect) and torch.equal(inv.sigmas, sigmas)
    assert len(inv.trajectory) == STEPS + 1 and inv.steps == STEPS
    x0 = model.model.process_latent_in(kit["latent"]["samples"])
    assert torch.allclose(inv.trajectory[-1], x0, atol=1e-6)
    assert torch.allclose(z_T["samples"], model.model.process_latent_out(inv.trajectory[0]), atol=1e-5)
    eps = eps_fn(kit, kit["src"])
    sigma_min = float(model.get_model_object("model_sampling").sigma_min)
    ref = pni.ddim_invert(lambda x, s: pni.denoised_from_eps(x, eps(x, float(s)), float(s)), x0.float(),
                          sigmas.flip(0), sigma_min=sigma_min)[::-1]
    for got, want in zip(inv.trajectory, ref):
        assert torch.allclose(got.float(), want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    assert inv.source_cond is kit["src"] and (inv.cfg, inv.lam, inv.prox, inv.eta) == (5.0, 0.02, "L1", 0.1)


@pytest.mark.parametrize("mode,lam,eta,until,q", [("L0", 0.005, 0.5, 2, None), ("L1", 0.005, 0.6, 1, 0.7)])
def test_guider_equals_algorithm_1(kit, base, mode, lam, eta, until, q):
    from dragfusion.guidance import pni
    inv, z_T, sigmas = base
    inv = dataclasses.replace(inv, prox=mode, lam=lam, eta=eta, guidance_until=until, lam_quantile=q)
    out = sample(pni_guider(kit, inv, kit["tar"]), z_T, sigmas)
    model = kit["model"]
    ref = pni.pni_sample(eps_fn(kit, kit["src"]), eps_fn(kit, kit["tar"]), [t.float() for t in inv.trajectory],
                         sigmas, 5.0, lam, mode, eta, until, quantile=q)
    ref = model.model.process_latent_out(ref)
    assert rms(out, ref) < 1e-4 * max(1.0, float(ref.abs().max())), rms(out, ref)


def test_target_equal_source_reconstructs_far_better_than_plain_ddim_cfg5(kit, base):
    """Stated tolerance (tiny checkpoint, 64 px, 3 steps): PNI (cfg 5, lambda 0.02, eta 0.1) reconstruction RMS
    error <= 0.35 x that of plain DDIM inversion sampled at cfg 5 with an empty negative prompt; eta 1 is exact."""
    inv, z_T, sigmas = base
    x0 = kit["latent"]["samples"]
    pni_err = rms(sample(pni_guider(kit, inv, kit["src"]), z_T, sigmas), x0)
    ddim_err = rms(sample(cfg_guider(kit, kit["src"], kit["empty"], 5.0), z_T, sigmas), x0)
    print(f"\nreconstruction RMS error (output-space latent, std {float(x0.std()):.4f}): "
          f"PNI {pni_err:.5f}, plain DDIM cfg 5 {ddim_err:.5f}")
    assert pni_err <= 0.35 * ddim_err, (pni_err, ddim_err)
    inv1 = dataclasses.replace(inv, eta=1.0)
    assert rms(sample(pni_guider(kit, inv1, kit["src"]), z_T, sigmas), x0) < 1e-5


def test_guidance_on_the_last_step_only_lands_on_the_image(kit, base):
    """guidance_until = 1 guides the last, low-noise step (Algorithm 1: t < T_inv): with target = source (M = 1) and
    eta 1 that step lands on z*_0, the image itself; guiding only the first, noisiest step would not."""
    inv, z_T, sigmas = base
    x0 = kit["latent"]["samples"]
    last = dataclasses.replace(inv, eta=1.0, guidance_until=1)
    assert rms(sample(pni_guider(kit, last, kit["src"]), z_T, sigmas), x0) < 1e-5
    none = dataclasses.replace(inv, eta=1.0, guidance_until=0)
    assert rms(sample(pni_guider(kit, none, kit["src"]), z_T, sigmas), x0) > 1e-3


def test_invert_stores_the_lambda_mode(kit, base):
    assert base[0].lam_quantile is None  # default: the fixed lambda
    inv = invert(kit, lambda_mode="quantile", quantile=0.6)[0]
    assert inv.lam_quantile == 0.6 and inv.lam == 0.02
    assert invert(kit, lambda_mode="fixed", quantile=0.6)[0].lam_quantile is None


def test_lambda_limits(kit, base):
    """lambda -> inf: plain source reconstruction (cfg 1 with the source); lambda = 0: CFG with source as negative.
    Checked on the last two steps (a contiguous part of the schedule, started from the trajectory)."""
    inv, _, sigmas = base
    part = sigmas[-3:]
    z = {"samples": kit["model"].model.process_latent_out(inv.trajectory[-3])}
    inf = dataclasses.replace(inv, lam=100.0, eta=0.0)  # far above any |eps_tar - eps_src|
    got = sample(pni_guider(kit, inf, kit["tar"]), z, part)
    want = sample(cfg_guider(kit, kit["src"], kit["src"], 1.0), z, part)
    assert rms(got, want) < 1e-6
    zero = dataclasses.replace(inv, lam=0.0, eta=0.0)
    got = sample(pni_guider(kit, zero, kit["tar"]), z, part)
    want = sample(cfg_guider(kit, kit["tar"], kit["src"], 5.0), z, part)
    assert rms(got, want) < 1e-5 * max(1.0, float(want.abs().max()))


def test_model_not_modified_progress_and_cancel(kit):
    import comfy.model_management
    import comfy.utils
    model = kit["model"]
    opts, patches = repr(model.model_options), dict(model.patches)
    calls = []
    old = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: calls.append((value, total)))
    try:
        invert(kit, steps=2, guidance_until=2)
    finally:
        comfy.utils.set_progress_bar_global_hook(old)
    assert calls == [(1, 2), (2, 2)]
    assert repr(model.model_options) == opts and dict(model.patches) == patches
    comfy.model_management.interrupt_current_processing(True)
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            invert(kit, steps=2, guidance_until=2)
    finally:
        comfy.model_management.interrupt_current_processing(False)


def test_bad_inputs_are_value_errors_naming_node_and_input(kit, base):
    import comfy.samplers
    import comfy_extras.nodes_custom_sampler as ncs
    cases = [
        (dict(eta=1.5), "PNI Invert: input 'eta'"),
        (dict(guidance_until=-1), "PNI Invert: input 'guidance_until'"),
        (dict(lam=-0.1), "PNI Invert: input 'lam'"),
        (dict(prox="L2"), "PNI Invert: input 'prox'"),
        (dict(lambda_mode="adaptive"), "PNI Invert: input 'lambda_mode'"),
        (dict(lambda_mode="quantile", quantile=1.5), "PNI Invert: input 'quantile'"),
        (dict(scheduler="nope"), "PNI Invert: input 'scheduler'"),
        (dict(latent={"samples": torch.zeros(1, 4, 8, 8)}), "PNI Invert: input 'latent'"),
        (dict(source=[]), "PNI Invert: input 'source'"),
    ]
    for kw, text in cases:
        with pytest.raises(ValueError) as e:
            invert(kit, **kw)
        assert text in str(e.value)
    from comfy_extras.nodes_model_advanced import ModelSamplingDiscrete
    vpred = ModelSamplingDiscrete().patch(kit["model"], "x0", False)[0]    # v-prediction is supported since [sdxl]
    with pytest.raises(ValueError, match="PNI Invert: input 'model': this model is not supported"):
        invert(kit, model=vpred)
    with pytest.raises(ValueError, match="PNI Guider: input 'inversion'"):
        pni_guider(kit, "not an inversion", kit["tar"])
    inv, z_T, sigmas = base
    with pytest.raises(ValueError, match="PNI Guider: input 'target'"):
        pni_guider(kit, inv, [])
    g = pni_guider(kit, inv, kit["tar"])
    other = comfy.samplers.calculate_sigmas(kit["model"].get_model_object("model_sampling"), "normal", STEPS + 1).float()
    with pytest.raises(ValueError, match="PNI Guider: input 'inversion'.*sigmas"):
        sample(g, z_T, other)
    with pytest.raises(ValueError, match="DisableNoise"):
        sample(g, z_T, sigmas, noise=ncs.Noise_RandomNoise(1))
    with pytest.raises(ValueError, match="does not match"):
        sample(g, {"samples": torch.ones(1, 4, 16, 16)}, sigmas)


def test_inversion_guidance_refuses_samplers_without_an_euler_step(kit, base):
    """Inversion guidance (eta > 0) is applied through the denoised prediction for an Euler / DDIM step: a
    multistep sampler is a clear error; without inversion guidance (eta = 0) any sampler runs."""
    import comfy.samplers
    import comfy_extras.nodes_custom_sampler as ncs
    inv, z_T, sigmas = base

    def run(inversion, name):
        return harness.run_node("SamplerCustomAdvanced", noise=ncs.Noise_EmptyNoise(),
                                guider=pni_guider(kit, inversion, kit["src"]),
                                sampler=comfy.samplers.sampler_object(name), sigmas=sigmas, latent_image=z_T)

    assert inv.eta > 0
    with pytest.raises(ValueError, match="PNI Guider: input 'sampler': the sampler 'dpmpp_2m' is not supported "
                                         "\\(PNI's inversion guidance.*use one of euler, ddim"):
        run(inv, "dpmpp_2m")
    out = run(dataclasses.replace(inv, eta=0.0), "dpmpp_2m").result[0]["samples"]
    assert torch.isfinite(out).all()
