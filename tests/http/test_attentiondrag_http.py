"""Both AttentionDrag example workflows through HTTP in a real ComfyUI server, on the tiny
checkpoint with a real DragBench dev image and its own drag instruction (at 128 px for speed): the
plumbing (the graph runs, the picture has its panels). The tiny model's pictures are noise, so accuracy
is asserted elsewhere: the same workflows on ShapeDrag-GT scenes with the trained model
(test_shapedrag_workflows_http.py) and the demo (test_demo_http.py)."""
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


def test_lcm_lora_node_is_bypassed_until_a_lora_is_there(server, object_info, data_dir, tmp_path):
    """The example workflow carries SD1.5's LCM-LoRA as a bypassed LoraLoaderModelOnly: queued as it is, the
    model goes straight from the checkpoint to ModelSamplingDiscrete. Un-bypassed as scripts/demo does when
    models/loras holds an LCM-LoRA (here a small LoRA for the tiny checkpoint, built in the test), the LoRA
    is in the graph and changes the result."""
    import torch
    from safetensors.torch import save_file
    sys.path.insert(0, os.path.join(harness.REPO, "scripts"))
    import demo
    from workflow_specs import LCM_LORA_NODE
    plain = prepare("attention_drag.json", object_info)
    assert "LoraLoaderModelOnly" not in {n["class_type"] for n in plain.values()}
    msd = next(n["inputs"] for n in plain.values() if n["class_type"] == "ModelSamplingDiscrete")
    assert msd["model"] == ["1", 0]
    loras = os.path.join(harness.COMFYUI_DIR, "models", "loras")
    os.makedirs(loras, exist_ok=True)
    name = f"test_lcm_tiny_{os.getpid()}.safetensors"
    g = torch.Generator().manual_seed(0)
    base = "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_"
    sd = {}
    for p in ("q", "k", "v"):
        sd[f"{base}{p}.lora_up.weight"] = torch.randn(40 * 8, 4, generator=g)
        sd[f"{base}{p}.lora_down.weight"] = torch.randn(4, 40 * 8, generator=g)
        sd[f"{base}{p}.alpha"] = torch.tensor(4.0)
    path = os.path.join(loras, name)
    save_file(sd, path)
    try:
        info = server.get("/object_info/LoraLoaderModelOnly")
        assert demo.pick_lcm_lora(info["LoraLoaderModelOnly"]["input"]["required"]["lora_name"][0]) is not None
        ui = workflows.load("attention_drag.json")
        assert demo.use_lcm_lora(ui, name)
        with_lora = workflows.ui_to_api(ui, object_info)
        lora = with_lora[str(LCM_LORA_NODE)]
        assert lora["class_type"] == "LoraLoaderModelOnly" and lora["inputs"]["model"] == ["1", 0]
        msd = next(n["inputs"] for n in with_lora.values() if n["class_type"] == "ModelSamplingDiscrete")
        assert msd["model"] == [str(LCM_LORA_NODE), 0]
        results = []
        for i, prompt in enumerate((plain, with_lora)):
            for node in prompt.values():
                ins = node["inputs"]
                if "ckpt_name" in ins:
                    ins["ckpt_name"] = harness.TINY_CKPT
                if node["class_type"] == "DragFusionLoadDragBenchSample":
                    ins["size"] = "fit 128 (multiple of 8)"
                if node["class_type"] == "SaveImage":
                    ins["filename_prefix"] = f"test_lcm_lora_{i}_{os.getpid()}"
            hist = server.run(prompt, timeout=300)
            assert hist["status"]["status_str"] == "success", f"{harness.execution_error(hist)}\n{server.log_tail()}"
            results.append(saved_images(server, hist)[0][:, 384:].astype(np.int16))
        # the tiny random VAE decodes almost everything to the same dark picture: any change shows the LoRA acted
        assert np.abs(results[0] - results[1]).mean() > 0.01
        log = server.log_tail(10 ** 7)
        assert "lora key not loaded" not in log, log[-3000:]
    finally:
        os.remove(path)
