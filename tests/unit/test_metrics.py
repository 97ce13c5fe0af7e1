"""The evaluation metrics against hand-built cases (bench/metrics.py)."""
import os
import sys

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "bench"))
import metrics  # noqa: E402


def test_match_points_finds_moved_feature():
    torch.manual_seed(0)
    src = torch.randn(1, 16, 8, 8)
    dst = torch.randn(1, 16, 8, 8)
    dst[0, :, 6, 1] = src[0, :, 2, 5] * 3.0        # the handle's feature moved from (x5, y2) to (x1, y6)
    m = metrics.match_points(src, dst, [(5, 2)], (8, 8))
    assert m == [(1, 6)]
    assert metrics.mean_distance(m, [(1, 6)]) == 0.0
    assert metrics.mean_distance([(0, 0), (3, 4)], [(0, 0), (0, 0)]) == 2.5


def test_match_points_identical_images_return_the_handles():
    torch.manual_seed(1)
    f = torch.randn(1, 32, 16, 16)
    handles = [(3, 4), (10, 12), (15, 0)]
    assert metrics.match_points(f, f.clone(), handles, (16, 16)) == handles


def make_lpips():
    import torchvision
    torch.manual_seed(0)
    net = torchvision.models.alexnet(weights=None)
    backbone = {"features." + k: v for k, v in net.features.state_dict().items()}
    heads = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate((64, 192, 384, 256, 256))}
    return metrics.Lpips(backbone, heads), net, heads


def test_lpips_matches_a_direct_evaluation():
    lp, net, heads = make_lpips()
    torch.manual_seed(2)
    a, b = torch.rand(2, 3, 64, 64) * 2 - 1, torch.rand(2, 3, 64, 64) * 2 - 1
    # direct: scale, run AlexNet features to each ReLU, unit-normalise channels, weighted squared diff, mean
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    xa = (F.interpolate(a, (224, 224), mode="bilinear") - shift) / scale
    xb = (F.interpolate(b, (224, 224), mode="bilinear") - shift) / scale
    want, li = torch.zeros(2), 0
    for i, layer in enumerate(net.features[:12]):
        xa, xb = layer(xa), layer(xb)
        if i in (1, 4, 7, 9, 11):
            na = xa / (xa.norm(dim=1, keepdim=True) + 1e-10)
            nb = xb / (xb.norm(dim=1, keepdim=True) + 1e-10)
            w = heads[f"lin{li}.model.1.weight"].view(1, -1, 1, 1)
            want += ((na - nb) ** 2 * w).sum(1).mean(dim=(1, 2))
            li += 1
    got = lp(a, b)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-6)
    assert torch.allclose(lp(a, a), torch.zeros(2), atol=1e-7)


def test_lpips_missing_keys_are_named():
    import torchvision
    net = torchvision.models.alexnet(weights=None)
    with pytest.raises(ValueError, match="lin3.model.1.weight"):
        metrics.Lpips({"features." + k: v for k, v in net.features.state_dict().items()},
                      {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate((64, 192, 384))})


def test_find_lpips_files_says_what_is_missing(tmp_path):
    b, h, msg = metrics.find_lpips_files(str(tmp_path))
    assert b is None and h is None and "alex.pth" in msg and "alexnet-" in msg
    (tmp_path / "lpips").mkdir()
    (tmp_path / "lpips" / "alex.pth").write_bytes(b"")
    b, h, msg = metrics.find_lpips_files(str(tmp_path))
    assert h and b is None and "alex.pth" not in msg.replace("alexnet-*.pth", "")


def test_load_state_refuses_pickled_code(tmp_path):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    import pickle
    p = tmp_path / "evil.pth"
    with open(p, "wb") as f:
        pickle.dump({"x": Evil()}, f)
    with pytest.raises(Exception):
        metrics.load_state(str(p))
    assert not marker.exists()
