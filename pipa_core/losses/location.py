"""Location contrast shared by the patch (PiPa) and temporal (PiPa++) losses.

Two views (two crops, or key and reference frame) give features ``f1`` and
``f2``; ``idx1[k]`` and ``idx2[k]`` index the two features that see the same
image location ``k``. Each such pair is a positive (in both directions);
every other feature -- other locations of both views, other images of the
batch, and optional memory-bank entries -- is a negative::

    L = -mean_k mean_{(a,b) in {(1,2),(2,1)}} log[ r(f_a[k], f_b[k]) / sum_n r(f_a[k], f_n) ]

Each anchor has exactly one positive, so the ``"all"`` and ``"pos_neg"``
denominators of :func:`info_nce` coincide here. The loss is symmetric in
the two views.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from pipa_core.losses.infonce import zero_loss
from pipa_core.losses.memory_bank import ClassMemoryBank


def _randperm(n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    dev = generator.device if generator is not None else device
    return torch.randperm(n, generator=generator, device=dev).to(device)


def _pair_chunk(a: torch.Tensor, c: torch.Tensor, rows: torch.Tensor, p: int, inv_tau: float):
    """Loss of anchor rows ``rows`` (each with one positive, its partner in the other view).

    ``a``: (n, E) normalised anchors ``rows``; ``c``: (M, E) normalised candidates whose
    first ``2p`` rows are all the anchors (view 1 then view 2). Returns ``(n,)`` losses.
    """
    s = (a @ c.t()) * inv_tau  # (n, M)
    partner = torch.where(rows < p, rows + p, rows - p)
    pos = s.gather(1, partner[:, None]).squeeze(1)
    # the anchor itself is neither positive nor negative
    s = s.scatter(1, rows[:, None], float("-inf"))
    return torch.logsumexp(s, dim=1) - pos


def paired_info_nce(
    anchors: torch.Tensor, candidates: torch.Tensor, temperature: float, chunk_size: int | None
) -> torch.Tensor:
    """:func:`info_nce` ("all" denominator, mean over pairs) for the location structure.

    ``anchors`` (2P, E) are the matched features of view 1 then view 2 (``anchors[k]``
    and ``anchors[P + k]`` share location ``k``); ``candidates`` (M, E) start with the
    same 2P rows, every further row is a negative. With exactly one positive per
    anchor the id masks of the general core are not needed: the loss of anchor ``i``
    is ``logsumexp_{k != i} s_ik - s_i,partner(i)`` with ``s = cos / tau``; the same
    value, a few ``2P x M`` passes instead of a dozen (docs/performance.md).
    """
    n = anchors.shape[0]
    if anchors.dtype in (torch.float16, torch.bfloat16):  # as info_nce: exp/lse in fp32
        anchors, candidates = anchors.float(), candidates.float()
    a = F.normalize(anchors, dim=1)
    c = F.normalize(candidates.to(a.dtype), dim=1)
    p, step = n // 2, n if chunk_size is None else max(1, int(chunk_size))
    rows = torch.arange(n, device=a.device)
    needs_grad = torch.is_grad_enabled() and (a.requires_grad or c.requires_grad)
    parts = []
    for lo in range(0, n, step):
        args = (a[lo : lo + step], c, rows[lo : lo + step], p, 1.0 / temperature)
        if needs_grad and step < n:  # recompute the (chunk, M) block in backward
            parts.append(checkpoint(_pair_chunk, *args, use_reentrant=False))
        else:
            parts.append(_pair_chunk(*args))
    return torch.cat(parts).mean()


def location_contrast(
    f1: torch.Tensor,
    f2: torch.Tensor,
    idx1: torch.Tensor,
    idx2: torch.Tensor,
    *,
    temperature: float = 0.1,
    max_locations: int | None = 1024,
    num_negatives: int | None = 3200,
    memory_bank: ClassMemoryBank | None = None,
    update_bank: bool = True,
    chunk_size: int | None = 1024,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """InfoNCE over matched locations of two views.

    Args:
        f1, f2: (N1, E), (N2, E) all features of view 1 / view 2 (whole batch).
        idx1, idx2: (P,) long; ``f1[idx1[k]]`` and ``f2[idx2[k]]`` share a location.
        max_locations: subsample at most this many matched pairs (``None``: all).
        num_negatives: extra negatives drawn uniformly from the *unmatched or
            unselected* features of both views (``None``: all of them, 0: none).
        memory_bank: optional queue of negatives (all entries are negatives);
            after the call the drawn negatives are enqueued (class 0) when
            ``update_bank``.
    Returns:
        scalar loss, graph-connected 0 when ``P == 0``.
    """
    dev = f1.device
    p = idx1.numel()
    if idx2.numel() != p:
        raise ValueError(
            f"location_contrast: idx1 and idx2 must have equal length, got {p}, {idx2.numel()}"
        )
    if p == 0:
        return zero_loss(f1, f2)
    if max_locations is not None and p > max_locations:
        keep = _randperm(p, generator, dev)[:max_locations]
        idx1, idx2, p = idx1[keep], idx2[keep], max_locations
    n1 = f1.shape[0]
    anchors = torch.cat([f1[idx1], f2[idx2]])

    # Negatives: every feature of either view that is not an anchor.
    used = torch.zeros(n1 + f2.shape[0], dtype=torch.bool, device=dev)
    used[idx1] = True
    used[n1 + idx2] = True
    pool = torch.nonzero(~used, as_tuple=True)[0]
    if num_negatives is not None and pool.numel() > num_negatives:
        pool = pool[_randperm(pool.numel(), generator, dev)[:num_negatives]]
    pool1, pool2 = pool[pool < n1], pool[pool >= n1] - n1
    negs = torch.cat([f1[pool1], f2[pool2]])
    cands = [anchors, negs]
    if memory_bank is not None and len(memory_bank) > 0:
        cands.append(memory_bank.get()[0].to(dev, anchors.dtype))
    cand = torch.cat(cands)
    loss = paired_info_nce(anchors, cand, temperature, chunk_size)
    if memory_bank is not None and update_bank and negs.shape[0] > 0:
        memory_bank.enqueue(negs, torch.zeros(negs.shape[0], dtype=torch.long, device=dev))
    return loss + zero_loss(f1, f2)


class LocationContrastLoss(nn.Module):
    """Settings shared by the patch and temporal losses (subclasses define ``forward``).

    Args:
        temperature: tau of ``r(a, b) = exp(cos(a, b) / tau)``.
        max_locations: matched locations sampled per call (``None``: all).
        num_negatives: extra negatives from the other locations of both views
            (``None``: all, 0: none beyond the other sampled locations).
        memory_bank: optional :class:`ClassMemoryBank` (``num_classes=1``) of past negatives.
        chunk_size: anchor rows per InfoNCE chunk.
    """

    def __init__(
        self,
        temperature: float = 0.1,
        max_locations: int | None = 1024,
        num_negatives: int | None = 3200,
        memory_bank: ClassMemoryBank | None = None,
        chunk_size: int | None = 1024,
    ) -> None:
        super().__init__()
        self.temperature = temperature
        self.max_locations = max_locations
        self.num_negatives = num_negatives
        self.memory_bank = memory_bank
        self.chunk_size = chunk_size
