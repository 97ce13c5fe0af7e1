"""Drag Points (canvas node) in the real host, in-process: point JSON -> DRAG_POINTS, mask PNG -> MASK,
bad inputs -> errors that name the node and the input."""
import json
import os
import uuid

import numpy as np
import pytest
from PIL import Image

import harness

NODE_ID = "DragFusionDragPoints"
W, H = 96, 64


@pytest.fixture(scope="module")
def files(host):
    """A test image and masks in the host's input folder (removed afterwards)."""
    import folder_paths
    base = folder_paths.get_input_directory()
    tag = uuid.uuid4().hex[:8]
    made = []

    def put(rel, img):
        path = os.path.join(base, *rel.split("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        img.save(path)
        made.append(path)
        return rel

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
    alpha = np.zeros((H, W), np.uint8)
    alpha[10:30, 20:50] = 255
    rgba = np.dstack([np.full((H, W, 3), 255, np.uint8), alpha])
    grey = np.zeros((H, W), np.uint8)
    grey[40:60, 5:15] = 255
    out = {
        "rgb": rgb, "alpha": alpha > 0, "grey": grey > 0,
        "image": put(f"dragfusion_test_canvas_{tag}.png", Image.fromarray(rgb)),
        "mask_rgba": put(f"dragfusion_masks/test_rgba_{tag}.png", Image.fromarray(rgba, "RGBA")),
        "mask_grey": put(f"dragfusion_masks/test_grey_{tag}.png", Image.fromarray(grey, "L")),
        "mask_empty": put(f"dragfusion_masks/test_empty_{tag}.png", Image.fromarray(np.zeros((H, W), np.uint8), "L")),
        "mask_small": put(f"dragfusion_masks/test_small_{tag}.png", Image.fromarray(grey[:32, :48], "L")),
    }
    yield out
    for p in made:
        os.remove(p)


def points_json(pairs, w=W, h=H):
    return json.dumps({"version": 1, "width": w, "height": h,
                       "pairs": [{"handle": list(a), "target": list(b)} for a, b in pairs]})


def run(**inputs):
    out = harness.run_node(NODE_ID, **inputs)
    return out.args if hasattr(out, "args") else out


def test_registered_with_schema(host):
    cls = host.NODE_CLASS_MAPPINGS[NODE_ID]
    info = cls.GET_NODE_INFO_V1()
    assert info["category"] == "DragFusion/Points"
    assert info["output"] == ["IMAGE", "DRAG_POINTS", "MASK"]
    for section in info["input"].values():
        for name, spec in section.items():
            assert spec[1].get("tooltip"), f"input {name} has no tooltip"
    assert info["input"]["required"]["image"][1].get("image_upload") is True
    assert list(info["input"]["required"]) == ["image", "points", "mask"]


def test_points_json_to_drag_points(files):
    pairs = [((10, 20), (30, 25)), ((95, 63), (0, 0))]
    image, pts, mask = run(image=files["image"], points=points_json(pairs), mask="")[:3]
    assert tuple(image.shape) == (1, H, W, 3)
    np.testing.assert_allclose(image[0].numpy(), files["rgb"] / 255.0, atol=1e-6)
    assert (pts.width, pts.height) == (W, H)
    assert pts.pairs == tuple(((float(a), float(b)), (float(c), float(d))) for (a, b), (c, d) in pairs)
    assert tuple(mask.shape) == (1, H, W) and float(mask.sum()) == 0.0


def test_ui_reports_what_the_node_received(files):
    out = harness.run_node(NODE_ID, image=files["image"], points=points_json([((1, 2), (3, 4))]),
                           mask=files["mask_rgba"])
    assert out.ui["drag_points"][0]["pairs"] == [{"handle": [1.0, 2.0], "target": [3.0, 4.0]}]
    assert out.ui["mask_area"] == [int(files["alpha"].sum())]


@pytest.mark.parametrize("which", ["mask_rgba", "mask_grey"])
def test_mask_png_to_mask(files, which):
    expected = files["alpha"] if which == "mask_rgba" else files["grey"]
    _, _, mask = run(image=files["image"], points=points_json([((1, 1), (5, 5))]), mask=files[which])[:3]
    assert tuple(mask.shape) == (1, H, W)
    np.testing.assert_array_equal(mask[0].numpy() > 0.5, expected)
    assert set(np.unique(mask.numpy())) <= {0.0, 1.0}


def test_mask_without_pairs_is_inpainting(files):
    image, pts, mask = run(image=files["image"], points="", mask=files["mask_rgba"])[:3]
    assert pts.pairs == () and (pts.width, pts.height) == (W, H)
    assert float(mask.sum()) == float(files["alpha"].sum())


@pytest.mark.parametrize("points, mask, input_name, words", [
    ("{not json", "", "points", "not valid JSON"),
    (points_json([((10, 10), (200, 10))]), "", "points", "outside"),
    (points_json([((10, 10), (10, 10))]), "", "points", "same point"),
    (points_json([((10, 10), (20, 10))], w=512, h=512), "", "points", "512x512"),
    (points_json([]), "", "points", "no handle -> target pairs and no mask"),
    (points_json([]), "mask_empty", "points", "no mask"),
    (points_json([((1, 1), (5, 5))]), "mask_small", "mask", "48x32"),
    (points_json([((1, 1), (5, 5))]), "dragfusion_masks/missing.png", "mask", "no file"),
    (points_json([((1, 1), (5, 5))]), "../secret.png", "mask", "without '..'"),
    (points_json([((1, 1), (5, 5))]), "/etc/passwd", "mask", "relative"),
])
def test_bad_inputs_name_node_and_input(files, points, mask, input_name, words):
    mask = files.get(mask, mask)
    with pytest.raises(ValueError) as e:
        run(image=files["image"], points=points, mask=mask)
    msg = str(e.value)
    assert msg.startswith(f"Drag Points: input '{input_name}'"), msg
    assert words in msg, msg


def test_validate_inputs_rejects_missing_image(host):
    cls = host.NODE_CLASS_MAPPINGS[NODE_ID]
    msg = cls.validate_inputs(image="no_such_image_here.png", points="", mask="")
    assert isinstance(msg, str) and "Drag Points: input 'image'" in msg
    assert "Drag Points: input 'image'" in cls.validate_inputs(image="", points="", mask="")


def test_fingerprint_follows_mask_file_content(files):
    import folder_paths
    cls = harness.load_host().NODE_CLASS_MAPPINGS[NODE_ID]
    rel = f"dragfusion_masks/test_fp_{uuid.uuid4().hex[:8]}.png"
    path = os.path.join(folder_paths.get_input_directory(), *rel.split("/"))
    try:
        Image.fromarray(np.zeros((H, W), np.uint8), "L").save(path)
        a = cls.fingerprint_inputs(image=files["image"], points="{}", mask=rel)
        Image.fromarray(np.full((H, W), 255, np.uint8), "L").save(path)
        b = cls.fingerprint_inputs(image=files["image"], points="{}", mask=rel)
        assert a != b
        assert cls.fingerprint_inputs(image=files["image"], points="{}", mask=rel) == b
    finally:
        os.remove(path)
