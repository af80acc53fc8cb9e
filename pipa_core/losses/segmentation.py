"""The supervised segmentation loss: pixel-wise cross-entropy against a (pseudo-)label.

One function for every segmentor: the source CE, the mixed-image CE with the
pseudo-label weight, and each term of HRDA's multi-resolution loss
(:meth:`pipa_core.models.hrda.HRDASegmentor.seg_loss`) call it.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from pipa_core.labels import IGNORE_INDEX

__all__ = ["segmentation_ce"]


def segmentation_ce(
    logits: torch.Tensor, label: torch.Tensor, weight: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Cross-entropy of ``(B, C, h, w)`` logits against a ``(B, H, W)`` label (ignore 255).

    Logits are upsampled bilinearly to the label size (DAFormer). Without
    ``weight`` the mean runs over labelled pixels; with a ``(B, H, W)`` weight map
    it is ``Σ w·ce / #labelled`` (the pseudo-label weight scales the loss).

    Returns:
        scalar float32 loss (with graph).
    """
    if logits.shape[-2:] != label.shape[-2:]:
        logits = F.interpolate(logits, size=label.shape[-2:], mode="bilinear", align_corners=False)
    ce = F.cross_entropy(logits.float(), label, ignore_index=IGNORE_INDEX, reduction="none")
    valid = (label != IGNORE_INDEX).sum().clamp(min=1)
    if weight is not None:
        ce = ce * weight
    return ce.sum() / valid
