"""Decoupled image-prompt cross-attention (VersaFusion Eq. 11) as attn2 replace patches on a model clone.

Every UNet cross-attention (attn2) gets ``out = Attn(Q, K_txt, V_txt) + gamma_l * Attn(Q, K_img, V_img)``
with ``K_img = c_im @ to_k_ip^T`` and ``V_img = c_im @ to_v_ip^T`` of that layer. Layers are matched
to the weights' layer index in the standard order (input blocks, output blocks, middle block; by
block id, then transformer index), which is the order of public SD1.5 checkpoints' ip_adapter.K keys.

Batches: ComfyUI stacks cond and uncond chunks in one batch and lists them in
``extra_options["cond_or_uncond"]`` (0 = cond, 1 = uncond); each chunk of rows gets the cond or the
uncond image tokens. Within a chunk, tokens with batch 1 are shared by every row, tokens with the
chunk's batch size go row by row.

An attn2 replace already on the model at the same layer is kept: it computes the text term, so
two Apply Image Prompt nodes in a row add two image terms.
"""
from __future__ import annotations

import re

import torch


from ..guidance.errors import input_error
from ..guidance.image_prompt_tokens import ImagePrompt
from . import comfy_host as host

BLOCK_NAMES = ("input", "output", "middle")


def cross_attention_modules(model) -> list[tuple[tuple[str, int, int], torch.nn.Module]]:
    """The model's attn2 modules in standard order: [((block, id, transformer_index), attn2)]. Read only."""
    unet = model.get_model_object("diffusion_model")
    groups = {"input": list(getattr(unet, "input_blocks", []) or []),
              "output": list(getattr(unet, "output_blocks", []) or []),
              "middle": [unet.middle_block] if getattr(unet, "middle_block", None) is not None else []}
    found = []
    for name in BLOCK_NAMES:
        for block_id, block in enumerate(groups[name]):
            for sub in (block if isinstance(block, torch.nn.Sequential) else [block]):
                for t_index, tb in enumerate(getattr(sub, "transformer_blocks", []) or []):
                    attn2 = getattr(tb, "attn2", None)
                    if attn2 is not None:
                        found.append(((name, block_id, t_index), attn2))
    return found


def cross_attention_layers(model) -> list[tuple[tuple[str, int, int], int, int]]:
    """The model's attn2 layers in standard order: [((block, id, transformer_index), inner_dim, context_dim)]."""
    return [(key, a.to_q.out_features, a.to_k.in_features) for key, a in cross_attention_modules(model)]


def layer_name(key) -> str:
    return f"{key[0]}.{key[1]}" + (f".{key[2]}" if key[2] else "")


def parse_block_weights(text: str, keys, node: str, input_name: str) -> list[float]:
    """'input=0.5, output.1=0' -> one weight per layer (default 1). Names: input / output / middle,
    optionally with a block id (output.1) and a transformer index (output.1.0); later entries win."""
    weights = [1.0] * len(keys)
    text = (text or "").strip()
    if not text:
        return weights
    valid = sorted({k[0] for k in keys} | {f"{k[0]}.{k[1]}" for k in keys} | {layer_name(k) for k in keys})
    for entry in re.split(r"[,;\n]+", text):
        entry = entry.strip()
        if not entry:
            continue
        m = re.fullmatch(r"(input|output|middle)(?:\.(\d+))?(?:\.(\d+))?\s*[=:]\s*([-+0-9.eE]+)", entry)
        if not m:
            raise input_error(node, input_name, f"cannot read {entry!r}: write entries like 'input=0.5, output.1=1.0' "
                              f"(names for this model: {', '.join(valid)})")
        try:
            value = float(m.group(4))
        except ValueError:
            raise input_error(node, input_name, f"{entry!r}: {m.group(4)!r} is not a number") from None
        if not (0.0 <= value <= 10.0):
            raise input_error(node, input_name, f"{entry!r}: weight must be in 0..10")
        hits = [i for i, k in enumerate(keys) if k[0] == m.group(1)
                and (m.group(2) is None or k[1] == int(m.group(2)))
                and (m.group(3) is None or k[2] == int(m.group(3)))]
        if not hits:
            raise input_error(node, input_name, f"{entry!r} names no cross-attention layer of this model "
                              f"(names for this model: {', '.join(valid)})")
        for i in hits:
            weights[i] = value
    return weights


class ImagePromptAttn2:
    """attn2 replace for one layer; holds its tokens and projections (shared, never deep-copied)."""

    def __init__(self, to_k_ip: torch.Tensor, to_v_ip: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
                 gamma: float, previous=None):
        self.to_k_ip, self.to_v_ip = to_k_ip, to_v_ip
        self.cond, self.uncond = cond, uncond
        self.gamma = float(gamma)
        self.previous = previous
        self._kv = {}

    def __deepcopy__(self, memo):  # model_options are deep-copied on clone: share, don't copy tensors
        return self

    def image_kv(self, device, dtype):
        key = (str(device), dtype)
        if key not in self._kv:
            w_k = self.to_k_ip.to(device=device, dtype=dtype)
            w_v = self.to_v_ip.to(device=device, dtype=dtype)
            kv = {}
            for which, tokens in ((0, self.cond), (1, self.uncond)):
                t = tokens.to(device=device, dtype=dtype)
                kv[which] = (torch.nn.functional.linear(t, w_k), torch.nn.functional.linear(t, w_v))
            self._kv = {key: kv}  # one device/dtype at a time
        return self._kv[key]

    def batch_kv(self, batch: int, cond_or_uncond, device, dtype):
        kv = self.image_kv(device, dtype)
        chunks = list(cond_or_uncond) if cond_or_uncond else [0]
        if batch % len(chunks):
            raise ValueError(f"Apply Image Prompt: batch {batch} does not split into {len(chunks)} cond/uncond chunks")
        rows = batch // len(chunks)
        ks, vs = [], []
        for c in chunks:
            k, v = kv[1 if c == 1 else 0]
            if k.shape[0] == rows:
                ks.append(k), vs.append(v)
            elif k.shape[0] == 1:
                ks.append(k.expand(rows, -1, -1)), vs.append(v.expand(rows, -1, -1))
            else:
                raise ValueError(f"Apply Image Prompt: the image prompt has a batch of {k.shape[0]} but the sampler runs "
                                 f"{rows} latents per cond/uncond chunk; use one image or as many images as latents")
        return torch.cat(ks), torch.cat(vs)

    def __call__(self, q, k, v, extra_options):
        heads = extra_options["n_heads"]
        if self.previous is not None:
            out = self.previous(q, k, v, extra_options)
        else:
            out = host.optimized_attention(q, k, v, heads, attn_precision=extra_options.get("attn_precision"),
                                      transformer_options=extra_options)
        if self.gamma == 0.0:
            return out
        k_img, v_img = self.batch_kv(q.shape[0], extra_options.get("cond_or_uncond"), q.device, q.dtype)
        img = host.optimized_attention(q, k_img, v_img, heads, attn_precision=extra_options.get("attn_precision"),
                                  transformer_options=extra_options)
        return out + self.gamma * img.to(out.dtype)


def apply_image_prompt(model, prompt: ImagePrompt, gamma: float | None = None, block_weights: str = "",
                       node: str = "Apply Image Prompt", input_name: str = "image_prompt"):
    """A clone of ``model`` with the decoupled cross-attention on every attn2. ``gamma`` None -> prompt.gamma."""
    prompt.validate(node, input_name)
    gamma = prompt.gamma if gamma is None else float(gamma)
    layers = cross_attention_layers(model)
    if not layers:
        raise input_error(node, "model", "the model has no cross-attention (attn2) layers to patch")
    if prompt.num_layers != len(layers):
        raise input_error(node, input_name, f"the weights '{prompt.source}' have projections for {prompt.num_layers} "
                          f"cross-attention layers, the model has {len(layers)}: use weights trained for this model family")
    dim = prompt.cond.shape[-1]
    for j, ((key, inner, context), (w_k, _)) in enumerate(zip(layers, prompt.kv_weights)):
        if context != dim or w_k.shape[0] != inner:
            raise input_error(node, input_name, f"layer {j} ({layer_name(key)}): the weights project {dim}-wide tokens to "
                              f"{w_k.shape[0]}, the model's cross-attention takes {context}-wide context into {inner}")
    weights = parse_block_weights(block_weights, [k for k, _, _ in layers], node, "block_weights")
    m = model.clone()
    existing = m.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
    for (key, _, _), (w_k, w_v), w in zip(layers, prompt.kv_weights, weights):
        previous = existing.get(key) or existing.get(key[:2])
        patch = ImagePromptAttn2(w_k, w_v, prompt.cond, prompt.uncond, gamma * w, previous=previous)
        m.set_model_attn2_replace(patch, key[0], key[1], key[2])
    return m
