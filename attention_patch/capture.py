"""Self-attention capture: an attn1 replace that records q, k (and optionally v).

Installed only on a ``model.clone()``. The layer's output is computed by ComfyUI's own
``optimized_attention`` with the same arguments the unpatched ``CrossAttention.forward`` passes,
so the patched model's output equals the unpatched one. Only the conditional half of the batch is
recorded (``extra_options["cond_or_uncond"]``), as ``[B, heads, tokens, dim]`` fp16 on ComfyUI's
intermediate device; no tokens x tokens map is ever built here.

Recording happens only while a step is set (``set_step``); the sampler driving the inversion sets
it before each UNet call. All state is reset by an OUTER_SAMPLE wrapper at the start of every
sampling call, so nothing leaks from one run into the next.
"""
from __future__ import annotations

import torch

import comfy.ldm.modules.attention as comfy_attention
import comfy.model_management
import comfy.patcher_extension
from comfy.ldm.modules.attention import SpatialTransformer
from comfy.ldm.modules.diffusionmodules.openaimodel import Downsample, Upsample

WRAPPER_KEY = "dragfusion_attn_capture"


def layer_key(block: str, number: int, index: int) -> str:
    return f"{block}.{int(number)}.{int(index)}"


def parse_layer_key(key: str) -> tuple:
    block, number, index = key.split(".")
    return block, int(number), int(index)


def self_attention_layers(diffusion_model) -> list:
    """Every self-attention (attn1) of a UNetModel in execution order, as
    ``(key, level)``; ``level`` counts the 2x downsamplings above it (0 = latent grid)."""
    found = []
    level = 0

    def transformers(module, block, number):
        for layer in module:
            if isinstance(layer, Downsample):
                nonlocal level
                level += 1
            elif isinstance(layer, Upsample):
                level -= 1
            if isinstance(layer, SpatialTransformer):
                for i in range(len(layer.transformer_blocks)):
                    found.append((layer_key(block, number, i), level))

    for n, module in enumerate(diffusion_model.input_blocks):
        transformers(module, "input", n)
    if getattr(diffusion_model, "middle_block", None) is not None:
        transformers(diffusion_model.middle_block, "middle", 0)
    for n, module in enumerate(diffusion_model.output_blocks):
        # an output block's transformer runs before its Upsample: record, then move up
        transformers(module, "output", n)
    return found


def grid_at_level(latent_hw: tuple, level: int) -> tuple:
    """Token grid after ``level`` stride-2 downsamplings (conv, padding 1: ceil halving)."""
    h, w = latent_hw
    for _ in range(level):
        h, w = (h + 1) // 2, (w + 1) // 2
    return int(h), int(w)


class SelfAttentionCapture:
    """A stateful attn1 replace patch (one object for all chosen layers)."""

    def __init__(self, layers, with_v: bool = False, store_device=None):
        self.layers = tuple(layers)
        self.with_v = bool(with_v)
        self.store_device = store_device if store_device is not None else comfy.model_management.intermediate_device()
        self.reset()

    # -------------------------------------------------------------------------------- state
    def reset(self):
        self.step = None
        self.q, self.k, self.v = {}, {}, {}
        self.layer_hw = {}
        self.step_sigmas = {}
        self.calls = 0

    def set_step(self, step, sigma=None):
        """Record the following UNet calls as inversion step ``step`` (None: stop recording)."""
        self.step = None if step is None else int(step)
        if step is not None and sigma is not None:
            self.step_sigmas[int(step)] = float(sigma)

    def take(self) -> dict:
        """Hand the recorded banks over and drop every reference to them."""
        out = dict(q=self.q, k=self.k, v=self.v, layer_hw=self.layer_hw, step_sigmas=self.step_sigmas)
        self.reset()
        return out

    def __deepcopy__(self, memo):
        # model_options are deep-copied on clone(); the banks are not copied, the clone shares
        # this object (it only ever runs inside the node that created it).
        return self

    # ------------------------------------------------------------------------------ install
    def install(self, model_patcher):
        """Patch ``model_patcher`` (a clone) in place: attn1 replace on each layer + reset wrapper."""
        for key in self.layers:
            block, number, index = parse_layer_key(key)
            model_patcher.set_model_attn1_replace(self, block, number, index)
        model_patcher.remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, WRAPPER_KEY)
        model_patcher.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, WRAPPER_KEY, self.outer_sample_wrapper)
        return model_patcher

    def outer_sample_wrapper(self, executor, *args, **kwargs):
        self.reset()
        return executor(*args, **kwargs)

    # -------------------------------------------------------------------------------- patch
    def __call__(self, q, k, v, extra_options):
        heads = extra_options["n_heads"]
        out = comfy_attention.optimized_attention(q, k, v, heads, attn_precision=extra_options.get("attn_precision"),
                                                  transformer_options=extra_options)
        self.calls += 1
        if self.step is not None:
            self._record(q, k, v, extra_options)
        return out

    def _record(self, q, k, v, extra_options):
        cond_or_uncond = list(extra_options.get("cond_or_uncond", [0]))
        if 0 not in cond_or_uncond:
            return
        chunks = len(cond_or_uncond)
        if q.shape[0] % chunks:
            return
        b = q.shape[0] // chunks
        i = cond_or_uncond.index(0)
        heads, dim = extra_options["n_heads"], extra_options["dim_head"]
        block = extra_options.get("block")
        if block is None:
            return
        key = layer_key(block[0], block[1], extra_options.get("block_index", 0))
        tokens = q.shape[1]
        shape = extra_options.get("activations_shape")
        if shape is not None and len(shape) == 4 and shape[2] * shape[3] == tokens:
            self.layer_hw[key] = (int(shape[2]), int(shape[3]))

        def keep(t):
            t = t[i * b:(i + 1) * b].reshape(b, tokens, heads, dim).permute(0, 2, 1, 3)
            return t.to(device=self.store_device, dtype=torch.float16, memory_format=torch.contiguous_format, copy=True)

        self.q[(self.step, key)] = keep(q)
        self.k[(self.step, key)] = keep(k)
        if self.with_v:
            self.v[(self.step, key)] = keep(v)
