"""SD2.x and SDXL ([sdxl]): the pack's nodes on the tiny test checkpoints scripts/setup builds for each family
(harness.load_tiny_checkpoint: reduced UNets that the real host detects as SD15 / SD20 / SDXL, full-size text
encoders, TAESD VAEs), in-process in the real host.

What is checked against something other than the pack itself:
* the family comes from the classes ComfyUI's own detection chose (supported model and model_base class);
* the capture's layers and token grids against the UNet's block structure (SDXL: no attention on the latent
  grid, so every preset reads latent / 2 or coarser), and the recorded q / k against the layer's own to_q / to_k
  outputs in a real SDXL forward pass that carries the added conditioning (pooled output and size embedding);
* v-prediction: the Inversion node on the host's v-prediction model against a reference written here from the
  raw UNet output v and the textbook relation eps = sqrt(abar) v + sqrt(1 - abar) x_t (Salimans & Ho 2022, as
  diffusers' DDIM scheduler converts), stepped by DDIM inversion in sigma space (guidance.ddim_inversion, itself
  checked against diffusers' DDIMInverseScheduler in tests/unit/test_ddim_inversion.py).
"""
import math
import os
import sys

import pytest
import torch

import harness

sys.path.insert(0, os.path.join(harness.REPO, "bench"))
from edit_pipeline import node_defaults  # noqa: E402

FAMILY = {"sd15": "SD1.5", "sd2": "SD2.x", "sdxl": "SDXL"}
SIZE = 128                       # pixels; latent 16 x 16, SDXL's finest attention grid 8 x 8


@pytest.fixture(scope="module", params=["sd2", "sdxl"])
def arch(request, host):
    return request.param


def encode(arch, text):
    model, clip, vae = harness.load_tiny_checkpoint(arch)
    node = "CLIPTextEncodeSDXL" if arch == "sdxl" else "CLIPTextEncode"
    if arch == "sdxl":
        return harness.call_node(node, clip=clip, width=SIZE, height=SIZE, crop_w=0, crop_h=0, target_width=SIZE,
                                 target_height=SIZE, text_g=text, text_l=text)[0]
    return harness.call_node(node, clip=clip, text=text)[0]


def image_latent(arch, seed=0):
    _, _, vae = harness.load_tiny_checkpoint(arch)
    g = torch.Generator().manual_seed(seed)
    img = torch.rand(1, SIZE, SIZE, 3, generator=g)
    return harness.call_node("VAEEncode", pixels=img, vae=vae)[0]


def model_state(model):
    return (repr(model.model_options), {k: dict(v) for k, v in model.wrappers.items()}, dict(model.object_patches),
            {k: list(v) for k, v in model.patches.items()})


@pytest.mark.parametrize("name", ["sd15", "sd2", "sdxl"])
def test_family_is_read_from_the_hosts_detection(host, name):
    import comfy.model_base
    model = harness.load_tiny_checkpoint(name)[0]
    host_mod = harness.pack_module("attention_patch.comfy_host")
    assert host_mod.model_family(model) == FAMILY[name]
    assert isinstance(model.model, comfy.model_base.SDXL) == (name == "sdxl")
    arch_mod = harness.pack_module("nodes.architecture")
    assert arch_mod.check_model(model, "N") == FAMILY[name]
    assert arch_mod.check_model(harness.load_tiny_checkpoint(name, v_prediction=True)[0], "N") == FAMILY[name]
    (x0,) = harness.call_node("ModelSamplingDiscrete", model=model, sampling="x0", zsnr=False)
    with pytest.raises(ValueError, match=r"^N: input 'model': this model is not supported .*SDXL"):
        arch_mod.check_model(x0, "N")


def test_presets_read_the_grids_the_architecture_has(arch):
    model, _, _ = harness.load_tiny_checkpoint(arch)
    capture = harness.pack_module("attention_patch.capture")
    available = capture.self_attention_layers(model.model.diffusion_model)
    levels = {lv for _, lv in available}
    lat = image_latent(arch)
    pos = encode(arch, "a photo")
    run = lambda **kw: harness.run_node("DragFusionInvertCapture", model=model, latent=lat, steps=4, edit_step=2,
                                        positive=pos, **kw).result[1]
    auto = run()
    finest = run(layers="latent resolution")
    if arch == "sdxl":
        assert levels == {1, 2}                      # SDXL: no self-attention on the latent grid
        assert auto.layers and all(k.startswith("output.") for k in auto.layers)
        assert set(auto.layers) == {k for k, lv in available if lv == 1 and k.startswith("output.")}
        assert set(finest.layers) == {k for k, lv in available if lv == 1}
        assert any(k.startswith("input.") for k in finest.layers)
        grid = (SIZE // 16, SIZE // 16)
    else:
        assert 0 in levels
        assert auto.layers == finest.layers == tuple(k for k, lv in available if lv == 0)
        grid = (SIZE // 8, SIZE // 8)
    assert set(auto.layer_hw.values()) == {grid}
    for (_, layer), q in auto.q.items():
        assert q.shape[-2] == grid[0] * grid[1], (layer, q.shape)
    import capture_layout   # the bench's byte count (bench/capture_layout.py) holds for this layout too
    table, _ = capture_layout.layer_table(model.model.diffusion_model, (SIZE // 8, SIZE // 8))
    assert auto.nbytes_per_step(0) == capture_layout.step_bytes(table, auto.layers)
    kv = run(capture_values=True, kv_layers="decoder, two finest levels")
    lo = min(levels)
    assert set(kv.kv_layers) == {k for k, lv in available if lv <= lo + 1 and k.startswith("output.")}


def test_sdxl_capture_records_the_layers_own_q_and_k_with_the_added_conditioning(host):
    """A real SDXL forward pass (its y: pooled text + size embedding, from the host's extra_conds): the
    recorded q and k of a latent/2 layer equal what that layer's to_q / to_k compute."""
    model, _, _ = harness.load_tiny_checkpoint("sdxl")
    capture = harness.pack_module("attention_patch.capture")
    pos = encode("sdxl", "a red car")
    assert pos[0][1]["pooled_output"].shape == (1, 1280)
    unet = model.model.diffusion_model
    key = [k for k, lv in capture.self_attention_layers(unet) if lv == 1][0]
    attn1 = capture.attn1_module(unet, key)
    m = model.clone()
    cap = capture.SelfAttentionCapture([key], precision="fp16")
    cap.install(m)
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([400.0])
    y = model.model.encode_adm(**pos[0][1], device="cpu")
    assert y.shape == (1, 2816)
    seen = {}
    hooks = [attn1.to_q.register_forward_hook(lambda mod, i, o: seen.setdefault("q", o.detach().clone()) if o.dim() == 3 else None),
             attn1.to_k.register_forward_hook(lambda mod, i, o: seen.setdefault("k", o.detach().clone()) if o.dim() == 3 else None)]
    try:
        cap.set_step(0, 1.0)
        opts = dict(m.model_options["transformer_options"], cond_or_uncond=[0])
        with torch.inference_mode():
            m.model.diffusion_model(x, t, context=pos[0][0], y=y, transformer_options=opts)
    finally:
        for h in hooks:
            h.remove()
    heads = attn1.heads
    q, k = cap.q[(0, key)], cap.k[(0, key)]
    assert q.shape == (1, heads, 64, seen["q"].shape[-1] // heads)      # 8 x 8 tokens: latent / 2
    for got, want in ((q, seen["q"]), (k, seen["k"])):
        want = want.reshape(1, 64, heads, -1).permute(0, 2, 1, 3)
        torch.testing.assert_close(got.float(), want, atol=3e-3, rtol=3e-3)


def test_sdxl_zero_conditioning_carries_a_pooled_output_and_the_image_size(host):
    model, _, _ = harness.load_tiny_checkpoint("sdxl")
    inv = harness.pack_module("nodes.inversion")
    (c,) = inv.zero_conditioning(model, latent_hw=(16, 24))
    assert c[0].shape == (1, 77, 2048) and not c[0].any()
    assert c[1]["pooled_output"].shape == (1, 1280) and not c[1]["pooled_output"].any()
    assert (c[1]["width"], c[1]["height"]) == (192, 128)
    assert model.model.encode_adm(**c[1], device="cpu").shape == (1, 2816)
    # the inversion runs without a prompt (the zero conditioning feeds SDXL's y)
    out, cap = harness.run_node("DragFusionInvertCapture", model=model, latent=image_latent("sdxl"), steps=4,
                                edit_step=2).result
    assert torch.isfinite(out["samples"]).all() and cap.layers


def _abar(sigma: float) -> float:
    return 1.0 / (1.0 + sigma * sigma)


def test_v_prediction_inversion_equals_the_reference_on_the_raw_unet_output(host):
    """SD2.x-768 style: the host's v-prediction model. The reference calls the UNet itself (its raw output is v),
    converts with eps = sqrt(abar) v + sqrt(1 - abar) x_vp and steps DDIM inversion in sigma space."""
    model, _, _ = harness.load_tiny_checkpoint("sd2", v_prediction=True)
    ms = model.get_model_object("model_sampling")
    pos = encode("sd2", "a photo")
    lat = image_latent("sd2", seed=4)
    steps, edit_step = 6, 2
    out, cap = harness.run_node("DragFusionInvertCapture", model=model, latent=lat, steps=steps, edit_step=edit_step,
                                positive=pos).result
    ddim = harness.pack_module("guidance.ddim_inversion")
    unet = model.model.diffusion_model
    sigma_min = float(ms.sigma_min)

    def denoised(x, s):
        s_eval = max(float(s), sigma_min)
        x_vp = x * math.sqrt(_abar(s_eval))
        t = ms.timestep(torch.tensor([s_eval]))
        with torch.no_grad():
            v = unet(x_vp, t, context=pos[0][0]).float()
        eps = math.sqrt(_abar(s_eval)) * v + math.sqrt(1.0 - _abar(s_eval)) * x_vp
        return x - s_eval * eps

    x0 = model.model.process_latent_in(lat["samples"])
    up = ddim.inversion_sigmas(cap.sigmas, edit_step)
    ref = ddim.ddim_invert(denoised, x0, up, sigma_min)
    assert len(ref) == len(cap.trajectory) == steps - edit_step + 1
    for j, (a, b) in enumerate(zip(cap.trajectory, ref)):
        torch.testing.assert_close(a, b, atol=2e-4, rtol=2e-4, msg=f"step {j}")
    # and it is not the eps reading of the same network (the test can fail)
    eps_model, _, _ = harness.load_tiny_checkpoint("sd2")
    _, cap_eps = harness.run_node("DragFusionInvertCapture", model=eps_model, latent=lat, steps=steps,
                                  edit_step=edit_step, positive=pos).result
    assert float((cap_eps.trajectory[-1] - ref[-1]).abs().max()) > 1e-2


def _points(size=SIZE):
    from dragfusion.guidance.drag_points import DragPoints
    return DragPoints(size, size, (((size * 0.4, size * 0.4), (size * 0.6, size * 0.45)),))


def _user_mask(size=SIZE):
    m = torch.zeros(1, size, size)
    m[:, int(size * 0.3):int(size * 0.5), int(size * 0.3):int(size * 0.5)] = 1.0
    return m


def test_attentiondrag_nodes_run_and_leave_the_model_alone(arch):
    model, _, _ = harness.load_tiny_checkpoint(arch)
    before = model_state(model)
    (lcm,) = harness.call_node("ModelSamplingDiscrete", model=model, sampling="lcm", zsnr=False)
    pos = encode(arch, "a photo")
    (neg,) = harness.call_node("ConditioningZeroOut", conditioning=pos)
    points = _points()
    run = harness.run_node
    z, cap = run("DragFusionInvertCapture", model=lcm, latent=image_latent(arch), steps=6, edit_step=3,
                 capture_values=True, positive=pos, points=points).result
    mask, _auto = run("DragFusionAutoMask", capture=cap, points=points, mask=_user_mask(), mask_mode="union").result
    assert mask.shape == (1, SIZE, SIZE) and float(mask.sum()) > 0
    moved, blank = run("DragFusionSemanticMove", capture=cap, latent=z, points=points, mask=mask).result
    assert not torch.equal(moved["samples"], z["samples"])
    (filled,) = run("DragFusionAttentionInterpolate", capture=cap, latent=moved, mask=blank).result
    (kv_model,) = run("DragFusionKVConsistency", model=lcm, capture=cap).result
    (out,) = harness.call_node("KSamplerAdvanced", model=kv_model, add_noise="disable", noise_seed=0, steps=6, cfg=1.0,
                               sampler_name="euler", scheduler="simple", positive=pos, negative=neg, latent_image=filled,
                               start_at_step=3, end_at_step=10000, return_with_leftover_noise="disable")
    assert out["samples"].shape == z["samples"].shape and torch.isfinite(out["samples"]).all()
    assert model_state(model) == before


@pytest.mark.parametrize("name,v_prediction", [("sd2", False), ("sd2", True), ("sdxl", False)])
def test_pni_and_dual_branch_nodes_run(host, name, v_prediction):
    """v-prediction: SD2.x-768's (the SDXL path is the same code)."""
    arch = name
    model, _, _ = harness.load_tiny_checkpoint(arch, v_prediction=v_prediction)
    before = model_state(model)
    src, tar = encode(arch, "a photo of a car"), encode(arch, "a photo of a red car")
    lat = image_latent(arch, seed=1)
    run = harness.run_node
    nodes = harness.load_host()
    inv_kw = dict(node_defaults(nodes, "DragFusionPNIInvert"), steps=4, guidance_until=2)
    inv, z_t, sigmas = run("DragFusionPNIInvert", model=model, latent=lat, source=src, **inv_kw).result
    (guider,) = run("DragFusionPNIGuider", model=model, inversion=inv, target=tar).result
    (noise,) = harness.call_node("DisableNoise")
    (sampler,) = harness.call_node("KSamplerSelect", sampler_name="euler")
    out = harness.call_node("SamplerCustomAdvanced", noise=noise, guider=guider, sampler=sampler, sigmas=sigmas,
                            latent_image=z_t)[0]
    assert torch.isfinite(out["samples"]).all()
    tasks = [("drag", dict(points=_points(), mask=_user_mask())), ("move", dict(mask=_user_mask(), offset_x=16.0))]
    if arch == "sdxl":   # the reference branch and the padded canvas carry SDXL's added conditioning too
        ref = run("DragFusionPNIInvert", model=model, latent=image_latent(arch, seed=2), source=src, **inv_kw).result[0]
        tasks += [("appearance", dict(mask=_user_mask(), reference=ref, reference_mask=_user_mask())),
                  ("outpaint", dict(pad_left=16))]
    for task, extra in tasks:
        kw = dict(node_defaults(nodes, "DragFusionDualBranchGuidedSampler"), task=task, sampler_name="euler", **extra)
        (res,) = run("DragFusionDualBranchGuidedSampler", model=model, inversion=inv, target=src, **kw).result
        want = list(lat["samples"].shape)
        want[-1] += extra.get("pad_left", 0) // 8
        assert list(res["samples"].shape) == want and torch.isfinite(res["samples"]).all(), task
    assert model_state(model) == before
