"""Patch pair sampling, exact overlap correspondence and the patch / temporal losses."""

import pytest
import torch
import torch.nn.functional as F

from pipa_core.losses import (
    ClassMemoryBank,
    PatchContrastLoss,
    PatchPair,
    TemporalContrastLoss,
    patch_correspondence,
    sample_patch_pair,
)


def _img(b=3, h=40, w=56, seed=0):
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def test_sampled_crops_have_iou_in_range_and_come_from_rescaled_image():
    img = _img()
    for seed in range(6):
        pair = sample_patch_pair(
            img, 24, (0.5, 2.0), (0.3, 0.7), generator=torch.Generator().manual_seed(seed)
        )
        iou = pair.iou()
        assert ((iou >= 0.3 - 1e-9) & (iou <= 0.7 + 1e-9)).all()
        assert pair.crop1.shape == (3, 3, 24, 24) and pair.crop2.shape == (3, 3, 24, 24)
        for b in range(3):
            hh, ww = pair.rescaled_size[b].tolist()
            assert hh >= 24 and ww >= 24
            big = F.interpolate(
                img[b : b + 1],
                size=(hh, ww),
                mode="bilinear",
                align_corners=False,
                antialias=hh < 40,
            )
            for crop, box, flip in (
                (pair.crop1, pair.box1, pair.flip1),
                (pair.crop2, pair.box2, pair.flip2),
            ):
                y1, x1, y2, x2 = box[b].tolist()
                ref = big[0, :, y1:y2, x1:x2]
                ref = ref.flip(-1) if flip[b] else ref
                assert torch.allclose(crop[b], ref)


def test_sampling_is_deterministic_under_seed():
    img = _img()
    a = sample_patch_pair(img, 16, generator=torch.Generator().manual_seed(3))
    b = sample_patch_pair(img, 16, generator=torch.Generator().manual_seed(3))
    assert (
        torch.equal(a.crop1, b.crop1)
        and torch.equal(a.box2, b.box2)
        and torch.equal(a.flip1, b.flip1)
    )


def test_impossible_iou_range_raises_clear_error():
    img = _img(b=1, h=16, w=16)
    with pytest.raises(ValueError, match="IoU"):
        sample_patch_pair(
            img, 16, (1.0, 1.0), (0.1, 0.5), generator=torch.Generator().manual_seed(0)
        )


def _coordinate_features(pair, stride):
    """Per crop, (B, 2, h, w) maps whose cells hold the rescaled-image coordinate they cover.

    Built independently of the loss code: a coordinate image of pixel centres is
    cropped, flipped and average-pooled by the stride.
    """
    out = []
    for box, flip in ((pair.box1, pair.flip1), (pair.box2, pair.flip2)):
        maps = []
        for b in range(box.shape[0]):
            hh, ww = pair.rescaled_size[b].tolist()
            ys, xs = torch.meshgrid(torch.arange(hh) + 0.5, torch.arange(ww) + 0.5, indexing="ij")
            coords = torch.stack([ys, xs]).double()
            y1, x1, y2, x2 = box[b].tolist()
            crop = coords[:, y1:y2, x1:x2]
            crop = crop.flip(-1) if flip[b] else crop
            maps.append(F.avg_pool2d(crop[None], stride)[0])
        out.append(torch.stack(maps))
    return out


@pytest.mark.parametrize("align", [1, 4])
def test_correspondence_matches_cells_covering_the_same_image_location(align):
    stride, c = 4, 32
    img = _img(b=4, h=48, w=64, seed=1)
    for seed in range(4):
        pair = sample_patch_pair(
            img,
            c,
            (0.6, 1.6),
            (0.1, 1.0),
            generator=torch.Generator().manual_seed(seed),
            align=align,
        )
        c1, c2 = _coordinate_features(pair, stride)
        h = w = c // stride
        idx1, idx2 = patch_correspondence(pair, (h, w), stride)
        p1 = c1.permute(0, 2, 3, 1).reshape(-1, 2)[idx1]
        p2 = c2.permute(0, 2, 3, 1).reshape(-1, 2)[idx2]
        assert idx1.numel() > 0
        assert ((p1 - p2).abs() <= stride / 2).all()  # same image location within half a cell
        if align == stride:
            assert torch.equal(p1, p2)  # aligned boxes: exact
        assert idx1.unique().numel() == idx1.numel() and idx2.unique().numel() == idx2.numel()
        assert torch.equal(idx1 // (h * w), idx2 // (h * w))  # same image
        # completeness: every pair of cells strictly closer than half a cell is matched
        a = c1.permute(0, 2, 3, 1).reshape(4, -1, 2)
        b = c2.permute(0, 2, 3, 1).reshape(4, -1, 2)
        close = ((a[:, :, None] - b[:, None]).abs() < stride / 2).all(-1)
        matched = torch.zeros_like(close)
        matched.view(-1)[
            (idx1 // (h * w)) * (h * w) ** 2 + (idx1 % (h * w)) * (h * w) + idx2 % (h * w)
        ] = True
        assert not (close & ~matched).any()


def test_correspondence_is_symmetric_under_swap_with_half_cell_ties():
    # offset of 2 px with stride 4 puts every centre exactly half a cell apart
    pair = PatchPair(
        crop1=torch.zeros(1, 3, 16, 16), crop2=torch.zeros(1, 3, 16, 16),
        box1=torch.tensor([[2, 3, 18, 19]]), box2=torch.tensor([[0, 1, 16, 17]]),
        scale=torch.ones(1, 2), rescaled_size=torch.tensor([[20, 20]]),
        flip1=torch.tensor([True]), flip2=torch.tensor([False]), crop_size=16,
    )  # fmt: skip
    i1, i2 = patch_correspondence(pair, (4, 4), 4)
    j2, j1 = patch_correspondence(pair.swapped(), (4, 4), 4)
    assert i1.numel() > 0
    assert sorted(zip(i1.tolist(), i2.tolist())) == sorted(zip(j1.tolist(), j2.tolist()))


def direct_location_loss(f1, f2, idx1, idx2, tau, extra=None):
    """Each matched feature vs. its partner; denominator: every other feature (+ extra)."""
    allf = torch.cat([f1, f2] + ([extra] if extra is not None else []))
    allf = allf / allf.norm(dim=1, keepdim=True)
    n1 = f1.shape[0]
    terms = []
    for i, j in zip(idx1.tolist(), idx2.tolist()):
        for a, p in ((i, n1 + j), (n1 + j, i)):
            sim = torch.exp(allf[a] @ allf.t() / tau)
            den = sim.sum() - sim[a]
            terms.append(-torch.log(sim[p] / den))
    return sum(terms) / len(terms)


def test_patch_loss_matches_direct_formula_and_is_symmetric():
    stride, c = 4, 16
    pair = sample_patch_pair(
        _img(b=2, h=24, w=24), c, (0.8, 1.2), (0.2, 0.9), generator=torch.Generator().manual_seed(0)
    )
    g = torch.Generator().manual_seed(1)
    e1 = torch.randn(2, 5, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    e2 = torch.randn(2, 5, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    loss_fn = PatchContrastLoss(
        temperature=0.1, max_locations=None, num_negatives=None, chunk_size=3
    )
    loss = loss_fn(e1, e2, pair, stride)
    g1, g2 = torch.autograd.grad(loss, (e1, e2))
    idx1, idx2 = patch_correspondence(pair, (4, 4), stride)
    f1 = e1.permute(0, 2, 3, 1).reshape(-1, 5)
    f2 = e2.permute(0, 2, 3, 1).reshape(-1, 5)
    ref = direct_location_loss(f1, f2, idx1, idx2, 0.1)
    r1, r2 = torch.autograd.grad(ref, (e1, e2))
    assert torch.allclose(loss, ref, atol=1e-10)
    assert torch.allclose(g1, r1, atol=1e-10) and torch.allclose(g2, r2, atol=1e-10)
    swapped = loss_fn(e2, e1, pair.swapped(), stride)
    assert torch.allclose(loss, swapped, atol=1e-10)


def test_patch_loss_with_bank_negatives_matches_direct_formula():
    pair = sample_patch_pair(
        _img(b=1, h=16, w=16),
        12,
        (1.0, 1.0),
        (0.3, 1.0),
        generator=torch.Generator().manual_seed(2),
    )
    g = torch.Generator().manual_seed(3)
    e1 = torch.randn(1, 3, 3, 3, generator=g, dtype=torch.float64)
    e2 = torch.randn(1, 3, 3, 3, generator=g, dtype=torch.float64)
    bank = ClassMemoryBank(1, 3, size_per_class=4).double()
    extra = torch.randn(4, 3, generator=g, dtype=torch.float64)
    bank.enqueue(extra, torch.zeros(4, dtype=torch.long))
    loss = PatchContrastLoss(max_locations=None, num_negatives=None, memory_bank=bank)(
        e1, e2, pair, 4, update_bank=False
    )
    idx1, idx2 = patch_correspondence(pair, (3, 3), 4)
    ref = direct_location_loss(
        e1.permute(0, 2, 3, 1).reshape(-1, 3),
        e2.permute(0, 2, 3, 1).reshape(-1, 3),
        idx1,
        idx2,
        0.1,
        extra,
    )
    assert torch.allclose(loss, ref, atol=1e-10)


def test_patch_loss_subsampling_is_deterministic_and_bounded():
    pair = sample_patch_pair(
        _img(b=2, h=64, w=64), 32, generator=torch.Generator().manual_seed(4), align=4
    )
    e1 = torch.randn(2, 8, 8, 8)
    e2 = torch.randn(2, 8, 8, 8)
    fn = PatchContrastLoss(max_locations=10, num_negatives=20)
    a = fn(e1, e2, pair, 4, generator=torch.Generator().manual_seed(0))
    b = fn(e1, e2, pair, 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and torch.isfinite(a)


def test_empty_overlap_gives_zero_loss_and_zero_grad():
    pair = PatchPair(
        crop1=torch.zeros(1, 3, 8, 8), crop2=torch.zeros(1, 3, 8, 8),
        box1=torch.tensor([[0, 0, 8, 8]]), box2=torch.tensor([[8, 8, 16, 16]]),
        scale=torch.ones(1, 2), rescaled_size=torch.tensor([[16, 16]]),
        flip1=torch.tensor([False]), flip2=torch.tensor([False]), crop_size=8,
    )  # fmt: skip
    e1 = torch.randn(1, 4, 2, 2, requires_grad=True)
    e2 = torch.randn(1, 4, 2, 2, requires_grad=True)
    loss = PatchContrastLoss()(e1, e2, pair, 4)
    loss.backward()
    assert loss.item() == 0.0 and e1.grad.abs().max() == 0 and e2.grad.abs().max() == 0


def test_wrong_stride_raises_clear_error():
    pair = sample_patch_pair(_img(b=1), 16, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="stride"):
        PatchContrastLoss()(torch.randn(1, 4, 4, 4), torch.randn(1, 4, 4, 4), pair, 8)


def test_temporal_loss_matches_direct_formula_and_is_symmetric():
    g = torch.Generator().manual_seed(5)
    k = torch.randn(2, 4, 2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    r = torch.randn(2, 4, 2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    fn = TemporalContrastLoss(max_locations=None, num_negatives=None, chunk_size=4)
    loss = fn(k, r)
    gk, gr = torch.autograd.grad(loss, (k, r))
    loc = torch.arange(12)
    ref = direct_location_loss(
        k.permute(0, 2, 3, 1).reshape(-1, 4), r.permute(0, 2, 3, 1).reshape(-1, 4), loc, loc, 0.1
    )
    rk, rr = torch.autograd.grad(ref, (k, r))
    assert torch.allclose(loss, ref, atol=1e-10)
    assert torch.allclose(gk, rk, atol=1e-10) and torch.allclose(gr, rr, atol=1e-10)
    assert torch.allclose(fn(r, k), loss, atol=1e-10)


def test_temporal_valid_mask_and_empty_mask():
    k = torch.randn(1, 4, 2, 2, requires_grad=True)
    r = torch.randn(1, 4, 2, 2, requires_grad=True)
    fn = TemporalContrastLoss(max_locations=None, num_negatives=None)
    none = fn(k, r, valid=torch.zeros(1, 2, 2, dtype=torch.bool))
    none.backward()
    assert none.item() == 0.0 and k.grad.abs().max() == 0
    one = fn(k, r, valid=torch.tensor([[[True, False], [False, False]]]))
    ref = direct_location_loss(
        k.detach().permute(0, 2, 3, 1).reshape(-1, 4),
        r.detach().permute(0, 2, 3, 1).reshape(-1, 4),
        torch.tensor([0]),
        torch.tensor([0]),
        0.1,
    )
    assert torch.allclose(one, ref.float(), atol=1e-5)


def test_temporal_bank_is_filled_with_negatives():
    bank = ClassMemoryBank(1, 4, size_per_class=50)
    fn = TemporalContrastLoss(max_locations=3, num_negatives=5, memory_bank=bank)
    fn(torch.randn(1, 4, 3, 3), torch.randn(1, 4, 3, 3), generator=torch.Generator().manual_seed(0))
    assert len(bank) == 5
    fn.eval()
    fn(torch.randn(1, 4, 3, 3), torch.randn(1, 4, 3, 3), generator=torch.Generator().manual_seed(0))
    assert len(bank) == 5  # no enqueue in eval mode


@pytest.mark.parametrize("chunk_size", [None, 7])
def test_paired_fast_path_equals_the_general_info_nce(chunk_size):
    from pipa_core.losses import info_nce
    from pipa_core.losses.location import paired_info_nce

    torch.manual_seed(0)
    p, extra, e = 9, 13, 5
    anchors = torch.randn(2 * p, e, requires_grad=True)
    negs = torch.randn(extra, e, requires_grad=True)
    cand = torch.cat([anchors, negs])
    loc = torch.arange(p)
    ids = torch.cat([loc, loc])
    views = torch.cat([torch.zeros(p), torch.ones(p)]).long()
    cand_ids = torch.cat([ids, 2 * p + torch.arange(extra)])
    cand_views = torch.cat([views, torch.full((extra,), 2)])
    general = info_nce(anchors, cand, ids, cand_ids, temperature=0.2, anchor_views=views,
                       candidate_views=cand_views, chunk_size=chunk_size)  # fmt: skip
    fast = paired_info_nce(anchors, cand, 0.2, chunk_size)
    torch.testing.assert_close(fast, general)
    g_general = torch.autograd.grad(general, [anchors, negs])
    g_fast = torch.autograd.grad(paired_info_nce(anchors, cand, 0.2, chunk_size), [anchors, negs])
    for a, b in zip(g_fast, g_general):
        torch.testing.assert_close(a, b)
    # by hand for anchor 0: its partner is anchor p, every other candidate but itself a negative
    c = torch.nn.functional.normalize(cand.detach(), dim=1)
    sim = c @ c[0] / 0.2
    want0 = torch.logsumexp(torch.cat([sim[1:]]), 0) - sim[p]
    s = (c[: 2 * p] @ c.t()) / 0.2
    s.fill_diagonal_(float("-inf"))
    per_anchor = torch.logsumexp(s, 1) - s[torch.arange(2 * p), (torch.arange(2 * p) + p) % (2 * p)]
    torch.testing.assert_close(per_anchor[0], want0)
    torch.testing.assert_close(fast.detach(), per_anchor.mean())
