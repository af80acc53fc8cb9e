"""SPCL prototype contrast: formula, EMA update, class-wise thresholds, state."""

import torch
import torch.nn.functional as F

from pipa_core.losses import (
    PrototypeContrastLoss,
    classwise_thresholds,
    pseudo_labels_with_thresholds,
)


def test_loss_matches_direct_cross_entropy_over_prototypes():
    g = torch.Generator().manual_seed(0)
    fn = PrototypeContrastLoss(num_classes=4, dim=5, temperature=0.2, chunk_size=3).double()
    protos = torch.randn(4, 5, generator=g, dtype=torch.float64)
    fn.prototypes.copy_(protos)
    fn.initialized.fill_(True)
    emb = torch.randn(2, 5, 2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([[[0, 1, 255], [3, 3, 2]], [[1, 1, 0], [255, 2, 2]]])
    loss = fn(emb, labels, update=False)
    (grad,) = torch.autograd.grad(loss, emb)

    e2 = emb.detach().clone().requires_grad_(True)
    x = F.normalize(e2.permute(0, 2, 3, 1).reshape(-1, 5), dim=1)
    y = labels.reshape(-1)
    p = F.normalize(protos, dim=1)
    terms = []
    for i in range(x.shape[0]):
        if y[i] == 255:
            continue
        r = torch.exp(x[i] @ p.t() / 0.2)
        terms.append(-torch.log(r[y[i]] / r.sum()))
    ref = sum(terms) / len(terms)
    (grad_ref,) = torch.autograd.grad(ref, e2)
    assert torch.allclose(loss, ref, atol=1e-10) and torch.allclose(grad, grad_ref, atol=1e-10)
    assert torch.equal(fn.prototypes, protos)  # update=False leaves prototypes alone


def _means(emb, labels, c):
    x = F.normalize(emb.permute(0, 2, 3, 1).reshape(-1, emb.shape[1]), dim=1)
    y = labels.reshape(-1)
    return x[y == c].mean(0)


def test_first_call_initialises_then_ema_update():
    g = torch.Generator().manual_seed(1)
    fn = PrototypeContrastLoss(num_classes=3, dim=4, momentum=0.1)
    emb1 = torch.randn(1, 4, 2, 2, generator=g)
    lab1 = torch.tensor([[[0, 0], [1, 255]]])
    fn(emb1, lab1)
    assert fn.initialized.tolist() == [True, True, False]
    assert torch.allclose(fn.prototypes[0], _means(emb1, lab1, 0), atol=1e-6)
    emb2 = torch.randn(1, 4, 2, 2, generator=g)
    lab2 = torch.tensor([[[0, 2], [2, 1]]])
    old = fn.prototypes.clone()
    fn(emb2, lab2)
    assert torch.allclose(fn.prototypes[0], 0.1 * old[0] + 0.9 * _means(emb2, lab2, 0), atol=1e-6)
    assert torch.allclose(fn.prototypes[1], 0.1 * old[1] + 0.9 * _means(emb2, lab2, 1), atol=1e-6)
    assert torch.allclose(fn.prototypes[2], _means(emb2, lab2, 2), atol=1e-6)  # first sight: init
    assert fn.initialized.all()


def test_momentum_one_keeps_prototypes_fixed_and_state_round_trips():
    g = torch.Generator().manual_seed(2)
    fn = PrototypeContrastLoss(num_classes=2, dim=3, momentum=1.0)
    fn.init_from(torch.randn(1, 3, 2, 2, generator=g), torch.tensor([[[0, 1], [0, 1]]]))
    before = fn.prototypes.clone()
    fn(torch.randn(1, 3, 2, 2, generator=g), torch.tensor([[[1, 1], [0, 0]]]))
    assert torch.equal(fn.prototypes, before)
    other = PrototypeContrastLoss(num_classes=2, dim=3)
    other.load_state_dict(fn.state_dict())
    assert torch.equal(other.prototypes, before) and other.initialized.all()


def test_classwise_thresholds_and_pseudo_labels():
    # 3 classes; class 0 predicted with conf 0.95, 0.97, 0.99 -> median 0.97 -> capped 0.9
    # class 1 predicted with conf 0.5, 0.6, 0.7 -> median 0.6; class 2 never predicted -> 0.9
    conf = torch.tensor([0.95, 0.97, 0.99, 0.5, 0.6, 0.7])
    pred = torch.tensor([0, 0, 0, 1, 1, 1])
    probs = torch.zeros(1, 3, 1, 6)
    rest = (1 - conf) / 2
    for c in range(3):
        probs[0, c, 0] = torch.where(pred == c, conf, rest)
    thr = classwise_thresholds(probs)
    assert torch.allclose(thr, torch.tensor([0.9, 0.6, 0.9]))
    pl = pseudo_labels_with_thresholds(probs, thr)
    assert pl.tolist() == [[[0, 0, 0, 255, 1, 1]]]


def test_degenerate_all_ignored_and_unseen_classes():
    fn = PrototypeContrastLoss(num_classes=3, dim=2)
    emb = torch.randn(1, 2, 2, 2, requires_grad=True)
    loss = fn(emb, torch.full((1, 2, 2), 255))
    loss.backward()
    assert loss.item() == 0.0 and emb.grad.abs().max() == 0
    assert not fn.initialized.any()
    # single class present: its prototype is the only candidate -> log(1) = 0, finite
    emb2 = torch.randn(1, 2, 2, 2, requires_grad=True)
    loss2 = fn(emb2, torch.zeros(1, 2, 2, dtype=torch.long))
    loss2.backward()
    assert torch.isfinite(loss2) and torch.isfinite(emb2.grad).all()
