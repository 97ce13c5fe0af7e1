"""Both AttentionDrag example workflows through HTTP in a real ComfyUI server, on the tiny
checkpoint with a real DragBench dev image and its own drag instruction (at 128 px for speed)."""
import io
import os
import sys
import urllib.parse
import urllib.request

import numpy as np
import pytest

import harness

sys.path.insert(0, os.path.join(harness.REPO, "scripts"))
import workflows  # noqa: E402

SAMPLE = "dragfusion_data/dragbench-dev/animals/JH_2023-09-14-1820-16"


@pytest.fixture(scope="module")
def object_info(server):
    return server.get("/object_info")


def prepare(name, object_info, size="fit 128 (multiple of 8)"):
    prompt = workflows.ui_to_api(workflows.load(name), object_info)
    for node in prompt.values():
        ins = node["inputs"]
        if "ckpt_name" in ins:
            ins["ckpt_name"] = harness.TINY_CKPT
        if node["class_type"] == "DragFusionLoadDragBenchSample":
            assert ins["sample"] == SAMPLE
            ins["size"] = size
        if node["class_type"] == "SaveImage":
            ins["filename_prefix"] = f"test_{name[:-5]}_{os.getpid()}"
    return prompt


def saved_images(server, hist):
    out = []
    for node_out in hist.get("outputs", {}).values():
        for im in node_out.get("images", []):
            if im.get("type") == "output":
                q = urllib.parse.urlencode({"filename": im["filename"], "subfolder": im.get("subfolder", ""), "type": "output"})
                with urllib.request.urlopen(f"{server.url}/view?{q}", timeout=30) as r:
                    from PIL import Image
                    out.append(np.asarray(Image.open(io.BytesIO(r.read())).convert("RGB")))
    return out


@pytest.mark.parametrize("name", ["attention_drag.json", "attention_drag_inpaint.json"])
def test_example_workflow_edits_a_dragbench_image(server, object_info, data_dir, name):
    prompt = prepare(name, object_info)
    classes = {n["class_type"] for n in prompt.values()}
    assert {"DragFusionInvertCapture", "DragFusionAttentionInterpolate", "KSamplerAdvanced", "VAEDecode",
            "SaveImage", "DragFusionSideBySide"} <= classes
    ks = next(n["inputs"] for n in prompt.values() if n["class_type"] == "KSamplerAdvanced")
    inv = next(n["inputs"] for n in prompt.values() if n["class_type"] == "DragFusionInvertCapture")
    assert (ks["steps"], ks["start_at_step"], ks["add_noise"], ks["cfg"]) == (inv["steps"], inv["edit_step"], "disable", 1.0)
    assert (ks["steps"], ks["start_at_step"], ks["scheduler"]) == (10, 5, inv["scheduler"])
    hist = server.run(prompt, timeout=300)
    assert hist["status"]["status_str"] == "success", f"{harness.execution_error(hist)}\n{server.log_tail()}"
    (img,) = saved_images(server, hist)
    # original | arrows | mask | result, each 128 x 128 (the sample is square)
    assert img.shape == (128, 512, 3)
    original, arrows, mask, result = (img[:, i * 128:(i + 1) * 128].astype(np.int16) for i in range(4))
    assert mask.max() == 255 and (mask == 0).any()
    assert np.abs(result - original).mean() > 1.0           # something was generated
    if name == "attention_drag.json":
        assert np.abs(arrows - original).max() > 100          # arrows drawn


def test_inpaint_with_an_empty_mask_is_a_clear_error(server, object_info, data_dir):
    prompt = prepare("attention_drag_inpaint.json", object_info)
    interp = next(k for k, n in prompt.items() if n["class_type"] == "DragFusionAttentionInterpolate")
    prompt["90"] = {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 128, "height": 128}}
    prompt[interp]["inputs"]["mask"] = ["90", 0]
    hist = server.run(prompt, timeout=300)
    assert hist["status"]["status_str"] == "error"
    err = harness.execution_error(hist)
    assert "AttentionDrag Interpolate: input 'mask': inpainting needs a mask" in err["exception_message"]
