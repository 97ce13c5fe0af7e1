"""Input checks and conversions shared by the AttentionDrag nodes (not a node module)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..guidance.attn_capture import AttnCapture
from ..guidance.errors import input_error
from ..attention_patch import comfy_host as host

LATENT_FACTOR = 8

REGENERATE_DOC = (
    "Finish the edit with ComfyUI's own KSamplerAdvanced: add_noise = disable, steps = the inversion's "
    "steps, start_at_step = its edit_step, end_at_step = 10000, sampler = euler (in sigma space Euler "
    "is exactly the deterministic DDIM step), the inversion's scheduler and cfg, "
    "return_with_leftover_noise = disable. It resumes the inverted trajectory exactly (tested), so no "
    "separate regeneration sampler is needed."
)


def check_capture(capture, node: str, input_name: str = "capture") -> AttnCapture:
    if not all(hasattr(capture, a) for a in ("rows", "latent_hw", "steps", "layers", "q", "k", "validate")):
        raise input_error(node, input_name, f"expected an ATTN_CAPTURE from 'Inversion with Attention Capture', got {type(capture).__name__}")
    return capture.validate(node, input_name)


def check_points(points, capture: AttnCapture, node: str, input_name: str = "points") -> list:
    """Pairs in latent cells; the points must be placed on the captured image (8x the latent)."""
    if not all(hasattr(points, a) for a in ("pairs", "width", "height", "validate", "in_cells")):
        raise input_error(node, input_name, f"expected DRAG_POINTS, got {type(points).__name__}")
    points.validate(node, input_name)
    h, w = capture.latent_hw
    points.check_size(w * LATENT_FACTOR, h * LATENT_FACTOR, node, input_name)
    return points.in_cells(LATENT_FACTOR)


def parse_steps(text: str, capture: AttnCapture, node: str, input_name: str = "steps") -> tuple:
    """'all' or a comma list of captured inversion steps."""
    text = (text or "").strip().lower()
    if text in ("", "all"):
        return tuple(capture.steps)
    out = []
    for part in text.replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            s = int(part)
        except ValueError:
            raise input_error(node, input_name, f"{part!r} is not a step number; write 'all' or e.g. '0, 2, 4' from the captured steps {list(capture.steps)}") from None
        if s not in capture.steps:
            raise input_error(node, input_name, f"step {s} was not captured; the captured steps are {list(capture.steps)}")
        if s not in out:
            out.append(s)
    if not out:
        raise input_error(node, input_name, f"no steps given; write 'all' or some of {list(capture.steps)}")
    return tuple(out)


def mask_to_cells(mask: torch.Tensor, capture: AttnCapture, node: str, input_name: str) -> torch.Tensor:
    """MASK [B, H, W] (or [H, W]) at image size (8x the latent) or at latent size -> bool [B, h*w].

    At image size a cell is in the mask when any of its 8x8 pixels is (> 0.5)."""
    h, w = capture.latent_hw
    if not torch.is_tensor(mask):
        raise input_error(node, input_name, f"expected a MASK tensor, got {type(mask).__name__}")
    if mask.ndim == 2:
        mask = mask[None]
    if mask.ndim != 3:
        raise input_error(node, input_name, f"expected a MASK [batch, height, width], got shape {tuple(mask.shape)}")
    m = mask.float() > 0.5
    size = tuple(m.shape[-2:])
    if size == (h * LATENT_FACTOR, w * LATENT_FACTOR):
        m = F.max_pool2d(m.float()[:, None], LATENT_FACTOR)[:, 0] > 0.5
    elif size != (h, w):
        raise input_error(node, input_name, f"the mask is {size[1]}x{size[0]} but the captured image is {w * LATENT_FACTOR}x{h * LATENT_FACTOR} "
                                            f"(latent {w}x{h}); give a mask of the image's size or of the latent's size")
    return m.reshape(m.shape[0], h * w)


def match_batch(t: torch.Tensor, b: int, node: str, input_name: str) -> torch.Tensor:
    if t.shape[0] == b:
        return t
    if t.shape[0] == 1:
        return t.expand(b, *t.shape[1:])
    raise input_error(node, input_name, f"batch {t.shape[0]} does not match batch {b}; give one entry or {b}")


def cells_to_mask(cells: torch.Tensor, capture: AttnCapture) -> torch.Tensor:
    """bool [B, h*w] -> MASK float [B, 8h, 8w] (each cell an 8x8 block)."""
    h, w = capture.latent_hw
    m = cells.reshape(-1, h, w).float()
    m = m.repeat_interleave(LATENT_FACTOR, 1).repeat_interleave(LATENT_FACTOR, 2)
    return m.to(host.intermediate_device())


def check_latent(latent, capture: AttnCapture, node: str, input_name: str = "latent") -> torch.Tensor:
    if not isinstance(latent, dict) or not torch.is_tensor(latent.get("samples")):
        raise input_error(node, input_name, "expected a LATENT (a dict with 'samples')")
    z = latent["samples"]
    h, w = capture.latent_hw
    if z.ndim != 4 or tuple(z.shape[-2:]) != (h, w):
        raise input_error(node, input_name, f"latent of shape {tuple(z.shape)} does not match the captured latent grid {w}x{h}; "
                                            "connect the LATENT of the same 'Inversion with Attention Capture'")
    cap_b = capture.batch
    if cap_b not in (1, z.shape[0]):
        raise input_error(node, input_name, f"latent batch {z.shape[0]} does not match the capture's batch {cap_b}")
    return z


def output_latent(latent: dict, samples: torch.Tensor) -> dict:
    """A copy of the LATENT with new samples; no noise_mask (a sampler would re-noise around it)."""
    out = {k: v for k, v in latent.items() if k != "noise_mask"}
    out["samples"] = samples
    return out


def rows_fn(capture: AttnCapture, steps: tuple, batch: int, reduce_steps: bool = True):
    """positions -> attention rows on ComfyUI's torch device, batch matched to ``batch``."""
    device = host.torch_device()
    k_cache = {}    # each layer's keys projected once for all chunks of positions, freed with f

    def f(positions: torch.Tensor) -> torch.Tensor:
        host.throw_if_interrupted()
        r = capture.rows(positions, steps=steps, reduce_steps=reduce_steps, device=device, k_cache=k_cache)
        bdim = 0 if reduce_steps else 1
        if r.shape[bdim] != batch:
            shape = list(r.shape)
            shape[bdim] = batch
            r = r.expand(*shape)
        return r

    return f


class Progress:
    """comfy ProgressBar driven by (done, total) callbacks; honours Cancel."""

    def __init__(self, total: int):
        self.bar = host.ProgressBar(max(1, total))

    def __call__(self, done: int, total: int):
        host.throw_if_interrupted()
        self.bar.update_absolute(done, max(1, total))
