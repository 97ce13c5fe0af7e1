"""PNI Invert / PNI Guider and the pni_edit.json example through a real ComfyUI server (tiny checkpoint)."""
import json
import os
import random
import sys

import pytest

import harness

sys.path.insert(0, os.path.join(harness.REPO, "scripts"))
import workflows  # noqa: E402

STEPS = 3


@pytest.fixture(scope="module")
def object_info(server):
    return server.get("/object_info")


def pni_prompt(object_info, steps=STEPS, guidance_until=STEPS) -> dict:
    """pni_edit.json as the frontend would queue it, made cheap: tiny checkpoint, 128 px, few steps, and a fresh
    eta so the host does not answer from its cache."""
    prompt = harness.cheap_prompt(workflows.ui_to_api(workflows.load("pni_edit.json"), object_info), steps)
    for node in prompt.values():
        if node["class_type"] == "DragFusionPNIInvert":
            node["inputs"].update(steps=steps, guidance_until=guidance_until, eta=round(random.uniform(0.05, 0.5), 4))
    return prompt


def node_id(prompt, class_type):
    return next(k for k, v in prompt.items() if v["class_type"] == class_type)


def test_pni_nodes_in_object_info(object_info):
    for nid, inputs, outputs in (("DragFusionPNIInvert", {"model", "latent", "source", "steps", "cfg", "lam", "prox",
                                                          "eta", "guidance_until", "scheduler"},
                                  ["INVERSION", "LATENT", "SIGMAS"]),
                                 ("DragFusionPNIGuider", {"model", "inversion", "target"}, ["GUIDER"])):
        info = object_info[nid]
        assert info["category"] == "DragFusion/VersaFusion"
        req = info["input"]["required"]
        assert set(req) == inputs
        assert all(spec[1].get("tooltip") for spec in req.values()), nid
        assert info["output"] == outputs
    opt = object_info["DragFusionPNIInvert"]["input"]["optional"]  # optional: older prompts stay valid
    assert set(opt) == {"lambda_mode", "quantile"} and all(spec[1].get("tooltip") for spec in opt.values())
    assert opt["quantile"][1]["default"] == 0.7 and opt["lambda_mode"][1]["default"] == "fixed"
    req = object_info["DragFusionPNIInvert"]["input"]["required"]
    assert req["steps"][1]["default"] == 50 and req["cfg"][1]["default"] == 5.0
    assert req["prox"][1]["options"] == ["L1", "L0"] if isinstance(req["prox"][0], str) else req["prox"][0] == ["L1", "L0"]


@pytest.mark.parametrize("lambda_mode", ["fixed", "quantile"])
def test_example_workflow_edits_a_real_photo(server, object_info, data_dir, lambda_mode):
    prompt = pni_prompt(object_info)
    inputs = prompt[node_id(prompt, "DragFusionPNIInvert")]["inputs"]
    assert inputs["lambda_mode"] == "fixed" and inputs["quantile"] == 0.7  # the example's widgets
    inputs["lambda_mode"] = lambda_mode
    hist = server.run(prompt, timeout=600)
    assert hist["status"]["status_str"] == "success", json.dumps(harness.execution_error(hist), indent=1)[:3000]
    images = hist["outputs"][node_id(prompt, "SaveImage")]["images"]
    assert len(images) == 1 and images[0]["filename"].startswith("dragfusion_pni_edit")
    from PIL import Image
    with Image.open(os.path.join(harness.COMFYUI_DIR, "output", images[0]["subfolder"], images[0]["filename"])) as im:
        assert im.size == (128, 128)


def test_bad_inputs_over_http(server, object_info, data_dir):
    bad = pni_prompt(object_info, steps=STEPS, guidance_until=-1)
    r = server.queue(bad)
    assert "prompt_id" not in r, r
    assert "PNI Invert: input 'guidance_until'" in json.dumps(r)
    # sigmas that are not the inversion's schedule: a clear execution error, then the server goes on
    prompt = pni_prompt(object_info)
    sampler = node_id(prompt, "SamplerCustomAdvanced")
    prompt["90"] = {"class_type": "BasicScheduler", "inputs": {"model": [node_id(prompt, "CheckpointLoaderSimple"), 0],
                                                               "scheduler": "normal", "steps": STEPS + 1, "denoise": 1.0}}
    prompt[sampler]["inputs"]["sigmas"] = ["90", 0]
    hist = server.run(prompt, timeout=600)
    assert hist["status"]["status_str"] == "error"
    err = harness.execution_error(hist)
    assert err["node_type"] == "SamplerCustomAdvanced"
    assert "PNI Guider: input 'inversion'" in err["exception_message"] and "sigmas" in err["exception_message"]
    assert server.get("/system_stats")
