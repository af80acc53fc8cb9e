"""Teacher pseudo-labels and their confidence weight (DACS / DAFormer).

The teacher's softmax on the target image gives a hard label (argmax) and a
confidence (max probability). DAFormer does not drop unconfident pixels; it
scales the whole target loss by the *fraction* of pixels whose confidence
reaches the threshold (0.968), so an unsure teacher contributes less. Rows at
the top and bottom of the target image (ego-vehicle hood, rectification
border on Cityscapes) get weight 0: the "pseudo-label crop".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipa_core.labels import IGNORE_INDEX


@dataclass
class PseudoLabel:
    """Teacher output on a target batch.

    Attributes:
        label: ``(B, H, W)`` int64 hard pseudo-label (argmax of the teacher softmax).
        confidence: ``(B, H, W)`` float max softmax probability.
        weight: ``(B, H, W)`` float per-pixel loss weight (the confident fraction, 0 in cropped rows).
        confident_fraction: scalar tensor, fraction of pixels with confidence ≥ threshold.
    """

    label: torch.Tensor
    confidence: torch.Tensor
    weight: torch.Tensor
    confident_fraction: torch.Tensor


def crop_weight(weight: torch.Tensor, top: int = 0, bottom: int = 0) -> torch.Tensor:
    """Zero the first ``top`` and last ``bottom`` rows of a ``(B, H, W)`` weight map (returns a copy)."""
    if top < 0 or bottom < 0:
        raise ValueError(f"pseudo-label crop rows must be >= 0, got top={top}, bottom={bottom}")
    h = weight.shape[-2]
    if top + bottom >= h:
        raise ValueError(
            f"pseudo-label crop removes {top}+{bottom} rows of a {h}-row image: nothing is left; "
            "lower uda.pseudo_crop_top / uda.pseudo_crop_bottom"
        )
    weight = weight.clone()
    if top:
        weight[..., :top, :] = 0
    if bottom:
        weight[..., h - bottom :, :] = 0
    return weight


@torch.no_grad()
def make_pseudo_label(
    teacher_logits: torch.Tensor,
    threshold: float = 0.968,
    crop_top: int = 0,
    crop_bottom: int = 0,
    per_image: bool = False,
) -> PseudoLabel:
    """Pseudo-label and DAFormer weight from teacher logits.

    Args:
        teacher_logits: ``(B, C, H, W)`` logits at label resolution.
        threshold: confidence a pixel needs to count as confident.
        crop_top, crop_bottom: rows at the top / bottom whose weight is set to 0.
        per_image: one fraction per image instead of DAFormer's one per batch.
    Returns:
        :class:`PseudoLabel` with ``(B, H, W)`` tensors.
    """
    if teacher_logits.dim() != 4:
        raise ValueError(
            f"teacher logits must be (B, C, H, W), got shape {tuple(teacher_logits.shape)}"
        )
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"pseudo-label threshold must lie in [0, 1], got {threshold}")
    prob = torch.softmax(teacher_logits.float(), dim=1)
    confidence, label = prob.max(dim=1)
    confident = (confidence >= threshold).float()
    if per_image:
        frac = confident.mean(dim=(1, 2))
        weight = frac[:, None, None].expand_as(confidence)
    else:
        frac = confident.mean()
        weight = frac.expand_as(confidence)
    weight = crop_weight(weight, crop_top, crop_bottom)
    return PseudoLabel(label, confidence, weight, confident.mean())


@torch.no_grad()
def pseudo_label_accuracy(
    pl: PseudoLabel, label: torch.Tensor, threshold: float = 0.968
) -> dict[str, float]:
    """How often the pseudo-labels are right, against the true ``(B, H, W)`` target label.

    A measurement, never a training signal (the embedded benchmark keeps its target
    labels on disk for it). Returns ``pseudo_acc`` (over labelled pixels),
    ``pseudo_acc_confident`` (over labelled pixels with confidence ≥ ``threshold``)
    and ``pseudo_confident_labelled`` (the fraction of labelled pixels that are confident).
    """
    valid = label != IGNORE_INDEX
    correct = (pl.label == label) & valid
    confident = (pl.confidence >= threshold) & valid
    n_valid = valid.sum().clamp(min=1)
    n_conf = confident.sum()
    return {
        "pseudo_acc": float(correct.sum() / n_valid),
        "pseudo_acc_confident": float((correct & confident).sum() / n_conf.clamp(min=1)),
        "pseudo_confident_labelled": float(n_conf / n_valid),
    }
