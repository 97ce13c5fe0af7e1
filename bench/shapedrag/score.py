"""ShapeDrag scorer: where did the dragged object go, and is the rest of the picture intact?

No learned model: the dragged object is found by its known colour (scenes.py keeps every object in
its own hue bin, saturated; backgrounds are unsaturated).

* MD (pixels): the handle rides with the object, so its new position is handle + (centroid of the
  object's pixels in the result - centroid in the original image); MD = |that - target|. An object
  that is duplicated instead of moved counts half-way; an object that is lost (fewer than
  LOST_FRACTION of its original pixels left) counts as not moved (MD = |target - handle|).
* IoU of the object's pixels in the result with the object's ideal moved mask.
* Background fidelity: PSNR and SSIM (scikit-image, data range 1) of the result against the
  original image over the pixels outside the edited region (the object at its start and at its
  target, dilated by FIDELITY_MARGIN pixels). SSIM is the mean of SSIM's full map there.
"""
from __future__ import annotations

import math

import numpy as np

from . import scenes
from .dataset import dilate

HUE_TOL = 24.0
SEG_MIN_SAT = 0.4
SEG_MIN_VAL = 0.3
LOST_FRACTION = 0.25
FIDELITY_MARGIN = 8


def segment(img: np.ndarray, hue: float) -> np.ndarray:
    """Pixels of the object of this hue: img float [H, W, 3] in [0, 1] -> bool [H, W]."""
    h, s, v = scenes.rgb_to_hsv(img)
    dh = np.abs((h - hue + 180.0) % 360.0 - 180.0)
    return (dh <= HUE_TOL) & (s >= SEG_MIN_SAT) & (v >= SEG_MIN_VAL)


def centroid(mask: np.ndarray):
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return float(xs.mean()) + 0.5, float(ys.mean()) + 0.5


def fidelity(result: np.ndarray, original: np.ndarray, keep: np.ndarray) -> tuple[float, float]:
    from skimage.metrics import structural_similarity
    diff = (result.astype(np.float64) - original.astype(np.float64)) ** 2
    mse = float(diff[keep].mean()) if keep.any() else 0.0
    psnr = 10 * math.log10(1.0 / max(mse, 1e-10))
    _, smap = structural_similarity(original.astype(np.float64), result.astype(np.float64), channel_axis=2,
                                    data_range=1.0, full=True)
    ssim = float(smap.mean(-1)[keep].mean()) if keep.any() else 1.0
    return psnr, ssim


def drag_distance(result: np.ndarray, original: np.ndarray, meta: dict) -> dict:
    """MD alone (numpy only): -> {md, md0 (= |target - handle|), lost, end (the handle's new position),
    seg (the object's pixels in the result)}."""
    o = meta["obj"]
    hx, hy = meta["handle"]
    tx, ty = meta["target"]
    seg0 = segment(original, o.hue)
    seg1 = segment(result, o.hue)
    c0, c1 = centroid(seg0), centroid(seg1)
    d0 = math.hypot(tx - hx, ty - hy)
    lost = c1 is None or seg1.sum() < LOST_FRACTION * max(1, seg0.sum())
    if lost or c0 is None:
        md = d0
        end = (float(hx), float(hy))
    else:
        end = (hx + c1[0] - c0[0], hy + c1[1] - c0[1])
        md = math.hypot(end[0] - tx, end[1] - ty)
    return dict(md=md, md0=d0, lost=bool(lost), end=end, seg=seg1)


def score(result: np.ndarray, original: np.ndarray, meta: dict) -> dict:
    """result, original: float [H, W, 3] in [0, 1]; meta: dataset.load_meta(). -> metrics dict."""
    o = meta["obj"]
    size = original.shape[0]
    dx, dy = meta["drag"]
    d = drag_distance(result, original, meta)
    md, d0, lost, end, seg1 = d["md"], d["md0"], d["lost"], d["end"], d["seg"]
    obj = scenes.object_mask(o, size)
    moved = scenes.object_mask(o.moved(dx, dy), size)
    inter, union = (seg1 & moved).sum(), (seg1 | moved).sum()
    keep = ~dilate(obj | moved, FIDELITY_MARGIN)
    psnr, ssim = fidelity(result, original, keep)
    return dict(md=md, md0=d0, lost=bool(lost), end=end, iou=float(inter / max(1, union)), psnr=psnr, ssim=ssim)
