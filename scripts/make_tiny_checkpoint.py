"""Build the tiny SD1.5-architecture test checkpoint from ComfyUI's own classes.

Random weights from a fixed seed (the pictures it makes are noise): a one-level SD1.5 UNet
(320 channels, 8 heads, one self/cross-attention transformer per block, no middle block) that
ComfyUI still detects as SD15, the full-size CLIP-L text encoder, and a TAESD VAE. Written in
fp16 with the original LDM key layout; byte-identical run to run.

    python scripts/make_tiny_checkpoint.py --comfyui .host/ComfyUI --out model.safetensors
"""
import argparse
import os
import sys

SEED = 0

UNET_CONFIG = dict(
    image_size=32, in_channels=4, model_channels=320, out_channels=4, num_res_blocks=[1],
    channel_mult=[1], num_heads=8, use_spatial_transformer=True, transformer_depth=[1],
    transformer_depth_output=[1, 1], context_dim=768, use_linear_in_transformer=False,
    transformer_depth_middle=-2, legacy=False,
)


def init_weights(module, torch):
    """ComfyUI's layers skip weight initialisation: run torch's own reset on every layer."""
    kinds = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.GroupNorm, torch.nn.LayerNorm,
             torch.nn.Embedding)
    for m in module.modules():
        for kind in kinds:
            if isinstance(m, kind):
                kind.reset_parameters(m)
                break


def build_state_dict(torch):
    import comfy.sd1_clip
    import comfy.taesd.taesd
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    sd = {}
    torch.manual_seed(SEED)
    unet = UNetModel(**UNET_CONFIG)
    init_weights(unet, torch)
    # Keep the random network's noise prediction small, like a trained one's (std ~1).
    with torch.no_grad():
        unet.out[-1].weight.mul_(0.1)
    sd.update({"model.diffusion_model." + k: v for k, v in unet.state_dict().items()})

    torch.manual_seed(SEED + 1)
    clip = comfy.sd1_clip.SDClipModel(device="cpu", dtype=torch.float32)
    init_weights(clip, torch)
    sd.update({"cond_stage_model." + k: v for k, v in clip.state_dict().items()
               if k.startswith("transformer.")})

    torch.manual_seed(SEED + 2)
    vae = comfy.taesd.taesd.TAESD(latent_channels=4)
    init_weights(vae, torch)
    sd.update({"first_stage_model." + k: v for k, v in vae.state_dict().items()})

    out = {}
    for k, v in sd.items():
        if not torch.isfinite(v.float()).all():
            raise RuntimeError(f"non-finite tensor {k}")
        out[k] = v.detach().to(torch.float16 if v.is_floating_point() else v.dtype).contiguous()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--comfyui", required=True, help="ComfyUI folder")
    ap.add_argument("--out", required=True, help="output .safetensors path")
    a = ap.parse_args()
    sys.path.insert(0, os.path.abspath(a.comfyui))
    from comfy.cli_args import args
    args.cpu = True
    import torch
    from safetensors.torch import save_file

    sd = build_state_dict(torch)
    tmp = a.out + ".tmp"
    save_file(sd, tmp, metadata={"format": "pt"})
    os.replace(tmp, a.out)
    n = sum(v.numel() for k, v in sd.items() if k.startswith("model.diffusion_model."))
    print(f"wrote {a.out} ({os.path.getsize(a.out) / 2**20:.0f} MiB, UNet {n / 1e6:.1f} M parameters)")


if __name__ == "__main__":
    main()
