"""ShapeDrag-GT (bench/shapedrag/tasks.py, task_metrics.py): the rendered ground truths and the metrics
against known answers. Pure numpy / scipy / scikit-image, no model."""
import math
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "bench"))
from shapedrag import scenes, task_metrics as tm, tasks  # noqa: E402

N = 2


@pytest.fixture(scope="module")
def samples():
    return {t: tasks.make_tasks(t, N, seed=0) for t in tasks.TASKS}


def test_deterministic_and_seeded():
    a, b = tasks.make_task("drag", 0, 1), tasks.make_task("drag", 0, 1)
    assert np.array_equal(a.source, b.source) and np.array_equal(a.gt, b.gt)
    c = tasks.make_task("drag", 1, 1)
    assert not np.array_equal(a.source, c.source)
    with pytest.raises(ValueError):
        tasks.make_task("nope")


def test_every_sample_is_well_formed(samples):
    for t, ss in samples.items():
        for s in ss:
            assert s.source.dtype == np.float32 and s.source.shape == (128, 128, 3), t
            assert s.gt.shape[2] == 3 and s.region.shape == s.gt.shape[:2] and s.region.any(), t
            assert 0 <= s.gt.min() and s.gt.max() <= 1, t
            assert not np.allclose(s.gt[:, :128] if t == "outpaint" else s.gt, s.source if t != "outpaint" else 0), t
            for o in s.objects:
                assert o["gt"].shape == s.gt.shape[:2], (t, o["name"])


@pytest.mark.parametrize("task", ["drag", "drag_multi", "drag_two"])
def test_drag_gt_centroid_lands_on_target(samples, task):
    """The GT translates each dragged object by its drag: handle + (centroid GT - centroid source) = target."""
    for s in samples[task]:
        pts = s.instruction["points"]
        assert len(pts) == {"drag": 1, "drag_multi": 3, "drag_two": 2}[task]
        moved = [o for o in s.objects if o["moved"]]
        assert len(moved) == (2 if task == "drag_two" else 1)
        for (hx, hy), (tx, ty) in pts:
            o = next(o for o in moved if o["src"][hy, hx])          # the object under the handle
            c0, c1 = tasks.centroid(o["src"]), tasks.centroid(o["gt"])
            assert math.hypot(hx + c1[0] - c0[0] - tx, hy + c1[1] - c0[1] - ty) < 0.6
            assert s.instruction["mask"][hy, hx]
        # outside the moved objects' old and new places the GT is the source
        assert np.array_equal(s.gt[~s.region], s.source[~s.region])


def test_drag_uncovered_area_is_the_background(samples):
    s = samples["drag"][0]
    o = next(o for o in s.objects if o["moved"])
    sc = scenes.make_scene(s.scene_seed, 128, n_objects=(1, 3))
    bg = scenes.render_background(sc.bg, 128)
    uncovered = tasks.dilate(o["src"], 0) & ~tasks.dilate(o["gt"], 2)
    others = np.zeros_like(uncovered)
    for p in s.objects:
        if not p["moved"]:
            others |= tasks.dilate(p["gt"], 2)
    uncovered &= ~others
    assert uncovered.sum() > 20
    np.testing.assert_allclose(s.gt[uncovered], bg[uncovered], atol=1e-5)


def test_move_and_resize_gt(samples):
    for s in samples["move"]:
        dx, dy = s.instruction["offset"]
        assert dx % 8 == 0 and dy % 8 == 0 and s.instruction["scale"] == 1.0
        o = next(o for o in s.objects if o["moved"])
        c0, c1 = tasks.centroid(o["src"]), tasks.centroid(o["gt"])
        assert abs(c1[0] - c0[0] - dx) < 0.6 and abs(c1[1] - c0[1] - dy) < 0.6
    for s in samples["resize"]:
        k = s.instruction["scale"]
        o = next(o for o in s.objects if o["moved"])
        assert o["gt"].sum() / o["src"].sum() == pytest.approx(k * k, rel=0.12)


def test_paste_gt_holds_the_reference_object(samples):
    for s in samples["paste"]:
        new = next(o for o in s.objects if o["moved"])
        assert new["src"] is None and new["gt"].sum() > 100
        ref, rmask = s.instruction["reference"], s.instruction["reference_mask"]
        dx, dy = (int(v) for v in s.instruction["offset"])
        ys, xs = np.nonzero(~tasks.dilate(~new["gt"], 2))      # inside, away from the anti-aliased edge
        np.testing.assert_allclose(s.gt[ys, xs], ref[ys - dy, xs - dx], atol=1e-5)
        assert rmask[ys - dy, xs - dx].all()
        assert not tasks.segment(s.source, new["hue"]).any()          # not in the source before


def test_appearance_and_prompt_gt_recolour_in_place(samples):
    for t in ("appearance", "prompt"):
        for s in samples[t]:
            o = next(o for o in s.objects if o.get("recoloured"))
            assert tasks.hue_bin(o["target_hue"]) != tasks.hue_bin(o["source_hue"])
            assert abs(o["src"].sum() - o["gt"].sum()) < 0.05 * o["src"].sum()      # same shape, same place
            assert tm.hue_error(s.gt, o["gt"], o["target_hue"]) < 2.0
            assert tm.hue_error(s.source, o["src"], o["target_hue"]) > 40.0
            if t == "prompt":
                src_p, tgt_p = s.instruction["source_prompt"], s.instruction["target_prompt"]
                assert tasks.colour_name(o["source_hue"]) in src_p and tasks.colour_name(o["target_hue"]) in tgt_p
                assert src_p != tgt_p


def test_outpaint_gt_crop_equals_the_source(samples):
    for s in samples["outpaint"]:
        left, right, top, bottom = s.instruction["pad"]
        assert s.gt.shape == (128 + top + bottom, 128 + left + right, 3)
        np.testing.assert_array_equal(s.gt[top:top + 128, left:left + 128], s.source)
        assert s.region[:, :left].all() and not s.region[:, left:left + 128].any()


def test_inpaint_gt_is_the_background_there(samples):
    for s in samples["inpaint"]:
        sc = scenes.make_scene(s.scene_seed, 128)
        bg = scenes.render_background(sc.bg, 128)
        hole = s.instruction["mask"]
        np.testing.assert_allclose(s.gt[hole], bg[hole], atol=1e-5)
        gone = next(o for o in s.objects if o.get("removed"))
        assert not gone["gt"].any() and gone["src"].sum() > 100


def test_style_gt_keeps_objects_and_changes_texture(samples):
    for s in samples["style"]:
        assert s.instruction["source_texture"] != s.instruction["reference_texture"]
        inner = ~tasks.dilate(s.region, 4)          # the objects' pixels, away from their anti-aliased edges
        assert inner.sum() > 100
        np.testing.assert_allclose(s.gt[inner], s.source[inner], atol=1e-5)
        assert tm.psnr(s.source, s.gt, s.region) < 25


def test_landmarks_gt_is_the_deformed_polygon(samples):
    for s in samples["landmarks"]:
        lm = s.instruction["landmarks"]
        assert len(lm["source"]) == len(lm["target"]) == tasks.LANDMARKS
        v0, v1 = (np.asarray(s.instruction["vertices"][k]) for k in ("source", "target"))
        for i, v in enumerate(v1):               # every GT vertex is a polygon corner inside the object's GT mask
            x, y = (v + (v1.mean(0) - v) * 0.1).astype(int)
            assert next(o for o in s.objects if o["moved"])["gt"][y, x], i
        assert np.abs(v1 - v0).max() >= 6
        src_pts = np.asarray(lm["source"])
        assert np.abs(src_pts[0] - v0[0]).max() < 0.01     # the outline starts at vertex 0 on both polygons
        json_ = tasks.landmarks_json(s)
        assert '"source"' in json_ and '"width": 128' in json_


# --- metrics --------------------------------------------------------------------------------

def test_ground_truth_scores_perfectly(samples):
    for t, ss in samples.items():
        for s in ss:
            r = tm.task_score(s.gt, s, seconds=1.0)
            has_objects = any(o["gt"].any() for o in s.objects)
            assert r["iou"] == pytest.approx(1.0) if has_objects else math.isnan(r["iou"]), t
            has_edited = any(tm.edited(o, s) and o["gt"].any() for o in s.objects)
            assert has_edited == (t not in ("style", "inpaint")), t
            assert r["iou_edit"] == pytest.approx(1.0) if has_edited else math.isnan(r["iou_edit"]), t
            assert math.isnan(r["md"]) or r["md"] < 1e-6, t
            assert r["psnr_in"] >= 99 and r["psnr_out"] >= 99 and r["ssim_out"] > 0.999, t
            assert r["lost"] == 0 and r["duplicated"] == 0 and r["seconds"] == 1.0, t
            if t in tm.COLOUR_TASKS:
                assert r["hue_err"] < 2.0, t


def _none(s):
    return tasks.none_outpaint(s.source, s.instruction["pad"]) if s.task == "outpaint" else s.source


def test_no_edit_scores_as_expected(samples):
    for t, ss in samples.items():
        for s in ss:
            r = tm.task_score(_none(s), s)
            assert r["psnr_out"] >= 99 or t == "style", t      # outside the edit region nothing should change
            assert r["psnr_in"] < 30, t
            if t.startswith("drag") or t == "move":
                assert r["md"] == pytest.approx(np.mean([o["md0"] for o in s.objects if o["moved"]]), abs=0.6), t
                assert r["md"] > 15 and r["lost"] == 0 and r["duplicated"] == 0, t
            if t == "paste":                                 # not pasting loses the new object
                new = next(o for o in s.objects if o["moved"])
                assert r["lost"] == 1 and r["md"] == pytest.approx(tm.lost_md(new, s)) and r["iou_edit"] == 0, t
            if t == "inpaint":
                assert r["duplicated"] == 1, t               # the removed object is still there
            if t in tm.COLOUR_TASKS:
                assert r["hue_err"] > 40 and r["lost"] == 1, t


def test_duplicate_is_flagged_and_scores_half_way(samples):
    s = samples["drag"][0]
    k = next(i for i, o in enumerate(s.objects) if o["moved"])
    sc = scenes.make_scene(s.scene_seed, 128, n_objects=(1, 3))
    o = sc.objects[k]
    p = o.moved(*(np.array(s.instruction["points"][0][1]) - s.instruction["points"][0][0]))
    dup = tasks.render_objects(sc, list(sc.objects) + [p])
    r = tm.task_score(dup, s)
    assert r["duplicated"] == 1 and r["lost"] == 0
    md0 = s.objects[k]["md0"]
    assert abs(r["md"] - md0 / 2) < 2.0
    assert r["iou"] < tm.task_score(s.gt, s)["iou"]


def test_lost_object_and_colour():
    s = tasks.make_task("appearance", 0, 0)
    blank = s.source.copy()
    blank[s.instruction["mask"]] = 0.5
    r = tm.task_score(blank, s)
    assert r["lost"] == 1 and r["hue_err"] == 180.0
    s = tasks.make_task("drag", 0, 0)
    grey = np.full_like(s.gt, 0.5)
    r = tm.task_score(grey, s)
    assert r["lost"] == len([o for o in s.objects if o["gt"].any()])
    md0 = s.objects[[o["moved"] for o in s.objects].index(True)]["md0"]
    assert r["md"] == pytest.approx(md0 + tm.LOST_MD_PENALTY * math.hypot(128, 128))
    assert r["iou"] == 0 and r["iou_edit"] == 0


def _erase(img: np.ndarray, masks: list) -> np.ndarray:
    """The masks' pixels (dilated by 2) painted mid grey: unsaturated, no object's colour."""
    out = img.copy()
    for m in masks:
        out[tasks.dilate(m, 2)] = 0.5
    return out


@pytest.mark.parametrize("task", ["drag", "drag_multi", "drag_two", "move", "resize", "landmarks"])
def test_erasing_a_moved_object_scores_worse_than_no_edit(samples, task):
    """A lost moved object scores md0 + diagonal / 4: erasing it is strictly worse than leaving it in place
    (md0), for every sample, also when only one of two moved objects is erased."""
    penalty = tm.LOST_MD_PENALTY * math.hypot(128, 128)
    for s in samples[task]:
        moved = [o for o in s.objects if o["moved"]]
        none = tm.task_score(s.source, s)
        assert none["lost"] == 0, task
        # erased where it was (any other moved object left in place too), or where it should have gone (any
        # other moved object moved perfectly: then only that object's own md compares with leaving it)
        for result, compare in ((_erase(s.source, [moved[0]["src"]]), True),
                                (_erase(s.gt, [moved[0]["gt"]]), len(moved) == 1)):
            r = tm.task_score(result, s)
            assert r["lost"] == 1, task
            if compare:
                assert r["md"] > none["md"] + 0.9 * penalty / len(moved), (task, r["md"], none["md"])
            one = next(o for o in tm.object_scores(result, s) if o["name"] == moved[0]["name"])
            assert one["lost"] and one["md"] == pytest.approx(moved[0]["md0"] + penalty), task
            assert one["iou"] < tm.LOST_FRACTION, task


def test_iou_edit_ignores_unchanged_objects(samples):
    n_kept = 0
    for t in ("drag", "move", "resize", "landmarks", "appearance", "paste"):
        for s in samples[t]:
            kept = [o for o in s.objects if not tm.edited(o, s)]
            changed = [o for o in s.objects if tm.edited(o, s)]
            assert changed and all(o["gt"].any() for o in changed), t
            if not kept:
                continue
            n_kept += 1
            # the unchanged objects erased, the edited ones perfect: iou drops, iou_edit does not
            r = tm.task_score(_erase(s.gt, [o["gt"] for o in kept]), s)
            assert r["iou"] < 0.9 and r["iou_edit"] == pytest.approx(1.0), t
            # the edited objects erased, the rest perfect: iou_edit 0 whatever the unchanged objects score
            r = tm.task_score(_erase(s.gt, [o["gt"] for o in changed]), s)
            assert r["iou_edit"] == 0 and r["iou"] > 0.3, t
    assert n_kept >= 6


def test_edited_objects():
    """Which objects iou_edit counts: moved / recoloured / new objects and those whose mask changes (outpaint:
    objects the pads cut); not the objects a new background only shifts by their anti-aliased rim (style)."""
    for i in range(3):
        s = tasks.make_task("style", 0, i)
        assert not any(tm.edited(o, s) for o in s.objects)
        assert any((o["src"] ^ o["gt"]).any() for o in s.objects)          # the rim does move
        s = tasks.make_task("drag_two", 0, i)
        assert [tm.edited(o, s) for o in s.objects] == [o["moved"] for o in s.objects]
        s = tasks.make_task("outpaint", 0, i)
        left = s.instruction["pad"][0]
        for o in s.objects:
            outside = o["gt"].sum() - o["gt"][:, left:left + 128].sum()
            assert tm.edited(o, s) == (outside > tm.CHANGED_TOL * o["gt"].sum()), (i, o["name"])   # src = GT's crop
        assert any(tm.edited(o, s) for o in s.objects)
    s = tasks.make_task("inpaint", 0, 0)
    assert [tm.edited(o, s) for o in s.objects] == [bool(o.get("removed")) for o in s.objects]


def test_pixel_baselines(samples):
    s = samples["outpaint"][0]
    nv = tasks.naive_outpaint(s)
    assert nv.shape == s.gt.shape and tm.task_score(nv, s)["psnr_out"] >= 99
    s = samples["inpaint"][0]
    r = tm.task_score(tasks.naive_inpaint(s), s)
    assert r["duplicated"] == 0 and r["psnr_in"] > tm.task_score(s.source, s)["psnr_in"]
    s = samples["appearance"][0]
    r = tm.task_score(tasks.naive_appearance(s), s)
    assert r["hue_err"] < 30 and r["psnr_out"] >= 99


def test_summarize():
    rows = [dict(md=1.0, iou=0.5, lost=1, duplicated=0, seconds=2.0), dict(md=3.0, iou=math.nan, lost=0, duplicated=1,
                                                                           seconds=4.0)]
    s = tm.summarize(rows)
    assert s["md"] == 2.0 and s["iou"] == 0.5 and s["lost"] == 0.5 and s["lost_total"] == 1 and s["n"] == 2
    assert "iou_edit" not in s
    s = tm.summarize([dict(iou_edit=0.25), dict(iou_edit=math.nan), dict(iou_edit=0.75)])
    assert s["iou_edit"] == 0.5
    assert "hue_err" not in s


# --- the harness's pure pieces (bench/shapedrag/task_eval.py, evaluate.py; no model) --------------------------

def test_latent_copy_and_rescale():
    import torch
    from shapedrag import evaluate
    z = torch.arange(2 * 16 * 16, dtype=torch.float32).reshape(1, 2, 16, 16)
    mask = np.zeros((128, 128), bool)
    mask[16:32, 24:40] = True                                  # cells y 2..3, x 3..4
    out = evaluate.latent_copy({"samples": z}, [(mask, (2.0, 1.0, 1.0))])["samples"]
    assert torch.equal(out[:, :, 3:5, 5:7], z[:, :, 2:4, 3:5])  # copied by (2, 1) cells
    assert torch.equal(out[:, :, 2, 3], z[:, :, 2, 3])         # the source left as it was
    big = evaluate.latent_copy({"samples": z}, [(mask, (0.0, 0.0, 2.0))])["samples"]
    assert (big != z).any(dim=1).sum() > 0 and torch.equal(big[:, :, 2, 3], z[:, :, 2, 3])


def test_harness_helpers():
    from shapedrag import task_eval
    assert task_eval.parse_tasks("all") == list(tasks.TASKS)
    assert task_eval.parse_tasks("drag, inpaint") == ["drag", "inpaint"]
    with pytest.raises(ValueError):
        task_eval.parse_tasks("drag,nope")
    assert task_eval.methods_for("drag", ("none", "naive", "default", "ad-eq6"))[-1] == "ad-eq6"
    assert "ad-eq6" not in task_eval.methods_for("move", ("none", "ad-eq6"))
    for t in ("paste", "landmarks", "drag_two"):
        s = tasks.make_task(t, 0, 0)
        pic = task_eval.instruction_picture(s)
        assert pic.shape[0] == 128 and pic.shape[1] >= 128 and task_eval.instruction_text(s)
    row = dict(md=1.0, iou=0.5, iou_edit=0.125, psnr_in=20.0, psnr_out=30.0, ssim_out=0.9, lost=0.0, duplicated=0.0, seconds=1.0, n=1)
    rep = dict(n=1, seed=0, checkpoint="x", steps=10, edit_step=5, dual_steps=20,
               summary={"drag": {m: row for m in ("none", "naive", "default")}})
    md = task_eval.table(rep)
    assert md.count("\n| drag |") == 3 and "**1.00**" in md
    assert "| iou_edit |" in md and "0.125" in md and "10-step round trip" in md
    assert set(task_eval.NONE_DESCRIPTION) == set(tasks.TASKS)
    assert all(task_eval.NONE_DESCRIPTION[t] == "PNI reconstruction" for t in task_eval.DUAL_TASKS)
