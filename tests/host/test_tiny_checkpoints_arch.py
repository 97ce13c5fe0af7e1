"""The tiny SD2.x and SDXL test checkpoints (scripts/make_tiny_checkpoint.py --arch) through the real
host: the family its model detection finds, the latent format, the UNet's attention layout, every
text-encoder weight coming from the file, and one short KSampler + VAEDecode graph."""
import pytest
import torch

import harness

# input blocks, middle block, output blocks: transformer blocks per block (0 = no attention; the
# reduced SD1.5 / SD2 UNets have no middle block)
LAYOUT = {
    "sd15": ([0, 1], None, [1, 1]),
    "sd2": ([0, 1], None, [1, 1]),
    # SDXL's structure (Segmind Vega's depths): conv_in, level 1 (2 res blocks, no attention),
    # down, level 2 (1 each), down, level 3 (2 each); middle; the output side mirrored, 3 per level
    "sdxl": ([0, 0, 0, 0, 1, 1, 0, 2, 2], 1, [2, 2, 2, 1, 1, 1, 0, 0, 0]),
}


@pytest.fixture(scope="module")
def comfy_mods(host):
    import comfy.latent_formats
    import comfy.model_base
    import comfy.model_sampling
    import comfy.supported_models
    yield comfy
    harness.drop_tiny_checkpoints("sd2", "sdxl")   # ~7 GB of RAM between them, not kept for later tests


def attention_depths(blocks, SpatialTransformer):
    return [sum(len(m.transformer_blocks) for m in b.modules() if isinstance(m, SpatialTransformer))
            for b in blocks]


@pytest.mark.parametrize("arch", ["sd15", "sd2", "sdxl"])
def test_detected_family_latent_format_and_attention_layout(comfy_mods, arch):
    from comfy.ldm.modules.attention import SpatialTransformer
    comfy = comfy_mods
    model, clip, vae = harness.load_tiny_checkpoint(arch)
    config, base = model.model.model_config, model.model
    if arch == "sdxl":
        # an SDXL subclass (Segmind_Vega on 0.3.75 and 0.33.0), built as model_base.SDXL
        assert isinstance(config, comfy.supported_models.SDXL), type(config)
        assert type(base) is comfy.model_base.SDXL
        assert isinstance(base.latent_format, comfy.latent_formats.SDXL)
        assert base.latent_format.scale_factor == 0.13025
        assert config.unet_config["adm_in_channels"] == 2816 and config.unet_config["context_dim"] == 2048
    else:
        family = {"sd15": comfy.supported_models.SD15, "sd2": comfy.supported_models.SD20}[arch]
        assert type(config) is family
        assert type(base) is comfy.model_base.BaseModel
        assert type(base.latent_format) is comfy.latent_formats.SD15
        assert base.latent_format.scale_factor == 0.18215
        assert config.unet_config["context_dim"] == (768 if arch == "sd15" else 1024)
    # detected as eps (the SD2 v-prediction model: test_sd2_v_prediction_through_model_sampling_discrete)
    assert base.model_type == comfy.model_base.ModelType.EPS
    assert isinstance(model.get_model_object("model_sampling"), comfy.model_sampling.EPS)

    unet = base.diffusion_model
    inputs, middle, outputs = LAYOUT[arch]
    assert attention_depths(unet.input_blocks, SpatialTransformer) == inputs
    if middle is None:
        assert unet.middle_block is None
    else:
        assert attention_depths([unet.middle_block], SpatialTransformer) == [middle]
    assert attention_depths(unet.output_blocks, SpatialTransformer) == outputs
    transformers = [m for m in unet.modules() if isinstance(m, SpatialTransformer)]
    linear = arch != "sd15"
    assert all(isinstance(t.proj_in, torch.nn.Linear) == linear for t in transformers)
    ctx = config.unet_config["context_dim"]
    assert all(t.transformer_blocks[0].attn2.to_k.in_features == ctx for t in transformers)
    if arch != "sd15":   # 64-channel heads, as ComfyUI builds SD2 / SDXL
        assert all(t.transformer_blocks[0].attn1.heads == 320 // 64 for t in transformers)
    assert clip is not None and type(vae.first_stage_model).__name__ == "TAESD"


@pytest.mark.parametrize("arch", ["sd2", "sdxl"])
def test_every_text_encoder_weight_comes_from_the_file(comfy_mods, arch):
    """No uninitialised weight in the host's text encoder: each parameter of the model it builds is
    in the checkpoint. The only exceptions are SDXL's CLIP-L logit_scale (a constant set in __init__)
    and CLIP-L's text_projection, whose pooled output SDXLClipModel discards: ComfyUI's SDXL layout
    has no key for it, so every SDXL checkpoint loads this way."""
    import comfy.utils
    import folder_paths
    model, clip, _ = harness.load_tiny_checkpoint(arch)
    sd = comfy.utils.load_torch_file(folder_paths.get_full_path("checkpoints", harness.TINY_CKPTS[arch]))
    from_file = model.model.model_config.process_clip_state_dict(sd)
    missing = set(clip.cond_stage_model.state_dict()) - set(from_file)
    assert missing == ({"clip_l.logit_scale", "clip_l.transformer.text_projection.weight"} if arch == "sdxl" else set())
    params = sum(v.numel() for v in from_file.values())
    assert params > {"sd2": 350e6, "sdxl": 810e6}[arch], params   # full-size OpenCLIP-H / CLIP-L + bigG


def sample_and_decode(model, vae, positive, negative, seed=0):
    (latent,) = harness.call_node("EmptyLatentImage", width=64, height=64, batch_size=1)
    (out,) = harness.call_node("KSampler", model=model, seed=seed, steps=2, cfg=2.0, sampler_name="euler",
                               scheduler="normal", positive=positive, negative=negative,
                               latent_image=latent, denoise=1.0)
    (image,) = harness.call_node("VAEDecode", samples=out, vae=vae)
    assert out["samples"].shape == (1, 4, 8, 8) and torch.isfinite(out["samples"]).all()
    assert image.shape == (1, 64, 64, 3) and torch.isfinite(image).all()
    return out["samples"]


def test_sd2_graph(comfy_mods):
    model, clip, vae = harness.load_tiny_checkpoint("sd2")
    (pos,) = harness.call_node("CLIPTextEncode", clip=clip, text="a photo of a cat")
    (neg,) = harness.call_node("CLIPTextEncode", clip=clip, text="")
    assert pos[0][0].shape == (1, 77, 1024)
    sample_and_decode(model, vae, pos, neg)


def test_sdxl_graph_with_pooled_conditioning(comfy_mods):
    model, clip, vae = harness.load_tiny_checkpoint("sdxl")
    (pos,) = harness.call_node("CLIPTextEncodeSDXL", clip=clip, width=64, height=64, crop_w=0, crop_h=0,
                               target_width=64, target_height=64, text_g="a photo of a cat",
                               text_l="a photo of a cat")
    (neg,) = harness.call_node("CLIPTextEncode", clip=clip, text="")
    for cond in (pos, neg):   # CLIP-L (768) + bigG (1280) per token; bigG's projected pooled output
        assert cond[0][0].shape == (1, 77, 2048)
        assert cond[0][1]["pooled_output"].shape == (1, 1280)
        assert torch.isfinite(cond[0][1]["pooled_output"]).all()
    assert pos[0][1]["width"] == 64 and pos[0][1]["target_height"] == 64
    # the pooled output reaches the UNet through SDXL's 2816-wide ADM vector
    adm = model.model.encode_adm(**pos[0][1])
    assert adm.shape == (1, 2816)
    sample_and_decode(model, vae, pos, neg)


def test_sd2_v_prediction_through_model_sampling_discrete(comfy_mods):
    """Neither host detects a v-prediction SD2 from a reduced UNet (0.3.75 and 0.33.0 look at the std of
    output_blocks.11's norm1.bias; the 'v_pred' key is honoured for SDXL only): ComfyUI's own
    ModelSamplingDiscrete node ('v_prediction') makes the eps checkpoint a v-prediction model."""
    comfy = comfy_mods
    eps, clip, vae = harness.load_tiny_checkpoint("sd2")
    v, clip_v, _ = harness.load_tiny_checkpoint("sd2", v_prediction=True)
    assert clip_v is clip
    assert isinstance(v.get_model_object("model_sampling"), comfy.model_sampling.V_PREDICTION)
    assert isinstance(eps.get_model_object("model_sampling"), comfy.model_sampling.EPS)   # not patched
    (pos,) = harness.call_node("CLIPTextEncode", clip=clip, text="a photo of a cat")
    (neg,) = harness.call_node("CLIPTextEncode", clip=clip, text="")
    assert not torch.equal(sample_and_decode(v, vae, pos, neg), sample_and_decode(eps, vae, pos, neg))
