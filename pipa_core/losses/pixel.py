"""Pixel-wise contrast (PiPa Eq. 4): same-class pixels attract, other classes repel.

For a sampled anchor pixel ``i`` with class ``y_i``, positives are the other
sampled pixels (and memory-bank entries) of class ``y_i``, negatives those of
other classes::

    L_pixel = -mean_{(i,j): y_i = y_j, i != j} log[ r(e_i, e_j) / sum_k r(e_i, e_k) ]

(see :mod:`pipa_core.losses.infonce` for the denominator convention).

Anchors are sampled per (image, class) as in the official PiPa code: with
predictions, half *hard* (mispredicted) and half *easy* (correctly predicted)
pixels when both exist, otherwise filled up from the other kind; without
predictions, uniformly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipa_core.labels import IGNORE_INDEX
from pipa_core.losses.infonce import info_nce, zero_loss
from pipa_core.losses.memory_bank import ClassMemoryBank


def downsample_labels(
    labels: torch.Tensor,
    size: tuple[int, int],
    mode: str = "nearest",
    ignore_index: int = IGNORE_INDEX,
    min_ratio: float = 0.0,
) -> torch.Tensor:
    """Bring labels (B, H, W) to feature resolution ``size = (h, w)``.

    * ``"nearest"``: nearest-neighbour sampling (``F.interpolate``), as the
      official PiPa pixel contrast does.
    * ``"majority"``: each feature cell takes the most frequent non-ignored
      label of its ``(H/h) x (W/w)`` block (ties -> smallest id); the cell is
      ignored if the block is fully ignored or the winner covers less than
      ``min_ratio`` of the block (DAFormer-style). Needs ``H % h == W % w == 0``.

    Returns int64 (B, h, w).
    """
    if labels.dim() != 3:
        raise ValueError(f"downsample_labels: labels must be (B, H, W), got {tuple(labels.shape)}")
    h, w = size
    big_h, big_w = labels.shape[1:]
    labels = labels.long()
    if (big_h, big_w) == (h, w):
        return labels
    if mode == "nearest":
        out = F.interpolate(labels[:, None].float(), size=(h, w), mode="nearest")
        return out[:, 0].long()
    if mode != "majority":
        raise ValueError(f"downsample_labels: mode must be 'nearest' or 'majority', got {mode!r}")
    if big_h % h or big_w % w:
        raise ValueError(
            f"downsample_labels: majority mode needs label size {big_h}x{big_w} to be a multiple "
            f"of the feature size {h}x{w}; crop/pad the labels or use mode='nearest'"
        )
    fy, fx = big_h // h, big_w // w
    b = labels.shape[0]
    # (B, h, w, fy*fx) blocks; count votes with one bincount over (cell, label).
    blocks = labels.reshape(b, h, fy, w, fx).permute(0, 1, 3, 2, 4).reshape(b * h * w, fy * fx)
    valid = (blocks != ignore_index) & (blocks >= 0)
    n_bins = int(blocks[valid].max()) + 1 if bool(valid.any()) else 1
    cell = torch.arange(blocks.shape[0], device=labels.device)[:, None].expand_as(blocks)
    flat = (cell * n_bins + blocks.clamp(0, n_bins - 1))[valid]
    votes = torch.bincount(flat, minlength=blocks.shape[0] * n_bins).reshape(-1, n_bins)
    best_count, best = votes.max(dim=1)
    keep = (best_count > 0) & (best_count.float() >= min_ratio * fy * fx)
    out = torch.where(keep, best, torch.full_like(best, ignore_index))
    return out.reshape(b, h, w)


def _rank_within(groups: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Rank of each element among equal ``groups`` values, visiting them in ``order``.

    Returns ranks (P,) aligned with the original positions.
    """
    perm = order[torch.argsort(groups[order], stable=True)]
    _, counts = torch.unique_consecutive(groups[perm], return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    rank_sorted = torch.arange(perm.numel(), device=groups.device) - torch.repeat_interleave(
        starts, counts
    )
    rank = torch.empty_like(rank_sorted)
    rank[perm] = rank_sorted
    return rank


def sample_anchors(
    labels: torch.Tensor,
    predictions: torch.Tensor | None = None,
    max_anchors: int = 1024,
    max_views: int = 100,
    ignore_index: int = IGNORE_INDEX,
    generator: torch.Generator | None = None,
    max_anchors_per_class: int | None = None,
) -> torch.Tensor:
    """Pick anchor pixels per (image, class), vectorised.

    Every (image, class) group present gets ``n_view = min(max_anchors // G,
    max_views)`` anchors (at least 1; fewer if the group is smaller), G = number
    of groups. With ``predictions`` the picks alternate easy (prediction ==
    label) and hard (prediction != label) so that half of them are hard when
    possible; the scarcer kind is exhausted first and the other fills up
    (official PiPa rule). ``max_anchors_per_class`` optionally caps each class
    over the whole batch (random subset of its per-image picks).

    Args:
        labels: (B, P) flattened labels at feature resolution.
        predictions: optional (B, P) predicted classes.
    Returns:
        (N,) long indices into the flattened (B*P) pixels.
    """
    b, p = labels.shape
    flat_lab = labels.reshape(-1)
    idx = torch.nonzero(flat_lab != ignore_index, as_tuple=True)[0]
    if idx.numel() == 0:
        return idx
    lab = flat_lab[idx]
    group = torch.div(idx, p, rounding_mode="floor") * (int(lab.max()) + 1) + lab
    _, group = torch.unique(group, return_inverse=True)
    n_groups = int(group.max()) + 1
    n_view = max(1, min(max_anchors // n_groups, max_views))
    if predictions is not None:
        hard = (predictions.reshape(-1)[idx] != lab).long()
    else:
        hard = torch.zeros_like(lab)
    dev = generator.device if generator is not None else labels.device
    order = torch.argsort(torch.rand(idx.numel(), generator=generator, device=dev).to(idx.device))
    # random rank inside (group, hard/easy), then interleave easy/hard: 0e,1h,2e,3h,...
    rank = _rank_within(group * 2 + hard, order)
    inter = 2 * rank + hard
    # final rank inside the group following the interleaved order
    order2 = torch.argsort(group * (2 * idx.numel() + 2) + inter)
    rank2 = _rank_within(group, order2)
    keep = rank2 < n_view
    if max_anchors_per_class is not None:
        # cap each class over the whole batch, visiting images in a random order
        sel = torch.nonzero(keep, as_tuple=True)[0]
        order3 = torch.argsort(
            torch.rand(sel.numel(), generator=generator, device=dev).to(idx.device)
        )
        keep[sel[_rank_within(lab[sel], order3) >= max_anchors_per_class]] = False
    return idx[keep]


class PixelContrastLoss(nn.Module):
    """PiPa pixel-wise contrastive loss with optional semantic-aware memory bank.

    Args:
        temperature: tau (official PiPa code: 0.1).
        max_anchors: total anchor budget per call (official ``max_samples`` 1024).
        max_views: anchors per (image, class) at most (official ``max_views`` 100).
        max_anchors_per_class: optional cap per class over the whole batch (``None``: no cap).
        sampling: ``"hard_easy"`` (uses predictions when given) or ``"uniform"``.
        memory_bank: optional :class:`ClassMemoryBank`; its entries join the
            candidates (same class -> positive, other class -> negative).
        bank_update: what to enqueue after each call: ``"pixels"`` (the sampled
            anchors), ``"means"`` (per-image class means) or ``"both"``.
        denominator, average, chunk_size: passed to :func:`info_nce`.
        base_temperature: if set, scale the loss by ``temperature / base_temperature``
            (official code uses 0.07); ``None`` keeps the plain paper formula.
        label_downsample: ``"nearest"`` (official) or ``"majority"``, used when
            labels are not already at feature resolution.
        ignore_index: ignored label value (255).
    """

    def __init__(
        self,
        temperature: float = 0.1,
        max_anchors: int = 1024,
        max_views: int = 100,
        max_anchors_per_class: int | None = None,
        sampling: str = "hard_easy",
        memory_bank: ClassMemoryBank | None = None,
        bank_update: str = "pixels",
        denominator: str = "all",
        average: str = "pairs",
        chunk_size: int | None = 1024,
        base_temperature: float | None = None,
        label_downsample: str = "nearest",
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        super().__init__()
        if sampling not in ("hard_easy", "uniform"):
            raise ValueError(
                f"PixelContrastLoss: sampling must be 'hard_easy' or 'uniform', got {sampling!r}"
            )
        if bank_update not in ("pixels", "means", "both"):
            raise ValueError(
                f"PixelContrastLoss: bank_update must be 'pixels', 'means' or 'both', got {bank_update!r}"
            )
        self.temperature, self.max_anchors, self.max_views = temperature, max_anchors, max_views
        self.max_anchors_per_class = max_anchors_per_class
        self.sampling, self.bank_update = sampling, bank_update
        self.memory_bank = memory_bank
        self.denominator, self.average, self.chunk_size = denominator, average, chunk_size
        self.base_temperature = base_temperature
        self.label_downsample, self.ignore_index = label_downsample, ignore_index

    def forward(
        self,
        emb: torch.Tensor,
        labels: torch.Tensor,
        predictions: torch.Tensor | None = None,
        update_bank: bool = True,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Loss for embeddings (B, E, h, w) and labels (B, h, w) (or (B, H, W), downsampled).

        ``predictions`` (B, h, w) (or (B, H, W)) enable hard/easy sampling.
        Target pixels: pass confident pseudo-labels as ``labels`` (others 255).
        Returns a scalar; 0 (graph-connected) if no positive pair exists.
        """
        if emb.dim() != 4 or labels.dim() != 3 or labels.shape[0] != emb.shape[0]:
            raise ValueError(
                "PixelContrastLoss: expected emb (B, E, h, w) and labels (B, h, w), got "
                f"{tuple(emb.shape)} and {tuple(labels.shape)}"
            )
        b, e, h, w = emb.shape
        labels = downsample_labels(labels, (h, w), self.label_downsample, self.ignore_index)
        if predictions is not None and self.sampling == "hard_easy":
            predictions = downsample_labels(predictions, (h, w), "nearest", self.ignore_index)
        else:
            predictions = None
        idx = sample_anchors(
            labels.reshape(b, -1),
            predictions.reshape(b, -1) if predictions is not None else None,
            self.max_anchors,
            self.max_views,
            self.ignore_index,
            generator,
            self.max_anchors_per_class,
        )
        flat = emb.permute(0, 2, 3, 1).reshape(-1, e)
        feats, cls = flat[idx], labels.reshape(-1)[idx]
        cand, cand_cls = feats, cls
        if self.memory_bank is not None and len(self.memory_bank) > 0:
            bank_x, bank_y = self.memory_bank.get()
            cand = torch.cat([feats, bank_x.to(feats.device, feats.dtype)])
            cand_cls = torch.cat([cls, bank_y.to(cls.device)])
        self_index = torch.arange(idx.numel(), device=emb.device)
        if idx.numel() == 0:
            loss = zero_loss(emb)
        else:
            loss = info_nce(
                feats,
                cand,
                cls,
                cand_cls,
                temperature=self.temperature,
                self_index=self_index,
                denominator=self.denominator,
                average=self.average,
                chunk_size=self.chunk_size,
            )
            loss = loss + zero_loss(emb)  # keep emb in the graph even with no positives
        if self.base_temperature is not None:
            loss = loss * (self.temperature / self.base_temperature)
        if self.memory_bank is not None and update_bank and self.training:
            if self.bank_update in ("pixels", "both") and idx.numel() > 0:
                self.memory_bank.enqueue(feats, cls, self.ignore_index)
            if self.bank_update in ("means", "both"):
                self.memory_bank.enqueue_class_means(emb, labels, self.ignore_index)
        return loss
