"""Capture bytes per inversion step on SD1.5's, SD2.x's and SDXL's real layer layouts, for every layer preset.

    .venv/bin/python bench/capture_layout.py [--arch sd15|sd2|sdxl] [--size 512] [--json FILE]

Builds ComfyUI's own UNetModel with the architecture's full-size configuration on the ``meta`` device (structure only, no
weights, nothing computed) and counts what Inversion with Attention Capture stores for it: per captured
(step, layer) the layer's input, held once for q, k and v (a layer in both the capture layers and the KV
layers is stored once): with capture_precision 'int8 per channel' (the default) ``tokens x channels``
bytes plus one float32 scale per channel, with 'fp16' ``tokens x channels x 2``. The counting is the capture's own rule;
tests/host/test_capture.py checks it against a real capture's ``nbytes_per_step`` on the tiny checkpoint.
Also printed: the KV cache a KV-consistent regeneration holds on the sampling device (K and V of one
step, fp16, batch 2 for CFG; default KV layers = the capture layers), and the goals: [attentiondrag-fidelity] <= 12 MB
per step at 512 on SD1.5, [sdxl] <= 16 MB per step at 1024 on SDXL's default preset.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))

# SD1.5's UNet as ComfyUI detects it from a v1-5 checkpoint (comfy.model_detection): 4 levels of
# 320 / 640 / 1280 / 1280 channels, a transformer after every res block of the first three levels
SD15_UNET = dict(image_size=32, in_channels=4, out_channels=4, model_channels=320, num_res_blocks=[2, 2, 2, 2],
                 channel_mult=[1, 2, 4, 4], transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
                 transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], transformer_depth_middle=1,
                 num_heads=8, num_head_channels=-1, context_dim=768, use_linear_in_transformer=False, legacy=False,
                 use_spatial_transformer=True, adm_in_channels=None, use_temporal_attention=False)
# SD2.x: SD1.5's levels with 1024-wide context, linear projections and 64-channel heads
SD2_UNET = dict(SD15_UNET, num_heads=-1, num_head_channels=64, context_dim=1024, use_linear_in_transformer=True)
# SDXL base: 3 levels of 320 / 640 / 1280 channels, no transformer on the first (latent) level, 2 and 10 blocks deep
# on the others, 10 in the middle; the added conditioning (2816 = pooled 1280 + 6 x 256 size embeddings)
SDXL_UNET = dict(SD15_UNET, num_res_blocks=[2, 2, 2], channel_mult=[1, 2, 4], transformer_depth=[0, 0, 2, 2, 10, 10],
                 transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10], transformer_depth_middle=10, num_heads=-1,
                 num_head_channels=64, context_dim=2048, use_linear_in_transformer=True, adm_in_channels=2816,
                 num_classes="sequential")
ARCHS = {"sd15": ("SD1.5", SD15_UNET, 512, 12.0), "sd2": ("SD2.x", SD2_UNET, 768, None),
         "sdxl": ("SDXL", SDXL_UNET, 1024, 16.0)}

def full_size_unet(config: dict = SD15_UNET):
    import comfy.ops
    import torch
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    return UNetModel(**config, dtype=torch.float16, device="meta", operations=comfy.ops.disable_weight_init)


def sd15_unet():
    return full_size_unet(SD15_UNET)


def layer_table(unet, latent_hw) -> dict:
    """layer key -> (level, (h, w) token grid, channels) of every self-attention."""
    inv = sys.modules[[m for m in sys.modules if m.endswith("nodes.inversion")][0]]
    cap = sys.modules[[m for m in sys.modules if m.endswith("attention_patch.capture")][0]]
    out = {}
    for key, level in cap.self_attention_layers(unet):
        hw = cap.grid_at_level(latent_hw, level)
        out[key] = (level, hw, int(cap.attn1_module(unet, key).to_q.in_features))
    return out, inv


def step_bytes(table: dict, layers, precision: str = "int8") -> int:
    """Stored layer inputs of one captured step (each layer once), int8 + per-channel float32 scales or fp16."""
    def one(hw, c):
        return hw[0] * hw[1] * c + 4 * c if precision == "int8" else hw[0] * hw[1] * c * 2
    return sum(one(hw, c) for key, (_, hw, c) in table.items() if key in set(layers))


def kv_cache_bytes(table: dict, layers) -> int:
    """K and V of one step on the sampling device: fp16, batch 2 (CFG)."""
    return sum(2 * 2 * table[k][1][0] * table[k][1][1] * table[k][2] * 2 for k in layers)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", choices=sorted(ARCHS), default="sd15")
    ap.add_argument("--size", type=int, default=None, help="pixels (default: the architecture's native size)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    family, config, native, goal = ARCHS[a.arch]
    a.size = a.size or native
    import harness
    harness.load_host()
    unet = full_size_unet(config)
    latent_hw = (a.size // 8, a.size // 8)
    table, inv = layer_table(unet, latent_hw)
    available = [(k, v[0]) for k, v in table.items()]
    print(f"{family} layer layout at {a.size}x{a.size} (latent {latent_hw[1]}x{latent_hw[0]}): "
          f"{len(table)} self-attention layers\n")
    print("| layer | grid | channels | fp16 input MB |")
    print("|---|---|---|---|")
    for k, (lv, hw, c) in table.items():
        print(f"| {k} | {hw[0]}x{hw[1]} | {c} | {hw[0] * hw[1] * c * 2 / 1e6:.2f} |")
    rows = []
    kv_layers = inv.select_kv_layers(available, inv.KV_DRAGDIFFUSION, "", (), family=family)
    print(f"\nKV layers '{inv.KV_DRAGDIFFUSION}': {', '.join(kv_layers)}\n")
    print("| capture layers | layers | MB/step int8 (default; KV = same layers) | MB/step fp16 | int8 with KV on the decoder | "
          f"KV cache MB (same layers) | KV cache MB (decoder) | goal {f'<= {goal:g} MB (default)' if goal else '(none)'} |")
    print("|---|---|---|---|---|---|---|---|")
    for preset in inv.PRESETS[:-1]:
        layers = inv.select_layers(available, preset, "", family=family)
        i8, f16 = step_bytes(table, layers), step_bytes(table, layers, "fp16")
        both = step_bytes(table, tuple(layers) + tuple(kv_layers))
        same, dec = kv_cache_bytes(table, layers), kv_cache_bytes(table, kv_layers)
        rows.append(dict(preset=preset, layers=list(layers), int8_mb=i8 / 1e6, fp16_mb=f16 / 1e6, int8_decoder_kv_mb=both / 1e6,
                         kv_cache_mb=same / 1e6, kv_cache_decoder_mb=dec / 1e6))
        print(f"| {preset} | {len(layers)} | {i8 / 1e6:.2f} | {f16 / 1e6:.2f} | {both / 1e6:.2f} | {same / 1e6:.2f} | "
              f"{dec / 1e6:.2f} | {'' if goal is None or preset != inv.AUTO else 'met' if i8 / 1e6 <= goal else 'NOT met'} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(arch=a.arch, size=a.size, kv_layers=list(kv_layers), rows=rows), f, indent=1)
    return rows


if __name__ == "__main__":
    main()
