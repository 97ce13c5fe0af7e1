"""A tiny checkpoint of a family variant the pack does not support, built from ComfyUI's own classes, for
the "this model is not supported" cases: an SD1.5 inpainting UNet (9 input channels; SD1.5, SD2.x and
SDXL themselves are supported since [sdxl]). UNet + TAESD VAE only (no text encoder: ComfyUI loads a
checkpoint without one). Written into the host's models/checkpoints as dragfusion_test_*."""
import os

import harness

INPAINT_NAME = f"dragfusion_test_{os.getpid()}_tiny_sd15_inpaint.safetensors"

# SD1.5 layout of the tiny test checkpoint with the inpainting UNet's 9 input channels (latent, mask, masked latent)
INPAINT = dict(image_size=32, in_channels=9, model_channels=320, out_channels=4, use_spatial_transformer=True,
               legacy=False, num_res_blocks=[1], channel_mult=[1], num_heads=8, transformer_depth=[1],
               transformer_depth_output=[1, 1], context_dim=768, use_linear_in_transformer=False,
               transformer_depth_middle=-2)


def _init(module, torch):
    kinds = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.GroupNorm, torch.nn.LayerNorm, torch.nn.Embedding)
    for m in module.modules():
        for kind in kinds:
            if isinstance(m, kind):
                kind.reset_parameters(m)
                break


def build(config: dict) -> dict:
    import sys
    if harness.COMFYUI_DIR not in sys.path:
        sys.path.insert(0, harness.COMFYUI_DIR)
    from comfy.cli_args import args
    args.cpu = True
    import torch
    import comfy.taesd.taesd
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    torch.manual_seed(0)
    unet = UNetModel(**config)
    _init(unet, torch)
    sd = {"model.diffusion_model." + k: v for k, v in unet.state_dict().items()}
    vae = comfy.taesd.taesd.TAESD(latent_channels=4)
    _init(vae, torch)
    sd.update({"first_stage_model." + k: v for k, v in vae.state_dict().items()})
    return {k: v.detach().to(torch.float16 if v.is_floating_point() else v.dtype).contiguous() for k, v in sd.items()}


def write_all(directory: str) -> list:
    from safetensors.torch import save_file
    paths = []
    for name, cfg in ((INPAINT_NAME, INPAINT),):
        path = os.path.join(directory, name)
        if not os.path.exists(path):
            save_file(build(cfg), path + ".tmp", metadata={"format": "pt"})
            os.replace(path + ".tmp", path)
        paths.append(path)
    return paths
