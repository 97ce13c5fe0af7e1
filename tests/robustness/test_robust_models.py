"""In-process (the real ComfyUI imported): every pack node that takes a MODEL leaves the model it was
given exactly as it was -- after a normal run and after a run cancelled mid-way with ComfyUI's own
interrupt -- and a run after a cancel gives bit-identical results."""
import hashlib

import pytest
import torch

import harness
import robust_files as rf

TOKENS = 32  # CLIP width of the test image-prompt weights (robust_files.CLIP_DIM)
POINTS = '{"version": 1, "width": 64, "height": 64, "pairs": [{"handle": [24, 24], "target": [40, 28]}]}'


def canon(x, depth=0):
    if depth > 10:
        return "..."
    if isinstance(x, dict):
        return {repr(k): canon(v, depth + 1) for k, v in x.items()}
    if isinstance(x, (list, tuple, set)):
        return [canon(v, depth + 1) for v in x]
    if torch.is_tensor(x):
        return ("tensor", tuple(x.shape), str(x.dtype), x.data_ptr())
    if callable(x):
        return ("callable", getattr(x, "__qualname__", type(x).__qualname__), id(x))
    return repr(x)[:200]


def snapshot(mp) -> dict:
    """Everything a node could leave behind on a ModelPatcher and its model."""
    h = hashlib.sha256()
    for k, v in mp.model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    hooks = [(n, len(m._forward_hooks), len(m._forward_pre_hooks)) for n, m in mp.model.named_modules()
             if m._forward_hooks or m._forward_pre_hooks]
    return {
        "model_options": canon(mp.model_options),
        "patches": canon(mp.patches), "patches_uuid": str(mp.patches_uuid),
        "object_patches": canon(mp.object_patches),
        "wrappers": canon(getattr(mp, "wrappers", None)), "callbacks": canon(getattr(mp, "callbacks", None)),
        "additional_models": canon(getattr(mp, "additional_models", None)),
        "attachments": canon(getattr(mp, "attachments", None)), "injections": canon(getattr(mp, "injections", None)),
        "hook_patches": canon(getattr(mp, "hook_patches", None)),
        "module_hooks": hooks,
        "unet_class": type(mp.model.diffusion_model).__qualname__,
        "state_dict_sha256": h.hexdigest(),
    }


def diff(a, b):
    return {k: (str(a[k])[:400], str(b[k])[:400]) for k in a if a[k] != b[k]}


@pytest.fixture(scope="module")
def kit(host, robust_files):
    """Tiny checkpoint, a 64 px latent, conditioning, points, an image prompt, a capture and an inversion."""
    import folder_paths
    from comfy.clip_vision import Output
    folder_paths.get_filename_list("checkpoints")  # refresh the cache: the test files were just written
    model, clip, vae = host.CheckpointLoaderSimple().load_checkpoint(harness.TINY_CKPT)[:3]
    torch.manual_seed(0)
    image = torch.rand(1, 64, 64, 3)
    latent = {"samples": vae.encode(image[:, :, :, :3])}
    cond = host.CLIPTextEncode().encode(clip, "a photo of an animal")[0]
    points = harness.run_node("DragFusionPointsJSON", image=image, points_json=POINTS).result[0]
    tokens = Output()
    tokens["penultimate_hidden_states"] = torch.randn(1, 257, TOKENS)
    ip = harness.run_node("DragFusionImagePromptEncoder", clip_vision_output=tokens, weights=rf.GOOD_IP).result[0]
    k = dict(model=model, latent=latent, cond=cond, points=points, image_prompt=ip)
    k["capture_latent"], k["capture"] = invert(k, model)
    k["inversion"], k["z_T"], k["sigmas"] = pni_invert(k, model)
    return k


def invert(k, model):
    return harness.run_node("DragFusionInvertCapture", model=model, latent=k["latent"], steps=4, edit_step=1,
                            scheduler="simple", cfg=1.0, layers="latent resolution", custom_layers="",
                            capture_steps="all", capture_values=True, positive=k["cond"], points=k["points"]).result


def pni_invert(k, model):
    return harness.run_node("DragFusionPNIInvert", model=model, latent=k["latent"], source=k["cond"], steps=3, cfg=5.0,
                            lam=0.02, prox="L1", eta=0.1, guidance_until=3, scheduler="ddim_uniform").result


def ksample(host, model, k, latent, steps=4, start=1):
    return host.KSamplerAdvanced().sample(model, "disable", 0, steps, 1.0, "euler", "simple", k["cond"], k["cond"],
                                          latent, start, 10000, "disable")[0]["samples"]


def custom_sample(guider, k):
    noise = harness.run_node("DisableNoise").result[0]
    sampler = harness.run_node("KSamplerSelect", sampler_name="euler").result[0]
    return harness.run_node("SamplerCustomAdvanced", noise=noise, guider=guider, sampler=sampler, sigmas=k["sigmas"],
                            latent_image=k["z_T"]).result[0]["samples"]


def dual_inputs(k, model):
    return dict(model=model, inversion=k["inversion"], target=k["cond"], task="drag", w_edit=4.0, w_share=6.0,
                energy_scale=0.25, guidance_fraction=0.6, kv_replace=True, kv_layers="decoder", kv_mode="replace",
                kv_fraction=1.0, points=k["points"], seed=0)


# node id -> run(host, kit, model) -> a tensor (the result that later runs must reproduce exactly)
RUNNERS = {
    "DragFusionInvertCapture": lambda host, k, m: invert(k, m)[0]["samples"],
    "DragFusionKVConsistency": lambda host, k, m: ksample(host, harness.run_node(
        "DragFusionKVConsistency", model=m, capture=k["capture"], enabled=True, strength=1.0).result[0], k, k["capture_latent"]),
    "DragFusionPNIInvert": lambda host, k, m: pni_invert(k, m)[1]["samples"],
    "DragFusionPNIGuider": lambda host, k, m: custom_sample(harness.run_node(
        "DragFusionPNIGuider", model=m, inversion=k["inversion"], target=k["cond"]).result[0], k),
    "DragFusionApplyImagePrompt": lambda host, k, m: ksample(host, harness.run_node(
        "DragFusionApplyImagePrompt", model=m, image_prompt=k["image_prompt"], gamma=1.0, block_weights="").result[0],
        k, k["latent"], steps=2, start=0),
    "DragFusionDualBranchGuider": lambda host, k, m: custom_sample(harness.run_node(
        "DragFusionDualBranchGuider", **dual_inputs(k, m)).result[0], k),
    "DragFusionDualBranchGuidedSampler": lambda host, k, m: harness.run_node(
        "DragFusionDualBranchGuidedSampler", sampler_name="euler", **dual_inputs(k, m)).result[0]["samples"],
}


def model_nodes(host):
    out = []
    for n in harness.pack_node_ids(host):
        spec = host.NODE_CLASS_MAPPINGS[n].INPUT_TYPES()
        types = [v[0] for section in ("required", "optional") for v in spec.get(section, {}).values()]
        if "MODEL" in types:
            out.append(n)
    return out


def test_every_model_node_is_covered(host):
    assert sorted(model_nodes(host)) == sorted(RUNNERS), "add a runner for the new MODEL-taking node"


class InterruptAfter:
    """A ComfyUI progress hook that raises ComfyUI's own interrupt after ``n`` progress updates."""

    def __init__(self, n=1):
        self.n, self.seen = n, 0

    def __call__(self, *args, **kw):
        import comfy.model_management
        self.seen += 1
        if self.seen == self.n:
            comfy.model_management.interrupt_current_processing(True)

    def __enter__(self):
        import comfy.utils
        comfy.utils.set_progress_bar_global_hook(self)
        return self

    def __exit__(self, *exc):
        import comfy.model_management
        import comfy.utils
        comfy.utils.set_progress_bar_global_hook(None)
        comfy.model_management.interrupt_current_processing(False)


@pytest.mark.parametrize("node", sorted(RUNNERS))
def test_model_passed_in_is_never_modified_even_when_cancelled(host, kit, node):
    import comfy.model_management
    model = kit["model"]
    before = snapshot(model)
    with torch.inference_mode():      # as the server's executor runs nodes
        try:
            clean = RUNNERS[node](host, kit, model).clone()
            clean_error = None
        except Exception as e:        # noqa: BLE001 -- the model must stay untouched even then
            clean, clean_error = None, e
    assert not diff(before, snapshot(model)), f"{node} changed the model it was given: {diff(before, snapshot(model))}"
    if clean_error is not None:
        pytest.fail(f"{node} failed on good input under inference mode: {type(clean_error).__name__}: {clean_error}")

    with InterruptAfter(1) as hook, torch.inference_mode():
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            RUNNERS[node](host, kit, model)
    assert hook.seen >= 1
    assert not diff(before, snapshot(model)), f"cancelled {node} left a patch: {diff(before, snapshot(model))}"

    with torch.inference_mode():
        again = RUNNERS[node](host, kit, model)
    assert torch.equal(again, clean), f"{node}: the run after a cancel differs from the clean run"
    assert not diff(before, snapshot(model))


def test_snapshot_sees_every_kind_of_patch(host, kit):
    """Control: the comparison above would notice each kind of change a node could leave behind."""
    import comfy.patcher_extension
    base = kit["model"].clone()
    before = snapshot(base)
    changes = {
        "attn1_patch": lambda m: m.set_model_attn1_patch(lambda q, k, v, extra_options: (q, k, v)),
        "attn1_replace": lambda m: m.set_model_attn1_replace(lambda q, k, v, extra_options: q, "output", 0, 0),
        "object_patch": lambda m: m.add_object_patch("diffusion_model.out", torch.nn.Identity()),
        "weight_patch": lambda m: m.add_patches({next(iter(m.model.state_dict())): (torch.zeros(1),)}, 1.0),
        "wrapper": lambda m: m.add_wrapper(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, lambda executor, *a, **k: executor(*a, **k)),
        "callback": lambda m: m.add_callback(comfy.patcher_extension.CallbacksMP.ON_PRE_RUN, lambda *a: None),
        "unet_function_wrapper": lambda m: m.set_model_unet_function_wrapper(lambda f, args: f(args["input"], args["timestep"], **args["c"])),
    }
    for name, change in changes.items():
        m = base.clone()
        change(m)
        assert diff(before, snapshot(m)), f"the snapshot misses a {name}"
    hooked = kit["model"].model.diffusion_model.out
    h = hooked.register_forward_hook(lambda *a: None)
    try:
        assert diff(before, snapshot(kit["model"]))
    finally:
        h.remove()
    assert not diff(before, snapshot(kit["model"]))
