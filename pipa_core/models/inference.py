"""Whole-image and sliding-window inference returning logits at input resolution.

Sliding-window inference (the Cityscapes protocol of DAFormer / HRDA uses
1024x1024 windows at stride 512 on 1024x2048 images) covers the image with
overlapping crops, predicts each, upsamples it to the crop size and averages
the overlaps with a count map.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["predict", "slide_windows"]


def _logits_at(model: nn.Module, img: torch.Tensor) -> torch.Tensor:
    """Model logits bilinearly upsampled to the size of ``img``: ``(B, K, H, W)``."""
    logits = model(img)["logits"]
    if logits.shape[-2:] != img.shape[-2:]:
        logits = F.interpolate(logits, size=img.shape[-2:], mode="bilinear", align_corners=False)
    return logits


def slide_windows(
    size: Tuple[int, int], crop_size: Tuple[int, int], stride: Tuple[int, int]
) -> List[Tuple[int, int, int, int]]:
    """Top-left-anchored windows ``(y1, y2, x1, x2)`` covering an image of ``size``.

    The last window of each row / column is shifted back to end at the border, so
    every window has exactly ``crop_size`` (``size`` must be at least ``crop_size``).
    """
    (h, w), (ch, cw), (sh, sw) = size, crop_size, stride
    rows = max(math.ceil((h - ch) / sh), 0) + 1
    cols = max(math.ceil((w - cw) / sw), 0) + 1
    windows = []
    for r in range(rows):
        for c in range(cols):
            y1, x1 = min(r * sh, h - ch), min(c * sw, w - cw)
            windows.append((y1, y1 + ch, x1, x1 + cw))
    return windows


def _pad_to(img: torch.Tensor, size: Tuple[int, int], fill: Optional[torch.Tensor]) -> torch.Tensor:
    """Pad bottom/right to at least ``size``; padding takes the colour ``fill`` (B or 1, 3, 1, 1)."""
    ph, pw = max(size[0] - img.shape[-2], 0), max(size[1] - img.shape[-1], 0)
    if ph == 0 and pw == 0:
        return img
    if fill is None:
        return F.pad(img, (0, pw, 0, ph))
    # Pad with the normalisation mean so the padding is exactly zero after normalising.
    return F.pad(img - fill, (0, pw, 0, ph)) + fill


def _slide(
    model: nn.Module,
    img: torch.Tensor,
    crop_size: Tuple[int, int],
    stride: Tuple[int, int],
    batch_size: int,
) -> torch.Tensor:
    h, w = img.shape[-2:]
    fill = getattr(model, "mean", None)
    fill = fill.to(img.dtype) if isinstance(fill, torch.Tensor) else None
    padded = _pad_to(img, crop_size, fill)
    windows = slide_windows(padded.shape[-2:], crop_size, stride)
    b = img.shape[0]
    out = None
    count = padded.new_zeros(1, 1, *padded.shape[-2:])
    for start in range(0, len(windows), batch_size):
        chunk = windows[start : start + batch_size]
        crops = torch.cat([padded[..., y1:y2, x1:x2] for y1, y2, x1, x2 in chunk], dim=0)
        logits = _logits_at(model, crops).float()
        if out is None:
            out = logits.new_zeros(b, logits.shape[1], *padded.shape[-2:])
        for i, (y1, y2, x1, x2) in enumerate(chunk):
            out[..., y1:y2, x1:x2] += logits[i * b : (i + 1) * b]
            count[..., y1:y2, x1:x2] += 1
    return (out / count)[..., :h, :w]


def predict(
    model: nn.Module,
    img: torch.Tensor,
    mode: str = "whole",
    crop_size: Optional[Sequence[int]] = None,
    stride: Optional[Sequence[int]] = None,
    flip: bool = False,
    batch_size: int = 4,
) -> torch.Tensor:
    """Segment ``img`` and return float32 logits at input resolution.

    Args:
        model: returns ``{"logits": (B, K, h, w)}`` for images in [0, 1] (a
            :class:`~pipa_core.models.segmentor.Segmentor`).
        img: ``(B, 3, H, W)`` in [0, 1].
        mode: ``"whole"`` (one forward pass) or ``"slide"`` (overlapping windows).
        crop_size: ``(h, w)`` window for ``"slide"``; images smaller than it are padded.
        stride: ``(h, w)`` window step for ``"slide"`` (default: half the crop).
        flip: also predict the horizontally flipped image and average the logits.
        batch_size: windows per forward pass in ``"slide"`` mode (times ``B``).

    Returns:
        ``(B, K, H, W)`` float32 logits (bilinear upsampling, averaged overlaps).
    """
    if mode not in ("whole", "slide"):
        raise ValueError(f"mode must be 'whole' or 'slide', got {mode!r}")
    if img.dim() != 4:
        raise ValueError(f"expected a batch (B, 3, H, W), got shape {tuple(img.shape)}")
    if mode == "slide":
        if crop_size is None:
            raise ValueError(
                "mode='slide' needs crop_size=(h, w), e.g. (1024, 1024) for Cityscapes"
            )
        crop = (int(crop_size[0]), int(crop_size[1]))
        step = tuple(int(s) for s in stride) if stride is not None else (crop[0] // 2, crop[1] // 2)
        if min(step) < 1 or step[0] > crop[0] or step[1] > crop[1]:
            raise ValueError(
                f"stride {step} must be >= 1 and <= crop_size {crop}, or windows leave gaps"
            )

        def run(x: torch.Tensor) -> torch.Tensor:
            return _slide(model, x, crop, step, batch_size)
    else:

        def run(x: torch.Tensor) -> torch.Tensor:
            return _logits_at(model, x).float()

    with torch.no_grad():
        logits = run(img)
        if flip:
            logits = 0.5 * (logits + run(img.flip(-1)).flip(-1))
    return logits
