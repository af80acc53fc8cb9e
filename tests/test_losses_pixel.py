"""Pixel contrast, anchor sampling, label downsampling and the class memory bank."""

import pytest
import torch

from pipa_core.losses import ClassMemoryBank, PixelContrastLoss, downsample_labels, sample_anchors


def direct_pixel_loss(feats, labels, tau, bank=None, bank_labels=None):
    """Supervised pixel contrast written directly from PiPa Eq. 4 (denominator over all others)."""
    x = feats / feats.norm(dim=1, keepdim=True)
    cand, cand_y = x, labels
    if bank is not None:
        cand = torch.cat([x, bank / bank.norm(dim=1, keepdim=True)])
        cand_y = torch.cat([labels, bank_labels])
    sim = torch.exp(x @ cand.t() / tau)
    not_self = torch.ones_like(sim, dtype=torch.bool)
    not_self[torch.arange(len(x)), torch.arange(len(x))] = False
    den = (sim * not_self).sum(1, keepdim=True)
    pos = (labels[:, None] == cand_y[None, :]) & not_self
    return -(torch.log(sim / den) * pos).sum() / pos.sum()


def test_pixel_loss_matches_direct_formula_with_all_pixels_as_anchors():
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(2, 6, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 3, (2, 3, 4), generator=g)
    labels[0, 0, 0] = 255
    loss_fn = PixelContrastLoss(
        temperature=0.1, max_anchors=10_000, max_views=10_000, sampling="uniform", chunk_size=5
    )
    loss = loss_fn(emb, labels, generator=torch.Generator().manual_seed(1))
    (grad,) = torch.autograd.grad(loss, emb)

    emb2 = emb.detach().clone().requires_grad_(True)
    flat = emb2.permute(0, 2, 3, 1).reshape(-1, 6)
    y = labels.reshape(-1)
    ref = direct_pixel_loss(flat[y != 255], y[y != 255], 0.1)
    (grad_ref,) = torch.autograd.grad(ref, emb2)
    assert torch.allclose(loss, ref, atol=1e-10)
    assert torch.allclose(grad, grad_ref, atol=1e-10)
    assert grad[0, :, 0, 0].abs().max() == 0  # ignored pixel gets no gradient


def test_pixel_loss_with_memory_bank_matches_direct_formula_and_enqueues():
    g = torch.Generator().manual_seed(1)
    emb = torch.randn(1, 4, 2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([[[0, 0, 1], [1, 2, 2]]])
    bank = ClassMemoryBank(num_classes=3, dim=4, size_per_class=5).double()
    bank_x = torch.randn(4, 4, generator=g, dtype=torch.float64)
    bank_y = torch.tensor([0, 1, 1, 2])
    bank.enqueue(bank_x, bank_y)
    loss_fn = PixelContrastLoss(max_anchors=100, sampling="uniform", memory_bank=bank)
    loss = loss_fn(emb, labels)
    flat = emb.permute(0, 2, 3, 1).reshape(-1, 4)
    ref = direct_pixel_loss(flat, labels.reshape(-1), 0.1, bank_x, bank_y)
    assert torch.allclose(loss, ref, atol=1e-10)
    assert len(bank) == 4 + 6  # the six anchors were enqueued after the loss
    loss.backward()


def test_hard_easy_sampling_takes_half_hard_when_possible():
    labels = torch.zeros(1, 400, dtype=torch.long)
    labels[0, 200:] = 1
    pred = labels.clone()
    pred[0, :50] = 1  # 50 hard pixels of class 0
    pred[0, 200:203] = 0  # 3 hard pixels of class 1
    idx = sample_anchors(
        labels, pred, max_anchors=40, max_views=100, generator=torch.Generator().manual_seed(0)
    )
    y, p = labels.reshape(-1)[idx], pred.reshape(-1)[idx]
    hard0 = ((y == 0) & (p != 0)).sum().item()
    hard1 = ((y == 1) & (p != 1)).sum().item()
    assert (y == 0).sum() == 20 and (y == 1).sum() == 20
    assert hard0 == 10  # half/half
    assert hard1 == 3  # scarce hard pixels all taken, easy ones fill up
    assert idx.unique().numel() == idx.numel()


def test_sampling_respects_max_views_and_is_deterministic_under_seed():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (2, 500), generator=g)
    a = sample_anchors(
        labels, None, max_anchors=1000, max_views=7, generator=torch.Generator().manual_seed(5)
    )
    b = sample_anchors(
        labels, None, max_anchors=1000, max_views=7, generator=torch.Generator().manual_seed(5)
    )
    assert torch.equal(a, b)
    img = a // 500
    lab = labels.reshape(-1)[a]
    for i in range(2):
        for c in range(4):
            assert ((img == i) & (lab == c)).sum() == 7


def test_max_anchors_per_class_caps_each_class_over_the_batch():
    labels = torch.randint(0, 3, (4, 300), generator=torch.Generator().manual_seed(1))
    idx = sample_anchors(
        labels,
        None,
        10_000,
        50,
        max_anchors_per_class=30,
        generator=torch.Generator().manual_seed(2),
    )
    lab = labels.reshape(-1)[idx]
    assert [(lab == c).sum().item() for c in range(3)] == [30, 30, 30]
    assert (idx // 300).unique().numel() > 1  # drawn from several images


def test_downsample_labels_nearest_and_majority():
    lab = torch.tensor([[[0, 0, 1, 1], [0, 2, 1, 255], [255, 255, 3, 3], [255, 4, 3, 5]]])
    maj = downsample_labels(lab, (2, 2), "majority")
    assert maj.tolist() == [[[0, 1], [4, 3]]]
    strict = downsample_labels(lab, (2, 2), "majority", min_ratio=0.5)
    assert strict.tolist() == [[[0, 1], [255, 3]]]  # lone 4 covers 1/4 < 0.5
    near = downsample_labels(lab, (2, 2), "nearest")
    assert near.tolist() == [[[0, 1], [255, 3]]]
    with pytest.raises(ValueError, match="multiple"):
        downsample_labels(lab, (3, 3), "majority")


@pytest.mark.parametrize("case", ["all_ignored", "single_class_one_pixel", "all_different"])
def test_degenerate_inputs_give_zero_loss_and_zero_grad(case):
    emb = torch.randn(1, 3, 2, 2, requires_grad=True)
    if case == "all_ignored":
        labels = torch.full((1, 2, 2), 255)
    elif case == "single_class_one_pixel":
        labels = torch.tensor([[[255, 255], [255, 1]]])
    else:
        labels = torch.tensor([[[0, 1], [2, 3]]])
    loss = PixelContrastLoss()(emb, labels)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(emb.grad, torch.zeros_like(emb))


def test_bank_fifo_and_state_round_trip(tmp_path):
    bank = ClassMemoryBank(num_classes=2, dim=2, size_per_class=3)
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    bank.enqueue(x[:2], torch.tensor([0, 0]))
    bank.enqueue(x[2:], torch.tensor([0, 0, 1]))  # class 0 overflows: oldest (x0) dropped
    feats, labels = bank.get()
    assert labels.tolist() == [0, 0, 0, 1]
    got0 = {tuple(v.tolist()) for v in feats[labels == 0].round(decimals=4)}
    norm = torch.nn.functional.normalize(x, dim=1).round(decimals=4)
    assert got0 == {tuple(norm[i].tolist()) for i in (1, 2, 3)}
    from pipa_core.io import atomic_torch_save

    atomic_torch_save(bank.state_dict(), tmp_path / "bank.pt")
    other = ClassMemoryBank(num_classes=2, dim=2, size_per_class=3)
    other.load_state_dict(torch.load(tmp_path / "bank.pt", weights_only=True))
    f2, l2 = other.get()
    assert torch.equal(f2, feats) and torch.equal(l2, labels) and torch.equal(other.ptr, bank.ptr)


def test_bank_class_means_are_per_image_means():
    bank = ClassMemoryBank(num_classes=3, dim=2, size_per_class=4)
    emb = torch.tensor([[[[1.0, 3.0], [0.0, 0.0]], [[0.0, 0.0], [2.0, 5.0]]]])  # (1, 2, 2, 2)
    labels = torch.tensor([[[0, 0], [1, 255]]])
    bank.enqueue_class_means(emb, labels)
    feats, y = bank.get()
    assert y.tolist() == [0, 1]
    # both class-0 pixels are (1,0),(3,0) -> normalised (1,0); class 1 pixel (0,2) -> (0,1)
    assert torch.allclose(feats, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
