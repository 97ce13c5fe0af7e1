"""Image prompt nodes through HTTP in a real ComfyUI server: listed, weights combo fed from the pack's
model folder (a real run needs a CLIP vision model, which has no tiny form ComfyUI's loader detects:
the in-process host tests run the nodes)."""
import os
import shutil

import torch

import harness

ENC, APPLY = "DragFusionImagePromptEncoder", "DragFusionApplyImagePrompt"


def test_image_prompt_nodes_over_http(server):
    folder = os.path.join(harness.COMFYUI_DIR, "models", "dragfusion_image_prompt")
    created = not os.path.isdir(folder)
    os.makedirs(folder, exist_ok=True)
    name = "dragfusion_http_test.safetensors"
    path = os.path.join(folder, name)
    try:
        from safetensors.torch import save_file
        save_file({"image_prompt.queries": torch.zeros(1, 4, 8)}, path)
        info = server.get(f"/object_info/{ENC}")[ENC]
        assert info["category"] == "DragFusion/VersaFusion"
        weights = info["input"]["required"]["weights"]
        options = weights[1]["options"] if weights[0] == "COMBO" else weights[0]
        assert name in options, options
        assert weights[1]["tooltip"]
        assert "reference" in info["input"]["optional"] and "clip_vision" in info["input"]["optional"]
        apply = server.get(f"/object_info/{APPLY}")[APPLY]
        assert apply["output"] == ["MODEL"] and apply["input"]["required"]["image_prompt"][0] == "IMAGE_PROMPT"
    finally:
        os.remove(path)
        if created:
            shutil.rmtree(folder, ignore_errors=True)
