"""The pack inside a real ComfyUI server, over HTTP."""
import glob
import json
import os
import random
import shutil
import sys
import urllib.request

import pytest

import harness

sys.path.insert(0, os.path.join(harness.REPO, "scripts"))
import workflows  # noqa: E402
from workflow_specs import landmarks_at_fit  # noqa: E402

WORKFLOWS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(workflows.WORKFLOW_DIR, "*.json")))
SAMPLE = "dragfusion_data/dragbench-dev/animals/JH_2023-09-14-1820-16"
CHEAP_PNI_STEPS = 6  # PNI / dual-branch schedules in the run-every-workflow tests


@pytest.fixture(scope="module")
def object_info(server):
    return server.get("/object_info")


def test_object_info_lists_every_pack_node(server, object_info, host):
    expected = harness.pack_node_ids(host)
    assert expected, "no pack node loaded in-process"
    missing = [n for n in expected if n not in object_info]
    assert not missing, f"not in /object_info: {missing}\n{server.log_tail()}"
    for n in expected:
        info = object_info[n]
        assert info["category"].startswith("DragFusion"), n
        assert info["input"].get("required") or info["input"].get("optional"), n
    pj = object_info["DragFusionPointsJSON"]["input"]["required"]
    assert pj["image"][0] == "IMAGE" and pj["points_json"][0] == "STRING"
    assert object_info["DragFusionPreviewDragPoints"]["input"]["required"]["points"][0] == "DRAG_POINTS"


def test_web_directory_served(server):
    exts = server.get("/extensions")
    assert isinstance(exts, list)
    ours = [e for e in exts if "/dragfusion/" in e]
    for e in ours:
        with urllib.request.urlopen(server.url + e, timeout=10) as r:
            assert r.status == 200


def _upload_missing_images(server, prompt):
    """A workflow that names an input image or mask which is not there gets a real DragBench photo
    (or its mask) under that name."""
    sample = os.path.join(harness.DATA, "dragbench-dev/animals/JH_2023-09-14-1820-16")
    input_dir = os.path.join(harness.COMFYUI_DIR, "input")
    for node in prompt.values():
        for key, src in (("image", "original_image.png"), ("mask", "mask.png")):
            name = node["inputs"].get(key)
            if isinstance(name, str) and name.lower().endswith((".png", ".jpg", ".jpeg", ".webp")):
                dst = os.path.join(input_dir, name)
                if not os.path.exists(dst):
                    os.makedirs(os.path.dirname(dst), exist_ok=True)
                    shutil.copy(os.path.join(sample, src), dst)


def cheap(prompt: dict) -> dict:
    """The same graph made cheap (harness.cheap_prompt), with a fresh seed so the host re-runs it."""
    seed = random.randrange(1 << 30)
    for node in harness.cheap_prompt(prompt, CHEAP_PNI_STEPS).values():
        ins = node["inputs"]
        if node["class_type"] in ("ImageScale", "EmptyLatentImage"):
            for k in ("width", "height"):
                if isinstance(ins.get(k), int):
                    ins[k] = min(ins[k], 128)
        for k in ("seed", "noise_seed"):
            if isinstance(ins.get(k), int):
                ins[k] = seed
        if isinstance(ins.get("landmarks_json"), str) and ins["landmarks_json"].strip():
            ins["landmarks_json"] = landmarks_at_fit(ins["landmarks_json"], 128)  # the face at 128 px, as its sample
    return prompt


@pytest.mark.parametrize("name", WORKFLOWS)
def test_example_workflow_runs(server, object_info, data_dir, name):
    ui = workflows.load(name)
    assert ui["nodes"] and "links" in ui, "not a UI-format workflow"
    prompt = cheap(workflows.ui_to_api(ui, object_info))
    _upload_missing_images(server, prompt)
    hist = server.run(prompt, timeout=900)
    assert hist["status"]["status_str"] == "success", json.dumps(harness.execution_error(hist), indent=1)[:3000]


def preview_prompt(points_json: str, seed: int) -> dict:
    return {
        "1": {"class_type": "DragFusionLoadDragBenchSample", "inputs": {"sample": SAMPLE, "size": "fit 128 (multiple of 8)"}},
        "2": {"class_type": "DragFusionPointsJSON", "inputs": {"image": ["1", 0], "points_json": points_json}},
        "3": {"class_type": "DragFusionPreviewDragPoints", "inputs": {"image": ["1", 0], "points": ["2", 0],
                                                                     "mask_opacity": 0.1 + (seed % 100) / 1000}},
    }


def test_bad_point_json_is_a_clear_error_and_server_survives(server, data_dir):
    hist = server.run(preview_prompt("{this is not json", 1))
    assert hist["status"]["status_str"] == "error"
    err = harness.execution_error(hist)
    assert err["node_type"] == "DragFusionPointsJSON"
    assert "Drag Points (JSON): input 'points_json': not valid JSON" in err["exception_message"]
    assert server.get("/system_stats")
    good = '{"pairs": [{"handle": [10, 20], "target": [60, 20]}]}'
    hist = server.run(preview_prompt(good, 2))
    assert hist["status"]["status_str"] == "success", harness.execution_error(hist)
    images = [im for out in hist["outputs"].values() for im in out.get("images", [])]
    assert images


def test_tiny_checkpoint_samples_64px_two_steps(server):
    seed = random.randrange(1 << 30)
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": harness.TINY_CKPT}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a photo of a dog"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0],
                                                   "latent_image": ["4", 0], "seed": seed, "steps": 2, "cfg": 5.0,
                                                   "sampler_name": "ddim", "scheduler": "normal", "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}},
    }
    hist = server.run(prompt, timeout=300)
    assert hist["status"]["status_str"] == "success", harness.execution_error(hist)
    assert "model_type EPS" in server.log_tail(200000)
