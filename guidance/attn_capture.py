"""ATTN_CAPTURE: what "Inversion with Attention Capture" recorded.

Queries and keys (and optionally values) of chosen self-attention layers at chosen inversion
steps, heads kept, fp16 -- never the tokens x tokens map. The node stores them as each layer's
input plus its projection weights (:class:`~.projection_bank.ProjectionBank`, half the bytes of
q and k); plain dicts of q / k tensors work the same. Attention rows are computed later, in
chunks, by :meth:`AttnCapture.rows` (see :mod:`attention_rows`).

The contract:

- ``q[(step, layer)]``, ``k[(step, layer)]`` (and ``v`` when asked): ``[B, heads, tokens, dim]``
  fp16 on ComfyUI's intermediate device, the conditional half of the batch only. ``layer`` is a
  string ``"block.number.index"``, e.g. ``"input.1.0"``, ``"output.0.0"``: the block name and
  number of ``extra_options["block"]`` plus the transformer block index -- the same triple as
  ``ModelPatcher.set_model_attn1_replace(patch, block, number, index)``.
  ``layer_hw[layer] = (h, w)`` is that layer's token grid (tokens = h * w, row-major).
- ``trajectory``: model-space latents (after ``process_latent_in``); ``trajectory[0]`` is the
  clean latent z0, ``trajectory[-1]`` the latent at the edit step. Inversion step ``j`` goes from
  ``trajectory[j]`` to ``trajectory[j + 1]``, i.e. from ``sigmas[n - j]`` up to ``sigmas[n - j - 1]``.
- ``steps``: the inversion steps ``j`` whose UNet call was captured; ``step_sigmas[j]`` is the
  sigma (float) at which that UNet call was evaluated (``max(sigmas[n - j], sigma_min)``).
- ``sigmas``: the full descending n-step schedule (n + 1 values, last 0); ``edit_step``: sampling
  resumes at ``sigmas[edit_step]`` (KSamplerAdvanced ``start_at_step``); ``latent_hw = (h, w)``.
- KV consistency: ``kv_layers`` (the self-attention layers whose keys and values regeneration
  reads; not necessarily ``layers``) at ``kv_steps``; ``k[(j, layer)]`` and ``v[(j, layer)]``
  hold them. KV step ``j`` is the UNet call on ``trajectory[j]`` at ``sigmas[n - j]``, the very
  call a regeneration from the edit step makes there: ``j = 1 .. n - edit_step``, where
  ``j = n - edit_step`` is one extra UNet call on the latent at the edit step (the inversion itself
  never evaluates there). :meth:`AttnCapture.kv_sigmas` maps them to their sigmas.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .attention_rows import DEFAULT_MAX_ELEMENTS, attention_rows, grid_position, upsample_rows
from .errors import input_error
from .projection_bank import ProjectionBank, unique_nbytes


@dataclass(frozen=True, repr=False)
class AttnCapture:
    latent_hw: tuple            # (h, w) of the latent grid
    sigmas: torch.Tensor        # the full n-step sampling schedule, descending, n + 1 values
    edit_step: int              # index into sigmas where the edit happens (sampling resumes there)
    trajectory: tuple           # model-space latents along the inversion, clean latent first
    steps: tuple                # captured inversion steps j (step j: trajectory[j] -> trajectory[j + 1])
    layers: tuple               # layer keys "input.1.0" = (block, block number, transformer block index)
    layer_hw: dict              # layer key -> (h, w) token grid of that layer
    q: dict                     # (step, layer) -> [B, heads, tokens, dim] fp16
    k: dict
    v: dict = field(default_factory=dict)
    step_sigmas: dict = field(default_factory=dict)   # step j -> sigma (float) of that UNet call
    scheduler: str = ""         # ComfyUI scheduler name the sigmas came from
    cfg: float = 1.0            # CFG scale used during the inversion
    kv_layers: tuple = ()       # layers whose keys and values KV consistency reads
    kv_steps: tuple = ()        # KV step j: the UNet call on trajectory[j] at sigmas[n - j]

    # ----------------------------------------------------------------------------------- checks
    def validate(self, node: str = "ATTN_CAPTURE", input_name: str = "capture") -> "AttnCapture":
        if not self.steps or not self.layers:
            raise input_error(node, input_name, "the capture holds no steps or no layers; capture at least one step of one self-attention layer")
        n = len(self.sigmas) - 1
        if not (0 <= self.edit_step < n):
            raise input_error(node, input_name, f"edit step {self.edit_step} is outside the {n}-step schedule")
        for key in ((s, l) for s in self.steps for l in self.layers):
            if key not in self.q or key not in self.k:
                raise input_error(node, input_name, f"step {key[0]} of layer {key[1]} is missing from the capture")
        for layer in self.layers:
            if layer not in self.layer_hw:
                raise input_error(node, input_name, f"layer {layer} has no token grid in layer_hw")
        if self.trajectory:
            last = len(self.trajectory) - 2
            bad = [s for s in self.steps if not (0 <= s <= last)]
            if bad:
                raise input_error(node, input_name, f"captured steps {bad} are outside the inversion's steps 0..{last}")
            bad = [s for s in self.kv_steps if not (1 <= s <= last + 1)]
            if bad:
                raise input_error(node, input_name, f"KV steps {bad} are outside 1..{last + 1}")
        for key in ((s, l) for s in self.kv_steps for l in self.kv_layers):
            if key not in self.k or key not in self.v:
                raise input_error(node, input_name, f"the keys/values of step {key[0]} of layer {key[1]} are missing from the capture")
        return self

    def kv_sigmas(self) -> dict:
        """KV step j -> the sigma ``sigmas[n - j]`` at which a regeneration calls the UNet on that latent."""
        n = len(self.sigmas) - 1
        return {int(j): float(self.sigmas[n - j]) for j in self.kv_steps}

    # ------------------------------------------------------------------------------ positions
    @property
    def tokens(self) -> int:
        return int(self.latent_hw[0]) * int(self.latent_hw[1])

    def position(self, x: int, y: int) -> int:
        """Flat index of latent cell (x, y) (x right, y down): ``y * w + x``."""
        h, w = self.latent_hw
        if not (0 <= x < w and 0 <= y < h):
            raise ValueError(f"latent cell ({x}, {y}) is outside the {w}x{h} latent grid")
        return int(y) * int(w) + int(x)

    @property
    def batch(self) -> int:
        key = next(iter(self.q), None)
        if key is None:
            return 0
        return int(self.q.shape(key)[0]) if isinstance(self.q, ProjectionBank) else int(self.q[key].shape[0])

    def _stored(self, bank) -> dict:
        return bank.inputs if isinstance(bank, ProjectionBank) else bank

    def nbytes_per_step(self, step: int | None = None) -> int:
        """Bytes held for one inversion step (a tensor shared by q, k and v counts once); without
        ``step``, the most any step holds (q/k and KV steps overlap but need not coincide)."""
        if step is None:
            return max((self.nbytes_per_step(s) for s in set(self.steps) | set(self.kv_steps)), default=0)
        return unique_nbytes(t for bank in (self.q, self.k, self.v) for (s, _), t in self._stored(bank).items() if s == step)

    def nbytes_fixed(self) -> int:
        """Bytes held once per capture, whatever the number of steps (the projection weights)."""
        return sum(p.nbytes for bank in (self.q, self.k, self.v) if isinstance(bank, ProjectionBank)
                   for p in bank.projections.values())

    def _layer_rows(self, step: int, layer: str, positions: torch.Tensor, max_elements: int, device,
                    k_cache: dict | None = None) -> torch.Tensor:
        key = (step, layer)
        if isinstance(self.q, ProjectionBank) and isinstance(self.k, ProjectionBank):
            q = self.q.project(key, tokens=positions, device=device)     # only the rows asked for
            k = None if k_cache is None else k_cache.get(key)
            if k is None:
                k = self.k.project(key, device=device)
                if k_cache is not None:
                    k_cache[key] = k
            return attention_rows(q, k, torch.arange(q.shape[2]), max_elements=max_elements, device=device)
        return attention_rows(self.q[key], self.k[key], positions, max_elements=max_elements, device=device)

    # ----------------------------------------------------------------------------------- rows
    def rows(self, positions, steps=None, layers=None, reduce_steps: bool = True,
             max_elements: int = DEFAULT_MAX_ELEMENTS, device=None,
             node: str = "ATTN_CAPTURE", input_name: str = "positions", k_cache: dict | None = None) -> torch.Tensor:
        """Head-averaged self-attention rows of latent cells over the whole latent grid.

        positions: LongTensor ``[P]`` of flat latent-cell indices ``y * w + x`` on ``latent_hw``.
        steps / layers: subsets of ``self.steps`` / ``self.layers`` (default: all captured).
        Returns float32 ``[B, P, h*w]`` averaged over the steps, or ``[S, B, P, h*w]`` with
        ``reduce_steps=False`` (steps in the order given). Per step: softmax per head, mean over
        heads, mean over layers. A layer on a coarser grid maps each position by floor scaling
        and its row is nearest-upsampled to the latent grid and divided by the upsampling area,
        so every row sums to 1. Memory is bounded by ``max_elements`` scores per chunk.
        ``k_cache``: a dict the caller keeps across calls (chunks of positions), so that each
        layer's keys are projected once, not once per chunk.
        """
        h, w = (int(v) for v in self.latent_hw)
        positions = torch.as_tensor(positions)
        if positions.dtype in (torch.float16, torch.float32, torch.float64, torch.bfloat16, torch.bool):
            raise input_error(node, input_name, f"positions must be integer cell indices, got dtype {positions.dtype}")
        positions = positions.to(torch.long).reshape(-1)
        if positions.numel() == 0:
            raise input_error(node, input_name, "no positions given; pass at least one flat latent-cell index y*w+x")
        if int(positions.min()) < 0 or int(positions.max()) >= h * w:
            raise input_error(node, input_name, f"positions must be in 0..{h * w - 1} (y*w+x on the {w}x{h} latent grid), got {int(positions.min())}..{int(positions.max())}")
        steps = tuple(self.steps) if steps is None else tuple(int(s) for s in ([steps] if isinstance(steps, int) else steps))
        layers = tuple(self.layers) if layers is None else tuple([layers] if isinstance(layers, str) else layers)
        if not steps or not layers:
            raise input_error(node, "steps" if not steps else "layers", "empty selection; choose at least one captured step and layer")
        for s in steps:
            if s not in self.steps:
                raise input_error(node, "steps", f"step {s} was not captured; captured steps are {list(self.steps)}")
        for l in layers:
            if l not in self.layers:
                raise input_error(node, "layers", f"layer {l!r} was not captured; captured layers are {list(self.layers)}")
        out = []
        for s in steps:
            acc = None
            for l in layers:
                lhw = tuple(int(v) for v in self.layer_hw[l])
                lpos = grid_position(positions, (h, w), lhw)
                r = self._layer_rows(s, l, lpos, max_elements, device, k_cache)
                r = upsample_rows(r, lhw, (h, w))
                acc = r if acc is None else acc.add_(r)
            out.append(acc.div_(len(layers)))
        if reduce_steps:
            total = out[0]
            for r in out[1:]:
                total.add_(r)
            return total.div_(len(out))
        return torch.stack(out)

    def __repr__(self) -> str:
        h, w = self.latent_hw
        b = self.batch
        return (f"AttnCapture(latent {w}x{h}, batch {b}, {len(self.sigmas) - 1}-step {self.scheduler or 'custom'} "
                f"schedule, edit_step {self.edit_step}, steps {list(self.steps)}, layers {list(self.layers)}, "
                f"KV layers {list(self.kv_layers)} at steps {list(self.kv_steps)}, cfg {self.cfg:g}, {self.nbytes_per_step() / 1e6:.2f} MB per step)")
