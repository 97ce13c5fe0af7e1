"""Bad input over HTTP: every case must give an error that names the node and the input (in /history,
or a 400 from POST /prompt whose node_errors name them), the server must still answer, and the next
good prompt must succeed. Graphs: robust_graphs.py (64 px, 2 steps, tiny checkpoint)."""
import itertools
import json
import math

import pytest

import harness
import robust_files as rc
import robust_graphs as rg
import robust_models

G = rg.GOOD_POINTS
_fresh = itertools.count(1)


def pts(pairs=None, **over):
    d = dict(G)
    if pairs is not None:
        d["pairs"] = pairs
    d.update(over)
    return json.dumps(d)


def pair(h, t):
    return [{"handle": h, "target": t}]


def edit(**kw):
    return rg.edit_graph(variant=0, steps=2, edit_step=1, **kw)


def with_points_text(text):
    g = edit()
    g["5"]["inputs"]["points_json"] = text
    return g


def set_in(g, node, **inputs):
    g[node]["inputs"].update(inputs)
    return g


def add(g, node, class_type, **inputs):
    g[node] = {"class_type": class_type, "inputs": inputs}
    return g


def other_model(g, ckpt):
    add(g, "1b", "CheckpointLoaderSimple", ckpt_name=ckpt)
    g["2"]["inputs"]["model"] = ["1b", 0]
    return g


def points_on_128(g):
    """Points placed on the 128 px image, while the edit runs at 64 px."""
    return add(g, "40", "DragFusionPointsJSON", image=["3", 0], allow_empty=False,
               points_json=json.dumps({"version": 1, "width": 128, "height": 128, "pairs": pair([48, 48], [80, 56])}))


def latent_of_128(g):
    return add(g, "41", "VAEEncode", pixels=["3", 0], vae=["1", 2])


def solid(g, node, value, w=64, h=64):
    return add(g, node, "SolidMask", value=value, width=w, height=h)


def no_points_on_inversion(g):
    del g["9"]["inputs"]["points"]
    return g


def canvas(image=rc.IMAGE_64, points=None, mask=""):
    p = points if points is not None else json.dumps(G)
    return {"50": {"class_type": "DragFusionDragPoints", "inputs": {"image": image, "points": p, "mask": mask}},
            "51": {"class_type": "DragFusionPreviewDragPoints", "inputs": {"image": ["50", 0], "points": ["50", 1],
                                                                           "mask": ["50", 2], "mask_opacity": 0.4}}}


def pni(**over):
    g = rg.pni_graph(variant=0, steps=2)
    g["30"]["inputs"].update(over)
    return g


def pni_model(g, node_in, ckpt=None, sampling=None):
    if ckpt:
        add(g, "1b", "CheckpointLoaderSimple", ckpt_name=ckpt)
        src = ["1b", 0]
    else:
        src = ["1", 0]
    if sampling:
        add(g, "2b", "ModelSamplingDiscrete", model=src, sampling=sampling, zsnr=False)
        src = ["2b", 0]
    g[node_in]["inputs"]["model"] = src
    return g


def dual(**over):
    g = rg.pni_graph(variant=0, steps=2, dual=True)
    g["31"]["inputs"].update(over)
    return g


def image_prompt(weights, gamma=1.0):
    return {"60": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": rc.CLIP_VISION_NAME}},
            "61": {"class_type": "DragFusionLoadDragBenchSample", "inputs": {"sample": rg.SAMPLE, "size": "fit 128 (multiple of 8)"}},
            "62": {"class_type": "CLIPVisionEncode", "inputs": {"clip_vision": ["60", 0], "image": ["61", 0], "crop": "center"}},
            "63": {"class_type": "DragFusionImagePromptEncoder", "inputs": {"clip_vision_output": ["62", 0], "weights": weights}},
            "64": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": harness.TINY_CKPT}},
            "65": {"class_type": "DragFusionApplyImagePrompt", "inputs": {"model": ["64", 0], "image_prompt": ["63", 0],
                                                                          "gamma": gamma, "block_weights": ""}},
            "66": {"class_type": "ModelMergeSimple", "inputs": {"model1": ["65", 0], "model2": ["64", 0], "ratio": 0.5}},
            "67": {"class_type": "CheckpointSave", "inputs": {"model": ["66", 0], "clip": ["64", 1], "vae": ["64", 2],
                                                              "filename_prefix": rc.TAG + "never"}}}


HUGE_INT = "1" + "0" * 400
NESTED = "[" * 100000 + "]" * 100000

# id: (graph builder, node id in the graph, class_type, input name)
CASES = {
    # --- Drag Points (JSON): the point-JSON parser -------------------------------------------------
    "json_malformed": (lambda: with_points_text("{not json"), "5", "DragFusionPointsJSON", "points_json"),
    "json_empty_string": (lambda: with_points_text(""), "5", "DragFusionPointsJSON", "points_json"),
    "json_array": (lambda: with_points_text("[1, 2]"), "5", "DragFusionPointsJSON", "points_json"),
    "json_deeply_nested": (lambda: with_points_text(NESTED), "5", "DragFusionPointsJSON", "points_json"),
    "json_no_pairs_key": (lambda: with_points_text('{"version": 1, "width": 64, "height": 64}'), "5", "DragFusionPointsJSON", "points_json"),
    "json_pairs_not_list": (lambda: with_points_text(pts("abc")), "5", "DragFusionPointsJSON", "points_json"),
    "json_pair_without_target": (lambda: with_points_text(pts([{"handle": [1, 2]}])), "5", "DragFusionPointsJSON", "points_json"),
    "json_coordinate_string": (lambda: with_points_text(pts(pair(["a", 2], [3, 4]))), "5", "DragFusionPointsJSON", "points_json"),
    "json_three_coordinates": (lambda: with_points_text(pts(pair([1, 2, 3], [3, 4]))), "5", "DragFusionPointsJSON", "points_json"),
    "points_outside_image": (lambda: with_points_text(pts(pair([100, 10], [20, 20]))), "5", "DragFusionPointsJSON", "points_json"),
    "target_outside_image": (lambda: with_points_text(pts(pair([10, 10], [20, 64]))), "5", "DragFusionPointsJSON", "points_json"),
    "points_negative": (lambda: with_points_text(pts(pair([-1, 5], [20, 20]))), "5", "DragFusionPointsJSON", "points_json"),
    "handle_equals_target": (lambda: with_points_text(pts(pair([20, 20], [20, 20]))), "5", "DragFusionPointsJSON", "points_json"),
    "no_pairs": (lambda: with_points_text(pts([])), "5", "DragFusionPointsJSON", "points_json"),
    "coordinate_nan": (lambda: with_points_text('{"pairs": [{"handle": [NaN, 5], "target": [20, 20]}]}'), "5", "DragFusionPointsJSON", "points_json"),
    "coordinate_inf": (lambda: with_points_text('{"pairs": [{"handle": [Infinity, 5], "target": [20, 20]}]}'), "5", "DragFusionPointsJSON", "points_json"),
    "coordinate_huge_float": (lambda: with_points_text(pts(pair([1e308, 5], [20, 20]))), "5", "DragFusionPointsJSON", "points_json"),
    "coordinate_huge_int": (lambda: with_points_text('{"pairs": [{"handle": [%s, 5], "target": [20, 20]}]}' % HUGE_INT), "5", "DragFusionPointsJSON", "points_json"),
    "size_huge_int": (lambda: with_points_text('{"width": %s, "height": 64, "pairs": []}' % HUGE_INT), "5", "DragFusionPointsJSON", "points_json"),
    "too_many_pairs": (lambda: with_points_text(pts(pair([1, 1], [2, 2]) * 65)), "5", "DragFusionPointsJSON", "points_json"),
    "points_for_other_size": (lambda: with_points_text(pts(width=512, height=512)), "5", "DragFusionPointsJSON", "points_json"),
    "json_version_2": (lambda: with_points_text(pts(version=2)), "5", "DragFusionPointsJSON", "points_json"),
    "json_fractional_width": (lambda: with_points_text(pts(width=64.5)), "5", "DragFusionPointsJSON", "points_json"),
    # --- Inversion with Attention Capture ------------------------------------------------------------
    "edit_step_outside_schedule": (lambda: set_in(edit(), "9", edit_step=2), "9", "DragFusionInvertCapture", "edit_step"),
    "inversion_points_other_image": (lambda: set_in(points_on_128(edit()), "9", points=["40", 0]), "9", "DragFusionInvertCapture", "points"),
    "model_inpaint_unet": (lambda: other_model(edit(), robust_models.INPAINT_NAME), "9", "DragFusionInvertCapture", "model"),
    "model_x0_prediction": (lambda: set_in(edit(), "2", sampling="x0"), "9", "DragFusionInvertCapture", "model"),
    "unknown_custom_layer": (lambda: set_in(edit(), "9", layers="custom", custom_layers="nope.1.0"), "9", "DragFusionInvertCapture", "custom_layers"),
    "capture_step_outside": (lambda: set_in(edit(), "9", capture_steps="5"), "9", "DragFusionInvertCapture", "capture_steps"),
    "latent_16_channels": (lambda: set_in(add(edit(), "42", "EmptySD3LatentImage", width=64, height=64, batch_size=1),
                                          "9", latent=["42", 0]), "9", "DragFusionInvertCapture", "latent"),
    "steps_zero": (lambda: set_in(edit(), "9", steps=0), "9", "DragFusionInvertCapture", "steps"),
    # --- AutoMask --------------------------------------------------------------------------------------
    "tau_zero": (lambda: set_in(edit(), "13", tau=0.0), "13", "DragFusionAutoMask", "tau"),
    "tau_negative": (lambda: set_in(edit(), "13", tau=-1.0), "13", "DragFusionAutoMask", "tau"),
    "tau_nan": (lambda: set_in(edit(), "13", tau=math.nan), "13", "DragFusionAutoMask", "tau"),
    "automask_mask_wrong_size": (lambda: set_in(solid(edit(), "43", 1.0, 40, 40), "13", mask=["43", 0]), "13", "DragFusionAutoMask", "mask"),
    "automask_step_not_captured": (lambda: set_in(edit(), "13", steps="9"), "13", "DragFusionAutoMask", "steps"),
    "automask_points_other_image": (lambda: set_in(points_on_128(no_points_on_inversion(edit())), "13", points=["40", 0]),
                                    "13", "DragFusionAutoMask", "points"),
    # --- Semantic Move ---------------------------------------------------------------------------------
    "move_all_zero_mask": (lambda: set_in(edit(), "14", mask=["10", 0]), "14", "DragFusionSemanticMove", "mask"),
    "move_latent_other_image": (lambda: set_in(latent_of_128(edit()), "14", latent=["41", 0]), "14", "DragFusionSemanticMove", "latent"),
    "move_mask_wrong_size": (lambda: set_in(solid(edit(), "43", 1.0, 40, 40), "14", mask=["43", 0]), "14", "DragFusionSemanticMove", "mask"),
    # --- Attention Interpolate ---------------------------------------------------------------------------
    "interpolate_all_one_mask": (lambda: set_in(solid(edit(), "44", 1.0), "15", mask=["44", 0]), "15", "DragFusionAttentionInterpolate", "mask"),
    "inpaint_all_zero_mask": (lambda: set_in(edit(), "15", mask=["10", 0], mode="inpaint"), "15", "DragFusionAttentionInterpolate", "mask"),
    "interpolate_latent_other_image": (lambda: set_in(latent_of_128(edit()), "15", latent=["41", 0]), "15", "DragFusionAttentionInterpolate", "latent"),
    # --- KV consistency ----------------------------------------------------------------------------------
    "kv_capture_without_values": (lambda: set_in(edit(), "9", capture_values=False), "16", "DragFusionKVConsistency", "capture"),
    # --- Load DragBench Sample ---------------------------------------------------------------------------
    "sample_dotdot": (lambda: set_in(edit(), "3", sample="../input/" + rg.SAMPLE), "3", "DragFusionLoadDragBenchSample", "sample"),
    "sample_absolute": (lambda: set_in(edit(), "3", sample="/etc"), "3", "DragFusionLoadDragBenchSample", "sample"),
    "sample_missing": (lambda: set_in(edit(), "3", sample="dragfusion_data/no_such_sample"), "3", "DragFusionLoadDragBenchSample", "sample"),
    # --- Drag Points (canvas) ------------------------------------------------------------------------------
    "canvas_image_dotdot": (lambda: canvas(image="../main.py"), "50", "DragFusionDragPoints", "image"),
    "canvas_mask_dotdot": (lambda: canvas(mask="../" + rc.IMAGE_64), "50", "DragFusionDragPoints", "mask"),
    "canvas_mask_wrong_size": (lambda: canvas(mask=rc.MASK_40), "50", "DragFusionDragPoints", "mask"),
    "canvas_no_pairs_empty_mask": (lambda: canvas(points=pts([]), mask=rc.MASK_EMPTY), "50", "DragFusionDragPoints", "points"),
    # --- PNI Invert / PNI Guider ---------------------------------------------------------------------------
    "pni_eta_nan": (lambda: pni(eta=math.nan), "30", "DragFusionPNIInvert", "eta"),
    "pni_lambda_negative": (lambda: pni(lam=-1.0), "30", "DragFusionPNIInvert", "lam"),
    "pni_all_zero_latent": (lambda: set_in(add(pni(), "42", "EmptyLatentImage", width=64, height=64, batch_size=1),
                                           "30", latent=["42", 0]), "30", "DragFusionPNIInvert", "latent"),
    "pni_model_x0_prediction": (lambda: pni_model(pni(), "30", sampling="x0"), "30", "DragFusionPNIInvert", "model"),
    "pni_model_inpaint_unet": (lambda: pni_model(pni(), "30", ckpt=robust_models.INPAINT_NAME), "30", "DragFusionPNIInvert", "model"),
    "pni_guider_model_x0_prediction": (lambda: pni_model(pni(), "31", sampling="x0"), "31", "DragFusionPNIGuider", "model"),
    "pni_guider_other_schedule": (lambda: set_in(add(pni(), "45", "BasicScheduler", model=["1", 0], scheduler="normal", steps=3, denoise=1.0),
                                                 "34", sigmas=["45", 0]), "34", "DragFusionPNIGuider", "inversion"),
    # --- Dual-Branch Guider ----------------------------------------------------------------------------------
    "dual_drag_without_points": (lambda: dual(points=None), "31", "DragFusionDualBranchGuider", "points"),
    "dual_move_without_mask": (lambda: dual(task="move"), "31", "DragFusionDualBranchGuider", "mask"),
    "dual_outpaint_without_padding": (lambda: dual(task="outpaint"), "31", "DragFusionDualBranchGuider", "pad_left"),
    "dual_model_inpaint_unet": (lambda: pni_model(dual(), "31", ckpt=robust_models.INPAINT_NAME), "31", "DragFusionDualBranchGuider", "model"),
    # --- Apply Image Prompt (the weights-file cases run in-process: test_robust_safety.py) ----------------------
    "gamma_out_of_range": (lambda: image_prompt(rc.GOOD_IP, gamma=20.0), "65", "DragFusionApplyImagePrompt", "gamma"),
    # --- combo values that are not among the options: ComfyUI 0.3.75 does not check V3 combos itself ----------
    "combo_layers": (lambda: set_in(edit(), "9", layers="everything"), "9", "DragFusionInvertCapture", "layers"),
    "combo_scheduler": (lambda: set_in(edit(), "9", scheduler="bogus"), "9", "DragFusionInvertCapture", "scheduler"),
    "combo_reference": (lambda: set_in(edit(), "13", reference="bogus"), "13", "DragFusionAutoMask", "reference"),
    "combo_mask_mode": (lambda: set_in(edit(), "13", mask_mode="bogus"), "13", "DragFusionAutoMask", "mask_mode"),
    "combo_fill": (lambda: set_in(edit(), "15", fill="bogus"), "15", "DragFusionAttentionInterpolate", "fill"),
    "combo_mode": (lambda: set_in(edit(), "15", mode="bogus"), "15", "DragFusionAttentionInterpolate", "mode"),
    "combo_size": (lambda: set_in(edit(), "3", size="fit 99"), "3", "DragFusionLoadDragBenchSample", "size"),
    "combo_prox": (lambda: pni(prox="L2"), "30", "DragFusionPNIInvert", "prox"),
    "combo_pni_scheduler": (lambda: pni(scheduler="bogus"), "30", "DragFusionPNIInvert", "scheduler"),
    "combo_task": (lambda: dual(task="bogus"), "31", "DragFusionDualBranchGuider", "task"),
    "combo_kv_layers": (lambda: dual(kv_layers="bogus"), "31", "DragFusionDualBranchGuider", "kv_layers"),
}


def _clean(g):
    return {k: v for k, v in g.items()}


def _strip_none(g):
    for n in g.values():
        for k in [k for k, v in n["inputs"].items() if v is None]:
            del n["inputs"][k]
    return g


def _display(object_info, class_type):
    return object_info[class_type]["display_name"]


def good_prompt():
    """The good edit with a target moved by a fraction of a pixel: the pack's nodes run again."""
    i = next(_fresh)
    p = json.loads(json.dumps(G))
    p["pairs"][0]["target"] = [40 + (i % 97) / 100.0, 28]
    return rg.edit_graph(variant=0, steps=2, edit_step=1, points=p, prefix=rc.TAG + "good")


# Cases refused before any model work (parsers, file names): the good prompt after them is the cheap
# points -> preview graph (still the pack's nodes, executed afresh); after the others, a whole edit.
PARSER_NODES = {"DragFusionPointsJSON", "DragFusionLoadDragBenchSample", "DragFusionDragPoints"}


def cheap_good_prompt():
    i = next(_fresh)
    p = json.loads(json.dumps(G))
    p["pairs"][0]["target"] = [40 + (i % 97) / 100.0, 28]
    g = {k: v for k, v in rg.edit_graph(variant=0).items() if k in ("3", "4")}
    g["5"] = {"class_type": "DragFusionPointsJSON", "inputs": {"image": ["4", 0], "points_json": json.dumps(p), "allow_empty": False}}
    g["52"] = {"class_type": "DragFusionPreviewDragPoints", "inputs": {"image": ["4", 0], "points": ["5", 0], "mask_opacity": 0.4}}
    return g


def assert_names(text: str, display: str, input_name: str):
    assert f"{display}: input '{input_name}'" in text, text[:2000]


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_named_and_the_server_survives(server, object_info, data_dir, case):
    build, node, class_type, input_name = CASES[case]
    g = _strip_none(build())
    display = _display(object_info, class_type)
    r = server.queue(g)
    good = server.queue(cheap_good_prompt() if class_type in PARSER_NODES else good_prompt())  # right behind the bad one
    if "prompt_id" not in r:
        # Rejected at validation: node_errors must name the node and the input.
        assert r.get("http_error") == 400, r
        errors = r["body"].get("node_errors", {})
        assert node in errors, json.dumps(r["body"])[:3000]
        assert errors[node]["class_type"] == class_type
        named = [e for e in errors[node]["errors"]
                 if e.get("extra_info", {}).get("input_name") == input_name or f"'{input_name}'" in e.get("details", "")
                 or input_name in e.get("details", "").split()]
        assert named, json.dumps(errors[node])[:2000]
    else:
        hist = server.wait(r["prompt_id"], timeout=300)
        assert hist["status"]["status_str"] == "error", f"{case}: no error"
        err = harness.execution_error(hist)
        assert err is not None, hist["status"]
        assert err["exception_type"] == "ValueError", f"{err['exception_type']}: {err['exception_message'][:1500]}"
        assert_names(err["exception_message"], display, input_name)
        if class_type.startswith("DragFusion") and node in g and g[node]["class_type"] == class_type:
            assert err["node_type"] == class_type, err["node_type"]
    assert server.get("/system_stats", timeout=10)
    assert "prompt_id" in good, good
    hist = server.wait(good["prompt_id"], timeout=300)
    assert hist["status"]["status_str"] == "success", harness.execution_error(hist)


def test_at_least_thirty_kinds():
    assert len(CASES) >= 30
