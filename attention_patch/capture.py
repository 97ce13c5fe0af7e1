"""Self-attention capture: an attn1 patch that records what q, k (and optionally v) are made of.

Installed only on a ``model.clone()``. The patch sees the self-attention's input before the
projections and hands it on unchanged, so the layer itself (ComfyUI's ``CrossAttention`` with its
own attention backend) runs exactly as unpatched and the patched model's output equals the
unpatched one. Only the conditional half of the batch is recorded
(``extra_options["cond_or_uncond"]``): the layer input ``[B, tokens, C]`` fp16 on ComfyUI's
intermediate device, plus the layer's effective projection weights once, from which
``q`` / ``k`` / ``v`` ``[B, heads, tokens, dim]`` are projected on demand
(:mod:`guidance.projection_bank`). No tokens x tokens map is ever built here.

Recording happens only while a step is set (``set_step``); the sampler driving the inversion sets
it before each UNet call, saying whether that call records the queries and keys of ``layers``
(the attention the edit is derived from) and/or the keys and values of ``kv_layers`` (those a
KV-consistent regeneration reads). All state is reset by an OUTER_SAMPLE wrapper at the start of every
sampling call, so nothing leaks from one run into the next.
"""
from __future__ import annotations

import torch


from ..guidance.projection_bank import Int8Rows, ProjectionBank, effective_projection
from . import comfy_host as host

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
            if isinstance(layer, host.Downsample):
                nonlocal level
                level += 1
            elif isinstance(layer, host.Upsample):
                level -= 1
            if isinstance(layer, host.SpatialTransformer):
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


def attn1_module(diffusion_model, key: str):
    """The ``attn1`` of layer ``key`` ("block.number.index") of a UNetModel."""
    block, number, index = parse_layer_key(key)
    if block == "input":
        container = diffusion_model.input_blocks[number]
    elif block == "output":
        container = diffusion_model.output_blocks[number]
    else:
        container = diffusion_model.middle_block
    for layer in container:
        if isinstance(layer, host.SpatialTransformer):
            return layer.transformer_blocks[index].attn1
    raise KeyError(f"no self-attention at {key}")


class SelfAttentionCapture:
    """A stateful attn1 patch (one object for all chosen layers).

    It sees the self-attention's input ``n`` before the q/k/v projections and returns it
    unchanged, so the layer runs exactly as unpatched (ComfyUI's own ``CrossAttention`` and
    attention backend). It records ``n`` per step (``precision`` 'int8': int8 with a scale per
    channel, :class:`Int8Rows`; 'fp16': fp16) and, once per layer and sampling call,
    the effective to_q / to_k / to_v weights (read off the live modules, so LoRA patches and
    weight casts are included). ``q`` / ``k`` / ``v`` are :class:`ProjectionBank` views that
    project on demand: with fp16, the same numbers as recording q and k in half the bytes;
    with int8, a quarter of the bytes, q and k those of the input rounded to 255 levels per channel.
    """

    PRECISIONS = ("int8", "fp16")

    def __init__(self, layers, with_v: bool = False, store_device=None, kv_layers=None, precision: str = "int8"):
        if precision not in self.PRECISIONS:
            raise ValueError(f"capture precision {precision!r}: choose one of {self.PRECISIONS}")
        self.precision = precision
        self.layers = tuple(layers)
        self.with_v = bool(with_v)
        self.kv_layers = (tuple(self.layers) if kv_layers is None else tuple(kv_layers)) if self.with_v else ()
        self.store_device = store_device if store_device is not None else host.intermediate_device()
        self.modules = {}
        self.reset()

    # -------------------------------------------------------------------------------- state
    def reset(self):
        self.step = None
        self.record_qk, self.record_kv = True, False
        self.inputs = {"q": {}, "k": {}, "v": {}}
        self.projections = {"q": {}, "k": {}, "v": {}}
        self.layer_hw = {}
        self.step_sigmas = {}
        self.calls = 0

    @property
    def q(self):
        return ProjectionBank(self.inputs["q"], self.projections["q"])

    @property
    def k(self):
        return ProjectionBank(self.inputs["k"], self.projections["k"])

    @property
    def v(self):
        return ProjectionBank(self.inputs["v"], self.projections["v"])

    def set_step(self, step, sigma=None, qk: bool = True, kv: bool | None = None):
        """Record the following UNet calls as inversion step ``step`` (None: stop recording):
        the queries/keys of ``layers`` when ``qk``, the keys/values of ``kv_layers`` when ``kv``
        (default: whenever values are captured)."""
        self.step = None if step is None else int(step)
        self.record_qk = bool(qk)
        self.record_kv = self.with_v if kv is None else (bool(kv) and self.with_v)
        if step is not None and sigma is not None and qk:
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
        """Patch ``model_patcher`` (a clone) in place: one attn1 patch for the chosen layers + reset wrapper."""
        unet = model_patcher.model.diffusion_model
        self.modules = {key: attn1_module(unet, key) for key in dict.fromkeys(self.layers + self.kv_layers)}
        patches = model_patcher.model_options["transformer_options"].get("patches", {})
        if "attn1_patch" in patches:  # a re-install replaces an earlier capture instead of stacking it
            patches["attn1_patch"] = [p for p in patches["attn1_patch"] if not isinstance(p, SelfAttentionCapture)]
        model_patcher.set_model_attn1_patch(self)
        model_patcher.remove_wrappers_with_key(host.OUTER_SAMPLE, WRAPPER_KEY)
        model_patcher.add_wrapper_with_key(host.OUTER_SAMPLE, WRAPPER_KEY, self.outer_sample_wrapper)
        return model_patcher

    def outer_sample_wrapper(self, executor, *args, **kwargs):
        self.reset()
        return executor(*args, **kwargs)

    # -------------------------------------------------------------------------------- patch
    def __call__(self, n, context, value, extra_options):
        block = extra_options.get("block")
        if block is not None:
            key = layer_key(block[0], block[1], extra_options.get("block_index", 0))
            if key in self.modules:
                self.calls += 1
                if self.step is not None:
                    self._record(key, n, context, value, extra_options)
        return n, context, value

    def _record(self, key, n, context, value, extra_options):
        cond_or_uncond = list(extra_options.get("cond_or_uncond", [0]))
        if 0 not in cond_or_uncond:
            return
        chunks = len(cond_or_uncond)
        if n.shape[0] % chunks:
            return
        b = n.shape[0] // chunks
        i = cond_or_uncond.index(0)
        tokens = n.shape[1]
        shape = extra_options.get("activations_shape")
        if shape is not None and len(shape) == 4 and shape[2] * shape[3] == tokens:
            self.layer_hw[key] = (int(shape[2]), int(shape[3]))
        qk = self.record_qk and key in self.layers
        kv = self.record_kv and key in self.kv_layers
        if not (qk or kv):
            return
        if key not in self.projections["k"]:
            self._read_weights(key, n, context, extra_options["n_heads"])

        def keep(t):
            t = t[i * b:(i + 1) * b]
            if self.precision == "int8":
                return Int8Rows.quantize(t.detach()).to_device(self.store_device)
            return t.to(device=self.store_device, dtype=torch.float16, memory_format=torch.contiguous_format, copy=True)

        slot = (self.step, key)
        x = keep(n)
        kx = self.inputs["k"][slot] = x if context is n else keep(context)
        if qk:
            self.inputs["q"][slot] = x
        if kv:
            self.inputs["v"][slot] = kx if value is context else keep(value)

    def _read_weights(self, key, n, context, heads):
        attn = self.modules[key]
        for name, src in (("q", n), ("k", context), ("v", context)):
            if (name == "q" and key not in self.layers) or (name == "v" and key not in self.kv_layers):
                continue
            linear = getattr(attn, "to_" + name)
            self.projections[name][key] = effective_projection(linear, src.shape[-1], heads, src.device, src.dtype,
                                                               self.store_device)
