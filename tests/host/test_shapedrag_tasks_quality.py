"""Edit quality of every task against its rendered ground truth (ShapeDrag-GT, bench/shapedrag/tasks.py):
the pack's default for a task must beat no edit and the naive baseline by a margin in the metric that
defines the task (MD for the drags, IoU for move / resize / paste / landmarks, PSNR inside the edited
region for inpaint / outpaint / style, hue distance for appearance / the PNI prompt edit).

Runs in the real host, in-process, through the pack's own nodes (bench/shapedrag/task_eval.py) on the
trained ShapeDrag model at 128 px: N_SAMPLES scenes per task of each of SEEDS (2 and 3, which no sweep reads:
bench/shapedrag/README.md, "Seed discipline"), the dual-branch and PNI methods at
CI_DUAL_STEPS DDIM steps (the example workflows use 20) to keep the file fast. Where today's default does
not do the edit, its test is a strict xfail whose reason holds the measured figures: it fails the day the
default starts to pass, and must then become a real assertion. Skipped only without the trained weights.
"""
import math
import os
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "bench"))

from shapedrag import evaluate, task_eval, task_metrics, tasks  # noqa: E402

N_SAMPLES = 2
SEEDS = (2, 3)        # CI's seeds; sweeps read 0-1 only, a note's held-out table another seed
CI_DUAL_STEPS = 20    # as the example workflows (the dual-branch defaults were measured there; at 10 steps fewer steps are guided)
# Every task runs in CI (2 seeds x 2 scenes; about 10 min for the file on 2 quiet cores, the dual-branch and PNI tasks most of it).
# DRAGFUSION_GT_FAST=1 keeps only the AttentionDrag tasks (about 50 s) for a quick local run: the others
# are then not collected at all (never skipped).
FAST_TASKS = ("drag", "drag_multi", "drag_two", "inpaint")
CI_TASKS = FAST_TASKS if os.environ.get("DRAGFUSION_GT_FAST", "") == "1" else tuple(tasks.TASKS)
METHODS = ("none", "naive", "default")
# the margin by which the default must beat both baselines, in the task's defining metric
# (task_metrics.DEFINING: px of MD, IoU, dB of PSNR inside the edited region, degrees of hue)
MARGIN = dict(drag=2.0, drag_multi=2.0, drag_two=2.0, move=0.05, resize=0.05, paste=0.05, landmarks=0.05,
              inpaint=2.0, outpaint=2.0, style=2.0, appearance=10.0, prompt=10.0)
_FIG = "seeds 2 + 3, 2 scenes each, dual-branch / PNI at 20 steps"
# today's defaults that do not do the edit, with their figures in this file's configuration ({_FIG}). Before the
# seed rule the margins were checked on seed 0 (and seed 1); since [defects] CI asserts on seeds 2-3 only and no
# margin was loosened: the tasks that win only there or only by a weaker rule are strict xfails now.
# inpaint and appearance used to be asserted only "not worse than naive by the margin"; they do not beat it.
XFAIL = {
    "resize": f"dual-branch resize: IoU 0.724 vs latent rescale 0.675, no edit 0.611 ({_FIG}): better, not by the "
              f"0.05 margin; held-out seed 7 (8 scenes): 0.786 vs 0.719 / 0.659",
    "paste": f"dual-branch paste: IoU 0.886 vs pixel paste 0.997 (the ground truth's own construction), no edit 0.486 "
             f"({_FIG}); seed 7: 0.823 vs 0.992 / 0.474",
    "appearance": f"dual-branch appearance: hue error 2.49 deg vs pixel paste 1.64 (exact by construction), no edit "
                  f"135.62 ({_FIG}); seed 7: 25.04 vs 4.38 / 76.63",
    "outpaint": f"dual-branch outpaint: PSNR in the new area 16.89 dB vs edge replication 15.05, no edit 15.47 "
                f"({_FIG}): better, not by the 2 dB margin; seed 7: 16.70 vs 17.26 / 15.42",
    "inpaint": f"AttentionDrag inpainting: PSNR in the hole 34.85 dB vs ring-mean fill 36.23, no edit 12.29 ({_FIG})",
    "style": f"dual-branch style: PSNR against the GT 15.00 dB vs the reference with pasted objects 10.81, no edit "
             f"14.13 ({_FIG}): better, not by the 2 dB margin, 0.25 objects lost per scene; seed 7: 15.33 vs 12.94 / "
             f"14.93, 0.38 lost (before [defects]: 15.04, 0.88 lost)",
    "landmarks": f"dual-branch landmarks: IoU 0.784 vs no edit 0.748, copy-paste 0.688 ({_FIG}): better, not by the "
                 f"0.05 margin; seed 7: 0.665 vs 0.735 / 0.649 (worse than no edit)",
    "prompt": f"PNI prompt edit with the captionless ShapeDrag model does not recolour: hue error 105.59 deg vs no edit "
              f"105.84, prompt swap 105.66 ({_FIG})",
}

needs_weights = pytest.mark.skipif(
    not os.path.isfile(evaluate.WEIGHTS),
    reason=f"trained ShapeDrag weights absent ({evaluate.WEIGHTS}); run scripts/train_shapedrag.py")


@pytest.fixture(scope="module")
def report(host):
    reports = [task_eval.evaluate_tasks(CI_TASKS, n=N_SAMPLES, seed=seed, methods=METHODS, out_dir=None,
                                        progress=False, dual_steps=CI_DUAL_STEPS) for seed in SEEDS]
    samples = {t: {m: [r for rep in reports for r in rep["samples"][t][m]] for m in METHODS} for t in CI_TASKS}
    summary = {t: {m: task_metrics.summarize(rows) for m, rows in ms.items()} for t, ms in samples.items()}
    return dict(reports[0], n=N_SAMPLES * len(SEEDS), seed="+".join(map(str, SEEDS)), samples=samples,
                summary=summary)


def beats(task: str, summary: dict) -> tuple[bool, str]:
    key, higher = task_metrics.DEFINING[task]
    s = summary[task]
    d, n0, nv = s["default"].get(key, math.nan), s["none"].get(key, math.nan), s["naive"].get(key, math.nan)
    m = MARGIN[task]
    ok = (d > n0 + m and d > nv + m) if higher else (d < n0 - m and d < nv - m)
    return bool(ok), f"{task} {key}: default {d:.2f}, none {n0:.2f}, naive {nv:.2f} (margin {m})"


@needs_weights
def test_every_task_runs_and_the_instrument_is_sane(report):
    """Every task and method gives a result of the GT's size; the round trip keeps the picture; the naive
    baselines do what they are meant to (so a broken harness cannot pass as 'the default does nothing')."""
    print("\n" + task_eval.table(report))
    s = report["summary"]
    for t in CI_TASKS:
        for m in METHODS:
            assert s[t][m]["n"] == N_SAMPLES * len(SEEDS), (t, m)
            assert np.isfinite(s[t][m]["psnr_out"]), (t, m)
        assert s[t]["none"]["psnr_out"] > 18.0, (t, s[t]["none"])
    for t in ("drag", "drag_two", "move"):
        if t in s:
            assert s[t]["naive"]["md"] < s[t]["none"]["md"] - 5.0, (t, s[t])
    if "appearance" in s:
        assert s["appearance"]["naive"]["hue_err"] < s["appearance"]["none"]["hue_err"] - 20.0, s["appearance"]
    if "paste" in s:
        assert s["paste"]["naive"]["iou"] > s["paste"]["none"]["iou"] + 0.1, s["paste"]


def _param(t):
    if t in XFAIL:
        return pytest.param(t, marks=pytest.mark.xfail(strict=True, reason=XFAIL[t]))
    return t


@needs_weights
@pytest.mark.parametrize("task", [_param(t) for t in CI_TASKS])
def test_default_beats_no_edit_and_naive(report, task):
    ok, msg = beats(task, report["summary"])
    print(msg)
    assert ok, msg
