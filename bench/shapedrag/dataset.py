"""ShapeDrag samples: a scene, one object to drag, a handle on it and a target, in DragBench format.

    write_dataset(folder, n=20, seed=0) -> [sample folders]

Each sample folder holds what "Load DragBench Sample" reads (original_image.png, mask.png,
drag_instruction.json with the fixed prompt and points [[hx, hy], [tx, ty]]) plus shapedrag.json:
the scene seed and the dragged object's geometry and colour, which the scorer uses. Samples are
regenerated exactly from (seed, index), so a folder can always be rebuilt.

The drag: |target - handle| is DRAG_MIN..DRAG_MAX pixels in a random direction; the moved object
stays inside the image (margin 4 px) and clear of every other object (gap 6 px). mask.png is the
dragged object dilated by MASK_DILATE pixels (the region a user would paint as editable).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict

import numpy as np
from PIL import Image

from . import scenes

DRAG_MIN, DRAG_MAX = 20.0, 36.0
MASK_DILATE = 4
MIN_RADIUS_FRAC = 0.11     # the dragged object is at least this big (x image size)


def dilate(mask: np.ndarray, px: int) -> np.ndarray:
    if px <= 0:
        return mask.copy()
    from scipy.ndimage import binary_dilation
    yy, xx = np.mgrid[-px:px + 1, -px:px + 1]
    return binary_dilation(mask, structure=(xx * xx + yy * yy) <= px * px)


def _fits(o: scenes.Obj, size: int, margin: float = 4.0) -> bool:
    x, y = scenes._grid(size)
    inside = scenes.object_sdf(o, x, y) < 0.5
    if not inside.any():
        return False
    ys, xs = np.nonzero(inside)
    return xs.min() >= margin and ys.min() >= margin and xs.max() < size - margin and ys.max() < size - margin


def make_sample(seed: int, index: int, size: int = 128) -> dict:
    """A deterministic sample; tries scene seeds until one admits a valid drag."""
    for attempt in range(1000):
        scene_seed = (seed * 100_003 + index) * 1000 + attempt
        sc = scenes.make_scene(scene_seed, size)
        rng = np.random.default_rng(scene_seed + 17)
        big = [i for i, o in enumerate(sc.objects) if o.r >= MIN_RADIUS_FRAC * size]
        if not big:
            continue
        k = big[int(rng.integers(len(big)))]
        o = sc.objects[k]
        others = [p for i, p in enumerate(sc.objects) if i != k]
        x, y = scenes._grid(size)
        inner = scenes.object_sdf(o, x, y) < -2.0
        near = np.hypot(x - o.cx, y - o.cy) <= 0.5 * o.r
        cand = np.argwhere(inner & near)
        if len(cand) == 0:
            continue
        hy, hx = cand[int(rng.integers(len(cand)))]
        for _ in range(50):
            ang = rng.uniform(0, 2 * np.pi)
            length = rng.uniform(DRAG_MIN, DRAG_MAX)
            dx, dy = int(round(length * np.cos(ang))), int(round(length * np.sin(ang)))
            tx, ty = int(hx) + dx, int(hy) + dy
            if not (0 <= tx < size and 0 <= ty < size):
                continue
            moved = o.moved(dx, dy)
            if _fits(moved, size) and not any(scenes.overlaps(moved, p, size, gap=6.0) for p in others):
                return dict(seed=seed, index=index, scene_seed=scene_seed, size=size, object=k,
                            handle=[int(hx), int(hy)], target=[tx, ty], drag=[dx, dy], scene=sc)
    raise RuntimeError(f"no valid drag found for sample {index} (seed {seed})")


def sample_images(s: dict):
    """-> (image float [H, W, 3], object mask bool, moved-object mask bool, editable mask bool)."""
    sc = s["scene"]
    o = sc.objects[s["object"]]
    img = scenes.render(sc)
    obj = scenes.object_mask(o, sc.size)
    moved = scenes.object_mask(o.moved(*s["drag"]), sc.size)
    return img, obj, moved, dilate(obj, MASK_DILATE)


def write_sample(s: dict, folder: str) -> str:
    os.makedirs(folder, exist_ok=True)
    img, obj, moved, editable = sample_images(s)
    Image.fromarray((img * 255 + 0.5).astype(np.uint8)).save(os.path.join(folder, "original_image.png"))
    Image.fromarray(editable.astype(np.uint8) * 255).save(os.path.join(folder, "mask.png"))
    with open(os.path.join(folder, "drag_instruction.json"), "w") as f:
        json.dump({"prompt": scenes.PROMPT, "points": [s["handle"], s["target"]]}, f, indent=1)
    o = s["scene"].objects[s["object"]]
    meta = {k: v for k, v in s.items() if k != "scene"}
    meta.update(object_params=asdict(o), object_pixels=int(obj.sum()))
    with open(os.path.join(folder, "shapedrag.json"), "w") as f:
        json.dump(meta, f, indent=1)
    return folder


def write_dataset(folder: str, n: int = 20, seed: int = 0, size: int = 128) -> list:
    return [write_sample(make_sample(seed, i, size), os.path.join(folder, f"shape_{i:04d}")) for i in range(n)]


def load_meta(folder: str) -> dict:
    with open(os.path.join(folder, "shapedrag.json")) as f:
        meta = json.load(f)
    meta["obj"] = scenes.Obj(**meta["object_params"])
    return meta
