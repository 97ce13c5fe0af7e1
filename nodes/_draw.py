"""Drawing of numbered handle -> target arrows and mask overlays (PIL), shared by the preview nodes."""
import math

import numpy as np
import torch
from PIL import Image, ImageDraw

HANDLE = (230, 40, 40)
TARGET = (40, 90, 235)
ARROW = (255, 255, 255)
MASK_TINT = (255, 200, 0)


def overlay_mask(rgb: np.ndarray, mask: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """Tint the cells where mask > 0.5; rgb uint8 [H,W,3], mask float [H,W]."""
    out = rgb.astype(np.float32)
    sel = mask > 0.5
    out[sel] = (1 - alpha) * out[sel] + alpha * np.array(MASK_TINT, np.float32)
    return out.clip(0, 255).astype(np.uint8)


def draw_arrows(rgb: np.ndarray, pairs, scale: float = 1.0) -> np.ndarray:
    """Numbered arrows from each handle (red) to its target (blue); pairs in pixels of ``rgb``."""
    img = Image.fromarray(rgb)
    d = ImageDraw.Draw(img)
    r = max(3, int(round(min(img.size) / 100 * scale)))
    lw = max(1, r // 2)
    for i, ((hx, hy), (tx, ty)) in enumerate(pairs, start=1):
        d.line([(hx, hy), (tx, ty)], fill=ARROW, width=lw)
        ang = math.atan2(ty - hy, tx - hx)
        for da in (2.6, -2.6):
            d.line([(tx, ty), (tx + 3 * r * math.cos(ang + da), ty + 3 * r * math.sin(ang + da))], fill=ARROW, width=lw)
        d.ellipse([hx - r, hy - r, hx + r, hy + r], fill=HANDLE, outline=(0, 0, 0))
        d.ellipse([tx - r, ty - r, tx + r, ty + r], fill=TARGET, outline=(0, 0, 0))
        d.text((hx + r + 1, hy - 3 * r), str(i), fill=HANDLE, stroke_width=1, stroke_fill=(0, 0, 0))
    return np.asarray(img)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """One ComfyUI IMAGE [H,W,C] float 0..1 -> uint8 RGB."""
    return (image[..., :3].float().clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)


def to_image(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb.astype(np.float32) / 255.0)
