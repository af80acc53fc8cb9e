"""Semantic-aware memory bank (PiPa++): one FIFO queue of embeddings per class.

The bank stores *detached*, L2-normalised embeddings so that the contrastive
losses can draw positives / negatives beyond the current mini-batch. It is an
``nn.Module`` whose queues are registered buffers: ``state_dict`` /
``load_state_dict`` put it in checkpoints and ``.to(device)`` moves it.

With ``num_classes=1`` it is a plain (class-agnostic) negative queue, which is
how the patch and temporal losses use it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ClassMemoryBank(nn.Module):
    """Per-class FIFO queues of embeddings.

    Args:
        num_classes: C, number of queues.
        dim: E, embedding dimension.
        size_per_class: S, capacity of each queue; the oldest entries are
            overwritten first.

    Buffers: ``queue`` (C, S, E), ``ptr`` (C,) next write slot, ``count`` (C,)
    number of valid entries (<= S).
    """

    def __init__(self, num_classes: int, dim: int, size_per_class: int = 1000) -> None:
        super().__init__()
        if num_classes < 1 or dim < 1 or size_per_class < 1:
            raise ValueError(
                "ClassMemoryBank: num_classes, dim and size_per_class must be >= 1, got "
                f"{num_classes}, {dim}, {size_per_class}"
            )
        self.num_classes, self.dim, self.size_per_class = num_classes, dim, size_per_class
        self.register_buffer("queue", torch.zeros(num_classes, size_per_class, dim))
        self.register_buffer("ptr", torch.zeros(num_classes, dtype=torch.long))
        self.register_buffer("count", torch.zeros(num_classes, dtype=torch.long))

    def __len__(self) -> int:
        return int(self.count.sum())

    @torch.no_grad()
    def enqueue(self, feats: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255) -> None:
        """Push features (N, E) with class labels (N,) into their class queues.

        Features are detached and L2-normalised. Labels equal to
        ``ignore_index`` or outside ``[0, C)`` are skipped. If more than S
        features of one class arrive at once, only the last S are kept.
        """
        if feats.dim() != 2 or feats.shape[1] != self.dim:
            raise ValueError(
                f"ClassMemoryBank.enqueue: feats must be (N, {self.dim}), got {tuple(feats.shape)}"
            )
        if labels.shape != feats.shape[:1]:
            raise ValueError(
                f"ClassMemoryBank.enqueue: labels must be ({feats.shape[0]},), got {tuple(labels.shape)}"
            )
        feats = F.normalize(feats.detach().to(self.queue.dtype), dim=1).to(self.queue.device)
        labels = labels.to(self.queue.device)
        valid = (labels != ignore_index) & (labels >= 0) & (labels < self.num_classes)
        for c in torch.unique(labels[valid]).tolist():  # loop over classes, not pixels
            x = feats[labels == c][-self.size_per_class :]
            k = x.shape[0]
            slots = (self.ptr[c] + torch.arange(k, device=x.device)) % self.size_per_class
            self.queue[c, slots] = x
            self.ptr[c] = (self.ptr[c] + k) % self.size_per_class
            self.count[c] = torch.clamp(self.count[c] + k, max=self.size_per_class)

    @torch.no_grad()
    def enqueue_class_means(
        self, emb: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255
    ) -> None:
        """Push one per-image class mean per (image, class) present.

        Args:
            emb: (B, E, h, w) embeddings; labels: (B, h, w) class ids at the same
                resolution (``ignore_index`` skipped).
        """
        if emb.dim() != 4 or labels.shape != (emb.shape[0], *emb.shape[2:]):
            raise ValueError(
                "ClassMemoryBank.enqueue_class_means: expected emb (B, E, h, w) and labels "
                f"(B, h, w), got {tuple(emb.shape)} and {tuple(labels.shape)}"
            )
        b, e = emb.shape[:2]
        x = F.normalize(emb.detach(), dim=1).permute(0, 2, 3, 1).reshape(-1, e)
        lab = labels.reshape(b, -1)
        valid = (lab != ignore_index) & (lab >= 0) & (lab < self.num_classes)
        group = torch.arange(b, device=lab.device)[:, None] * self.num_classes + lab
        group = torch.where(valid, group, torch.zeros_like(group)).reshape(-1)
        w = valid.reshape(-1).to(x.dtype)
        n_groups = b * self.num_classes
        sums = torch.zeros(n_groups, e, dtype=x.dtype, device=x.device).index_add_(
            0, group, x * w[:, None]
        )
        cnt = torch.zeros(n_groups, dtype=x.dtype, device=x.device).index_add_(0, group, w)
        present = cnt > 0
        means = sums[present] / cnt[present, None]
        cls = torch.arange(n_groups, device=x.device)[present] % self.num_classes
        self.enqueue(means, cls, ignore_index=ignore_index)

    def get(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All valid entries: ``(feats (K, E), labels (K,))``, K = ``len(self)``."""
        slot = torch.arange(self.size_per_class, device=self.queue.device)
        valid = slot[None, :] < self.count[:, None]  # (C, S)
        labels = torch.arange(self.num_classes, device=self.queue.device)[:, None].expand_as(valid)
        return self.queue[valid], labels[valid]

    @torch.no_grad()
    def reset(self) -> None:
        """Empty every queue."""
        self.queue.zero_()
        self.ptr.zero_()
        self.count.zero_()

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, dim={self.dim}, size_per_class={self.size_per_class}"
        )
