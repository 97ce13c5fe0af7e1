"""ShapeDrag-GT: every editing task of the pack with its ground truth rendered by the scene generator (numpy only).

    make_task(task, seed, index, size=128) -> TaskSample
    make_tasks(task, n, seed) -> [TaskSample]

A TaskSample holds the source image, the instruction in the form the pack's nodes take it (pixels; see
``instruction`` below), the ground-truth result (the scene re-rendered with the edit applied exactly), the
ground-truth object masks, and the edited region. Everything is regenerated exactly from (task, seed,
index), so nothing needs to be stored.

Tasks (TASKS):

  drag        one handle -> target pair on one object; GT: the object translated by the drag, the uncovered
              area is the scene's own background
  drag_multi  three pairs on one object, all with the same drag vector (a rigid translation)
  drag_two    one pair on each of two objects, each with its own drag
  move        region mask + offset (pixels, multiples of 8): the object translated by the offset
  resize      region mask + scale about the mask's box centre (the dual-branch node's convention)
  paste       an object of a reference scene inserted into the source at its reference position + offset
  appearance  an object's colour and texture taken from a reference object (shape and place kept)
  outpaint    the source is the centre crop of a wider scene; GT: the wider scene (pads left and right)
  inpaint     the object under the mask removed; GT: the background there
  style       the background texture family (pattern, period, angle) of a reference scene, the source's
              own background colours and objects kept
  landmarks   a polygon's vertices dragged; the instruction is 68 landmarks along its outline (the
              Dual-Branch sampler's landmark format); GT: the deformed polygon
  prompt      a prompt edit for PNI: "a red circle ..." -> "a blue circle ...", GT: the object recoloured

Instruction keys (present where the task uses them): ``points`` [[[hx, hy], [tx, ty]], ...] (pixels),
``mask`` (bool [H, W], the region a user would paint: the object dilated by MASK_DILATE), ``offset``
(dx, dy) px, ``scale``, ``reference`` (float image, same size as the source), ``reference_mask`` (bool),
``pad`` (left, right, top, bottom) px, ``landmarks`` {"source": [[x, y] x 68], "target": [...]},
``source_prompt`` / ``target_prompt``.

Objects (``objects``): one entry per object that should be in the GT or that was in the source, with its
hue, its source mask (source frame; None when it was not there), its GT mask (GT frame; empty when it is
gone), ``moved`` (its place changes: MD is measured on it) and ``md0`` (its MD when nothing is edited).
Masks are the scorer's own colour segmentation (score.segment) of the rendered image within the
object's shape, so a perfect result scores exactly IoU 1.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np

from . import scenes
from .dataset import dilate
from .score import centroid, segment

TASKS = ("drag", "drag_multi", "drag_two", "move", "resize", "paste", "appearance", "outpaint", "inpaint",
         "style", "landmarks", "prompt")
COLOUR_NAMES = ("red", "yellow", "green", "cyan", "blue", "magenta")   # scenes.OBJECT_HUES order
MASK_DILATE = 4          # the user's region mask: the object dilated by this many pixels
REGION_DILATE = 4        # the edited region: the changed object pixels dilated by this many pixels
GAP = 6.0                # moved / inserted objects keep this gap to the others
MARGIN = 4.0             # ... and to the image border
DRAG_MIN, DRAG_MAX = 20.0, 36.0
MIN_RADIUS_FRAC = 0.11
OUTPAINT_PAD = 32        # pixels added left and right
LANDMARKS = 68


@dataclass
class TaskSample:
    task: str
    seed: int
    index: int
    scene_seed: int
    source: np.ndarray
    gt: np.ndarray
    region: np.ndarray                       # bool, GT frame
    instruction: dict
    objects: list = field(default_factory=list)
    note: str = ""

    @property
    def size(self) -> int:
        return self.source.shape[0]


# --- small helpers --------------------------------------------------------------------------

def hue_bin(hue: float) -> int:
    d = [abs((hue - h + 180.0) % 360.0 - 180.0) for h in scenes.OBJECT_HUES]
    return int(np.argmin(d))


def colour_name(hue: float) -> str:
    return COLOUR_NAMES[hue_bin(hue)]


def describe(o) -> str:
    """'red circle' (Obj or Poly)."""
    shape = o.shape if isinstance(o, scenes.Obj) else "polygon"
    return f"{colour_name(o.hue)} {shape}"


def prompt_for(objs: list) -> str:
    """A caption naming every object's colour and shape."""
    names = [describe(o) for o in objs]
    if not names:
        return "a textured background"
    return "a " + " and a ".join(names) + " on a textured background"


def _with(o: scenes.Obj, **kw) -> scenes.Obj:
    d = dict(o.__dict__)
    d.update(kw)
    return scenes.Obj(**d)


def shape_mask(o, size: int) -> np.ndarray:
    if isinstance(o, Poly):
        return poly_alpha(o, size) >= 0.5
    return scenes.object_mask(o, size)


def fits(o, size: int, margin: float = MARGIN) -> bool:
    m = shape_mask(o, size)
    if not m.any():
        return False
    ys, xs = np.nonzero(m)
    return xs.min() >= margin and ys.min() >= margin and xs.max() < size - margin and ys.max() < size - margin


def clear_of(o, others: list, size: int, gap: float = GAP) -> bool:
    m = dilate(shape_mask(o, size), int(math.ceil(gap)))
    return not any((m & shape_mask(p, size)).any() for p in others)


# --- general polygons (landmarks) -------------------------------------------------------------

@dataclass
class Poly:
    """A textured polygon: vertices (pixels) + an Obj carrying its colour and texture."""
    verts: np.ndarray          # [n, 2] (x, y)
    look: scenes.Obj

    @property
    def hue(self) -> float:
        return self.look.hue


def poly_sdf(verts: np.ndarray, size: int) -> np.ndarray:
    x, y = scenes._grid(size)
    d = np.full(x.shape, np.inf, np.float32)
    inside = np.zeros(x.shape, bool)
    n = len(verts)
    for k in range(n):
        (x0, y0), (x1, y1) = verts[k], verts[(k + 1) % n]
        ex, ey = x1 - x0, y1 - y0
        t = np.clip(((x - x0) * ex + (y - y0) * ey) / max(ex * ex + ey * ey, 1e-9), 0, 1)
        d = np.minimum(d, np.hypot(x - x0 - t * ex, y - y0 - t * ey))
        crosses = ((y0 > y) != (y1 > y)) & (x < x0 + (y - y0) * ex / (ey if ey != 0 else 1e-9))
        inside ^= crosses
    return np.where(inside, -d, d)


def poly_alpha(p: Poly, size: int) -> np.ndarray:
    return np.clip(0.5 - poly_sdf(p.verts, size), 0.0, 1.0).astype(np.float32)


def regular_vertices(o: scenes.Obj) -> np.ndarray:
    n = {"square": 4, "triangle": 3, "diamond": 4, "hexagon": 6}[o.shape]
    ang = o.angle + (np.pi / 4 if o.shape == "diamond" else 0.0)
    a = ang + np.arange(n) * 2 * np.pi / n
    return np.stack([o.cx + o.r * np.cos(a), o.cy + o.r * np.sin(a)], -1).astype(np.float64)


def outline_points(verts: np.ndarray, n: int = LANDMARKS) -> np.ndarray:
    """n points along the closed outline, evenly by arc length from vertex 0 (every vertex included when
    the arc-length grid hits it; corresponding points of two polygons share their edge and fraction)."""
    k = len(verts)
    per_edge = [n // k + (1 if i < n % k else 0) for i in range(k)]
    pts = []
    for i in range(k):
        a, b = verts[i], verts[(i + 1) % k]
        for j in range(per_edge[i]):
            t = j / per_edge[i]
            pts.append(a + t * (b - a))
    return np.asarray(pts)


def render_objects(sc: scenes.Scene, objs: list, size: int | None = None, bg: dict | None = None) -> np.ndarray:
    """Background (the scene's, or ``bg``) + objects (Obj or Poly), float [size, size, 3]."""
    size = size or sc.size
    img = scenes.render_background(bg or sc.bg, size)
    for o in objs:
        if isinstance(o, Poly):
            a = poly_alpha(o, size)[..., None]
            rgb = scenes._object_rgb(o.look, size)
        else:
            a = scenes.object_alpha(o, size)[..., None]
            rgb = scenes._object_rgb(o, size)
        img = img * (1 - a) + rgb * a
    return np.clip(img, 0, 1).astype(np.float32)


def obj_entry(o, src_img, gt_img, size_src: int, size_gt: int, moved: bool, src_obj=None, gt_obj=None,
              md0: float = 0.0, name: str = "") -> dict:
    """Masks by the scorer's segmentation within the (slightly dilated) shape."""
    src_obj = o if src_obj is None and src_img is not None else src_obj
    gt_obj = o if gt_obj is None else gt_obj
    src = None
    if src_obj is not None and src_img is not None:
        src = segment(src_img, src_obj.hue) & dilate(shape_mask(src_obj, size_src), 2)
    gt = segment(gt_img, gt_obj.hue) & dilate(shape_mask(gt_obj, size_gt), 2) if gt_obj is not False else \
        np.zeros(gt_img.shape[:2], bool)
    return dict(name=name or describe(gt_obj if gt_obj is not False else src_obj),
                hue=float((gt_obj if gt_obj is not False else src_obj).hue), src=src, gt=gt, moved=bool(moved),
                md0=float(md0))


def _rng(task: str, seed: int, index: int, attempt: int):
    t = TASKS.index(task)
    scene_seed = ((seed * 100_003 + index) * 37 + t) * 1000 + attempt
    return scene_seed, np.random.default_rng(scene_seed + 29)


def _big(sc: scenes.Scene) -> list:
    return [i for i, o in enumerate(sc.objects) if o.r >= MIN_RADIUS_FRAC * sc.size]


def _candidates(task: str, seed: int, index: int, size: int):
    """(scene seed, rng, scene, k) for each attempt whose scene has an object big enough to edit; k is
    one of those objects, chosen by the attempt's rng."""
    for attempt in range(1000):
        scene_seed, rng = _rng(task, seed, index, attempt)
        sc = scenes.make_scene(scene_seed, size)
        big = _big(sc)
        if big:
            yield scene_seed, rng, sc, int(rng.choice(big))


def _handle_on(o: scenes.Obj, size: int, rng, n: int = 1):
    x, y = scenes._grid(size)
    inner = scenes.object_sdf(o, x, y) < -2.0
    near = np.hypot(x - o.cx, y - o.cy) <= 0.6 * o.r
    cand = np.argwhere(inner & near)
    if len(cand) < n:
        return None
    pick = rng.choice(len(cand), size=n, replace=False)
    return [(int(cand[i][1]), int(cand[i][0])) for i in pick]


def _random_drag(o, others: list, size: int, rng, lo=DRAG_MIN, hi=DRAG_MAX, multiple: int = 1):
    for _ in range(60):
        ang = rng.uniform(0, 2 * np.pi)
        length = rng.uniform(lo, hi)
        dx, dy = length * np.cos(ang), length * np.sin(ang)
        dx, dy = int(round(dx / multiple) * multiple), int(round(dy / multiple) * multiple)
        if dx == 0 and dy == 0:
            continue
        moved = o.moved(dx, dy)
        if fits(moved, size) and clear_of(moved, others, size):
            return dx, dy
    return None


def _user_mask(objs: list, size: int) -> np.ndarray:
    m = np.zeros((size, size), bool)
    for o in objs:
        m |= shape_mask(o, size)
    return dilate(m, MASK_DILATE)


# --- the tasks ------------------------------------------------------------------------------

def _drag(task, seed, index, size):
    n_obj = 2 if task == "drag_two" else 1
    n_pairs = 3 if task == "drag_multi" else 1
    for attempt in range(1000):
        scene_seed, rng = _rng(task, seed, index, attempt)
        sc = scenes.make_scene(scene_seed, size, n_objects=(n_obj, 3))
        big = _big(sc)
        if len(big) < n_obj:
            continue
        ks = [int(k) for k in rng.choice(big, size=n_obj, replace=False)]
        new = list(sc.objects)
        pairs, ok = [], True
        for k in ks:
            o = sc.objects[k]
            others = [p for i, p in enumerate(new) if i != k]
            hs = _handle_on(o, size, rng, n_pairs)
            d = _random_drag(o, others, size, rng) if hs else None
            if d is None:
                ok = False
                break
            new[k] = o.moved(*d)
            for hx, hy in hs:
                tx, ty = hx + d[0], hy + d[1]
                if not (0 <= tx < size and 0 <= ty < size):
                    ok = False
                pairs.append([[hx, hy], [tx, ty]])
        if not ok:
            continue
        src, gt = scenes.render(sc), render_objects(sc, new)
        moved = np.zeros((size, size), bool)
        objects = []
        for i, (o, p) in enumerate(zip(sc.objects, new)):
            e = obj_entry(o, src, gt, size, size, i in ks, o, p, md0=math.hypot(p.cx - o.cx, p.cy - o.cy))
            objects.append(e)
            if i in ks:
                moved |= shape_mask(o, size) | shape_mask(p, size)
        instr = dict(points=pairs, mask=_user_mask([sc.objects[k] for k in ks], size), prompt=prompt_for(sc.objects))
        return TaskSample(task, seed, index, scene_seed, src, gt, dilate(moved, REGION_DILATE), instr, objects)
    raise RuntimeError(f"no {task} sample for seed {seed} index {index}")


def _move(task, seed, index, size):
    for scene_seed, rng, sc, k in _candidates(task, seed, index, size):
        o = sc.objects[k]
        others = [p for i, p in enumerate(sc.objects) if i != k]
        mask = _user_mask([o], size)
        if task == "move":
            d = _random_drag(o, others, size, rng, 20.0, 40.0, multiple=8)
            if d is None:
                continue
            new_o, offset, scale = o.moved(*d), [float(d[0]), float(d[1])], 1.0
        else:
            scale = float(rng.choice([0.7, 1.4]))
            ys, xs = np.nonzero(mask)
            bx, by = (xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2   # the node's box centre
            new_o = _with(o, cx=bx + scale * (o.cx - bx), cy=by + scale * (o.cy - by), r=o.r * scale,
                          tex_period=o.tex_period * scale)
            offset = [0.0, 0.0]
            if not (fits(new_o, size) and clear_of(new_o, others, size)):
                continue
        new = [new_o if i == k else p for i, p in enumerate(sc.objects)]
        src, gt = scenes.render(sc), render_objects(sc, new)
        objects = [obj_entry(p, src, gt, size, size, i == k, p, q, md0=math.hypot(q.cx - p.cx, q.cy - p.cy))
                   for i, (p, q) in enumerate(zip(sc.objects, new))]
        region = dilate(shape_mask(o, size) | shape_mask(new_o, size), REGION_DILATE)
        instr = dict(mask=mask, offset=offset, scale=scale, prompt=prompt_for(sc.objects))
        return TaskSample(task, seed, index, scene_seed, src, gt, region, instr, objects)
    raise RuntimeError(f"no {task} sample for seed {seed} index {index}")


def _reference_object(rng, sc: scenes.Scene, size: int, scene_seed: int):
    """A reference scene with a big object whose hue bin is not used in ``sc`` -> (ref scene, index) or None."""
    used = {hue_bin(o.hue) for o in sc.objects}
    for j in range(50):
        ref = scenes.make_scene(scene_seed * 7 + 1000 + j, size)
        cand = [i for i in _big(ref) if hue_bin(ref.objects[i].hue) not in used]
        if cand:
            return ref, int(rng.choice(cand))
    return None


def _paste(task, seed, index, size):
    for attempt in range(1000):
        scene_seed, rng = _rng(task, seed, index, attempt)
        sc = scenes.make_scene(scene_seed, size, n_objects=(1, 2))
        r = _reference_object(rng, sc, size, scene_seed)
        if r is None:
            continue
        ref, j = r
        b = ref.objects[j]
        placed = None
        for _ in range(60):
            dx, dy = (int(v) * 8 for v in rng.integers(-6, 7, size=2))
            q = b.moved(dx, dy)
            if fits(q, size) and clear_of(q, sc.objects, size):
                placed = (q, dx, dy)
                break
        if placed is None:
            continue
        q, dx, dy = placed
        new = list(sc.objects) + [q]
        src, gt, ref_img = scenes.render(sc), render_objects(sc, new), scenes.render(ref)
        objects = [obj_entry(p, src, gt, size, size, False) for p in sc.objects]
        e = obj_entry(q, None, gt, size, size, True, None, q, md0=math.hypot(dx, dy))
        objects.append(e)
        instr = dict(reference=ref_img, reference_mask=_user_mask([b], size), offset=[float(dx), float(dy)], scale=1.0,
                     prompt=prompt_for(sc.objects), reference_prompt=prompt_for(ref.objects))
        return TaskSample(task, seed, index, scene_seed, src, gt, dilate(shape_mask(q, size), REGION_DILATE), instr,
                          objects)
    raise RuntimeError(f"no {task} sample for seed {seed} index {index}")


LOOK = ("hue", "sat", "val", "texture", "tex_period", "tex_angle")


def _recolour(task, seed, index, size):
    """appearance (the look of a reference object) and prompt (a prompt naming another colour)."""
    for scene_seed, rng, sc, k in _candidates(task, seed, index, size):
        o = sc.objects[k]
        if task == "appearance":
            r = _reference_object(rng, sc, size, scene_seed)
            if r is None:
                continue
            ref, j = r
            b = ref.objects[j]
            new_o = _with(o, **{a: getattr(b, a) for a in LOOK})
        else:
            used = {hue_bin(p.hue) for p in sc.objects}
            free = [i for i in range(len(scenes.OBJECT_HUES)) if i not in used]
            hb = int(rng.choice(free))
            new_o = _with(o, hue=float(scenes.OBJECT_HUES[hb]))
        new = [new_o if i == k else p for i, p in enumerate(sc.objects)]
        src, gt = scenes.render(sc), render_objects(sc, new)
        objects = [obj_entry(p, src, gt, size, size, False) for i, p in enumerate(sc.objects) if i != k]
        e = obj_entry(new_o, None, gt, size, size, False, None, new_o)
        e.update(src=segment(src, o.hue) & dilate(shape_mask(o, size), 2), recoloured=True,
                 target_hue=float(new_o.hue), source_hue=float(o.hue))
        objects.append(e)
        mask = _user_mask([o], size)
        instr = dict(mask=mask, prompt=prompt_for(sc.objects))
        if task == "appearance":
            instr.update(reference=scenes.render(ref), reference_mask=_user_mask([b], size),
                         reference_prompt=prompt_for(ref.objects))
        else:
            instr.update(source_prompt=prompt_for(sc.objects), target_prompt=prompt_for(new))
        return TaskSample(task, seed, index, scene_seed, src, gt, mask.copy(), instr, objects)
    raise RuntimeError(f"no {task} sample for seed {seed} index {index}")


def _outpaint(task, seed, index, size):
    p = OUTPAINT_PAD
    big = size + 2 * p
    for attempt in range(1000):
        scene_seed, rng = _rng(task, seed, index, attempt)
        sc = scenes.make_scene(scene_seed, big, n_objects=(2, 4))
        full = scenes.render(sc)
        gt = full[p:p + size]                         # size x (size + 2p)
        src = gt[:, p:p + size].copy()
        objects = []
        for o in sc.objects:
            m_full = scenes.object_mask(o, big)[p:p + size]
            if m_full.sum() < 30:
                continue
            seg = segment(gt, o.hue) & dilate(m_full, 2)
            e = dict(name=describe(o), hue=float(o.hue), src=seg[:, p:p + size].copy(), gt=seg, moved=False, md0=0.0)
            objects.append(e)
        inside = [e for e in objects if e["src"].sum() >= 30]
        outside = [e for e in objects if (e["gt"][:, :p].sum() + e["gt"][:, p + size:].sum()) >= 30]
        if not inside or not outside:
            continue
        region = np.ones(gt.shape[:2], bool)
        region[:, p:p + size] = False
        instr = dict(pad=[p, p, 0, 0], prompt=prompt_for(sc.objects))
        return TaskSample(task, seed, index, scene_seed, src, gt.copy(), region, instr, objects)
    raise RuntimeError(f"no {task} sample for seed {seed} index {index}")


def _inpaint(task, seed, index, size):
    for scene_seed, rng, sc, k in _candidates(task, seed, index, size):
        o = sc.objects[k]
        new = [p for i, p in enumerate(sc.objects) if i != k]
        src, gt = scenes.render(sc), render_objects(sc, new)
        mask = _user_mask([o], size)
        if any((mask & dilate(shape_mask(p, size), 2)).any() for p in new):
            continue                  # keep the other objects out of the hole: its GT is background only
        objects = [obj_entry(p, src, gt, size, size, False) for p in new]
        e = obj_entry(o, src, gt, size, size, False, o, False)
        e["removed"] = True
        objects.append(e)
        instr = dict(mask=mask, prompt=prompt_for(sc.objects))
        return TaskSample(task, seed, index, scene_seed, src, gt, mask.copy(), instr, objects)
    raise RuntimeError(f"no {task} sample for seed {seed} index {index}")


STYLE_KEYS = ("texture", "period", "angle", "noise_seed", "cells")


def _style(task, seed, index, size):
    for attempt in range(1000):
        scene_seed, rng = _rng(task, seed, index, attempt)
        sc = scenes.make_scene(scene_seed, size)
        ref = scenes.make_scene(scene_seed * 7 + 5000, size)
        if ref.bg["texture"] == sc.bg["texture"] or "gradient" in (ref.bg["texture"], sc.bg["texture"]):
            continue
        if abs(sc.bg["v1"] - sc.bg["v2"]) < 0.25:
            continue               # a pattern needs two distinct tones to be visible
        bg = dict(sc.bg)
        bg.update({key: ref.bg[key] for key in STYLE_KEYS})
        src, gt = scenes.render(sc), render_objects(sc, sc.objects, bg=bg)
        objects = [obj_entry(p, src, gt, size, size, False) for p in sc.objects]
        objs = np.zeros((size, size), bool)
        for p in sc.objects:
            objs |= shape_mask(p, size)
        instr = dict(reference=scenes.render(ref), prompt=prompt_for(sc.objects), reference_prompt=prompt_for(ref.objects),
                     source_texture=sc.bg["texture"], reference_texture=ref.bg["texture"])
        return TaskSample(task, seed, index, scene_seed, src, gt, ~dilate(objs, 2), instr, objects)
    raise RuntimeError(f"no {task} sample for seed {seed} index {index}")


def _landmarks(task, seed, index, size):
    for attempt in range(1000):
        scene_seed, rng = _rng(task, seed, index, attempt)
        sc = scenes.make_scene(scene_seed, size)
        cand = [i for i in _big(sc) if sc.objects[i].shape in ("square", "triangle", "diamond", "hexagon")]
        if not cand:
            continue
        k = int(rng.choice(cand))
        o = sc.objects[k]
        others = [p for i, p in enumerate(sc.objects) if i != k]
        v0 = regular_vertices(o)
        src_poly = Poly(v0, o)
        v1 = v0.copy()
        moved_v = rng.choice(len(v0), size=min(2, len(v0) - 1), replace=False)
        for i in moved_v:                     # vertices pushed outwards or pulled in along their radius, and sideways
            rad = (v0[i] - [o.cx, o.cy]) / o.r
            tang = np.array([-rad[1], rad[0]])
            v1[i] = v0[i] + rad * rng.uniform(-0.35, 0.6) * o.r + tang * rng.uniform(-0.3, 0.3) * o.r
        gt_poly = Poly(v1, o)
        if np.abs(v1 - v0).max() < 6 or not (fits(gt_poly, size) and clear_of(gt_poly, others, size)):
            continue
        if not _convex(v1):
            continue
        m0, m1 = shape_mask(src_poly, size), shape_mask(gt_poly, size)
        if (m0 ^ m1).sum() < 0.25 * m0.sum():
            continue                  # a visible deformation: at least a quarter of the polygon's area changes
        src_objs = [src_poly if i == k else p for i, p in enumerate(sc.objects)]
        gt_objs = [gt_poly if i == k else p for i, p in enumerate(sc.objects)]
        src, gt = render_objects(sc, src_objs), render_objects(sc, gt_objs)
        objects = [obj_entry(p, src, gt, size, size, False) for p in others]
        e = obj_entry(src_poly, src, gt, size, size, True, src_poly, gt_poly)
        c0, c1 = centroid(e["src"]), centroid(e["gt"])
        e["md0"] = math.hypot(c1[0] - c0[0], c1[1] - c0[1])
        objects.append(e)
        lm_src, lm_tgt = outline_points(v0), outline_points(v1)
        lm_src = np.clip(lm_src, 0, size - 1e-3)
        lm_tgt = np.clip(lm_tgt, 0, size - 1e-3)
        region = dilate(shape_mask(src_poly, size) | shape_mask(gt_poly, size), REGION_DILATE)
        instr = dict(landmarks=dict(source=lm_src.round(2).tolist(), target=lm_tgt.round(2).tolist()),
                     vertices=dict(source=v0.tolist(), target=v1.tolist()),
                     mask=_user_mask([src_poly, gt_poly], size), prompt=prompt_for(sc.objects))
        return TaskSample(task, seed, index, scene_seed, src, gt, region, instr, objects)
    raise RuntimeError(f"no {task} sample for seed {seed} index {index}")


def _convex(v: np.ndarray) -> bool:
    n = len(v)
    signs = []
    for i in range(n):
        a, b, c = v[i], v[(i + 1) % n], v[(i + 2) % n]
        signs.append(np.sign((b[0] - a[0]) * (c[1] - b[1]) - (b[1] - a[1]) * (c[0] - b[0])))
    return all(s > 0 for s in signs) or all(s < 0 for s in signs)


_MAKERS = dict(drag=_drag, drag_multi=_drag, drag_two=_drag, move=_move, resize=_move, paste=_paste,
               appearance=_recolour, prompt=_recolour, outpaint=_outpaint, inpaint=_inpaint, style=_style,
               landmarks=_landmarks)


def make_task(task: str, seed: int = 0, index: int = 0, size: int = 128) -> TaskSample:
    if task not in _MAKERS:
        raise ValueError(f"unknown task {task!r}; choose from {TASKS}")
    return _MAKERS[task](task, int(seed), int(index), int(size))


def make_tasks(task: str, n: int, seed: int = 0, size: int = 128) -> list:
    return [make_task(task, seed, i, size) for i in range(n)]


def landmarks_json(s: TaskSample) -> str:
    """The Dual-Branch sampler's landmarks_json for a landmarks sample."""
    lm = s.instruction["landmarks"]
    return json.dumps({"width": s.size, "height": s.size, "source": lm["source"], "target": lm["target"]})


def points_json(s: TaskSample) -> str:
    """Drag Points (JSON) for the sample's pairs."""
    return json.dumps({"version": 1, "width": s.size, "height": s.size,
                       "pairs": [{"handle": h, "target": t} for h, t in s.instruction["points"]]})


# --- pixel baselines (numpy) ----------------------------------------------------------------

def pixel_paste(dst: np.ndarray, src: np.ndarray, src_mask: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """Copy src's pixels under src_mask into dst shifted by (dx, dy) (pixels leaving the image are dropped)."""
    out = dst.copy()
    ys, xs = np.nonzero(src_mask)
    ty, tx = ys + int(dy), xs + int(dx)
    ok = (ty >= 0) & (ty < dst.shape[0]) & (tx >= 0) & (tx < dst.shape[1])
    out[ty[ok], tx[ok]] = src[ys[ok], xs[ok]]
    return out


def naive_appearance(s: TaskSample) -> np.ndarray:
    """Pixel paste of the reference object centred on the source object, clipped to the source mask."""
    ref, rmask, mask = s.instruction["reference"], s.instruction["reference_mask"], s.instruction["mask"]
    (cx, cy), (rx, ry) = centroid(mask), centroid(rmask)
    pasted = pixel_paste(s.source, ref, rmask, int(round(cx - rx)), int(round(cy - ry)))
    return np.where(mask[..., None], pasted, s.source)


def naive_outpaint(s: TaskSample) -> np.ndarray:
    left, right, top, bottom = s.instruction["pad"]
    return np.pad(s.source, ((top, bottom), (left, right), (0, 0)), mode="edge")


def none_outpaint(img: np.ndarray, pad) -> np.ndarray:
    """No edit for outpaint: the image on a mid-grey canvas of the GT's size."""
    left, right, top, bottom = pad
    return np.pad(img, ((top, bottom), (left, right), (0, 0)), mode="constant", constant_values=0.5)


def naive_inpaint(s: TaskSample) -> np.ndarray:
    """The hole filled with the mean colour of a ring around it."""
    mask = s.instruction["mask"]
    ring = dilate(mask, 3) & ~mask
    out = s.source.copy()
    out[mask] = s.source[ring].mean(0)
    return out
