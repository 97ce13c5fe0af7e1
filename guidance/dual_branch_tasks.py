"""How each VersaFusion task builds m_gud, m_gen, m_share and the feature correspondence (pure torch).

Every task becomes one :class:`TaskGeometry` on the latent grid (1 cell = 8 image pixels):

    m_gen        where the generation branch must show the edited content        [H, W] 0..1
    edit_grid    for each generation cell, where (normalised x, y; grid_sample,   [H, W, 2]
                 align_corners=False) in the source branch its content comes from
    m_gud        the source region the edit reads, on the source branch's grid    [H, W] 0..1
    edit_source  "gud" (the guidance branch, i.e. the image itself) or "ref" (the reference image)
    edit_mode    "local" (cell-to-cell correspondence) or "global" (mean features of the two regions)
    m_share      what must stay as it was (compared cell by cell with the guidance branch)
    edit_region  where the generation branch is free: PNI's inversion guidance is not applied there, and (with
                 region split) where the edit terms' gradient acts
    share_region where the preservation term's gradient acts (region split); None = outside edit_region. Style
                 edits the whole image and keeps its layout everywhere: both gradients act on every cell
    pad          (left, right, top, bottom) latent cells added around the canvas (outpaint only)
    kv_mask      guidance tokens the generation branch may read (None = all; outpaint: the old canvas;
                 appearance, paste: the image outside the replaced / pasted region)
    kv_ref_mask  reference tokens it may read (None = all; appearance, paste: the reference object)
    m_vacate     the cells the edit empties (drag: handle disks outside the target disks; move: the old
                 place outside the new one), where DragonDiffusion's removal terms act (None: none)

Points are continuous latent coordinates: pixel / 8, so cell (row i, column j) spans
[j, j + 1) x [i, i + 1) and its centre is (j + 0.5, i + 0.5) -- DragPoints.in_cells().

Tasks: drag (DRAG_POINTS), move / resize (region mask + offset + scale), appearance (reference,
global), paste (reference region placed by offset + scale), outpaint (padding), style (reference,
global over the whole image), landmarks (two 68-point sets, from JSON or from 68 drag pairs).
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .energy import identity_grid
from .errors import input_error

TASKS = ("drag", "move", "appearance", "paste", "outpaint", "style", "landmarks")
REFERENCE_TASKS = ("appearance", "paste", "style")
LANDMARK_COUNT = 68


@dataclass(frozen=True)
class TaskGeometry:
    task: str
    hw: tuple                   # generation grid (H, W), padded for outpaint
    m_gen: torch.Tensor
    edit_grid: torch.Tensor
    m_gud: torch.Tensor
    edit_source: str
    edit_mode: str
    m_share: torch.Tensor
    share_grid: torch.Tensor
    edit_region: torch.Tensor
    pad: tuple = (0, 0, 0, 0)
    kv_mask: torch.Tensor | None = None
    m_vacate: torch.Tensor | None = None
    kv_ref_mask: torch.Tensor | None = None
    share_region: torch.Tensor | None = None

    @property
    def preserve_region(self) -> torch.Tensor:
        """Where the preservation term's gradient acts: ``share_region``, or everything outside the edit region."""
        return 1.0 - self.edit_region if self.share_region is None else self.share_region

    def to(self, device) -> "TaskGeometry":
        """Copies on ``device`` (fresh tensors: usable by autograd even if these were made in inference mode)."""
        mv = lambda t: None if t is None else t.to(device).clone()
        return TaskGeometry(self.task, self.hw, mv(self.m_gen), mv(self.edit_grid), mv(self.m_gud), self.edit_source,
                            self.edit_mode, mv(self.m_share), mv(self.share_grid), mv(self.edit_region), self.pad,
                            mv(self.kv_mask), mv(self.m_vacate), mv(self.kv_ref_mask), mv(self.share_region))


# --- coordinates and shapes --------------------------------------------------------------------

def cell_centres(hw: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) continuous coordinates of every cell centre, each [H, W]."""
    h, w = int(hw[0]), int(hw[1])
    ys = torch.arange(h, dtype=torch.float32) + 0.5
    xs = torch.arange(w, dtype=torch.float32) + 0.5
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return gx, gy


def normalise(x: torch.Tensor, y: torch.Tensor, hw: tuple) -> torch.Tensor:
    """Continuous (x, y) on an (H, W) grid -> grid_sample coordinates [..., 2] (align_corners=False)."""
    h, w = int(hw[0]), int(hw[1])
    return torch.stack([x / w * 2 - 1, y / h * 2 - 1], dim=-1)


def disk(hw: tuple, centre: tuple, radius: float) -> torch.Tensor:
    """Cells whose centre lies within ``radius`` cells of ``centre`` (continuous x, y); at least the cell
    that contains the centre."""
    gx, gy = cell_centres(hw)
    cx, cy = float(centre[0]), float(centre[1])
    m = ((gx - cx) ** 2 + (gy - cy) ** 2 <= radius ** 2 + 1e-6).float()
    i, j = int(math.floor(cy)), int(math.floor(cx))
    if 0 <= i < hw[0] and 0 <= j < hw[1]:
        m[i, j] = 1.0
    return m


def dilate(mask: torch.Tensor, cells: int) -> torch.Tensor:
    """Binary dilation by a (2c+1)^2 square."""
    if cells <= 0:
        return (mask > 0.5).float()
    m = (mask > 0.5).float()[None, None]
    return (F.max_pool2d(m, 2 * cells + 1, stride=1, padding=cells)[0, 0] > 0).float()


def mask_to_latent(mask: torch.Tensor, hw: tuple, node: str, input_name: str) -> torch.Tensor:
    """A ComfyUI MASK ([B, H, W] or [H, W], image pixels) -> a binary [h, w] mask on the latent grid
    (a cell is in when at least half of its pixels are). The mask must match the image's size."""
    m = mask.float()
    if m.ndim == 3:
        m = m[0]
    if m.ndim != 2:
        raise input_error(node, input_name, f"expected a MASK [batch, height, width], got shape {tuple(mask.shape)}")
    h, w = int(hw[0]), int(hw[1])
    if tuple(m.shape) != (h, w):
        if tuple(m.shape) != (h * 8, w * 8):
            raise input_error(node, input_name, f"the mask is {m.shape[1]}x{m.shape[0]} pixels but the image is "
                                                f"{w * 8}x{h * 8} ({w}x{h} latent cells); draw it on this image")
        m = F.adaptive_avg_pool2d(m[None, None], (h, w))[0, 0]
    return (m >= 0.5).float()


def _bbox_centre(mask: torch.Tensor) -> tuple[float, float]:
    ys, xs = torch.nonzero(mask > 0.5, as_tuple=True)
    return (float(xs.min()) + float(xs.max()) + 1) / 2, (float(ys.min()) + float(ys.max()) + 1) / 2


def similarity_transform(src_mask: torch.Tensor, src_hw: tuple, out_hw: tuple, dx: float, dy: float, scale: float,
                         node: str, input_name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Place ``src_mask`` scaled by ``scale`` about its box centre and shifted by (dx, dy) cells.

    Returns (m_gen on out_hw, grid on out_hw into src_hw): generation cell p reads source position
    q = c + (p - c - d) / scale, c the source box centre, d the offset."""
    if scale <= 0 or not math.isfinite(scale):
        raise input_error(node, "scale", f"{scale} must be a positive number")
    if float(src_mask.sum()) == 0:
        raise input_error(node, input_name, "the region mask is empty; paint the object to move")
    cx, cy = _bbox_centre(src_mask)
    gx, gy = cell_centres(out_hw)
    qx = cx + (gx - cx - dx) / scale
    qy = cy + (gy - cy - dy) / scale
    grid = normalise(qx, qy, src_hw)
    sampled = F.grid_sample(src_mask.float()[None, None], grid[None], mode="nearest", padding_mode="zeros",
                            align_corners=False)[0, 0]
    m_gen = (sampled > 0.5).float()
    if float(m_gen.sum()) == 0:
        raise input_error(node, input_name, f"moved by ({dx:g}, {dy:g}) cells at scale {scale:g} the region leaves the "
                                            f"canvas entirely; use a smaller offset")
    return m_gen, grid


def _geometry(task, hw, m_gen, grid, m_gud, source, mode, m_share, edit_region, pad=(0, 0, 0, 0), kv_mask=None,
              m_vacate=None, kv_ref_mask=None):
    return TaskGeometry(task=task, hw=(int(hw[0]), int(hw[1])), m_gen=m_gen.float(), edit_grid=grid.float(),
                        m_gud=m_gud.float(), edit_source=source, edit_mode=mode, m_share=m_share.float(),
                        share_grid=identity_grid(hw), edit_region=edit_region.float(), pad=tuple(int(p) for p in pad),
                        kv_mask=None if kv_mask is None else kv_mask.float(),
                        m_vacate=None if m_vacate is None else m_vacate.float(),
                        kv_ref_mask=None if kv_ref_mask is None else kv_ref_mask.float())


def vacated(old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """Cells of ``old`` that ``new`` does not cover: what an edit leaves behind."""
    return ((old > 0.5) & ~(new > 0.5)).float()


# --- the tasks -----------------------------------------------------------------------------------

def drag_geometry(pairs: list, hw: tuple, radius: float = 2.0, editable: torch.Tensor | None = None,
                  node: str = "drag", input_name: str = "points", task: str = "drag") -> TaskGeometry:
    """Drag: each handle's neighbourhood (a disk of ``radius`` cells) must reappear at its target.

    m_gen = disks at the targets; a target cell p reads p - (t - h) in the guidance branch (a pure shift
    per pair; where two target disks overlap the nearer target wins). m_gud = disks at the handles.
    Editable area: ``editable`` (the user's mask, latent grid) or, without one, the handle and target
    disks dilated by ``radius``; m_share is everything else."""
    if not pairs:
        raise input_error(node, input_name, "no handle -> target pairs; a drag needs at least one pair")
    h, w = int(hw[0]), int(hw[1])
    gx, gy = cell_centres(hw)
    m_gen = torch.zeros(h, w)
    m_gud = torch.zeros(h, w)
    best = torch.full((h, w), float("inf"))
    qx, qy = gx.clone(), gy.clone()
    for k, ((hx, hy), (tx, ty)) in enumerate(pairs):
        for name, (x, y) in (("handle", (hx, hy)), ("target", (tx, ty))):
            if not (0 <= x < w and 0 <= y < h):
                raise input_error(node, input_name, f"pair {k + 1}: {name} ({x * 8:g}, {y * 8:g}) px lies outside the "
                                                    f"{w * 8}x{h * 8} image")
        dt = disk(hw, (tx, ty), radius)
        dist = (gx - tx) ** 2 + (gy - ty) ** 2
        take = (dt > 0) & (dist < best)
        best = torch.where(take, dist, best)
        qx = torch.where(take, gx - (tx - hx), qx)
        qy = torch.where(take, gy - (ty - hy), qy)
        m_gen = torch.maximum(m_gen, dt)
        m_gud = torch.maximum(m_gud, disk(hw, (hx, hy), radius))
    grid = normalise(qx, qy, hw)
    if editable is None:
        editable = dilate(torch.maximum(m_gen, m_gud), max(1, int(math.ceil(radius))))
    else:
        editable = torch.maximum((editable > 0.5).float(), torch.maximum(m_gen, m_gud))
    m_share = 1.0 - editable
    return _geometry(task, hw, m_gen, grid, m_gud, "gud", "local", m_share, editable, m_vacate=vacated(m_gud, m_gen))


def move_geometry(mask: torch.Tensor, hw: tuple, dx: float, dy: float, scale: float = 1.0,
                  node: str = "move", input_name: str = "mask") -> TaskGeometry:
    """Move / resize: the masked object, scaled by ``scale`` about its box centre and shifted by (dx, dy)
    cells, must appear at its new place (local correspondence into the guidance branch). m_share is
    everything outside the old and the new region; both regions are editable (the vacated area is
    free to be filled)."""
    src = (mask > 0.5).float()
    m_gen, grid = similarity_transform(src, hw, hw, dx, dy, scale, node, input_name)
    if dx == 0 and dy == 0 and scale == 1:
        raise input_error(node, "offset", "offset (0, 0) at scale 1 leaves the object where it is; give an offset or a scale")
    region = torch.maximum(src, m_gen)
    return _geometry("move", hw, m_gen, grid, src, "gud", "local", 1.0 - region, region, m_vacate=vacated(src, m_gen))


def appearance_geometry(mask: torch.Tensor, ref_mask: torch.Tensor, hw: tuple, ref_hw: tuple,
                        node: str = "appearance") -> TaskGeometry:
    """Appearance replacement: the object under ``mask`` takes the look of the reference object under
    ``ref_mask``. Shapes differ, so the edit term compares the two regions' mean features ("global",
    as DragonDiffusion does); everything outside the object is shared."""
    m = (mask > 0.5).float()
    r = (ref_mask > 0.5).float()
    if float(m.sum()) == 0:
        raise input_error(node, "mask", "the mask of the object to change is empty")
    if float(r.sum()) == 0:
        raise input_error(node, "reference_mask", "the reference mask is empty; paint the reference object")
    return _geometry("appearance", hw, m, identity_grid(hw), r, "ref", "global", 1.0 - m, m, kv_mask=1.0 - m,
                     kv_ref_mask=r)


def paste_geometry(ref_mask: torch.Tensor, hw: tuple, ref_hw: tuple, dx: float, dy: float, scale: float = 1.0,
                   node: str = "paste") -> TaskGeometry:
    """Paste: the reference object under ``ref_mask`` is placed into the image, scaled by ``scale`` about
    its box centre and shifted by (dx, dy) cells (local correspondence into the reference branch). The
    rest of the image is shared."""
    r = (ref_mask > 0.5).float()
    m_gen, grid = similarity_transform(r, ref_hw, hw, dx, dy, scale, node, "reference_mask")
    return _geometry("paste", hw, m_gen, grid, r, "ref", "local", 1.0 - m_gen, m_gen, kv_mask=1.0 - m_gen, kv_ref_mask=r)


def outpaint_geometry(hw: tuple, pad: tuple, node: str = "outpaint") -> TaskGeometry:
    """Outpaint: the canvas grows by pad = (left, right, top, bottom) cells. The old canvas is shared
    (cell by cell with the guidance branch, which is padded the same way); the new area must look like
    the image (global similarity of its mean feature to the old canvas's). The generation branch reads
    only the old canvas's keys and values."""
    left, right, top, bottom = (int(p) for p in pad)
    if min(left, right, top, bottom) < 0:
        raise input_error(node, "pad", f"padding ({left}, {right}, {top}, {bottom}) cells must be >= 0")
    if left + right + top + bottom == 0:
        raise input_error(node, "pad", "outpainting needs padding on at least one side (all four are 0)")
    h, w = int(hw[0]) + top + bottom, int(hw[1]) + left + right
    old = torch.zeros(h, w)
    old[top:top + int(hw[0]), left:left + int(hw[1])] = 1.0
    new = 1.0 - old
    return _geometry("outpaint", (h, w), new, identity_grid((h, w)), old, "gud", "global", old, new,
                     (left, right, top, bottom), kv_mask=old)


def style_geometry(hw: tuple) -> TaskGeometry:
    """Style transfer: the whole image takes the reference's feature statistics (global), while its
    layout stays the image's own (m_share = everything, cell by cell). The weights w_e / w_p trade the two:
    both gradients act on every cell (share_region = everything), so the preservation term keeps the layout
    and objects while the edit term brings the style."""
    ones = torch.ones(int(hw[0]), int(hw[1]))
    return dataclasses.replace(_geometry("style", hw, ones, identity_grid(hw), ones, "ref", "global", ones, ones),
                               share_region=ones.clone())


def landmark_geometry(source: list, target: list, hw: tuple, radius: float = 1.0,
                      node: str = "landmarks", input_name: str = "landmarks") -> TaskGeometry:
    """Face landmarks: two 68-point sets (latent cells); every source landmark is dragged to its target
    (a drag with 68 pairs); the face area (the landmarks' box, dilated) is editable."""
    if len(source) != LANDMARK_COUNT or len(target) != LANDMARK_COUNT:
        raise input_error(node, input_name, f"expected two sets of {LANDMARK_COUNT} landmarks (the 68-point scheme), got "
                                            f"{len(source)} and {len(target)}")
    pairs = [((float(a[0]), float(a[1])), (float(b[0]), float(b[1]))) for a, b in zip(source, target)]
    pairs = [p for p in pairs if math.hypot(p[1][0] - p[0][0], p[1][1] - p[0][1]) > 1e-6] or pairs
    h, w = int(hw[0]), int(hw[1])
    xs = [c for p in pairs for c in (p[0][0], p[1][0])]
    ys = [c for p in pairs for c in (p[0][1], p[1][1])]
    face = torch.zeros(h, w)
    x0, x1 = max(0, int(math.floor(min(xs)))), min(w, int(math.ceil(max(xs))))
    y0, y1 = max(0, int(math.floor(min(ys)))), min(h, int(math.ceil(max(ys))))
    face[y0:max(y1, y0 + 1), x0:max(x1, x0 + 1)] = 1.0
    face = dilate(face, max(1, int(math.ceil(radius))))
    g = drag_geometry(pairs, hw, radius, editable=face, node=node, input_name=input_name, task="landmarks")
    return dataclasses.replace(g, m_vacate=None)   # face parts move a little, nothing is removed (as DragonDiffusion)


def parse_landmarks_json(text: str, width: int, height: int, node: str, input_name: str = "landmarks_json"):
    """Two 68-point sets in image pixels from JSON:

        {"width": W, "height": H, "source": [[x, y], ...68], "target": [[x, y], ...68]}

    (width / height optional; when given they must match the image). Returns (source, target) lists."""
    try:
        data = json.loads(text)
    except (ValueError, TypeError, RecursionError) as e:  # JSONDecodeError is a ValueError
        raise input_error(node, input_name, f"not valid JSON ({getattr(e, 'msg', e)}); expected "
                          '{"width": W, "height": H, "source": [[x, y] x 68], "target": [[x, y] x 68]}') from None
    if not isinstance(data, dict) or "source" not in data or "target" not in data:
        raise input_error(node, input_name, "expected an object with 'source' and 'target' lists of 68 [x, y] points")
    w, h = data.get("width", width), data.get("height", height)
    if (w, h) != (width, height):
        raise input_error(node, input_name, f"the landmarks are for a {w}x{h} image but the image is {width}x{height}")
    sets = []
    for key in ("source", "target"):
        pts = data[key]
        if not isinstance(pts, list) or len(pts) != LANDMARK_COUNT:
            raise input_error(node, input_name, f"'{key}' must list {LANDMARK_COUNT} [x, y] points (68-point scheme), "
                                                f"got {len(pts) if isinstance(pts, list) else type(pts).__name__}")
        out = []
        for i, p in enumerate(pts):
            if (not isinstance(p, (list, tuple)) or len(p) != 2
                    or any(isinstance(c, bool) or not isinstance(c, (int, float)) or abs(c) > 1e300 or not math.isfinite(c) for c in p)):
                raise input_error(node, input_name, f"'{key}' point {i + 1} must be [x, y] numbers, got {p!r}")
            if not (0 <= p[0] < width and 0 <= p[1] < height):
                raise input_error(node, input_name, f"'{key}' point {i + 1} ({p[0]:g}, {p[1]:g}) lies outside the "
                                                    f"{width}x{height} image")
            out.append((float(p[0]), float(p[1])))
        sets.append(out)
    return sets[0], sets[1]


def pad_latent(z: torch.Tensor, pad: tuple, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Pad a [B, C, H, W] latent by (left, right, top, bottom) cells: the new cells take ``noise``
    (same padded shape) where given, else the border's values (replicate)."""
    left, right, top, bottom = (int(p) for p in pad)
    if left + right + top + bottom == 0:
        return z
    out = F.pad(z, (left, right, top, bottom), mode="replicate")
    if noise is not None:
        old = torch.zeros(out.shape[-2:], dtype=torch.bool, device=z.device)
        old[top:top + z.shape[-2], left:left + z.shape[-1]] = True
        out = torch.where(old, out, noise.to(out))
    return out
