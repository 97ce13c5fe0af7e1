"""Dual-Branch Guider / Guided Sampler in the real ComfyUI host (in-process) on the tiny SD1.5 checkpoint.

Everything runs under torch.inference_mode() (the checkpoint is loaded there too), as ComfyUI's
executor does, so the gradient pass is exercised on inference-mode weights.
"""
import dataclasses
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import harness

STEPS = 3
SIZE = 64
IMAGE = "dragbench-dev/animals/JH_2023-09-14-1820-16/original_image.png"
SAMPLER = "DragFusionDualBranchGuidedSampler"
GUIDER = "DragFusionDualBranchGuider"


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Every test of this module on one intra-op thread (tests/conftest.py)."""


@pytest.fixture(scope="module")
def kit(host, data_dir, one_thread):
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
        inversion, z_T, sigmas = harness.run_node(
            "DragFusionPNIInvert", model=model, latent=latent, source=src, steps=STEPS, cfg=5.0, lam=0.02,
            prox="L1", eta=0.1, guidance_until=STEPS, scheduler="ddim_uniform").result
    inv = {0.1: inversion, 0.0: dataclasses.replace(inversion, eta=0.0)}
    return {"model": model, "latent": latent, "src": src, "tar": tar, "inv": inv, "z_T": z_T, "sigmas": sigmas}


def params(model):
    return {k: v.detach().clone() for k, v in model.model.diffusion_model.state_dict().items()}


def run(kit, task="drag", eta=0.1, target=None, **kw):
    args = dict(model=kit["model"], inversion=kit["inv"][eta], target=target or kit["src"], task=task,
                sampler_name="euler", w_edit=4.0, w_share=6.0, energy_scale=0.25, guidance_fraction=0.6,
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


def test_drag_energy_acts_and_model_is_unchanged(kit):
    model = kit["model"]
    before = params(model)
    opts = json.dumps(model.model_options, default=str, sort_keys=True)
    wrappers = dict(model.weight_wrapper_patches)
    run_guider = host_module(harness.load_host()).run_guider
    dense = host_module(harness.load_host()).DualBranchSettings(sparse_guidance=False)
    g = guider_impl(kit, "drag", eta=0.1, settings=dense, points=drag_points(), point_radius=8.0)
    assert float(g.geometry.m_share.sum()) > 0 and float(g.geometry.m_gen.sum()) > 0
    with torch.inference_mode():
        out = run_guider(g, "euler")["samples"]
    assert out.shape == kit["z_T"]["samples"].shape and torch.isfinite(out).all()
    assert [entry[0] for entry in g.energy_log] == [0, 1]   # round(0.6 * 3) = 2 guided steps
    for _, e, info, removal in g.energy_log:
        e = float(e)                                         # L <= w_e/alpha + w_p/alpha + w_contrast + w_inpaint/alpha
        assert np.isfinite(e) and 0 < e <= 4.0 + 6.0 + 0.2 + 0.8
        assert removal and all(0 <= float(v) <= 1 + 1e-5 for r in removal for v in r)   # the handle disks are vacated
        assert len(info) == 2 and info[0][0] is not None     # two scales; the edit term is there
        assert all(0 <= float(s) <= 1 for scale in info for s in scale if s is not None)   # S in [0, 1]
    plain = run(kit, points=drag_points(), point_radius=8.0, energy_scale=0.0)
    assert (out - plain).abs().max() > 1e-4, "the energy gradient changed nothing"
    after = params(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert json.dumps(model.model_options, default=str, sort_keys=True) == opts
    assert dict(model.weight_wrapper_patches) == wrappers


def _move_guider(kit):
    mask = torch.zeros(1, SIZE, SIZE)
    mask[:, 16:40, 8:32] = 1
    return harness.run_node(GUIDER, model=kit["model"], inversion=kit["inv"][0.1], target=kit["src"], task="move",
                            w_edit=4.0, w_share=6.0, energy_scale=0.25, guidance_fraction=0.6, kv_replace=True,
                            mask=mask, offset_x=16.0, offset_y=0.0, scale=1.0).result[0]


def test_move_through_sampler_custom_advanced_with_ddim(kit):
    """ComfyUI's 'ddim' sampler is k-diffusion's Euler step: the same result as 'euler'."""
    import comfy.samplers
    import comfy_extras.nodes_custom_sampler as ncs
    outs = {}
    with torch.inference_mode():
        for name in ("ddim", "euler"):
            g = _move_guider(kit)
            outs[name] = harness.run_node("SamplerCustomAdvanced", noise=ncs.Noise_EmptyNoise(), guider=g,
                                          sampler=comfy.samplers.sampler_object(name), sigmas=kit["sigmas"],
                                          latent_image=kit["z_T"]).result[0]["samples"]
            assert [entry[0] for entry in g.energy_log] == [0]  # sparse schedule: steps 0 (dense third), 1 skipped
    assert outs["ddim"].shape == kit["z_T"]["samples"].shape and torch.isfinite(outs["ddim"]).all()
    assert torch.allclose(outs["ddim"], outs["euler"], atol=1e-5)
    with pytest.raises(ValueError, match="Dual-Branch Guider: input 'noise': .*DisableNoise"):
        with torch.inference_mode():
            harness.run_node("SamplerCustomAdvanced", noise=ncs.Noise_RandomNoise(1), guider=_move_guider(kit),
                             sampler=comfy.samplers.sampler_object("euler"), sigmas=kit["sigmas"], latent_image=kit["z_T"])


@pytest.mark.parametrize("name", ["dpmpp_2m", "deis", "uni_pc", "heun", "dpm_2", "euler_ancestral", "lcm"])
def test_samplers_without_a_plain_euler_step_are_refused(kit, name):
    """Multistep, two-stage and noise-adding samplers would not land on the energy's x0 update: a clear error that
    names what is supported, before any step runs (the guider's state is untouched)."""
    import comfy.samplers
    import comfy_extras.nodes_custom_sampler as ncs
    g = _move_guider(kit)
    step = name.replace("_", "_?")    # named by its step function: uni_pc runs sample_unipc
    with pytest.raises(ValueError, match=f"Dual-Branch Guider: input 'sampler': the sampler '{step}' is not supported"
                                         f".*use one of euler, ddim"):
        with torch.inference_mode():
            harness.run_node("SamplerCustomAdvanced", noise=ncs.Noise_EmptyNoise(), guider=g,
                             sampler=comfy.samplers.sampler_object(name), sigmas=kit["sigmas"], latent_image=kit["z_T"])
    assert g.energy_log == []
    with pytest.raises(ValueError, match=f"Dual-Branch Guided Sampler: input 'sampler_name': '{name}' is not supported"):
        with torch.inference_mode():
            run(kit, task="drag", points=drag_points(), sampler_name=name)


def test_outpaint_extends_the_canvas(kit):
    out = run(kit, task="outpaint", pad_right=16, pad_top=8, seed=3)
    b, c, h, w = kit["z_T"]["samples"].shape
    assert out.shape == (b, c, h + 1, w + 2) and torch.isfinite(out).all()


def test_zero_energy_without_kv_equals_pni_guider(kit):
    """Energy weights 0 and KV replacement off: the generation branch is exactly PNI sampling."""
    for eta in (0.0, 0.1):
        dual = run(kit, eta=eta, target=kit["tar"], points=drag_points(), w_edit=0.0, w_share=0.0, kv_replace=False)
        pni = sample_pni(kit, eta, kit["tar"])
        if eta == 0.0:
            assert torch.allclose(dual, pni, atol=1e-5), float((dual - pni).abs().max())
        else:  # the edit region is left out of the inversion guidance, elsewhere it is PNI
            from dragfusion.guidance.dual_branch_tasks import drag_geometry
            geo = drag_geometry(drag_points().in_cells(8), tuple(dual.shape[-2:]), 2.0)
            keep = (1 - geo.edit_region).bool().expand_as(dual)
            assert torch.allclose(dual[keep], pni[keep], atol=1e-5), float((dual - pni)[keep].abs().max())


def test_kv_on_identical_branches_reproduce_the_reconstruction(kit):
    """KV replacement on, target = source, zero energy: the generation branch follows the guidance branch."""
    s = host_module(harness.load_host()).DualBranchSettings(w_edit=0.0, w_share=0.0, kv=True, kv_layers="all")
    g = guider_impl(kit, "drag", eta=0.0, target=kit["src"], settings=s, points=drag_points())
    with torch.inference_mode():
        out = host_module(harness.load_host()).run_guider(g, "euler")["samples"]
        rec = g.model_patcher.model.process_latent_out(g.state["gud"][STEPS].float())
    assert torch.allclose(out, rec, atol=1e-5), float((out - rec).abs().max())
    pni = sample_pni(kit, 0.0, kit["src"])     # ... which is PNI's own reconstruction
    assert torch.allclose(out, pni, atol=1e-5), float((out - pni).abs().max())


@pytest.mark.parametrize("task, extra, match", [
    ("drag", {}, "input 'points': task 'drag' needs DRAG_POINTS"),
    ("paste", {}, "input 'reference': task 'paste' needs a reference"),
    ("style", {}, "input 'reference': task 'style' needs a reference"),
    ("outpaint", {}, "input 'pad_left': task 'outpaint' needs padding"),
    ("outpaint", {"pad_left": 12}, "input 'pad_left': 12 px must be a non-negative multiple of 8"),
    ("move", {}, "input 'mask': task 'move' needs a MASK"),
    ("landmarks", {}, "input 'landmarks_json': task 'landmarks' needs two 68-point"),
])
def test_invalid_combinations_are_clear_errors(kit, task, extra, match):
    with pytest.raises(ValueError, match="Dual-Branch Guided Sampler: " + match):
        run(kit, task=task, **extra)


def test_points_for_another_image_size_are_refused(kit):
    from dragfusion.guidance.drag_points import DragPoints
    pts = DragPoints(128, 128, (((20.0, 30.0), (40.0, 30.0)),))
    with pytest.raises(ValueError, match="input 'points': the points were placed on a 128x128 image"):
        run(kit, points=pts)


def test_reference_tasks_run(kit):
    """paste (local correspondence into the reference branch) and style (global) with a reference INVERSION."""
    ref_mask = torch.zeros(1, SIZE, SIZE)
    ref_mask[:, 8:32, 8:32] = 1
    mod = host_module(harness.load_host())
    g = guider_impl(kit, "paste", eta=0.1, reference=kit["inv"][0.1], reference_mask=ref_mask, offset_x=16.0,
                    offset_y=8.0)
    assert g.geometry.edit_source == "ref" and g.reference is not None
    with torch.inference_mode():
        out = mod.run_guider(g, "euler")["samples"]
    assert out.shape == kit["z_T"]["samples"].shape and torch.isfinite(out).all()
    assert len(g.energy_log) == 1 and sorted(g.state["ref"]) == list(range(STEPS + 1))
    style = run(kit, task="style", reference=kit["inv"][0.1], w_edit=2.0, w_share=2.0)
    assert torch.isfinite(style).all()


def test_face_landmarks_from_json(kit):
    src = [(16 + (i % 17) * 2.0, 16 + (i // 17) * 6.0) for i in range(68)]
    tgt = [(x + 4.0, y + 2.0) for x, y in src]
    text = json.dumps({"width": SIZE, "height": SIZE, "source": src, "target": tgt})
    out = run(kit, task="landmarks", landmarks_json=text, point_radius=8.0)
    assert out.shape == kit["z_T"]["samples"].shape and torch.isfinite(out).all()


def test_image_prompt_tokens_reach_the_generation_branch(kit):
    """With an IMAGE_PROMPT (source + reference tokens concatenated, Eq. 11) the paste edit runs and differs from
    the same edit without it (gamma > 0 changes the cond rows)."""
    ImagePrompt = harness.pack_module("guidance.image_prompt_tokens").ImagePrompt
    layers = harness.pack_module("attention_patch.image_prompt").cross_attention_layers(kit["model"])
    g = torch.Generator().manual_seed(0)
    kv = tuple((torch.randn(inner, ctx, generator=g) * 0.5, torch.randn(inner, ctx, generator=g) * 0.5)
               for _, inner, ctx in layers)
    make = lambda seed: ImagePrompt(cond=torch.randn(1, 4, layers[0][2], generator=torch.Generator().manual_seed(seed)),
                                    uncond=torch.zeros(1, 4, layers[0][2]), gamma=1.0, kv_weights=kv)
    ref_mask = torch.zeros(1, SIZE, SIZE)
    ref_mask[:, 8:32, 8:32] = 1
    common = dict(task="paste", reference=kit["inv"][0.1], reference_mask=ref_mask, offset_x=16.0)
    with_ip = run(kit, image_prompt=make(1), reference_image_prompt=make(2), **common)
    without = run(kit, **common)
    assert torch.isfinite(with_ip).all() and (with_ip - without).abs().max() > 1e-4
    with pytest.raises(ValueError, match="input 'reference_image_prompt': give the source image's image_prompt too"):
        run(kit, reference_image_prompt=make(2), **common)
    # image_prompt_strength is the gamma every decoupled cross-attention of the guider's model uses (the
    # IMAGE_PROMPT's own gamma, 1.0 here, is replaced), default 0.1 as DragonDiffusion / DiffEditor
    mod = host_module(harness.load_host())
    for strength in (None, 0.07):
        s = mod.DualBranchSettings() if strength is None else mod.DualBranchSettings(gamma=strength)
        gd = guider_impl(kit, "paste", settings=s, image_prompt=make(1), **{k: v for k, v in common.items() if k != "task"})
        patches = gd.model_patcher.model_options["transformer_options"]["patches_replace"]["attn2"].values()
        gammas = {round(p.gamma, 6) for p in patches if type(p).__name__ == "ImagePromptAttn2"}
        assert gammas == {0.1 if strength is None else strength}, gammas


def test_kv_replace_patch_against_naive_attention(host):
    """Generation rows read the guidance rows' K, V (replace) or their own plus those (concat); other rows
    are plain self-attention; kv_mask restricts the guidance tokens."""
    kvr = harness.pack_module("attention_patch.kv_replace")
    torch.manual_seed(0)
    heads, d, n = 2, 4, 16                                     # 4x4 latent grid, 16 tokens
    q, k, v = (torch.randn(3, n, heads * d) for _ in range(3))  # rows: gud, gen_neg, gen_pos

    def naive(q1, k1, v1):
        qh, kh, vh = (t.view(t.shape[0], -1, heads, d).transpose(1, 2) for t in (q1, k1, v1))
        a = torch.softmax(qh @ kh.transpose(-1, -2) / d ** 0.5, dim=-1)
        return (a @ vh).transpose(1, 2).reshape(q1.shape[0], -1, heads * d)

    opts = {"n_heads": heads, "dim_head": d}
    patch = kvr.KVReplacePatch()
    call = kvr.BranchCall(branches=("gud", "gen_neg", "gen_pos"), latent_hw=(4, 4), kv=True)
    out = patch(q, k, v, {**opts, kvr.CALL_KEY: call})
    assert torch.allclose(out[0], naive(q[:1], k[:1], v[:1])[0], atol=1e-5)
    for r in (1, 2):
        assert torch.allclose(out[r], naive(q[r:r + 1], k[:1], v[:1])[0], atol=1e-5)
    call.kv_mode = "concat"
    out = patch(q, k, v, {**opts, kvr.CALL_KEY: call})
    assert torch.allclose(out[2], naive(q[2:], torch.cat([k[2:], k[:1]], 1), torch.cat([v[2:], v[:1]], 1))[0], atol=1e-5)
    call.kv_mode, call.kv_mask = "replace", torch.zeros(4, 4)
    call.kv_mask[:, :2] = 1                                   # only the left half of the guidance tokens
    sel = call.kv_mask.flatten().bool()
    out = patch(q, k, v, {**opts, kvr.CALL_KEY: call})
    assert torch.allclose(out[2], naive(q[2:], k[:1, sel], v[:1, sel])[0], atol=1e-5)
    # a reference branch: the generation rows read the guidance tokens of kv_mask and the reference tokens of
    # kv_ref_mask only (appearance / paste: the image's background and the reference object)
    ref_call = kvr.BranchCall(branches=("gud", "ref", "gen_pos"), latent_hw=(4, 4), kv=True, kv_mask=call.kv_mask,
                              kv_ref_mask=torch.zeros(4, 4))
    ref_call.kv_ref_mask[2:, 2:] = 1
    rsel = ref_call.kv_ref_mask.flatten().bool()
    out = patch(q, k, v, {**opts, kvr.CALL_KEY: ref_call})
    expect = naive(q[2:], torch.cat([k[:1, sel], k[1:2, rsel]], 1), torch.cat([v[:1, sel], v[1:2, rsel]], 1))
    assert torch.allclose(out[2], expect[0], atol=1e-5)
    assert torch.allclose(out[1], naive(q[1:2], k[1:2], v[1:2])[0], atol=1e-5)   # the reference row: its own
    call.kv = False
    assert torch.allclose(patch(q, k, v, {**opts, kvr.CALL_KEY: call}), naive(q, k, v), atol=1e-5)
    assert torch.allclose(patch(q, k, v, opts), naive(q, k, v), atol=1e-5)   # outside a dual-branch call


@pytest.mark.parametrize("mode", ["normalised, x0 only", "raw, x0 only (DragonDiffusion)",
                                  "raw, both terms (Eq. 7 as printed)"])
def test_the_energy_joins_the_step_as_its_mode_says(kit, mode):
    """The guider's apply_energy against the formulas, through the sampler's Euler step
    x_next = x + (sigma_next - sigma) (x - denoised) / sigma:
    x0 modes (DragonDiffusion): x_next moves by -sigma * s * g (g normalised: RMS over the edit region = eps's);
    Eq. 7 literal: by -(sigma - sigma_next) * s * g_z only."""
    mod = host_module(harness.load_host())
    s = mod.DualBranchSettings(energy_mode=mode, energy_scale=0.3)
    g = guider_impl(kit, "drag", settings=s, points=drag_points(), point_radius=8.0)
    g.reset(0)
    i = 1
    sigma, sigma_next = float(g.pni_gen.sigmas[i]), float(g.pni_gen.sigmas[i + 1])
    gen = torch.Generator().manual_seed(3)
    x, eps, grad = (torch.randn(1, 4, SIZE // 8, SIZE // 8, generator=gen) for _ in range(3))
    denoised = x - sigma * eps
    out = g.apply_energy(x, denoised, grad, sigma, i)
    step = lambda d: x + (sigma_next - sigma) * (x - d) / sigma
    moved = step(out) - step(denoised)
    g_z = grad * (1.0 + sigma * sigma) ** 0.5                 # the gradient w.r.t. the UNet's input z = x / sqrt(1 + s^2)
    if mode.startswith("raw, both"):
        torch.testing.assert_close(moved, -(sigma - sigma_next) * 0.3 * g_z, atol=1e-5, rtol=1e-4)
        return
    if mode.startswith("normalised"):
        region = g.geometry.edit_region[None, None] > 0.5
        rms = lambda t: t[region.expand_as(t)].pow(2).mean().sqrt()
        g_z = g_z * rms(eps) / rms(g_z)
        torch.testing.assert_close(rms(moved / (sigma * 0.3)), rms(eps), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(moved, -sigma * 0.3 * g_z, atol=1e-5, rtol=1e-4)


def test_node_defaults_are_the_settings_defaults(host):
    """A node input left out (in-process callers, old workflows) and the widget's default give the same edit."""
    import dataclasses
    mod = host_module(harness.load_host())
    fields = {f.name: f.default for f in dataclasses.fields(mod.DualBranchSettings)}
    for node_id in (SAMPLER, GUIDER):
        info = host.NODE_CLASS_MAPPINGS[node_id].INPUT_TYPES()
        specs = {**info["required"], **info.get("optional", {})}
        checked = 0
        for name, field in mod.SETTING_FIELDS.items():
            assert specs[name][1]["default"] == fields[field], (node_id, name)
            checked += 1
        assert checked >= 14


def test_one_generation_row_when_target_equals_source(kit):
    """Target = source prompt and no image prompt: the generation branch's negative and positive rows would be
    the same row computed twice, so the batch holds it once (3 rows -> 2 on an unguided step); the edit is the
    same as with both rows (the two-row path forced)."""
    mod = host_module(harness.load_host())
    s = mod.DualBranchSettings(energy_scale=0.0)              # unguided steps only: the rows, nothing else
    same = guider_impl(kit, "drag", settings=s, points=drag_points())
    other = guider_impl(kit, "drag", settings=s, points=drag_points(), target=kit["tar"])
    assert same.one_gen_row and not other.one_gen_row
    seen = []
    batch = same._run_batch

    def spy(parts, *a, **kw):
        seen.append(tuple(label for label, _, _ in parts))
        return batch(parts, *a, **kw)

    same._run_batch = spy
    run_guider = mod.run_guider
    with torch.inference_mode():
        one = run_guider(same, "euler")["samples"]
        both_guider = guider_impl(kit, "drag", settings=s, points=drag_points())
        both_guider.one_gen_row = False
        both = run_guider(both_guider, "euler")["samples"]
    assert seen and all(labels == ("gud", "gen_pos") for labels in seen), seen
    torch.testing.assert_close(one, both, atol=1e-4, rtol=1e-4)
