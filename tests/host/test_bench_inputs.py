"""What the ratio benches measure: P1 the capture as the shipped workflows set it, P4a a three-row task."""
import argparse
import glob
import inspect
import json
import os
import sys

import harness

sys.path.insert(0, os.path.join(harness.REPO, "bench"))
import capture  # noqa: E402  (bench/capture.py)
import dual_branch  # noqa: E402  (bench/dual_branch.py)


def test_p1_reads_the_shipped_inversion_settings(host):
    """bench/capture.py takes the Inversion node's widgets from example_workflows/attention_drag.json by name; every
    shipped AttentionDrag workflow records values (KV consistency), so P1 measures the capture with values on."""
    cls = host.NODE_CLASS_MAPPINGS[capture.NODE_ID]
    params = inspect.signature(cls.execute).parameters
    w = capture.shipped_settings(cls)
    assert set(w) <= set(params) and {"steps", "edit_step", "scheduler", "capture_values", "kv_layers"} <= set(w)
    assert w["capture_values"] is True
    options = {i.id: i.options for i in cls.define_schema().inputs if getattr(i, "options", None)}
    assert all(w[k] in opts for k, opts in options.items()), (w, options)
    for path in glob.glob(os.path.join(harness.REPO, "example_workflows", "attention_drag*.json")):
        with open(path, encoding="utf-8") as f:
            if any(n.get("type") == capture.NODE_ID for n in json.load(f)["nodes"]):
                assert capture.shipped_settings(cls, path)["capture_values"] is True, path


def test_p4a_batches_three_rows_and_p4_two(host):
    """P4's drag (target = source prompt) batches gud + gen_pos; P4a's appearance, the shipped workflow's inputs,
    gud + ref + gen_pos."""
    args = argparse.Namespace(ckpt=harness.TINY_CKPT, size=64, steps=2, cfg=5.0, sampler="euler", fraction=None,
                              prompt="a photo of a dog")
    model, src, inversion, reference, _, _ = dual_branch.load(args, ["drag", "appearance"])
    rows = {t: dual_branch.unet_rows(dual_branch.guider(model, src, inversion, reference, args, t, None)[0])
            for t in ("drag", "appearance")}
    assert rows == {"drag": 2, "appearance": 3}
