"""Semantic movement (Eq. 5-9) on hand-built latents and attention rows with known answers."""
import torch

from dragfusion.guidance.movement import collision_score, drag_vectors, forward_warp, movement_field, semantic_move


def blob_rows(h, w, groups, steps=2, background=1e-4):
    """Handle rows [S, 1, P, N]: handle i attends equally to every cell of groups[i], barely elsewhere."""
    n = h * w
    rows = torch.full((steps, 1, len(groups), n), background)
    for i, g in enumerate(groups):
        rows[:, 0, i, g] = 1.0
    return rows / rows.sum(-1, keepdim=True)


def box(w, x0, y0, x1, y1):
    return [y * w + x for y in range(y0, y1) for x in range(x0, x1)]


def blob_latent(h, w, cells, value=5.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = 0.1 * torch.randn(1, 4, h, w, generator=g)
    zf = z.view(1, 4, h * w)
    zf[0, 0, cells] = value
    return z


def centroid(z, thr=2.5):
    m = z[0, 0] > thr
    ys, xs = m.nonzero(as_tuple=True)
    return xs.float().mean().item(), ys.float().mean().item()


def mask_of(h, w, cells):
    m = torch.zeros(1, h * w, dtype=torch.bool)
    m[0, cells] = True
    return m


def test_blob_centroid_moves_by_v_and_outside_is_bit_identical():
    h, w = 16, 20
    blob = box(w, 4, 5, 7, 8)
    z = blob_latent(h, w, blob)
    handle = torch.tensor([6 * w + 5])
    pairs = [((5.5, 6.5), (5.5 + 6.4, 6.5 + 3.3))]  # V = (6.4, 3.3) cells
    drags = drag_vectors(pairs)
    mask = mask_of(h, w, box(w, 3, 4, 15, 13))
    z2, blank, v = semantic_move(z, blob_rows(h, w, [blob]), handle, drags, mask)
    # the blob cells move by V exactly (Eq. 6: ratio 1), everything else in the mask barely
    assert torch.allclose(v[0, blob], drags.expand(len(blob), 2), atol=1e-5)
    filled = torch.where(blank.view(1, 1, h, w), torch.zeros(()), z2)
    cx0, cy0 = centroid(z)
    cx1, cy1 = centroid(filled)
    assert abs((cx1 - cx0) - 6.4) <= 0.5 and abs((cy1 - cy0) - 3.3) <= 0.5
    assert int((filled[0, 0] > 2.5).sum()) == len(blob)
    outside = ~mask.view(1, 1, h, w).expand_as(z)
    assert torch.equal(z2[outside], z[outside])
    # the blanks are exactly the vacated blob cells nothing landed on
    moved = {(p % w + 6) + (p // w + 3) * w for p in blob}
    assert set(blank[0].nonzero()[:, 0].tolist()) == set(blob) - moved


def test_movement_is_limited_to_the_mask_eq8():
    h, w = 8, 8
    blob = box(w, 1, 1, 4, 4)
    rows = blob_rows(h, w, [blob])
    v = movement_field(rows, torch.tensor([blob[4]]), torch.tensor([[2.0, 0.0]]), mask_of(h, w, blob[:4]))
    assert (v[0, blob[:4]] == torch.tensor([2.0, 0.0])).all()
    assert (v[0, blob[4:]] == 0).all()


def test_eq6_eq7_per_step_ratio_then_mean():
    # two steps, 3 cells; handle cell 0. Eq. 7 averages the ratios, not the maps.
    rows = torch.tensor([[0.5, 0.25, 0.25], [0.2, 0.6, 0.2]])[:, None, None, :]
    v = movement_field(rows, torch.tensor([0]), torch.tensor([[4.0, -2.0]]))
    r = torch.tensor([(0.5 / 0.5 + 0.2 / 0.2) / 2, (0.25 / 0.5 + 0.6 / 0.2) / 2, (0.25 / 0.5 + 0.2 / 0.2) / 2])
    assert torch.allclose(v[0], r[:, None] * torch.tensor([4.0, -2.0]))


def test_two_pairs_pulling_apart():
    h, w = 12, 24
    left, right = box(w, 8, 4, 10, 7), box(w, 13, 4, 15, 7)
    z = blob_latent(h, w, left + right)
    rows = blob_rows(h, w, [left, right], steps=3)
    pairs = [((9.0, 5.5), (5.0, 5.5)), ((14.0, 5.5), (18.0, 5.5))]
    handles = torch.tensor([5 * w + 9, 5 * w + 14])
    mask = mask_of(h, w, box(w, 2, 2, 22, 10))
    z2, blank, v = semantic_move(z, rows, handles, drag_vectors(pairs), mask)
    assert torch.allclose(v[0, left], torch.tensor([-4.0, 0.0]).expand(len(left), 2), atol=1e-2)
    assert torch.allclose(v[0, right], torch.tensor([4.0, 0.0]).expand(len(right), 2), atol=1e-2)
    filled = torch.where(blank.view(1, 1, h, w), torch.zeros(()), z2)[0, 0] > 2.5
    xs = filled.nonzero()[:, 1]
    assert sorted(set(xs.tolist())) == [4, 5, 17, 18]
    # a cell attended by both handles equally moves by the mean of the two per-pair vectors
    shared = 0
    rows2 = rows.clone()
    rows2[:, 0, 0, shared] = rows2[:, 0, 0, left[0]]
    rows2[:, 0, 1, shared] = rows2[:, 0, 1, right[0]]
    v2 = movement_field(rows2, handles, drag_vectors(pairs))
    assert torch.allclose(v2[0, shared], torch.zeros(2), atol=1e-4)
    # ... weighted by its normalised attention to each handle (1/2 each), not summed
    v3 = movement_field(rows2, handles, torch.tensor([[-4.0, 0.0], [0.0, 4.0]]))
    assert torch.allclose(v3[0, shared], torch.tensor([-2.0, 2.0]), atol=1e-3)
    assert torch.allclose(v3[0, left[0]], torch.tensor([-4.0, 0.0]), atol=1e-2)


def test_collisions_keep_the_most_attended_source():
    z = torch.arange(6, dtype=torch.float32).view(1, 1, 1, 6) + 10
    v = torch.zeros(1, 6, 2)
    v[0, 0, 0] = 3.0   # 0 -> 3
    v[0, 1, 0] = 2.0   # 1 -> 3
    v[0, 4, 0] = -2.0  # 4 -> 2 (lands on a cell that stays put)
    score = torch.tensor([[0.3, 0.7, 0.1, 0.9, 0.5, 0.0]])
    mask = torch.ones(1, 6, dtype=torch.bool)
    z2, blank = forward_warp(z, v, score, mask)
    # dest 3: sources 0 (0.3), 1 (0.7) and 3 itself (0.9, stays) -> 3 keeps its own value
    # dest 2: sources 2 (0.1, stays) and 4 (0.5) -> 4 wins
    assert z2.flatten().tolist() == [10, 11, 14, 13, 14, 15]
    assert blank[0].tolist() == [True, True, False, False, True, False]
    score2 = torch.tensor([[0.3, 0.7, 0.1, 0.2, 0.5, 0.0]])
    z3, blank3 = forward_warp(z, v, score2, mask)
    assert z3.flatten().tolist() == [10, 11, 14, 11, 14, 15]
    # ties: the lower flat index wins
    z4, _ = forward_warp(z, v, torch.full((1, 6), 0.5), mask)
    assert z4.flatten()[3].item() == 10


def test_handles_at_the_border_and_writes_off_the_grid():
    h, w = 8, 8
    corner = box(w, 6, 6, 8, 8)
    z = blob_latent(h, w, corner)
    handle = torch.tensor([7 * w + 7])  # bottom-right cell, pixel (63, 63) of a 64x64 image
    pairs = [((63 / 8, 63 / 8), (23 / 8, 63 / 8))]  # 5 cells to the left
    z2, blank, _ = semantic_move(z, blob_rows(h, w, [corner]), handle, drag_vectors(pairs),
                                 mask_of(h, w, box(w, 0, 5, 8, 8)))
    hot = (torch.where(blank.view(h, w), torch.zeros(()), z2[0, 0]) > 2.5).nonzero().tolist()
    assert sorted(hot) == [[6, 1], [6, 2], [7, 1], [7, 2]]
    # dragged past the edge: content that leaves the grid is dropped, its cells become blanks
    pairs_out = [((7.5, 7.5), (7.5, 11.5))]
    z3, blank3, _ = semantic_move(z, blob_rows(h, w, [corner]), handle, drag_vectors(pairs_out),
                                  mask_of(h, w, corner))
    assert blank3[0, corner].all() and int(blank3.sum()) == 4


def test_zero_length_drag_is_the_identity():
    h, w = 10, 10
    blob = box(w, 2, 2, 5, 5)
    z = blob_latent(h, w, blob)
    z2, blank, v = semantic_move(z, blob_rows(h, w, [blob]), torch.tensor([3 * w + 3]),
                                 torch.zeros(1, 2), torch.ones(1, h * w, dtype=torch.bool))
    assert torch.equal(z2, z) and not blank.any() and not v.any()


def test_collision_score_max_over_handles():
    rows = torch.tensor([[[0.1, 0.6, 0.3], [0.5, 0.2, 0.3]]])[None]
    assert torch.allclose(collision_score(rows), torch.tensor([[0.5, 0.6, 0.3]]))


def test_rigid_moves_every_mask_cell_by_the_whole_drag_where_eq6_moves_a_fraction():
    """A local attention (the handle attends to itself 8x more than to the rest of its object):
    Eq. 6 moves the object's other cells by 1/8 of the drag (rounded: not at all), rigid by all of it."""
    h, w = 12, 12
    blob = box(w, 2, 2, 5, 5)
    handle = blob[4]
    rows = torch.full((1, 1, 1, h * w), 1e-4)
    rows[..., blob] = 1.0
    rows[..., handle] = 8.0
    rows = rows / rows.sum(-1, keepdim=True)
    drags = torch.tensor([[4.0, 3.0]])
    mask = mask_of(h, w, blob)
    v6 = movement_field(rows, torch.tensor([handle]), drags, mask)
    vr = movement_field(rows, torch.tensor([handle]), drags, mask, rigid=True)
    others = [p for p in blob if p != handle]
    assert torch.allclose(v6[0, others], drags / 8)
    assert torch.equal(vr[0, blob], drags.expand(len(blob), 2))
    assert (vr[0, [p for p in range(h * w) if p not in blob]] == 0).all()       # Eq. 8 still holds
    z = blob_latent(h, w, blob)
    z6, _, _ = semantic_move(z, rows, torch.tensor([handle]), drags, mask)
    zr, blank, _ = semantic_move(z, rows, torch.tensor([handle]), drags, mask, rigid=True)
    cx0, cy0 = centroid(z)
    filled = torch.where(blank.view(1, 1, h, w), torch.zeros(()), zr)
    assert centroid(filled) == (cx0 + 4, cy0 + 3) and int((filled[0, 0] > 2.5).sum()) == len(blob)
    assert abs(centroid(z6)[0] - cx0) < 1.0      # Eq. 6: the object stays (only the handle cell moves)


def test_rigid_keeps_the_multi_pair_attention_weights():
    h, w = 8, 8
    a, b = box(w, 0, 0, 2, 2), box(w, 5, 5, 7, 7)
    rows = blob_rows(h, w, [a, b], steps=1)
    rows[0, 0, 0, a[0]] *= 3   # the handles attend most to themselves: Eq. 6 ratios < 1 elsewhere
    rows[0, 0, 1, b[0]] *= 3
    drags = torch.tensor([[2.0, 0.0], [0.0, -2.0]])
    v = movement_field(rows, torch.tensor([a[0], b[0]]), drags, rigid=True)
    avg = rows[0, 0]
    wts = avg / avg.sum(0, keepdim=True)
    assert torch.allclose(v[0], wts.t() @ drags, atol=1e-6)
    assert torch.allclose(v[0, a], drags[0].expand(len(a), 2), atol=1e-3)
    assert torch.allclose(v[0, b], drags[1].expand(len(b), 2), atol=1e-3)
