"""IMAGE_PROMPT: image tokens (cond and uncond) for decoupled cross-attention, gamma, and the per-layer
K''/V'' projections (to_k_ip / to_v_ip) that the weights file brought with them."""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from .errors import input_error


@dataclass(frozen=True)
class ImagePrompt:
    cond: torch.Tensor          # [B, tokens, dim]
    uncond: torch.Tensor        # [B, tokens, dim], from a zero image (serves CFG)
    gamma: float = 1.0
    # One (to_k_ip [inner, dim], to_v_ip [inner, dim]) pair per UNet cross-attention layer, in the
    # standard order (input blocks, output blocks, middle block; transformer index within a block).
    kv_weights: tuple = ()
    source: str = ""            # the weights file the tokens came from (for messages)

    @property
    def num_layers(self) -> int:
        return len(self.kv_weights)

    def validate(self, node: str = "IMAGE_PROMPT", input_name: str = "image_prompt") -> "ImagePrompt":
        if self.cond.ndim != 3 or self.cond.shape != self.uncond.shape:
            raise input_error(node, input_name, f"cond {tuple(self.cond.shape)} and uncond {tuple(self.uncond.shape)} must both be [batch, tokens, dim]")
        if not (torch.isfinite(self.cond).all() and torch.isfinite(self.uncond).all()):
            raise input_error(node, input_name, "image tokens contain NaN or inf")
        if not (0.0 <= self.gamma <= 10.0):
            raise input_error(node, input_name, f"gamma {self.gamma} must be in 0..10")
        dim = self.cond.shape[-1]
        for j, pair in enumerate(self.kv_weights):
            if len(pair) != 2:
                raise input_error(node, input_name, f"layer {j}: expected a (to_k_ip, to_v_ip) pair")
            k, v = pair
            if k.ndim != 2 or k.shape != v.shape or k.shape[1] != dim:
                raise input_error(node, input_name, f"layer {j}: to_k_ip {tuple(k.shape)} / to_v_ip {tuple(v.shape)} "
                                  f"must both be [inner_dim, {dim}]")
        return self

    def with_gamma(self, gamma: float) -> "ImagePrompt":
        return replace(self, gamma=float(gamma))

    def concat(self, other: "ImagePrompt", node: str = "IMAGE_PROMPT", input_name: str = "reference") -> "ImagePrompt":
        """Source and reference tokens side by side (Eq. 11 for reference tasks); same projections required."""
        if self.cond.shape[-1] != other.cond.shape[-1] or len(self.kv_weights) != len(other.kv_weights) or any(
                a[0] is not b[0] and not torch.equal(a[0], b[0]) for a, b in zip(self.kv_weights, other.kv_weights)):
            raise input_error(node, input_name, "the two image prompts come from different weights; concatenate tokens of one weights file")
        b1, b2 = self.cond.shape[0], other.cond.shape[0]
        if b1 != b2 and 1 not in (b1, b2):
            raise input_error(node, input_name, f"batch sizes {b1} and {b2} differ (one of them must be 1 or both equal)")
        b = max(b1, b2)
        cat = lambda x, y: torch.cat([x.expand(b, -1, -1), y.expand(b, -1, -1)], dim=1)
        return replace(self, cond=cat(self.cond, other.cond), uncond=cat(self.uncond, other.uncond))
