"""DRAG_POINTS parsing and validation (pure Python, no ComfyUI)."""
import json
import math

import pytest
from hypothesis import given, settings, strategies as st

from dragfusion.guidance.drag_points import MAX_PAIRS, DragPoints
from dragfusion.guidance.errors import input_error

NODE, INP = "Drag Points (JSON)", "points_json"


def pj(pairs, w=64, h=48, **extra):
    return json.dumps({"version": 1, "width": w, "height": h,
                       "pairs": [{"handle": hh, "target": t} for hh, t in pairs], **extra})


def test_roundtrip_and_cells():
    p = DragPoints.from_json(pj([([8, 16], [24, 40])]), NODE, INP)
    assert p.pairs == (((8.0, 16.0), (24.0, 40.0)),)
    assert (p.width, p.height) == (64, 48)
    assert p.in_cells(8) == [((1.0, 2.0), (3.0, 5.0))]
    assert DragPoints.from_json(p.to_json(), NODE, INP) == p


def test_size_filled_from_image_and_must_match():
    text = json.dumps({"pairs": [{"handle": [1, 1], "target": [5, 5]}]})
    assert DragPoints.from_json(text, NODE, INP, width=32, height=16).width == 32
    with pytest.raises(ValueError, match=r"Drag Points \(JSON\): input 'points_json': .*64x48.*32x16"):
        DragPoints.from_json(pj([([1, 1], [5, 5])]), NODE, INP, width=32, height=16)


@pytest.mark.parametrize("text, fragment", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    (json.dumps({"version": 2, "width": 8, "height": 8, "pairs": []}), "unsupported version"),
    (json.dumps({"width": "a", "height": 8, "pairs": []}), "'width' must be a whole number"),
    (json.dumps({"width": 8, "height": 8, "pairs": {}}), "'pairs' must be a list"),
    (json.dumps({"width": 8, "height": 8, "pairs": [{"handle": [1, 1]}]}), "pair 1 must be an object"),
    (json.dumps({"width": 8, "height": 8, "pairs": [{"handle": [1], "target": [2, 2]}]}), "'handle' must be"),
    (json.dumps({"width": 8, "height": 8, "pairs": [{"handle": [1, True], "target": [2, 2]}]}), "'handle' must be"),
    (pj([([70, 1], [5, 5])]), "outside the 64x48 image"),
    (pj([([1, 1], [5, 48])]), "outside the 64x48 image"),
    (pj([([-1, 1], [5, 5])]), "outside"),
    (pj([([3, 3], [3, 3])]), "same point"),
    (pj([]), "no handle -> target pairs"),
    (pj([([1, 1], [2, 2])] * (MAX_PAIRS + 1)), "at most"),
    ('{"width": 8, "height": 8, "pairs": [{"handle": [NaN, 1], "target": [2, 2]}]}', "not a finite number"),
    ('{"width": 8, "height": 8, "pairs": [{"handle": [Infinity, 1], "target": [2, 2]}]}', "not a finite number"),
    (pj([([1, 1], [1e308, 2])]), "outside"),
    (json.dumps({"width": 0, "height": 8, "pairs": []}), "image size"),
])
def test_bad_json_names_node_and_input(text, fragment):
    with pytest.raises(ValueError) as e:
        DragPoints.from_json(text, NODE, INP)
    assert str(e.value).startswith(f"{NODE}: input '{INP}': ")
    assert fragment in str(e.value)


def test_empty_allowed_when_not_required():
    assert DragPoints.from_json(pj([]), NODE, INP, require_pairs=False).pairs == ()


def test_flat_dragbench_form():
    p = DragPoints.from_flat([[1, 2], [3, 4], [5, 6], [7, 8]], 16, 16, "n", "i")
    assert p.pairs == (((1.0, 2.0), (3.0, 4.0)), ((5.0, 6.0), (7.0, 8.0)))
    with pytest.raises(ValueError, match="alternating"):
        DragPoints.from_flat([[1, 2]], 16, 16, "n", "i")


def test_scaled_and_check_size():
    p = DragPoints(100, 50, (((10.0, 10.0), (50.0, 20.0)),))
    s = p.scaled(200, 100)
    assert s.pairs == (((20.0, 20.0), (100.0, 40.0)),)
    with pytest.raises(ValueError, match="placed on a 100x50 image"):
        p.check_size(64, 64, "n", "points")


def test_input_error_shape():
    assert str(input_error("Node", "x", "bad")) == "Node: input 'x': bad"


coord = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**9, 10**9),
                  st.text(max_size=3), st.none(), st.booleans())
pair = st.fixed_dictionaries({"handle": st.lists(coord, min_size=0, max_size=3),
                              "target": st.lists(coord, min_size=0, max_size=3)})
doc = st.one_of(
    st.fixed_dictionaries({"version": st.sampled_from([1, 1, 2, "1"]), "width": coord, "height": coord,
                           "pairs": st.one_of(st.lists(pair, max_size=4), coord)}),
    st.lists(st.integers(), max_size=3), st.text(max_size=20), st.integers())


@settings(max_examples=300, deadline=None)
@given(doc)
def test_fuzz_parser_only_raises_clear_errors(d):
    """Whatever the JSON, the parser returns valid points or raises our ValueError; nothing else."""
    text = d if isinstance(d, str) else json.dumps(d, allow_nan=True)
    try:
        p = DragPoints.from_json(text, NODE, INP)
    except ValueError as e:
        assert str(e).startswith(f"{NODE}: input '{INP}': "), str(e)
        return
    assert p.pairs and 0 < p.width and 0 < p.height
    for (hx, hy), (tx, ty) in p.pairs:
        assert all(math.isfinite(c) for c in (hx, hy, tx, ty))
        assert 0 <= hx < p.width and 0 <= ty < p.height
