"""Build the tiny test checkpoints (SD1.5, SD2.x, SDXL architectures) from ComfyUI's own classes.

Random weights from fixed seeds (the pictures they make are noise), fp16, the original LDM / SGM key
layout, byte-identical run to run. Each has a reduced UNet that ComfyUI still detects as its family
(checked here, through the host's own model detection, before anything is written), the family's
full-size text encoder(s) and a TAESD VAE:

    sd15  one level, 320 channels, 8 heads, one cross-attention transformer per block, no middle
          block; CLIP-L (123 M)                                   -> supported_models.SD15
    sd2   the same UNet with SD2's 1024-wide context, linear projections and 64-channel heads;
          OpenCLIP ViT-H text (354 M). ComfyUI detects it as an eps model: for v-prediction apply
          ComfyUI's ModelSamplingDiscrete ('v_prediction') to it  -> supported_models.SD20
    sdxl  SDXL's block structure (Segmind Vega's depths): 3 levels of 2 res blocks, no attention at
          the first level, 1 / 2 transformer blocks per block at levels 2 / 3, a middle block with
          one; every level at 320 channels (channel_mult is not part of the detection); 2816-wide
          ADM input; CLIP-L + OpenCLIP bigG (694 M)               -> an SDXL subclass (Segmind_Vega)

ComfyUI builds each family's text encoder from a fixed config, so a checkpoint with fewer layers would
load with uninitialised weights: the encoders are full size.

    python scripts/make_tiny_checkpoint.py --comfyui .host/ComfyUI --out model.safetensors [--arch sd2]
"""
import argparse
import os
import sys

SEED = 0

UNET_CONFIG = dict(   # sd15 (scripts/train_shapedrag.py trains this UNet)
    image_size=32, in_channels=4, model_channels=320, out_channels=4, num_res_blocks=[1],
    channel_mult=[1], num_heads=8, use_spatial_transformer=True, transformer_depth=[1],
    transformer_depth_output=[1, 1], context_dim=768, use_linear_in_transformer=False,
    transformer_depth_middle=-2, legacy=False,
)

# SD2's heads are 64 channels wide (what ComfyUI's SD20 / SDXL configs build), its context is
# OpenCLIP-H's 1024 and its transformers project with linear layers.
SD2_UNET_CONFIG = dict(UNET_CONFIG, num_heads=-1, num_head_channels=64, context_dim=1024,
                       use_linear_in_transformer=True)

SDXL_UNET_CONFIG = dict(
    image_size=32, in_channels=4, model_channels=320, out_channels=4, num_res_blocks=[2, 2, 2],
    channel_mult=[1, 1, 1], num_heads=-1, num_head_channels=64, use_spatial_transformer=True,
    transformer_depth=[0, 0, 1, 1, 2, 2], transformer_depth_output=[0, 0, 0, 1, 1, 1, 2, 2, 2],
    transformer_depth_middle=1, context_dim=2048, use_linear_in_transformer=True,
    num_classes="sequential", adm_in_channels=2816, legacy=False,
)

# arch -> (UNet config, the supported_models class the host must detect it as (or a subclass of),
#          TAESD's vae_scale: the family's latent scale factor, as ComfyUI's VAELoader sets it for
#          taesd / taesdxl; None keeps TAESD's own 1.0, which the sd15 checkpoint has always had)
ARCHS = {
    "sd15": (UNET_CONFIG, "SD15", None),
    "sd2": (SD2_UNET_CONFIG, "SD20", 0.18215),
    "sdxl": (SDXL_UNET_CONFIG, "SDXL", 0.13025),
}


def init_weights(module, torch):
    """ComfyUI's layers skip weight initialisation: run torch's own reset on every layer."""
    kinds = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.GroupNorm, torch.nn.LayerNorm,
             torch.nn.Embedding)
    for m in module.modules():
        for kind in kinds:
            if isinstance(m, kind):
                kind.reset_parameters(m)
                break


def detect(unet_sd, arch):
    """The host's own model detection on the UNet's keys; fails unless it finds ``arch``'s family."""
    import comfy.model_detection
    import comfy.supported_models
    family = getattr(comfy.supported_models, ARCHS[arch][1])
    config = comfy.model_detection.model_config_from_unet(unet_sd, "")
    if config is None or not isinstance(config, family) or (arch != "sdxl" and type(config) is not family):
        raise RuntimeError(f"ComfyUI detects the {arch} UNet as {type(config).__name__}, not {family.__name__}")
    return config


def text_encoder_state_dict(model_config, clip, torch):
    """The text encoder(s) under the checkpoint's keys. sd15 keeps the layout it has always had
    (cond_stage_model.transformer.*, text_projection included); the others go through the model
    config's own process_clip_state_dict_for_saving, as ComfyUI's CheckpointSave writes them."""
    import comfy.supported_models
    clip_sd = clip.state_dict()
    if type(model_config) is comfy.supported_models.SD15:
        return {"cond_stage_model." + k[len("clip_l."):]: v for k, v in clip_sd.items()
                if k.startswith("clip_l.transformer.")}
    return model_config.process_clip_state_dict_for_saving(clip_sd)


def build_state_dict(torch, arch="sd15"):
    import comfy.taesd.taesd
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    unet_config, _, vae_scale = ARCHS[arch]
    sd = {}
    torch.manual_seed(SEED)
    unet = UNetModel(**unet_config)
    init_weights(unet, torch)
    # Keep the random network's noise prediction small, like a trained one's (std ~1).
    with torch.no_grad():
        unet.out[-1].weight.mul_(0.1)
    unet_sd = unet.state_dict()
    model_config = detect(unet_sd, arch)
    sd.update({"model.diffusion_model." + k: v for k, v in unet_sd.items()})
    del unet, unet_sd

    torch.manual_seed(SEED + 1)
    clip = model_config.clip_target().clip(device="cpu", dtype=torch.float32)
    init_weights(clip, torch)
    sd.update(text_encoder_state_dict(model_config, clip, torch))
    del clip

    torch.manual_seed(SEED + 2)
    vae = comfy.taesd.taesd.TAESD(latent_channels=4)
    init_weights(vae, torch)
    if vae_scale is not None:
        with torch.no_grad():
            vae.vae_scale.fill_(vae_scale)
    sd.update({"first_stage_model." + k: v for k, v in vae.state_dict().items()})

    out = {}
    for k in list(sd):
        v = sd.pop(k)
        if not torch.isfinite(v.float()).all():
            raise RuntimeError(f"non-finite tensor {k}")
        out[k] = v.detach().to(torch.float16 if v.is_floating_point() else v.dtype).contiguous()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--comfyui", required=True, help="ComfyUI folder")
    ap.add_argument("--out", required=True, help="output .safetensors path")
    ap.add_argument("--arch", choices=sorted(ARCHS), default="sd15", help="architecture (default sd15)")
    a = ap.parse_args()
    sys.path.insert(0, os.path.abspath(a.comfyui))
    from comfy.cli_args import args
    args.cpu = True
    import torch
    from safetensors.torch import save_file

    sd = build_state_dict(torch, a.arch)
    tmp = a.out + ".tmp"
    save_file(sd, tmp, metadata={"format": "pt"})
    os.replace(tmp, a.out)
    n = sum(v.numel() for k, v in sd.items() if k.startswith("model.diffusion_model."))
    print(f"wrote {a.out} ({os.path.getsize(a.out) / 2**20:.0f} MiB, {a.arch}, UNet {n / 1e6:.1f} M parameters)")


if __name__ == "__main__":
    main()
