"""AttentionDrag nodes in the real ComfyUI imported in-process.

Part 1 uses a hand-built ATTN_CAPTURE (queries and keys with a known attention structure) so the
nodes' answers are known exactly. Part 2 runs the real capture on the tiny checkpoint.
"""

import pytest
import torch

import harness
from dragfusion.guidance.attn_capture import AttnCapture
from dragfusion.guidance.drag_points import DragPoints

H = W = 12             # latent grid; the image is 96 x 96
LAYER = "input.1.0"
BLOB = [y * W + x for y in range(3, 6) for x in range(2, 5)]   # cells x 2..4, y 3..5


def synthetic_capture(with_v=True, batch=1):
    g = torch.Generator().manual_seed(0)
    n, heads, d = H * W, 2, 8
    q = 0.05 * torch.randn(batch, heads, n, d, generator=g)
    k = 0.05 * torch.randn(batch, heads, n, d, generator=g)
    q[:, :, BLOB, 0] = 6.0
    k[:, :, BLOB, 0] = 6.0
    v = torch.randn(batch, heads, n, d, generator=g)
    sigmas = torch.linspace(14.6, 0.0, 11)
    steps = (0, 2)
    traj = tuple(torch.randn(batch, 4, H, W, generator=g) for _ in range(6))
    bank = lambda t: {(s, LAYER): t.half() for s in steps}  # noqa: E731
    return AttnCapture(latent_hw=(H, W), sigmas=sigmas, edit_step=5, trajectory=traj, steps=steps,
                       layers=(LAYER,), layer_hw={LAYER: (H, W)}, q=bank(q), k=bank(k),
                       v=bank(v) if with_v else {}, step_sigmas={0: 0.03, 2: 1.2}, scheduler="normal")


def pts(pairs, size=W * 8):
    return DragPoints(size, size, tuple(pairs))


HANDLE_PX = (3 * 8 + 4, 4 * 8 + 4)     # centre of cell (3, 4), inside the blob


def blob_latent(batch=1):
    g = torch.Generator().manual_seed(1)
    z = 0.1 * torch.randn(batch, 4, H, W, generator=g)
    z.view(batch, 4, -1)[:, 0, BLOB] = 5.0
    return {"samples": z}


def test_nodes_registered(host):
    ids = harness.pack_node_ids(host)
    for n in ("DragFusionAutoMask", "DragFusionSemanticMove", "DragFusionAttentionInterpolate",
              "DragFusionKVConsistency", "DragFusionSideBySide"):
        assert n in ids
        schema = host.NODE_CLASS_MAPPINGS[n].GET_SCHEMA()
        assert schema.category == "DragFusion/AttentionDrag"
        assert all(i.tooltip for i in schema.inputs), n


def test_automask_finds_the_blob_at_image_size(host):
    cap = synthetic_capture()
    mask, auto = harness.run_node("DragFusionAutoMask", capture=cap, points=pts([(HANDLE_PX, (70, 40))]),
                                  tau=2.0, reference="mean", steps="all", dilation=0).result
    assert mask.shape == (1, H * 8, W * 8) and torch.equal(auto, mask)  # no user mask: both outputs alike
    cells = mask[0, ::8, ::8] > 0.5
    expected = torch.zeros(H, W, dtype=torch.bool)
    expected.view(-1)[BLOB] = True
    assert torch.equal(cells, expected)
    # every cell is a uniform 8x8 block
    assert torch.equal(mask[0], cells.float().repeat_interleave(8, 0).repeat_interleave(8, 1))
    # the paper's literal reference: the handle attends most to the blob incl. itself -> empty
    lit, _ = harness.run_node("DragFusionAutoMask", capture=cap, points=pts([(HANDLE_PX, (70, 40))]),
                              tau=2.0, reference="handle", steps="0", dilation=0).result
    assert lit.sum() == 0
    user = torch.zeros(1, H, W)
    user[0, 4:, :] = 1
    inter, inter_auto = harness.run_node("DragFusionAutoMask", capture=cap, points=pts([(HANDLE_PX, (70, 40))]), tau=2.0,
                                         reference="mean", steps="all", dilation=1, mask=user, mask_mode="intersect").result
    got = inter[0, ::8, ::8] > 0.5
    dil = torch.zeros(H, W, dtype=torch.bool)
    dil[2:7, 1:6] = True
    assert torch.equal(got, dil & (user[0] > 0.5))
    assert torch.equal(inter_auto[0, ::8, ::8] > 0.5, dil)       # the second output: the automatic mask alone
    uni, uni_auto = harness.run_node("DragFusionAutoMask", capture=cap, points=pts([(HANDLE_PX, (70, 40))]), tau=2.0,
                                     reference="mean", steps="all", dilation=1, mask=user, mask_mode="union").result
    assert torch.equal(uni[0, ::8, ::8] > 0.5, dil | (user[0] > 0.5)) and torch.equal(uni_auto, inter_auto)
    rep, rep_auto = harness.run_node("DragFusionAutoMask", capture=cap, points=pts([(HANDLE_PX, (70, 40))]), tau=2.0,
                                     reference="mean", steps="all", dilation=0, mask=user, mask_mode="replace").result
    assert torch.equal(rep[0, ::8, ::8], user[0]) and torch.equal(rep_auto, mask)


def test_automask_errors_name_node_and_input(host):
    cap = synthetic_capture()
    with pytest.raises(ValueError, match=r"AttentionDrag AutoMask: input 'points': .*outside the 96x96 image"):
        harness.run_node("DragFusionAutoMask", capture=cap, points=pts([(HANDLE_PX, (100, 40))]))
    with pytest.raises(ValueError, match=r"AttentionDrag AutoMask: input 'points': the points were placed on a 128x128"):
        harness.run_node("DragFusionAutoMask", capture=cap, points=pts([((10, 10), (40, 40))], size=128))
    with pytest.raises(ValueError, match=r"AttentionDrag AutoMask: input 'steps': step 1 was not captured"):
        harness.run_node("DragFusionAutoMask", capture=cap, points=pts([(HANDLE_PX, (70, 40))]), steps="1")
    with pytest.raises(ValueError, match=r"AttentionDrag AutoMask: input 'mask': the mask is 50x50"):
        harness.run_node("DragFusionAutoMask", capture=cap, points=pts([(HANDLE_PX, (70, 40))]),
                         mask=torch.ones(1, 50, 50))
    with pytest.raises(ValueError, match=r"AttentionDrag AutoMask: input 'capture'"):
        harness.run_node("DragFusionAutoMask", capture="nope", points=pts([(HANDLE_PX, (70, 40))]))


def test_semantic_move_then_interpolate(host):
    cap = synthetic_capture()
    latent = blob_latent()
    z = latent["samples"]
    region = torch.zeros(1, H * 8, W * 8)
    region[0, 8:64, 8:72] = 1                           # cells x 1..8, y 1..7
    points = pts([(HANDLE_PX, (HANDLE_PX[0] + 32, HANDLE_PX[1] + 8))])   # V = (4, 1) cells
    moved, blank = harness.run_node("DragFusionSemanticMove", capture=cap, latent=latent, points=points,
                                    mask=region, steps="all", movement_mode="attention ratio (Eq. 6)").result
    zm = moved["samples"]
    assert "noise_mask" not in moved and zm.shape == z.shape
    bc = blank[0, ::8, ::8] > 0.5
    hot = (zm[0, 0] > 2.5) & ~bc
    ys, xs = hot.nonzero(as_tuple=True)
    assert len(xs) == len(BLOB)
    assert abs(xs.float().mean().item() - 3 - 4) <= 0.5 and abs(ys.float().mean().item() - 4 - 1) <= 0.5
    outside = (region[0, ::8, ::8] < 0.5)[None, None].expand_as(z)
    assert torch.equal(zm[outside], z[outside])
    vacated = {(y, x) for y in range(3, 6) for x in range(2, 5)} - {(y, x) for y in range(4, 7) for x in range(6, 9)}
    assert {tuple(p) for p in bc.nonzero().tolist()} == vacated
    (filled,) = harness.run_node("DragFusionAttentionInterpolate", capture=cap, latent=moved, mask=blank,
                                 fill="attention", mode="drag", steps="all").result
    zf = filled["samples"]
    # brute force Eq. 13 renormalised, from the capture's own rows
    rows = cap.rows(torch.arange(H * W))[0]
    keep = ~bc.reshape(-1)
    flat = zm[0].reshape(4, -1)
    for p in bc.reshape(-1).nonzero()[:, 0].tolist():
        a = rows[p] * keep
        expect = (flat * a).sum(-1) / a.sum()
        assert torch.allclose(zf[0].reshape(4, -1)[:, p], expect, atol=1e-5)
    assert torch.equal(zf[0].reshape(4, -1)[:, keep], flat[:, keep])
    for fill in ("nearest", "zero", "noise"):
        (other,) = harness.run_node("DragFusionAttentionInterpolate", capture=cap, latent=moved, mask=blank,
                                    fill=fill, mode="drag", steps="all", seed=3).result
        assert torch.equal(other["samples"][0].reshape(4, -1)[:, keep], flat[:, keep])
        assert not torch.equal(other["samples"], zf)


def test_semantic_move_errors(host):
    cap = synthetic_capture()
    latent = blob_latent()
    points = pts([(HANDLE_PX, (70, 40))])
    with pytest.raises(ValueError, match=r"AttentionDrag Semantic Move: input 'mask': the mask is empty"):
        harness.run_node("DragFusionSemanticMove", capture=cap, latent=latent, points=points, mask=torch.zeros(1, 96, 96))
    with pytest.raises(ValueError, match=r"AttentionDrag Semantic Move: input 'mask': the mask is 64x96"):
        harness.run_node("DragFusionSemanticMove", capture=cap, latent=latent, points=points, mask=torch.ones(1, 96, 64))
    with pytest.raises(ValueError, match=r"AttentionDrag Semantic Move: input 'points': pair 1: target \(96, 40\) is outside"):
        harness.run_node("DragFusionSemanticMove", capture=cap, latent=latent, points=pts([(HANDLE_PX, (96, 40))]),
                         mask=torch.ones(1, 96, 96))
    with pytest.raises(ValueError, match=r"AttentionDrag Semantic Move: input 'latent': latent of shape"):
        harness.run_node("DragFusionSemanticMove", capture=cap, latent={"samples": torch.zeros(1, 4, 8, 8)},
                         points=points, mask=torch.ones(1, 96, 96))


def test_zero_length_drag_passes_the_latent_through(host):
    """A drag shorter than half a cell moves nothing: no blanks, and interpolation passes through."""
    cap = synthetic_capture()
    latent = blob_latent()
    points = pts([(HANDLE_PX, (HANDLE_PX[0] + 2, HANDLE_PX[1]))])
    moved, blank = harness.run_node("DragFusionSemanticMove", capture=cap, latent=latent, points=points,
                                    mask=torch.ones(1, 96, 96)).result
    assert torch.equal(moved["samples"], latent["samples"]) and blank.sum() == 0
    (out,) = harness.run_node("DragFusionAttentionInterpolate", capture=cap, latent=moved, mask=blank).result
    assert torch.equal(out["samples"], latent["samples"])


def test_inpaint_mode(host):
    cap = synthetic_capture()
    latent = blob_latent()
    with pytest.raises(ValueError, match=r"AttentionDrag Interpolate: input 'mask': inpainting needs a mask"):
        harness.run_node("DragFusionAttentionInterpolate", capture=cap, latent=latent, mask=torch.zeros(1, 96, 96),
                         mode="inpaint")
    with pytest.raises(ValueError, match=r"AttentionDrag Interpolate: input 'mask': the mask covers the whole image"):
        harness.run_node("DragFusionAttentionInterpolate", capture=cap, latent=latent, mask=torch.ones(1, 96, 96),
                         mode="inpaint")
    hole = torch.zeros(1, 96, 96)
    hole[0, 30:33, 50:70] = 1     # touches cells y 3..4, x 6..8
    (out,) = harness.run_node("DragFusionAttentionInterpolate", capture=cap, latent=latent, mask=hole, mode="inpaint").result
    changed = (out["samples"] != latent["samples"]).any(1)[0]
    expected = torch.zeros(H, W, dtype=torch.bool)
    expected[3:5, 6:9] = True
    assert torch.equal(changed, expected)


def test_side_by_side(host):
    orig = torch.rand(1, 96, 96, 3)
    res = torch.rand(1, 48, 48, 3)
    mask = torch.zeros(1, 96, 96)
    mask[0, :10] = 1
    (img,) = harness.run_node("DragFusionSideBySide", original=orig, result=res,
                              points=pts([(HANDLE_PX, (70, 40))]), mask=mask).result
    assert img.shape == (1, 96, 384, 3)
    assert torch.equal(img[0, :, :96], orig[0])
    assert torch.equal(img[0, :, 192:288, 0], mask[0])
    assert not torch.equal(img[0, :, 96:192], orig[0])   # arrows drawn


# ---------------------------------------------------------------- part 2: the real capture, tiny checkpoint
SAMPLE = "dragfusion_data/dragbench-dev/animals/JH_2023-09-14-1820-16"
STEPS, EDIT = 6, 3


def legacy(host, name, **kw):
    cls = host.NODE_CLASS_MAPPINGS[name]
    return getattr(cls(), cls.FUNCTION)(**kw)


@pytest.fixture(scope="module")
def real(host, data_dir):
    harness.ensure_data_link()
    model, clip, vae = legacy(host, "CheckpointLoaderSimple", ckpt_name=harness.TINY_CKPT)[:3]
    (lcm,) = legacy(host, "ModelSamplingDiscrete", model=model, sampling="lcm", zsnr=False)
    image, points, mask, prompt = harness.run_node("DragFusionLoadDragBenchSample", sample=SAMPLE,
                                                   size="fit 128 (multiple of 8)").result
    (latent,) = legacy(host, "VAEEncode", pixels=image, vae=vae)
    (pos,) = legacy(host, "CLIPTextEncode", clip=clip, text=prompt)
    (neg,) = legacy(host, "ConditioningZeroOut", conditioning=pos)
    # 6 steps, edit at 3 (the paper: 10 / 5; the HTTP test runs those) to keep the UNet calls few
    zl, cap = harness.run_node("DragFusionInvertCapture", model=lcm, latent=latent, steps=STEPS, edit_step=EDIT,
                               scheduler="simple", cfg=1.0, capture_values=True, positive=pos, points=points).result

    def resume(m, lat):
        return legacy(host, "KSamplerAdvanced", model=m, add_noise="disable", noise_seed=0, steps=STEPS, cfg=1.0,
                      sampler_name="euler", scheduler="simple", positive=pos, negative=neg, latent_image=lat,
                      start_at_step=EDIT, end_at_step=10000, return_with_leftover_noise="disable")[0]

    return dict(model=lcm, vae=vae, image=image, points=points, mask=mask, pos=pos, zl=zl, cap=cap,
                resume=resume, direct=resume(lcm, zl))


def _denoise(model, x, sigma, cond, extra=None):
    import comfy.model_management
    comfy.model_management.load_models_gpu([model])
    to = dict(model.model_options["transformer_options"])
    s = torch.full((x.shape[0],), float(sigma))
    to["sigmas"] = s
    dev = comfy.model_management.get_torch_device()
    with torch.no_grad():
        return model.model.apply_model(x.to(dev), s.to(dev), c_crossattn=cond.to(dev), transformer_options=to).float().cpu()


def test_ksampler_advanced_resumes_the_inversion_exactly(real):
    """KSamplerAdvanced (add_noise disable, start_at_step = edit_step, euler) == a hand-written DDIM loop
    in sigma space over sigmas[edit_step:], from the inversion's latent: no extra sampler is needed."""
    m, cap = real["model"], real["cap"]
    ms = m.get_model_object("model_sampling")
    import comfy.samplers
    assert torch.allclose(comfy.samplers.calculate_sigmas(ms, "simple", STEPS).float().cpu(), cap.sigmas.float())
    x = m.model.process_latent_in(real["zl"]["samples"].float())
    assert torch.allclose(x, cap.trajectory[-1].float(), atol=1e-5)
    cond = real["pos"][0][0]
    for i in range(cap.edit_step, len(cap.sigmas) - 1):
        s, s2 = float(cap.sigmas[i]), float(cap.sigmas[i + 1])
        den = _denoise(m, x, s, cond)
        x = x + (s2 - s) * (x - den) / s
    expected = m.model.process_latent_out(x)
    assert torch.allclose(real["direct"]["samples"].float(), expected, atol=1e-4, rtol=1e-4)


def test_zero_length_drag_returns_the_inversion_round_trip(real, host):
    pts = real["points"]
    (hx, hy), _ = pts.pairs[0]
    tiny = type(pts)(pts.width, pts.height, (((hx, hy), (hx + 2.0, hy)),))
    moved, blank = harness.run_node("DragFusionSemanticMove", capture=real["cap"], latent=real["zl"], points=tiny,
                                    mask=real["mask"]).result
    assert blank.sum() == 0 and torch.equal(moved["samples"], real["zl"]["samples"])
    (filled,) = harness.run_node("DragFusionAttentionInterpolate", capture=real["cap"], latent=moved, mask=blank).result
    out = real["resume"](real["model"], filled)
    assert torch.equal(out["samples"], real["direct"]["samples"])


def test_kv_consistency_reads_the_saved_keys_and_values(real, host):
    m, cap = real["model"], real["cap"]
    before = repr(m.model_options)
    (kv1,) = harness.run_node("DragFusionKVConsistency", model=m, capture=cap, enabled=True, strength=1.0).result
    (kv0,) = harness.run_node("DragFusionKVConsistency", model=m, capture=cap, enabled=True, strength=0.0).result
    (off,) = harness.run_node("DragFusionKVConsistency", model=m, capture=cap, enabled=False, strength=1.0).result
    assert repr(m.model_options) == before and "patches_replace" not in m.model_options["transformer_options"]
    assert off is m and kv1 is not m
    replaced = kv1.model_options["transformer_options"]["patches_replace"]["attn1"]
    # the KV layers are a choice of their own (default, measured: the capture layers; test_kv_layer_presets: others)
    assert cap.kv_layers == cap.layers == ("input.1.0", "output.0.0", "output.1.0")
    assert set(replaced) == {tuple(int(p) if p.isdigit() else p for p in layer.split(".")) for layer in cap.kv_layers}
    cond = real["pos"][0][0]
    # KV step n - edit_step: the extra UNet call on the latent at the edit step, the first one a regeneration makes
    j = cap.kv_steps[-1]
    assert j == STEPS - EDIT and cap.kv_sigmas()[j] == pytest.approx(float(cap.sigmas[EDIT]))
    s = cap.kv_sigmas()[j]
    x = cap.trajectory[j].float()
    x2 = torch.roll(x, 5, dims=-1)                      # another latent: its own K/V differ from the saved ones
    both, c2 = torch.cat([x, x2]), cond.expand(2, -1, -1)
    ref = _denoise(m, both, s, c2)
    assert torch.equal(_denoise(kv0, both, s, c2), ref)
    out = _denoise(kv1, both, s, c2)
    # the saved K/V of step j are those this very call computed (up to fp16 storage) ...
    same = float((out[:1] - ref[:1]).abs().max())
    # ... and they are what the layer reads: on the other latent the output changes far more
    other = float((out[1:] - ref[1:]).abs().max())
    scale = float(ref.abs().max())
    assert same <= 1e-3 * scale and other >= 20 * same, (same, other, scale)
    bare = type(cap)(**{**cap.__dict__, "kv_layers": (), "kv_steps": (), "v": {}})
    with pytest.raises(ValueError, match=r"AttentionDrag KV Consistency: input 'capture': the capture holds no keys/values"):
        harness.run_node("DragFusionKVConsistency", model=m, capture=bare, enabled=True, strength=1.0)


def _kv_steps_read(model):
    """Wrap the KV cache of a KV-consistent clone: the list of (step, layer) each UNet call reads."""
    patches = model.model_options["transformer_options"]["patches_replace"]["attn1"]
    cache = next(iter(patches.values())).cache
    seen, get = [], cache.get

    def spy(step, layer, *a):
        seen.append((step, layer))
        return get(step, layer, *a)

    cache.get = spy
    return cache, seen


def test_each_regeneration_step_reads_the_keys_and_values_saved_at_its_own_sigma(real, host):
    """The regeneration from edit step 3 of 6 calls the UNet at sigmas[3], [4], [5]: it reads KV steps 3, 2, 1
    (the UNet calls of the inversion on those very latents at those sigmas), each projected once, and the
    cache is empty after the run. Before the fix the first call found no edit-step K/V and silently reused step 2."""
    (kv,) = harness.run_node("DragFusionKVConsistency", model=real["model"], capture=real["cap"], enabled=True,
                             strength=1.0).result
    cache, seen = _kv_steps_read(kv)
    real["resume"](kv, real["zl"])
    layers = real["cap"].kv_layers
    assert seen == [(j, layer) for j in (3, 2, 1) for layer in layers]
    assert cache.projections == 3 * len(layers) and not cache.entries
    # one step's K and V at a time, in the UNet's dtype (float32 on this CPU host), 320 channels per layer
    one_step = sum(2 * real["cap"].layer_hw[l][0] * real["cap"].layer_hw[l][1] * 320 * 4 for l in layers)
    assert cache.peak_nbytes == one_step


def test_kv_regeneration_of_the_unedited_latent_stays_on_the_plain_regeneration(real, host):
    """With no edit, the first regeneration call reads the K/V of the very latent it denoises (the edit step's
    own capture); the later calls those of the inversion latents, which differ from the regenerated ones only by
    the inversion error. Reading the neighbouring step at the edit step instead (the off-by-one this replaced)
    takes the result much further from the plain regeneration."""
    from dragfusion.guidance.projection_bank import ProjectionBank
    cap = real["cap"]

    def regenerate(c):
        (kv,) = harness.run_node("DragFusionKVConsistency", model=real["model"], capture=c, enabled=True, strength=1.0).result
        return real["resume"](kv, real["zl"])["samples"]

    def shifted(bank):       # KV step 3 (the edit step) holds step 2's inputs, as the nearest-sigma lookup read
        inputs = dict(bank.inputs)
        for layer in cap.kv_layers:
            inputs[(3, layer)] = bank.inputs[(2, layer)]
        return ProjectionBank(inputs, bank.projections)

    ref = real["direct"]["samples"]
    err = float((regenerate(cap) - ref).abs().max())
    off_by_one = float((regenerate(type(cap)(**{**cap.__dict__, "k": shifted(cap.k), "v": shifted(cap.v)})) - ref).abs().max())
    moved = float((ref - real["zl"]["samples"]).abs().max())
    print(f"KV regeneration vs plain: {err:.3g}, off by one: {off_by_one:.3g}, latent moved {moved:.3g}")
    assert err <= 0.02 * moved and off_by_one >= 3 * err, (err, off_by_one, moved)


def test_kv_consistency_refuses_a_regeneration_on_another_schedule(real, host):
    (kv,) = harness.run_node("DragFusionKVConsistency", model=real["model"], capture=real["cap"], enabled=True,
                             strength=1.0).result
    with pytest.raises(ValueError, match=r"AttentionDrag KV Consistency: the sampler called the UNet at sigma .* "
                                         r"not a step of the captured regeneration \(6-step simple schedule from step 3"):
        legacy(host, "KSamplerAdvanced", model=kv, add_noise="disable", noise_seed=0, steps=8, cfg=1.0,
               sampler_name="euler", scheduler="simple", positive=real["pos"], negative=real["pos"],
               latent_image=real["zl"], start_at_step=4, end_at_step=10000, return_with_leftover_noise="disable")


def test_kv_layer_presets(real, host):
    lat = {"samples": real["zl"]["samples"]}
    run = lambda **kw: harness.run_node("DragFusionInvertCapture", model=real["model"], latent=lat, steps=3, edit_step=2,  # noqa: E731
                                        scheduler="simple", capture_values=True, **kw).result[1]
    same = run(kv_layers="same as layers", layers="custom", custom_layers="input.1.0")
    assert same.kv_layers == same.layers == ("input.1.0",) and same.kv_steps == (1,)
    assert set(same.v) == {(1, "input.1.0")} and set(same.q) == {(0, "input.1.0")}
    dd = run(kv_layers="decoder, two finest levels", layers="custom", custom_layers="input.1.0")
    assert dd.layers == ("input.1.0",) and dd.kv_layers == ("output.0.0", "output.1.0")     # DragDiffusion's
    assert set(dd.v) == {(1, "output.0.0"), (1, "output.1.0")}
    custom = run(kv_layers="custom", custom_kv_layers="output.1.0")
    assert custom.kv_layers == ("output.1.0",) and set(custom.v) == {(1, "output.1.0")}
    with pytest.raises(ValueError, match=r"Inversion with Attention Capture: input 'custom_kv_layers': unknown layer"):
        run(kv_layers="custom", custom_kv_layers="output.7.0")
    plain = harness.run_node("DragFusionInvertCapture", model=real["model"], latent=lat, steps=3, edit_step=2,
                             scheduler="simple").result[1]
    assert not plain.v and plain.kv_layers == () and plain.kv_steps == ()


def test_drag_edit_on_a_dragbench_image(real, host):
    cap, zl = real["cap"], real["zl"]
    mask, auto = harness.run_node("DragFusionAutoMask", capture=cap, points=real["points"], tau=2.0, reference="mean",
                                  mask=real["mask"], mask_mode="union").result
    assert bool((mask >= auto).all()) and float(mask.sum()) >= float(auto.sum())   # the union holds the automatic mask
    moved, blank = harness.run_node("DragFusionSemanticMove", capture=cap, latent=zl, points=real["points"], mask=mask).result
    (filled,) = harness.run_node("DragFusionAttentionInterpolate", capture=cap, latent=moved, mask=blank).result
    z, zm, zf = zl["samples"], moved["samples"], filled["samples"]
    cells = mask[:, ::8, ::8] > 0.5
    bc = blank[:, ::8, ::8] > 0.5
    assert bc.any() and (bc <= cells).all()                               # blanks are mask cells
    assert not torch.equal(zm, z) and torch.isfinite(zf).all()
    # the handle moved (V = about -14 cells at 128 px): cells left of the handle changed
    (hx, hy), (tx, ty) = real["points"].in_cells(8)[0]
    assert not torch.equal(zm[..., int(hy), int(tx):int(tx) + 2], z[..., int(hy), int(tx):int(tx) + 2])
    assert torch.equal(zf[~bc[:, None].expand_as(zf)], zm[~bc[:, None].expand_as(zm)])
    # regeneration and decoding of this edit run in the HTTP test (tests/http/test_attentiondrag_http.py)
