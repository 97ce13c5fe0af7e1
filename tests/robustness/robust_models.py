"""A tiny checkpoint of a family variant the pack does not support, built from ComfyUI's own classes, for
the "this model is not supported" cases: an SD1.5 inpainting UNet (9 input channels; SD1.5, SD2.x and
SDXL themselves are supported since [sdxl]). UNet + TAESD VAE only (no text encoder: ComfyUI loads a
checkpoint without one). Written into the host's models/checkpoints as dragfusion_test_*."""
import os
import sys

import harness

sys.path.insert(0, os.path.join(harness.REPO, "scripts"))
import make_tiny_checkpoint  # noqa: E402

INPAINT_NAME = f"dragfusion_test_{os.getpid()}_tiny_sd15_inpaint.safetensors"

# SD1.5 layout of the tiny test checkpoint with the inpainting UNet's 9 input channels (latent, mask, masked latent)
INPAINT = dict(make_tiny_checkpoint.UNET_CONFIG, in_channels=9)


def build(config: dict) -> dict:
    if harness.COMFYUI_DIR not in sys.path:
        sys.path.insert(0, harness.COMFYUI_DIR)
    from comfy.cli_args import args
    args.cpu = True
    import torch
    import comfy.taesd.taesd
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    torch.manual_seed(0)
    unet = UNetModel(**config)
    make_tiny_checkpoint.init_weights(unet, torch)
    sd = {"model.diffusion_model." + k: v for k, v in unet.state_dict().items()}
    vae = comfy.taesd.taesd.TAESD(latent_channels=4)
    make_tiny_checkpoint.init_weights(vae, torch)
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
