"""Evaluate a segmentor on a labelled split: one confusion matrix, mIoU per protocol.

Predictions come from ``model.predict`` (whole-image or sliding-window
inference, optional flip) at input resolution; when the label is larger than
the image (e.g. a 1024x512 input with 2048x1024 ground truth) the logits are
upsampled bilinearly to the label size before the argmax.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipa_core.eval.metrics import SegmentationMetric


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    img: torch.Tensor,
    mode: str = "whole",
    crop_size: Sequence[int] | None = None,
    stride: Sequence[int] | None = None,
    flip: bool = False,
) -> torch.Tensor:
    """Logits ``(B, C, H, W)`` at the resolution of ``img`` ``(B, 3, H, W)`` via ``model.predict``."""
    if mode not in ("whole", "slide"):
        raise ValueError(f"evaluation mode must be 'whole' or 'slide', got {mode!r}")
    kwargs: dict[str, Any] = {"mode": mode, "flip": flip}
    if mode == "slide":
        if crop_size is None:
            raise ValueError("slide inference needs crop_size=(H, W) (e.g. the training crop)")
        # stride None: the model's default, half the window (pipa_core.models.inference)
        kwargs.update(crop_size=tuple(crop_size), stride=tuple(stride) if stride else None)
    return model.predict(img, **kwargs)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[dict],
    protocols: Sequence[str] = ("cs19",),
    mode: str = "whole",
    crop_size: Sequence[int] | None = None,
    stride: Sequence[int] | None = None,
    flip: bool = False,
    device: torch.device | str | None = None,
    max_samples: int | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> dict[str, Any]:
    """mIoU of ``model`` over every batch of ``loader`` (dicts with ``img`` and ``label``).

    Args:
        model: a segmentor with ``predict(img, mode=..., crop_size=..., stride=..., flip=...)``.
        loader: yields ``{"img": (B,3,H,W), "label": (B,H',W')}``.
        protocols: class protocols (``pipa_core.labels.PROTOCOLS``) to report.
        mode: ``"whole"`` or ``"slide"``; ``crop_size`` / ``stride`` for slide.
        max_samples: stop after this many images (None = all).
        autocast_dtype: run the forward under ``torch.autocast`` with this dtype.
    Returns:
        ``{"mIoU": <first protocol>, "protocols": {name: SegmentationResult.to_dict()},
        "num_images": n, "confusion_matrix": (C, C) list}``; under DDP the matrix is
        summed over ranks (each rank evaluates its shard).
    """
    if not protocols:
        raise ValueError("evaluate() needs at least one protocol, e.g. ('cs19',)")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    metric = SegmentationMetric()
    n = 0
    try:
        for batch in loader:
            if max_samples is not None and n >= max_samples:
                break
            img = batch["img"].to(device, non_blocking=True)
            label = batch["label"].to(device, non_blocking=True)
            if max_samples is not None and n + img.shape[0] > max_samples:
                img, label = img[: max_samples - n], label[: max_samples - n]
            with torch.autocast(
                device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None
            ):
                logits = predict_logits(model, img, mode, crop_size, stride, flip)
            if logits.shape[-2:] != label.shape[-2:]:
                logits = F.interpolate(
                    logits.float(), size=label.shape[-2:], mode="bilinear", align_corners=False
                )
            metric.update(logits.argmax(1), label)
            n += img.shape[0]
    finally:
        model.train(was_training)
    metric.all_reduce()
    results = metric.compute_all(protocols)
    first = results[protocols[0]]
    return {
        "mIoU": first.miou,
        "protocols": {p: r.to_dict() for p, r in results.items()},
        "num_images": n,
        "confusion_matrix": metric.cm.tolist(),
    }
