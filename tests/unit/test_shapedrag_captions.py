"""ShapeDrag captions and the caption scorer (bench/shapedrag/captions.py) on rendered scenes."""
import dataclasses
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "bench"))
from shapedrag import captions, scenes  # noqa: E402


def test_caption_names_every_object_left_to_right():
    for seed in range(40):
        sc = scenes.make_scene(seed)
        text = captions.caption(sc)
        named = captions.parse(text)
        objs = sorted(sc.objects, key=lambda o: o.cx)
        assert named == [(captions.colour_name(o.hue), captions.shape_name(o)) for o in objs], text
        assert text.endswith(f"on a {captions.BACKGROUNDS[sc.bg['texture']]} background")
        assert all(c in captions.COLOURS and s in scenes.SHAPES for c, s in named)


def test_caption_wording():
    sc = scenes.make_scene(0)
    o = scenes.random_object(np.random.default_rng(0), 128, 0)
    a = dataclasses.replace(o, shape="circle", cx=30.0, hue=2.0)
    b = dataclasses.replace(o, shape="triangle", cx=90.0, hue=238.0)
    sc.bg["texture"] = "checker"
    assert captions.caption(sc, [b, a]) == "a red circle and a blue triangle on a checkered background"
    assert captions.caption(sc, []) == "a checkered background"
    c = dataclasses.replace(o, shape="hexagon", cx=60.0, hue=118.0)
    assert captions.caption(sc, [a, b, c]) == "a red circle, a green hexagon and a blue triangle on a checkered background"


def test_quadrilaterals_are_named_by_their_corners():
    o = scenes.random_object(np.random.default_rng(1), 128, 2)
    # scenes' "square" at angle 0 has its corners on the axes (it looks like a diamond), and vice versa
    assert captions.shape_name(dataclasses.replace(o, shape="square", angle=0.0)) == "diamond"
    assert captions.shape_name(dataclasses.replace(o, shape="square", angle=math.pi / 4)) == "square"
    assert captions.shape_name(dataclasses.replace(o, shape="diamond", angle=0.0)) == "square"
    assert captions.shape_name(dataclasses.replace(o, shape="diamond", angle=math.pi / 2 + 0.1)) == "square"
    assert captions.shape_name(dataclasses.replace(o, shape="diamond", angle=math.pi / 4)) == "diamond"


def test_scorer_is_right_on_rendered_objects():
    right = wrong_shape_rejected = total = 0
    for seed in range(1000, 1060):
        sc = scenes.make_scene(seed)
        img = scenes.render(sc)
        for o in sc.objects:
            col, shp = captions.colour_name(o.hue), captions.shape_name(o)
            total += 1
            right += captions.contains(img, col, shp)
            others = [s for s in ("circle", "ellipse", "square", "triangle", "hexagon") if not captions.same_shape(s, shp)]
            wrong_shape_rejected += not any(captions.contains(img, col, s) for s in others)
    assert total >= 100
    assert right / total >= 0.95, (right, total)
    assert wrong_shape_rejected / total >= 0.95, (wrong_shape_rejected, total)


def test_check_counts_named_objects():
    sc = scenes.make_scene(5)
    img = scenes.render(sc)
    r = captions.check(img, captions.caption(sc))
    assert r == dict(n=len(sc.objects), both=len(sc.objects), colour=len(sc.objects), shape=len(sc.objects), all=True)
    bg = scenes.render(sc, objects=[])
    r = captions.check(bg, captions.caption(sc))
    assert r["both"] == r["colour"] == 0 and not r["all"]
    assert not captions.contains(bg, "red") and not captions.contains_shape(bg, "circle")


def test_components_and_holes():
    m = np.zeros((12, 12), bool)
    m[1:5, 1:5] = True
    m[2:4, 2:4] = False                 # a hole
    m[8:11, 7:9] = True
    comps = captions.components(m)
    assert [int(c.sum()) for c in comps] == [12, 6]
    filled = captions.fill_holes(comps[0])
    assert filled[2:4, 2:4].all() and int(filled.sum()) == 16


def test_install_prefers_the_files_cross_attention(tmp_path):
    """scripts/install_shapedrag.py: tensors the trained file carries (trained to_k / to_v) win over the
    tiny checkpoint's; what it lacks (CLIP, or frozen to_k / to_v) comes from the tiny checkpoint."""
    from safetensors.numpy import load_file, save_file
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "scripts"))
    import install_shapedrag
    k_kv = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    k_v = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_v.weight"
    k_clip = "cond_stage_model.transformer.text_model.final_layer_norm.weight"
    k_conv = "model.diffusion_model.out.2.weight"
    one = np.ones((2, 2), np.float16)
    save_file({k_kv: one * 0, k_v: one * 0, k_clip: one * 0, k_conv: one * 0}, str(tmp_path / "tiny.safetensors"))
    save_file({k_kv: one, k_conv: one * 2}, str(tmp_path / "trained.safetensors"), metadata={"x": "1"})
    n = install_shapedrag.assemble(str(tmp_path / "trained.safetensors"), str(tmp_path / "tiny.safetensors"),
                                   str(tmp_path / "out.safetensors"))
    out = load_file(str(tmp_path / "out.safetensors"))
    assert n == 2 and set(out) == {k_kv, k_v, k_clip, k_conv}
    assert (out[k_kv] == 1).all() and (out[k_conv] == 2).all() and (out[k_v] == 0).all()
