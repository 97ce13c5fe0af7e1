"""The inversion node in a real ComfyUI server through HTTP, on the tiny checkpoint at 512x512."""
import harness

NODE_ID = "DragFusionInvertCapture"


def graph(steps, edit_step, seed, size=512):
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": harness.TINY_CKPT}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a photo of a cat"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "5": {"class_type": NODE_ID, "inputs": {"model": ["1", 0], "latent": ["4", 0], "positive": ["2", 0],
                                                "steps": steps, "edit_step": edit_step, "scheduler": "normal",
                                                "cfg": 1.0, "layers": "latent resolution"}},
        "6": {"class_type": "PreviewAny", "inputs": {"source": ["5", 1]}},
        "7": {"class_type": "KSamplerAdvanced", "inputs": {
            "model": ["1", 0], "add_noise": "disable", "noise_seed": seed, "steps": steps, "cfg": 1.0,
            "sampler_name": "euler", "scheduler": "normal", "positive": ["2", 0], "negative": ["3", 0],
            "latent_image": ["5", 0], "start_at_step": edit_step, "end_at_step": 10000,
            "return_with_leftover_noise": "disable"}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["1", 2]}},
        "9": {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}},
    }


def test_node_is_listed_with_its_inputs(server):
    info = server.get(f"/object_info/{NODE_ID}")[NODE_ID]
    assert info["display_name"] == "Inversion with Attention Capture"
    assert info["category"] == "DragFusion/AttentionDrag"
    assert info["output"] == ["LATENT", "ATTN_CAPTURE"]
    req = info["input"]["required"]
    assert req["steps"][1]["default"] == 10 and req["edit_step"][1]["default"] == 5 and req["cfg"][1]["default"] == 1.0
    assert "normal" in req["scheduler"][1]["options"] and req["scheduler"][1]["default"] == "simple"
    assert req["layers"][1]["default"] == "auto"
    assert info["input"]["optional"]["points"][0] == "DRAG_POINTS"


def test_inversion_capture_and_resume_at_512(server):
    # 4-step schedule, edit at step 3: one inversion UNet call at 64x64 tokens, one to resume
    h = server.run(graph(steps=4, edit_step=3, seed=harness.free_port()), timeout=600)
    assert h["status"]["status_str"] == "success", (harness.execution_error(h), server.log_tail())
    text = h["outputs"]["6"]["text"][0]
    assert text.startswith("AttnCapture(latent 64x64, batch 1, 4-step normal schedule, edit_step 3, steps [0]"), text
    assert "layers ['input.1.0', 'output.0.0', 'output.1.0']" in text
    # the int8 layer input q and k are projected from: 3 layers x (4096 tokens x 320 channels + 320 float32
    # scales) (goal <= 12 MB per step; fp16 would take 7.86 MB, q and k themselves in fp16 15.73 MB)
    per_step = 3 * (4096 * 320 + 4 * 320)
    assert f"{per_step / 1e6:.2f} MB per step" in text and per_step <= 12e6
    assert len(h["outputs"]["9"]["images"]) == 1


def test_bad_edit_step_is_an_execution_error_naming_node_and_input(server):
    g = graph(steps=4, edit_step=4, seed=harness.free_port(), size=64)
    h = server.run(g, timeout=300)
    err = harness.execution_error(h)
    assert h["status"]["status_str"] == "error" and err is not None
    assert "Inversion with Attention Capture: input 'edit_step'" in err["exception_message"]
    assert err["node_type"] == NODE_ID
