"""Which models the pack's nodes accept, decided from the model itself (ComfyUI's detection of the UNet
from its weights, never a file name), and what the layer presets mean on each architecture.

Families (attention_patch.comfy_host.model_family): SD1.5, SD2.x and SDXL (with SSD-1B / Vega / KOALA,
which ComfyUI loads as SDXL). Prediction: epsilon or v (SD2.x-768, v-prediction fine-tunes), on
ComfyUI's discrete schedule (ModelSamplingDiscrete, LCM included). The DDIM inversion and every guidance
formula of the pack work in ComfyUI's sigma space on the denoised prediction (eps = (x - denoised) / sigma),
which ComfyUI computes for either parameterisation, so v-prediction needs no formula of its own.

Where each architecture keeps its self-attention (levels = 2x downsamplings from the latent grid):

    SD1.5, SD2.x   levels 0, 1, 2 (latent grid, /2, /4); the encoder's deepest level has none
    SDXL           levels 1 and 2 only (latent /2 and /4); there is no attention on the latent grid

so a preset names a grid relative to the finest grid that has attention (finest_level below).
"""
from __future__ import annotations

from ..attention_patch import comfy_host as host
from ..guidance.errors import input_error

SUPPORTED = ("SD1.5, SD2.x (512 epsilon and 768 v-prediction) and SDXL-family checkpoints (SDXL, SSD-1B, Vega, "
             "KOALA) and their fine-tunes, with epsilon or v-prediction on the discrete schedule (LCM / LCM-LoRA "
             "included: ModelSamplingDiscrete 'lcm')")
AUTO = "auto"
# the capture layers 'auto' stands for, per family (measured on SD1.5; SDXL: the decoder only, to stay within
# 16 MB per step at 1024x1024, where every layer of the finest grid would take 26 MB)
AUTO_PRESET = {"SD1.5": "latent resolution", "SD2.x": "latent resolution", "SDXL": "decoder at latent resolution"}


def check_model(model, node: str, input_name: str = "model") -> str:
    """The model's family, or a ValueError naming ``node`` and what is supported."""
    unet = getattr(getattr(model, "model", None), "diffusion_model", None)
    family = host.model_family(model)
    try:
        sampling = model.get_model_object("model_sampling")
    except AttributeError:
        sampling = None
    prediction_ok = (isinstance(sampling, host.ModelSamplingDiscrete)
                     and isinstance(sampling, (host.EPS, host.V_PREDICTION))
                     and not isinstance(sampling, (host.X0, host.CONST)))
    if family is None or not isinstance(unet, host.UNetModel) or not prediction_ok:
        config = type(getattr(getattr(model, "model", None), "model_config", None)).__name__
        what = (f"{config} model ({family or 'not a supported family'}), {getattr(unet, 'in_channels', '?')} input "
                f"channels, {prediction_name(sampling)}")
        raise input_error(node, input_name, f"this model is not supported ({what}); supported are {SUPPORTED}")
    return family


def prediction_name(sampling) -> str:
    """What the model predicts, in words (ComfyUI composes model_sampling classes, so read the mixins)."""
    for kind, name in ((host.X0, "x0 prediction"), (host.CONST, "flow (CONST) prediction"),
                       (host.V_PREDICTION, "v-prediction"), (host.EPS, "epsilon prediction")):
        if isinstance(sampling, kind):
            schedule = "discrete" if isinstance(sampling, host.ModelSamplingDiscrete) else type(sampling).__name__
            return f"{name} on the {schedule} schedule"
    return f"{type(sampling).__name__} sampling"


def finest_level(available) -> int:
    """The finest token grid that has self-attention: 0 (the latent grid) on SD1.5 / SD2.x, 1 on SDXL."""
    return min((lv for _, lv in available), default=0)


def resolve_preset(preset: str, family: str) -> str:
    return AUTO_PRESET.get(family, "latent resolution") if preset == AUTO else preset
