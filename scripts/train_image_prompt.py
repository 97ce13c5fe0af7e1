"""Train VersaFusion's image prompt encoder (linear + QFormer) and the to_k_ip / to_v_ip projections.

The UNet, the VAE, the CLIP text encoder and the CLIP vision encoder stay frozen; the loss is the
noise-prediction L2 of Eq. 12, ||eps - eps_theta(z_t, c, c_im)||^2, with the image condition dropped
(replaced by a black image's CLIP tokens, as the node's unconditional tokens are made) with
probability --drop-image, the caption with --drop-text. Adam, the paper's lr 1e-5 by default.
The result is a .safetensors in the pack's own layout, which the Image Prompt Encoder node loads.

    .venv/bin/python scripts/train_image_prompt.py --images DIR --checkpoint v1-5.safetensors \\
        --clip-vision CLIP-ViT-H-14.safetensors --steps 100000 --name my_image_prompt.safetensors

Images: .png/.jpg/.jpeg/.webp in DIR (recursively), center-cropped to --resolution; a caption is read
from a .txt file of the same name when present (else --caption). Checkpoint and CLIP vision are
names in ComfyUI's models/checkpoints and models/clip_vision, or paths; only .safetensors files are
read. A CLIP vision model of a size ComfyUI does not detect can be given with --clip-vision-config.
Progress is printed every --log-every steps; --log-json writes the loss curve; Ctrl-C saves and stops.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp")
SAFE_EXTS = (".safetensors", ".sft")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", required=True, help="folder of training images (optional same-name .txt captions)")
    p.add_argument("--checkpoint", required=True, help="SD1.5-family .safetensors (name in models/checkpoints or a path)")
    p.add_argument("--clip-vision", required=True, help="CLIP vision .safetensors (name in models/clip_vision or a path)")
    p.add_argument("--clip-vision-config", default=None, help="JSON config for a CLIP vision model ComfyUI does not detect")
    p.add_argument("--comfyui", default=os.environ.get("COMFYUI_DIR") or os.path.join(REPO, ".host", "ComfyUI"))
    p.add_argument("--name", default="dragfusion_image_prompt.safetensors",
                   help="output file name in models/dragfusion_image_prompt/")
    p.add_argument("--out", default=None, help="output path (overrides --name)")
    p.add_argument("--init", default=None, help="resume from weights in the pack's or the public layout")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--queries", type=int, default=64)
    p.add_argument("--depth", type=int, default=8)
    p.add_argument("--dim", type=int, default=768, help="QFormer width")
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--drop-image", type=float, default=0.05, help="probability of a black image instead of the image")
    p.add_argument("--drop-text", type=float, default=0.05, help="probability of an empty caption")
    p.add_argument("--caption", default="", help="caption for images without a .txt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--log-json", default=None, help="write {'losses': [...], 'eval_before', 'eval_after'} here")
    p.add_argument("--eval-images", type=int, default=4, help="images in the fixed evaluation batch (0: none)")
    p.add_argument("--cpu", action="store_true", help="run on the CPU")
    args = p.parse_args(argv)
    if args.steps < 1 or args.batch_size < 1 or args.lr <= 0 or args.resolution < 64 or args.resolution % 8:
        p.error("--steps and --batch-size must be >= 1, --lr > 0, --resolution a multiple of 8 and >= 64")
    if not (0 <= args.drop_image <= 1 and 0 <= args.drop_text <= 1):
        p.error("--drop-image and --drop-text are probabilities in 0..1")
    return args


def setup_comfy(comfyui_dir: str, cpu: bool):
    """Import the real ComfyUI (no custom nodes needed) and the pack as package ``dragfusion``."""
    if "comfy.model_management" not in sys.modules:
        if not os.path.isfile(os.path.join(comfyui_dir, "main.py")):
            sys.exit(f"no ComfyUI at {comfyui_dir}: run scripts/setup or pass --comfyui")
        sys.path.insert(0, comfyui_dir)
        from comfy.cli_args import args as comfy_args
        if cpu:
            comfy_args.cpu = True
    elif comfyui_dir not in sys.path:
        sys.path.insert(0, comfyui_dir)
    sys.path.insert(0, os.path.join(REPO, "tests"))
    import harness
    return harness.import_pack()


def find_file(folder: str, name: str, what: str) -> str:
    import folder_paths
    path = name if os.path.isfile(name) else folder_paths.get_full_path(folder, name)
    if path is None:
        sys.exit(f"{what} {name!r} not found (neither a path nor a file in models/{folder}/)")
    if not path.lower().endswith(SAFE_EXTS):
        sys.exit(f"{what} {name!r}: only .safetensors files are read")
    return path


def load_frozen(args):
    import comfy.clip_vision
    import comfy.sd
    import comfy.utils
    sd = comfy.utils.load_torch_file(find_file("checkpoints", args.checkpoint, "checkpoint"), safe_load=True)
    model, clip, vae = comfy.sd.load_state_dict_guess_config(sd, output_vae=True, output_clip=True)[:3]
    del sd
    cv_sd = comfy.utils.load_torch_file(find_file("clip_vision", args.clip_vision, "CLIP vision"), safe_load=True)
    if args.clip_vision_config:
        clip_vision = comfy.clip_vision.ClipVisionModel(args.clip_vision_config)
        missing, _ = clip_vision.load_sd(cv_sd)
        if missing:
            sys.exit(f"CLIP vision weights do not fit {args.clip_vision_config}: missing {missing[:8]}")
    else:
        openclip = "visual.transformer.resblocks.0.attn.in_proj_weight" in cv_sd
        clip_vision = comfy.clip_vision.load_clipvision_from_sd(cv_sd, prefix="visual." if openclip else "",
                                                                convert_keys=openclip)
        if clip_vision is None:
            sys.exit("CLIP vision model not recognised: pass --clip-vision-config")
    return model, clip, vae, clip_vision


def load_images(folder: str, resolution: int, default_caption: str):
    import numpy as np
    import torch
    from PIL import Image
    files = []
    for root, _, names in os.walk(folder):
        files += [os.path.join(root, n) for n in names if n.lower().endswith(IMAGE_EXTS)]
    if not files:
        sys.exit(f"no images ({', '.join(IMAGE_EXTS)}) in {folder}")
    items = []
    for path in sorted(files):
        with Image.open(path) as im:
            im = im.convert("RGB")
            s = resolution / min(im.size)
            im = im.resize((max(resolution, round(im.width * s)), max(resolution, round(im.height * s))), Image.BICUBIC)
            left, top = (im.width - resolution) // 2, (im.height - resolution) // 2
            im = im.crop((left, top, left + resolution, top + resolution))
            pixels = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0)
        txt = os.path.splitext(path)[0] + ".txt"
        caption = default_caption
        if os.path.isfile(txt):
            with open(txt, encoding="utf-8") as f:
                caption = f.read().strip()
        items.append((pixels, caption))
    return items


class TrainableImageAttn2:
    """attn2 replace used while training: Eq. 11 with the adapter's live (differentiable) tokens."""

    def __init__(self, layer, holder: dict, decoupled_attention, attention):
        self.layer, self.holder = layer, holder
        self.decoupled_attention, self.attention = decoupled_attention, attention

    def __deepcopy__(self, memo):
        return self

    def __call__(self, q, k, v, extra_options):
        tokens = self.holder["tokens"].to(q.dtype)
        k_img = self.layer.to_k_ip(tokens.float()).to(q.dtype)
        v_img = self.layer.to_v_ip(tokens.float()).to(q.dtype)
        attn = lambda q_, k_, v_, h: self.attention(q_, k_, v_, h, transformer_options=extra_options)
        return self.decoupled_attention(q, k, v, k_img, v_img, extra_options["n_heads"], 1.0, attention=attn)


def train(args) -> dict:
    pack = setup_comfy(args.comfyui, args.cpu)
    import importlib

    import torch
    from safetensors.torch import save_file

    import comfy.model_management as mm
    from comfy.ldm.modules.attention import optimized_attention

    enc_mod = importlib.import_module(pack.__name__ + ".guidance.image_prompt_encoder")
    w_mod = importlib.import_module(pack.__name__ + ".guidance.image_prompt_weights")
    patch_mod = importlib.import_module(pack.__name__ + ".attention_patch.image_prompt")

    random.seed(args.seed)
    torch.manual_seed(args.seed)
    model, clip, vae, clip_vision = load_frozen(args)
    items = load_images(args.images, args.resolution, args.caption)
    device = mm.get_torch_device()
    print(f"{len(items)} images, device {device}", flush=True)

    # frozen encodings, computed once per image
    with torch.no_grad():
        latents = [model.model.process_latent_in(vae.encode(px[None])).float().cpu() for px, _ in items]
        image_tokens = [clip_vision.encode_image(px[None])["penultimate_hidden_states"].float().cpu() for px, _ in items]
        black = clip_vision.encode_image(torch.zeros(1, 224, 224, 3))["penultimate_hidden_states"].float().cpu()
        text_cache = {}

        def text(caption: str):
            if caption not in text_cache:
                text_cache[caption] = clip.encode_from_tokens(clip.tokenize(caption)).float().cpu()
            return text_cache[caption]

    layers = patch_mod.cross_attention_modules(model)
    context_dim = layers[0][1].to_k.in_features
    if args.init:
        import comfy.utils
        adapter = w_mod.adapter_from_state_dict(comfy.utils.load_torch_file(find_file(
            "dragfusion_image_prompt", args.init, "init weights") if not os.path.isfile(args.init) else args.init,
            safe_load=True), "train_image_prompt", "--init")
    else:
        cfg = enc_mod.EncoderConfig(clip_dim=black.shape[-1], dim=args.dim, depth=args.depth, heads=args.heads,
                                    num_queries=args.queries, out_dim=context_dim)
        adapter = enc_mod.ImagePromptAdapter(cfg, [a.to_q.out_features for _, a in layers])
        with torch.no_grad():  # start K'', V'' from the text projections, as IP-Adapter does
            for proj, (_, a) in zip(adapter.layers, layers):
                proj.to_k_ip.weight.copy_(a.to_k.weight.float())
                proj.to_v_ip.weight.copy_(a.to_v.weight.float())
    if len(adapter.layers) != len(layers) or adapter.cfg.clip_dim != black.shape[-1]:
        sys.exit("the --init weights do not fit this checkpoint / CLIP vision model")
    print(f"encoder parameters: {enc_mod.count_parameters(adapter.encoder):,}; "
          f"projections: {enc_mod.count_parameters(adapter.layers):,}", flush=True)

    m = model.clone()
    holder = {}
    for (key, _), proj in zip(layers, adapter.layers):
        m.set_model_attn2_replace(TrainableImageAttn2(proj, holder, enc_mod.decoupled_attention, optimized_attention), *key)
    mm.load_models_gpu([m])
    unet = m.model
    unet.requires_grad_(False)
    adapter.to(device).train()
    opt = torch.optim.Adam(adapter.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    sampling = unet.model_sampling

    def loss_on(idx, t, noise, drop_img, drop_txt):
        x0 = torch.cat([latents[i] for i in idx]).to(device)
        clip_tok = torch.cat([black if d else image_tokens[i] for i, d in zip(idx, drop_img)]).to(device)
        ctx = torch.cat([text("" if d else items[i][1]) for i, d in zip(idx, drop_txt)]).to(device)
        sigma = sampling.sigma(t.to(sampling.sigmas.device)).to(device)
        x_t = sampling.noise_scaling(sigma, noise.to(device), x0)
        holder["tokens"] = adapter.encoder(clip_tok)
        to = dict(m.model_options["transformer_options"])
        to["cond_or_uncond"] = [0]
        to["sigmas"] = sigma
        denoised = unet.apply_model(x_t, sigma, c_crossattn=ctx.to(unet.get_dtype()), transformer_options=to)
        eps = (x_t - denoised.float()) / sigma.view(-1, 1, 1, 1)
        return torch.nn.functional.mse_loss(eps, noise.to(device))

    n_eval = min(args.eval_images, len(items))
    gen = torch.Generator().manual_seed(args.seed + 1)
    eval_idx = list(range(n_eval))
    eval_t = torch.randint(0, 1000, (n_eval,), generator=gen).float()
    eval_noise = torch.randn((n_eval,) + tuple(latents[0].shape[1:]), generator=gen)

    def evaluate():
        if not n_eval:
            return None
        adapter.eval()
        with torch.no_grad():
            v = float(loss_on(eval_idx, eval_t, eval_noise, [False] * n_eval, [False] * n_eval))
        adapter.train()
        return v

    eval_before = evaluate()
    if eval_before is not None:
        print(f"eval loss before: {eval_before:.5f}", flush=True)
    losses, t0, step = [], time.time(), 0
    try:
        for step in range(1, args.steps + 1):
            idx = [random.randrange(len(items)) for _ in range(args.batch_size)]
            t = torch.randint(0, 1000, (args.batch_size,)).float()
            noise = torch.randn((args.batch_size,) + tuple(latents[0].shape[1:]))
            drop_img = [random.random() < args.drop_image for _ in idx]
            drop_txt = [random.random() < args.drop_text for _ in idx]
            loss = loss_on(idx, t, noise, drop_img, drop_txt)
            value = loss.item()
            if not math.isfinite(value):
                sys.exit(f"loss became {value} at step {step}: lower --lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(value)
            if step % args.log_every == 0 or step == args.steps:
                recent = losses[-args.log_every:]
                print(f"step {step}/{args.steps}  loss {losses[-1]:.5f}  mean(last {len(recent)}) "
                      f"{sum(recent) / len(recent):.5f}  {time.time() - t0:.1f}s", flush=True)
    except KeyboardInterrupt:
        print(f"interrupted at step {step}: saving what was trained", flush=True)
    eval_after = evaluate()
    if eval_after is not None:
        print(f"eval loss after: {eval_after:.5f} (before {eval_before:.5f})", flush=True)

    out = args.out
    if out is None:
        import folder_paths
        out = os.path.join(folder_paths.models_dir, "dragfusion_image_prompt", args.name)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    adapter.eval().cpu()
    meta = {"format": "dragfusion_image_prompt", "steps": str(len(losses)),
            "config": json.dumps(adapter.cfg.__dict__), "lr": str(args.lr)}
    save_file(w_mod.adapter_state_dict(adapter, "dragfusion"), out, metadata=meta)
    print(f"saved {out}", flush=True)
    result = {"losses": losses, "eval_before": eval_before, "eval_after": eval_after, "out": out,
              "encoder_parameters": enc_mod.count_parameters(adapter.encoder)}
    if args.log_json:
        with open(args.log_json, "w") as f:
            json.dump(result, f, indent=1)
    return result


def main(argv=None):
    return train(parse_args(argv))


if __name__ == "__main__":
    main()
