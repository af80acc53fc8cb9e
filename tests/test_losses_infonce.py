"""InfoNCE core: values and gradients against a direct loop over the formula; chunking."""

import math

import pytest
import torch

from pipa_core.losses import info_nce


def reference_info_nce(a, c, pos, neg, tau, denominator="all", average="pairs"):
    """Direct, unchunked loop over positive pairs written from the formula."""
    a = a / a.norm(dim=1, keepdim=True)
    c = c / c.norm(dim=1, keepdim=True)
    terms, per_anchor = [], []
    for i in range(a.shape[0]):
        r = [torch.exp(torch.dot(a[i], c[k]) / tau) for k in range(c.shape[0])]
        mine = []
        for j in range(c.shape[0]):
            if not pos[i][j]:
                continue
            if denominator == "all":
                den = sum(r[k] for k in range(c.shape[0]) if pos[i][k] or neg[i][k])
            else:
                den = r[j] + sum(r[k] for k in range(c.shape[0]) if neg[i][k])
            mine.append(-torch.log(r[j] / den))
        terms += mine
        if mine:
            per_anchor.append(sum(mine) / len(mine))
    if average == "pairs":
        return sum(terms) / len(terms)
    return sum(per_anchor) / len(per_anchor)


def class_masks(a_ids, c_ids, self_index=None):
    n, m = len(a_ids), len(c_ids)
    pos = [
        [a_ids[i] == c_ids[k] and (self_index is None or self_index[i] != k) for k in range(m)]
        for i in range(n)
    ]
    neg = [[a_ids[i] != c_ids[k] for k in range(m)] for i in range(n)]
    return pos, neg


@pytest.mark.parametrize("denominator", ["all", "pos_neg"])
@pytest.mark.parametrize("average", ["pairs", "anchors"])
def test_class_relation_matches_reference(denominator, average):
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(9, 5, generator=g, dtype=torch.float64)
    bank = torch.randn(4, 5, generator=g, dtype=torch.float64)
    ids = torch.tensor([0, 1, 0, 2, 1, 0, 2, 3, 1])
    bank_ids = torch.tensor([3, 0, 1, 2])
    a = feats.clone().requires_grad_(True)
    cand = torch.cat([a, bank])
    cand_ids = torch.cat([ids, bank_ids])
    self_index = torch.arange(9)
    loss = info_nce(
        a, cand, ids, cand_ids, temperature=0.2, self_index=self_index,
        denominator=denominator, average=average, chunk_size=4,
    )  # fmt: skip
    (grad,) = torch.autograd.grad(loss, a)

    a_ref = feats.clone().requires_grad_(True)
    pos, neg = class_masks(ids.tolist(), cand_ids.tolist(), self_index.tolist())
    ref = reference_info_nce(a_ref, torch.cat([a_ref, bank]), pos, neg, 0.2, denominator, average)
    (grad_ref,) = torch.autograd.grad(ref, a_ref)
    assert torch.allclose(loss, ref, atol=1e-10)
    assert torch.allclose(grad, grad_ref, atol=1e-10)


def test_location_relation_matches_reference():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    c = torch.randn(8, 4, generator=g, dtype=torch.float64, requires_grad=True)
    a_ids, a_views = torch.tensor([0, 1, 2, 0, 1, 2]), torch.tensor([0, 0, 0, 1, 1, 1])
    c_ids, c_views = torch.tensor([0, 1, 2, 0, 1, 2, 7, 8]), torch.tensor([0, 0, 0, 1, 1, 1, 2, 2])
    loss = info_nce(
        a, c, a_ids, c_ids, temperature=0.1, anchor_views=a_views, candidate_views=c_views
    )
    ga, gc = torch.autograd.grad(loss, (a, c))
    pos = [[a_ids[i] == c_ids[k] and a_views[i] != c_views[k] for k in range(8)] for i in range(6)]
    neg = [[a_ids[i] != c_ids[k] for k in range(8)] for i in range(6)]
    ref = reference_info_nce(a, c, pos, neg, 0.1)
    ra, rc = torch.autograd.grad(ref, (a, c))
    assert torch.allclose(loss, ref, atol=1e-10)
    assert torch.allclose(ga, ra, atol=1e-10) and torch.allclose(gc, rc, atol=1e-10)


@pytest.mark.parametrize("denominator", ["all", "pos_neg"])
def test_chunked_equals_unchunked(denominator):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(50, 8, generator=g)
    y = torch.randint(0, 4, (50,), generator=g)
    grads, losses = [], []
    for chunk in (None, 7, 1):
        a = x.clone().requires_grad_(True)
        loss = info_nce(
            a, a, y, y, temperature=0.07, self_index=torch.arange(50),
            denominator=denominator, chunk_size=chunk,
        )  # fmt: skip
        loss.backward()
        losses.append(loss.detach())
        grads.append(a.grad)
    for lo, gr in zip(losses[1:], grads[1:]):
        assert torch.allclose(lo, losses[0], atol=1e-6)
        assert torch.allclose(gr, grads[0], atol=1e-6)


def _largest_saved_for_backward(chunk_size, n=64, m=96):
    """Largest tensor autograd keeps for backward (seen through saved-tensor hooks)."""
    g = torch.Generator().manual_seed(3)
    a = torch.randn(n, 4, generator=g, requires_grad=True)
    c = torch.randn(m, 4, generator=g, requires_grad=True)
    ids_a, ids_c = torch.randint(0, 3, (n,), generator=g), torch.randint(0, 3, (m,), generator=g)
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = info_nce(a, c, ids_a, ids_c, chunk_size=chunk_size)
    loss.backward()
    assert torch.isfinite(a.grad).all() and torch.isfinite(c.grad).all()
    return max(sizes)


def test_chunks_do_not_keep_similarity_blocks_for_backward():
    """Chunked: no (chunk, M) block is stored (recomputed in backward); unchunked stores (N, M)."""
    assert _largest_saved_for_backward(chunk_size=8) < 8 * 96
    assert _largest_saved_for_backward(chunk_size=None) >= 64 * 96


def test_degenerate_no_positive_is_zero_with_zero_grad():
    a = torch.randn(5, 3, requires_grad=True)
    ids = torch.arange(5)  # every anchor its own class, self excluded -> no positive
    loss = info_nce(a, a, ids, ids, self_index=torch.arange(5))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(a.grad, torch.zeros_like(a))


def test_single_class_pos_neg_has_no_nan():
    a = torch.randn(6, 3, requires_grad=True)
    ids = torch.zeros(6, dtype=torch.long)  # all positives, no negatives
    loss = info_nce(a, a, ids, ids, self_index=torch.arange(6), denominator="pos_neg")
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(a.grad).all() and a.grad.abs().max() == 0


def test_stable_at_tiny_temperature():
    a = torch.randn(10, 4, requires_grad=True)
    ids = torch.randint(0, 2, (10,))
    loss = info_nce(a, a, ids, ids, temperature=1e-3, self_index=torch.arange(10))
    loss.backward()
    assert math.isfinite(loss.item()) and torch.isfinite(a.grad).all()


def test_half_precision_inputs_are_computed_in_float32():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(12, 6, generator=g)
    y = torch.randint(0, 3, (12,), generator=g)
    full = info_nce(x, x, y, y, self_index=torch.arange(12))
    half = info_nce(x.bfloat16(), x.bfloat16(), y, y, self_index=torch.arange(12))
    assert half.dtype == torch.float32
    assert torch.allclose(half, full, atol=2e-2)


def test_bad_input_errors_are_clear():
    a = torch.randn(4, 3)
    with pytest.raises(ValueError, match="anchor_ids"):
        info_nce(a, a, torch.zeros(3, dtype=torch.long), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="denominator"):
        info_nce(
            a,
            a,
            torch.zeros(4, dtype=torch.long),
            torch.zeros(4, dtype=torch.long),
            denominator="x",
        )
