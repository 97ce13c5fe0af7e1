"""KV replacement's token masks (attention_patch/kv_replace.py): resampled to every layer's grid with hand-built
cases of known answer, and never a silent fallback to every token or to plain attention."""
import pytest
import torch

import harness

kv = None


@pytest.fixture(scope="module", autouse=True)
def module(host):
    global kv
    kv = harness.pack_module("attention_patch.kv_replace")


def cells(sel: torch.Tensor, hw: tuple) -> set:
    return {(int(i) // hw[1], int(i) % hw[1]) for i in torch.nonzero(sel.view(-1)).flatten()}


def test_same_grid_is_the_mask_itself():
    m = torch.zeros(16, 16)
    m[3:6, 4:9] = 1
    assert cells(kv.token_mask(m, (16, 16), 256), (16, 16)) == {(i, j) for i in range(3, 6) for j in range(4, 9)}


def test_coarse_grid_takes_cells_at_least_half_covered():
    m = torch.zeros(16, 16)
    m[4:8, 4:7] = 1          # 8x8 grid: cells (2, 2) full, (2, 3) and (3, 3) half, from columns 6 only
    got = cells(kv.token_mask(m, (16, 16), 64), (8, 8))
    assert got == {(2, 2), (3, 2), (2, 3), (3, 3)}
    m4 = torch.zeros(16, 16)
    m4[0:8, 0:8] = 1         # 4x4 grid (level 2): exactly the top-left 2x2 cells
    assert cells(kv.token_mask(m4, (16, 16), 16), (4, 4)) == {(0, 0), (0, 1), (1, 0), (1, 1)}


def test_a_small_object_keeps_its_nearest_cell_on_every_grid():
    m = torch.zeros(16, 16)
    m[9, 5] = 1              # one latent cell: a quarter of an 8x8 cell, a sixteenth of a 4x4 cell
    m[2, 13] = 1             # a second, separate object
    assert cells(kv.token_mask(m, (16, 16), 64), (8, 8)) == {(4, 2), (1, 6)}
    assert cells(kv.token_mask(m, (16, 16), 16), (4, 4)) == {(2, 1), (0, 3)}
    assert cells(kv.token_mask(m, (16, 16), 4), (2, 2)) == {(1, 0), (0, 1)}


def test_components_are_four_connected():
    m = torch.zeros(6, 6)
    m[0, 0] = m[1, 1] = 1    # diagonal: two components
    m[4, 2:5] = 1
    labels = kv.connected_components(m)
    assert len(labels.unique()) == 4 and labels[0, 0] != labels[1, 1] and len(labels[4, 2:5].unique()) == 1


def test_an_empty_mask_or_a_grid_no_level_fits_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        kv.token_mask(torch.zeros(16, 16), (16, 16), 64)
    m = torch.ones(16, 16)
    with pytest.raises(ValueError, match="no level of the 16x16 latent grid has 50 tokens"):
        kv.token_mask(m, (16, 16), 50)
    call = kv.BranchCall(branches=("gud", "gen_pos"), latent_hw=(16, 16), kv=True, kv_mask=torch.zeros(16, 16),
                         node="Dual-Branch Guider")
    with pytest.raises(ValueError, match="Dual-Branch Guider: KV replacement \\(kv_mask\\): .*empty"):
        kv.selected_tokens(call, "kv_mask", 64, "cpu")


def test_a_batch_that_does_not_split_into_the_branches_is_an_error():
    call = kv.BranchCall(branches=("gud", "gen_neg", "gen_pos"), latent_hw=(4, 4), kv=True, node="Dual-Branch Guider")
    q = torch.randn(4, 16, 8)
    with pytest.raises(ValueError, match="Dual-Branch Guider: KV replacement: the attention batch has 4 rows, not a "
                                         "multiple of the call's 3 branches"):
        kv.KVReplacePatch()(q, q, q, {kv.CALL_KEY: call, "n_heads": 1})


def test_masked_tokens_are_the_only_ones_read():
    """The generation row's attention over [gud tokens in the mask] equals softmax(q k^T / sqrt(d)) over them."""
    torch.manual_seed(0)
    mask = torch.zeros(4, 4)
    mask[0, 0] = mask[3, 2] = 1
    call = kv.BranchCall(branches=("gud", "gen_pos"), latent_hw=(4, 4), kv=True, kv_mask=mask)
    q, k, v = (torch.randn(2, 16, 8) for _ in range(3))
    out = kv.KVReplacePatch()(q, k, v, {kv.CALL_KEY: call, "n_heads": 1})
    idx = torch.tensor([0, 14])
    w = torch.softmax(q[1] @ k[0, idx].T / 8 ** 0.5, dim=-1)
    assert torch.allclose(out[1], w @ v[0, idx], atol=1e-5)
    plain = torch.softmax(q[0] @ k[0].T / 8 ** 0.5, dim=-1) @ v[0]
    assert torch.allclose(out[0], plain, atol=1e-5)


def test_paste_that_covers_the_whole_image_is_refused_up_front():
    """paste's kv_mask is the image outside the pasted region; when that is empty the guider refuses before sampling."""
    model, clip, vae = harness.load_tiny_checkpoint("sd15")
    (pos,) = harness.call_node("CLIPTextEncode", clip=clip, text="a photo")
    with torch.inference_mode():
        lat = {"samples": torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))}
        inv = harness.run_node("DragFusionPNIInvert", model=model, latent=lat, source=pos, steps=2, cfg=1.0, lam=0.0,
                               prox="L1", eta=0.0, guidance_until=2, scheduler="ddim_uniform").result[0]
        mask = torch.ones(1, 32, 32)
        with pytest.raises(ValueError, match="Dual-Branch Guider: input 'kv_replace': the kv_mask at layer output\\.\\S+: "
                                             "the mask of tokens to read is empty"):
            harness.run_node("DragFusionDualBranchGuider", model=model, inversion=inv, target=pos, task="paste",
                             reference=inv, reference_mask=mask, offset_x=0.0, offset_y=0.0, scale=1.0, kv_replace=True)
        (g,) = harness.run_node("DragFusionDualBranchGuider", model=model, inversion=inv, target=pos, task="paste",
                                reference=inv, reference_mask=mask, offset_x=0.0, offset_y=0.0, scale=1.0,
                                kv_replace=False).result
        assert g is not None
