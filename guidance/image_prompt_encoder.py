"""VersaFusion's image prompt encoder (Fig. 4) and the decoupled cross-attention (Eq. 11), in pure torch.

Encoder: CLIP image tokens [B, 257, clip_dim] -> linear (``proj_in``) -> N QFormer blocks, each a
cross-attention from the learned queries to the image tokens followed by a feed-forward (no
self-attention among the queries) -> ``proj_out`` -> LayerNorm -> c_im [B, num_queries, out_dim].

``kv_with_queries`` selects the one variant of the cross-attention found in public perceiver
checkpoints (IP-Adapter "plus" resamplers): there the keys/values are the image tokens *and* the
queries concatenated. The paper's QFormer (and the pack's own default) uses the image tokens only.

The per-layer projections ``to_k_ip`` / ``to_v_ip`` (context dim -> the UNet layer's inner dim) turn
c_im into K'' and V'' for Eq. 11:  Attn(Q, K', V') + gamma * Attn(Q, K'', V'').
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class EncoderConfig:
    clip_dim: int = 1024          # width of the CLIP vision tokens (ViT-L 1024, ViT-H 1280)
    dim: int = 768                # width inside the QFormer
    depth: int = 8                # N blocks
    heads: int = 12
    num_queries: int = 64
    out_dim: int = 768            # the UNet's cross-attention context dim
    ff_mult: int = 4
    kv_with_queries: bool = False  # True: keys/values = [image tokens, queries] (perceiver layout)

    @property
    def inner_dim(self) -> int:
        return self.dim  # heads * dim_head; dim_head = dim // heads

    def check(self) -> "EncoderConfig":
        for name in ("clip_dim", "dim", "depth", "heads", "num_queries", "out_dim", "ff_mult"):
            if getattr(self, name) < 1:
                raise ValueError(f"image prompt encoder: {name} must be >= 1, got {getattr(self, name)}")
        if self.dim % self.heads:
            raise ValueError(f"image prompt encoder: dim {self.dim} is not divisible by heads {self.heads}")
        return self


def multi_head_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v per head; q [B, Nq, H*d], k/v [B, Nk, H*d] -> [B, Nq, H*d]."""
    b, nq, inner = q.shape
    d = inner // heads
    qh = q.view(b, nq, heads, d).transpose(1, 2)
    kh = k.reshape(b, k.shape[1], heads, d).transpose(1, 2)
    vh = v.reshape(b, v.shape[1], heads, d).transpose(1, 2)
    out = torch.nn.functional.scaled_dot_product_attention(qh, kh, vh)
    return out.transpose(1, 2).reshape(b, nq, inner)


class QueryCrossAttention(nn.Module):
    """Learned queries attend to the image tokens (LayerNorm on both sides, no bias in projections)."""

    def __init__(self, dim: int, heads: int, kv_with_queries: bool):
        super().__init__()
        self.heads = heads
        self.kv_with_queries = kv_with_queries
        self.norm_tokens = nn.LayerNorm(dim)
        self.norm_queries = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_kv = nn.Linear(dim, 2 * dim, bias=False)
        self.to_out = nn.Linear(dim, dim, bias=False)

    def forward(self, tokens: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        tokens = self.norm_tokens(tokens)
        queries = self.norm_queries(queries)
        kv_in = torch.cat([tokens, queries], dim=1) if self.kv_with_queries else tokens
        k, v = self.to_kv(kv_in).chunk(2, dim=-1)
        return self.to_out(multi_head_attention(self.to_q(queries), k, v, self.heads))


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, dim * mult, bias=False)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(dim * mult, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


class QFormerBlock(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.attn = QueryCrossAttention(cfg.dim, cfg.heads, cfg.kv_with_queries)
        self.ff = FeedForward(cfg.dim, cfg.ff_mult)

    def forward(self, tokens: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        queries = queries + self.attn(tokens, queries)
        return queries + self.ff(queries)


class ImagePromptEncoder(nn.Module):
    """CLIP image tokens -> c_im. Parameters are initialised (seeded by the caller's RNG)."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg.check()
        self.queries = nn.Parameter(torch.randn(1, cfg.num_queries, cfg.dim) / math.sqrt(cfg.dim))
        self.proj_in = nn.Linear(cfg.clip_dim, cfg.dim)
        self.blocks = nn.ModuleList(QFormerBlock(cfg) for _ in range(cfg.depth))
        self.proj_out = nn.Linear(cfg.dim, cfg.out_dim)
        self.norm_out = nn.LayerNorm(cfg.out_dim)

    def forward(self, clip_tokens: torch.Tensor) -> torch.Tensor:
        if clip_tokens.ndim != 3 or clip_tokens.shape[-1] != self.cfg.clip_dim:
            raise ValueError(f"image prompt encoder: expected CLIP tokens [batch, tokens, {self.cfg.clip_dim}], "
                             f"got {tuple(clip_tokens.shape)}")
        tokens = self.proj_in(clip_tokens)
        queries = self.queries.expand(clip_tokens.shape[0], -1, -1)
        for block in self.blocks:
            queries = block(tokens, queries)
        return self.norm_out(self.proj_out(queries))


class ImagePromptAdapter(nn.Module):
    """The trainable part: the encoder and, per UNet cross-attention layer (standard order), to_k_ip/to_v_ip."""

    def __init__(self, cfg: EncoderConfig, layer_dims: list[int]):
        super().__init__()
        self.encoder = ImagePromptEncoder(cfg)
        self.layers = nn.ModuleList(_KVProjection(cfg.out_dim, d) for d in layer_dims)

    @property
    def cfg(self) -> EncoderConfig:
        return self.encoder.cfg

    def kv_weights(self) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
        return tuple((m.to_k_ip.weight.detach(), m.to_v_ip.weight.detach()) for m in self.layers)


class _KVProjection(nn.Module):
    def __init__(self, context_dim: int, inner_dim: int):
        super().__init__()
        self.to_k_ip = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_v_ip = nn.Linear(context_dim, inner_dim, bias=False)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def decoupled_attention(q: torch.Tensor, k_txt: torch.Tensor, v_txt: torch.Tensor,
                        k_img: torch.Tensor, v_img: torch.Tensor, heads: int, gamma,
                        attention=None) -> torch.Tensor:
    """Eq. 11: Attn(Q, K', V') + gamma * Attn(Q, K'', V''). All [B, N, heads*d].

    ``gamma`` is a float or a [B] tensor (one weight per batch row). ``attention(q, k, v, heads)``
    defaults to :func:`multi_head_attention`; the UNet patch passes ComfyUI's optimized_attention.
    """
    attention = attention or multi_head_attention
    out = attention(q, k_txt, v_txt, heads)
    if isinstance(gamma, torch.Tensor):
        g = gamma.to(device=out.device, dtype=out.dtype).view(-1, 1, 1)
        if not bool((g != 0).any()):
            return out
    else:
        if gamma == 0:
            return out
        g = gamma
    return out + g * attention(q, k_img, v_img, heads).to(out.dtype)
