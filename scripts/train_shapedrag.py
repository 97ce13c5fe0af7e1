"""Train the ShapeDrag model: a TAESD-layout VAE and the tiny SD1.5-architecture UNet, on CPU.

Procedural scenes (bench/shapedrag/scenes.py: textured shapes on textured backgrounds, 128x128)
make drag quality measurable here, where no trained Stable Diffusion weights can be had:

1. VAE phase: ComfyUI's own TAESD (encoder + decoder, 4 latent channels) starts as an exact 8x8
   average-pool encoder / nearest-upsample decoder on three of its 64 channels (the other channels
   seeded random, every residual block's last conv zero, ~25 dB on the scenes before any training)
   and is trained on random 48x48 crops of fresh scenes (L1 + MSE, a small latent-size penalty, and
   noise on the decoder's input so it tolerates imperfect latents). Then it is frozen, and the
   scalar mean/std of its latents set the checkpoint's vae_scale / vae_shift so that ComfyUI's
   SD15 latent format (x 0.18215) hands the UNet unit-variance latents.
2. UNet phase: the reduced SD1.5 UNet of scripts/make_tiny_checkpoint.py (same config, same seeded
   start, so ComfyUI detects SD15), eps-prediction with SD1.5's discrete schedule (scaled-linear
   betas 0.00085..0.012, 1000 steps), on a pool of encoded scenes (16x16 latents) refreshed every
   step. 70 % of the timesteps are drawn from t < 650 (the drag edit inverts to about t = 500 and
   regenerates from there), 30 % (--high-t) from the full range (where a caption decides what is drawn).
   Every scene is captioned (bench/shapedrag/captions.py: each object's colour and shape, left to right,
   and the background, e.g. "a red circle and a blue diamond on a checkered background"); the frozen
   full-size CLIP-L of the tiny checkpoint (random weights) encodes the captions exactly as
   CLIPTextEncode does, when a scene enters the pool. 10 % of the samples see the empty caption (so CFG
   works) and 10 % (--prompt-frac) the generic scenes.PROMPT that the drag samples carry. The
   cross-attention key/value projections, which read the CLIP tokens, are trained too (--train-kv,
   default; --no-train-kv keeps them at the tiny checkpoint's values and out of the file).
   AdamW, fp32, warm-up then cosine decay over the time budget, EMA of the weights (exported).

--init FILE starts from an earlier model (e.g. the captionless one): its UNet, VAE and latent
normalisation are loaded, the VAE phase is skipped and the whole budget fine-tunes the UNet on the
captions (the file's metadata records the start under "init").

Output (fp16 safetensors, ~42 MB): the trained UNet tensors (cross-attention key/value included
with --train-kv) + the VAE, keyed as in an SD1.5 checkpoint (model.diffusion_model.*,
first_stage_model.taesd_encoder.* / taesd_decoder.* / vae_scale / vae_shift). The CLIP text encoder
(and, with --no-train-kv, the frozen cross-attention key/value projections) is NOT stored:
scripts/install_shapedrag.py (run by scripts/setup) adds what the file lacks from the tiny
checkpoint, which rebuilds it deterministically, and writes the host's
models/checkpoints/dragfusion_shapedrag.safetensors.

    python scripts/train_shapedrag.py --comfyui .host/ComfyUI                # 55 minutes, 2 threads
    python scripts/train_shapedrag.py --minutes 10
    python scripts/train_shapedrag.py --quick --out /tmp/q.safetensors     # ~1 minute, for tests
    python scripts/train_shapedrag.py --vae-steps 600 --unet-steps 1500    # exact step counts
    python scripts/train_shapedrag.py --init models/dragfusion_shapedrag.safetensors --out /tmp/c.safetensors

The time budget makes the step counts depend on the machine; the counts used are printed and
stored in the file's metadata, and --vae-steps / --unet-steps rerun them exactly (same seed,
same thread count).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "scripts"))
sys.path.insert(0, os.path.join(REPO, "bench"))

import numpy as np  # noqa: E402

from shapedrag import captions, scenes  # noqa: E402

SEED = 1234
IMAGE = 128
SD15_BETAS = (0.00085, 0.012)
CROSS_KV = ("attn2.to_k.", "attn2.to_v.")       # cross-attention K/V: trained (--train-kv) or the tiny checkpoint's
LATENT_SCALE_FACTOR = 0.18215                     # comfy.latent_formats.SD15


def log(msg: str):
    print(f"[train {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Clock:
    def __init__(self, minutes: float):
        self.t0 = time.time()
        self.budget = minutes * 60.0

    def elapsed(self) -> float:
        return time.time() - self.t0

    def left(self) -> float:
        return self.budget - self.elapsed()


def alphas_cumprod(torch):
    lo, hi = SD15_BETAS
    betas = torch.linspace(lo ** 0.5, hi ** 0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, 0).float()


def scene_batch(torch, seeds, crop: int | None = None, rng=None, crops_per_scene: int = 1):
    """[B, 3, H, W] in [0, 1] (the TAESD encoder's input range); optional random crops (at multiples of 8)."""
    imgs = scenes.render_batch(seeds, IMAGE)
    if crop:
        out = []
        for im in imgs:
            for _ in range(crops_per_scene):
                y, x = (rng.integers(0, (IMAGE - crop) // 8 + 1, 2) * 8)
                out.append(im[y:y + crop, x:x + crop])
        imgs = np.stack(out)
    return torch.from_numpy(np.ascontiguousarray(imgs)).permute(0, 3, 1, 2).contiguous()


class CaptionEncoder:
    """The tiny checkpoint's CLIP, loaded by ComfyUI, encodes captions as CLIPTextEncode does
    (several captions in one CLIP batch; every caption fits one 77-token chunk), with a cache."""

    def __init__(self, torch, tiny_sd):
        import comfy.sd
        sd = {k: v for k, v in tiny_sd.items() if k.startswith("cond_stage_model.") or k.startswith("model.diffusion_model.")}
        _, self.clip, _, _ = comfy.sd.load_state_dict_guess_config(sd, output_vae=False, output_clip=True, output_model=False)
        self.torch = torch
        self.cache = {}

    def __call__(self, texts):
        """-> float32 [len(texts), 77, 768]."""
        todo = sorted({t for t in texts if t not in self.cache})
        for i in range(0, len(todo), 32):
            part = todo[i:i + 32]
            toks = [self.clip.tokenize(t) for t in part]
            if any(len(v) != 1 for tk in toks for v in tk.values()):
                raise ValueError("a caption longer than one 77-token chunk")
            batch = {k: [tk[k][0] for tk in toks] for k in toks[0]}
            cond = self.clip.encode_from_tokens(batch).float().cpu()      # [1, 77 * n, 768]
            for j, t in enumerate(part):
                self.cache[t] = cond[0, 77 * j:77 * (j + 1)].clone()
        return self.torch.stack([self.cache[t] for t in texts])


def scene_captions(seeds):
    return [captions.caption(scenes.make_scene(int(s), IMAGE)) for s in seeds]


def lr_at(frac: float, base: float, warm: float, step: int, warm_steps: int) -> float:
    w = min(1.0, (step + 1) / warm_steps)
    return base * w * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


def pool_init(torch, vae):
    """TAESD as an exact 8x8 average-pool encoder / nearest-upsample decoder on channels 0-2 (RGB),
    the other 61 channels random (learnable detail), every block's last conv zero (identity blocks)."""
    enc, dec = vae.taesd_encoder, vae.taesd_decoder
    from comfy.taesd.taesd import Block
    with torch.no_grad():
        for m in list(enc) + list(dec):
            if isinstance(m, Block):
                m.conv[4].weight.zero_()
                m.conv[4].bias.zero_()
        def ident(conv, taps, scale=1.0, bias=None):
            w = conv.weight
            for c in range(3):
                w[c].zero_()
                for (i, j) in taps:
                    w[c, c, i, j] = scale / len(taps)
            if bias is not None and conv.bias is not None:
                conv.bias[:3] = bias
        # encoder
        ident(enc[0], [(1, 1)], bias=0.0)
        for k in (2, 6, 10):
            ident(enc[k], [(1, 1), (1, 2), (2, 1), (2, 2)])     # stride 2, padding 1: the 2x2 average
        last = enc[14]
        w3 = last.weight[3].clone()
        last.weight.zero_()
        last.weight[3] = 0.1 * w3                               # the 4th channel: small, free to learn
        for c in range(3):
            last.weight[c, c, 1, 1] = 2.0
        last.bias[:3] = -1.0
        last.bias[3] = 0.0
        # decoder
        first = dec[1]
        for c in range(3):
            first.weight[c].zero_()
            first.weight[c, c, 1, 1] = 1.0
        first.bias[:3] = 1.0
        for k in (7, 12, 17):
            ident(dec[k], [(1, 1)])
        fin = dec[19]
        fin.weight.zero_()
        for c in range(3):
            fin.weight[c, c, 1, 1] = 0.5
        fin.bias.zero_()


def train_vae(torch, vae, clock, args, rng):
    enc, dec = vae.taesd_encoder, vae.taesd_decoder
    params = list(enc.parameters()) + list(dec.parameters())
    opt = torch.optim.AdamW(params, lr=args.vae_lr, betas=(0.9, 0.99), weight_decay=0.0)
    budget = args.minutes * 60.0 * args.vae_frac
    t0 = clock.elapsed()
    step, avg, last = 0, None, time.time()
    seed_base = SEED * 1_000_000
    while True:
        if args.vae_steps is not None:
            if step >= args.vae_steps:
                break
            frac = step / max(1, args.vae_steps)
        else:
            frac = (clock.elapsed() - t0) / budget
            if frac >= 1.0:
                break
        for g in opt.param_groups:
            g["lr"] = lr_at(frac, args.vae_lr, 0, step, 20)
        n = max(1, args.vae_batch // 3)      # 3 crops per scene: rendering costs less than the network
        x = scene_batch(torch, range(seed_base + step * n, seed_base + (step + 1) * n), crop=args.vae_crop, rng=rng,
                        crops_per_scene=-(-args.vae_batch // n))[:args.vae_batch]
        z = enc(x)
        zd = z + 0.1 * torch.randn_like(z) * z.detach().std()
        y = dec(zd)
        rec = (y - x).abs().mean() + 0.5 * (y - x).pow(2).mean()
        loss = rec + 1e-3 * z.pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        avg = rec.item() if avg is None else 0.95 * avg + 0.05 * rec.item()
        if time.time() - last > args.log_every or step == 1:
            last = time.time()
            psnr = -10 * math.log10(max(1e-10, (y - x).pow(2).mean().item()))
            log(f"vae  step {step:5d}  {clock.elapsed() / 60:5.1f} min  rec {avg:.4f}  psnr {psnr:5.2f} dB  "
                f"|z| {z.detach().std():.2f}  lr {opt.param_groups[0]['lr']:.2e}")
    return step, (math.nan if avg is None else avg)


def encode_pool(torch, enc, n: int, seed0: int):
    """Raw latents of n fresh scenes (frozen encoder)."""
    with torch.no_grad():
        return torch.cat([enc(scene_batch(torch, range(seed0 + i, seed0 + min(n, i + 16)))) for i in range(0, n, 16)])


def train_unet(torch, unet, enc, encoder, clock, args, rng, norm, raw_pool, pool_seeds, next_seed):
    m, s = norm
    acp = alphas_cumprod(torch)
    if not args.train_kv:
        for n, p in unet.named_parameters():
            if any(f in n for f in CROSS_KV):
                p.requires_grad_(False)
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.99), weight_decay=0.01)
    ema = {n: p.detach().clone() for n, p in unet.named_parameters() if p.requires_grad}
    named = [(n, p) for n, p in unet.named_parameters() if p.requires_grad]

    pool = (raw_pool - m) / s                      # encoded scenes, refreshed every step
    ctx_pool = encoder(scene_captions(pool_seeds))  # their captions, encoded
    uncond = encoder([""])
    generic = encoder([scenes.PROMPT])             # the captionless prompt: "any scene"
    gen = torch.Generator().manual_seed(SEED + 7)
    t0 = clock.elapsed()
    budget = max(1.0, clock.budget - t0 - args.reserve)
    step, avg, last = 0, None, time.time()
    while True:
        if args.unet_steps is not None:
            if step >= args.unet_steps:
                break
            frac = step / max(1, args.unet_steps)
        else:
            frac = (clock.elapsed() - t0) / budget
            if frac >= 1.0:
                break
        for g in opt.param_groups:
            g["lr"] = lr_at(frac, args.lr, 0, step, args.warmup)
        if args.refresh:
            with torch.no_grad():
                new = (enc(scene_batch(torch, range(next_seed, next_seed + args.refresh))) - m) / s
            slots = torch.randint(0, args.pool, (args.refresh,), generator=gen)
            pool[slots] = new
            ctx_pool[slots] = encoder(scene_captions(range(next_seed, next_seed + args.refresh)))
            next_seed += args.refresh
        b = args.batch
        idx = torch.randint(0, args.pool, (b,), generator=gen)
        x0 = pool[idx]
        low = torch.rand(b, generator=gen) >= args.high_t
        t = torch.where(low, torch.randint(0, 650, (b,), generator=gen), torch.randint(0, 1000, (b,), generator=gen))
        a = acp[t].view(b, 1, 1, 1)
        eps = torch.randn(x0.shape, generator=gen)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
        u = torch.rand(b, generator=gen).view(b, 1, 1)
        ctx = torch.where(u < 0.1, uncond.expand(b, -1, -1),
                          torch.where(u < 0.1 + args.prompt_frac, generic.expand(b, -1, -1), ctx_pool[idx]))
        pred = unet(xt, timesteps=t.float(), context=ctx)
        loss = (pred - eps).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for n, p in named:
                ema[n].mul_(decay).add_(p.detach(), alpha=1 - decay)
        avg = loss.item() if avg is None else 0.98 * avg + 0.02 * loss.item()
        if time.time() - last > args.log_every or step == 1:
            last = time.time()
            sps = step * b / max(1e-6, clock.elapsed() - t0)
            log(f"unet step {step:5d}  {clock.elapsed() / 60:5.1f} min  loss {avg:.4f}  lr {opt.param_groups[0]['lr']:.2e}  "
                f"{sps:.1f} samples/s")
    with torch.no_grad():
        for n, p in named:
            p.copy_(ema[n])
    return step, (math.nan if avg is None else avg)


def export(torch, unet, vae, tiny_sd, norm, out_path, info, train_kv):
    from safetensors.torch import save_file
    m, s = norm
    sd = {}
    for k, v in unet.state_dict().items():
        key = "model.diffusion_model." + k
        if not train_kv and any(f in k for f in CROSS_KV):
            if not torch.equal(v.detach().to(torch.float16), tiny_sd[key]):
                raise RuntimeError(f"frozen tensor {key} differs from the tiny checkpoint's")
            continue   # added back from the tiny checkpoint by scripts/install_shapedrag.py
        sd[key] = v
    with torch.no_grad():
        vae.vae_scale.fill_(s * LATENT_SCALE_FACTOR)
        vae.vae_shift.fill_(-m / (s * LATENT_SCALE_FACTOR))
    for k, v in vae.state_dict().items():
        sd["first_stage_model." + k] = v
    out = {}
    for k, v in sd.items():
        v = v.detach().float()
        if not torch.isfinite(v).all():
            raise RuntimeError(f"non-finite tensor {k}")
        out[k] = v.to(torch.float16).contiguous()
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    tmp = out_path + ".tmp"
    save_file(out, tmp, metadata={"format": "pt", "dragfusion_shapedrag": json.dumps(info, sort_keys=True)})
    os.chmod(tmp, 0o644)
    os.replace(tmp, out_path)
    return os.path.getsize(out_path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--comfyui", default=os.environ.get("COMFYUI_DIR") or os.path.join(REPO, ".host", "ComfyUI"))
    ap.add_argument("--out", default=os.path.join(REPO, "models", "dragfusion_shapedrag.safetensors"))
    ap.add_argument("--minutes", type=float, default=55.0, help="wall-clock budget for everything (default 55)")
    ap.add_argument("--quick", action="store_true", help="3 VAE + 3 UNet steps on a tiny pool (tests, smoke checks)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--vae-frac", type=float, default=0.10, help="share of the budget for the VAE phase")
    ap.add_argument("--vae-steps", type=int, default=None, help="exact VAE steps (overrides the time budget)")
    ap.add_argument("--unet-steps", type=int, default=None, help="exact UNet steps (overrides the time budget)")
    ap.add_argument("--vae-batch", type=int, default=12)
    ap.add_argument("--vae-crop", type=int, default=48)
    ap.add_argument("--vae-lr", type=float, default=4e-4)
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--warmup", type=int, default=40)
    ap.add_argument("--ema", type=float, default=0.995)
    ap.add_argument("--pool", type=int, default=512)
    ap.add_argument("--refresh", type=int, default=2, help="pool entries replaced by new scenes per step")
    ap.add_argument("--high-t", type=float, default=0.3,
                    help="share of the timesteps drawn from the full range (the rest from t < 650)")
    ap.add_argument("--prompt-frac", type=float, default=0.1,
                    help="share of the samples captioned with the generic scenes.PROMPT instead (10 %% see the empty caption)")
    ap.add_argument("--train-kv", action=argparse.BooleanOptionalAction, default=True,
                    help="train the cross-attention key/value projections (stored in the file; default on)")
    ap.add_argument("--init", default=None,
                    help="start from a trained file (UNet + VAE, e.g. the captionless model): no VAE phase, "
                         "the whole budget fine-tunes the UNet on captions")
    ap.add_argument("--reserve", type=float, default=30.0, help="seconds kept for the export")
    ap.add_argument("--log-every", type=float, default=30.0, help="seconds between progress lines")
    args = ap.parse_args()
    if args.quick:
        args.vae_steps = 3 if args.vae_steps is None else args.vae_steps
        args.unet_steps = 3 if args.unet_steps is None else args.unet_steps
        args.pool, args.refresh, args.batch, args.vae_batch = 16, 1, 4, 4
        args.log_every = min(args.log_every, 5.0)
        args.reserve = 5.0

    sys.path.insert(0, os.path.abspath(args.comfyui))
    from comfy.cli_args import args as comfy_args
    comfy_args.cpu = True
    import torch
    torch.set_num_threads(args.threads)
    import comfy.model_management  # noqa: F401  (after args.cpu)
    import comfy.taesd.taesd
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    import make_tiny_checkpoint as tiny

    clock = Clock(args.minutes)
    rng = np.random.default_rng(SEED)
    log(f"budget {args.minutes:g} min, {args.threads} threads, image {IMAGE}x{IMAGE} -> latent {IMAGE // 8}x{IMAGE // 8}")

    tiny_sd = tiny.build_state_dict(torch)                    # the tiny checkpoint's exact tensors
    encoder = CaptionEncoder(torch, tiny_sd)
    example = scene_captions([SEED])[0]
    encoder([example, ""])
    log(f"captions encoded by the tiny checkpoint's CLIP, e.g. {example!r} ({clock.elapsed():.0f} s)")

    torch.manual_seed(SEED)
    vae = comfy.taesd.taesd.TAESD(latent_channels=4)
    tiny.init_weights(vae, torch)
    pool_init(torch, vae)
    unet = UNetModel(**tiny.UNET_CONFIG)
    start = {k: v for k, v in tiny_sd.items() if k.startswith("model.diffusion_model.")}
    init_info = {}
    if args.init:
        from safetensors import safe_open
        from safetensors.torch import load_file
        init = load_file(args.init)
        with safe_open(args.init, framework="pt") as f:
            init_info = json.loads((f.metadata() or {}).get("dragfusion_shapedrag", "{}"))
        start.update({k: v for k, v in init.items() if k.startswith("model.diffusion_model.")})
        vae.load_state_dict({k[len("first_stage_model."):]: v.float() for k, v in init.items()
                             if k.startswith("first_stage_model.")})
        log(f"starting from {args.init} (UNet + VAE; {init_info.get('unet_steps', '?')} UNet steps); no VAE phase")
    unet.load_state_dict({k[len("model.diffusion_model."):]: v.float() for k, v in start.items()})
    unet.train()

    vae_steps, vae_rec = (0, math.nan) if args.init else train_vae(torch, vae, clock, args, rng)
    vae.requires_grad_(False)
    vae.eval()
    pool_seed = SEED * 1_000_000 + 500_000
    raw = encode_pool(torch, vae.taesd_encoder, args.pool, pool_seed)
    m, s = raw.mean().item(), raw.std().item()
    if args.init:   # keep the latent normalisation the UNet was trained with
        s = vae.vae_scale.item() / LATENT_SCALE_FACTOR
        m = -vae.vae_shift.item() * vae.vae_scale.item()
    per_channel = [round(v, 3) for v in raw.mean((0, 2, 3)).tolist()]
    log(f"vae done: {vae_steps} steps, rec loss {vae_rec:.4f}; latents of {args.pool} scenes: mean {m:.3f} std {s:.3f} "
        f"(channel means {per_channel}) ({clock.elapsed() / 60:.1f} min)")

    unet_steps, unet_loss = train_unet(torch, unet, vae.taesd_encoder, encoder, clock, args, rng, (m, s),
                                       raw, range(pool_seed, pool_seed + args.pool), pool_seed + args.pool)
    info = dict(seed=SEED, image=IMAGE, captions="bench/shapedrag/captions.py", train_kv=args.train_kv,
                high_t=args.high_t, prompt_frac=args.prompt_frac, threads=args.threads, minutes=round(clock.elapsed() / 60, 2),
                vae_steps=vae_steps, vae_batch=args.vae_batch, vae_crop=args.vae_crop, vae_rec_loss=None if math.isnan(vae_rec) else round(vae_rec, 5),
                unet_steps=unet_steps, batch=args.batch, lr=args.lr, pool=args.pool, refresh=args.refresh,
                unet_loss=round(unet_loss, 5), latent_mean=round(m, 5), latent_std=round(s, 5), quick=args.quick)
    if args.init:
        info["init"] = dict(file=os.path.basename(args.init), **{k: init_info.get(k) for k in
                            ("minutes", "vae_steps", "unet_steps", "unet_loss", "vae_rec_loss")})
    size = export(torch, unet, vae, tiny_sd, (m, s), args.out, info, args.train_kv)
    log(f"wrote {args.out} ({size / 1e6:.1f} MB) after {clock.elapsed() / 60:.1f} min: "
        f"VAE {vae_steps} steps (rec {vae_rec:.4f}), UNet {unet_steps} steps (loss {unet_loss:.4f})")
    print(json.dumps(info, sort_keys=True))


if __name__ == "__main__":
    main()
