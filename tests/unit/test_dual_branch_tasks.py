"""Mask and correspondence builders of each dual-branch task, on hand-built inputs with known answers."""
import json

import pytest
import torch

from dragfusion.guidance.dual_branch_tasks import (LANDMARK_COUNT, appearance_geometry, disk, drag_geometry,
                                                   landmark_geometry, mask_to_latent, move_geometry, outpaint_geometry,
                                                   pad_latent, parse_landmarks_json, paste_geometry, style_geometry)
from dragfusion.guidance.energy import identity_grid, warp_features

HW = (16, 16)


def read(grid, hw=HW):
    """Which source cell (row, col) each generation cell reads: nearest cell of the grid position."""
    h, w = hw
    col = ((grid[..., 0] + 1) / 2 * w - 0.5).round().long()
    row = ((grid[..., 1] + 1) / 2 * h - 0.5).round().long()
    return row, col


def test_disk_counts():
    assert int(disk(HW, (4.5, 4.5), 0.0).sum()) == 1
    assert int(disk(HW, (4.5, 4.5), 1.0).sum()) == 5          # centre + 4 neighbours
    assert int(disk(HW, (4.0, 4.0), 0.5).sum()) == 1          # no centre within 0.5 -> the containing cell


def test_drag_single_pair():
    g = drag_geometry([((4.5, 5.5), (10.5, 5.5))], HW, radius=1.0)
    assert g.task == "drag" and g.edit_source == "gud" and g.edit_mode == "local"
    assert torch.equal(g.m_gen, disk(HW, (10.5, 5.5), 1.0))
    assert torch.equal(g.m_gud, disk(HW, (4.5, 5.5), 1.0))
    row, col = read(g.edit_grid)
    sel = g.m_gen > 0
    assert torch.equal(col[sel], torch.nonzero(sel)[:, 1] - 6)   # 6 cells to the left
    assert torch.equal(row[sel], torch.nonzero(sel)[:, 0])
    # share: neither disk (dilated) is shared; far cells are
    assert float((g.m_share * (g.m_gen + g.m_gud)).sum()) == 0
    assert g.m_share[15, 15] == 1 and g.edit_region[5, 10] == 1
    # the feature warp really brings the handle's features to the target
    f = torch.randn(1, 3, 16, 16)
    out = warp_features(f, g.edit_grid)
    assert torch.allclose(out[0, :, 5, 10], f[0, :, 5, 4], atol=1e-5)


def test_drag_editable_mask_and_errors():
    editable = torch.zeros(HW)
    editable[:8] = 1
    g = drag_geometry([((2.5, 2.5), (6.5, 2.5))], HW, radius=1.0, editable=editable)
    assert torch.equal(g.m_share[8:], torch.ones(8, 16)) and float(g.m_share[:8].sum()) == 0
    with pytest.raises(ValueError, match="input 'points': no handle"):
        drag_geometry([], HW, node="Dual-Branch Guided Sampler")
    with pytest.raises(ValueError, match="pair 1: target"):
        drag_geometry([((2.5, 2.5), (16.5, 2.5))], HW)


def test_drag_two_pairs_nearest_target_wins():
    g = drag_geometry([((1.5, 1.5), (5.5, 5.5)), ((12.5, 12.5), (6.5, 5.5))], HW, radius=1.0)
    row, col = read(g.edit_grid)
    assert (int(row[5, 5]), int(col[5, 5])) == (1, 1)        # nearer to target 1
    assert (int(row[5, 6]), int(col[5, 6])) == (12, 12)      # nearer to target 2


def test_move_translation_and_resize():
    m = torch.zeros(HW)
    m[2:6, 2:6] = 1                                            # 4x4 box, centre (4, 4)
    g = move_geometry(m, HW, dx=6, dy=3)
    expect = torch.zeros(HW)
    expect[5:9, 8:12] = 1
    assert torch.equal(g.m_gen, expect)
    row, col = read(g.edit_grid)
    assert (int(row[5, 8]), int(col[5, 8])) == (2, 2)
    assert torch.equal(g.m_gud, m)
    assert torch.equal(g.edit_region, torch.maximum(m, expect)) and torch.equal(g.m_share, 1 - g.edit_region)
    big = move_geometry(m, HW, dx=0, dy=0, scale=2.0)
    expect2 = torch.zeros(HW)
    expect2[0:8, 0:8] = 1                                     # 8x8 box about the same centre
    assert torch.equal(big.m_gen, expect2)
    row, col = read(big.edit_grid)
    assert (int(row[0, 0]), int(col[0, 0])) == (2, 2)


def test_move_errors():
    m = torch.zeros(HW)
    with pytest.raises(ValueError, match="input 'mask': the region mask is empty"):
        move_geometry(m, HW, 1, 0)
    m[2:4, 2:4] = 1
    with pytest.raises(ValueError, match="leaves the canvas"):
        move_geometry(m, HW, 40, 0)
    with pytest.raises(ValueError, match="input 'offset'"):
        move_geometry(m, HW, 0, 0, 1.0)
    with pytest.raises(ValueError, match="input 'scale'"):
        move_geometry(m, HW, 1, 0, 0.0)


def test_appearance_and_paste():
    m = torch.zeros(HW)
    m[4:8, 4:8] = 1
    r = torch.zeros(HW)
    r[10:14, 1:5] = 1
    a = appearance_geometry(m, r, HW, HW)
    assert a.edit_source == "ref" and a.edit_mode == "global"
    assert torch.equal(a.m_gen, m) and torch.equal(a.m_gud, r) and torch.equal(a.m_share, 1 - m)
    p = paste_geometry(r, HW, HW, dx=4, dy=-8)
    expect = torch.zeros(HW)
    expect[2:6, 5:9] = 1
    assert torch.equal(p.m_gen, expect) and p.edit_source == "ref" and p.edit_mode == "local"
    row, col = read(p.edit_grid)
    assert (int(row[2, 5]), int(col[2, 5])) == (10, 1)
    with pytest.raises(ValueError, match="input 'reference_mask'"):
        appearance_geometry(m, torch.zeros(HW), HW, HW)


def test_outpaint():
    g = outpaint_geometry((8, 8), (2, 0, 0, 4))
    assert g.hw == (12, 10) and g.pad == (2, 0, 0, 4)
    assert float(g.m_share.sum()) == 64 and torch.equal(g.m_share[0:8, 2:10], torch.ones(8, 8))
    assert torch.equal(g.m_gen, 1 - g.m_share) and torch.equal(g.kv_mask, g.m_share)
    assert torch.equal(g.m_gud, g.m_share) and g.edit_mode == "global"
    with pytest.raises(ValueError, match="input 'pad': outpainting needs padding"):
        outpaint_geometry((8, 8), (0, 0, 0, 0))
    z = torch.arange(4.0).view(1, 1, 2, 2)
    p = pad_latent(z, (1, 0, 0, 1), noise=torch.full((1, 1, 3, 3), -1.0))
    assert torch.equal(p[0, 0], torch.tensor([[-1.0, 0, 1], [-1, 2, 3], [-1, -1, -1]]))


def test_style():
    g = style_geometry((4, 6))
    assert g.edit_source == "ref" and g.edit_mode == "global"
    assert torch.equal(g.m_gen, torch.ones(4, 6)) and torch.equal(g.m_share, torch.ones(4, 6))
    assert torch.equal(g.share_grid, identity_grid((4, 6)))


def _face(dx=0.0):
    pts = [(20 + (i % 17) * 1.5 + dx, 20 + (i // 17) * 4.0) for i in range(LANDMARK_COUNT)]
    return pts


def test_landmarks_json_and_geometry():
    src, tgt = _face(), _face(dx=8.0)
    text = json.dumps({"width": 64, "height": 64, "source": src, "target": tgt})
    s, t = parse_landmarks_json(text, 64, 64, "Dual-Branch Guided Sampler")
    assert len(s) == len(t) == 68 and s[0] == (20.0, 20.0) and t[0] == (28.0, 20.0)
    cells = lambda pts: [(x / 8, y / 8) for x, y in pts]
    g = landmark_geometry(cells(s), cells(t), (8, 8), radius=0.5)
    assert g.task == "landmarks" and float(g.m_gen.sum()) > 0
    row, col = read(g.edit_grid, (8, 8))
    sel = torch.nonzero(g.m_gen > 0)
    assert all(int(col[i, j]) == j - 1 for i, j in sel.tolist())   # 8 px = 1 cell to the left
    with pytest.raises(ValueError, match="'source' must list 68"):
        parse_landmarks_json(json.dumps({"source": src[:10], "target": tgt}), 64, 64, "N")
    with pytest.raises(ValueError, match="outside"):
        parse_landmarks_json(json.dumps({"source": src, "target": [(70, 1)] * 68}), 64, 64, "N")
    with pytest.raises(ValueError, match="not valid JSON"):
        parse_landmarks_json("{nope", 64, 64, "N")
    with pytest.raises(ValueError, match="68 landmarks"):
        landmark_geometry(cells(s)[:5], cells(t)[:5], (8, 8))


def test_mask_to_latent():
    m = torch.zeros(1, 32, 32)
    m[:, :16, :12] = 1
    lat = mask_to_latent(m, (4, 4), "N", "mask")
    assert torch.equal(lat, torch.tensor([[1.0, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]))
    with pytest.raises(ValueError, match="input 'mask': the mask is 16x16"):
        mask_to_latent(torch.zeros(1, 16, 16), (4, 4), "N", "mask")
