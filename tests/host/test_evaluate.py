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
