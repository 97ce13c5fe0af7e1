"""DRAG_POINTS: handle -> target pairs in image pixels, and the JSON format the widget writes.

    {"version": 1, "width": W, "height": H, "pairs": [{"handle": [x, y], "target": [x, y]}]}

Coordinates are pixels of an image of size W x H (x right, y down, 0 <= x < W, 0 <= y < H).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

from .errors import input_error

MAX_PAIRS = 64
MAX_SIDE = 16384
MIN_DRAG_PX = 0.5


def _finite(v) -> bool:
    """math.isfinite that answers False (not OverflowError) for ints too large for a float."""
    try:
        return math.isfinite(v)
    except (OverflowError, TypeError):
        return False


def _to_float(c) -> float:
    try:
        return float(c)
    except OverflowError:  # an int beyond the float range: infinite for the checks
        return math.inf if c > 0 else -math.inf


@dataclass(frozen=True)
class DragPoints:
    width: int
    height: int
    pairs: tuple  # ((hx, hy), (tx, ty)), floats

    def validate(self, node: str = "DragPoints", input_name: str = "points",
                 require_pairs: bool = True) -> "DragPoints":
        w, h = self.width, self.height
        if not (isinstance(w, int) and isinstance(h, int)) or not (0 < w <= MAX_SIDE and 0 < h <= MAX_SIDE):
            raise input_error(node, input_name, f"image size {w}x{h} is invalid; width and height must be integers in 1..{MAX_SIDE}")
        if require_pairs and not self.pairs:
            raise input_error(node, input_name, "no handle -> target pairs; give at least one pair")
        if len(self.pairs) > MAX_PAIRS:
            raise input_error(node, input_name, f"{len(self.pairs)} pairs; at most {MAX_PAIRS} are supported")
        for i, pair in enumerate(self.pairs):
            for name, (x, y) in zip(("handle", "target"), pair):
                if not (_finite(x) and _finite(y)):
                    raise input_error(node, input_name, f"pair {i + 1}: {name} ({x}, {y}) is not a finite number")
                if not (0 <= x < w and 0 <= y < h):
                    raise input_error(node, input_name, f"pair {i + 1}: {name} ({x:g}, {y:g}) is outside the {w}x{h} image; valid x is 0..{w - 1}, y is 0..{h - 1}")
            (hx, hy), (tx, ty) = pair
            if math.hypot(tx - hx, ty - hy) < MIN_DRAG_PX:
                raise input_error(node, input_name, f"pair {i + 1}: handle and target are the same point ({hx:g}, {hy:g}); move the target away from the handle")
        return self

    def check_size(self, width: int, height: int, node: str, input_name: str) -> "DragPoints":
        """The points must refer to an image of exactly this size."""
        if (self.width, self.height) != (width, height):
            raise input_error(node, input_name, f"the points were placed on a {self.width}x{self.height} image but the image here is {width}x{height}; place them on this image or resize it")
        return self

    def scaled(self, width: int, height: int) -> "DragPoints":
        sx, sy = width / self.width, height / self.height
        pairs = tuple(((hx * sx, hy * sy), (tx * sx, ty * sy)) for (hx, hy), (tx, ty) in self.pairs)
        return DragPoints(width, height, pairs)

    def in_cells(self, factor: int = 8) -> list:
        """Pairs in latent cells: pixel / factor (floats, cell centres at integer + 0.5)."""
        return [((hx / factor, hy / factor), (tx / factor, ty / factor)) for (hx, hy), (tx, ty) in self.pairs]

    def to_json(self) -> str:
        return json.dumps({"version": 1, "width": self.width, "height": self.height,
                           "pairs": [{"handle": list(h), "target": list(t)} for h, t in self.pairs]})

    @classmethod
    def from_json(cls, text: str, node: str = "DragPoints", input_name: str = "points_json",
                  width: int | None = None, height: int | None = None,
                  require_pairs: bool = True) -> "DragPoints":
        """Parse and validate. width/height, when given, fill a missing size or must match it."""
        try:
            data = json.loads(text) if isinstance(text, str) else text
        except (ValueError, TypeError, RecursionError) as e:  # JSONDecodeError is a ValueError
            raise input_error(node, input_name, f"not valid JSON ({e.msg if hasattr(e, 'msg') else e}); expected "
                              '{"version": 1, "width": W, "height": H, "pairs": [{"handle": [x, y], "target": [x, y]}]}') from None
        if not isinstance(data, dict):
            raise input_error(node, input_name, f"expected a JSON object with 'pairs', got {type(data).__name__}")
        version = data.get("version", 1)
        if version != 1:
            raise input_error(node, input_name, f"unsupported version {version!r}; only version 1 exists")
        w, h = data.get("width", width), data.get("height", height)
        for name, v in (("width", w), ("height", h)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not _finite(v) or v != int(v):
                raise input_error(node, input_name, f"'{name}' must be a whole number of pixels, got {v!r}")
        w, h = int(w), int(h)
        if width is not None and height is not None and (w, h) != (width, height):
            raise input_error(node, input_name, f"the points are for a {w}x{h} image but the image is {width}x{height}")
        raw = data.get("pairs")
        if not isinstance(raw, list):
            raise input_error(node, input_name, "'pairs' must be a list of {\"handle\": [x, y], \"target\": [x, y]}")
        if len(raw) > MAX_PAIRS:
            raise input_error(node, input_name, f"{len(raw)} pairs; at most {MAX_PAIRS} are supported")
        pairs = []
        for i, p in enumerate(raw):
            if not isinstance(p, dict) or "handle" not in p or "target" not in p:
                raise input_error(node, input_name, f"pair {i + 1} must be an object with 'handle' and 'target'")
            pair = []
            for name in ("handle", "target"):
                xy = p[name]
                if (not isinstance(xy, (list, tuple)) or len(xy) != 2
                        or any(isinstance(c, bool) or not isinstance(c, (int, float)) for c in xy)):
                    raise input_error(node, input_name, f"pair {i + 1}: '{name}' must be [x, y] numbers, got {xy!r}")
                pair.append((_to_float(xy[0]), _to_float(xy[1])))
            pairs.append(tuple(pair))
        return cls(w, h, tuple(pairs)).validate(node, input_name, require_pairs)

    @classmethod
    def from_flat(cls, points: list, width: int, height: int, node: str, input_name: str,
                  require_pairs: bool = True) -> "DragPoints":
        """DragBench / Drag100 form: [[hx, hy], [tx, ty], [hx, hy], ...] (alternating)."""
        if not isinstance(points, list) or len(points) % 2:
            raise input_error(node, input_name, "'points' must be a list of alternating handle and target [x, y]")
        pairs = []
        for i in range(0, len(points), 2):
            try:
                h = (_to_float(points[i][0]), _to_float(points[i][1]))
                t = (_to_float(points[i + 1][0]), _to_float(points[i + 1][1]))
            except (TypeError, ValueError, IndexError, KeyError):
                raise input_error(node, input_name, f"point {i + 1} or {i + 2} is not [x, y]") from None
            pairs.append((h, t))
        return cls(width, height, tuple(pairs)).validate(node, input_name, require_pairs)
