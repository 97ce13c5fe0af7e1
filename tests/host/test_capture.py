"""Self-attention capture and the inversion node in the real ComfyUI (tiny SD1.5 checkpoint, CPU)."""
import copy
import os
import sys

import pytest
import torch

import harness

NODE_ID = "DragFusionInvertCapture"


@pytest.fixture(scope="module")
def tiny(host):
    model, clip, _vae = host.CheckpointLoaderSimple().load_checkpoint(harness.TINY_CKPT)[:3]
    pos = host.CLIPTextEncode().encode(clip, "a photo of a cat")[0]
    neg = host.CLIPTextEncode().encode(clip, "")[0]
    return model, pos, neg


def _pack_modules():
    """The pack's capture and inversion modules as the host loaded them."""
    return harness.pack_module("attention_patch.capture"), harness.pack_module("nodes.inversion")


def run(model, latent, **kw):
    out = harness.run_node(NODE_ID, model=model, latent=latent, **kw)
    return out.result


def latent(seed, b=1, hw=(8, 8)):
    return {"samples": torch.randn(b, 4, *hw, generator=torch.Generator().manual_seed(seed))}


def model_state(model):
    return (copy.deepcopy(model.model_options), {k: {kk: list(vv) for kk, vv in v.items()} for k, v in model.wrappers.items()},
            dict(model.object_patches), {k: list(v) for k, v in model.patches.items()})


def eps_invariant(x):
    """Varies with x, constant along every DDIM path (channel 1 never moves): exactly invertible."""
    eps = torch.zeros_like(x)
    eps[:, 0] = torch.tanh(2 * x[:, 1]) + 0.5
    return eps


def analytic(model):
    """A clone whose denoiser is x - sigma * eps_invariant(x); the real UNet still runs (and is captured)."""
    m = model.clone()

    def wrapper(apply_model, args):
        x, sigma = args["input"], args["timestep"]
        apply_model(x, sigma, **args["c"])
        return x - sigma.view(-1, 1, 1, 1) * eps_invariant(x)

    m.set_model_unet_function_wrapper(wrapper)
    return m


# ------------------------------------------------------------------------------- the patch
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_patched_unet_output_equals_unpatched_and_records_the_cond_half(tiny, host, precision):
    """fp16: the recorded q is the layer's own q to fp16. int8: the stored input is the layer input
    rounded per channel, so q differs from the layer's by at most sum_c |Wq[c, j]| * scale_c / 2 (the
    rounding bound), and by under 1 % of q's spread (rms)."""
    capture_mod, _ = _pack_modules()
    model, pos, neg = tiny
    unet = model.model.diffusion_model
    layers = [k for k, lv in capture_mod.self_attention_layers(unet) if lv == 0]
    assert layers == ["input.1.0", "output.0.0", "output.1.0"]
    m = model.clone()
    cap = capture_mod.SelfAttentionCapture(layers, with_v=True, precision=precision)
    cap.install(m)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 4, 8, 6, generator=g)
    t = torch.tensor([500.0, 500.0, 120.0, 120.0])
    ctx = torch.cat([neg[0][0], neg[0][0], pos[0][0], pos[0][0]])
    seen = {}
    attn1 = unet.input_blocks[1][1].transformer_blocks[0].attn1

    def keep_q(mod, inp, out):  # the layer's own q; the capture's 2-D weight probe is not a layer call
        if out.dim() == 3:
            seen.setdefault("q", out.detach().clone())

    hook = attn1.to_q.register_forward_hook(keep_q)
    try:
        ref = model.model.diffusion_model(x, t, context=ctx, transformer_options={"cond_or_uncond": [1, 0]})
        seen.clear()
        cap.set_step(2, 1.5)
        opts = dict(m.model_options["transformer_options"], cond_or_uncond=[1, 0])
        got = m.model.diffusion_model(x, t, context=ctx, transformer_options=opts)
    finally:
        hook.remove()
    assert got.dtype == ref.dtype == torch.float32
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert cap.calls == 3
    q = cap.q[(2, "input.1.0")]
    assert q.shape == (2, 8, 48, 40) and q.dtype == torch.float16
    import comfy.model_management
    assert q.device == comfy.model_management.intermediate_device()
    expect = seen["q"][2:].reshape(2, 48, 8, 40).permute(0, 2, 1, 3)  # the cond half (second chunk)
    if precision == "fp16":
        torch.testing.assert_close(q.float(), expect, atol=2e-3, rtol=2e-3)
    else:
        stored = cap.q.inputs[(2, "input.1.0")]
        assert stored.data.dtype == torch.int8 and stored.scale.shape == (2, 1, 320)
        assert stored.nbytes == stored.data.numel() + 4 * stored.scale.numel()     # 1 byte per element + fp32 scales
        w = cap.q.projections["input.1.0"].weight_t                               # [C, heads * dim]
        bound = (stored.scale / 2) @ w.abs()                                      # [2, 1, heads * dim]
        bound = bound.reshape(2, 1, 8, 40).permute(0, 2, 1, 3) + 1e-5
        err = (cap.q.project((2, "input.1.0")) - expect).abs()
        assert bool((err <= bound).all()), float((err - bound).max())
        rel = float(err.pow(2).mean().sqrt() / expect.std())
        assert 0 < rel < 0.01, rel  # rounded (not a copy), and by under 1 % of q's spread
    assert set(cap.v) == set(cap.k) == set(cap.q) and cap.layer_hw["output.1.0"] == (8, 6)


def test_patched_sampling_equals_unpatched_with_cfg(tiny, host):
    capture_mod, _ = _pack_modules()
    model, pos, neg = tiny
    m = model.clone()
    cap = capture_mod.SelfAttentionCapture(["input.1.0", "output.1.0"])
    cap.install(m)
    lat = latent(5, b=2)
    a = host.common_ksampler(model, 7, 2, 3.0, "euler", "normal", pos, neg, lat)[0]["samples"]
    b = host.common_ksampler(m, 7, 2, 3.0, "euler", "normal", pos, neg, lat)[0]["samples"]
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    assert cap.calls == 2 * 2  # two steps, two layers, cond and uncond in one batch
    assert not cap.q  # no step set: nothing recorded


def test_state_is_reset_at_the_start_of_every_sampling_call(tiny, host):
    capture_mod, _ = _pack_modules()
    model, pos, neg = tiny
    m = model.clone()
    cap = capture_mod.SelfAttentionCapture(["output.0.0"])
    cap.install(m)
    cap.set_step(7, 1.0)
    cap.inputs["q"][("junk", "x")] = torch.zeros(1)
    host.common_ksampler(m, 1, 1, 1.0, "euler", "normal", pos, neg, latent(1))
    assert cap.step is None and not cap.q and not cap.k and not cap.step_sigmas
    patches = copy.deepcopy(m.model_options)["transformer_options"]["patches"]["attn1_patch"]
    assert len(patches) == 1 and patches[0] is cap
    cap.install(m)  # installing again replaces, never stacks
    assert m.model_options["transformer_options"]["patches"]["attn1_patch"] == [cap]


# -------------------------------------------------------------------------------- the node
def test_node_captures_the_contract_and_leaves_the_model_alone(tiny):
    model, pos, _ = tiny
    before = model_state(model)
    lat = latent(11, b=2, hw=(8, 6))
    out, cap = run(model, lat, steps=10, edit_step=6, positive=pos, capture_values=True)
    assert model_state(model) == before
    assert cap.latent_hw == (8, 6) and cap.edit_step == 6 and len(cap.sigmas) == 11
    assert cap.steps == (0, 1, 2, 3) and cap.layers == ("input.1.0", "output.0.0", "output.1.0")
    assert len(cap.trajectory) == 5
    for (s, l), q in cap.q.items():
        assert q.shape == (2, 8, 48, 40) and q.dtype == torch.float16 and q.device.type == "cpu"
        assert cap.k[(s, l)].shape == q.shape
    # keys/values of the KV layers (by default the capture layers) at every step a regeneration reads: 1..4
    assert cap.kv_layers == cap.layers and cap.kv_steps == (1, 2, 3, 4)
    assert set(cap.v) == {(s, l) for s in (1, 2, 3, 4) for l in cap.kv_layers}
    for key in cap.v:
        assert cap.k[key].shape == cap.v[key].shape == (2, 8, 48, 40)
    assert cap.kv_sigmas() == {j: pytest.approx(float(cap.sigmas[10 - j])) for j in (1, 2, 3, 4)}
    assert cap.layer_hw == {l: (8, 6) for l in cap.layers}
    n = 10
    for j in cap.steps:
        assert cap.step_sigmas[j] == pytest.approx(max(float(cap.sigmas[n - j]), float(model.get_model_object("model_sampling").sigma_min)))
    torch.testing.assert_close(cap.trajectory[0], lat["samples"] * 0.18215)
    torch.testing.assert_close(cap.trajectory[-1], out["samples"] * 0.18215, atol=1e-6, rtol=1e-6)
    rows = cap.rows(torch.tensor([0, 5, 47]))
    assert rows.shape == (2, 3, 48)
    torch.testing.assert_close(rows.sum(-1), torch.ones(2, 3), atol=1e-4, rtol=0)
    # a second run holds only its own data
    out2, cap2 = run(model, latent(12, hw=(8, 6)), steps=6, edit_step=4, capture_steps="1", layers="custom",
                     custom_layers="output.1.0")
    assert cap2.steps == (1,) and cap2.layers == ("output.1.0",) and set(cap2.q) == {(1, "output.1.0")}
    assert not cap2.v and len(cap2.trajectory) == 3
    assert model_state(model) == before


def test_capture_holds_the_layer_input_once_and_the_weights_a_lora_patch_gives(tiny):
    """q and k come from one stored input (half the bytes of q + k) and the effective weights of
    the patched clone (a LoRA-style diff on to_q), not the checkpoint's raw weights."""
    model, pos, _ = tiny
    key = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"
    raw = model.model.state_dict()[key].detach().clone()
    delta = torch.randn(raw.shape, generator=torch.Generator().manual_seed(8)) * 0.05
    lora = model.clone()
    lora.add_patches({key: (delta,)}, 1.0)
    before = model_state(model)
    _, cap = run(lora, latent(13, hw=(8, 6)), steps=6, edit_step=3, positive=pos)
    assert model_state(model) == before and not model.patches  # (the shared weights are ComfyUI's to patch and restore)
    p = cap.q.projections["input.1.0"]
    torch.testing.assert_close(p.weight_t, (raw + delta).t().float(), atol=1e-6, rtol=1e-6)
    plain = cap.q.projections["output.1.0"].weight_t
    torch.testing.assert_close(plain, model.model.state_dict()[key.replace("input_blocks.1.1", "output_blocks.1.1")].t().float())
    per_layer = 48 * 320 + 320 * 4  # tokens x channels x int8 + a float32 scale per channel (the default)
    assert cap.nbytes_per_step() == 3 * per_layer  # q and k share the stored input
    assert cap.q.inputs[(0, "input.1.0")] is cap.k.inputs[(0, "input.1.0")]


@pytest.mark.parametrize("kind,scheduler,sampler", [("eps", "normal", "euler"), ("eps", "ddim_uniform", "ddim"),
                                                     ("lcm", "simple", "euler")])
def test_invert_then_ksampler_advanced_returns_the_start_latent(tiny, host, kind, scheduler, sampler):
    model, pos, neg = tiny
    if kind == "lcm":
        import comfy_extras.nodes_model_advanced as adv
        model = adv.ModelSamplingDiscrete().patch(model, "lcm", False)[0]
    m = analytic(model)
    lat = latent(21, hw=(8, 8))
    steps, edit = 5, 2
    out, cap = run(m, lat, steps=steps, edit_step=edit, scheduler=scheduler, positive=pos)
    ms = model.get_model_object("model_sampling")
    import comfy.samplers
    torch.testing.assert_close(cap.sigmas, comfy.samplers.calculate_sigmas(ms, scheduler, steps).float())
    assert not torch.allclose(out["samples"], lat["samples"], atol=0.1)
    back = host.KSamplerAdvanced().sample(m, "disable", 0, steps, 1.0, sampler, scheduler, pos, neg, out,
                                          edit, 10000, "disable")[0]["samples"]
    torch.testing.assert_close(back, lat["samples"], atol=1e-4, rtol=1e-4)


def test_comfy_schedules_match_the_reference_schedules(tiny):
    from dragfusion.guidance.ddim_inversion import schedule_sigmas
    import comfy.samplers
    import comfy_extras.nodes_model_advanced as adv
    model = tiny[0]
    ms = model.get_model_object("model_sampling")
    torch.testing.assert_close(comfy.samplers.calculate_sigmas(ms, "ddim_uniform", 10).float(), schedule_sigmas(10), atol=1e-4, rtol=1e-4)
    lcm = adv.ModelSamplingDiscrete().patch(model, "lcm", False)[0].get_model_object("model_sampling")
    torch.testing.assert_close(comfy.samplers.calculate_sigmas(lcm, "simple", 10).float(), schedule_sigmas(10, lcm=True), atol=1e-4, rtol=1e-4)


def test_bad_inputs_raise_value_errors_naming_node_and_input(tiny):
    from dragfusion.guidance.drag_points import DragPoints
    import comfy_extras.nodes_model_advanced as adv
    model = tiny[0]
    lat = latent(1)
    cases = [
        (dict(steps=5, edit_step=5), "input 'edit_step'.*0..4"),
        (dict(points=DragPoints(64, 64, (((10.0, 10.0), (70.0, 10.0)),))), "input 'points'.*outside the 64x64 image"),
        (dict(points=DragPoints(60, 60, (((10.0, 10.0), (20.0, 10.0)),))), "input 'points'.*not a multiple of 8"),
        (dict(points=DragPoints(128, 128, (((10.0, 10.0), (20.0, 10.0)),))), "input 'points'.*128x128 image but the latent is 8x8"),
        (dict(layers="custom", custom_layers="output.9.0"), "input 'custom_layers'.*input.1.0"),
        (dict(capture_steps="0, 7"), "input 'capture_steps'.*0..4"),
        (dict(scheduler="nope"), "input 'scheduler'"),
    ]
    for kw, msg in cases:
        with pytest.raises(ValueError, match="Inversion with Attention Capture: " + msg):
            run(model, lat, **{"steps": 10, "edit_step": 5, **kw})
    vpred = adv.ModelSamplingDiscrete().patch(model, "x0", False)[0]    # v-prediction is supported since [sdxl]
    with pytest.raises(ValueError, match="input 'model': this model is not supported .*x0 prediction.*supported are SD1.5, SD2.x"):
        run(vpred, lat)
    with pytest.raises(ValueError, match="input 'latent'"):
        run(model, {"samples": torch.zeros(1, 16, 8, 8)})


def test_schema_has_tooltips_and_category(host):
    cls = host.NODE_CLASS_MAPPINGS[NODE_ID]
    info = cls.INPUT_TYPES()
    for section in ("required", "optional"):
        for name, spec in info.get(section, {}).items():
            assert spec[1].get("tooltip"), name
    assert cls.CATEGORY == "DragFusion/AttentionDrag"


@pytest.mark.parametrize("precision,per_layer", [("int8 per channel", 48 * 320 + 4 * 320), ("fp16", 48 * 320 * 2)])
def test_layout_byte_count_is_what_a_real_capture_holds(tiny, precision, per_layer):
    """bench/capture_layout.py's count (each layer's fp16 input once per step, q/k and KV layers united) equals
    nbytes_per_step of a real capture with values, so its SD1.5 table is the capture's own bytes."""
    sys.path.insert(0, os.path.join(harness.REPO, "bench"))
    import capture_layout
    model, pos, _ = tiny
    out, cap = run(model, latent(21, hw=(8, 6)), steps=6, edit_step=2, positive=pos, capture_values=True,
                   layers="custom", custom_layers="input.1.0, output.0.0", kv_layers="decoder, two finest levels",
                   capture_precision=precision)
    table, _ = capture_layout.layer_table(model.model.diffusion_model, (8, 6))
    kind = "int8" if precision.startswith("int8") else "fp16"
    assert cap.kv_layers == ("output.0.0", "output.1.0")
    assert cap.nbytes_per_step() == capture_layout.step_bytes(table, cap.layers + cap.kv_layers, kind) == 3 * per_layer
    assert cap.nbytes_per_step(0) == capture_layout.step_bytes(table, cap.layers, kind)            # step 0: no K/V read
    assert cap.nbytes_per_step(4) == capture_layout.step_bytes(table, cap.kv_layers, kind)         # the edit step: K/V only
