"""KV consistency for AttentionDrag's regeneration: self-attention reads the keys and values that
were saved while the original image was inverted (as DragDiffusion / FastDrag do).

Installed with ``set_model_attn1_replace`` on a ``model.clone()`` for every layer in the capture's
``kv_layers``, and only those. A regeneration from the edit step calls the UNet at
``sigmas[edit_step], ..., sigmas[n - 1]``; the capture holds the keys and values of the inversion's
UNet call at each of these sigmas (KV step ``j`` at ``sigmas[n - j]``, the edit step included). Each
call reads the step whose sigma it is, exactly (relative tolerance ``SIGMA_RTOL``); a call at any
other sigma (another step count, scheduler or a sampler that evaluates between the steps) is a
``ValueError``, never a silent substitution. Then

    out = (1 - strength) * Attn(q, k, v) + strength * Attn(q, k_saved, v_saved)

with ComfyUI's own attention backend (``optimized_attention``). strength 0 gives exactly the
unpatched layer; strength 1 replaces the keys and values outright. The saved keys and values are
those of the conditional half of the inversion batch; they are used for every entry of the
batch being sampled (conditional and unconditional alike).

The keys and values are projected once per step, on the sampling device and in the UNet's
dtype, straight into the ``[batch, tokens, heads * dim]`` layout the backend takes, and cached for
the step's layers (and a second sampler pass, e.g. CFG's, at that step); the cache holds one step
at a time and an OUTER_SAMPLE wrapper empties it when the run ends, so no device memory is held
between runs.
"""
from __future__ import annotations

import torch

from ..guidance.projection_bank import ProjectionBank
from . import comfy_host as host

NODE = "AttentionDrag KV Consistency"
WRAPPER_KEY = "dragfusion_kv_consistency"
SIGMA_RTOL = 1e-4


def layer_triple(layer: str) -> tuple[str, int, int]:
    """"input.1.0" -> ("input", 1, 0), the arguments of set_model_attn1_replace."""
    block, number, index = layer.split(".")
    return block, int(number), int(index)


def _flat(t: torch.Tensor) -> torch.Tensor:
    """[B, heads, tokens, dim] -> [B, tokens, heads * dim], the layout attn1 replace functions get."""
    b, h, n, d = t.shape
    return t.transpose(1, 2).reshape(b, n, h * d)


def step_for_sigma(step_sigmas: dict, sigma: float) -> int | None:
    """The KV step whose sigma is ``sigma`` (within ``SIGMA_RTOL``), or None."""
    for j, s in step_sigmas.items():
        if abs(float(sigma) - s) <= SIGMA_RTOL * max(abs(s), 1e-8):
            return j
    return None


class KVCache:
    """Keys/values of one capture projected for the sampling device and dtype, shared by the
    layer patches of one model clone; emptied at the end of every sampling run."""

    def __init__(self, k_bank, v_bank):
        self.k_bank, self.v_bank = k_bank, v_bank
        self.entries = {}
        self.step = None
        self.projections = 0            # how many K/V pairs were projected (tests, benchmarks)
        self.peak_nbytes = 0

    def __deepcopy__(self, memo):
        return self  # model_options are deep-copied on every clone; the saved K/V must not be

    def get(self, step: int, layer: str, batch: int, device, dtype):
        key = (step, layer, batch, str(device), dtype)
        if step != self.step:           # the sampler moved on: the previous step's K/V are not read again
            self.entries, self.step = {}, step
        hit = self.entries.get(key)
        if hit is None:
            k, v = (self._project(bank, (step, layer), device, dtype) for bank in (self.k_bank, self.v_bank))
            if k.shape[0] != batch:
                if batch % k.shape[0]:
                    raise ValueError(f"{NODE}: the capture has batch {k.shape[0]}, the sampler {batch}")
                k, v = k.repeat(batch // k.shape[0], 1, 1), v.repeat(batch // v.shape[0], 1, 1)
            hit = self.entries[key] = (k, v)
            self.projections += 1
            self.peak_nbytes = max(self.peak_nbytes, self.nbytes())
        return hit

    @staticmethod
    def _project(bank, key, device, dtype) -> torch.Tensor:
        if isinstance(bank, ProjectionBank):
            return bank.project_flat(key, dtype=dtype, device=device)
        return _flat(bank[key]).to(device=device, dtype=dtype)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for pair in self.entries.values() for t in pair)

    def clear(self):
        self.entries, self.step = {}, None

    def outer_sample_wrapper(self, executor, *args, **kwargs):
        try:
            return executor(*args, **kwargs)
        finally:
            self.clear()


class KVConsistencyPatch:
    """attn1 replace for one layer: reads the saved keys/values of the step being sampled."""

    def __init__(self, layer: str, cache: KVCache, step_sigmas: dict, strength: float, tokens: int, schedule: str):
        self.layer = layer
        self.cache = cache
        self.step_sigmas = {int(j): float(s) for j, s in step_sigmas.items()}   # KV step -> sigma
        self.strength = float(strength)
        self.tokens = int(tokens)
        self.schedule = schedule

    def __deepcopy__(self, memo):
        return self  # immutable; the cache is emptied by the wrapper

    def step_at(self, sigma: float) -> int:
        j = step_for_sigma(self.step_sigmas, sigma)
        if j is None:
            known = ", ".join(f"{s:.4g}" for s in sorted(self.step_sigmas.values(), reverse=True))
            raise ValueError(f"{NODE}: the sampler called the UNet at sigma {float(sigma):.4g}, which is not a step of the "
                             f"captured regeneration ({self.schedule}: sigmas {known}); regenerate with KSamplerAdvanced using the "
                             "inversion's steps and scheduler, start_at_step = edit_step and sampler euler or ddim")
        return j

    def __call__(self, q, k, v, extra_options):
        heads = extra_options["n_heads"]
        kwargs = dict(attn_precision=extra_options.get("attn_precision"), transformer_options=extra_options)
        if self.strength <= 0.0:
            return host.optimized_attention(q, k, v, heads, **kwargs)
        if k.shape[1] != self.tokens:
            raise ValueError(f"{NODE}: layer {self.layer} was captured with {self.tokens} tokens but is sampled with "
                             f"{k.shape[1]}; regenerate at the size of the captured latent")
        sigmas = extra_options.get("sigmas")
        sigma = float(sigmas.reshape(-1)[0]) if torch.is_tensor(sigmas) else float(sigmas)
        ks, vs = self.cache.get(self.step_at(sigma), self.layer, q.shape[0], q.device, q.dtype)
        saved = host.optimized_attention(q, ks, vs, heads, **kwargs)
        if self.strength >= 1.0:
            return saved
        own = host.optimized_attention(q, k, v, heads, **kwargs)
        return torch.lerp(own, saved, self.strength)


def apply_kv_consistency(model, capture, strength: float = 1.0):
    """A clone of ``model`` whose self-attention layers in ``capture.kv_layers`` read the saved K/V."""
    m = model.clone()
    cache = KVCache(capture.k, capture.v)
    n = len(capture.sigmas) - 1
    schedule = f"{n}-step {capture.scheduler or 'custom'} schedule from step {capture.edit_step}"
    step_sigmas = capture.kv_sigmas()
    for layer in capture.kv_layers:
        h, w = capture.layer_hw[layer]
        patch = KVConsistencyPatch(layer, cache, step_sigmas, strength, int(h) * int(w), schedule)
        block, number, index = layer_triple(layer)
        m.set_model_attn1_replace(patch, block, number, index)
    m.add_wrapper_with_key(host.OUTER_SAMPLE, WRAPPER_KEY, cache.outer_sample_wrapper)
    return m
