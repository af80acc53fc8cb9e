"""SPCL semantic prototype-based contrast.

Each L2-normalised pixel feature is a query; the prototype of its class is the
single positive and the other ``C - 1`` prototypes are the negatives::

    L = -mean_i log[ r(e_i, p_{y_i}) / sum_{c=1}^{C} r(e_i, p_c) ]

Prototypes ``p_c`` (a registered buffer, so they are checkpointed) are
initialised once from source ground-truth class means and then updated every
step with ``p_c <- lambda * p_c + (1 - lambda) * mean_c(batch)`` (SPCL:
``lambda = 0.1``; ``lambda = 1`` keeps them fixed). Class means are taken over
L2-normalised features. Target pixels use pseudo-labels filtered with
class-wise thresholds ``min(0.9, median confidence of the class)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipa_core.labels import IGNORE_INDEX
from pipa_core.losses.infonce import info_nce, zero_loss
from pipa_core.losses.pixel import downsample_labels


def classwise_thresholds(probs: torch.Tensor, max_threshold: float = 0.9) -> torch.Tensor:
    """SPCL class-wise confidence thresholds from softmax probabilities.

    Args:
        probs: (B, C, h, w) softmax probabilities.
        max_threshold: cap (SPCL: 0.9).
    Returns:
        (C,) ``min(max_threshold, median confidence of pixels predicted as c)``;
        classes never predicted get ``max_threshold``. The median of an even
        count is the lower middle value (``torch.median``).
    """
    if probs.dim() != 4:
        raise ValueError(
            f"classwise_thresholds: probs must be (B, C, h, w), got {tuple(probs.shape)}"
        )
    conf, pred = probs.detach().max(dim=1)
    n_cls = probs.shape[1]
    thr = torch.full((n_cls,), float(max_threshold), dtype=conf.dtype, device=conf.device)
    conf, pred = conf.reshape(-1), pred.reshape(-1)
    for c in torch.unique(pred).tolist():  # loop over classes, not pixels
        thr[c] = torch.clamp(conf[pred == c].median(), max=max_threshold)
    return thr


def pseudo_labels_with_thresholds(
    probs: torch.Tensor, thresholds: torch.Tensor | None = None, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Arg-max pseudo-labels (B, h, w); pixels with confidence < threshold of their class -> ignore.

    ``thresholds`` (C,) defaults to :func:`classwise_thresholds` of ``probs``.
    """
    if thresholds is None:
        thresholds = classwise_thresholds(probs)
    if thresholds.shape != (probs.shape[1],):
        raise ValueError(
            f"pseudo_labels_with_thresholds: thresholds must be ({probs.shape[1]},), got "
            f"{tuple(thresholds.shape)}"
        )
    conf, pred = probs.detach().max(dim=1)
    keep = conf >= thresholds.to(conf.device)[pred]
    return torch.where(keep, pred, torch.full_like(pred, ignore_index))


class PrototypeContrastLoss(nn.Module):
    """SPCL pixel-to-prototype contrastive loss with EMA prototypes.

    Args:
        num_classes: C.
        dim: E, embedding dimension.
        temperature: tau (SPCL gives no value in the text; 0.1 as PiPa).
        momentum: lambda of the prototype update (SPCL: 0.1; 1.0 = fixed).
        max_pixels: subsample at most this many query pixels per call (``None``: all).
        chunk_size: query rows per InfoNCE chunk.
        ignore_index: 255.

    Buffers: ``prototypes`` (C, E), ``initialized`` (C,) bool.
    """

    def __init__(
        self,
        num_classes: int,
        dim: int,
        temperature: float = 0.1,
        momentum: float = 0.1,
        max_pixels: int | None = None,
        chunk_size: int | None = 4096,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        super().__init__()
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"PrototypeContrastLoss: momentum must be in [0, 1], got {momentum}")
        self.num_classes, self.dim = num_classes, dim
        self.temperature, self.momentum = temperature, momentum
        self.max_pixels, self.chunk_size, self.ignore_index = max_pixels, chunk_size, ignore_index
        self.register_buffer("prototypes", torch.zeros(num_classes, dim))
        self.register_buffer("initialized", torch.zeros(num_classes, dtype=torch.bool))

    def _flatten(
        self, emb: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if emb.dim() != 4 or emb.shape[1] != self.dim or labels.dim() != 3:
            raise ValueError(
                f"PrototypeContrastLoss: expected emb (B, {self.dim}, h, w) and labels (B, h, w), "
                f"got {tuple(emb.shape)} and {tuple(labels.shape)}"
            )
        labels = downsample_labels(labels, emb.shape[2:], "nearest", self.ignore_index)
        x = emb.permute(0, 2, 3, 1).reshape(-1, self.dim)
        y = labels.reshape(-1).to(x.device)
        valid = (y != self.ignore_index) & (y >= 0) & (y < self.num_classes)
        return x[valid], y[valid]

    @torch.no_grad()
    def class_means(
        self, emb: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Means of normalised features per class: ``(means (C, E), present (C,) bool)``."""
        x, y = self._flatten(emb.detach(), labels)
        x = F.normalize(x, dim=1).to(self.prototypes.dtype)
        sums = torch.zeros_like(self.prototypes).index_add_(0, y, x)
        cnt = torch.zeros(self.num_classes, device=x.device, dtype=x.dtype).index_add_(
            0, y, torch.ones_like(y, dtype=x.dtype)
        )
        present = cnt > 0
        means = torch.where(present[:, None], sums / cnt.clamp(min=1)[:, None], sums)
        return means, present

    @torch.no_grad()
    def init_from(self, emb: torch.Tensor, labels: torch.Tensor) -> None:
        """(Re)initialise prototypes of the classes present from source GT means."""
        means, present = self.class_means(emb, labels)
        self.prototypes[present] = means[present]
        self.initialized |= present

    @torch.no_grad()
    def update(self, emb: torch.Tensor, labels: torch.Tensor) -> None:
        """EMA step ``p_c <- lambda p_c + (1 - lambda) mean_c``; first sight of a class initialises it."""
        means, present = self.class_means(emb, labels)
        ema = present & self.initialized
        fresh = present & ~self.initialized
        self.prototypes[ema] = (
            self.momentum * self.prototypes[ema] + (1 - self.momentum) * means[ema]
        )
        self.prototypes[fresh] = means[fresh]
        self.initialized |= present

    def forward(
        self,
        emb: torch.Tensor,
        labels: torch.Tensor,
        update: bool = True,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Loss for embeddings (B, E, h, w) and labels (B, h, w) (255 ignored).

        Source: ground truth with ``update=True``. Target: pass
        :func:`pseudo_labels_with_thresholds` output with ``update=False``.
        The loss uses the prototypes *before* this call's EMA step; on the very
        first call the prototypes are initialised from this batch first.
        """
        x, y = self._flatten(emb, labels)
        if not bool(self.initialized.any()) and update:
            self.init_from(emb, labels)
        if self.max_pixels is not None and x.shape[0] > self.max_pixels:
            dev = generator.device if generator is not None else x.device
            keep = torch.randperm(x.shape[0], generator=generator, device=dev)[: self.max_pixels]
            keep = keep.to(x.device)
            x, y = x[keep], y[keep]
        cls = torch.nonzero(self.initialized, as_tuple=True)[0]
        if x.shape[0] == 0 or cls.numel() == 0:
            loss = zero_loss(emb)
        else:
            loss = info_nce(
                x,
                self.prototypes[cls].to(x.dtype),
                y,
                cls,
                temperature=self.temperature,
                chunk_size=self.chunk_size,
            ) + zero_loss(emb)
        if update and self.training:
            self.update(emb, labels)
        return loss
