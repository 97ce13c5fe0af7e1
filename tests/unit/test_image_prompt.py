"""Image prompt encoder, Eq. 11 and the weights loader, on plain tensors (no ComfyUI)."""
import math
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from dragfusion.guidance.errors import input_error  # noqa: F401  (the error shape every check uses)
from dragfusion.guidance.image_prompt_encoder import (EncoderConfig, ImagePromptAdapter, ImagePromptEncoder,
                                                      count_parameters, decoupled_attention)
from dragfusion.guidance.image_prompt_tokens import ImagePrompt
from dragfusion.guidance.image_prompt_weights import adapter_from_state_dict, adapter_state_dict, detect_layout

SD15_LAYER_DIMS = [320, 320, 640, 640, 1280, 1280] + [1280] * 3 + [640] * 3 + [320] * 3 + [1280]


def naive_attention(q, k, v, heads):
    """softmax(Q K^T / sqrt(d)) V written out per head, in float64."""
    b, n, inner = q.shape
    d = inner // heads
    out = torch.zeros(b, n, inner, dtype=torch.float64)
    for h in range(heads):
        sl = slice(h * d, (h + 1) * d)
        qh, kh, vh = q[..., sl].double(), k[..., sl].double(), v[..., sl].double()
        s = qh @ kh.transpose(1, 2) / math.sqrt(d)
        s = s - s.max(dim=-1, keepdim=True).values
        p = s.exp() / s.exp().sum(dim=-1, keepdim=True)
        out[..., sl] = p @ vh
    return out


def small_adapter(queries=16, depth=2, dim=64, clip_dim=48, out_dim=40, kv_with_queries=True, layers=(24, 32, 24), seed=0):
    torch.manual_seed(seed)
    cfg = EncoderConfig(clip_dim=clip_dim, dim=dim, depth=depth, heads=max(1, dim // 64), num_queries=queries,
                        out_dim=out_dim, kv_with_queries=kv_with_queries)
    adapter = ImagePromptAdapter(cfg, list(layers)).eval()
    with torch.no_grad():  # LayerNorms start at (1, 0): perturb so a wrong mapping shows
        for p in adapter.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return adapter


def test_paper_encoder_shapes_64_queries_8_blocks():
    torch.manual_seed(0)
    enc = ImagePromptEncoder(EncoderConfig(clip_dim=1280, dim=768, depth=8, heads=12, num_queries=64, out_dim=768)).eval()
    assert len(enc.blocks) == 8 and enc.queries.shape == (1, 64, 768)
    assert not any("self" in name for name, _ in enc.named_modules())  # QFormer without self-attention
    with torch.no_grad():
        out = enc(torch.randn(2, 257, 1280))
    assert out.shape == (2, 64, 768) and torch.isfinite(out).all()
    n = count_parameters(enc)
    # proj_in + queries + 8 * (2 LN + q + kv + out + LN + ff 4x) + proj_out + norm_out
    per_block = 2 * 2 * 768 + 768 * 768 + 2 * 768 * 768 + 768 * 768 + 2 * 768 + 2 * 4 * 768 * 768
    assert n == 1280 * 768 + 768 + 64 * 768 + 8 * per_block + 768 * 768 + 768 + 2 * 768


def test_queries_attend_only_to_image_tokens_in_paper_variant():
    """Without kv_with_queries a query's output does not depend on the other queries."""
    enc = small_adapter(kv_with_queries=False).encoder
    x = torch.randn(1, 257, 48)
    with torch.no_grad():
        a = enc(x)
        enc.queries[0, 1:] += 1.0
        b = enc(x)
    torch.testing.assert_close(a[:, 0], b[:, 0])
    assert not torch.allclose(a[:, 1:], b[:, 1:])


def test_decoupled_attention_equals_naive_eq11():
    torch.manual_seed(1)
    heads, d = 4, 8
    q = torch.randn(3, 20, heads * d)
    k_t, v_t = torch.randn(3, 77, heads * d), torch.randn(3, 77, heads * d)
    k_i, v_i = torch.randn(3, 64, heads * d), torch.randn(3, 64, heads * d)
    gamma = 0.7
    got = decoupled_attention(q, k_t, v_t, k_i, v_i, heads, gamma)
    want = naive_attention(q, k_t, v_t, heads) + gamma * naive_attention(q, k_i, v_i, heads)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)
    per_row = decoupled_attention(q, k_t, v_t, k_i, v_i, heads, torch.tensor([0.0, 1.0, 2.5]))
    for i, g in enumerate([0.0, 1.0, 2.5]):
        w = naive_attention(q[i:i + 1], k_t[i:i + 1], v_t[i:i + 1], heads) + g * naive_attention(q[i:i + 1], k_i[i:i + 1], v_i[i:i + 1], heads)
        torch.testing.assert_close(per_row[i:i + 1].double(), w, atol=1e-5, rtol=1e-5)


def test_gamma_zero_is_plain_cross_attention():
    torch.manual_seed(2)
    q, k, v = torch.randn(2, 16, 32), torch.randn(2, 77, 32), torch.randn(2, 77, 32)
    ki, vi = torch.randn(2, 64, 32) * 100, torch.randn(2, 64, 32) * 100
    plain = decoupled_attention(q, k, v, ki, vi, 2, 0.0)
    assert torch.equal(plain, decoupled_attention(q, k, v, k[:, :0], v[:, :0], 2, 0.0))
    torch.testing.assert_close(plain.double(), naive_attention(q, k, v, 2), atol=1e-5, rtol=1e-5)


def test_eq11_with_projections_of_encoder_tokens():
    """K'' = c_im to_k_ip^T, V'' = c_im to_v_ip^T from a real adapter layer."""
    adapter = small_adapter()
    with torch.no_grad():
        c_im = adapter.encoder(torch.randn(2, 257, 48))
        (wk, wv) = adapter.kv_weights()[1]
        q, k, v = torch.randn(2, 10, 32), torch.randn(2, 77, 32), torch.randn(2, 77, 32)
        got = decoupled_attention(q, k, v, c_im @ wk.T, c_im @ wv.T, 2, 1.3)
    want = naive_attention(q, k, v, 2) + 1.3 * naive_attention(q, c_im @ wk.T, c_im @ wv.T, 2)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layout", ["dragfusion", "public"])
@pytest.mark.parametrize("queries,depth,dim", [(16, 4, 64), (64, 8, 128), (64, 2, 64)])
def test_loader_round_trip(tmp_path, layout, queries, depth, dim):
    adapter = small_adapter(queries=queries, depth=depth, dim=dim)
    path = os.path.join(tmp_path, "w.safetensors")
    save_file(adapter_state_dict(adapter, layout), path)
    sd = load_file(path)
    assert detect_layout(sd) == layout
    if layout == "public":
        assert "image_proj.latents" in sd and "ip_adapter.1.to_k_ip.weight" in sd and "ip_adapter.5.to_v_ip.weight" in sd
        assert "image_proj.layers.0.1.3.weight" in sd and not any(k.startswith("ip_adapter.0.") for k in sd)
    loaded = adapter_from_state_dict(sd)
    assert loaded.cfg == adapter.cfg
    x = torch.randn(2, 257, 48)
    with torch.no_grad():
        out = loaded.encoder(x)
        assert out.shape == (2, queries, 40)
        assert torch.equal(out, adapter.encoder(x))
    for (a, b), (c, d) in zip(loaded.kv_weights(), adapter.kv_weights()):
        assert torch.equal(a, c) and torch.equal(b, d)


def test_public_layout_sd15_sized_16_query_file_built_by_hand():
    """A hand-written public-layout dict (16 SD1.5 cross-attentions, ip_adapter.1 .. .31)."""
    torch.manual_seed(3)
    dim, clip, out, depth = 64, 1280, 768, 2
    sd = {"image_proj.latents": torch.randn(1, 16, dim), "image_proj.proj_in.weight": torch.randn(dim, clip) * 0.02,
          "image_proj.proj_in.bias": torch.zeros(dim), "image_proj.proj_out.weight": torch.randn(out, dim) * 0.02,
          "image_proj.proj_out.bias": torch.zeros(out), "image_proj.norm_out.weight": torch.ones(out),
          "image_proj.norm_out.bias": torch.zeros(out)}
    for n in range(depth):
        p = f"image_proj.layers.{n}."
        for norm in ("0.norm1", "0.norm2", "1.0"):
            sd[p + norm + ".weight"], sd[p + norm + ".bias"] = torch.ones(dim), torch.zeros(dim)
        sd[p + "0.to_q.weight"] = torch.randn(dim, dim) * 0.05
        sd[p + "0.to_kv.weight"] = torch.randn(2 * dim, dim) * 0.05
        sd[p + "0.to_out.weight"] = torch.randn(dim, dim) * 0.05
        sd[p + "1.1.weight"] = torch.randn(4 * dim, dim) * 0.05
        sd[p + "1.3.weight"] = torch.randn(dim, 4 * dim) * 0.05
    for j, inner in enumerate(SD15_LAYER_DIMS):
        sd[f"ip_adapter.{2 * j + 1}.to_k_ip.weight"] = torch.randn(inner, out) * 0.02
        sd[f"ip_adapter.{2 * j + 1}.to_v_ip.weight"] = torch.randn(inner, out) * 0.02
    adapter = adapter_from_state_dict(sd)
    assert adapter.cfg.num_queries == 16 and adapter.cfg.depth == 2 and adapter.cfg.clip_dim == 1280
    assert [w.shape[0] for w, _ in adapter.kv_weights()] == SD15_LAYER_DIMS
    with torch.no_grad():
        assert adapter.encoder(torch.randn(1, 257, clip)).shape == (1, 16, 768)



def public_plus_state_dict(gen, queries, depth, dim, clip_dim, out_dim, layer_dims, ff_mult=4):
    """A random dict in the public IP-Adapter-plus key layout (Resampler ``image_proj.*`` + ``ip_adapter.K``).

    Every tensor, LayerNorm affines included, is random so that a swapped or misrouted key shows.
    """
    def rnd(*shape, scale=1.0):
        return torch.randn(*shape, generator=gen) * scale

    def norm(prefix, width):
        sd[prefix + ".weight"], sd[prefix + ".bias"] = 1.0 + rnd(width, scale=0.2), rnd(width, scale=0.2)

    sd = {"image_proj.latents": rnd(1, queries, dim, scale=dim ** -0.5),
          "image_proj.proj_in.weight": rnd(dim, clip_dim, scale=clip_dim ** -0.5),
          "image_proj.proj_in.bias": rnd(dim, scale=0.1),
          "image_proj.proj_out.weight": rnd(out_dim, dim, scale=dim ** -0.5),
          "image_proj.proj_out.bias": rnd(out_dim, scale=0.1)}
    norm("image_proj.norm_out", out_dim)
    for n in range(depth):
        p = f"image_proj.layers.{n}."
        norm(p + "0.norm1", dim)
        norm(p + "0.norm2", dim)
        sd[p + "0.to_q.weight"] = rnd(dim, dim, scale=dim ** -0.5)
        sd[p + "0.to_kv.weight"] = rnd(2 * dim, dim, scale=dim ** -0.5)
        sd[p + "0.to_out.weight"] = rnd(dim, dim, scale=dim ** -0.5)
        norm(p + "1.0", dim)
        sd[p + "1.1.weight"] = rnd(ff_mult * dim, dim, scale=dim ** -0.5)
        sd[p + "1.3.weight"] = rnd(dim, ff_mult * dim, scale=(ff_mult * dim) ** -0.5)
    for j, inner in enumerate(layer_dims):  # the cross-attention processors take the odd numbers
        sd[f"ip_adapter.{2 * j + 1}.to_k_ip.weight"] = rnd(inner, out_dim, scale=out_dim ** -0.5)
        sd[f"ip_adapter.{2 * j + 1}.to_v_ip.weight"] = rnd(inner, out_dim, scale=out_dim ** -0.5)
    return sd


def reference_plus_resampler(sd, x, dim_head=64):
    """IP-Adapter-plus image projection ("Resampler", a perceiver) written from the published architecture,
    straight off the state dict: no pack code.

    latents [1, Q, dim] repeated over the batch; x = proj_in(x); per layer
      attention: x' = norm1(x), l' = norm2(latents); q = to_q(l'); k, v = to_kv(concat(x', l') on tokens)
                 chunked in two; per head softmax((q s)(k s)^T) v with s = dim_head^-1/4 (softmax in float);
                 latents += to_out(heads merged)
      feed-forward: latents += W3 GELU(W1 LayerNorm(latents))   (no biases in W1, W3)
    then norm_out(proj_out(latents)).
    """
    f = torch.nn.functional

    def ln(t, prefix):
        return f.layer_norm(t, (t.shape[-1],), sd[prefix + ".weight"], sd[prefix + ".bias"], eps=1e-5)

    def lin(t, key, bias=None):
        out = t @ sd[key].T
        return out if bias is None else out + sd[bias]

    b = x.shape[0]
    latents = sd["image_proj.latents"].repeat(b, 1, 1)
    x = lin(x, "image_proj.proj_in.weight", "image_proj.proj_in.bias")
    depth = len({k.split(".")[2] for k in sd if k.startswith("image_proj.layers.")})
    for n in range(depth):
        p = f"image_proj.layers.{n}."
        xn, ln_lat = ln(x, p + "0.norm1"), ln(latents, p + "0.norm2")
        q = lin(ln_lat, p + "0.to_q.weight")
        k, v = lin(torch.cat([xn, ln_lat], dim=1), p + "0.to_kv.weight").chunk(2, dim=-1)
        inner = q.shape[-1]
        heads = inner // dim_head if inner % dim_head == 0 else 1
        dh = inner // heads

        def split(t):
            return t.reshape(b, t.shape[1], heads, dh).transpose(1, 2)

        s = 1.0 / math.sqrt(math.sqrt(dh))
        w = (split(q) * s) @ (split(k) * s).transpose(-2, -1)
        w = torch.softmax(w.float(), dim=-1).to(w.dtype)
        att = (w @ split(v)).transpose(1, 2).reshape(b, -1, inner)
        latents = latents + lin(att, p + "0.to_out.weight")
        h = f.gelu(lin(ln(latents, p + "1.0"), p + "1.1.weight"))
        latents = latents + lin(h, p + "1.3.weight")
    return ln(lin(latents, "image_proj.proj_out.weight", "image_proj.proj_out.bias"), "image_proj.norm_out")


@pytest.mark.parametrize("queries,depth,dim,clip_dim", [(16, 2, 128, 96), (64, 3, 192, 80), (16, 1, 48, 32)])
def test_public_plus_layout_matches_reference_resampler(queries, depth, dim, clip_dim):
    """Loader + encoder on a public IP-Adapter-plus layout dict == the published Resampler forward."""
    gen = torch.Generator().manual_seed(19 + queries + depth)
    out_dim, layer_dims = 56, [24, 40, 24, 32]
    sd = public_plus_state_dict(gen, queries, depth, dim, clip_dim, out_dim, layer_dims)
    adapter = adapter_from_state_dict({k: v.clone() for k, v in sd.items()})
    heads = dim // 64 if dim % 64 == 0 else 1
    assert adapter.cfg == EncoderConfig(clip_dim=clip_dim, dim=dim, depth=depth, heads=heads, num_queries=queries,
                                        out_dim=out_dim, ff_mult=4, kv_with_queries=True)
    x = torch.randn(2, 23, clip_dim, generator=gen)  # image-encoder hidden states (penultimate layer)
    with torch.no_grad():
        got = adapter.encoder(x)
    want = reference_plus_resampler(sd, x)
    assert got.shape == want.shape == (2, queries, out_dim) and got.dtype == want.dtype == torch.float32
    assert want.std() > 0.5  # norm_out output at unit scale: the tolerance below is tight in relative terms
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    kv = adapter.kv_weights()
    assert len(kv) == len(layer_dims)
    for j, (wk, wv) in enumerate(kv):
        torch.testing.assert_close(wk, sd[f"ip_adapter.{2 * j + 1}.to_k_ip.weight"], rtol=0, atol=0)
        torch.testing.assert_close(wv, sd[f"ip_adapter.{2 * j + 1}.to_v_ip.weight"], rtol=0, atol=0)

def expect_error(sd, *fragments):
    with pytest.raises(ValueError) as e:
        adapter_from_state_dict(sd, "Image Prompt Encoder", "weights")
    msg = str(e.value)
    assert msg.startswith("Image Prompt Encoder: input 'weights':"), msg
    for f in fragments:
        assert f in msg, msg
    return msg


def test_wrong_keys_are_listed():
    good = adapter_state_dict(small_adapter(), "public")
    sd = dict(good)
    del sd["image_proj.layers.1.0.to_kv.weight"], sd["ip_adapter.3.to_v_ip.weight"]
    sd["image_proj.layers.1.0.to_qkv.weight"] = torch.zeros(3)
    expect_error(sd, "image_proj.layers.1.0.to_qkv.weight")
    del sd["image_proj.layers.1.0.to_qkv.weight"]
    expect_error(sd, "missing keys", "image_proj.layers.1.0.to_kv.weight", "ip_adapter.3.to_v_ip.weight")
    sd = dict(good)
    sd["ip_adapter.3.to_k_ip.weight"] = torch.zeros(5, 7)
    expect_error(sd, "wrong shapes", "ip_adapter.3.to_k_ip.weight (5, 7)")
    sd = dict(good)
    sd["ip_adapter.2.to_k_ip.weight"] = torch.zeros(24, 40)  # even index = a self-attention slot
    expect_error(sd, "unexpected keys", "ip_adapter.2.to_k_ip.weight")
    sd = dict(good)
    sd["image_proj.latents"] = torch.full_like(sd["image_proj.latents"], float("nan"))
    expect_error(sd, "NaN", "image_proj.latents")


def test_own_layout_errors():
    good = adapter_state_dict(small_adapter(kv_with_queries=False), "dragfusion")
    sd = dict(good)
    del sd["image_prompt.meta.heads"]
    expect_error(sd, "image_prompt.meta.heads")
    sd = dict(good)
    sd["image_prompt.meta.format_version"] = torch.tensor(99)
    expect_error(sd, "format_version 99")
    sd = dict(good)
    del sd["image_prompt.blocks.1.ff.fc2.weight"]
    sd["extra.thing"] = torch.zeros(1)
    expect_error(sd, "extra.thing")
    expect_error({"model.diffusion_model.x": torch.zeros(1)}, "unrecognised key layout", "model.diffusion_model.x")
    expect_error({}, "no tensors")
    linear = {"image_proj.proj.weight": torch.zeros(4, 4), "image_proj.norm.weight": torch.zeros(4),
              "image_proj.norm.bias": torch.zeros(4), "ip_adapter.1.to_k_ip.weight": torch.zeros(4, 4)}
    expect_error(linear, "linear-projection", "image_proj.proj.weight")


def test_public_export_needs_perceiver_variant():
    with pytest.raises(ValueError, match="kv_with_queries"):
        adapter_state_dict(small_adapter(kv_with_queries=False), "public")


def test_image_prompt_validate_and_concat():
    kv = ((torch.zeros(8, 40), torch.zeros(8, 40)),)
    a = ImagePrompt(torch.randn(1, 16, 40), torch.randn(1, 16, 40), kv_weights=kv).validate()
    b = ImagePrompt(torch.randn(2, 16, 40), torch.randn(2, 16, 40), kv_weights=kv).validate()
    c = a.concat(b)  # documented: self's tokens then other's along the token axis; a batch of 1 broadcasts
    assert c.cond.shape == c.uncond.shape == (2, 32, 40)
    for row in range(2):
        for got, mine, theirs in ((c.cond, a.cond, b.cond), (c.uncond, a.uncond, b.uncond)):
            torch.testing.assert_close(got[row, :16], mine[0], rtol=0, atol=0)
            torch.testing.assert_close(got[row, 16:], theirs[row], rtol=0, atol=0)
    assert c.gamma == a.gamma and c.kv_weights is a.kv_weights
    with pytest.raises(ValueError, match="to_k_ip"):
        ImagePrompt(a.cond, a.uncond, kv_weights=((torch.zeros(8, 39), torch.zeros(8, 39)),)).validate("N", "image_prompt")
    with pytest.raises(ValueError, match="gamma"):
        a.with_gamma(11).validate()
    with pytest.raises(ValueError, match="different weights"):
        a.concat(ImagePrompt(a.cond, a.uncond, kv_weights=((torch.ones(8, 40), torch.ones(8, 40)),)))
