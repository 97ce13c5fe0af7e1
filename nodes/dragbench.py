"""Load DragBench Sample: a DragBench- or Drag100-format folder under ComfyUI's input folder."""
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

NODE = "Load DragBench Sample"
FORMATS = {
    # format: (image file, instruction file)
    "DragBench": ("original_image.png", "drag_instruction.json"),
    "Drag100": ("original.jpg", "points.json"),
}
# The pack's own samples (data/, Apache-2.0): "dragfusion_data/..." falls back to them when ComfyUI's
# input folder has no such folder (an install by git clone into custom_nodes/, without scripts/setup)
PACK_DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data")
BUNDLED_PREFIX = "dragfusion_data"
SIZES = ("original", "fit 512 (multiple of 8)", "fit 768 (multiple of 8)", "fit 256 (multiple of 8)",
         "fit 128 (multiple of 8)", "fit 1024 (multiple of 8)")    # 768: SD2.x-768, 1024: SDXL


def safe_sample_dir(sample: str, base: str) -> str:
    """Resolve a sample folder given relative to ComfyUI's input folder; no absolute paths, no '..'."""
    sample = (sample or "").strip().replace("\\", "/")
    if not sample:
        raise input_error(NODE, "sample", "empty; give a folder relative to ComfyUI's input folder, e.g. dragfusion_data/dragbench-dev/animals/JH_2023-09-14-1820-16")
    parts = sample.split("/")
    if sample.startswith("/") or ".." in parts or ":" in parts[0]:
        raise input_error(NODE, "sample", f"{sample!r} must be a relative folder inside ComfyUI's input folder, without '..'")
    path = os.path.normpath(os.path.join(base, *parts))
    if os.path.commonpath([path, os.path.normpath(base)]) != os.path.normpath(base):
        raise input_error(NODE, "sample", f"{sample!r} leaves ComfyUI's input folder")
    if not os.path.isdir(path):
        raise input_error(NODE, "sample", f"no folder {sample!r} in ComfyUI's input folder ({base})")
    return path


def resolve_sample(sample: str, input_dir: str) -> str:
    """The sample folder inside ComfyUI's input folder, else (for ``dragfusion_data/...``) inside the
    pack's own data/ folder."""
    try:
        return safe_sample_dir(sample, input_dir)
    except ValueError:
        parts = (sample or "").strip().replace("\\", "/").split("/")
        if parts[0] != BUNDLED_PREFIX or len(parts) < 2 or not os.path.isdir(PACK_DATA):
            raise
        try:
            return safe_sample_dir("/".join(parts[1:]), PACK_DATA)
        except ValueError:
            pass
        raise


def detect_format(path: str) -> str:
    for name, files in FORMATS.items():
        if all(os.path.isfile(os.path.join(path, f)) for f in files):
            return name
    raise input_error(NODE, "sample", f"{path} is neither DragBench (original_image.png + drag_instruction.json + mask.png) nor Drag100 (original.jpg + points.json + mask.png)")


def fit_size(w: int, h: int, side: int = 512) -> tuple:
    """Scale so the longer side is ``side``, both sides rounded to multiples of 8."""
    s = side / max(w, h)
    return max(8, int(round(w * s / 8)) * 8), max(8, int(round(h * s / 8)) * 8)


def load_sample(path: str, size: str = "original"):
    """-> (image [1,H,W,3] float, DragPoints, mask [1,H,W] float, prompt)."""
    fmt = detect_format(path)
    image_file, instruction_file = FORMATS[fmt]
    try:
        with open(os.path.join(path, instruction_file), encoding="utf-8") as f:
            instr = json.load(f)
        img = ImageOps.exif_transpose(Image.open(os.path.join(path, image_file))).convert("RGB")
    except (OSError, json.JSONDecodeError) as e:
        raise input_error(NODE, "sample", f"cannot read {fmt} sample {path}: {e}") from None
    w, h = img.size
    mask_path = os.path.join(path, "mask.png")
    if os.path.isfile(mask_path):
        mask = Image.open(mask_path).convert("L")
        if mask.size != (w, h):
            mask = mask.resize((w, h), Image.NEAREST)
    else:
        mask = Image.new("L", (w, h), 255)
    if not isinstance(instr, dict):
        raise input_error(NODE, "sample", f"{instruction_file} must hold a JSON object")
    points = DragPoints.from_flat(instr.get("points"), w, h, NODE, "sample")
    if size != "original":
        nw, nh = fit_size(w, h, int(size.split()[1]))
        img = img.resize((nw, nh), Image.LANCZOS)
        mask = mask.resize((nw, nh), Image.NEAREST)
        points = points.scaled(nw, nh)
        points = DragPoints(nw, nh, tuple(tuple((min(x, nw - 1), min(y, nh - 1)) for x, y in p)
                                          for p in points.pairs)).validate(NODE, "sample")
    image = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)[None]
    mask_t = torch.from_numpy((np.asarray(mask, dtype=np.float32) / 255.0 > 0.5).astype(np.float32))[None]
    return image, points, mask_t, str(instr.get("prompt", ""))


class LoadDragBenchSample(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DragFusionLoadDragBenchSample",
            display_name=NODE,
            category=CATEGORY_POINTS,
            description=("Loads one sample of DragBench (original_image.png, drag_instruction.json, mask.png) "
                         "or Drag100 (original.jpg, points.json, mask.png) from a folder inside ComfyUI's "
                         "input folder. Never reads pickles. Drag100 has no prompt: the prompt output is empty."),
            inputs=[
                io.String.Input("sample", default="dragfusion_data/dragbench-dev/animals/JH_2023-09-14-1820-16",
                                tooltip="Sample folder, relative to ComfyUI's input folder (no '..', no absolute path)."),
                io.Combo.Input("size", options=list(SIZES), default=SIZES[0],
                               tooltip="'original' keeps the file's size; 'fit N' scales image, mask and points so the "
                                       "longer side is N and both sides are multiples of 8 (what the VAE needs)."),
            ],
            outputs=[
                io.Image.Output(display_name="image"),
                DragPointsType.Output(display_name="points"),
                io.Mask.Output(display_name="mask"),
                io.String.Output(display_name="prompt"),
            ],
        )

    @classmethod
    def validate_inputs(cls, sample, size):
        if size not in SIZES:
            return f"{NODE}: input 'size': {size!r} is not one of {SIZES}"
        return True

    @classmethod
    def execute(cls, sample, size):
        path = resolve_sample(sample, host.input_directory())
        image, points, mask, prompt = load_sample(path, size)
        return io.NodeOutput(image, points, mask, prompt)


NODES = [LoadDragBenchSample]
