"""The one InfoNCE core every PiPa / PiPa++ / SPCL loss is built on.

Similarity is the exponential cosine similarity of the PiPa paper,
``r(a, b) = exp(cos(a, b) / tau)``; anchors and candidates are L2-normalised
here, so callers pass raw embeddings.

For anchor ``i`` with positive set ``P(i)`` and negative set ``N(i)`` (both
subsets of the candidates) the loss of one positive pair ``(i, j)`` is

* ``denominator="all"`` (PiPa Eq. 4/5, the default)::

      l_ij = -log[ r(i, j) / sum_{k in P(i) ∪ N(i)} r(i, k) ]

  i.e. the denominator runs over *every* candidate of the anchor -- the
  positive itself and all other positives included -- exactly like the
  ``sum_{k=1}^{N}`` of the paper.

* ``denominator="pos_neg"`` (the official PiPa / CAC code)::

      l_ij = -log[ r(i, j) / (r(i, j) + sum_{k in N(i)} r(i, k)) ]

  i.e. only this positive plus the negatives.

The reported loss is the mean of ``l_ij`` over all positive pairs
(``average="pairs"``) or the mean over anchors of each anchor's mean over its
positives (``average="anchors"``, SupCon / official pixel-contrast style).

Relations are given by integer ids, never by an ``N x M`` mask, so that one core
serves every loss:

* class contrast (pixel, prototype): ``ids`` are class ids, ``views=None``;
  positive iff same class, negative iff different class.
* location contrast (patch, temporal): ``ids`` are location ids, ``views`` the
  crop / frame index; positive iff same location and *different* view,
  negative iff different location; same location *and* same view (the anchor
  itself) is neither.

``self_index[i]`` names the candidate that *is* anchor ``i`` (or ``-1``); that
pair is never a positive (self-pairs are excluded from numerator and
denominator).

Memory: the ``N x M`` similarity matrix is never materialised. Anchors are
processed in chunks of ``chunk_size`` rows; each chunk runs under
``torch.utils.checkpoint`` so its ``chunk x M`` intermediates are freed after
the forward pass and recomputed chunk by chunk in backward. Peak memory is
``O(chunk_size * M)``, gradients are exact.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

DENOMINATORS = ("all", "pos_neg")
AVERAGES = ("pairs", "anchors")


def zero_loss(*tensors: torch.Tensor | None) -> torch.Tensor:
    """A scalar ``0`` connected to the graph of ``tensors``: backward works, grads are 0.

    Used for degenerate inputs (no positives, everything ignored, empty
    overlap) so callers can always add and backpropagate the loss.
    """
    ts = [t for t in tensors if t is not None]
    if not ts:
        raise ValueError("zero_loss needs at least one tensor to take device/dtype from")
    total = ts[0].new_zeros(())
    for t in ts:
        if t.is_floating_point():
            total = total + t.sum() * 0.0
    return total


def _masked_lse(s: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise ``log sum_{k: mask} exp(s_k)``; rows with an empty mask get 0 and ``False``.

    Never produces NaN/inf values or gradients: the shift is the detached row
    max over the mask, and empty rows are replaced before the ``log``.
    """
    off = ~mask
    shift = s.detach().masked_fill(off, torch.finfo(s.dtype).min).amax(dim=1, keepdim=True)
    nonempty = mask.any(dim=1, keepdim=True)
    shift = shift.masked_fill(~nonempty, 0.0)
    # mask *before* exp: excluded entries (e.g. self-pairs) may exceed the shift and
    # overflow, and an inf that is masked out afterwards still poisons the gradient.
    sumexp = (s - shift).masked_fill(off, 0.0).exp().masked_fill(off, 0.0).sum(dim=1, keepdim=True)
    sumexp = sumexp.masked_fill(~nonempty, 1.0)
    return (torch.log(sumexp) + shift).squeeze(1), nonempty.squeeze(1)


def _chunk_pair_losses(
    a: torch.Tensor,
    c: torch.Tensor,
    a_ids: torch.Tensor,
    c_ids: torch.Tensor,
    a_views: torch.Tensor | None,
    c_views: torch.Tensor | None,
    a_self: torch.Tensor | None,
    inv_tau: float,
    denominator: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss sum and positive count per anchor for one chunk of anchors.

    a: (n, D) normalised anchors, c: (M, D) normalised candidates.
    Returns ``(loss_sum (n,), n_pos (n,))``. Everything ``(n, M)`` lives only here.
    """
    s = (a @ c.t()) * inv_tau  # (n, M) cos / tau
    neg = a_ids[:, None] != c_ids[None, :]
    pos = ~neg
    if a_views is not None:
        pos &= a_views[:, None] != c_views[None, :]
    if a_self is not None:
        pos &= torch.arange(c.shape[0], device=c.device)[None, :] != a_self[:, None]
    if denominator == "all":
        lse, _ = _masked_lse(s, pos | neg)
        pair = lse[:, None] - s
    else:  # "pos_neg": log(r_ij + sum_neg) - log r_ij = softplus(lse_neg - s_ij)
        lse_neg, has_neg = _masked_lse(s, neg)
        pair = F.softplus(lse_neg[:, None] - s).masked_fill(~has_neg[:, None], 0.0)
    loss_sum = pair.masked_fill(~pos, 0.0).sum(dim=1)
    return loss_sum, pos.sum(dim=1).to(s.dtype)


def _check_ids(name: str, ids: torch.Tensor, n: int) -> None:
    if ids.dim() != 1 or ids.shape[0] != n or ids.is_floating_point():
        raise ValueError(
            f"info_nce: {name} must be an integer tensor of shape ({n},), got "
            f"{tuple(ids.shape)} {ids.dtype}; pass one class/location id per row"
        )


def info_nce(
    anchors: torch.Tensor,
    candidates: torch.Tensor,
    anchor_ids: torch.Tensor,
    candidate_ids: torch.Tensor,
    *,
    temperature: float = 0.1,
    anchor_views: torch.Tensor | None = None,
    candidate_views: torch.Tensor | None = None,
    self_index: torch.Tensor | None = None,
    denominator: str = "all",
    average: str = "pairs",
    chunk_size: int | None = 1024,
    normalize: bool = True,
) -> torch.Tensor:
    """Chunked, numerically stable InfoNCE over id-defined positive relations.

    Args:
        anchors: (N, D) anchor embeddings.
        candidates: (M, D) candidate embeddings (may share storage with anchors).
        anchor_ids, candidate_ids: (N,), (M,) integer class or location ids.
        temperature: tau of ``r = exp(cos / tau)``.
        anchor_views, candidate_views: optional (N,), (M,) view ids; when given,
            a positive additionally needs a different view (location contrast).
        self_index: optional (N,) long, index of the candidate that is the anchor
            itself (``-1`` for none); that pair is excluded.
        denominator: ``"all"`` (paper) or ``"pos_neg"`` (official code), see module doc.
        average: ``"pairs"`` (mean over positive pairs) or ``"anchors"``.
        chunk_size: anchor rows per chunk (``None``: one chunk); peak memory is
            ``O(chunk_size * M)``.
        normalize: L2-normalise anchors and candidates (set False only if the
            caller already did).

    Returns:
        scalar loss; an exact, graph-connected zero when there is no positive pair.
    """
    if anchors.dim() != 2 or candidates.dim() != 2 or anchors.shape[1] != candidates.shape[1]:
        raise ValueError(
            f"info_nce: expected anchors (N, D) and candidates (M, D) with equal D, got "
            f"{tuple(anchors.shape)} and {tuple(candidates.shape)}"
        )
    if denominator not in DENOMINATORS:
        raise ValueError(
            f"info_nce: denominator must be one of {DENOMINATORS}, got {denominator!r}"
        )
    if average not in AVERAGES:
        raise ValueError(f"info_nce: average must be one of {AVERAGES}, got {average!r}")
    if temperature <= 0:
        raise ValueError(f"info_nce: temperature must be > 0, got {temperature}")
    if (anchor_views is None) != (candidate_views is None):
        raise ValueError("info_nce: pass both anchor_views and candidate_views, or neither")
    n, m = anchors.shape[0], candidates.shape[0]
    _check_ids("anchor_ids", anchor_ids, n)
    _check_ids("candidate_ids", candidate_ids, m)
    if anchor_views is not None:
        _check_ids("anchor_views", anchor_views, n)
        _check_ids("candidate_views", candidate_views, m)
    if self_index is not None:
        _check_ids("self_index", self_index, n)
    if n == 0 or m == 0:
        return zero_loss(anchors, candidates)

    if anchors.dtype in (torch.float16, torch.bfloat16):
        # exp/log-sum-exp of cos/tau in half precision loses the small negatives
        anchors, candidates = anchors.float(), candidates.float()
    if normalize:
        anchors = F.normalize(anchors, dim=1)
        candidates = F.normalize(candidates, dim=1)
    step = n if chunk_size is None else max(1, int(chunk_size))
    needs_grad = torch.is_grad_enabled() and (anchors.requires_grad or candidates.requires_grad)
    sums, counts = [], []
    for lo in range(0, n, step):
        hi = min(lo + step, n)
        args = (
            anchors[lo:hi],
            candidates,
            anchor_ids[lo:hi],
            candidate_ids,
            None if anchor_views is None else anchor_views[lo:hi],
            candidate_views,
            None if self_index is None else self_index[lo:hi],
            1.0 / temperature,
            denominator,
        )
        if needs_grad and step < n:
            # Recompute the (chunk, M) block in backward instead of storing it.
            s_, c_ = checkpoint(_chunk_pair_losses, *args, use_reentrant=False)
        else:
            s_, c_ = _chunk_pair_losses(*args)
        sums.append(s_)
        counts.append(c_)
    loss_sum, n_pos = torch.cat(sums), torch.cat(counts)
    has_pos = n_pos > 0
    if not bool(has_pos.any()):
        return zero_loss(anchors, candidates)
    if average == "pairs":
        return loss_sum.sum() / n_pos.sum()
    per_anchor = loss_sum[has_pos] / n_pos[has_pos]
    return per_anchor.mean()
