"""scripts/evaluate end to end on the tiny checkpoint, a DragBench dev subset, in CI time."""
import json
import os
import subprocess
import sys

import harness


def test_evaluate_dragbench_subset(tmp_path, data_dir):
    out = tmp_path / "eval"
    r = subprocess.run([os.path.join(harness.REPO, "scripts", "evaluate"), os.path.join(data_dir, "dragbench-dev"),
                        "--subset", "1", "--size", "fit 128 (multiple of 8)", "--ckpt", harness.TINY_CKPT,
                        "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    s = res["summary"]
    assert s["samples"] == 1 and s["pairs"] >= 1 and s["seconds_per_point"] > 0
    # no SD-2.1 or LPIPS weights here: the report says which files are missing
    assert any("SD-2.1" in n for n in s["notes"]) and any("alex.pth" in n for n in s["notes"])
    sample = res["rows"][0]["sample"]
    for k in ("original", "arrows", "mask", "result"):
        assert (out / sample / f"{k}.png").is_file()
    html = (out / "report.html").read_text()
    assert "<img" in html and "seconds_per_point" in html


AD_ROW_KEYS = {"sample", "method", "pairs", "seconds", "seconds_per_point", "size", "prompt", "md", "one_minus_lpips"}


def test_evaluate_dual_branch_beside_attentiondrag(host, data_dir, tmp_path, monkeypatch, capsys):
    """--methods attentiondrag,dual-branch: both edits on the same sample, scored by the same code, side by side.
    No SD-2.1 or LPIPS weights here, so the scorer's inputs are stand-ins (plumbing only, the numbers mean
    nothing): DIFT on the tiny UNet's decoder block 1, LPIPS with random AlexNet / head weights."""
    import functools
    import math

    import torch
    import torchvision
    sys.path.insert(0, os.path.join(harness.REPO, "bench"))
    import dragbench_eval
    import metrics
    backbone, heads = tmp_path / "alexnet-random.pth", tmp_path / "alex.pth"
    torch.manual_seed(0)
    torch.save({"features." + k: v for k, v in torchvision.models.alexnet(weights=None).features.state_dict().items()},
               backbone)
    torch.save({f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate((64, 192, 384, 256, 256))},
               heads)
    monkeypatch.setattr(metrics, "find_lpips_files", lambda models_dir: (str(backbone), str(heads), ""))
    monkeypatch.setattr(metrics, "dift_features", functools.partial(metrics.dift_features, block=1, ensemble=2))
    out = tmp_path / "eval"
    summary = dragbench_eval.main([os.path.join(data_dir, "dragbench-dev"), "--subset", "1",
                                   "--size", "fit 128 (multiple of 8)", "--ckpt", harness.TINY_CKPT,
                                   "--dift-ckpt", harness.TINY_CKPT, "--steps", "4", "--edit-step", "2",
                                   "--methods", "attentiondrag,dual-branch", "--dual-steps", "4", "--out", str(out)])
    res = json.loads((out / "results.json").read_text())
    assert res["summary"] == json.loads(json.dumps(summary))
    rows = {r["method"]: r for r in res["rows"]}
    assert list(rows) == ["attentiondrag", "dual-branch"] and len(res["rows"]) == 2
    ad, db = rows["attentiondrag"], rows["dual-branch"]
    assert set(ad) == AD_ROW_KEYS and set(db) == AD_ROW_KEYS
    assert ad["sample"] == db["sample"] and ad["pairs"] == db["pairs"] >= 1 and ad["size"] == db["size"]
    for r in (ad, db):
        assert math.isfinite(r["md"]) and r["md"] >= 0 and math.isfinite(r["one_minus_lpips"]) and r["seconds"] > 0
    # the top level keeps the first method's figures (AttentionDrag), by_method has both
    assert summary["methods"] == ["attentiondrag", "dual-branch"]
    assert summary["mean_md"] == summary["by_method"]["attentiondrag"]["mean_md"] == round(ad["md"], 4)
    assert summary["by_method"]["dual-branch"]["mean_md"] == round(db["md"], 4)
    assert summary["by_method"]["dual-branch"]["seconds_per_edit"] == db["seconds"]
    for k in ("original", "arrows", "mask", "result", "result_dual-branch"):
        assert (out / ad["sample"] / f"{k}.png").is_file()
    html = (out / "report.html").read_text()
    assert "VersaFusion dual-branch" in html and "result_dual-branch.png" in html and "s/edit" in html
    table = capsys.readouterr().out
    assert "| AttentionDrag |" in table and "| VersaFusion dual-branch |" in table


def test_evaluate_rejects_an_unknown_method(tmp_path):
    sys.path.insert(0, os.path.join(harness.REPO, "bench"))
    import dragbench_eval
    try:
        dragbench_eval.main([str(tmp_path), "--methods", "attentiondrag,dragdiffusion", "--ckpt", harness.TINY_CKPT])
    except SystemExit as e:
        assert e.code == 2
    else:
        raise AssertionError("an unknown method must be refused")


def test_dift_features_from_a_decoder_block(host):
    """The DIFT tap returns the feature entering the chosen output block (tiny UNet: block 1)."""
    import torch
    sys.path.insert(0, os.path.join(harness.REPO, "bench"))
    import edit_pipeline as ep
    import metrics
    m = ep.load_models(harness.TINY_CKPT)
    lat = torch.randn(1, 4, 8, 8)
    ctx = torch.zeros(1, 77, 768)
    with torch.inference_mode():
        f1 = metrics.dift_features(m.model, lat, ctx, block=1, ensemble=2)
        f2 = metrics.dift_features(m.model, lat, ctx, block=1, ensemble=2)
    assert f1.shape == (1, 320, 8, 8) and torch.equal(f1, f2)
    try:
        with torch.inference_mode():
            metrics.dift_features(m.model, lat, ctx, block=6, ensemble=1)
    except RuntimeError as e:
        assert "no output block 6" in str(e)
    else:
        raise AssertionError("a missing block must be an error")
