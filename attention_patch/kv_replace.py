"""Cross-branch self-attention (VersaFusion Fig. 3, "KV Replacement") as attn1 replace patches.

In the dual-branch sampler one batched UNet call holds the guidance branch (the source image's
reconstruction), optionally the reference branch, and the generation branch (its negative and positive
prompt rows). The batch layout travels in ``transformer_options[CALL_KEY]`` (a :class:`BranchCall`),
so the patch reads it in every attn1: the generation rows' self-attention reads the guidance rows'
keys and values (row r of a generation chunk reads row r of the guidance chunk):

    replace   K, V := [K_gud (, K_ref)]            the paper's substitution
    concat    K, V := [K_gen, K_gud (, K_ref)]     the generation branch also keeps its own

``kv_mask`` (latent grid) limits which guidance tokens are read (outpainting reads only the old canvas;
appearance and paste only the image's background), ``kv_ref_mask`` which reference tokens (appearance and
paste: only the reference object, as DragonDiffusion: the reference's background never bleeds in).
A mask is resampled to each layer's token grid so that a small object keeps at least the cell it covers most; an
empty mask, a grid no mask fits, or a batch that does not split into the call's branches raises a ValueError
naming the node (never a silent fallback to every token or to plain attention).
Outside a dual-branch call, or when the call turns KV off (steps past ``kv_until``), every row gets
plain self-attention -- through comfy's ``optimized_attention`` (looked up at call time, so the
user's attention backend is kept), or through an attn1 replace that was already on the layer.

Install with :func:`install_kv_replace` on a ``model.clone()`` only.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


from .capture import grid_at_level, parse_layer_key, self_attention_layers
from . import comfy_host as host

CALL_KEY = "dragfusion_dual_branch"
KV_MODES = ("replace", "concat")
KV_LAYER_CHOICES = ("decoder", "decoder+middle", "all")


@dataclass
class BranchCall:
    """What one batched dual-branch UNet call holds, for the patches that run inside it."""
    branches: tuple                 # one label per chunk, e.g. ("gud", "ref", "gen_neg", "gen_pos")
    latent_hw: tuple                # (H, W) of the latents in this call
    kv: bool = False                # KV replacement on in this call
    kv_mode: str = "replace"
    kv_mask: torch.Tensor | None = None
    kv_ref_mask: torch.Tensor | None = None
    token_cache: dict = field(default_factory=dict)  # (which mask, tokens) -> selected tokens; pass one dict for
                                                     # a whole run so the masks are resized (and checked) once
    capture_at: dict = field(default_factory=dict)   # output-block id -> feature name (h entering that block)
    detach_from: int | None = None  # output blocks >= this id run without autograd history
    features: dict = field(default_factory=dict)
    node: str = "Dual-Branch Guider"  # named by errors raised inside the UNet call

    def __deepcopy__(self, memo):   # travels inside transformer_options; never copy tensors
        return self


def select_layers(diffusion_model, which: str) -> list[str]:
    """The self-attention layer keys ("output.3.0") of the chosen part of the UNet."""
    if which not in KV_LAYER_CHOICES:
        raise ValueError(f"kv layers {which!r} is not one of {KV_LAYER_CHOICES}")
    keep = {"decoder": ("output",), "decoder+middle": ("output", "middle"), "all": ("input", "middle", "output")}[which]
    return [key for key, _level in self_attention_layers(diffusion_model) if key.split(".")[0] in keep]


def _coverage(mask: torch.Tensor, hw: tuple) -> torch.Tensor:
    """The fraction of each cell of an (h, w) grid that ``mask`` (0/1 on its own grid) covers."""
    m = (mask.float() > 0.5).float()[None, None]
    if tuple(hw) == tuple(mask.shape):
        return m[0, 0]
    if hw[0] <= mask.shape[0] and hw[1] <= mask.shape[1]:
        return F.adaptive_avg_pool2d(m, hw)[0, 0]
    return F.interpolate(m, size=hw, mode="nearest")[0, 0]


def connected_components(mask: torch.Tensor) -> torch.Tensor:
    """4-connected components of a 0/1 [h, w] mask: an int label per cell (0 outside, 1.. inside)."""
    on = mask > 0.5
    n = on.numel()
    labels = torch.where(on, torch.arange(1, n + 1, dtype=torch.float32).view(on.shape), torch.zeros(on.shape))
    cross = torch.tensor([[0., 1., 0.], [1., 1., 1.], [0., 1., 0.]]) > 0
    while True:   # propagate the largest label through each component
        pad = F.pad(labels[None, None], (1, 1, 1, 1))[0, 0]
        shifted = torch.stack([pad[i:i + on.shape[0], j:j + on.shape[1]] for i in range(3) for j in range(3)
                               if cross[i, j]])
        grown = torch.where(on, shifted.max(dim=0).values, labels)
        if torch.equal(grown, labels):
            return labels.long()
        labels = grown


def token_mask(mask: torch.Tensor, latent_hw: tuple, tokens: int) -> torch.Tensor:
    """The mask on this layer's token grid (flattened bool).

    A cell is in when the mask covers at least half of it; a part of the mask (a connected component) that
    covers no cell that much keeps the cell it covers most, so a small object is never dropped at a coarse
    grid. Raises ValueError when the mask is empty or no level of the latent grid has ``tokens`` tokens."""
    if not bool((mask > 0.5).any()):
        raise ValueError("the mask of tokens to read is empty")
    for level in range(8):
        h, w = grid_at_level(latent_hw, level)
        if h * w == tokens:
            sel = _coverage(mask, (h, w)) >= 0.5
            labels = connected_components(mask.float().cpu())
            for c in labels.unique()[1:]:
                cov = _coverage((labels == c).float(), (h, w))
                if not bool((sel & (cov > 0)).any()):
                    sel = sel | (cov == cov.max())
            return sel.flatten()
        if h * w < tokens:
            break
    raise ValueError(f"no level of the {latent_hw[1]}x{latent_hw[0]} latent grid has {tokens} tokens")


def selected_tokens(call: BranchCall, which: str, tokens: int, device) -> torch.Tensor | None:
    """Indices of the tokens ``call.<which>`` lets the generation rows read at this layer's grid; None when
    there is no mask (every token). Cached in the call's ``token_cache``, so a run resizes each mask once per
    grid and never syncs with the device per step. A mask that cannot be placed on the grid raises (naming
    ``call.node``): never a silent fallback to every token."""
    mask = getattr(call, which)
    if mask is None:
        return None
    key = (which, id(mask), tokens, str(device))
    if key not in call.token_cache:
        try:
            sel = token_mask(mask, call.latent_hw, tokens)
        except ValueError as e:
            raise ValueError(f"{call.node}: KV replacement ({which}): {e}") from None
        call.token_cache[key] = torch.nonzero(sel).flatten().to(device)
    return call.token_cache[key]


def check_kv_masks(diffusion_model, layers: list, latent_hw: tuple, masks: dict) -> None:
    """Place each KV mask (name -> [h, w] mask or None) on the token grid of every KV layer before sampling, so a
    mask that cannot be placed is a clear error up front, not halfway through the run."""
    levels = dict(self_attention_layers(diffusion_model))
    checked = set()
    for key in layers:
        h, w = grid_at_level(latent_hw, levels[key])
        if (h, w) in checked:   # layers share a few grids: place each mask once per grid
            continue
        checked.add((h, w))
        for name, mask in masks.items():
            if mask is None:
                continue
            try:
                token_mask(mask, latent_hw, h * w)
            except ValueError as e:
                raise ValueError(f"the {name} at layer {key}: {e}") from None


class KVReplacePatch:
    """attn1 replace for one layer; stateless (the per-call state comes in ``extra_options``)."""

    def __init__(self, previous=None):
        self.previous = previous

    def __deepcopy__(self, memo):
        return self

    def plain(self, q, k, v, extra_options):
        if self.previous is not None:
            return self.previous(q, k, v, extra_options)
        return host.optimized_attention(q, k, v, extra_options["n_heads"],
                                                   attn_precision=extra_options.get("attn_precision"),
                                                   transformer_options=extra_options)

    def __call__(self, q, k, v, extra_options):
        call = extra_options.get(CALL_KEY)
        if call is None or not call.kv or "gud" not in call.branches:
            return self.plain(q, k, v, extra_options)
        n = len(call.branches)
        if q.shape[0] % n:
            raise ValueError(f"{call.node}: KV replacement: the attention batch has {q.shape[0]} rows, not a multiple "
                             f"of the call's {n} branches {call.branches}; another patch changed the batch layout")
        rows = q.shape[0] // n
        chunk = lambda t, i: t[i * rows:(i + 1) * rows]
        idx = {label: i for i, label in enumerate(call.branches)}
        sources_k = [chunk(k, idx["gud"])]
        sources_v = [chunk(v, idx["gud"])]
        sel = selected_tokens(call, "kv_mask", k.shape[1], k.device)
        if sel is not None:
            sources_k, sources_v = [sources_k[0][:, sel]], [sources_v[0][:, sel]]
        if "ref" in idx:
            k_ref, v_ref = chunk(k, idx["ref"]), chunk(v, idx["ref"])
            sel = selected_tokens(call, "kv_ref_mask", k.shape[1], k.device)
            if sel is not None:
                k_ref, v_ref = k_ref[:, sel], v_ref[:, sel]
            sources_k.append(k_ref)
            sources_v.append(v_ref)
        gen = [i for i, label in enumerate(call.branches) if label.startswith("gen")]
        other = [i for i in range(n) if i not in gen]
        out = [None] * n
        if other:
            rows_o = torch.cat([torch.arange(i * rows, (i + 1) * rows) for i in other]).to(q.device)
            o = self.plain(q[rows_o], k[rows_o], v[rows_o], extra_options)
            for j, i in enumerate(other):
                out[i] = o[j * rows:(j + 1) * rows]
        heads = extra_options["n_heads"]
        kw = dict(attn_precision=extra_options.get("attn_precision"), transformer_options=extra_options)
        for i in gen:
            ks, vs = list(sources_k), list(sources_v)
            if call.kv_mode == "concat":
                ks.insert(0, chunk(k, i))
                vs.insert(0, chunk(v, i))
            out[i] = host.optimized_attention(chunk(q, i), torch.cat(ks, dim=1), torch.cat(vs, dim=1),
                                                         heads, **kw)
        return torch.cat(out, dim=0)


def install_kv_replace(model_patcher, which: str = "decoder") -> list[str]:
    """Put a KVReplacePatch on every chosen attn1 of ``model_patcher`` (a clone). Returns the layer keys."""
    unet = model_patcher.get_model_object("diffusion_model")
    layers = select_layers(unet, which)
    existing = model_patcher.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn1", {})
    for key in layers:
        block, number, index = parse_layer_key(key)
        previous = existing.get((block, number, index)) or existing.get((block, number))
        model_patcher.set_model_attn1_replace(KVReplacePatch(previous), block, number, index)
    return layers
