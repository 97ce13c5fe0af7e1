"""The one module through which the pack reaches ComfyUI internals beyond ``comfy_api.latest``.

Every other module of the pack imports ComfyUI's ``comfy.*``, ``folder_paths``, ``node_helpers`` and
``latent_preview`` only through the names below, so that an upstream change (a renamed function, a
new argument) is absorbed here and nowhere else. ``tests/unit/test_host_boundary.py`` fails when a
module of the pack imports a ComfyUI internal directly.

It lives in ``attention_patch`` because that is the lowest layer of the pack that touches ComfyUI
(``guidance`` is pure torch): the sampling code and the nodes above reach it by importing down.

Hosts tested: ComfyUI 0.3.75 and 0.33.0. What differs between them and is adapted here:

- ``ModelPatcher.prepare_state(timestep)`` became ``prepare_state(timestep, model_options)``
  (ComfyUI 0.3x of 2026; it forwards the call to multi-GPU clones): :func:`prepare_state`.
"""
from __future__ import annotations

import functools
import inspect

import comfy.model_base as _mb
import comfy.model_management as _mm
import comfy.model_sampling as _ms
import comfy.patcher_extension as _pe
import comfy.sample as _sample
import comfy.samplers as _samplers
import comfy.supported_models as _supported
import comfy.utils as _utils
import folder_paths as _folder_paths
import latent_preview as _latent_preview
import node_helpers as _node_helpers
from comfy.ldm.modules import attention as _attention
from comfy.ldm.modules.attention import SpatialTransformer
from comfy.ldm.modules.diffusionmodules.openaimodel import Downsample, UNetModel, Upsample

__all__ = [
    "COMFYUI_VERSION", "SpatialTransformer", "Downsample", "UNetModel", "Upsample",
    "EPS", "V_PREDICTION", "X0", "CONST", "ModelSamplingDiscrete", "SD15", "model_family",
    "intermediate_device", "torch_device", "throw_if_interrupted",
    "ProgressBar", "progress_bar_enabled", "load_safetensors",
    "CFGGuider", "KSAMPLER", "SAMPLER_NAMES", "SCHEDULER_NAMES", "sampler_object", "calculate_sigmas",
    "calc_cond_batch", "get_area_and_mult", "cond_cat", "fix_empty_latent_channels", "prepare_callback",
    "OUTER_SAMPLE", "merge_nested_dicts", "prepare_state", "optimized_attention",
    "input_directory", "models_dir", "folder_names_and_paths", "get_folder_paths", "get_filename_list",
    "get_full_path", "recursive_search", "filter_files_content_types", "exists_annotated_filepath", "pillow",
]


def _host_version() -> str:
    try:
        import comfyui_version
        return str(comfyui_version.__version__)
    except Exception:  # a host tree without the generated version file
        return "unknown"


COMFYUI_VERSION = _host_version()

# -- model classes (isinstance checks) ------------------------------------------------------------
EPS = _ms.EPS
V_PREDICTION = _ms.V_PREDICTION
X0 = _ms.X0
CONST = _ms.CONST
ModelSamplingDiscrete = _ms.ModelSamplingDiscrete
SD15 = _supported.SD15

def model_family(model) -> str | None:
    """The model's family, read off the classes ComfyUI chose when it detected the UNet from its weights
    (never from a file name): 'SD1.5' (SD1.5 and its fine-tunes), 'SD2.x' (SD2.0 / 2.1, 512 eps and 768
    v-prediction), 'SDXL' (SDXL base and its distilled layouts: SSD-1B, Vega, KOALA), or None (any other
    family or variant: inpainting / instruct-pix2pix UNets with extra input channels, unCLIP, upscalers,
    the refiner, SD3, Flux, ...)."""
    base = getattr(model, "model", None)
    config = getattr(base, "model_config", None)
    unet = getattr(base, "diffusion_model", None)
    if getattr(unet, "in_channels", None) != 4:
        return None
    if type(base) is _mb.BaseModel and isinstance(config, _supported.SD15):
        return "SD1.5"
    if type(base) is _mb.BaseModel and isinstance(config, _supported.SD20):
        return "SD2.x"
    if type(base) is _mb.SDXL:
        return "SDXL"
    return None

# -- devices, interruption, progress --------------------------------------------------------------
intermediate_device = _mm.intermediate_device
torch_device = _mm.get_torch_device
ProgressBar = _utils.ProgressBar


def throw_if_interrupted() -> None:
    """Raise ComfyUI's interruption exception when the user pressed Cancel."""
    _mm.throw_exception_if_processing_interrupted()


def progress_bar_enabled() -> bool:
    """Read at call time: the host flips it with ``--disable-progress-bar``-like settings."""
    return bool(getattr(_utils, "PROGRESS_BAR_ENABLED", True))


def load_safetensors(path: str) -> dict:
    """A state dict through ComfyUI's safe loader (never unpickles)."""
    return _utils.load_torch_file(path, safe_load=True)


# -- sampling -------------------------------------------------------------------------------------
CFGGuider = _samplers.CFGGuider
KSAMPLER = _samplers.KSAMPLER
SAMPLER_NAMES = _samplers.SAMPLER_NAMES
SCHEDULER_NAMES = _samplers.SCHEDULER_NAMES
sampler_object = _samplers.sampler_object
calculate_sigmas = _samplers.calculate_sigmas
calc_cond_batch = _samplers.calc_cond_batch
get_area_and_mult = _samplers.get_area_and_mult
cond_cat = _samplers.cond_cat
fix_empty_latent_channels = _sample.fix_empty_latent_channels
prepare_callback = _latent_preview.prepare_callback

# -- model patcher --------------------------------------------------------------------------------
OUTER_SAMPLE = _pe.WrappersMP.OUTER_SAMPLE
merge_nested_dicts = _pe.merge_nested_dicts


@functools.lru_cache(maxsize=None)
def _prepare_state_takes_options(cls: type) -> bool:
    try:
        return "model_options" in inspect.signature(cls.prepare_state).parameters
    except (TypeError, ValueError):  # not introspectable: assume the current signature
        return True


def prepare_state(patcher, timestep, model_options: dict) -> None:
    """``ModelPatcher.prepare_state`` before a UNet call, on either signature (0.3.75: timestep only;
    0.3x of 2026: timestep and the sampling call's model options)."""
    if _prepare_state_takes_options(type(patcher)):
        patcher.prepare_state(timestep, model_options)
    else:
        patcher.prepare_state(timestep)


# -- attention ------------------------------------------------------------------------------------
def optimized_attention(q, k, v, heads, **kwargs):
    """ComfyUI's attention function as the host has chosen it, looked up at call time (the host and
    other packs may replace ``comfy.ldm.modules.attention.optimized_attention``)."""
    return _attention.optimized_attention(q, k, v, heads, **kwargs)


# -- folders and files ----------------------------------------------------------------------------
input_directory = _folder_paths.get_input_directory


def models_dir() -> str:
    """Read at call time: ``--base-directory`` moves it after import."""
    return _folder_paths.models_dir


def folder_names_and_paths() -> dict:
    """ComfyUI's live registry of model folders (mutable: the pack registers its own folder)."""
    return _folder_paths.folder_names_and_paths


get_folder_paths = _folder_paths.get_folder_paths
get_filename_list = _folder_paths.get_filename_list
get_full_path = _folder_paths.get_full_path
recursive_search = _folder_paths.recursive_search
filter_files_content_types = _folder_paths.filter_files_content_types
exists_annotated_filepath = _folder_paths.exists_annotated_filepath
pillow = _node_helpers.pillow


def sampler_function_name(sampler) -> str | None:
    """The k-diffusion step function a SAMPLER runs ("sample_euler" for both "euler" and "ddim"), or None for a
    sampler of another kind (uni_pc, a custom class)."""
    return getattr(getattr(sampler, "sampler_function", None), "__name__", None)
