"""State dicts <-> ImagePromptAdapter, for two key layouts. Pure torch: reading the file is the caller's job.

1. The pack's own layout (what scripts/train_image_prompt.py saves)::

     image_prompt.meta.format_version / .heads / .kv_with_queries   int64 scalars
     image_prompt.queries                                            [1, Q, dim]
     image_prompt.proj_in.{weight,bias}                              [dim, clip_dim], [dim]
     image_prompt.blocks.N.attn.{norm_tokens,norm_queries}.{weight,bias}
     image_prompt.blocks.N.attn.{to_q,to_kv,to_out}.weight
     image_prompt.blocks.N.ff.norm.{weight,bias}, .ff.fc1.weight, .ff.fc2.weight
     image_prompt.proj_out.{weight,bias}, image_prompt.norm_out.{weight,bias}
     attn2.J.{to_k_ip,to_v_ip}.weight        J = 0, 1, ... the UNet's cross-attentions in standard order

2. The public SD1.5 image-prompt layout with a perceiver/QFormer projector ("plus" checkpoints)::

     image_proj.latents, image_proj.proj_in.*, image_proj.proj_out.*, image_proj.norm_out.*
     image_proj.layers.N.0.{norm1,norm2}.*, .0.to_q.weight, .0.to_kv.weight, .0.to_out.weight
     image_proj.layers.N.1.0.* (LayerNorm), .1.1.weight, .1.3.weight (feed-forward)
     ip_adapter.K.{to_k_ip,to_v_ip}.weight    K = 2*J + 1 (attention processors in diffusers order,
                                              the self-attentions taking the even numbers)

   Its attention heads are not stored: dim_head = 64 is the convention of those checkpoints, so
   heads = dim / 64 (or 1 where dim < 64). Its keys/values include the queries (kv_with_queries).

Number of queries, depth, widths and layer count come from the shapes. Anything missing, extra or
of an inconsistent shape raises one ValueError that lists every offending key.
"""
from __future__ import annotations

import re

import torch

from .errors import input_error
from .image_prompt_encoder import EncoderConfig, ImagePromptAdapter

FORMAT_VERSION = 1
OWN = "image_prompt."
PUBLIC_PROJ = "image_proj."
PUBLIC_LAYERS = "ip_adapter."
PUBLIC_DIM_HEAD = 64

_OWN_BLOCK = {  # own block suffix -> public block suffix
    "attn.norm_tokens.weight": "0.norm1.weight", "attn.norm_tokens.bias": "0.norm1.bias",
    "attn.norm_queries.weight": "0.norm2.weight", "attn.norm_queries.bias": "0.norm2.bias",
    "attn.to_q.weight": "0.to_q.weight", "attn.to_kv.weight": "0.to_kv.weight",
    "attn.to_out.weight": "0.to_out.weight",
    "ff.norm.weight": "1.0.weight", "ff.norm.bias": "1.0.bias",
    "ff.fc1.weight": "1.1.weight", "ff.fc2.weight": "1.3.weight",
}
_OWN_TOP = {"queries": "latents", "proj_in.weight": "proj_in.weight", "proj_in.bias": "proj_in.bias",
            "proj_out.weight": "proj_out.weight", "proj_out.bias": "proj_out.bias",
            "norm_out.weight": "norm_out.weight", "norm_out.bias": "norm_out.bias"}
_META = ("format_version", "heads", "kv_with_queries")


def detect_layout(sd: dict) -> str:
    keys = list(sd)
    if any(k.startswith(OWN) for k in keys):
        return "dragfusion"
    if any(k.startswith(PUBLIC_PROJ) for k in keys) or any(k.startswith(PUBLIC_LAYERS) for k in keys):
        return "public"
    return "unknown"


def _fmt_keys(keys, limit: int = 24) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f" ... and {len(keys) - limit} more" if len(keys) > limit else "")


def _public_to_own(sd: dict) -> tuple[dict, list[str]]:
    """Rename public keys to the pack's; returns (own state dict without meta, unknown keys)."""
    out, unknown = {}, []
    rev_top = {v: k for k, v in _OWN_TOP.items()}
    rev_block = {v: k for k, v in _OWN_BLOCK.items()}
    for key, t in sd.items():
        if key.startswith(PUBLIC_PROJ):
            rest = key[len(PUBLIC_PROJ):]
            if rest in rev_top:
                out[OWN + rev_top[rest]] = t
                continue
            m = re.fullmatch(r"layers\.(\d+)\.(.+)", rest)
            if m and m.group(2) in rev_block:
                out[f"{OWN}blocks.{m.group(1)}.{rev_block[m.group(2)]}"] = t
                continue
        elif key.startswith(PUBLIC_LAYERS):
            m = re.fullmatch(r"ip_adapter\.(\d+)\.(to_k_ip|to_v_ip)\.weight", key)
            if m and int(m.group(1)) % 2 == 1:
                out[f"attn2.{(int(m.group(1)) - 1) // 2}.{m.group(2)}.weight"] = t
                continue
        unknown.append(key)
    return out, unknown


def _indices(keys, pattern: str) -> list[int]:
    found = {int(m.group(1)) for k in keys if (m := re.fullmatch(pattern, k))}
    return sorted(found)


def _infer_config(sd: dict, heads: int | None, kv_with_queries: bool, node: str, input_name: str, rename):
    q = sd.get(OWN + "queries")
    w_in = sd.get(OWN + "proj_in.weight")
    w_out = sd.get(OWN + "proj_out.weight")
    missing = [k for k, t in ((OWN + "queries", q), (OWN + "proj_in.weight", w_in), (OWN + "proj_out.weight", w_out)) if t is None]
    if missing:
        raise input_error(node, input_name, "not a complete image-prompt weights file: missing keys "
                          + _fmt_keys(rename("encoder." + k[len(OWN):]) for k in missing))
    if q.ndim != 3 or q.shape[0] != 1 or w_in.ndim != 2 or w_out.ndim != 2:
        raise input_error(node, input_name, f"queries {tuple(q.shape)} must be [1, queries, dim]; proj_in "
                          f"{tuple(w_in.shape)} and proj_out {tuple(w_out.shape)} must be matrices")
    dim = q.shape[2]
    depth_idx = _indices(sd, re.escape(OWN) + r"blocks\.(\d+)\..+")
    depth = len(depth_idx)
    if depth == 0 or depth_idx != list(range(depth)):
        raise input_error(node, input_name, f"QFormer blocks must be numbered 0..N-1, found {depth_idx}")
    fc1 = sd.get(f"{OWN}blocks.0.ff.fc1.weight")
    ff_mult = max(1, fc1.shape[0] // dim) if fc1 is not None and fc1.ndim == 2 else 4
    if heads is None:
        heads = max(1, dim // PUBLIC_DIM_HEAD) if dim % PUBLIC_DIM_HEAD == 0 else 1
    cfg = EncoderConfig(clip_dim=w_in.shape[1], dim=dim, depth=depth, heads=int(heads), num_queries=q.shape[1],
                        out_dim=w_out.shape[0], ff_mult=ff_mult, kv_with_queries=bool(kv_with_queries))
    try:
        cfg.check()
    except ValueError as e:
        raise input_error(node, input_name, str(e)) from None
    return cfg


def adapter_from_state_dict(sd: dict, node: str = "Image Prompt Encoder", input_name: str = "weights") -> ImagePromptAdapter:
    """Build an ImagePromptAdapter (float32, CPU) from either layout; every problem -> ValueError listing keys."""
    if not isinstance(sd, dict) or not sd:
        raise input_error(node, input_name, "the weights file holds no tensors")
    bad_type = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad_type:
        raise input_error(node, input_name, f"entries that are not tensors: {_fmt_keys(bad_type)}")
    layout = detect_layout(sd)
    if layout == "unknown":
        raise input_error(node, input_name, "unrecognised key layout: expected the pack's 'image_prompt.*' + "
                          "'attn2.J.to_k_ip/to_v_ip' keys or a public perceiver checkpoint's 'image_proj.*' + "
                          f"'ip_adapter.K.to_k_ip/to_v_ip' keys; found {_fmt_keys(sd)}")
    if layout == "public":
        own, unknown = _public_to_own(sd)
        if unknown:
            hint = ""
            if any(k.startswith(PUBLIC_PROJ + "proj.") or k == PUBLIC_PROJ + "norm.weight" for k in unknown):
                hint = " (this looks like a linear-projection image-prompt checkpoint; only perceiver/QFormer projectors are supported)"
            raise input_error(node, input_name, f"unexpected keys for the public perceiver layout{hint}: {_fmt_keys(unknown)}")
        heads, kvq = None, True
    else:
        own = dict(sd)
        meta = {}
        for name in _META:
            t = own.pop(OWN + "meta." + name, None)
            meta[name] = None if t is None else int(t.reshape(-1)[0].item())
        absent = [OWN + "meta." + n for n, v in meta.items() if v is None]
        if absent:
            raise input_error(node, input_name, f"missing keys {_fmt_keys(absent)}")
        if meta["format_version"] != FORMAT_VERSION:
            raise input_error(node, input_name, f"format_version {meta['format_version']} is not supported (expected {FORMAT_VERSION})")
        heads, kvq = meta["heads"], bool(meta["kv_with_queries"])
        stray = [k for k in own if not (k.startswith(OWN) or k.startswith("attn2."))]
        if stray:
            raise input_error(node, input_name, f"unexpected keys: {_fmt_keys(stray)}")

    rename = _public_name if layout == "public" else _own_name
    cfg = _infer_config(own, heads, kvq, node, input_name, rename)
    layer_idx = _indices(own, r"attn2\.(\d+)\.to_[kv]_ip\.weight")
    if not layer_idx:
        raise input_error(node, input_name, "no cross-attention projections (to_k_ip / to_v_ip) in the file")
    n_layers = layer_idx[-1] + 1
    dims = []
    for j in range(n_layers):
        t = own.get(f"attn2.{j}.to_k_ip.weight", own.get(f"attn2.{j}.to_v_ip.weight"))
        dims.append(t.shape[0] if t is not None and t.ndim == 2 else 1)
    with torch.device("meta"):  # shapes only: the file's tensors become the parameters below
        adapter = ImagePromptAdapter(cfg, dims)
    expected = adapter.state_dict()
    target = {}
    for k, t in own.items():
        if k.startswith(OWN):
            target["encoder." + k[len(OWN):]] = t
        else:
            target["layers." + k[len("attn2."):]] = t
    missing = [k for k in expected if k not in target]
    unexpected = [k for k in target if k not in expected]
    wrong = [f"{k} {tuple(target[k].shape)} (expected {tuple(v.shape)})" for k, v in expected.items()
             if k in target and tuple(target[k].shape) != tuple(v.shape)]
    problems = []
    if missing:
        problems.append("missing keys " + _fmt_keys(rename(k) for k in missing))
    if unexpected:
        problems.append("unexpected keys " + _fmt_keys(rename(k) for k in unexpected))
    if wrong:
        problems.append("wrong shapes " + _fmt_keys(rename(k.split(" ")[0]) + " " + k.split(" ", 1)[1] for k in wrong))
    if problems:
        raise input_error(node, input_name, "; ".join(problems))
    nonfinite = [k for k, t in target.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if nonfinite:
        raise input_error(node, input_name, f"tensors with NaN or inf: {_fmt_keys(rename(k) for k in nonfinite)}")
    adapter.load_state_dict({k: v.to(torch.float32, copy=True) for k, v in target.items()}, assign=True)
    return adapter.eval()


def _own_name(module_key: str) -> str:
    if module_key.startswith("encoder."):
        return OWN + module_key[len("encoder."):]
    return "attn2." + module_key[len("layers."):]


def _public_name(module_key: str) -> str:
    own = _own_name(module_key)
    if own.startswith("attn2."):
        j, rest = own[len("attn2."):].split(".", 1)
        return f"{PUBLIC_LAYERS}{2 * int(j) + 1}.{rest}"
    rest = own[len(OWN):]
    if rest in _OWN_TOP:
        return PUBLIC_PROJ + _OWN_TOP[rest]
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", rest)
    if m and m.group(2) in _OWN_BLOCK:
        return f"{PUBLIC_PROJ}layers.{m.group(1)}.{_OWN_BLOCK[m.group(2)]}"
    return own


def adapter_state_dict(adapter: ImagePromptAdapter, layout: str = "dragfusion") -> dict[str, torch.Tensor]:
    """The adapter's weights as a flat state dict in the pack's layout or the public one (contiguous, CPU)."""
    if layout not in ("dragfusion", "public"):
        raise ValueError(f"layout must be 'dragfusion' or 'public', got {layout!r}")
    if layout == "public" and not adapter.cfg.kv_with_queries:
        raise ValueError("the public perceiver layout implies kv_with_queries=True; this adapter has False")
    rename = _public_name if layout == "public" else _own_name
    sd = {rename(k): v.detach().to("cpu").contiguous() for k, v in adapter.state_dict().items()}
    if layout == "dragfusion":
        cfg = adapter.cfg
        sd[OWN + "meta.format_version"] = torch.tensor(FORMAT_VERSION, dtype=torch.int64)
        sd[OWN + "meta.heads"] = torch.tensor(cfg.heads, dtype=torch.int64)
        sd[OWN + "meta.kv_with_queries"] = torch.tensor(int(cfg.kv_with_queries), dtype=torch.int64)
    return sd
