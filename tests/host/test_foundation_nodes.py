"""The first nodes, executed in the real ComfyUI imported in-process."""

import pytest
import torch

import harness

SAMPLE = "dragfusion_data/dragbench-dev/animals/JH_2023-09-14-1820-16"
DRAG100 = "dragfusion_data/drag100/art_0"


@pytest.fixture(scope="module")
def linked(host, data_dir):
    harness.ensure_data_link()


def test_points_json_node(host):
    img = torch.zeros(1, 48, 64, 3)
    out = harness.run_node("DragFusionPointsJSON", image=img,
                           points_json='{"pairs": [{"handle": [10, 20], "target": [30, 20]}]}')
    pts = out.result[0]
    assert (pts.width, pts.height) == (64, 48)
    assert pts.pairs == (((10.0, 20.0), (30.0, 20.0)),)


def test_points_json_node_rejects_outside(host):
    with pytest.raises(ValueError, match=r"Drag Points \(JSON\): input 'points_json': pair 1: target"):
        harness.run_node("DragFusionPointsJSON", image=torch.zeros(1, 48, 64, 3),
                         points_json='{"pairs": [{"handle": [10, 20], "target": [64, 20]}]}')


def test_load_dragbench_sample(host, linked):
    image, pts, mask, prompt = harness.run_node("DragFusionLoadDragBenchSample", sample=SAMPLE, size="original").result
    assert image.shape == (1, 512, 512, 3) and image.dtype == torch.float32
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert mask.shape == (1, 512, 512) and set(mask.unique().tolist()) <= {0.0, 1.0}
    assert 0 < float(mask.mean()) < 1
    assert prompt == "a photo of a dog"
    assert pts.pairs == (((331.0, 179.0), (217.0, 177.0)),)


def test_load_sample_fit512_scales_points(host, linked):
    sample = "dragfusion_data/dragbench-dev/building_countryside_view/YAN_2023-09-16-1536-24"
    image0, pts0, _, _ = harness.run_node("DragFusionLoadDragBenchSample", sample=sample, size="original").result
    image, pts, mask, _ = harness.run_node("DragFusionLoadDragBenchSample", sample=sample, size="fit 512 (multiple of 8)").result
    h, w = image.shape[1:3]
    assert max(h, w) == 512 and h % 8 == 0 and w % 8 == 0 and mask.shape[1:] == (h, w)
    assert (pts.width, pts.height) == (w, h)
    sx = w / image0.shape[2]
    assert pts.pairs[0][0][0] == pytest.approx(pts0.pairs[0][0][0] * sx)


def test_load_drag100_sample(host, linked):
    image, pts, mask, prompt = harness.run_node("DragFusionLoadDragBenchSample", sample=DRAG100, size="original").result
    assert image.ndim == 4 and len(pts.pairs) >= 1 and prompt == ""
    assert mask.shape[1:] == image.shape[1:3]


@pytest.mark.parametrize("sample, fragment", [
    ("../../etc", "without '..'"),
    ("/etc", "without '..'"),
    ("dragfusion_data/nope", "no folder"),
    ("dragfusion_data", "neither DragBench"),
    ("", "empty"),
])
def test_load_sample_bad_paths(host, linked, sample, fragment):
    with pytest.raises(ValueError, match=r"Load DragBench Sample: input 'sample': .*" + fragment.replace(".", r"\.")):
        harness.run_node("DragFusionLoadDragBenchSample", sample=sample, size="original")


def test_preview_draws_arrows_and_mask(host):
    from dragfusion.guidance.drag_points import DragPoints
    img = torch.full((1, 64, 64, 3), 0.5)
    mask = torch.zeros(1, 64, 64)
    mask[:, :, 40:] = 1
    pts = DragPoints(64, 64, (((10.0, 10.0), (30.0, 10.0)),))
    out = harness.run_node("DragFusionPreviewDragPoints", image=img, points=pts, mask=mask, mask_opacity=0.5).result[0]
    assert out.shape == img.shape
    # handle is red, target blue, the masked half is tinted, the rest of the image untouched
    assert out[0, 10, 10, 0] > 0.8 and out[0, 10, 10, 2] < 0.3
    assert out[0, 10, 30, 2] > 0.8 and out[0, 10, 30, 0] < 0.3
    assert out[0, 60, 50, 0] > 0.6 and out[0, 60, 50, 2] < 0.4
    assert (out[0, 60, 5:20] - img[0, 60, 5:20]).abs().max() <= 1 / 255  # 8-bit round trip only


def test_every_node_has_tooltips(host):
    for node_id in harness.pack_node_ids(host):
        info = host.NODE_CLASS_MAPPINGS[node_id].GET_NODE_INFO_V1()
        for section in ("required", "optional"):
            for name, spec in info["input"].get(section, {}).items():
                opts = spec[1] if len(spec) > 1 else {}
                assert opts.get("tooltip"), f"{node_id}.{name} has no tooltip"


def test_bundled_samples_without_the_input_link(host, tmp_path):
    """A user's clone in custom_nodes/ without scripts/setup: 'dragfusion_data/...' comes from the pack's data/."""
    import dragfusion.nodes.dragbench as db
    empty_input = str(tmp_path)
    path = db.resolve_sample(SAMPLE, empty_input)
    assert path == db.os.path.join(db.PACK_DATA, "dragbench-dev", "animals", "JH_2023-09-14-1820-16")
    image, pts, _, prompt = db.load_sample(path)
    assert image.shape == (1, 512, 512, 3) and prompt == "a photo of a dog"
    with pytest.raises(ValueError, match="no folder 'dragfusion_data/no_such'"):
        db.resolve_sample("dragfusion_data/no_such", empty_input)
    with pytest.raises(ValueError, match="without '..'"):
        db.resolve_sample("dragfusion_data/../../etc", empty_input)
    with pytest.raises(ValueError, match="no folder 'other/x'"):  # only the pack's own prefix falls back
        db.resolve_sample("other/x", empty_input)
