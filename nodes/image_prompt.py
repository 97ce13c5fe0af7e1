"""Image Prompt Encoder and Apply Image Prompt (VersaFusion, Fig. 4 and Eq. 11)."""
from __future__ import annotations

import os

import torch
from comfy_api.latest import io

from ..attention_patch.image_prompt import apply_image_prompt
from ..guidance.errors import input_error
from ..guidance.image_prompt_tokens import ImagePrompt
from ..guidance.image_prompt_weights import adapter_from_state_dict
from .types import CATEGORY_VERSAFUSION, ImagePromptType
from ..attention_patch import comfy_host as host

ENCODER = "Image Prompt Encoder"
APPLY = "Apply Image Prompt"
FOLDER = "dragfusion_image_prompt"   # models/dragfusion_image_prompt
IPADAPTER_FOLDER = "ipadapter"       # listed as "ipadapter/<file>"
EXTENSIONS = (".safetensors", ".sft")
CLIP_ZERO_SIZE = 224


def register_model_folder() -> None:
    """Register models/dragfusion_image_prompt (safetensors only); idempotent, no other side effect."""
    if FOLDER not in host.folder_names_and_paths():
        host.folder_names_and_paths()[FOLDER] = ([os.path.join(host.models_dir(), FOLDER)], set(EXTENSIONS))


def _ipadapter_dirs() -> list[str]:
    if IPADAPTER_FOLDER in host.folder_names_and_paths():
        return host.get_folder_paths(IPADAPTER_FOLDER)
    return [os.path.join(host.models_dir(), IPADAPTER_FOLDER)]


def _safetensors_in(dirs: list[str]) -> list[str]:
    names = set()
    for d in dirs:
        files, _ = host.recursive_search(d, excluded_dir_names=[".git"])
        names.update(f.replace(os.sep, "/") for f in files if f.lower().endswith(EXTENSIONS))
    return sorted(names)


def weight_files() -> list[str]:
    register_model_folder()
    own = [f for f in host.get_filename_list(FOLDER) if f.lower().endswith(EXTENSIONS)]
    return sorted(own) + [f"{IPADAPTER_FOLDER}/{f}" for f in _safetensors_in(_ipadapter_dirs())]


def resolve_weights(name: str, node: str = ENCODER, input_name: str = "weights") -> str:
    """A listed file name -> its path; anything that could leave the model folders is refused."""
    register_model_folder()
    if not isinstance(name, str) or not name.strip():
        raise input_error(node, input_name, "no weights file chosen: put a .safetensors file in models/"
                          f"{FOLDER}/ (or models/{IPADAPTER_FOLDER}/) and pick it")
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]:
        raise input_error(node, input_name, f"{name!r} is not a file name inside the model folders ('..' and absolute paths are refused)")
    if not name.lower().endswith(EXTENSIONS):
        raise input_error(node, input_name, f"{name!r}: only .safetensors weights are loaded")
    path = host.get_full_path(FOLDER, name)
    if path is None and parts[0] == IPADAPTER_FOLDER and len(parts) > 1:
        rest = "/".join(parts[1:])
        for d in _ipadapter_dirs():
            p = os.path.join(d, rest)
            if os.path.isfile(p) and os.path.realpath(p).startswith(os.path.realpath(d) + os.sep):
                path = p
                break
    if path is None:
        raise input_error(node, input_name, f"{name!r} not found in models/{FOLDER}/ or models/{IPADAPTER_FOLDER}/; "
                          f"available: {', '.join(weight_files()) or 'none'}")
    return path


def load_adapter(name: str, node: str = ENCODER, input_name: str = "weights"):
    path = resolve_weights(name, node, input_name)
    try:
        sd = host.load_safetensors(path)
    except Exception as e:  # the safetensors reader's errors have no common type
        raise input_error(node, input_name, f"cannot read {name!r} as safetensors ({type(e).__name__}: {e}); "
                          "the file is missing, truncated or not a safetensors file") from None
    return adapter_from_state_dict(sd, node, input_name)


def _clip_tokens(output, node: str, input_name: str, width: int) -> torch.Tensor:
    tokens = getattr(output, "penultimate_hidden_states", None) if output is not None else None
    if not isinstance(tokens, torch.Tensor) or tokens.ndim != 3:
        raise input_error(node, input_name, "expected the CLIP_VISION_OUTPUT of a CLIP Vision Encode node "
                          "(penultimate hidden states [batch, 257, width])")
    if tokens.shape[-1] != width:
        raise input_error(node, input_name, f"CLIP tokens are {tokens.shape[-1]} wide, the weights expect {width} "
                          "(ViT-L/14: 1024, ViT-H/14: 1280): pick the CLIP vision model the weights were trained with")
    return tokens


def zero_image_tokens(clip_vision, like: torch.Tensor) -> torch.Tensor:
    """CLIP tokens of a black image (the paper's dropped image). With a CLIP vision model: encode a
    zero image through it; without one: zero tokens (the projector then sees only its biases)."""
    if clip_vision is None:
        return torch.zeros_like(like[:1])
    zero = torch.zeros(1, CLIP_ZERO_SIZE, CLIP_ZERO_SIZE, 3)
    return clip_vision.encode_image(zero)["penultimate_hidden_states"]


class ImagePromptEncoder(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DragFusionImagePromptEncoder",
            display_name=ENCODER,
            category=CATEGORY_VERSAFUSION,
            description=("VersaFusion's image prompt: the 257 CLIP image tokens -> linear -> QFormer (learned queries "
                         "cross-attend to the image tokens, then a feed-forward; N blocks) -> image tokens c_im, plus "
                         "the per-layer to_k_ip/to_v_ip projections for Apply Image Prompt. Weights: the pack's own "
                         f".safetensors (scripts/train_image_prompt.py) in models/{FOLDER}/, or a public SD1.5 "
                         "perceiver ('plus') image-prompt checkpoint in models/ipadapter/. Unconditional tokens "
                         "(for CFG) come from a black image: encoded through clip_vision when it is connected, "
                         "else from all-zero CLIP tokens."),
            inputs=[
                io.ClipVisionOutput.Input("clip_vision_output", tooltip="From CLIP Vision Encode (its 257 penultimate tokens are used)."),
                io.Combo.Input("weights", options=weight_files(),
                               tooltip=f"Image-prompt weights (.safetensors) from models/{FOLDER}/ or models/ipadapter/."),
                io.ClipVisionOutput.Input("reference", optional=True,
                                          tooltip="Optional second CLIP Vision Encode output (a reference image): its tokens are "
                                                  "concatenated after the source's, as for paste / appearance replace."),
                io.ClipVision.Input("clip_vision", optional=True,
                                    tooltip="Optional: the CLIP vision model used above, to encode a black image for the "
                                            "unconditional tokens as in training. Without it zero CLIP tokens are used."),
            ],
            outputs=[ImagePromptType.Output(display_name="image_prompt")],
        )

    @classmethod
    def execute(cls, clip_vision_output, weights, reference=None, clip_vision=None):
        adapter = load_adapter(weights, ENCODER, "weights")
        width = adapter.cfg.clip_dim
        src = _clip_tokens(clip_vision_output, ENCODER, "clip_vision_output", width)
        ref = _clip_tokens(reference, ENCODER, "reference", width) if reference is not None else None
        zero = zero_image_tokens(clip_vision, src)
        if zero.shape[-1] != width:
            raise input_error(ENCODER, "clip_vision", f"this CLIP vision model gives {zero.shape[-1]}-wide tokens, the weights expect {width}")
        device, out_device = host.torch_device(), host.intermediate_device()
        adapter = adapter.to(device)
        with torch.no_grad():
            run = lambda t: adapter.encoder(t.to(device=device, dtype=torch.float32)).to(out_device)
            uncond1 = run(zero)
            prompt = ImagePrompt(cond=run(src), uncond=uncond1.expand(src.shape[0], -1, -1).contiguous(), gamma=1.0,
                                 kv_weights=tuple((k.to(out_device), v.to(out_device)) for k, v in adapter.kv_weights()),
                                 source=weights)
            if ref is not None:
                other = ImagePrompt(cond=run(ref), uncond=uncond1.expand(ref.shape[0], -1, -1).contiguous(),
                                    kv_weights=prompt.kv_weights, source=weights)
                prompt = prompt.concat(other, ENCODER, "reference")
        return io.NodeOutput(prompt.validate(ENCODER, "clip_vision_output"))


class ApplyImagePrompt(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DragFusionApplyImagePrompt",
            display_name=APPLY,
            category=CATEGORY_VERSAFUSION,
            description=("Returns a copy of the model whose every cross-attention adds the image prompt (Eq. 11): "
                         "Attn(Q, K_text, V_text) + gamma * Attn(Q, K_image, V_image). Cond rows of a CFG batch get the "
                         "image tokens, uncond rows the black-image tokens. The model passed in is not changed; chain "
                         "two of these nodes to add two image prompts."),
            inputs=[
                io.Model.Input("model", tooltip="The model to patch (a patched copy is returned); the image-prompt file must match its cross-attention widths (the SD1.5 layout is the one tested)."),
                ImagePromptType.Input("image_prompt", tooltip="From Image Prompt Encoder."),
                io.Float.Input("gamma", default=1.0, min=0.0, max=10.0, step=0.05,
                               tooltip="Weight of the image term in Eq. 11; 0 leaves the model's output unchanged. "
                                       "Replaces the image prompt's own gamma."),
                io.String.Input("block_weights", default="", optional=True,
                                tooltip="Optional per-block multipliers of gamma, e.g. 'input=0.5, output.1=0, middle=1'. "
                                        "Names: input / output / middle, optionally .<block id>[.<transformer index>]; "
                                        "later entries win; empty = 1 everywhere."),
            ],
            outputs=[io.Model.Output(display_name="model")],
        )

    @classmethod
    def execute(cls, model, image_prompt, gamma=1.0, block_weights=""):
        if not isinstance(image_prompt, ImagePrompt):
            raise input_error(APPLY, "image_prompt", f"expected an IMAGE_PROMPT from {ENCODER}, got {type(image_prompt).__name__}")
        if not (0.0 <= float(gamma) <= 10.0):
            raise input_error(APPLY, "gamma", f"{gamma} must be in 0..10")
        m = apply_image_prompt(model, image_prompt.with_gamma(gamma), None, block_weights or "", APPLY, "image_prompt")
        return io.NodeOutput(m)


NODES = [ImagePromptEncoder, ApplyImagePrompt]
