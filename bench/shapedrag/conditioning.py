"""ShapeDrag conditioning check: does the model draw what its caption names?

    .venv/bin/python bench/shapedrag/conditioning.py [--weights models/dragfusion_shapedrag.safetensors]
        [--n 48] [--seed 0] [--cfg 5] [--steps 20] [--out out/shapedrag_conditioning]

Everything runs in this process through the real ComfyUI host (tests/harness.py load_host): the
trained file is assembled with the tiny checkpoint's CLIP (scripts/install_shapedrag.py) into a
temporary folder registered as a checkpoints folder, loaded by CheckpointLoaderSimple; each caption
is encoded by CLIPTextEncode (negative: the empty caption), sampled from noise by KSampler
(EmptyLatentImage 128x128, euler, `normal` schedule, CFG `--cfg`) and decoded by VAEDecode.

The captions are those of `--n` held-out ShapeDrag scenes (captions.caption: 1-3 objects, colour and
shape each, and the background). captions.check scores every generated image against its caption:
per named object, whether an object of that colour and shape is there (`both`), of that colour
(`colour`), of that shape in any colour (`shape`); per image whether every named object is there
(`all`). The same captions are scored against the images drawn with the empty caption (cfg 1) as the
chance baseline, and against the rendered scenes themselves (the scorer's ceiling).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "tests"))
sys.path.insert(0, os.path.join(REPO, "bench"))
sys.path.insert(0, os.path.join(REPO, "scripts"))

import harness  # noqa: E402
from shapedrag import captions, scenes  # noqa: E402

WEIGHTS = os.path.join(REPO, "models", "dragfusion_shapedrag.safetensors")
SCENE_SEED0 = 7_000_000       # held out: training scenes use seeds from 1234 * 10**6


def core(nodes, name, **kw):
    cls = nodes.NODE_CLASS_MAPPINGS[name]
    return getattr(cls(), cls.FUNCTION)(**kw)


def held_out(n: int, seed: int, size: int = 128) -> list:
    return [scenes.make_scene(SCENE_SEED0 + seed * 10_000 + i, size) for i in range(n)]


def summarise(rows: list) -> dict:
    n_obj = sum(r["n"] for r in rows)
    return dict(images=len(rows), objects=n_obj,
                both=sum(r["both"] for r in rows) / max(1, n_obj),
                colour=sum(r["colour"] for r in rows) / max(1, n_obj),
                shape=sum(r["shape"] for r in rows) / max(1, n_obj),
                all=sum(r["all"] for r in rows) / max(1, len(rows)))


class Sampler:
    def __init__(self, weights: str = WEIGHTS, steps: int = 20, sampler: str = "euler", scheduler: str = "normal"):
        self.nodes = harness.load_host()
        import folder_paths
        import install_shapedrag
        ckpt_dir = os.path.join(harness.COMFYUI_DIR, "models", "checkpoints")
        tiny = os.path.join(ckpt_dir, harness.TINY_CKPT)
        if not os.path.isfile(tiny):
            raise FileNotFoundError(f"no tiny checkpoint {tiny}; run scripts/setup")
        self._tmp = tempfile.TemporaryDirectory(prefix="dragfusion_cond_")
        name = "dragfusion_shapedrag_conditioning.safetensors"
        install_shapedrag.assemble(weights, tiny, os.path.join(self._tmp.name, name))
        folder_paths.add_model_folder_path("checkpoints", self._tmp.name)
        self.model, self.clip, self.vae = core(self.nodes, "CheckpointLoaderSimple", ckpt_name=name)[:3]
        self.steps, self.sampler, self.scheduler = steps, sampler, scheduler
        self.neg = core(self.nodes, "CLIPTextEncode", clip=self.clip, text="")[0]

    def sample(self, text: str, seed: int, cfg: float, size: int = 128) -> np.ndarray:
        import torch
        with torch.inference_mode():
            return self._sample(text, seed, cfg, size)

    def _sample(self, text: str, seed: int, cfg: float, size: int) -> np.ndarray:
        pos = core(self.nodes, "CLIPTextEncode", clip=self.clip, text=text)[0]
        latent = core(self.nodes, "EmptyLatentImage", width=size, height=size, batch_size=1)[0]
        out = core(self.nodes, "KSampler", model=self.model, seed=seed, steps=self.steps, cfg=cfg,
                   sampler_name=self.sampler, scheduler=self.scheduler, positive=pos, negative=self.neg,
                   latent_image=latent, denoise=1.0)[0]
        img = core(self.nodes, "VAEDecode", samples=out, vae=self.vae)[0]
        return img[0].float().cpu().numpy()


def run(weights: str, n: int, seed: int, cfgs, steps: int, out: str | None, baseline: bool = True) -> dict:
    t0 = time.time()
    sampler = Sampler(weights, steps=steps)
    scs = held_out(n, seed)
    texts = [captions.caption(sc) for sc in scs]
    report = dict(weights=os.path.relpath(os.path.abspath(weights), REPO), n=n, seed=seed, steps=steps,
                  sampler=sampler.sampler, scheduler=sampler.scheduler, results={})
    rendered = [captions.check(scenes.render(sc), t) for sc, t in zip(scs, texts)]
    report["results"]["rendered scenes"] = summarise(rendered)
    images = {}
    runs = [(f"cfg {c:g}", c, None) for c in cfgs] + ([("empty caption (chance)", 1.0, "")] if baseline else [])
    for label, cfg, override in runs:
        rows, imgs = [], []
        for i, text in enumerate(texts):
            img = sampler.sample(text if override is None else override, seed * 10_000 + i, cfg)
            r = captions.check(img, text)
            rows.append(r)
            imgs.append(img)
            print(f"  [{label}] {i + 1}/{n}  {r['both']}/{r['n']}  {text}", flush=True)
        report["results"][label] = dict(summarise(rows), per_image=rows)
        images[label] = imgs
    report["seconds"] = round(time.time() - t0, 1)
    report["captions"] = texts
    if out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "conditioning.json"), "w") as f:
            json.dump(report, f, indent=1)
        from PIL import Image
        cols = [np.stack([scenes.render(sc) for sc in scs])] + [np.stack(images[k]) for k in images]
        grid = np.concatenate([np.concatenate(list(c), 0) for c in cols], 1)     # one column per run
        Image.fromarray((np.clip(grid, 0, 1) * 255).astype(np.uint8)).save(os.path.join(out, "conditioning.png"))
    return report


def table(report: dict) -> str:
    lines = ["| images from | colour + shape | colour | shape | every named object |", "|---|---|---|---|---|"]
    for k, r in report["results"].items():
        lines.append(f"| {k} | {r['both']:.1%} | {r['colour']:.1%} | {r['shape']:.1%} | {r['all']:.1%} |")
    first = next(iter(report["results"].values()))
    return "\n".join(lines) + f"\n\n({first['objects']} named objects in {first['images']} captions)"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default=WEIGHTS, help="the trained file (UNet + VAE) to check")
    ap.add_argument("--n", type=int, default=48, help="number of captions (held-out scenes)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cfg", default="5", help="comma list of CFG scales")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--no-baseline", action="store_true", help="skip the empty-caption chance baseline")
    ap.add_argument("--out", default=os.path.join(REPO, "out", "shapedrag_conditioning"))
    a = ap.parse_args(argv)
    cfgs = [float(c) for c in a.cfg.split(",") if c.strip()]
    report = run(a.weights, a.n, a.seed, cfgs, a.steps, a.out, baseline=not a.no_baseline)
    print(table(report))
    print(f"{report['seconds']:.0f} s; results: {a.out}/conditioning.json, conditioning.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
