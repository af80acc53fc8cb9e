"""MIC's masked image consistency (Hoyer et al., CVPR 2023): block masks on target images.

The student sees the strongly augmented target image with a random 70 % of
64x64 blocks masked out and learns to predict the teacher's pseudo-labels of
the *unmasked* image, so it has to use the context around a region
(``mmseg/models/uda/masking_consistency_module.py``, ``BlockMaskGenerator``:
``mask_ratio=0.7``, ``mask_block_size=64``, loss weight 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch
import torch.nn.functional as F

from pipa_core.models.segmentor import IMAGENET_MEAN

__all__ = ["block_mask", "mask_image"]


def block_mask(
    shape: Sequence[int],
    ratio: float = 0.7,
    block: int = 64,
    generator: Optional[torch.Generator] = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """A keep-mask ``(B, 1, H, W)`` (1 = visible) for images of ``shape`` ``(B, C, H, W)``.

    The image is cut into ``block x block`` cells (``round(H / block)`` rows of them,
    as MIC); each cell is masked with probability ``ratio``, drawn from ``generator``
    (on the CPU, so a seed gives the same mask on every device).
    """
    b, _, h, w = shape
    cells = (b, 1, max(1, round(h / block)), max(1, round(w / block)))
    keep = (torch.rand(cells, generator=generator) > ratio).float()
    return F.interpolate(keep, size=(h, w), mode="nearest").to(device)


def mask_image(img: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``img`` ``(B, 3, H, W)`` in [0, 1] with the masked pixels set to the ImageNet mean:
    the value a 0 has in MIC's normalised input, since our models normalise internally."""
    mean = torch.tensor(IMAGENET_MEAN, device=img.device, dtype=img.dtype).view(1, 3, 1, 1)
    return img * keep + mean * (1 - keep)
