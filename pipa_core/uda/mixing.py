"""ClassMix and the strong augmentation of mixed images (DACS / DAFormer).

ClassMix pastes the pixels of half of the classes present in a source label
onto a target image. The mixed label takes the source ground truth where
pasted and the teacher pseudo-label elsewhere; the per-pixel loss weight is 1
on pasted (ground-truth) pixels and the pseudo-label weight elsewhere.

The mixed image then gets DACS's strong augmentation: colour jitter
(brightness / contrast / saturation / hue, strength ``s``) and Gaussian blur.
Images are in [0, 1] (docs/architecture.md), so the torchvision v2
functional ops apply directly.
"""

from __future__ import annotations

import math

import torch
import torchvision.transforms.v2.functional as TF

from pipa_core.labels import IGNORE_INDEX


def class_mix_mask(label: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Paste mask for one source label: half of its present classes, chosen at random.

    Args:
        label: ``(H, W)`` int64 source label (ignore pixels are never chosen).
        generator: torch RNG for the class choice (None = global RNG).
    Returns:
        ``(H, W)`` bool mask, True where the source is pasted. Of ``n`` present
        classes exactly ``ceil(n / 2)`` are pasted (DACS rounds up for odd ``n``).
    """
    classes = torch.unique(label)
    classes = classes[classes != IGNORE_INDEX]
    n = classes.numel()
    if n == 0:
        return torch.zeros_like(label, dtype=torch.bool)
    k = (n + 1) // 2
    perm = torch.randperm(n, generator=generator, device="cpu")[:k].to(classes.device)
    return torch.isin(label, classes[perm])


def class_mix_masks(labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """ClassMix masks for a batch: ``(B, H, W)`` int64 labels -> ``(B, H, W)`` bool."""
    return torch.stack([class_mix_mask(lb, generator) for lb in labels])


def mix(mask: torch.Tensor, pasted: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """``pasted`` where ``mask`` is True, ``background`` elsewhere.

    ``mask`` is ``(B, H, W)``; ``pasted`` / ``background`` are ``(B, H, W)`` maps or
    ``(B, C, H, W)`` images (the mask broadcasts over channels).
    """
    if pasted.dim() == mask.dim() + 1:
        mask = mask.unsqueeze(1)
    return torch.where(mask, pasted, background)


def mix_batch(
    src_img: torch.Tensor,
    src_label: torch.Tensor,
    tgt_img: torch.Tensor,
    pseudo_label: torch.Tensor,
    pseudo_weight: torch.Tensor,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """ClassMix a source batch onto a target batch.

    Args:
        src_img, tgt_img: ``(B, 3, H, W)`` images in [0, 1].
        src_label: ``(B, H, W)`` source ground truth.
        pseudo_label, pseudo_weight: ``(B, H, W)`` teacher label and weight on the target.
    Returns:
        ``(mixed_img (B,3,H,W), mixed_label (B,H,W), mixed_weight (B,H,W), mask (B,H,W) bool)``;
        the weight is 1 on pasted source pixels and the pseudo weight elsewhere.
    """
    mask = class_mix_masks(src_label, generator)
    mixed_img = mix(mask, src_img, tgt_img)
    mixed_label = mix(mask, src_label, pseudo_label)
    mixed_weight = mix(mask, torch.ones_like(pseudo_weight), pseudo_weight)
    return mixed_img, mixed_label, mixed_weight, mask


def _rand(generator: torch.Generator | None, low: float = 0.0, high: float = 1.0) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def color_jitter(
    img: torch.Tensor, strength: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Random brightness, contrast, saturation (factors in ``[1−s, 1+s]``) and hue (``[−s, s]``).

    ``img`` is ``(3, H, W)`` in [0, 1]; the four ops run in a random order as in
    ``torchvision.transforms.ColorJitter``.
    """
    s = strength
    ops = [
        lambda x: TF.adjust_brightness(x, _rand(generator, max(0.0, 1 - s), 1 + s)),
        lambda x: TF.adjust_contrast(x, _rand(generator, max(0.0, 1 - s), 1 + s)),
        lambda x: TF.adjust_saturation(x, _rand(generator, max(0.0, 1 - s), 1 + s)),
        lambda x: TF.adjust_hue(x, _rand(generator, -min(s, 0.5), min(s, 0.5))),
    ]
    for i in torch.randperm(4, generator=generator).tolist():
        img = ops[i](img)
    return img.clamp(0, 1)


def gaussian_blur(img: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """DACS blur: σ ~ U(0.15, 1.15), odd kernel of about 10 % of the image side; ``(3, H, W)``.

    The Gaussian is separable, so it runs as a horizontal then a vertical 1-D pass:
    the same result as the 2-D ``kx x ky`` kernel (to float rounding) with ``kx + ky``
    instead of ``kx * ky`` multiply-adds per pixel (53x53 at a 512 crop; 7x less CPU
    time there, docs/performance.md).
    """
    sigma = _rand(generator, 0.15, 1.15)
    h, w = img.shape[-2:]
    ky, kx = (max(3, 2 * math.ceil(0.05 * side) + 1) for side in (h, w))
    img = TF.gaussian_blur(img, kernel_size=[kx, 1], sigma=[sigma, sigma])
    return TF.gaussian_blur(img, kernel_size=[1, ky], sigma=[sigma, sigma])


def strong_augment(
    imgs: torch.Tensor,
    jitter_strength: float = 0.2,
    jitter_p: float = 0.2,
    blur: bool = True,
    blur_p: float = 0.5,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """DACS strong augmentation of a batch ``(B, 3, H, W)`` in [0, 1], drawn per image.

    DACS / DAFormer draw ``u ~ U(0, 1)`` and apply the jitter when ``u > jitter_p``
    (so ``p = 0.2`` means jitter with probability 0.8); we keep that convention.
    The blur is applied with probability ``blur_p`` (0.5 in DACS). Labels are
    untouched: both ops are photometric.
    """
    out = []
    for img in imgs:
        if _rand(generator) > jitter_p:
            img = color_jitter(img, jitter_strength, generator)
        if blur and _rand(generator) < blur_p:
            img = gaussian_blur(img, generator)
        out.append(img)
    return torch.stack(out)
