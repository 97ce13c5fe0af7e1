"""Names and writers of the files the robustness suite puts into the real host (all dragfusion_test_*)."""
import os

import harness  # noqa: E402

PREFIX = "dragfusion_test_"
TAG = f"{PREFIX}{os.getpid()}_"   # per session: two sessions sharing the host never touch each other's files
HOST = harness.COMFYUI_DIR
CKPT_DIR = os.path.join(HOST, "models", "checkpoints")
IP_DIR = os.path.join(HOST, "models", "dragfusion_image_prompt")
INPUT_DIR = os.path.join(HOST, "input")
MARKER = os.path.join("/tmp", f"{PREFIX}pickle_ran_{os.getpid()}")

IMAGE_64 = TAG + "image64.png"
MASK_40 = TAG + "mask40.png"
MASK_EMPTY = TAG + "mask_empty.png"
PICKLE_CKPT = TAG + "pickle.ckpt"
PICKLE_AS_ST = TAG + "pickle_renamed.safetensors"
CORRUPT = TAG + "corrupt.safetensors"
WRONG_KEYS = TAG + "wrong_keys.safetensors"
EMPTY_FILE = TAG + "empty.safetensors"
GOOD_IP = TAG + "image_prompt.safetensors"
CLIP_DIM = 32
CLIP_VISION_DIR = os.path.join(HOST, "models", "clip_vision")
# Listed by CLIPVisionLoader so graphs with an Image Prompt Encoder pass the host's own validation; the
# suite only sends such graphs where our node's inputs are refused first (nothing ever loads it).
CLIP_VISION_NAME = TAG + "clip_vision_placeholder.safetensors"


class RunsCode:
    """Unpickling this calls open(MARKER, 'w'): the marker file appears iff the pickle was executed."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def write_pickle(path: str):
    import torch
    torch.save({"image_proj.latents": torch.zeros(1, 4, 8), "payload": RunsCode(MARKER)}, path)


def write_good_image_prompt(path: str):
    """A small weights file in the pack's own layout (as tests/host/test_image_prompt_nodes.py writes)."""
    import torch
    from safetensors.torch import save_file
    from dragfusion.guidance import image_prompt_encoder as enc, image_prompt_weights as w
    torch.manual_seed(0)
    cfg = enc.EncoderConfig(clip_dim=CLIP_DIM, dim=64, depth=1, heads=1, num_queries=8, out_dim=768)
    adapter = enc.ImagePromptAdapter(cfg, [320, 320, 320])
    save_file(w.adapter_state_dict(adapter, "dragfusion"), path)


