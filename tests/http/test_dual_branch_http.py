"""The dual-branch nodes and their example workflows through a real ComfyUI server (tiny checkpoint, 128 px)."""
import json
import os
import random
import sys

import pytest

import harness

sys.path.insert(0, os.path.join(harness.REPO, "scripts"))
import workflows  # noqa: E402

STEPS = 3
NODES = ("DragFusionDualBranchGuider", "DragFusionDualBranchGuidedSampler")


@pytest.fixture(scope="module")
def object_info(server):
    return server.get("/object_info")


def cheap_prompt(object_info, name: str) -> dict:
    """The example as the frontend would queue it, made cheap: tiny checkpoint, 128 px, 3 steps, and a fresh
    energy scale so the host does not answer from its cache."""
    prompt = harness.cheap_prompt(workflows.ui_to_api(workflows.load(name), object_info), STEPS)
    for node in prompt.values():
        ins = node["inputs"]
        if node["class_type"] == "DragFusionDualBranchGuidedSampler":
            ins["energy_scale"] = round(random.uniform(0.1, 0.5), 4)
    return prompt


def node_id(prompt, class_type):
    return next(k for k, v in prompt.items() if v["class_type"] == class_type)


def test_nodes_in_object_info(object_info):
    for nid in NODES:
        info = object_info[nid]
        assert info["category"] == "DragFusion/VersaFusion"
        specs = {**info["input"]["required"], **info["input"].get("optional", {})}
        assert all(spec[1].get("tooltip") for spec in specs.values()), nid
        assert {"model", "inversion", "target", "task"} <= set(info["input"]["required"])
        for opt in ("points", "mask", "reference", "reference_mask", "landmarks_json", "image_prompt"):
            assert opt in info["input"]["optional"], (nid, opt)
    assert object_info["DragFusionDualBranchGuider"]["output"] == ["GUIDER"]
    assert object_info["DragFusionDualBranchGuidedSampler"]["output"] == ["LATENT"]


def test_example_workflow_runs_on_a_real_photo(server, object_info, data_dir):
    """dual_branch_drag.json at 3 steps (the move / outpaint examples run in test_foundation_http's sweep of
    every example, and on the tiny checkpoint in tests/host/test_dual_branch.py)."""
    prompt = cheap_prompt(object_info, "dual_branch_drag.json")
    hist = server.run(prompt, timeout=600)
    assert hist["status"]["status_str"] == "success", json.dumps(harness.execution_error(hist), indent=1)[:3000]
    images = [im for out in hist["outputs"].values() for im in out.get("images", [])]
    assert images, "no image saved"


def test_drag_without_points_is_a_clear_error(server, object_info, data_dir):
    prompt = cheap_prompt(object_info, "dual_branch_drag.json")
    del prompt[node_id(prompt, "DragFusionDualBranchGuidedSampler")]["inputs"]["points"]
    hist = server.run(prompt, timeout=600)
    assert hist["status"]["status_str"] == "error"
    err = harness.execution_error(hist)
    assert err["node_type"] == "DragFusionDualBranchGuidedSampler"
    assert "Dual-Branch Guided Sampler: input 'points': task 'drag' needs DRAG_POINTS" in err["exception_message"]
    assert server.get("/system_stats")
