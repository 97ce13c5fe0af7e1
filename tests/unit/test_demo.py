"""scripts/demo.py without a host: which checkpoint and which input it picks, the settings it applies,
the ShapeDrag scene it generates and how it scores the picture it gets back."""
import importlib.util
import os
import sys

import numpy as np
import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "bench"))
from shapedrag import scenes  # noqa: E402

_spec = importlib.util.spec_from_file_location("dragfusion_demo", os.path.join(REPO, "scripts", "demo.py"))
demo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(demo)

OWN = "my_sd15_lcm.safetensors"


def fake_checkpoint(path: str, context_dim: int):
    """A header-only stand-in: the one tensor is_sd15_family reads (its last dimension: 768 = CLIP-L)."""
    from safetensors.torch import save_file
    save_file({demo.SD15_PROBE: torch.zeros(4, context_dim, dtype=torch.float16)}, path)


@pytest.mark.parametrize("ckpt, sample, scene, expected", [
    (demo.TRAINED, None, False, "scene"),        # the ShapeDrag model only knows shapes: its own scene
    (demo.TINY, None, False, "photo"),           # the tiny random one: the photo (noise either way)
    (OWN, None, False, "photo"),                 # yours: the bundled DragBench photo
    (None, None, False, "photo"),                # a workflow without a checkpoint loader
    (demo.TRAINED, demo.PHOTO, False, "photo"),  # --sample forces a photo
    (demo.TINY, None, True, "scene"),            # --scene forces the scene
    (OWN, None, True, "scene"),
])
def test_input_follows_the_checkpoint(ckpt, sample, scene, expected):
    assert demo.choose_input(ckpt, sample, scene) == expected


def test_sample_and_scene_exclude_each_other():
    with pytest.raises(ValueError):
        demo.choose_input(demo.TRAINED, demo.PHOTO, True)
    with pytest.raises(SystemExit):
        demo.parse_args(["--sample", "--scene"])


def test_command_line():
    assert demo.parse_args(["--sample"]).sample == demo.PHOTO                 # alone: the bundled photo
    assert demo.parse_args(["--sample", "dragfusion_data/drag100/art_0"]).sample == "dragfusion_data/drag100/art_0"
    a = demo.parse_args([])
    assert a.sample is None and not a.scene and a.ckpt is None and a.out.endswith(os.path.join("out", "demo.png"))
    assert demo.parse_args(["--scene", "--ckpt", demo.TRAINED]).scene


def test_pick_checkpoint_prefers_yours_then_shapedrag_then_tiny(tmp_path):
    fake_checkpoint(str(tmp_path / OWN), 768)
    fake_checkpoint(str(tmp_path / "sdxl_base.safetensors"), 2048)     # not SD1.5-family: never picked
    (tmp_path / "broken.safetensors").write_bytes(b"not a checkpoint")
    everything = [OWN, "sdxl_base.safetensors", "broken.safetensors", demo.TRAINED, demo.TINY]
    assert demo.pick_checkpoint(everything, [str(tmp_path)])[0] == OWN
    assert demo.pick_checkpoint(everything[1:], [str(tmp_path)])[0] == demo.TRAINED
    assert demo.pick_checkpoint(everything[1:3] + [demo.TINY], [str(tmp_path)])[0] == demo.TINY
    assert demo.pick_checkpoint(["sdxl_base.safetensors"], [str(tmp_path)])[0] is None
    # and end to end: the checkpoint picked decides the input
    assert demo.choose_input(demo.pick_checkpoint(everything, [str(tmp_path)])[0]) == "photo"
    assert demo.choose_input(demo.pick_checkpoint(everything[1:], [str(tmp_path)])[0]) == "scene"


def test_settings_follow_checkpoint_and_input():
    s = demo.settings_for(demo.TRAINED, "scene")
    assert "DragFusionSemanticMove" not in s                                   # its default ('rigid') moves the object
    assert s["ModelSamplingDiscrete"] == {"sampling": "eps"}                   # not an LCM model
    assert s["DragFusionAutoMask"] == {"mask_mode": "replace"}                 # the scene's own mask
    assert s["DragFusionLoadDragBenchSample"] == {"size": "original"}          # 128x128, the model's size
    assert "DragFusionLoadDragBenchSample" not in demo.settings_for(demo.TRAINED, "photo")
    assert demo.settings_for(OWN, "photo") == {} and demo.settings_for(demo.TINY, "photo") == {}
    assert demo.settings_for(OWN, "scene") == {"DragFusionLoadDragBenchSample": {"size": "original"}}
    prompt = {"1": {"class_type": "DragFusionAutoMask", "inputs": {"mask_mode": "union"}},
              "2": {"class_type": "KSamplerAdvanced", "inputs": {"steps": 10}}}
    demo.apply_settings(prompt, s)
    assert prompt["1"]["inputs"]["mask_mode"] == "replace" and prompt["2"]["inputs"] == {"steps": 10}


def test_scene_is_deterministic_and_in_dragbench_format():
    a, b = demo.scene_sample(), demo.scene_sample()
    assert (a["handle"], a["target"], a["scene_seed"]) == (b["handle"], b["target"], b["scene_seed"])
    files = demo.scene_files(a)
    assert files == demo.scene_files(b)
    assert {"original_image.png", "mask.png", "drag_instruction.json"} <= set(files)
    assert np.hypot(*a["drag"]) > 30, "the demo's drag should be long enough to see"
    assert len(a["scene"].objects) >= 2, "other objects show that only the dragged one moves"


def side_by_side(original: np.ndarray, result: np.ndarray) -> bytes:
    import io

    from PIL import Image
    strip = np.concatenate([original, original, np.zeros_like(original), result], axis=1)
    buf = io.BytesIO()
    Image.fromarray((np.clip(strip, 0, 1) * 255 + 0.5).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_scene_score_reads_the_result_panel():
    s = demo.scene_sample()
    original = scenes.render(s["scene"])
    objs = list(s["scene"].objects)
    objs[s["object"]] = objs[s["object"]].moved(*s["drag"])
    ideal = scenes.render(s["scene"], objs)
    moved = demo.scene_score(side_by_side(original, ideal), s)
    still = demo.scene_score(side_by_side(original, original), s)
    assert moved["md"] < 0.5 and not moved["lost"]
    assert still["md"] == pytest.approx(still["md0"], abs=0.5) and still["md0"] == pytest.approx(np.hypot(*s["drag"]))
    assert demo.scene_score(side_by_side(original, np.full_like(original, 0.5)), s)["lost"]


@pytest.mark.parametrize("names, expected", [
    (["lcm-lora-sdv1-5.safetensors", "lcm_sd15_other.safetensors"], "lcm-lora-sdv1-5.safetensors"),
    (["detail.safetensors", "LCM_LoRA_SD15.safetensors"], "LCM_LoRA_SD15.safetensors"),
    (["lcm-lora-sdxl.safetensors", "lcm-lora-ssd-1b.safetensors"], None),     # other architectures
    (["detail.safetensors"], None),
    ([], None),
])
def test_pick_lcm_lora(names, expected):
    assert demo.pick_lcm_lora(names) == expected


def test_use_lcm_lora_unbypasses_the_example_workflow_node():
    import json
    from workflow_specs import LCM_LORA_FILE, LCM_LORA_NODE
    with open(os.path.join(REPO, "example_workflows", "attention_drag.json")) as f:
        ui = json.load(f)
    node = next(n for n in ui["nodes"] if n["id"] == LCM_LORA_NODE)
    assert node["type"] == "LoraLoaderModelOnly" and node["mode"] == 4 and node["widgets_values"][0] == LCM_LORA_FILE
    assert demo.use_lcm_lora(ui, "mine.safetensors")
    assert node["mode"] == 0 and node["widgets_values"] == ["mine.safetensors", 1.0]
    assert not demo.use_lcm_lora({"nodes": []}, "mine.safetensors")
