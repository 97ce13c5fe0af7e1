"""Image Prompt Encoder / Apply Image Prompt in the real ComfyUI, on the tiny SD1.5 checkpoint."""
import json
import os

import pytest
import torch

import harness

ENC, APPLY = "DragFusionImagePromptEncoder", "DragFusionApplyImagePrompt"
CLIP_DIM, OUT_DIM = 32, 768
TINY_CLIP_VISION = {"attention_dropout": 0.0, "dropout": 0.0, "hidden_act": "quick_gelu", "hidden_size": CLIP_DIM,
                    "image_size": 224, "initializer_factor": 1.0, "initializer_range": 0.02, "intermediate_size": 64,
                    "layer_norm_eps": 1e-05, "model_type": "clip_vision_model", "num_attention_heads": 2,
                    "num_channels": 3, "num_hidden_layers": 3, "patch_size": 14, "projection_dim": 16}


@pytest.fixture(scope="module")
def unet(host):
    import comfy.sd
    import folder_paths
    path = folder_paths.get_full_path("checkpoints", harness.TINY_CKPT)
    return comfy.sd.load_checkpoint_guess_config(path, output_vae=False, output_clip=False)[0]


@pytest.fixture(scope="module")
def weights_dir(host, tmp_path_factory):
    """A temporary folder registered as an extra dragfusion_image_prompt path; removed afterwards."""
    import folder_paths
    folder = harness.pack_module("nodes.image_prompt").FOLDER
    d = str(tmp_path_factory.mktemp("image_prompt_weights"))
    folder_paths.add_model_folder_path(folder, d)
    yield d
    folder_paths.folder_names_and_paths[folder][0].remove(d)


def write_weights(host, directory, name, layout="dragfusion", queries=16, seed=0, depth=2):
    enc_mod = harness.pack_module("guidance.image_prompt_encoder")
    w_mod = harness.pack_module("guidance.image_prompt_weights")
    torch.manual_seed(seed)
    cfg = enc_mod.EncoderConfig(clip_dim=CLIP_DIM, dim=64, depth=depth, heads=1, num_queries=queries, out_dim=OUT_DIM,
                                kv_with_queries=(layout == "public"))
    adapter = enc_mod.ImagePromptAdapter(cfg, [320, 320, 320])
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(0.05 * torch.randn_like(p))
        for layer in adapter.layers:  # strong enough to move the UNet's output
            layer.to_k_ip.weight.mul_(20), layer.to_v_ip.weight.mul_(20)
    from safetensors.torch import save_file
    save_file(w_mod.adapter_state_dict(adapter, layout), os.path.join(directory, name))
    return adapter


def clip_output(tokens):
    from comfy.clip_vision import Output
    out = Output()
    out["penultimate_hidden_states"] = tokens
    return out


def eps(model, x, ctx, cond_or_uncond, sigma=5.0):
    """The model's noise prediction with the clone's transformer options, as calc_cond_batch runs it."""
    to = dict(model.model_options["transformer_options"])
    to["cond_or_uncond"] = list(cond_or_uncond)
    s = torch.full((x.shape[0],), sigma)
    to["sigmas"] = s
    with torch.no_grad():
        return model.model.apply_model(x, s, c_crossattn=ctx, transformer_options=to)


def encode(host, name, tokens, **kw):
    return harness.run_node(ENC, clip_vision_output=clip_output(tokens), weights=name, **kw).result[0]


def test_nodes_registered_with_tooltips(host):
    for nid in (ENC, APPLY):
        info = host.NODE_CLASS_MAPPINGS[nid].GET_NODE_INFO_V1()
        assert info["category"] == "DragFusion/VersaFusion"
        for section in ("required", "optional"):
            for name, spec in info["input"].get(section, {}).items():
                assert spec[1].get("tooltip"), (nid, name)


def test_gamma_zero_equals_unpatched_and_input_model_unchanged(host, unet, weights_dir):
    write_weights(host, weights_dir, "ip_a.safetensors")
    torch.manual_seed(0)
    prompt = encode(host, "ip_a.safetensors", torch.randn(1, 257, CLIP_DIM))
    assert prompt.cond.shape == (1, 16, OUT_DIM) and prompt.uncond.shape == (1, 16, OUT_DIM)
    assert not torch.equal(prompt.cond, prompt.uncond)
    before = json.dumps(unet.model_options, default=repr, sort_keys=True)
    x, ctx = torch.randn(2, 4, 8, 8), torch.randn(2, 77, 768)
    ref = eps(unet, x, ctx, [0, 1])
    zero = harness.run_node(APPLY, model=unet, image_prompt=prompt, gamma=0.0).result[0]
    one = harness.run_node(APPLY, model=unet, image_prompt=prompt, gamma=1.0).result[0]
    assert zero is not unet and one is not unet
    assert len(one.model_options["transformer_options"]["patches_replace"]["attn2"]) == 3
    assert json.dumps(unet.model_options, default=repr, sort_keys=True) == before
    assert torch.equal(eps(zero, x, ctx, [0, 1]), ref)
    patched = eps(one, x, ctx, [0, 1])
    assert torch.isfinite(patched).all() and (patched - ref).abs().max() > 1e-3
    assert torch.equal(eps(unet, x, ctx, [0, 1]), ref)  # the original still gives the unpatched output
    # per-block weights: every layer at 0 is the unpatched model again
    off = harness.run_node(APPLY, model=unet, image_prompt=prompt, gamma=1.0, block_weights="input=0, output=0").result[0]
    assert torch.equal(eps(off, x, ctx, [0, 1]), ref)
    part = harness.run_node(APPLY, model=unet, image_prompt=prompt, gamma=1.0, block_weights="output.1=0").result[0]
    assert not torch.equal(eps(part, x, ctx, [0, 1]), ref) and not torch.equal(eps(part, x, ctx, [0, 1]), patched)


def test_cfg_batch_routes_cond_and_uncond_tokens(host, unet, weights_dir):
    write_weights(host, weights_dir, "ip_b.safetensors", layout="public", queries=64)
    torch.manual_seed(1)
    prompt = encode(host, "ip_b.safetensors", torch.randn(1, 257, CLIP_DIM))
    assert prompt.cond.shape == (1, 64, OUT_DIM)
    m = harness.run_node(APPLY, model=unet, image_prompt=prompt, gamma=1.5).result[0]
    x, ctx = torch.randn(4, 4, 8, 8), torch.randn(4, 77, 768)
    # ComfyUI's CFG batch: chunks listed in cond_or_uncond, here [uncond, cond] with 2 latents each
    both = eps(m, x, ctx, [1, 0])
    un = eps(m, x[:2], ctx[:2], [1])
    co = eps(m, x[2:], ctx[2:], [0])
    torch.testing.assert_close(both, torch.cat([un, co]), atol=1e-4, rtol=1e-4)
    assert (co - eps(m, x[2:], ctx[2:], [1])).abs().max() > 1e-3  # cond and uncond tokens differ in effect
    # the same rows, with the tokens swapped in the patch, equal the swapped run
    swapped = prompt.__class__(cond=prompt.uncond, uncond=prompt.cond, kv_weights=prompt.kv_weights, source="x")
    ms = harness.run_node(APPLY, model=unet, image_prompt=swapped, gamma=1.5).result[0]
    torch.testing.assert_close(eps(ms, x[:2], ctx[:2], [0]), un, atol=1e-4, rtol=1e-4)


def test_batch_two_image_prompts_go_row_by_row(host, unet, weights_dir):
    write_weights(host, weights_dir, "ip_c.safetensors")
    torch.manual_seed(2)
    tokens = torch.randn(2, 257, CLIP_DIM)
    both = encode(host, "ip_c.safetensors", tokens)
    first = encode(host, "ip_c.safetensors", tokens[:1])
    second = encode(host, "ip_c.safetensors", tokens[1:])
    torch.testing.assert_close(both.cond[1:], second.cond, atol=1e-5, rtol=1e-5)
    m2 = harness.run_node(APPLY, model=unet, image_prompt=both, gamma=1.0).result[0]
    m0 = harness.run_node(APPLY, model=unet, image_prompt=first, gamma=1.0).result[0]
    m1 = harness.run_node(APPLY, model=unet, image_prompt=second, gamma=1.0).result[0]
    x, ctx = torch.randn(4, 4, 8, 8), torch.randn(4, 77, 768)
    out = eps(m2, x, ctx, [0, 1])  # 2 cond rows (images 0, 1), then 2 uncond rows
    torch.testing.assert_close(out[0:1], eps(m0, x[0:1], ctx[0:1], [0]), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out[1:2], eps(m1, x[1:2], ctx[1:2], [0]), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out[2:4], eps(m0, x[2:4], ctx[2:4], [1]), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="batch of 2"):
        eps(m2, torch.randn(6, 4, 8, 8), torch.randn(6, 77, 768), [0, 1])


def test_reference_tokens_are_concatenated(host, weights_dir):
    write_weights(host, weights_dir, "ip_d.safetensors")
    torch.manual_seed(3)
    src, ref = torch.randn(1, 257, CLIP_DIM), torch.randn(1, 257, CLIP_DIM)
    a, b = encode(host, "ip_d.safetensors", src), encode(host, "ip_d.safetensors", ref)
    both = encode(host, "ip_d.safetensors", src, reference=clip_output(ref))
    assert both.cond.shape == (1, 32, OUT_DIM)
    torch.testing.assert_close(both.cond, torch.cat([a.cond, b.cond], dim=1))
    torch.testing.assert_close(both.uncond, torch.cat([a.uncond, a.uncond], dim=1))


def test_sampling_with_cfg_and_batch_two(host, unet, weights_dir):
    """KSampler with CFG 5 on batch 2: the real cond/uncond batching path, finite and different from gamma 0."""
    write_weights(host, weights_dir, "ip_e.safetensors")
    prompt = encode(host, "ip_e.safetensors", torch.randn(2, 257, CLIP_DIM))
    torch.manual_seed(4)
    pos = [[torch.randn(1, 77, 768), {}]]
    neg = [[torch.randn(1, 77, 768), {}]]
    latent = {"samples": torch.zeros(2, 4, 8, 8)}
    outs = {}
    for g in (0.0, 1.0):
        m = harness.run_node(APPLY, model=unet, image_prompt=prompt, gamma=g).result[0]
        outs[g] = host.common_ksampler(m, 7, 2, 5.0, "euler", "normal", pos, neg, latent)[0]["samples"]
    plain = host.common_ksampler(unet, 7, 2, 5.0, "euler", "normal", pos, neg, latent)[0]["samples"]
    assert torch.equal(outs[0.0], plain)
    assert torch.isfinite(outs[1.0]).all() and (outs[1.0] - plain).abs().max() > 1e-3


def test_uncond_from_a_black_image_through_clip_vision(host, weights_dir, tmp_path):
    import comfy.clip_vision
    cfg_path = os.path.join(tmp_path, "tiny_clip_vision.json")
    with open(cfg_path, "w") as f:
        json.dump(TINY_CLIP_VISION, f)
    cv = comfy.clip_vision.ClipVisionModel(cfg_path)
    torch.manual_seed(5)
    with torch.no_grad():
        for p in cv.model.parameters():
            p.copy_(torch.randn_like(p) * 0.02)
    image = torch.rand(1, 224, 224, 3)
    out = host.CLIPVisionEncode().encode(cv, image, "center")[0]
    assert out.penultimate_hidden_states.shape == (1, 257, CLIP_DIM)
    adapter = write_weights(host, weights_dir, "ip_f.safetensors")
    prompt = harness.run_node(ENC, clip_vision_output=out, weights="ip_f.safetensors", clip_vision=cv).result[0]
    black = cv.encode_image(torch.zeros(1, 224, 224, 3)).penultimate_hidden_states
    with torch.no_grad():
        torch.testing.assert_close(prompt.uncond, adapter.encoder(black.float()), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(prompt.cond, adapter.encoder(out.penultimate_hidden_states.float()), atol=1e-5, rtol=1e-5)
    no_cv = encode(host, "ip_f.safetensors", out.penultimate_hidden_states)
    with torch.no_grad():
        torch.testing.assert_close(no_cv.uncond, adapter.encoder(torch.zeros(1, 257, CLIP_DIM)), atol=1e-5, rtol=1e-5)


def test_bad_inputs_name_node_and_input(host, unet, weights_dir):
    write_weights(host, weights_dir, "ip_g.safetensors")
    tokens = torch.randn(1, 257, CLIP_DIM)

    def err(node_id, **kw):
        with pytest.raises(ValueError) as e:
            harness.run_node(node_id, **kw)
        return str(e.value)

    assert "Image Prompt Encoder: input 'weights'" in err(ENC, clip_vision_output=clip_output(tokens), weights="../ip_g.safetensors")
    assert "'..'" in err(ENC, clip_vision_output=clip_output(tokens), weights="sub/../../ip_g.safetensors")
    assert "not found" in err(ENC, clip_vision_output=clip_output(tokens), weights="missing.safetensors")
    assert "only .safetensors" in err(ENC, clip_vision_output=clip_output(tokens), weights="ip_g.ckpt")
    with open(os.path.join(weights_dir, "corrupt.safetensors"), "wb") as f:
        f.write(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    msg = err(ENC, clip_vision_output=clip_output(tokens), weights="corrupt.safetensors")
    assert "Image Prompt Encoder: input 'weights'" in msg and "cannot read" in msg
    from safetensors.torch import save_file
    save_file({"image_proj.latents": torch.zeros(1, 16, 64), "ip_adapter.1.to_k_ip.weight": torch.zeros(320, 768)},
              os.path.join(weights_dir, "wrongkeys.safetensors"))
    msg = err(ENC, clip_vision_output=clip_output(tokens), weights="wrongkeys.safetensors")
    assert "Image Prompt Encoder: input 'weights'" in msg and "image_proj.proj_in.weight" in msg
    msg = err(ENC, clip_vision_output=clip_output(torch.randn(1, 257, 1024)), weights="ip_g.safetensors")
    assert "input 'clip_vision_output'" in msg and "1024" in msg
    prompt = encode(host, "ip_g.safetensors", tokens)
    assert "input 'block_weights'" in err(APPLY, model=unet, image_prompt=prompt, gamma=1.0, block_weights="middle=1")
    assert "input 'block_weights'" in err(APPLY, model=unet, image_prompt=prompt, gamma=1.0, block_weights="input 2")
    short = prompt.__class__(cond=prompt.cond, uncond=prompt.uncond, kv_weights=prompt.kv_weights[:2], source="s")
    assert "Apply Image Prompt: input 'image_prompt'" in err(APPLY, model=unet, image_prompt=short, gamma=1.0)
    assert "Apply Image Prompt: input 'image_prompt'" in err(APPLY, model=unet, image_prompt="nope", gamma=1.0)


def test_ipadapter_folder_is_listed(host, weights_dir):
    import folder_paths
    mod = harness.pack_module("nodes.image_prompt")
    d = os.path.join(weights_dir, "ipadapter_models")
    os.makedirs(d, exist_ok=True)
    write_weights(host, d, "plus_sd15.safetensors", layout="public")
    registered = "ipadapter" in folder_paths.folder_names_and_paths
    folder_paths.add_model_folder_path("ipadapter", d)
    try:
        assert "ipadapter/plus_sd15.safetensors" in mod.weight_files()
        prompt = encode(host, "ipadapter/plus_sd15.safetensors", torch.randn(1, 257, CLIP_DIM))
        assert prompt.cond.shape == (1, 16, OUT_DIM)
    finally:
        if registered:
            folder_paths.folder_names_and_paths["ipadapter"][0].remove(d)
        else:
            del folder_paths.folder_names_and_paths["ipadapter"]


def test_training_script_lowers_loss_and_its_file_loads(host, unet, weights_dir, tmp_path):
    """scripts/train_image_prompt.py on the tiny checkpoint with a tiny CLIP vision model built here."""
    import importlib.util

    import comfy.clip_vision
    import numpy as np
    from PIL import Image
    from safetensors.torch import save_file
    cfg_path = os.path.join(tmp_path, "cv.json")
    with open(cfg_path, "w") as f:
        json.dump(TINY_CLIP_VISION, f)
    torch.manual_seed(6)
    cv_sd = {k: torch.randn_like(v) * 0.02 for k, v in comfy.clip_vision.ClipVisionModel(cfg_path).get_sd().items()}
    cv_path = os.path.join(tmp_path, "cv.safetensors")
    save_file(cv_sd, cv_path)
    images = os.path.join(tmp_path, "images")
    os.makedirs(images)
    rng = np.random.default_rng(0)
    for i in range(3):
        a = np.zeros((72, 88, 3), np.uint8)
        a[:] = rng.integers(0, 255, 3)
        a[16:56, 24:64] = rng.integers(0, 255, 3)
        Image.fromarray(a).save(os.path.join(images, f"{i}.png"))
    with open(os.path.join(images, "0.txt"), "w") as f:
        f.write("a square")
    spec = importlib.util.spec_from_file_location("train_image_prompt", os.path.join(harness.REPO, "scripts", "train_image_prompt.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = os.path.join(weights_dir, "trained.safetensors")
    log = os.path.join(tmp_path, "log.json")
    result = script.main(["--images", images, "--checkpoint", harness.TINY_CKPT, "--clip-vision", cv_path,
                          "--clip-vision-config", cfg_path, "--steps", "6", "--batch-size", "2", "--lr", "2e-3",
                          "--resolution", "64", "--queries", "16", "--depth", "2", "--dim", "64", "--heads", "2",
                          "--log-every", "3", "--eval-images", "3", "--out", out, "--log-json", log])
    assert len(result["losses"]) == 6 and all(np.isfinite(result["losses"]))
    assert result["eval_after"] < result["eval_before"], result
    with open(log) as f:
        assert json.load(f)["eval_after"] == result["eval_after"]
    cv = comfy.clip_vision.ClipVisionModel(cfg_path)
    cv.load_sd(cv_sd)
    enc = host.CLIPVisionEncode().encode(cv, torch.rand(1, 64, 64, 3), "center")[0]
    prompt = harness.run_node(ENC, clip_vision_output=enc, weights="trained.safetensors", clip_vision=cv).result[0]
    assert prompt.cond.shape == (1, 16, OUT_DIM) and prompt.num_layers == 3
    m = harness.run_node(APPLY, model=unet, image_prompt=prompt, gamma=1.0).result[0]
    assert torch.isfinite(eps(m, torch.randn(2, 4, 8, 8), torch.randn(2, 77, 768), [0, 1])).all()
