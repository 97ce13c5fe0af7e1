"""ATTN_CAPTURE: what "Inversion with Attention Capture" recorded.

Queries and keys (and optionally values) of chosen self-attention layers at chosen inversion
steps, heads kept, fp16 -- never the tokens x tokens map. Attention rows are computed later, in
chunks, by :func:`attention_rows`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .errors import input_error


@dataclass(frozen=True)
class AttnCapture:
    latent_hw: tuple            # (h, w) of the latent grid
    sigmas: torch.Tensor        # the full n-step sampling schedule, descending, n + 1 values
    edit_step: int              # index into sigmas where the edit happens
    trajectory: tuple           # model-space latents along the inversion, clean latent first
    steps: tuple                # captured inversion steps (indices into trajectory)
    layers: tuple               # layer keys "input.1.0" = (block, block number, transformer index)
    layer_hw: dict              # layer key -> (h, w) token grid of that layer
    q: dict                     # (step, layer) -> [B, heads, tokens, dim] fp16
    k: dict
    v: dict = field(default_factory=dict)

    def validate(self, node: str = "ATTN_CAPTURE", input_name: str = "capture") -> "AttnCapture":
        if not self.steps or not self.layers:
            raise input_error(node, input_name, "the capture holds no steps or no layers; capture at least one step of one self-attention layer")
        n = len(self.sigmas) - 1
        if not (0 <= self.edit_step < n):
            raise input_error(node, input_name, f"edit step {self.edit_step} is outside the {n}-step schedule")
        for key in ((s, l) for s in self.steps for l in self.layers):
            if key not in self.q or key not in self.k:
                raise input_error(node, input_name, f"step {key[0]} of layer {key[1]} is missing from the capture")
        return self
