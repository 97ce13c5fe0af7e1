"""Drag Points: an image from ComfyUI's input folder with handle -> target pairs and a painted mask.

The canvas widget (js/drag_points.js) writes two STRING widgets that this node reads:

* ``points``: the point JSON of DESIGN.md, in pixels of the chosen image
  (``{"version": 1, "width": W, "height": H, "pairs": [{"handle": [x, y], "target": [x, y]}]}``);
* ``mask``: the name, relative to ComfyUI's input folder, of the PNG the widget uploaded through
  ``POST /upload/image`` (subfolder ``dragfusion_masks``), or empty for "no mask painted".

A mask PNG is read from its alpha channel when it has one, else from its grey level; a pixel is in the
mask when that value is above one half. An empty ``mask`` gives an all-zero MASK of the image's size.
Zero pairs are accepted only together with a painted mask (inpainting mode); drag nodes downstream
still require pairs themselves.
"""
import hashlib
import json
import os

import numpy as np
import torch
from comfy_api.latest import io
from PIL import Image, ImageOps

from ..guidance.drag_points import DragPoints
from ..guidance.errors import input_error
from .types import CATEGORY_POINTS, DragPointsType
from ..attention_patch import comfy_host as host

NODE = "Drag Points"
MASK_SUBFOLDER = "dragfusion_masks"
EMPTY_POINTS = '{"version": 1, "width": 0, "height": 0, "pairs": []}'


def input_images() -> list:
    """Image files directly in ComfyUI's input folder, as core LoadImage lists them."""
    input_dir = host.input_directory()
    try:
        files = [f for f in os.listdir(input_dir) if os.path.isfile(os.path.join(input_dir, f))]
    except OSError:
        files = []
    return sorted(host.filter_files_content_types(files, ["image"]))


def resolve_input_file(name: str, input_name: str) -> str:
    """A file given relative to ComfyUI's input folder (optionally annotated '[input]'); never outside it."""
    name = (name or "").strip()
    if not name:
        raise input_error(NODE, input_name, "empty; choose or upload an image")
    base = os.path.realpath(host.input_directory())
    if name.endswith("[input]"):
        name = name[: -len("[input]")].strip()
    elif name.endswith("]") and "[" in name:
        raise input_error(NODE, input_name, f"{name!r}: only files of ComfyUI's input folder are accepted")
    rel = name.replace("\\", "/")
    if rel.startswith("/") or ".." in rel.split("/") or ":" in rel.split("/")[0]:
        raise input_error(NODE, input_name, f"{name!r} must be a file name relative to ComfyUI's input folder, without '..'")
    path = os.path.realpath(os.path.join(base, *rel.split("/")))
    if os.path.commonpath([path, base]) != base:
        raise input_error(NODE, input_name, f"{name!r} leaves ComfyUI's input folder")
    if not os.path.isfile(path):
        raise input_error(NODE, input_name, f"no file {name!r} in ComfyUI's input folder ({base})")
    return path


def load_rgb(path: str) -> torch.Tensor:
    """-> IMAGE [1, H, W, 3] float 0..1 (first frame, EXIF orientation applied)."""
    try:
        img = host.pillow(Image.open, path)
        img = host.pillow(ImageOps.exif_transpose, img)
        if img.mode == "I":
            img = img.point(lambda v: v * (1 / 255))
        rgb = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    except OSError as e:
        raise input_error(NODE, "image", f"cannot read {os.path.basename(path)} as an image: {e}") from None
    return torch.from_numpy(rgb)[None]


def load_mask(name: str, width: int, height: int) -> torch.Tensor:
    """-> MASK [1, H, W] of 0/1; empty name -> zeros."""
    if not (name or "").strip():
        return torch.zeros((1, height, width), dtype=torch.float32)
    path = resolve_input_file(name, "mask")
    try:
        img = host.pillow(Image.open, path)
        img.load()
    except OSError as e:
        raise input_error(NODE, "mask", f"cannot read {name!r} as a PNG mask: {e}") from None
    if img.size != (width, height):
        raise input_error(NODE, "mask", f"the mask {name!r} is {img.size[0]}x{img.size[1]} but the image is "
                                        f"{width}x{height}; repaint the mask on this image")
    if "A" in img.getbands():
        values = np.asarray(img.getchannel("A"), dtype=np.float32)
    elif img.mode == "P" and "transparency" in img.info:
        values = np.asarray(img.convert("RGBA").getchannel("A"), dtype=np.float32)
    else:
        values = np.asarray(img.convert("L"), dtype=np.float32)
    return torch.from_numpy((values > 127.5).astype(np.float32))[None]


def parse_points(points: str, width: int, height: int, has_mask: bool) -> DragPoints:
    text = points if (points or "").strip() else EMPTY_POINTS
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None  # from_json below reports it
    if isinstance(data, dict) and data.get("pairs") == []:
        if not has_mask:
            raise input_error(NODE, "points", "no handle -> target pairs and no mask; click a handle and then its "
                                              "target on the image (or paint a mask for inpainting)")
        return DragPoints(width, height, ())
    return DragPoints.from_json(text, NODE, "points", width=width, height=height)


def file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class DragPointsCanvas(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DragFusionDragPoints",
            display_name=NODE,
            category=CATEGORY_POINTS,
            description=(
                "Pick or upload an image of ComfyUI's input folder and place drag points on it in the canvas: "
                "a click sets a handle, the next click its target (numbered arrows, handle red, target blue). "
                "Drag a point to move it; right-click or press Delete on a hovered pair to remove it. "
                "The Mask mode paints (left button) or erases (Erase, or right button) the editable region; "
                "it is stored as a PNG in the input folder (dragfusion_masks/). Coordinates are pixels of the "
                "image, whatever the node's size or zoom. Outputs the image, the points and the mask "
                "(zeros when none is painted). With no pairs, a painted mask is required (inpainting mode)."),
            inputs=[
                io.Combo.Input("image", options=input_images(), upload=io.UploadType.image,
                               tooltip="An image of ComfyUI's input folder; upload one with the button. "
                                       "Points and mask refer to this image's pixels."),
                io.String.Input("points", default=EMPTY_POINTS, socketless=True,
                                tooltip="Written by the canvas: handle -> target pairs as point JSON in image pixels "
                                        '({"version": 1, "width": W, "height": H, "pairs": [{"handle": [x, y], "target": [x, y]}]}).'),
                io.String.Input("mask", default="", socketless=True,
                                tooltip="Written by the canvas: the painted mask's PNG, relative to ComfyUI's input "
                                        "folder (e.g. dragfusion_masks/mask_1a2b.png); empty when no mask is painted."),
            ],
            outputs=[
                io.Image.Output(display_name="image", tooltip="The chosen image, [1, H, W, 3]."),
                DragPointsType.Output(display_name="points", tooltip="Handle -> target pairs in pixels of the image."),
                io.Mask.Output(display_name="mask", tooltip="The painted mask (1 = editable), [1, H, W]; zeros if none."),
            ],
        )

    @classmethod
    def validate_inputs(cls, image, points=None, mask=None):
        name = (image or "").strip()
        if not name:
            return f"{NODE}: input 'image': empty; choose or upload an image"
        if not host.exists_annotated_filepath(name):
            return f"{NODE}: input 'image': no file {name!r} in ComfyUI's input folder"
        return True

    @classmethod
    def fingerprint_inputs(cls, image, points=None, mask=None):
        parts = [points or ""]
        for name, input_name in ((image, "image"), (mask, "mask")):
            try:
                parts.append(file_digest(resolve_input_file(name, input_name)) if (name or "").strip() else "")
            except (ValueError, OSError):
                parts.append(f"missing:{name}")
        return "|".join(parts)

    @classmethod
    def execute(cls, image, points, mask="") -> io.NodeOutput:
        rgb = load_rgb(resolve_input_file(image, "image"))
        h, w = int(rgb.shape[1]), int(rgb.shape[2])
        mask_t = load_mask(mask, w, h)
        has_mask = bool((mask or "").strip()) and bool(mask_t.any())
        pts = parse_points(points, w, h, has_mask)
        # What the node received, for the history and for tests (the frontend ignores these keys).
        ui = {"drag_points": [json.loads(pts.to_json())], "mask_area": [int(mask_t.sum().item())]}
        return io.NodeOutput(rgb, pts, mask_t, ui=ui)


NODES = [DragPointsCanvas]
