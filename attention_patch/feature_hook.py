"""Intermediate UNet decoder features for the energy, through ComfyUI's ``output_block_patch``.

The patch sees ``h`` as it enters output block ``id`` -- the output of block ``id - 1`` -- and the
skip tensor. A :class:`~.kv_replace.BranchCall` in ``transformer_options`` says which ids to record
and from which id on the rest of the decoder may run without autograd history: there the patch
returns ``h`` and the skip tensor detached and switches grad mode off (the caller of the UNet
restores it), so the blocks the energy does not need keep no activations for the backward pass.

Also here: :func:`grad_weights`, the weight wrappers that make a gradient pass possible at all
inside ComfyUI's executor. The executor loads weights under ``torch.inference_mode()``; such tensors
cannot be saved for backward. With a weight function on a layer, ComfyUI's cast step copies the weight
before use (a normal tensor when the pass runs with inference mode off); the function detaches it so no
weight gradient is ever tracked. The functions are on only for the duration of a gradient pass (a
context manager around that one UNet call) and only on the layers the backward pass goes through:
every other call casts no extra copy of any weight.
"""
from __future__ import annotations

import contextlib

import torch


from .kv_replace import CALL_KEY
from . import comfy_host as host


def decoder_feature_points(diffusion_model) -> list[int]:
    """Output-block ids at whose entry the decoder's multi-scale features are read.

    The output of every decoder level that ends in an upsampler (DragonDiffusion reads two such
    levels of SD1.5: output blocks 5 and 8, i.e. entry ids 6 and 9), at most the last two. A UNet
    without upsamplers (the tiny test checkpoint) gives the first output block's output."""
    blocks = list(getattr(diffusion_model, "output_blocks", []) or [])
    ends = [i + 1 for i, b in enumerate(blocks) if any(isinstance(layer, host.Upsample) for layer in b) and i + 1 < len(blocks)]
    if ends:
        return ends[-2:]
    return [1] if len(blocks) > 1 else []


def parse_feature_blocks(text: str, n_output_blocks: int) -> list[int]:
    """'5, 8' (output blocks whose output is read) -> entry ids [6, 9]. Raises ValueError."""
    ids = []
    for part in (text or "").replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        k = int(part)
        if not 0 <= k < n_output_blocks - 1:
            raise ValueError(f"output block {k} is outside 0..{n_output_blocks - 2} (the last block's output is not "
                             f"reachable by the patch)")
        ids.append(k + 1)
    return sorted(set(ids))


class DecoderFeatureHook:
    """output_block_patch: records ``h`` at the chosen entries, detaches the rest of the decoder."""

    def __deepcopy__(self, memo):
        return self

    def __call__(self, h, hsp, transformer_options):
        call = transformer_options.get(CALL_KEY)
        if call is None:
            return h, hsp
        block = transformer_options.get("block")
        if not block or block[0] != "output":
            return h, hsp
        i = int(block[1])
        if i in call.capture_at:
            call.features[call.capture_at[i]] = h
        if call.detach_from is not None and i >= call.detach_from:
            # the rest of the decoder builds no graph (its weights would otherwise be recorded, as
            # parameters that require grad); the caller restores the grad mode after the UNet call
            torch.set_grad_enabled(False)
            return h.detach(), hsp.detach()
        return h, hsp


def install_feature_hook(model_patcher) -> DecoderFeatureHook:
    hook = DecoderFeatureHook()
    model_patcher.set_model_output_block_patch(hook)
    return hook


def _detached(t: torch.Tensor) -> torch.Tensor:
    return t.detach()


def grad_modules(model_patcher, detach_from: int | None) -> list:
    """The cast-capable layers the backward pass may cross: all but the output blocks >= ``detach_from``
    and the final ``out`` head."""
    skip = [] if detach_from is None else [f"diffusion_model.output_blocks.{k}." for k in range(detach_from, 1000)]
    skip.append("diffusion_model.out.")
    return [module for name, module in model_patcher.model.named_modules()
            if hasattr(module, "weight_function") and name.startswith("diffusion_model.")
            and not any((name + ".").startswith(s) for s in skip)]


@contextlib.contextmanager
def grad_weights(modules: list):
    """For the duration of the block, a detaching weight (and bias) function on each of ``modules``, so
    ComfyUI's cast step hands the layer a normal copy that autograd may save; removed again afterwards,
    whatever happens inside (the lists are the model's own, shared with every clone)."""
    added = []
    try:
        for module in modules:
            for attr in ("weight", "bias"):
                if getattr(module, attr, None) is not None:
                    functions = getattr(module, attr + "_function")
                    functions.append(_detached)
                    added.append(functions)
        yield len(added)
    finally:
        for functions in added:
            for k in range(len(functions) - 1, -1, -1):
                if functions[k] is _detached:
                    del functions[k]
                    break
