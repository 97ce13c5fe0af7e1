"""Tiny non-SD1.5 checkpoints (SD2-like, SDXL-like) built from ComfyUI's own classes, for the
"this model is not supported" cases. UNet + TAESD VAE only (no text encoder: ComfyUI loads a
checkpoint without one). Written into the host's models/checkpoints as dragfusion_test_*."""
import os

import harness

SD2_NAME = f"dragfusion_test_{os.getpid()}_tiny_sd2.safetensors"
SDXL_NAME = f"dragfusion_test_{os.getpid()}_tiny_sdxl.safetensors"

BASE = dict(image_size=32, in_channels=4, model_channels=320, out_channels=4, use_spatial_transformer=True,
            legacy=False)
# SD2.x: context 1024, linear proj_in/out, 64-channel heads; one level, no middle block.
SD2 = dict(BASE, num_res_blocks=[1], channel_mult=[1], num_head_channels=64, transformer_depth=[1],
           transformer_depth_output=[1, 1], context_dim=1024, use_linear_in_transformer=True,
           transformer_depth_middle=-2)
# SDXL family (Segmind Vega's detection keys: depth [0, 0, 1, 1, 2, 2], context 2048, adm 2816),
# all three levels at 320 channels so it stays small.
SDXL = dict(BASE, num_res_blocks=[2, 2, 2], channel_mult=[1, 1, 1], num_head_channels=64,
            transformer_depth=[0, 0, 1, 1, 2, 2], transformer_depth_output=[0, 0, 0, 1, 1, 1, 2, 2, 2],
            context_dim=2048, use_linear_in_transformer=True, transformer_depth_middle=-2,
            num_classes="sequential", adm_in_channels=2816)


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
    for name, cfg in ((SD2_NAME, SD2), (SDXL_NAME, SDXL)):
        path = os.path.join(directory, name)
        if not os.path.exists(path):
            save_file(build(cfg), path + ".tmp", metadata={"format": "pt"})
            os.replace(path + ".tmp", path)
        paths.append(path)
    return paths
