"""KV consistency for AttentionDrag's regeneration: self-attention reads the keys and values that
were saved while the original image was inverted (as DragDiffusion / FastDrag do).

Installed with ``set_model_attn1_replace`` on a ``model.clone()`` for every layer the capture
holds, and only those. At each UNet call the patch picks the captured inversion step whose
sigma is nearest (in log sigma) to the sigma being sampled, and computes

    out = (1 - strength) * Attn(q, k, v) + strength * Attn(q, k_saved, v_saved)

with ComfyUI's own attention backend (``optimized_attention``). strength 0 gives exactly the
unpatched layer; strength 1 replaces the keys and values outright. The saved keys and values are
those of the conditional half of the inversion batch; they are used for every entry of the
batch being sampled (conditional and unconditional alike). The patch holds no per-run state.
"""
from __future__ import annotations

import math

import torch
from . import comfy_host as host


def layer_triple(layer: str) -> tuple[str, int, int]:
    """"input.1.0" -> ("input", 1, 0), the arguments of set_model_attn1_replace."""
    block, number, index = layer.split(".")
    return block, int(number), int(index)


def _flat(t: torch.Tensor) -> torch.Tensor:
    """[B, heads, tokens, dim] -> [B, tokens, heads * dim], the layout attn1 replace functions get."""
    b, h, n, d = t.shape
    return t.transpose(1, 2).reshape(b, n, h * d)


class KVConsistencyPatch:
    """attn1 replace for one layer: reads the saved keys/values of the nearest captured step."""

    def __init__(self, layer: str, bank: dict, step_sigmas: dict, strength: float):
        self.layer = layer
        self.bank = bank                            # step -> (k, v) [B, heads, tokens, dim]
        self.steps = sorted(bank)
        self.log_sigmas = torch.tensor([math.log(max(float(step_sigmas[s]), 1e-8)) for s in self.steps])
        self.strength = float(strength)

    def __deepcopy__(self, memo):
        return self  # immutable; model_options are deep-copied on every clone, the saved K/V must not be

    def nearest_step(self, sigma: float) -> int:
        d = (self.log_sigmas - math.log(max(float(sigma), 1e-8))).abs()
        return self.steps[int(d.argmin())]

    def saved_kv(self, sigma: float, batch: int, tokens: int, device, dtype):
        k, v = self.bank[self.nearest_step(sigma)]
        if k.shape[2] != tokens:
            raise ValueError(f"KV consistency: layer {self.layer} was captured with {k.shape[2]} tokens but "
                             f"is sampled with {tokens}; regenerate at the size of the captured latent")
        k, v = _flat(k).to(device=device, dtype=dtype), _flat(v).to(device=device, dtype=dtype)
        if k.shape[0] != batch:
            if batch % k.shape[0]:
                raise ValueError(f"KV consistency: the capture has batch {k.shape[0]}, the sampler {batch}")
            reps = batch // k.shape[0]
            k, v = k.repeat(reps, 1, 1), v.repeat(reps, 1, 1)
        return k, v

    def __call__(self, q, k, v, extra_options):
        heads = extra_options["n_heads"]
        kwargs = dict(attn_precision=extra_options.get("attn_precision"), transformer_options=extra_options)
        if self.strength <= 0.0:
            return host.optimized_attention(q, k, v, heads, **kwargs)
        sigmas = extra_options.get("sigmas")
        sigma = float(sigmas.reshape(-1)[0]) if torch.is_tensor(sigmas) else float(sigmas)
        ks, vs = self.saved_kv(sigma, q.shape[0], k.shape[1], q.device, q.dtype)
        saved = host.optimized_attention(q, ks, vs, heads, **kwargs)
        if self.strength >= 1.0:
            return saved
        own = host.optimized_attention(q, k, v, heads, **kwargs)
        return torch.lerp(own, saved, self.strength)


def apply_kv_consistency(model, capture, strength: float = 1.0):
    """A clone of ``model`` whose self-attention layers in ``capture.layers`` read the saved K/V."""
    m = model.clone()
    for layer in capture.layers:
        bank = {s: (capture.k[(s, layer)], capture.v[(s, layer)]) for s in capture.steps}
        patch = KVConsistencyPatch(layer, bank, capture.step_sigmas, strength)
        block, number, index = layer_triple(layer)
        m.set_model_attn1_replace(patch, block, number, index)
    return m
