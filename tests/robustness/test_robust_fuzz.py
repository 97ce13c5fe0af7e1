"""Property-based fuzzing (hypothesis) of the point-JSON parsers and of every validate() of the edge
dataclasses in guidance/: the only acceptable outcomes are success or our ValueError whose message
starts with "<node>: input '<input>': "."""
import dataclasses
import importlib
import json
import math
import pkgutil

import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import harness

pack = harness.import_pack()
from dragfusion.guidance.attn_capture import AttnCapture  # noqa: E402
from dragfusion.guidance.drag_points import DragPoints  # noqa: E402
from dragfusion.guidance.dual_branch_tasks import parse_landmarks_json  # noqa: E402
from dragfusion.guidance.image_prompt_tokens import ImagePrompt  # noqa: E402
from dragfusion.guidance.inversion_data import Inversion  # noqa: E402

NODE, INPUT = "Fuzz Node", "fuzz_input"
PREFIX = f"{NODE}: input '{INPUT}': "
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
FUZZED = {DragPoints, AttnCapture, Inversion, ImagePrompt}


def ours_or_success(fn, *args, **kw):
    try:
        return fn(*args, **kw)
    except ValueError as e:
        assert type(e) is ValueError, f"{type(e).__name__}: {e}"
        assert str(e).startswith(PREFIX), str(e)[:500]
        return None


# ---------------------------------------------------------------------------------- strategies
numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10 ** 400), max_value=10 ** 400),
    st.integers(min_value=-5, max_value=600),
    st.sampled_from([0, 0.5, 63.999, 64, -0.0, 1e-300, 1e308, 2 ** 63, True, False]),
)
json_scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=8))
json_values = st.recursive(json_scalars, lambda c: st.one_of(st.lists(c, max_size=4),
                                                             st.dictionaries(st.text(max_size=6), c, max_size=4)),
                           max_leaves=12)
xy = st.one_of(st.lists(numbers, min_size=0, max_size=3), st.tuples(numbers, numbers), json_values)
pair = st.one_of(st.fixed_dictionaries({"handle": xy, "target": xy}), json_values)
points_doc = st.fixed_dictionaries(
    {"pairs": st.one_of(st.lists(pair, max_size=5), json_values)},
    optional={"version": st.one_of(st.just(1), json_values), "width": st.one_of(st.just(64), numbers, json_values),
              "height": st.one_of(st.just(64), numbers, json_values)})


def dumps(doc) -> str:
    try:
        return json.dumps(doc)
    except (ValueError, OverflowError):
        return "{}"


# ------------------------------------------------------------------------------- the parsers
@FUZZ
@given(st.text(max_size=200))
def test_point_json_parser_on_any_text(text):
    ours_or_success(DragPoints.from_json, text, NODE, INPUT, width=64, height=64)


@FUZZ
@given(points_doc, st.booleans())
def test_point_json_parser_on_point_like_documents(doc, require_pairs):
    out = ours_or_success(DragPoints.from_json, dumps(doc), NODE, INPUT, width=64, height=64,
                          require_pairs=require_pairs)
    if out is not None:  # what it accepts is inside the image, finite and not a zero drag
        assert (out.width, out.height) == (64, 64)
        for (hx, hy), (tx, ty) in out.pairs:
            assert all(math.isfinite(v) for v in (hx, hy, tx, ty))
            assert 0 <= hx < 64 and 0 <= tx < 64 and 0 <= hy < 64 and 0 <= ty < 64
            assert (hx, hy) != (tx, ty)


@FUZZ
@given(json_values, st.one_of(st.none(), st.integers(-3, 300)))
def test_point_json_parser_on_any_json_value(value, size):
    ours_or_success(DragPoints.from_json, dumps(value), NODE, INPUT, width=size, height=size)


def test_point_json_parser_on_deep_nesting_and_huge_numbers():
    for text in ("[" * 100000 + "]" * 100000, '{"pairs": ' + "[" * 50000 + "]" * 50000 + "}",
                 '{"pairs": [{"handle": [1%s, 2], "target": [3, 4]}]}' % ("0" * 400),
                 '{"width": 1%s, "height": 64, "pairs": []}' % ("0" * 400)):
        ours_or_success(DragPoints.from_json, text, NODE, INPUT, width=64, height=64)
    huge = int("1" + "0" * 400)
    for text in ("[" * 100000 + "]" * 100000,
                 json.dumps({"source": [[huge, 1]] + [[1, 1]] * 67, "target": [[1, 1]] * 68})):
        ours_or_success(parse_landmarks_json, text, 64, 64, NODE, INPUT)


@FUZZ
@given(st.one_of(st.lists(json_values, max_size=6), json_values), st.integers(1, 128), st.integers(1, 128))
def test_flat_points_parser(points, w, h):
    ours_or_success(DragPoints.from_flat, points, w, h, NODE, INPUT)


@FUZZ
@given(st.one_of(st.text(max_size=100), points_doc.map(dumps),
                 st.fixed_dictionaries({"source": st.lists(xy, min_size=68, max_size=68),
                                        "target": st.one_of(st.lists(xy, min_size=68, max_size=68), json_values)},
                                       optional={"width": numbers, "height": numbers}).map(dumps)))
def test_landmarks_json_parser(text):
    ours_or_success(parse_landmarks_json, text, 64, 64, NODE, INPUT)


# ------------------------------------------------------------------------------ the validates
def test_every_guidance_dataclass_with_validate_is_fuzzed():
    found = set()
    for info in pkgutil.iter_modules(pack.guidance.__path__ if hasattr(pack, "guidance") else
                                     importlib.import_module("dragfusion.guidance").__path__):
        mod = importlib.import_module(f"dragfusion.guidance.{info.name}")
        for obj in vars(mod).values():
            if isinstance(obj, type) and dataclasses.is_dataclass(obj) and callable(getattr(obj, "validate", None)) \
                    and obj.__module__ == mod.__name__:
                found.add(obj)
    assert found == FUZZED, f"fuzz these too: {sorted(c.__name__ for c in found - FUZZED)}"


@FUZZ
@given(st.one_of(st.integers(-10, 20000), st.integers(-(10 ** 30), 10 ** 30)),
       st.one_of(st.integers(-10, 20000), st.integers(-(10 ** 30), 10 ** 30)),
       st.lists(st.tuples(st.tuples(numbers, numbers), st.tuples(numbers, numbers)), max_size=70),
       st.booleans())
def test_drag_points_validate(w, h, pairs, require_pairs):
    ours_or_success(DragPoints(w, h, tuple(pairs)).validate, NODE, INPUT, require_pairs)


floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, 1.0, -1.0, 10.0, 11.0]))


def tensor(shape_st, values=st.floats(-100, 100)):
    return shape_st.flatmap(lambda shape: st.lists(st.one_of(values, st.sampled_from([math.nan, math.inf, -math.inf, 0.0])),
                                                   min_size=math.prod(shape), max_size=math.prod(shape))
                            .map(lambda v: torch.tensor(v, dtype=torch.float32).reshape(shape)))


small_shapes = st.lists(st.integers(0, 3), min_size=0, max_size=4).map(tuple)


@FUZZ
@given(tensor(st.integers(0, 6).map(lambda n: (n,))), st.integers(0, 7), floats, floats, st.text(max_size=3),
       floats, st.integers(-3, 9), st.data())
def test_inversion_validate(sigmas, n_traj, cfg, lam, prox, eta, guidance_until, data):
    if data.draw(st.booleans()):
        prox = data.draw(st.sampled_from(["L1", "L0"]))
    if data.draw(st.booleans()):  # a real descending schedule half the time
        n = data.draw(st.integers(1, 5))
        sigmas = torch.linspace(10, 0, n + 1)
        n_traj = data.draw(st.sampled_from([n + 1, n, 0]))
    traj = tuple(torch.zeros(1, 4, 2, 2) for _ in range(n_traj))
    inv = Inversion(sigmas=sigmas, trajectory=traj, source_cond=[], cfg=cfg, lam=lam, prox=prox, eta=eta,
                    guidance_until=guidance_until)
    ours_or_success(inv.validate, NODE, INPUT)


@FUZZ
@given(tensor(small_shapes), tensor(small_shapes), floats,
       st.lists(st.tuples(tensor(small_shapes), tensor(small_shapes)), max_size=3), st.data())
def test_image_prompt_validate(cond, uncond, gamma, kv, data):
    if data.draw(st.booleans()):
        b, t, d = data.draw(st.tuples(st.integers(1, 2), st.integers(1, 4), st.integers(1, 4)))
        cond = data.draw(tensor(st.just((b, t, d))))
        uncond = data.draw(tensor(st.just((b, t, d))))
        if data.draw(st.booleans()):
            kv = [(torch.zeros(3, d), torch.zeros(3, d))] * data.draw(st.integers(0, 2))
    if data.draw(st.booleans()):
        kv = kv + [(torch.zeros(1, 1),)]
    prompt = ImagePrompt(cond=cond, uncond=uncond, gamma=gamma, kv_weights=tuple(kv))
    ours_or_success(prompt.validate, NODE, INPUT)


@FUZZ
@given(st.tuples(st.integers(0, 4), st.integers(0, 4)), st.integers(0, 6), st.integers(-3, 8), st.integers(0, 6),
       st.lists(st.integers(-3, 8), max_size=4), st.lists(st.sampled_from(["output.0.0", "input.1.0", "x"]), max_size=3),
       st.data())
def test_attn_capture_validate(latent_hw, n_sigmas, edit_step, n_traj, steps, layers, data):
    keys = [(s, l) for s in steps for l in layers]
    present = [k for k in keys if data.draw(st.booleans())] if data.draw(st.booleans()) else keys
    t = torch.zeros(1, 1, 1, 1, dtype=torch.float16)
    layer_hw = {l: latent_hw for l in layers if data.draw(st.booleans())} if data.draw(st.booleans()) else \
        {l: latent_hw for l in layers}
    cap = AttnCapture(latent_hw=latent_hw, sigmas=torch.linspace(10, 0, n_sigmas), edit_step=edit_step,
                      trajectory=tuple(torch.zeros(1, 4, 1, 1) for _ in range(n_traj)), steps=tuple(steps),
                      layers=tuple(layers), layer_hw=layer_hw, q={k: t for k in present}, k={k: t for k in present})
    ours_or_success(cap.validate, NODE, INPUT)
