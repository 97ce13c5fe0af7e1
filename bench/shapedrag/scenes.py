"""ShapeDrag scenes: textured shapes on textured backgrounds, with known geometry (numpy only).

Every scene is drawn from a seed, so a scene, its object masks and a drag instruction are exactly
reproducible. Colours are chosen so that the objects can be found again by colour alone:

* background: low saturation (HSV s <= BG_MAX_SAT), any texture (stripes, checker, smooth noise,
  dots, gradient);
* objects: saturated (s >= 0.7, v >= 0.7), each with its own hue bin (OBJECT_HUES, jittered by at
  most HUE_JITTER degrees), textured only in brightness (stripes, dots, rings, shading), so every
  pixel of an object keeps its hue and a high saturation.

The scorer (score.py) segments an object by "hue within HUE_TOL of the object's hue, saturation >=
SEG_MIN_SAT, value >= SEG_MIN_VAL"; with at most one object per hue bin and bins 60 degrees apart
(jitter 8, tolerance 24), no two objects of one scene can be confused.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

PROMPT = "colorful shapes on a textured background"   # the one prompt the ShapeDrag model is trained with
OBJECT_HUES = (0.0, 60.0, 120.0, 180.0, 240.0, 300.0)   # red, yellow, green, cyan, blue, magenta
HUE_JITTER = 8.0
BG_MAX_SAT = 0.22
SHAPES = ("circle", "ellipse", "square", "triangle", "diamond", "hexagon")
OBJ_TEXTURES = ("solid", "stripes", "dots", "rings", "shade")
BG_TEXTURES = ("stripes", "checker", "noise", "dots", "gradient")


@dataclass
class Obj:
    shape: str
    cx: float
    cy: float
    r: float          # outer radius (pixels)
    angle: float      # radians
    aspect: float     # ellipse: minor/major
    hue: float        # degrees
    sat: float
    val: float
    texture: str
    tex_period: float
    tex_angle: float

    def moved(self, dx: float, dy: float) -> "Obj":
        d = dict(self.__dict__)
        d["cx"] += dx
        d["cy"] += dy
        return Obj(**d)


@dataclass
class Scene:
    size: int
    seed: int
    bg: dict
    objects: list = field(default_factory=list)


# --- colour helpers -------------------------------------------------------------------------

def hsv_to_rgb(h, s, v):
    """h in degrees, s, v in [0, 1] (arrays or scalars) -> rgb [..., 3] in [0, 1]."""
    h = np.asarray(h, dtype=np.float32) % 360.0 / 60.0
    s = np.asarray(s, dtype=np.float32)
    v = np.asarray(v, dtype=np.float32)
    i = np.floor(h)
    f = h - i
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    i = i.astype(np.int64) % 6
    r = np.choose(i, [v, q, p, p, t, v])
    g = np.choose(i, [t, v, v, q, p, p])
    b = np.choose(i, [p, p, t, v, v, q])
    return np.stack([r, g, b], -1)


def rgb_to_hsv(rgb):
    """rgb [..., 3] in [0, 1] -> (h degrees, s, v)."""
    rgb = np.asarray(rgb, dtype=np.float32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    mx, mn = rgb.max(-1), rgb.min(-1)
    d = mx - mn
    s = np.where(mx > 1e-6, d / np.maximum(mx, 1e-6), 0.0)
    dd = np.maximum(d, 1e-6)
    h = np.where(mx == r, ((g - b) / dd) % 6, np.where(mx == g, (b - r) / dd + 2, (r - g) / dd + 4)) * 60.0
    h = np.where(d > 1e-6, h, 0.0)
    return h % 360.0, s, mx


# --- geometry -------------------------------------------------------------------------------

def _grid(size):
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    return xs + 0.5, ys + 0.5


def _polygon_sdf(x, y, n, r, angle):
    """Regular n-gon with circumradius r: max over edges of the signed edge distance."""
    apothem = r * np.cos(np.pi / n)
    d = None
    for k in range(n):
        a = angle + (k + 0.5) * 2 * np.pi / n
        e = x * np.cos(a) + y * np.sin(a) - apothem
        d = e if d is None else np.maximum(d, e)
    return d


def object_sdf(o: Obj, x, y):
    """Signed distance-like field (pixels), < 0 inside."""
    px, py = x - o.cx, y - o.cy
    if o.shape == "circle":
        return np.hypot(px, py) - o.r
    if o.shape == "ellipse":
        c, s = np.cos(o.angle), np.sin(o.angle)
        u, v = px * c + py * s, (-px * s + py * c) / o.aspect
        return (np.hypot(u, v) - o.r) * o.aspect
    n = {"square": 4, "triangle": 3, "diamond": 4, "hexagon": 6}[o.shape]
    ang = o.angle + (np.pi / 4 if o.shape == "diamond" else 0.0)
    return _polygon_sdf(px, py, n, o.r, ang)


def object_alpha(o: Obj, size: int):
    x, y = _grid(size)
    return np.clip(0.5 - object_sdf(o, x, y), 0.0, 1.0).astype(np.float32)


def object_mask(o: Obj, size: int):
    return object_alpha(o, size) >= 0.5


def _object_rgb(o: Obj, size: int):
    x, y = _grid(size)
    px, py = x - o.cx, y - o.cy
    v = np.full((size, size), o.val, np.float32)
    ca, sa = np.cos(o.tex_angle), np.sin(o.tex_angle)
    if o.texture == "stripes":
        u = px * ca + py * sa
        v = v * (0.78 + 0.22 * np.cos(2 * np.pi * u / o.tex_period))
    elif o.texture == "dots":
        u, w = px * ca + py * sa, -px * sa + py * ca
        d = np.hypot((u / o.tex_period + 0.5) % 1 - 0.5, (w / o.tex_period + 0.5) % 1 - 0.5)
        v = v * np.where(d < 0.25, 0.62, 1.0)
    elif o.texture == "rings":
        v = v * (0.8 + 0.2 * np.cos(2 * np.pi * np.hypot(px, py) / o.tex_period))
    elif o.texture == "shade":
        u = (px * ca + py * sa) / max(o.r, 1.0)
        v = v * (0.85 + 0.15 * np.clip(u, -1, 1))
    return hsv_to_rgb(o.hue, o.sat, np.clip(v, 0, 1))


# --- background -----------------------------------------------------------------------------

def _smooth_noise(rng, size, cells):
    g = rng.random((cells + 1, cells + 1)).astype(np.float32)
    t = np.linspace(0, cells, size, endpoint=False, dtype=np.float32) + cells / size / 2
    i = np.floor(t).astype(int)
    f = t - i
    f = f * f * (3 - 2 * f)
    a = g[i][:, i] * (1 - f)[None, :] + g[i][:, np.minimum(i + 1, cells)] * f[None, :]
    b = g[np.minimum(i + 1, cells)][:, i] * (1 - f)[None, :] + g[np.minimum(i + 1, cells)][:, np.minimum(i + 1, cells)] * f[None, :]
    return a * (1 - f)[:, None] + b * f[:, None]


def make_background(rng, size: int) -> dict:
    return dict(
        texture=BG_TEXTURES[rng.integers(len(BG_TEXTURES))],
        hue=float(rng.uniform(0, 360)), sat=float(rng.uniform(0.0, BG_MAX_SAT)),
        hue2=float(rng.uniform(0, 360)), sat2=float(rng.uniform(0.0, BG_MAX_SAT)),
        v1=float(rng.uniform(0.25, 0.9)), v2=float(rng.uniform(0.25, 0.9)),
        period=float(rng.uniform(14, 32)), angle=float(rng.uniform(0, np.pi)),
        noise_seed=int(rng.integers(2 ** 31)), cells=int(rng.integers(3, 9)),
    )


def render_background(bg: dict, size: int):
    x, y = _grid(size)
    ca, sa = np.cos(bg["angle"]), np.sin(bg["angle"])
    u, w = x * ca + y * sa, -x * sa + y * ca
    t = bg["texture"]
    if t == "stripes":
        m = 0.5 + 0.5 * np.cos(2 * np.pi * u / bg["period"])
    elif t == "checker":
        m = ((np.floor(u / bg["period"]) + np.floor(w / bg["period"])) % 2).astype(np.float32)
        m = 0.15 + 0.7 * m
    elif t == "noise":
        m = _smooth_noise(np.random.default_rng(bg["noise_seed"]), size, bg["cells"])
    elif t == "dots":
        d = np.hypot((u / bg["period"]) % 1 - 0.5, (w / bg["period"]) % 1 - 0.5)
        m = np.clip((0.3 - d) * 12, 0, 1)
    else:  # gradient
        m = np.clip(u / (size * 1.4) + 0.2, 0, 1)
    m = m.astype(np.float32)[..., None]
    c1 = hsv_to_rgb(bg["hue"], bg["sat"], bg["v1"])
    c2 = hsv_to_rgb(bg["hue2"], bg["sat2"], bg["v2"])
    return (c1 * (1 - m) + c2 * m).astype(np.float32)


# --- scenes ---------------------------------------------------------------------------------

def random_object(rng, size: int, hue_bin: int, r_range=None) -> Obj:
    r_lo, r_hi = r_range or (size * 0.09, size * 0.2)
    r = float(rng.uniform(r_lo, r_hi))
    shape = SHAPES[rng.integers(len(SHAPES))]
    m = r + 3
    return Obj(shape=shape, cx=float(rng.uniform(m, size - m)), cy=float(rng.uniform(m, size - m)), r=r,
               angle=float(rng.uniform(0, 2 * np.pi)), aspect=float(rng.uniform(0.5, 0.8)),
               hue=float((OBJECT_HUES[hue_bin] + rng.uniform(-HUE_JITTER, HUE_JITTER)) % 360),
               sat=float(rng.uniform(0.7, 1.0)), val=float(rng.uniform(0.7, 1.0)),
               texture=OBJ_TEXTURES[rng.integers(len(OBJ_TEXTURES))],
               tex_period=float(rng.uniform(8, 16)), tex_angle=float(rng.uniform(0, np.pi)))


def overlaps(a: Obj, b: Obj, size: int, gap: float = 4.0) -> bool:
    x, y = _grid(size)
    return bool(((object_sdf(a, x, y) < gap / 2) & (object_sdf(b, x, y) < gap / 2)).any())


def make_scene(seed: int, size: int = 128, n_objects: tuple = (1, 3)) -> Scene:
    """A random scene: background + n non-overlapping objects of different hue bins."""
    rng = np.random.default_rng(seed)
    sc = Scene(size=size, seed=seed, bg=make_background(rng, size))
    n = int(rng.integers(n_objects[0], n_objects[1] + 1))
    bins = rng.permutation(len(OBJECT_HUES))[:n]
    for hb in bins:
        for _ in range(20):
            o = random_object(rng, size, int(hb))
            if not any(overlaps(o, p, size) for p in sc.objects):
                sc.objects.append(o)
                break
    return sc


def render(sc: Scene, objects: list | None = None):
    """-> float32 [size, size, 3] in [0, 1]."""
    img = render_background(sc.bg, sc.size)
    for o in (sc.objects if objects is None else objects):
        a = object_alpha(o, sc.size)[..., None]
        img = img * (1 - a) + _object_rgb(o, sc.size) * a
    return np.clip(img, 0, 1).astype(np.float32)


def render_batch(seeds, size: int = 128):
    return np.stack([render(make_scene(int(s), size)) for s in seeds])
