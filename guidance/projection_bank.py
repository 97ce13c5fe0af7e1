"""Queries, keys and values of a self-attention layer, kept as the layer's input.

A self-attention layer computes ``q = x Wq^T``, ``k = x Wk^T``, ``v = x Wv^T`` (plus a bias
where the Linear has one) from one input ``x`` of ``C`` channels, and each of q, k, v has as many
channels as ``x`` (heads x dim = C in SD1.5). Storing ``x`` (fp16) once per step and the layer's
effective projection weights once per capture holds exactly the information of q and k (and v)
in half (a third) of the bytes; q, k and v are one matmul away.

:class:`ProjectionBank` is a read-only mapping ``(step, layer) -> [B, heads, tokens, dim]`` that
projects on demand, so code written for stored q / k / v tensors keeps working.

The stored inputs are fp16 tensors, or :class:`Int8Rows` (int8 with one scale per batch entry
and channel, a quarter of float32 and half of fp16): the projection of an int8 input is the exact
projection of its dequantized value ``data * scale``.

Pure torch; no ComfyUI.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Projection:
    """One Linear as it acted on the layer input: ``y = x @ weight_t + bias``."""
    weight_t: torch.Tensor      # [C, heads * dim], float32
    bias: torch.Tensor | None   # [heads * dim] float32, or None
    heads: int

    @property
    def dim(self) -> int:
        return int(self.weight_t.shape[1]) // int(self.heads)

    @property
    def nbytes(self) -> int:
        b = 0 if self.bias is None else self.bias.numel() * self.bias.element_size()
        return self.weight_t.numel() * self.weight_t.element_size() + b


@dataclass(frozen=True)
class Int8Rows:
    """A layer input ``[B, T, C]`` stored as ``data * scale``: ``data`` int8 ``[B, T, C]``, ``scale``
    float32 ``[B, 1, C]`` = the channel's largest magnitude over the tokens / 127 (symmetric, per
    channel: the layer norm before self-attention makes the channel, not the token, carry the spread).
    Rounding moves each element by at most half a step, ``scale / 2``."""
    data: torch.Tensor
    scale: torch.Tensor

    @classmethod
    def quantize(cls, x: torch.Tensor) -> "Int8Rows":
        x = x.to(torch.float32)
        scale = x.abs().amax(dim=-2, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny) / 127.0
        data = torch.round(x / scale).clamp_(-127, 127).to(torch.int8)
        return cls(data=data.contiguous(), scale=scale.contiguous())

    @property
    def shape(self) -> torch.Size:
        return self.data.shape

    @property
    def device(self) -> torch.device:
        return self.data.device

    @property
    def nbytes(self) -> int:
        """Bytes held: the int8 data and the float32 scales (as ``torch.Tensor.nbytes`` for a plain tensor)."""
        return self.data.nbytes + self.scale.nbytes

    def index_select(self, dim: int, index: torch.Tensor) -> "Int8Rows":
        if dim in (1, -2):
            return Int8Rows(self.data.index_select(1, index), self.scale)
        raise ValueError("Int8Rows selects tokens (dim 1) only")

    def to(self, device=None, dtype=torch.float32, **_) -> torch.Tensor:
        """The dequantized tensor on ``device`` (the int8 data travels, not the floats)."""
        device = self.data.device if device is None else device
        return (self.data.to(device=device).to(torch.float32) * self.scale.to(device)).to(dtype)

    def to_device(self, device) -> "Int8Rows":
        return Int8Rows(self.data.to(device), self.scale.to(device))

    def tensors(self) -> tuple:
        return (self.data, self.scale)


def stored_tensors(x) -> tuple:
    """The tensors that hold a stored input (one for fp16, data and scale for :class:`Int8Rows`)."""
    return x.tensors() if isinstance(x, Int8Rows) else (x,)


def effective_projection(linear, channels: int, heads: int, device, dtype, store_device) -> Projection:
    """The weights a Linear-like callable actually applies (LoRA and casts included), read off its
    outputs on the identity and on zero: ``bias = f(0)``, ``W^T = f(I) - bias``."""
    probe = torch.cat([torch.eye(channels, device=device, dtype=dtype),
                       torch.zeros(1, channels, device=device, dtype=dtype)])
    out = linear(probe).to(torch.float32)
    bias = out[-1]
    weight_t = (out[:-1] - bias).to(store_device).contiguous()
    has_bias = bool(torch.any(bias != 0))
    return Projection(weight_t=weight_t, bias=bias.to(store_device).contiguous() if has_bias else None, heads=int(heads))


def project_tokens(x: torch.Tensor, proj: Projection, tokens: torch.Tensor | None = None,
                   dtype=torch.float32, device=None) -> torch.Tensor:
    """``x [B, T, C]`` -> ``[B, T', heads * dim]``, the layout attention backends take (``T'`` = the
    chosen token indices, or all). The matmul runs in float32 on ``device``; only ``x`` (fp16, or
    int8 and its scales) and the weights travel there."""
    device = x.device if device is None else torch.device(device)
    if tokens is not None:
        x = x.index_select(1, torch.as_tensor(tokens, dtype=torch.long, device=x.device))
    y = torch.matmul(x.to(device=device, dtype=torch.float32), proj.weight_t.to(device))
    if proj.bias is not None:
        y = y.add_(proj.bias.to(device))
    return y.to(dtype)


def project_heads(x: torch.Tensor, proj: Projection, tokens: torch.Tensor | None = None,
                  dtype=torch.float32, device=None) -> torch.Tensor:
    """``x [B, T, C]`` -> ``[B, heads, T', dim]`` (``T'`` = the chosen token indices, or all)."""
    y = project_tokens(x, proj, tokens, torch.float32, device)
    b, t, _ = y.shape
    return y.reshape(b, t, proj.heads, proj.dim).permute(0, 2, 1, 3).to(dtype)


class ProjectionBank(Mapping):
    """``(step, layer) -> [B, heads, tokens, dim]`` fp16, projected from the stored layer inputs.

    inputs: ``(step, layer) -> [B, tokens, C]`` (fp16); projections: ``layer -> Projection``.
    """

    def __init__(self, inputs: dict, projections: dict):
        self.inputs = inputs
        self.projections = projections

    def __getitem__(self, key):
        return self.project(key, dtype=torch.float16)

    def __contains__(self, key):
        # Mapping's default would project (via __getitem__) just to answer membership
        return key in self.inputs and key[1] in self.projections

    def __iter__(self):
        return iter(self.inputs)

    def __len__(self):
        return len(self.inputs)

    def project(self, key, tokens=None, dtype=torch.float32, device=None) -> torch.Tensor:
        """The projection of ``inputs[key]`` at the chosen token indices (all by default)."""
        return project_heads(self.inputs[key], self.projections[key[1]], tokens=tokens, dtype=dtype, device=device)

    def project_flat(self, key, dtype=torch.float32, device=None) -> torch.Tensor:
        """``[B, tokens, heads * dim]``: the projection in the layout attention backends take."""
        return project_tokens(self.inputs[key], self.projections[key[1]], dtype=dtype, device=device)

    def shape(self, key) -> tuple:
        b, t, _ = self.inputs[key].shape
        p = self.projections[key[1]]
        return (int(b), p.heads, int(t), p.dim)


def unique_nbytes(tensors) -> int:
    """Bytes of the distinct storages among ``tensors`` (a tensor shared by q and k counts once;
    an :class:`Int8Rows` counts its data and its scales)."""
    seen, total = set(), 0
    for t in (u for x in tensors for u in stored_tensors(x)):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in seen:
            seen.add(ptr)
            total += t.untyped_storage().nbytes()
    return total
