"""IMAGE_PROMPT: image tokens (cond and uncond) for decoupled cross-attention, and gamma."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import input_error


@dataclass(frozen=True)
class ImagePrompt:
    cond: torch.Tensor          # [B, tokens, dim]
    uncond: torch.Tensor        # [B, tokens, dim], from a zero image (serves CFG)
    gamma: float = 1.0

    def validate(self, node: str = "IMAGE_PROMPT", input_name: str = "image_prompt") -> "ImagePrompt":
        if self.cond.ndim != 3 or self.cond.shape != self.uncond.shape:
            raise input_error(node, input_name, f"cond {tuple(self.cond.shape)} and uncond {tuple(self.uncond.shape)} must both be [batch, tokens, dim]")
        if not (torch.isfinite(self.cond).all() and torch.isfinite(self.uncond).all()):
            raise input_error(node, input_name, "image tokens contain NaN or inf")
        if not (0.0 <= self.gamma <= 10.0):
            raise input_error(node, input_name, f"gamma {self.gamma} must be in 0..10")
        return self
