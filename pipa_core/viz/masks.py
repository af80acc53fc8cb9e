"""Colourised label maps, overlays and error maps as ``(H, W, 3)`` uint8 arrays.

Colours follow the official Cityscapes palette (``pipa_core.labels.PALETTE``);
ignore pixels are black.
"""

from __future__ import annotations

import numpy as np
import torch

from pipa_core.labels import IGNORE_INDEX, colorize

__all__ = ["colorize", "error_map", "overlay", "to_numpy_label", "to_uint8_image"]

#: Error-map colours: correct, wrong, ignore.
CORRECT_RGB = (0, 0, 0)
WRONG_RGB = (255, 255, 255)
IGNORE_RGB = (110, 110, 110)


def to_uint8_image(img: torch.Tensor | np.ndarray) -> np.ndarray:
    """An image tensor ``(3, H, W)`` in [0, 1], or an array ``(H, W, 3)`` / ``(3, H, W)`` -> ``(H, W, 3)`` uint8."""
    is_tensor = isinstance(img, torch.Tensor)
    a = img.detach().cpu().float().numpy() if is_tensor else np.asarray(img)
    if a.ndim != 3 or 3 not in (a.shape[0], a.shape[-1]):
        raise ValueError(f"image must be (3, H, W) or (H, W, 3), got shape {a.shape}")
    # Tensors follow the (3, H, W) contract; arrays are (H, W, 3) unless clearly channel-first.
    if is_tensor or (a.shape[0] == 3 and a.shape[-1] != 3):
        a = a.transpose(1, 2, 0)
    if a.dtype == np.uint8:
        return a
    return (np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def to_numpy_label(label: torch.Tensor | np.ndarray) -> np.ndarray:
    """A label / prediction map ``(H, W)`` as an int64 numpy array."""
    a = label.detach().cpu().numpy() if isinstance(label, torch.Tensor) else np.asarray(label)
    if a.ndim != 2:
        raise ValueError(f"label map must be (H, W), got shape {a.shape}")
    return a.astype(np.int64)


def overlay(img, label, alpha: float = 0.5) -> np.ndarray:
    """Blend the colourised ``label (H, W)`` over ``img``; ignore pixels show the plain image.

    Returns ``(H, W, 3)`` uint8.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    rgb = to_uint8_image(img).astype(np.float32)
    lab = to_numpy_label(label)
    if lab.shape != rgb.shape[:2]:
        raise ValueError(f"label {lab.shape} and image {rgb.shape[:2]} differ in size")
    col = colorize(lab).astype(np.float32)
    a = np.where(lab[..., None] == IGNORE_INDEX, 0.0, alpha)
    return (rgb * (1 - a) + col * a + 0.5).astype(np.uint8)


def error_map(pred, gt) -> np.ndarray:
    """Where a prediction is wrong: white = wrong, black = correct, grey = ignore in the GT.

    Args:
        pred, gt: ``(H, W)`` train-ID maps.
    Returns:
        ``(H, W, 3)`` uint8.
    """
    p, g = to_numpy_label(pred), to_numpy_label(gt)
    if p.shape != g.shape:
        raise ValueError(f"prediction {p.shape} and ground truth {g.shape} differ in size")
    out = np.empty((*g.shape, 3), dtype=np.uint8)
    out[:] = CORRECT_RGB
    out[p != g] = WRONG_RGB
    out[g == IGNORE_INDEX] = IGNORE_RGB
    return out
