"""Inversion with Attention Capture: DDIM / LCM inversion to the edit step, recording the UNet's
self-attention queries and keys (AttentionDrag, Sec. 3.2-3.3).

The inversion runs through ComfyUI's own sampling machinery: a ``CFGGuider`` (so conditioning,
model loading, patches, hooks and wrappers are ComfyUI's) drives a ``KSAMPLER`` whose function walks
the schedule's sigmas upwards (``guidance.ddim_inversion``). The output LATENT is the latent at
``sigmas[edit_step]`` of ComfyUI's ``steps``-step ``scheduler`` schedule, so KSamplerAdvanced with the
same steps and scheduler, ``start_at_step = edit_step``, ``add_noise = disable`` and the ``euler`` or
``ddim`` sampler resumes from it (and, with no edit, returns the input latent up to the DDIM
inversion error).

Choices the paper leaves open (documented in the tooltips):
- no ``positive``: a zero conditioning (as ConditioningZeroOut) is used; the paper uses no CFG.
- ``cfg`` != 1 without ``negative``: the negative is the zeroed positive.
- the first step starts at sigma 0 and evaluates the model at its smallest trained sigma.
- an input ``noise_mask`` is ignored by the inversion and passed on with the latent.
"""
from __future__ import annotations

import torch
from comfy_api.latest import io


from ..attention_patch.capture import SelfAttentionCapture, grid_at_level, self_attention_layers
from ..guidance.attn_capture import AttnCapture
from ..guidance.ddim_inversion import ddim_invert, inversion_sigmas
from ..guidance.errors import input_error
from .architecture import AUTO, SUPPORTED, check_model, finest_level, resolve_preset
from .types import CATEGORY_ATTENTIONDRAG, AttnCaptureType, DragPointsType
from ..attention_patch import comfy_host as host

NODE = "Inversion with Attention Capture"
PRESETS = [AUTO, "latent resolution", "decoder at latent resolution", "decoder", "all", "custom"]
KV_DRAGDIFFUSION = "decoder, two finest levels"
KV_SAME = "same as layers"
PRECISION_INT8, PRECISION_FP16 = "int8 per channel", "fp16"
PRECISIONS = {PRECISION_INT8: "int8", PRECISION_FP16: "fp16"}
KV_PRESETS = [KV_SAME, KV_DRAGDIFFUSION, "decoder at latent resolution", "decoder", "all", "custom"]
# defaults measured on ShapeDrag-GT (bench/shapedrag/ad_sweep.py, seed 0, 4 scenes per task): KV layers = the capture
# layers: drag MD 2.83 px, inpaint PSNR 22.43 dB, against 7.66 / 22.02 for the decoder's (DragDiffusion) and 7.60 /
# 21.75 without KV; the 'simple' schedule (the LCM grid) 2.83 px against 3.02 ('normal') and 3.11 ('ddim_uniform')
DEFAULT_SCHEDULER = "simple"
MAX_STEPS = 1000


# ------------------------------------------------------------------------------------ checks
def check_latent(latent) -> torch.Tensor:
    samples = latent.get("samples") if isinstance(latent, dict) else None
    if not isinstance(samples, torch.Tensor) or getattr(samples, "is_nested", False) or samples.ndim != 4 or samples.shape[1] != 4:
        shape = tuple(samples.shape) if isinstance(samples, torch.Tensor) and not samples.is_nested else None
        raise input_error(NODE, "latent", f"expected an SD1.5 LATENT of shape [batch, 4, height/8, width/8], got {shape}")
    if samples.shape[0] < 1 or samples.shape[2] < 1 or samples.shape[3] < 1:
        raise input_error(NODE, "latent", f"the latent is empty ({tuple(samples.shape)})")
    if not bool(torch.isfinite(samples).all()):
        raise input_error(NODE, "latent", "the latent holds NaN or infinite values")
    return samples


def check_points(points, latent_hw) -> None:
    h, w = latent_hw
    points.validate(NODE, "points", require_pairs=False)
    if points.width % 8 or points.height % 8:
        raise input_error(NODE, "points", f"the points' image is {points.width}x{points.height}, which is not a multiple of 8; "
                          f"this {w}x{h} latent comes from a {8 * w}x{8 * h} image: scale or crop the image to a multiple of 8 "
                          "before VAE Encode and place the points on that image")
    if (points.width, points.height) != (8 * w, 8 * h):
        raise input_error(NODE, "points", f"the points were placed on a {points.width}x{points.height} image but the latent is "
                          f"{w}x{h} (a {8 * w}x{8 * h} image); the latent must be the image's size / 8")


def select_layers(available, preset: str, custom: str, names=("layers", "custom_layers"), family: str = "SD1.5") -> tuple:
    """available: [(key, level)] in UNet order. Returns the chosen layer keys (``names``: the inputs
    that hold the preset and the custom list, for the error messages). 'latent resolution' is the finest
    grid that has self-attention (the latent grid; latent / 2 on SDXL); 'auto' the family's default
    (architecture.AUTO_PRESET)."""
    keys = [k for k, _ in available]
    finest = finest_level(available)
    preset = resolve_preset(preset, family)
    if preset == "latent resolution":
        chosen = [k for k, lv in available if lv == finest]
    elif preset == "decoder at latent resolution":
        chosen = [k for k, lv in available if lv == finest and k.startswith("output.")]
    elif preset == "decoder":
        chosen = [k for k in keys if k.startswith("output.")]
    elif preset == "all":
        chosen = list(keys)
    elif preset == "custom":
        wanted = [s.strip() for s in (custom or "").replace(";", ",").replace(" ", ",").split(",") if s.strip()]
        if not wanted:
            raise input_error(NODE, names[1], f"empty; list self-attention layers separated by commas, from: {', '.join(keys)}")
        unknown = [n for n in wanted if n not in keys]
        if unknown:
            raise input_error(NODE, names[1], f"unknown layer(s) {unknown}; this model's self-attention layers are: {', '.join(keys)}")
        chosen = [k for k in keys if k in wanted]
    else:
        raise input_error(NODE, names[0], f"unknown preset {preset!r}; choose one of {PRESETS}")
    if not chosen:
        raise input_error(NODE, names[0], f"the preset {preset!r} selects no self-attention layer of this model ({', '.join(keys) or 'none'})")
    return tuple(chosen)


def select_kv_layers(available, preset: str, custom: str, layers: tuple, family: str = "SD1.5") -> tuple:
    """The self-attention layers whose keys/values KV consistency reads. ``KV_DRAGDIFFUSION``: the
    decoder's layers on the finest attention grid and the next coarser one (SD1.5: output blocks 6-11, the
    mutual self-attention of MasaCtrl / DragDiffusion that the paper's KV consistency follows; SDXL: the
    decoder's latent / 2 and / 4 grids)."""
    if preset == KV_DRAGDIFFUSION:
        finest = finest_level(available)
        chosen = tuple(k for k, lv in available if lv <= finest + 1 and k.startswith("output."))
        if not chosen:
            raise input_error(NODE, "kv_layers", f"this model's decoder has no self-attention layer at the two finest levels "
                              f"({', '.join(k for k, _ in available) or 'none'}); choose another preset")
        return chosen
    if preset == KV_SAME:
        return tuple(layers)
    if preset not in KV_PRESETS:
        raise input_error(NODE, "kv_layers", f"unknown preset {preset!r}; choose one of {KV_PRESETS}")
    return select_layers(available, preset, custom, names=("kv_layers", "custom_kv_layers"), family=family)


def parse_capture_steps(text: str, n_inv: int) -> tuple:
    text = (text or "").strip().lower()
    if text in ("", "all"):
        return tuple(range(n_inv))
    out = set()
    for part in text.replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part:
                a, b = (int(p) for p in part.split("-", 1))
                out.update(range(a, b + 1))
            else:
                out.add(int(part))
        except ValueError:
            raise input_error(NODE, "capture_steps", f"{part!r} is not a step number; write 'all' or e.g. '0, 2, 3-4'") from None
    bad = sorted(s for s in out if not (0 <= s < n_inv))
    if bad or not out:
        raise input_error(NODE, "capture_steps", f"steps {bad or '(none)'} are outside the inversion's steps 0..{n_inv - 1} "
                          f"(the inversion makes steps - edit_step = {n_inv} UNet calls)")
    return tuple(sorted(out))


def zero_conditioning(model, like=None, latent_hw=None):
    """A conditioning of zeros in the model's text-embedding shape (SDXL: a zero pooled output and the image
    size as its size conditioning, as CLIPTextEncodeSDXL sets it), or ``like`` with its tensors zeroed."""
    if like is not None:
        out = []
        for t, d in like:
            d = dict(d)
            if d.get("pooled_output") is not None:
                d["pooled_output"] = torch.zeros_like(d["pooled_output"])
            out.append([torch.zeros_like(t), d])
        return out
    ctx = int(model.model.model_config.unet_config.get("context_dim", 768))
    extra = {}
    adm = model.model.model_config.unet_config.get("adm_in_channels")
    if host.model_family(model) == "SDXL" and adm:
        h, w = (8 * int(v) for v in (latent_hw or (128, 128)))
        extra = {"pooled_output": torch.zeros((1, int(adm) - 6 * 256)), "width": w, "height": h, "crop_w": 0,
                 "crop_h": 0, "target_width": w, "target_height": h}
    return [[torch.zeros((1, 77, ctx)), extra]]


# --------------------------------------------------------------------------------- sampling
def _inversion_sampler(model, x, sigmas, extra_args=None, callback=None, disable=None,
                       sigma_min=0.0, capture=None, capture_steps=(), kv=False, record=None, progress=None):
    """KSAMPLER function: DDIM inversion along the ascending ``sigmas``. With ``kv`` the keys/values
    are recorded at every step from 1 on, and one more UNet call on the final latent, at the edit
    step's sigma, records those the first regeneration step reads."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    step_sigmas = record.setdefault("step_sigmas", {})

    def on_step(j, s):
        host.throw_if_interrupted()
        step_sigmas[j] = float(s)
        if capture is not None:
            qk, kv_j = j in capture_steps, kv and j >= 1
            capture.set_step(j if (qk or kv_j) else None, s, qk=qk, kv=kv_j)

    def denoise(xx, s):
        out = model(xx, s * s_in, **extra_args)
        if progress is not None:
            progress.update(1)
        return out

    traj = ddim_invert(denoise, x, sigmas, sigma_min, on_step=on_step)
    if capture is not None and kv:
        host.throw_if_interrupted()
        capture.set_step(len(traj) - 1, qk=False, kv=True)
        denoise(traj[-1], sigmas[-1])          # the edit step's own K/V; the output is not used
    if capture is not None:
        capture.set_step(None)
    record["trajectory"] = traj
    return traj[-1]


def run_inversion(model, latent, steps, edit_step, scheduler=DEFAULT_SCHEDULER, cfg=1.0, positive=None, negative=None,
                  layers=(AUTO, ""), capture_steps="all", capture_values=False, points=None,
                  kv_layers=(KV_SAME, ""), precision=PRECISION_INT8):
    """The node's work; ``layers=None`` runs the same inversion with no capture installed
    (for benchmarks). Returns ``(latent_dict, AttnCapture | None)``."""
    family = check_model(model, NODE)
    samples = check_latent(latent)
    latent_hw = (int(samples.shape[2]), int(samples.shape[3]))
    if not (isinstance(steps, int) and 1 <= steps <= MAX_STEPS):
        raise input_error(NODE, "steps", f"{steps!r} is not a step count in 1..{MAX_STEPS}")
    if not (isinstance(edit_step, int) and 0 <= edit_step < steps):
        raise input_error(NODE, "edit_step", f"{edit_step!r} must be in 0..{steps - 1} (less than steps = {steps}); "
                          "sampling resumes at this step of the schedule")
    if scheduler not in host.SCHEDULER_NAMES:
        raise input_error(NODE, "scheduler", f"unknown scheduler {scheduler!r}; choose one of {host.SCHEDULER_NAMES}")
    if not (cfg > 0):
        raise input_error(NODE, "cfg", f"{cfg} must be > 0 (1.0 = no classifier-free guidance)")
    if points is not None:
        check_points(points, latent_hw)
    sampling = model.get_model_object("model_sampling")
    sigmas = host.calculate_sigmas(sampling, scheduler, steps).detach().to("cpu", torch.float32)
    if len(sigmas) != steps + 1 or float(sigmas[-1]) != 0.0:
        raise input_error(NODE, "scheduler", f"the {scheduler!r} schedule did not give {steps} steps ending at sigma 0")
    if precision not in PRECISIONS:
        raise input_error(NODE, "capture_precision", f"unknown precision {precision!r}; choose one of {list(PRECISIONS)}")
    n_inv = steps - edit_step
    unet = model.model.diffusion_model
    chosen, cap_steps, levels, kv_chosen = None, (), {}, ()
    kv = bool(capture_values) and layers is not None
    if layers is not None:
        available = self_attention_layers(unet)
        chosen = select_layers(available, *layers, family=family)
        cap_steps = parse_capture_steps(capture_steps, n_inv)
        levels = dict(available)
        if kv:
            kv_chosen = select_kv_layers(available, *kv_layers, chosen, family=family)

    m = model.clone()
    capture = None
    if chosen is not None:
        capture = SelfAttentionCapture(chosen, with_v=kv, kv_layers=kv_chosen, precision=PRECISIONS[precision])
        capture.install(m)
    if positive is None:
        positive = zero_conditioning(model, latent_hw=latent_hw)
    if negative is None:
        negative = zero_conditioning(model, positive)

    guider = host.CFGGuider(m)
    guider.set_conds(positive, negative)
    guider.set_cfg(float(cfg))
    record = {}
    progress = host.ProgressBar(n_inv + int(kv))
    sampler = host.KSAMPLER(_inversion_sampler, extra_options=dict(
        sigma_min=float(sampling.sigma_min), capture=capture, capture_steps=cap_steps, kv=kv,
        record=record, progress=progress))
    up = inversion_sigmas(sigmas, edit_step)
    noise = torch.zeros_like(samples, device="cpu")
    with torch.no_grad():  # the executor runs nodes in inference mode; scripts calling this may not
        out = guider.sample(noise, samples, sampler, up, disable_pbar=True, seed=0)
    inter = host.intermediate_device()
    result = dict(latent)
    result["samples"] = out.to(inter)
    if capture is None:
        return result, None

    banks = capture.take()
    trajectory = tuple(t.detach().to(inter, torch.float32) for t in record["trajectory"])
    layer_hw = {k: banks["layer_hw"].get(k, grid_at_level(latent_hw, levels[k])) for k in dict.fromkeys(chosen + kv_chosen)}
    kv_steps = tuple(range(1, n_inv + 1)) if kv else ()
    missing = [(s, k) for s in cap_steps for k in chosen if (s, k) not in banks["q"]]
    missing += [(s, k) for s in kv_steps for k in kv_chosen if (s, k) not in banks["v"]]
    if missing:
        raise RuntimeError(f"{NODE}: the UNet did not run the self-attention of {missing[:4]}; is another patch replacing it?")
    cap = AttnCapture(latent_hw=latent_hw, sigmas=sigmas, edit_step=edit_step, trajectory=trajectory,
                      steps=cap_steps, layers=chosen, layer_hw=layer_hw, q=banks["q"], k=banks["k"], v=banks["v"],
                      step_sigmas=dict(record.get("step_sigmas", {})),
                      scheduler=scheduler, cfg=float(cfg), kv_layers=kv_chosen, kv_steps=kv_steps)
    return result, cap.validate(NODE, "capture")


# -------------------------------------------------------------------------------------- node
class InvertWithAttentionCapture(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DragFusionInvertCapture",
            display_name=NODE,
            category=CATEGORY_ATTENTIONDRAG,
            description=("Deterministic DDIM inversion (or LCM, on a model patched with ModelSamplingDiscrete 'lcm') of "
                         "the latent up to the edit step of the steps-step schedule, recording the queries and keys of "
                         "the UNet's self-attention (AttentionDrag). Resume with KSamplerAdvanced: same steps and "
                         "scheduler, start_at_step = edit_step, add_noise disable, sampler euler or ddim. "
                         f"Supports {SUPPORTED}."),
            inputs=[
                io.Model.Input("model", tooltip=f"The diffusion model. Supported: {SUPPORTED}. It is not modified; the capture is installed on a clone."),
                io.Latent.Input("latent", tooltip="The VAE-encoded image to invert (any batch size). A noise_mask is not used here and is passed on."),
                io.Int.Input("steps", default=10, min=1, max=MAX_STEPS,
                             tooltip="Steps of the whole schedule (the paper: 10). Use the same value in the sampler that resumes."),
                io.Int.Input("edit_step", default=5, min=0, max=MAX_STEPS - 1,
                             tooltip="Invert up to this step of the schedule (the paper: 5); must be less than steps. "
                                     "Resume with start_at_step = edit_step. The inversion makes steps - edit_step UNet calls."),
                io.Combo.Input("scheduler", options=list(host.SCHEDULER_NAMES), default=DEFAULT_SCHEDULER,
                               tooltip="ComfyUI scheduler of the schedule; use the same one when resuming. 'simple' (default) is "
                                       "the LCM grid the paper uses (timesteps 999, 899, ... for 10 steps); 'ddim_uniform' is DDIM's."),
                io.Float.Input("cfg", default=1.0, min=0.01, max=30.0, step=0.1,
                               tooltip="Classifier-free guidance during the inversion; 1.0 = none (as in the paper) and one UNet batch per step."),
                io.Combo.Input("layers", options=PRESETS, default=AUTO,
                               tooltip="Self-attention layers to record. 'auto' (default): SD1.5 / SD2.x 'latent resolution', SDXL "
                                       "'decoder at latent resolution'. 'latent resolution': every layer on the finest attention "
                                       "grid (the latent grid; latent / 2 on SDXL, which has no attention on the latent grid); "
                                       "'decoder at latent resolution': the decoder's layers on that grid; 'decoder': all output "
                                       "blocks; 'all'; 'custom': the list in custom_layers."),
                io.String.Input("custom_layers", default="", optional=True,
                                tooltip="With layers = custom: comma-separated layer keys 'block.number.index', e.g. 'output.9.0, output.10.0' "
                                        "(block and number as in ComfyUI's attn1 patches, index of the transformer block)."),
                io.String.Input("capture_steps", default="all", optional=True,
                                tooltip="Inversion steps to record: 'all' or numbers/ranges like '0, 2-4'. Step j is the j-th UNet call, "
                                        "from the clean latent (j = 0) towards the edit step."),
                io.Boolean.Input("capture_values", default=False, optional=True,
                                 tooltip="Also record the keys and values of the kv_layers for KV consistency during regeneration: "
                                         "at every step a regeneration from edit_step makes, which costs one more UNet call "
                                         "(at the edit step itself)."),
                io.Conditioning.Input("positive", optional=True,
                                      tooltip="Prompt describing the image (optional). Without it a zero conditioning is used."),
                io.Conditioning.Input("negative", optional=True,
                                      tooltip="Negative prompt, used only when cfg != 1; without it the zeroed positive is used."),
                DragPointsType.Input("points", optional=True,
                                     tooltip="Drag points, checked against the latent: they must be placed on the image of 8 x the latent's size, inside it."),
                io.Combo.Input("kv_layers", options=KV_PRESETS, default=KV_SAME, optional=True,
                               tooltip="With capture_values: the self-attention layers whose keys/values KV consistency reads. "
                                       f"'{KV_SAME}' (default, measured best): the capture layers; '{KV_DRAGDIFFUSION}': the "
                                       "decoder's layers on the latent grid and the next coarser one, SD1.5's output blocks 6-11, "
                                       "DragDiffusion's mutual self-attention, which the paper follows; 'custom': the list in "
                                       "custom_kv_layers."),
                io.String.Input("custom_kv_layers", default="", optional=True,
                                tooltip="With kv_layers = custom: comma-separated layer keys 'block.number.index', e.g. 'output.6.0, output.11.0'."),
                io.Combo.Input("capture_precision", options=list(PRECISIONS), default=PRECISION_INT8, optional=True,
                               tooltip=f"How the recorded layer inputs are stored. '{PRECISION_INT8}' (default): a quarter of float32, "
                                       "attention rows within about 1 % of fp16's (6.6 MB per step at 512 on SD1.5's default layers); "
                                       f"'{PRECISION_FP16}': exact to fp16, twice the bytes (13.1 MB per step)."),
            ],
            outputs=[
                io.Latent.Output(display_name="latent", tooltip="The latent at the edit step; resume sampling from it with start_at_step = edit_step."),
                AttnCaptureType.Output(display_name="capture", tooltip="Trajectory, schedule and the recorded self-attention queries/keys (ATTN_CAPTURE)."),
            ],
        )

    @classmethod
    def execute(cls, model, latent, steps=10, edit_step=5, scheduler=DEFAULT_SCHEDULER, cfg=1.0, layers=AUTO,
                custom_layers="", capture_steps="all", capture_values=False, positive=None, negative=None, points=None,
                kv_layers=KV_SAME, custom_kv_layers="", capture_precision=PRECISION_INT8):
        out, cap = run_inversion(model, latent, steps, edit_step, scheduler, cfg, positive, negative,
                                 layers=(layers, custom_layers), capture_steps=capture_steps,
                                 capture_values=capture_values, points=points, kv_layers=(kv_layers, custom_kv_layers),
                                 precision=capture_precision)
        return io.NodeOutput(out, cap)


NODES = [InvertWithAttentionCapture]
