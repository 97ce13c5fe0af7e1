"""ShapeDrag captions and a caption scorer (numpy only).

* caption(scene): names every object's colour and shape, left to right, and the background
  texture: "a red circle and a blue diamond on a checkered background". Colour names are the hue
  bins of scenes.OBJECT_HUES; shape names come from scenes.SHAPES. scenes.py's "square" and
  "diamond" are one shape at a uniformly random angle, so a quadrilateral is named by how it
  looks: "diamond" when its corners point (within 22.5 degrees) up / down / left / right,
  "square" otherwise.
* contains(img, colour, shape): does the image hold an object of that colour and shape? The
  colour is segmented as score.py does (hue within HUE_TOL of the bin, saturation and value above
  score.py's thresholds), connected blobs of at least MIN_AREA pixels are kept (holes filled), and
  each blob's shape is read from two measures: elongation (sqrt of the ratio of the second-moment
  eigenvalues: an ellipse is < 0.8, the regular shapes ~1) and fill (area / area of the circle
  through the blob's farthest pixel: circle 1, hexagon 0.83, square 0.64, triangle 0.41).
  Square and diamond are one class for the scorer (QUAD): the blob's outline does not say which
  name a generated quadrilateral was meant to have once its corners are rounded.
"""
from __future__ import annotations

import math
from collections import deque

import numpy as np

from . import scenes
from .score import segment

COLOURS = ("red", "yellow", "green", "cyan", "blue", "magenta")     # scenes.OBJECT_HUES, in order
BACKGROUNDS = {"stripes": "striped", "checker": "checkered", "noise": "mottled", "dots": "dotted",
               "gradient": "gradient"}
QUAD = ("square", "diamond")

MIN_AREA = 60            # pixels (at 128x128 the smallest object, a triangle of radius 11.5, has ~170)

# shape thresholds (see classify)
ELONGATED = 0.86
FILL_CIRCLE = 0.875
FILL_HEXAGON = 0.725
FILL_QUAD = 0.53


def colour_name(hue: float) -> str:
    i = int(round((hue % 360.0) / 60.0)) % 6
    return COLOURS[i]


def colour_hue(name: str) -> float:
    return scenes.OBJECT_HUES[COLOURS.index(name)]


def shape_name(o) -> str:
    """The caption's shape for a scenes.Obj: scenes.SHAPES, a quadrilateral named by its corners."""
    if o.shape not in QUAD:
        return o.shape
    corner = math.degrees(o.angle + (math.pi / 4 if o.shape == "diamond" else 0.0)) % 90.0
    return "diamond" if min(corner, 90.0 - corner) < 22.5 else "square"


def describe(o) -> str:
    return f"{colour_name(o.hue)} {shape_name(o)}"


def caption(sc, objects=None) -> str:
    objs = sorted(sc.objects if objects is None else objects, key=lambda o: o.cx)
    names = [f"a {describe(o)}" for o in objs]
    if len(names) <= 2:
        what = " and ".join(names)
    else:
        what = ", ".join(names[:-1]) + " and " + names[-1]
    bg = BACKGROUNDS[sc.bg["texture"]]
    return f"{what} on a {bg} background" if what else f"a {bg} background"


def parse(text: str) -> list:
    """caption -> [(colour, shape)] in caption order (the objects it names)."""
    words = text.replace(",", " ").split()
    out = []
    for a, b in zip(words, words[1:]):
        if a in COLOURS and b in scenes.SHAPES:
            out.append((a, b))
    return out


# --- the scorer -----------------------------------------------------------------------------



def components(mask: np.ndarray) -> list:
    """4-connected components of a bool mask -> [bool mask], largest first."""
    mask = np.asarray(mask, bool)
    H, W = mask.shape
    label = np.zeros((H, W), np.int32)
    comps = []
    for y0, x0 in zip(*np.nonzero(mask)):
        if label[y0, x0]:
            continue
        n = len(comps) + 1
        label[y0, x0] = n
        q = deque([(y0, x0)])
        pix = []
        while q:
            y, x = q.popleft()
            pix.append((y, x))
            for yy, xx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= yy < H and 0 <= xx < W and mask[yy, xx] and not label[yy, xx]:
                    label[yy, xx] = n
                    q.append((yy, xx))
        comps.append(pix)
    out = []
    for n, pix in enumerate(comps, 1):
        out.append(label == n)
    out.sort(key=lambda m: -int(m.sum()))
    return out


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """The mask with every region not connected to the border through ~mask filled in."""
    mask = np.asarray(mask, bool)
    H, W = mask.shape
    outside = np.zeros((H, W), bool)
    q = deque()
    for y in range(H):
        for x in (0, W - 1):
            if not mask[y, x] and not outside[y, x]:
                outside[y, x] = True
                q.append((y, x))
    for x in range(W):
        for y in (0, H - 1):
            if not mask[y, x] and not outside[y, x]:
                outside[y, x] = True
                q.append((y, x))
    while q:
        y, x = q.popleft()
        for yy, xx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
            if 0 <= yy < H and 0 <= xx < W and not mask[yy, xx] and not outside[yy, xx]:
                outside[yy, xx] = True
                q.append((yy, xx))
    return ~outside


def measures(blob: np.ndarray) -> dict:
    """Area, elongation (sqrt(lambda_min / lambda_max) of the pixel covariance) and fill (area over the
    area of the circle, around the centroid, through the farthest pixel's far edge)."""
    ys, xs = np.nonzero(blob)
    area = len(xs)
    x, y = xs + 0.5, ys + 0.5
    cx, cy = x.mean(), y.mean()
    dx, dy = x - cx, y - cy
    cov = np.array([[np.mean(dx * dx), np.mean(dx * dy)], [np.mean(dx * dy), np.mean(dy * dy)]])
    ev = np.linalg.eigvalsh(cov)
    elong = float(math.sqrt(max(ev[0], 0.0) / max(ev[1], 1e-9)))
    r = np.hypot(dx, dy)
    rmax = float(np.sort(r)[-max(1, area // 200):].mean()) + 0.5      # robust to a stray pixel
    fill = float(area / (math.pi * rmax * rmax))
    return dict(area=area, cx=float(cx), cy=float(cy), elong=elong, fill=fill, rmax=rmax)


def classify(blob: np.ndarray) -> str:
    """A blob's shape: circle, ellipse, hexagon, square (any quadrilateral, QUAD) or triangle."""
    m = measures(blob)
    if m["elong"] < ELONGATED:
        return "ellipse"
    if m["fill"] >= FILL_CIRCLE:
        return "circle"
    if m["fill"] >= FILL_HEXAGON:
        return "hexagon"
    if m["fill"] >= FILL_QUAD:
        return "square"
    return "triangle"


def same_shape(a: str, b: str) -> bool:
    return a == b or (a in QUAD and b in QUAD)


def blobs(img: np.ndarray, colour: str) -> list:
    """The image's objects of this colour: [(shape, blob mask)], largest first."""
    seg = segment(np.asarray(img, np.float32), colour_hue(colour))
    out = []
    for c in components(seg):
        if c.sum() < MIN_AREA:
            break
        c = fill_holes(c)
        out.append((classify(c), c))
    return out


def contains(img: np.ndarray, colour: str, shape: str | None = None) -> bool:
    """Does img (float [H, W, 3] in [0, 1]) hold an object of this colour (and shape, if given)?"""
    found = blobs(img, colour)
    if shape is None:
        return bool(found)
    return any(same_shape(s, shape) for s, _ in found)


def contains_shape(img: np.ndarray, shape: str) -> bool:
    """Does img hold an object of this shape in any colour?"""
    return any(same_shape(s, shape) for c in COLOURS for s, _ in blobs(img, c))


def check(img: np.ndarray, text: str) -> dict:
    """Score an image against a caption: per named object, colour+shape / colour / shape found;
    -> {n, both, colour, shape, all} (counts, and whether every named object was found)."""
    named = parse(text)
    found = {c: blobs(img, c) for c in COLOURS}
    both = sum(any(same_shape(s, sh) for s, _ in found[c]) for c, sh in named)
    colour = sum(bool(found[c]) for c, _ in named)
    shape = sum(any(same_shape(s, sh) for cc in COLOURS for s, _ in found[cc]) for _, sh in named)
    return dict(n=len(named), both=both, colour=colour, shape=shape, all=bool(named) and both == len(named))
