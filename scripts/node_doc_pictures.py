"""Remake the pictures of the node help pages (js/docs/img/*.png) from real outputs of the pack's nodes.

    .venv/bin/python scripts/node_doc_pictures.py              # every picture (about a minute on 2 idle CPU cores)
    .venv/bin/python scripts/node_doc_pictures.py --list       # their names
    .venv/bin/python scripts/node_doc_pictures.py pni dual     # some of them

The real ComfyUI host is imported in-process on the CPU (tests/harness.py ``load_host``) and the pack's nodes
run as the executor runs them. Models: the trained ShapeDrag checkpoint (``dragfusion_shapedrag.safetensors``,
procedural shapes at 128x128; assembled by scripts/setup) on one ShapeDrag scene, and no model at all for the
point nodes, which draw on DragBench's dog photo (the repository's data/). ``side_by_side.png`` is
docs/demo_shapedrag.png (the Side by Side node's output in scripts/demo) made smaller, ``drag_points_canvas.png`` a crop of the
browser test's screenshot of the canvas in frontend 1.32.9. The image-prompt nodes have no picture-making
model here (no CLIP vision weights), so theirs is a diagram drawn with PIL.

Every PNG is kept under MAX_BYTES (quantised to fewer colours when needed). Nothing is downloaded.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time

import numpy as np
from PIL import Image, ImageDraw, ImageFont

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))
sys.path.insert(0, os.path.join(REPO, "bench"))
sys.path.insert(0, os.path.join(REPO, "scripts"))
import harness  # noqa: E402

OUT = os.path.join(REPO, "js", "docs", "img")
MAX_BYTES = 80_000
DOG = "dragfusion_data/dragbench-dev/animals/JH_2023-09-14-1820-16"   # DragBench's dog (the node's default)
SCREENSHOT = os.path.join(REPO, "tests", "browser", "screenshots", "drag_points-1.32.9-classic.png")
CANVAS_BOX = (318, 104, 712, 616)          # the Drag Points node in that 1400x950 screenshot
DEMO = os.path.join(REPO, "docs", "demo_shapedrag.png")
SHAPE_SEED, SHAPE_INDEX = 0, 3             # the ShapeDrag scene (bench/shapedrag/dataset.make_sample)
SHAPE_DIR = "dragfusion_docs"              # where that scene is written, inside ComfyUI's input folder
SHAPE_PANEL = 150                          # ShapeDrag panels (128 px images, shown a little larger)
BG, FG, DIM = (32, 32, 36), (235, 235, 235), (150, 150, 160)


# ----------------------------------------------------------------------------------------- drawing
def font(size: int = 13):
    return ImageFont.load_default(size=size)


def to_pil(image) -> Image.Image:
    """IMAGE [B, H, W, 3] (first of the batch) or [H, W, 3] float 0..1 -> RGB."""
    a = image.detach().float().cpu().numpy()
    a = a[0] if a.ndim == 4 else a
    return Image.fromarray((np.clip(a[..., :3], 0, 1) * 255 + 0.5).astype(np.uint8))


def mask_pil(mask) -> Image.Image:
    a = mask.detach().float().cpu().numpy()
    a = a[0] if a.ndim == 3 else a
    return Image.fromarray((np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)).convert("RGB")


def heat(values: np.ndarray) -> Image.Image:
    """[h, w] >= 0 -> black -> red -> yellow -> white, scaled to the maximum."""
    v = values / max(float(values.max()), 1e-12)
    r = np.clip(3 * v, 0, 1)
    g = np.clip(3 * v - 1, 0, 1)
    b = np.clip(3 * v - 2, 0, 1)
    return Image.fromarray((np.stack([r, g, b], -1) * 255 + 0.5).astype(np.uint8))


def latent_pil(z) -> Image.Image:
    """The first three channels of a latent [1, 4, h, w], each scaled to its own range (a look at the noise)."""
    a = z[0, :3].detach().float().cpu().numpy()
    lo, hi = a.min(axis=(1, 2), keepdims=True), a.max(axis=(1, 2), keepdims=True)
    a = (a - lo) / np.maximum(hi - lo, 1e-6)
    return Image.fromarray((a.transpose(1, 2, 0) * 255 + 0.5).astype(np.uint8))


def mark(img: Image.Image, points, radius: int = 3) -> Image.Image:
    """Handle (red) -> target (blue) arrows, for panels drawn here rather than by a node."""
    img = img.copy()
    d = ImageDraw.Draw(img)
    for (hx, hy), (tx, ty) in points.pairs:
        d.line([(hx, hy), (tx, ty)], fill=(255, 255, 255), width=2)
        d.ellipse([hx - radius, hy - radius, hx + radius, hy + radius], fill=(230, 40, 40))
        d.ellipse([tx - radius, ty - radius, tx + radius, ty + radius], fill=(40, 90, 240))
    return img


def strip(panels, size, caption: str = "", label_size: int = 12, gap: int = 6) -> Image.Image:
    """[(image, label)] -> one row of panels (size: an int for squares, or (width, height)), each image fitted
    into its panel, labels above (none when label_size is 0), an optional caption below."""
    pw, ph = (size, size) if isinstance(size, int) else size
    f, fc = font(max(label_size, 1)), font(12)
    label_h = label_size + 8 if label_size else gap
    cap_lines = wrap(caption, fc, len(panels) * (pw + gap) - gap) if caption else []
    w = len(panels) * (pw + gap) + gap
    h = label_h + ph + gap + (len(cap_lines) * 15 + 4 if cap_lines else 0)
    out = Image.new("RGB", (w, h), BG)
    d = ImageDraw.Draw(out)
    for i, (img, label) in enumerate(panels):
        x = gap + i * (pw + gap)
        im = img.convert("RGB")
        scale = min(pw / im.width, ph / im.height)
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))),
                       Image.NEAREST if scale >= 2 else Image.LANCZOS)
        out.paste(im, (x + (pw - im.width) // 2, label_h + (ph - im.height) // 2))
        if label_size:
            d.text((x + pw // 2, 3), label, fill=FG, font=f, anchor="ma")
    for j, line in enumerate(cap_lines):
        d.text((gap, label_h + ph + gap + j * 15), line, fill=DIM, font=fc)
    return out


def wrap(text: str, f, width: int) -> list:
    lines, line = [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if f.getlength(trial) <= width or not line:
            line = trial
        else:
            lines.append(line)
            line = word
    return lines + ([line] if line else [])


def save(img: Image.Image, name: str) -> str:
    """PNG under MAX_BYTES: full colour if it fits, else quantised to 256, 128, 64 or 32 colours."""
    os.makedirs(OUT, exist_ok=True)
    for colors in (None, 256, 128, 64, 32):
        im = img if colors is None else img.quantize(colors=colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        buf = io.BytesIO()
        im.save(buf, "PNG", optimize=True)
        if buf.tell() <= MAX_BYTES:
            break
    else:
        raise RuntimeError(f"{name}: {buf.tell()} bytes even at 32 colours; make the picture smaller")
    path = os.path.join(OUT, name)
    with open(path, "wb") as fh:
        fh.write(buf.getvalue())
    print(f"  {os.path.relpath(path, REPO)}: {img.width}x{img.height}, {buf.tell() // 1024} KB"
          f"{'' if colors is None else f', {colors} colours'}")
    return path


# ----------------------------------------------------------------------------------------- running nodes
def call(node_id: str, **inputs):
    """One node of the real host (V3 as harness.run_node, V1 through its FUNCTION) -> its outputs."""
    import torch
    nodes = harness.load_host()
    cls = nodes.NODE_CLASS_MAPPINGS[node_id]
    if hasattr(cls, "FUNCTION"):
        with torch.inference_mode():
            return getattr(cls(), cls.FUNCTION)(**inputs)
    return harness.run_node(node_id, **inputs).result


class Shapes:
    """The ShapeDrag model and one ShapeDrag scene, loaded once."""

    def __init__(self):
        harness.load_host()
        import comfy.utils
        import folder_paths
        from shapedrag import dataset, evaluate
        comfy.utils.PROGRESS_BAR_ENABLED = False     # no sampler progress bars in this script's output
        evaluate.ensure_checkpoint()
        self.model, self.clip, self.vae = call("CheckpointLoaderSimple", ckpt_name=evaluate.CKPT)[:3]
        rel = f"{SHAPE_DIR}/shape_{SHAPE_SEED}_{SHAPE_INDEX}"
        dataset.write_sample(dataset.make_sample(SHAPE_SEED, SHAPE_INDEX),
                             os.path.join(folder_paths.get_input_directory(), *rel.split("/")))
        self.image, self.points, self.mask, prompt = call("DragFusionLoadDragBenchSample", sample=rel, size="original")
        self.pos = call("CLIPTextEncode", clip=self.clip, text=prompt)[0]
        self.neg = call("ConditioningZeroOut", conditioning=self.pos)[0]
        self.latent = call("VAEEncode", pixels=self.image, vae=self.vae)[0]
        self._inv = self._pni = None

    def decode(self, latent) -> Image.Image:
        return to_pil(call("VAEDecode", samples=latent, vae=self.vae)[0])

    def inversion(self):
        """Inversion with Attention Capture: 10 steps, 'simple', edit at 5, no CFG, values kept (as evaluate.py)."""
        if self._inv is None:
            self._inv = call("DragFusionInvertCapture", model=self.model, latent=self.latent, steps=10, edit_step=5,
                             scheduler="simple", cfg=1.0, layers="latent resolution", capture_values=True,
                             positive=self.pos, points=self.points)
        return self._inv

    def pni(self):
        """PNI Invert: 20 steps ddim_uniform (as the dual-branch example workflows) -> (INVERSION, z_T, sigmas)."""
        if self._pni is None:
            self._pni = call("DragFusionPNIInvert", model=self.model, latent=self.latent, source=self.pos, steps=20,
                             cfg=1.0, lam=0.02, prox="L1", eta=0.1, guidance_until=20, scheduler="ddim_uniform")
        return self._pni

    def regenerate(self, latent, model=None) -> Image.Image:
        out = call("KSamplerAdvanced", model=model or self.model, add_noise="disable", noise_seed=0, steps=10, cfg=1.0,
                   sampler_name="euler", scheduler="simple", positive=self.pos, negative=self.neg, latent_image=latent,
                   start_at_step=5, end_at_step=10000, return_with_leftover_noise="disable")[0]
        return self.decode(out)

    def edit(self, mask, movement="rigid", fill="attention", kv=True, strength=1.0):
        """-> (result, blank_mask): SemanticMove + AttentionInterpolate + KV consistency + KSamplerAdvanced."""
        z, cap = self.inversion()
        moved, blank = call("DragFusionSemanticMove", capture=cap, latent=z, points=self.points, mask=mask,
                            movement_mode=movement)
        filled = call("DragFusionAttentionInterpolate", capture=cap, latent=moved, mask=blank, fill=fill, mode="drag",
                      steps="all", seed=0)[0]
        model = call("DragFusionKVConsistency", model=self.model, capture=cap, enabled=kv, strength=strength)[0]
        return self.regenerate(filled, model), blank

    @property
    def marked(self) -> Image.Image:
        return mark(to_pil(self.image), self.points)


_SHAPES = []


def shapes() -> Shapes:
    if not _SHAPES:
        _SHAPES.append(Shapes())
    return _SHAPES[0]


def dog(size: str = "fit 256 (multiple of 8)"):
    harness.ensure_data_link()
    harness.load_host()
    return call("DragFusionLoadDragBenchSample", sample=DOG, size=size)


# ----------------------------------------------------------------------------------------- the pictures
def pic_canvas():
    """Drag Points: the canvas widget, cropped from the browser test's screenshot (frontend 1.32.9)."""
    shot = Image.open(SCREENSHOT).convert("RGB")
    crop = shot.crop(CANVAS_BOX)
    crop = crop.resize((300, round(300 * crop.height / crop.width)), Image.LANCZOS)
    save(crop, "drag_points_canvas.png")


def pic_dragbench():
    image, points, mask, prompt = dog()
    preview = call("DragFusionPreviewDragPoints", image=image, points=points, mask=mask, mask_opacity=0.4)[0]
    save(strip([(to_pil(image), "image"), (mask_pil(mask), "mask"), (to_pil(preview), "points (Preview Drag Points)")],
               200, caption=f'prompt: "{prompt}". DragBench sample JH_2023-09-14-1820-16 at size "fit 256".'),
         "load_dragbench_sample.png")


def pic_preview():
    image, points, mask, _ = dog()
    preview = call("DragFusionPreviewDragPoints", image=image, points=points, mask=mask, mask_opacity=0.4)[0]
    save(strip([(to_pil(preview), "mask_opacity 0.4"),
                (to_pil(call("DragFusionPreviewDragPoints", image=image, points=points)[0]), "no mask")], 240),
         "preview_drag_points.png")


def pic_points_json():
    image, _, _, _ = dog()
    h, w = int(image.shape[1]), int(image.shape[2])
    text = json.dumps({"version": 1, "width": w, "height": h,
                       "pairs": [{"handle": [165, 68], "target": [109, 68]}, {"handle": [128, 176], "target": [128, 140]}]})
    points = call("DragFusionPointsJSON", image=image, points_json=text, allow_empty=False)[0]
    preview = to_pil(call("DragFusionPreviewDragPoints", image=image, points=points)[0])
    data = json.loads(text)
    pairs = ",\n".join(f'  {{"handle": {p["handle"]},\n   "target": {p["target"]}}}' for p in data["pairs"])
    pretty = f'{{"version": 1,\n "width": {w}, "height": {h},\n "pairs": [\n{pairs}]}}'
    left = Image.new("RGB", (240, 240), BG)
    d = ImageDraw.Draw(left)
    d.multiline_text((8, 40), pretty, fill=FG, font=font(13), spacing=5)
    save(strip([(left, "points_json"), (preview, "the parsed DRAG_POINTS, drawn")], 240,
               caption="Coordinates are pixels of the connected image (x right, y down); width/height must match it."),
         "points_json.png")


def pic_invert_capture():
    import torch
    s = shapes()
    z, cap = s.inversion()
    h, w = cap.latent_hw
    (hx, hy), _ = s.points.pairs[0]
    cell = torch.tensor([int(hy // 8) * w + int(hx // 8)])
    row = cap.rows(cell, device="cpu")[0, 0].reshape(h, w).numpy()
    roundtrip = s.regenerate(z)
    save(strip([(s.marked, "image + handle"), (heat(row), "handle's self-attention"),
                (latent_pil(z["samples"]), "latent, edit step 5"), (roundtrip, "resumed, no edit")], SHAPE_PANEL,
               caption="ShapeDrag model, 128x128, 10 steps 'simple', edit_step 5, cfg 1. The handle's attention row, "
                       "averaged over the captured steps and layers (what AutoMask and SemanticMove read). Resumed "
                       "with KSamplerAdvanced and no edit: the model's own reconstruction (it smooths textures)."),
         "invert_capture.png")


def pic_automask():
    s = shapes()
    _, cap = s.inversion()
    auto = lambda **kw: call("DragFusionAutoMask", capture=cap, points=s.points, tau=2.0, steps="all", dilation=0, **kw)[0]
    handle = auto(reference="handle")
    mean = auto(reference="mean")
    union = auto(reference="mean", mask=s.mask, mask_mode="union")
    save(strip([(s.marked, "image + drag"), (mask_pil(handle), "reference handle"), (mask_pil(mean), "reference mean"),
                (mask_pil(union), "mean + user mask")], SHAPE_PANEL,
               caption=f"tau 2.0 on the ShapeDrag model. 'handle' (the paper's literal Eq. 12) keeps "
                       f"{int(handle.sum() // 64)} cells here: the handle attends most to itself."),
         "automask.png")


def pic_semantic_move():
    s = shapes()
    res6, blank6 = s.edit(s.mask, movement="attention ratio (Eq. 6)")
    resr, blankr = s.edit(s.mask, movement="rigid")
    save(strip([(s.marked, "image + drag"), (mask_pil(blank6), "blank_mask, Eq. 6"), (res6, "result, Eq. 6"),
                (mask_pil(blankr), "blank_mask, rigid"), (resr, "result, rigid")], SHAPE_PANEL,
               caption="Mask = the object; then AttentionDrag Interpolate, KV Consistency and KSamplerAdvanced. This "
                       "small model's attention is local, so Eq. 6 stretches the object; 'rigid' moves the whole mask."),
         "semantic_move.png")


def pic_interpolate():
    s = shapes()
    panels = [(s.marked, "image + drag")]
    for fill in ("attention", "nearest", "zero", "noise"):
        result, blank = s.edit(s.mask, movement="rigid", fill=fill)
        if len(panels) == 1:
            panels.append((mask_pil(blank), "blank_mask"))
        panels.append((result, f"fill {fill}"))
    save(strip(panels, SHAPE_PANEL,
               caption="The same rigid move (SemanticMove), its blank cells filled four ways, then KV Consistency and "
                       "KSamplerAdvanced. 'attention' is Eq. 13 with each blank cell's own attention row; the other "
                       "three are the paper's ablation."),
         "attention_interpolate.png")


def pic_kv():
    s = shapes()
    off = s.edit(s.mask, movement="rigid", kv=False)[0]
    half = s.edit(s.mask, movement="rigid", strength=0.5)[0]
    full = s.edit(s.mask, movement="rigid", strength=1.0)[0]
    save(strip([(s.marked, "image + drag"), (off, "enabled false"), (half, "strength 0.5"), (full, "strength 1.0")], SHAPE_PANEL,
               caption="Regeneration from the same moved latent; the model's self-attention reads the keys/values "
                       "captured while the original was inverted."),
         "kv_consistency.png")


def pic_side_by_side():
    demo = Image.open(DEMO).convert("RGB")
    save(strip([(demo, "")], (640, 160), label_size=0,
               caption="scripts/demo on the ShapeDrag model: a generated scene (128x128), the cyan ellipse "
                       "dragged 33 px; original | arrows | mask | result."),
         "side_by_side.png")


def _dual(s, task: str, **kw) -> Image.Image:
    """The Dual-Branch Guided Sampler at its defaults, except what ``kw`` sets."""
    return s.decode(call("DragFusionDualBranchGuidedSampler", model=s.model, inversion=s.pni()[0], target=s.pos, task=task,
                         sampler_name="euler", **kw)[0])


def psnr(a: Image.Image, b: Image.Image) -> float:
    x, y = (np.asarray(i, dtype=np.float64) / 255 for i in (a, b))
    return float(10 * np.log10(1.0 / max(np.mean((x - y) ** 2), 1e-12)))


def pic_pni():
    s = shapes()
    inversion, z_T, sigmas = s.pni()
    noise = call("DisableNoise")[0]
    sampler = call("KSamplerSelect", sampler_name="ddim")[0]
    sample = lambda guider: s.decode(call("SamplerCustomAdvanced", noise=noise, guider=guider, sampler=sampler,
                                          sigmas=sigmas, latent_image=z_T)[0])
    plain = sample(call("BasicGuider", model=s.model, conditioning=s.pos)[0])
    pni = sample(call("DragFusionPNIGuider", model=s.model, inversion=inversion, target=s.pos)[0])
    original = to_pil(s.image)
    save(strip([(original, "image"), (latent_pil(z_T["samples"]), "z_T (PNI Invert)"),
                (plain, f"plain DDIM back, {psnr(plain, original):.1f} dB"),
                (pni, f"PNI Guider, {psnr(pni, original):.1f} dB")], SHAPE_PANEL,
               caption="20 steps ddim_uniform, cfg 1 (one prompt: the ShapeDrag model knows no other), target = "
                       "source: a reconstruction test. PSNR against the image."),
         "pni.png")


def pic_dual():
    s = shapes()
    (hx, hy), (tx, ty) = s.points.pairs[0]
    dx, dy = float(tx - hx), float(ty - hy)
    literal = dict(energy_mode="raw, both terms (Eq. 7 as printed)", energy_scale=40.0, region_split=False,
                   w_contrast=0.0, w_inpaint=0.0)
    save(strip([(s.marked, "image + drag"),
                (_dual(s, "drag", points=s.points, mask=s.mask, **literal), "drag, Eq. 7 literal, 40"),
                (_dual(s, "drag", points=s.points, mask=s.mask), "drag, defaults"),
                (_dual(s, "move", mask=s.mask, offset_x=dx, offset_y=dy), f"move ({dx:g}, {dy:g}), defaults")],
               SHAPE_PANEL,
               caption="PNI Invert (20 steps ddim_uniform) + Dual-Branch Guided Sampler on the ShapeDrag model, mask = "
                       "the object. Eq. 7 read literally at scale 40 barely moves the object; the defaults (normalised "
                       "x0-only energy, region split, removal terms) drag and move it."),
         "dual_branch.png")


def pic_image_prompt():
    """A diagram (no CLIP vision weights here): VersaFusion Fig. 4 / Eq. 11 as the two nodes split it."""
    w, h = 640, 250
    img = Image.new("RGB", (w, h), BG)
    d = ImageDraw.Draw(img)
    f, fs = font(13), font(11)

    def box(x, y, bw, bh, title, sub="", color=(70, 90, 140)):
        d.rounded_rectangle([x, y, x + bw, y + bh], 6, fill=color, outline=(200, 200, 210))
        d.text((x + bw // 2, y + 7), title, fill=FG, font=f, anchor="ma")
        for i, line in enumerate(sub.split("\n") if sub else []):
            d.text((x + bw // 2, y + 26 + 14 * i), line, fill=(215, 215, 225), font=fs, anchor="ma")

    def arrow(x0, y0, x1, y1):
        d.line([(x0, y0), (x1, y1)], fill=FG, width=2)
        d.polygon([(x1, y1), (x1 - 7, y1 - 4), (x1 - 7, y1 + 4)] if x1 > x0 else
                  [(x1, y1), (x1 - 4, y1 - 7), (x1 + 4, y1 - 7)], fill=FG)

    d.text((10, 8), "Image Prompt Encoder", fill=FG, font=font(14))
    box(10, 32, 128, 62, "CLIP Vision Encode", "257 tokens\n(penultimate layer)", (60, 60, 70))
    box(158, 32, 92, 62, "Linear", "CLIP width ->\nSD width")
    box(270, 32, 170, 62, "QFormer x N", "queries cross-attend\nto the tokens, then FFN")
    box(460, 32, 170, 62, "IMAGE_PROMPT", "c_im (64 tokens), black-\nimage uncond, to_k/v_ip", (60, 110, 80))
    for x0, x1 in ((138, 158), (250, 270), (440, 460)):
        arrow(x0, 63, x1, 63)
    d.text((10, 118), "Apply Image Prompt (every cross-attention of a MODEL clone)", fill=FG, font=font(14))
    box(10, 142, 620, 62, "Attn(Q, K_text, V_text)  +  gamma * Attn(Q, K_image, V_image)",
        "K_image, V_image: to_k_ip / to_v_ip of c_im. Cond rows read the image tokens, uncond rows the\n"
        "black-image tokens. gamma is scaled per block by block_weights.", (110, 80, 60))
    arrow(545, 94, 545, 142)
    d.text((10, 218), "VersaFusion Fig. 4 and Eq. 11. A reference's tokens are concatenated after the source's "
                      "(paste, appearance).", fill=DIM, font=fs)
    save(img, "image_prompt.png")


PICTURES = {
    "canvas": pic_canvas, "dragbench": pic_dragbench, "preview": pic_preview, "points_json": pic_points_json,
    "invert_capture": pic_invert_capture, "automask": pic_automask, "semantic_move": pic_semantic_move,
    "interpolate": pic_interpolate, "kv": pic_kv, "side_by_side": pic_side_by_side, "pni": pic_pni,
    "dual": pic_dual, "image_prompt": pic_image_prompt,
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("names", nargs="*", help=f"pictures to make (default: all): {', '.join(PICTURES)}")
    ap.add_argument("--list", action="store_true", help="list the pictures and exit")
    a = ap.parse_args(argv)
    if a.list:
        print("\n".join(PICTURES))
        return 0
    unknown = [n for n in a.names if n not in PICTURES]
    if unknown:
        ap.error(f"unknown picture(s) {unknown}; choose from {list(PICTURES)}")
    for name in a.names or list(PICTURES):
        t = time.perf_counter()
        print(f"{name}:")
        PICTURES[name]()
        print(f"  {time.perf_counter() - t:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
