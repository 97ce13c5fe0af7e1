"""ShapeDrag-GT metrics: a result scored against the task's rendered ground truth (tasks.py).

    task_score(result, sample, seconds=nan) -> {md, iou, iou_edit, psnr_in, psnr_out, ssim_out, lost,
                                                duplicated, seconds[, hue_err]}

Objects are found by colour, as in score.py (every object has its own hue bin; backgrounds are
unsaturated); the GT masks are the same segmentation of the GT image, so the GT itself scores exactly.

* ``md`` (px): over the objects whose place changes (``moved``): the distance between the centroid of the
  object's pixels in the result and in the GT. A duplicate (old copy left + new copy) lands half way by
  itself. NaN where no object moves.
  A **lost** moved object (see ``lost``) scores ``md0 + diagonal / 4`` (LOST_MD_PENALTY of the GT image's
  diagonal: 45.3 px at 128 x 128), ``md0`` being its MD when nothing is edited: erasing the object is
  always strictly worse than leaving it where it was, never scored as if nothing had been edited. (The
  paste task's new object is absent from the source, so leaving the source as it is loses it too.)
* ``iou``: mean over the objects present in the GT of IoU(result segmentation, GT mask). A lost object's
  IoU is at most LOST_FRACTION by itself (0 when erased).
* ``iou_edit``: the same mean over the objects the edit moves or changes only (``edited``): ``moved``,
  ``recoloured``, new (no source mask: paste), or whose GT mask differs from its source mask (in the GT
  frame; outpaint's source sits at the pad offset) by IoU(source mask, GT mask) < 1 - CHANGED_TOL; the
  tolerance absorbs the anti-aliased rim that a new background (style) shifts by a few pixels. The
  unchanged objects, which a method scores by leaving them alone, do not dilute it. NaN where no edited
  object is present in the GT (style, inpaint).
* ``psnr_in``: PSNR (data range 1) against the GT inside the edited region; ``psnr_out`` / ``ssim_out``
  outside it (the region dilated by FIDELITY_MARGIN px), SSIM the mean of scikit-image's full map there.
* ``lost``: objects of the GT with fewer than LOST_FRACTION of their GT pixels in the result.
* ``duplicated``: objects whose old place (source mask minus the GT mask) keeps at least DUP_FRACTION of
  the object's colour while the object also arrived at its new place (or, for a removed object
  (inpaint), is simply still there): "the old copy left behind".
* ``hue_err`` (degrees, appearance / prompt): the circular mean hue of the saturated pixels on the
  recoloured object's shape against the target hue; 180 when under half of the shape is saturated.
"""
from __future__ import annotations

import math

import numpy as np

from . import scenes
from .tasks import TaskSample, centroid, dilate, segment

LOST_FRACTION = 0.25
DUP_FRACTION = 0.5
DUP_MIN_PIXELS = 20
FIDELITY_MARGIN = 4
HUE_MIN_SAT = 0.25
LOST_MD_PENALTY = 0.25   # a lost moved object's MD: md0 + this fraction of the GT image's diagonal
CHANGED_TOL = 0.05       # an object whose IoU(source mask, GT mask) is below 1 - this is edited
METRICS = ("md", "iou", "iou_edit", "psnr_in", "psnr_out", "ssim_out", "lost", "duplicated", "seconds", "hue_err")
COLOUR_TASKS = ("appearance", "prompt")
# the metric that defines each task, and whether higher is better
DEFINING = dict(drag=("md", False), drag_multi=("md", False), drag_two=("md", False), move=("iou", True),
                resize=("iou", True), paste=("iou", True), appearance=("hue_err", False), outpaint=("psnr_in", True),
                inpaint=("psnr_in", True), style=("psnr_in", True), landmarks=("iou", True), prompt=("hue_err", False))


def psnr(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> float:
    if not where.any():
        return math.nan
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2)[where].mean())
    return 10 * math.log10(1.0 / max(mse, 1e-10))


def ssim_in(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> float:
    if not where.any():
        return math.nan
    from skimage.metrics import structural_similarity
    _, smap = structural_similarity(b.astype(np.float64), a.astype(np.float64), channel_axis=2, data_range=1.0,
                                    full=True)
    return float(smap.mean(-1)[where].mean())


def hue_error(result: np.ndarray, shape: np.ndarray, target_hue: float) -> float:
    h, s, v = scenes.rgb_to_hsv(result)
    sat = shape & (s >= HUE_MIN_SAT) & (v >= 0.2)
    if sat.sum() < 0.5 * max(1, shape.sum()):
        return 180.0
    w = (s * v)[sat]
    rad = np.deg2rad(h[sat])
    mean = math.degrees(math.atan2(float((w * np.sin(rad)).sum()), float((w * np.cos(rad)).sum())))
    return abs((mean - target_hue + 180.0) % 360.0 - 180.0)


def in_gt_frame(mask: np.ndarray, s: TaskSample) -> np.ndarray:
    """A source-frame mask placed in the GT frame (outpaint: at the pad offset; otherwise the same frame)."""
    if mask.shape == s.gt.shape[:2]:
        return mask
    if "pad" not in s.instruction:
        raise ValueError(f"a source mask {mask.shape} and a GT {s.gt.shape[:2]} of another size without a pad")
    left, right, top, bottom = s.instruction["pad"]
    return np.pad(mask, ((top, bottom), (left, right)))


def edited(o: dict, s: TaskSample) -> bool:
    """Whether the edit moves or changes the object (see ``iou_edit``)."""
    if o.get("moved") or o.get("recoloured") or o["src"] is None:
        return True
    src, gt = in_gt_frame(o["src"], s), o["gt"]
    union = int((src | gt).sum())
    return union > 0 and (src & gt).sum() / union < 1.0 - CHANGED_TOL


def lost_md(o: dict, s: TaskSample) -> float:
    """A lost moved object's MD: strictly above md0, the MD of leaving it where it was."""
    return float(o["md0"]) + LOST_MD_PENALTY * math.hypot(*s.gt.shape[:2])


def object_scores(result: np.ndarray, s: TaskSample) -> list:
    out = []
    for o in s.objects:
        seg = segment(result, o["hue"])
        gt, src = o["gt"], o["src"]
        n_gt = int(gt.sum())
        r = dict(name=o["name"], iou=math.nan, lost=False, duplicated=False, md=math.nan, edited=edited(o, s))
        if n_gt > 0:
            r["iou"] = float((seg & gt).sum() / max(1, (seg | gt).sum()))
            r["lost"] = bool(seg.sum() < LOST_FRACTION * n_gt)
        if o.get("moved"):
            c1, cg = centroid(seg), centroid(gt)
            if r["lost"] or c1 is None:
                r["md"] = lost_md(o, s)
            elif cg is not None:
                r["md"] = math.hypot(c1[0] - cg[0], c1[1] - cg[1])
        if src is not None and src.any() and (o.get("moved") or n_gt == 0) and not o.get("recoloured"):
            left = src & ~dilate(gt, 2)
            if left.sum() >= DUP_MIN_PIXELS and (seg & left).sum() >= DUP_FRACTION * left.sum():
                if n_gt == 0:
                    r["duplicated"] = True                      # removed object still there
                else:                                           # and it arrived at its new place too
                    new = gt & ~dilate(src, 2)
                    r["duplicated"] = bool(new.sum() >= DUP_MIN_PIXELS and (seg & new).sum() >= DUP_FRACTION * new.sum())
        if o.get("recoloured"):
            r["hue_err"] = hue_error(result, src | gt, o["target_hue"])
        out.append(r)
    return out


def task_score(result: np.ndarray, s: TaskSample, seconds: float = math.nan) -> dict:
    """result float [H, W, 3] in [0, 1] of the GT's size."""
    result = np.clip(np.asarray(result, np.float32), 0, 1)
    if result.shape != s.gt.shape:
        raise ValueError(f"result {result.shape} is not the ground truth's shape {s.gt.shape}")
    objs = object_scores(result, s)
    mds = [o["md"] for o in objs if not math.isnan(o["md"])]
    ious = [o["iou"] for o in objs if not math.isnan(o["iou"])]
    ious_edit = [o["iou"] for o in objs if o["edited"] and not math.isnan(o["iou"])]
    outside = ~dilate(s.region, FIDELITY_MARGIN)
    out = dict(md=float(np.mean(mds)) if mds else math.nan, iou=float(np.mean(ious)) if ious else math.nan,
               iou_edit=float(np.mean(ious_edit)) if ious_edit else math.nan, psnr_in=psnr(result, s.gt, s.region), psnr_out=psnr(result, s.gt, outside),
               ssim_out=ssim_in(result, s.gt, outside), lost=int(sum(o["lost"] for o in objs)),
               duplicated=int(sum(o["duplicated"] for o in objs)), seconds=float(seconds))
    hues = [o["hue_err"] for o in objs if "hue_err" in o]
    if hues:
        out["hue_err"] = float(np.mean(hues))
    return out


def summarize(rows: list) -> dict:
    """Mean of every metric over samples (NaN-aware); lost / duplicated as totals too."""
    out = {}
    for k in METRICS:
        v = [r[k] for r in rows if k in r and r[k] is not None and not (isinstance(r[k], float) and math.isnan(r[k]))]
        if v:
            out[k] = float(np.mean(v))
    out["lost_total"] = int(sum(r.get("lost", 0) for r in rows))
    out["duplicated_total"] = int(sum(r.get("duplicated", 0) for r in rows))
    out["n"] = len(rows)
    return out
