"""Joint image / label transforms on sample dicts, built on torchvision.transforms.v2.

Every transform is a callable ``t(sample) -> sample``. It changes ``img``,
``img_ref`` (video reference frame) and ``label`` *consistently*: the same
resize, crop window and flip for all three, the same photometric parameters
for both images. Datasets wrap images as ``tv_tensors.Image`` and labels as
``tv_tensors.Mask`` before calling a transform, so torchvision's functional
ops pick nearest-neighbour interpolation for labels automatically.

Randomness comes from torch's global generator (seeded per DataLoader worker,
and per item by :class:`pipa_core.data.uda.UDADataset`), or from an explicit
``generator`` given to a transform.

Images stay in [0, 1]; :class:`Normalize` exists for users who want it, but the
default pipelines leave normalisation to the model (docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from pipa_core.data.base import unwrap_sample, wrap_sample
from pipa_core.data.labels import IGNORE_INDEX

IMAGE_KEYS = ("img", "img_ref")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _rand(generator: Optional[torch.Generator]) -> float:
    return float(torch.rand((), generator=generator))


def _uniform(lo: float, hi: float, generator: Optional[torch.Generator]) -> float:
    return lo + (hi - lo) * _rand(generator)


def _images(sample: dict) -> list[str]:
    return [k for k in IMAGE_KEYS if k in sample]


class Compose(v2.Compose):
    """Apply transforms in order to a sample dict (``torchvision.transforms.v2.Compose``).

    Returns plain tensors (``img`` float32, ``label`` int64), so a composed
    pipeline can be handed to any dataset, including ones that do not unwrap
    ``tv_tensors`` themselves.
    """

    def forward(self, sample: dict) -> dict:
        sample = wrap_sample(sample)
        for t in self.transforms:
            sample = t(sample)
        return unwrap_sample(sample)


class Resize:
    """Resize images (bilinear, antialiased) and the label (nearest) to ``size``.

    Args:
        size: ``(H, W)`` target size, e.g. ``(720, 1280)`` for GTA5 or ``(512, 1024)`` for Cityscapes.
        keep_ratio: keep the aspect ratio, scaling as large as fits in ``size`` (mmseg's
            ``keep_ratio=True``: GTA5 1914x1052 -> 1280x704, Cityscapes 2048x1024 -> 1024x512).
        ratio_range: optional ``(lo, hi)``: multiply ``size`` by a random ratio in the range.
        generator: optional ``torch.Generator`` for the ratio.
        resize_label: also resize the label; ``False`` keeps it at full resolution
            (DAFormer / mmseg evaluate upsampled predictions against full-size labels).
    """

    def __init__(
        self,
        size: Sequence[int],
        keep_ratio: bool = False,
        ratio_range: Optional[tuple[float, float]] = None,
        generator: Optional[torch.Generator] = None,
        resize_label: bool = True,
    ) -> None:
        self.size = (int(size[0]), int(size[1]))
        self.keep_ratio = keep_ratio
        self.ratio_range = ratio_range
        self.generator = generator
        self.resize_label = resize_label

    def __call__(self, sample: dict) -> dict:
        sample = wrap_sample(sample)
        h, w = self.size
        if self.ratio_range is not None:
            r = _uniform(*self.ratio_range, self.generator)
            h, w = round(h * r), round(w * r)
        if self.keep_ratio:
            ih, iw = sample["img"].shape[-2:]
            # mmcv rescale: fit the long edge to max(size) and the short edge to min(size).
            f = min(max(h, w) / max(ih, iw), min(h, w) / min(ih, iw))
            h, w = int(ih * f + 0.5), int(iw * f + 0.5)
        for k in _images(sample):
            sample[k] = F.resize(sample[k], [h, w], antialias=True)
        if "label" in sample and self.resize_label:  # tv_tensors.Mask -> nearest neighbour
            sample["label"] = F.resize(sample["label"], [h, w])
        return sample


class RandomCrop:
    """Random crop of ``size`` whose most frequent class covers less than ``cat_max_ratio``.

    Like DAFormer (mmseg ``RandomCrop``), up to ``max_tries`` windows are drawn;
    the first whose label has more than one class and whose largest class
    (ignore excluded) covers less than ``cat_max_ratio`` of the labelled pixels
    is kept, else the last one. Images smaller than ``size`` are padded
    (images with 0, the label with 255). ``cat_max_ratio=1`` disables the check.

    Args:
        size: ``(H, W)`` crop size.
        cat_max_ratio: maximum share of one class in the crop (0.75 in DAFormer).
        max_tries: windows drawn before giving up (10 in DAFormer).
        generator: optional ``torch.Generator``.
    """

    def __init__(
        self,
        size: Sequence[int],
        cat_max_ratio: float = 0.75,
        max_tries: int = 10,
        generator: Optional[torch.Generator] = None,
    ) -> None:
        self.size = (int(size[0]), int(size[1]))
        self.cat_max_ratio = cat_max_ratio
        self.max_tries = max_tries
        self.generator = generator

    def _window(self, h: int, w: int) -> tuple[int, int]:
        ch, cw = self.size
        top = int(torch.randint(0, max(h - ch, 0) + 1, (), generator=self.generator))
        left = int(torch.randint(0, max(w - cw, 0) + 1, (), generator=self.generator))
        return top, left

    def _acceptable(self, label: torch.Tensor) -> bool:
        counts = torch.bincount(label[label != IGNORE_INDEX].flatten(), minlength=1)
        counts = counts[counts > 0]
        return len(counts) > 1 and float(counts.max()) / float(counts.sum()) < self.cat_max_ratio

    def __call__(self, sample: dict) -> dict:
        sample = self._pad(wrap_sample(sample))
        h, w = sample["img"].shape[-2:]
        ch, cw = self.size
        top, left = self._window(h, w)
        if self.cat_max_ratio < 1.0 and "label" in sample:
            for _ in range(self.max_tries - 1):
                if self._acceptable(sample["label"][top : top + ch, left : left + cw]):
                    break
                top, left = self._window(h, w)
        for k in [*_images(sample), "label"]:
            if k in sample:
                sample[k] = F.crop(sample[k], top, left, ch, cw)
        return sample

    def _pad(self, sample: dict) -> dict:
        h, w = sample["img"].shape[-2:]
        ph, pw = max(self.size[0] - h, 0), max(self.size[1] - w, 0)
        if ph or pw:
            for k in _images(sample):
                sample[k] = F.pad(sample[k], [0, 0, pw, ph], fill=0)
            if "label" in sample:
                sample["label"] = F.pad(sample["label"], [0, 0, pw, ph], fill=IGNORE_INDEX)
        return sample


class RandomHorizontalFlip:
    """Flip images and label left-right together with probability ``p``."""

    def __init__(self, p: float = 0.5, generator: Optional[torch.Generator] = None) -> None:
        self.p = p
        self.generator = generator

    def __call__(self, sample: dict) -> dict:
        sample = wrap_sample(sample)
        if _rand(self.generator) < self.p:
            for k in [*_images(sample), "label"]:
                if k in sample:
                    sample[k] = F.horizontal_flip(sample[k])
        return sample


class PhotoMetricDistortion:
    """DAFormer's photometric distortion on [0, 1] images; labels untouched.

    Each step happens with probability 1/2, with the same parameters for
    ``img`` and ``img_ref``: brightness shift in ±32/255, contrast (pixel values
    times a factor in [0.5, 1.5], as mmseg; before or after the colour steps, at
    random), saturation factor in [0.5, 1.5] (torchvision's blend with the grey
    image), hue shift of ±18 on OpenCV's 0..180 hue scale. Results are clipped to [0, 1].
    """

    def __init__(
        self,
        brightness_delta: float = 32 / 255,
        contrast_range: tuple[float, float] = (0.5, 1.5),
        saturation_range: tuple[float, float] = (0.5, 1.5),
        hue_delta: float = 18 / 180,
        generator: Optional[torch.Generator] = None,
    ) -> None:
        self.brightness_delta = brightness_delta
        self.contrast_range = contrast_range
        self.saturation_range = saturation_range
        self.hue_delta = hue_delta
        self.generator = generator

    def _ops(self) -> list:
        g, ops = self.generator, []
        coin = lambda: _rand(g) < 0.5  # noqa: E731 - one fair coin per step
        if coin():
            d = _uniform(-self.brightness_delta, self.brightness_delta, g)
            ops.append(lambda x: (x + d).clamp_(0.0, 1.0))
        contrast_first = coin()
        contrast = _uniform(*self.contrast_range, g) if coin() else None
        if contrast is not None and contrast_first:
            ops.append(lambda x: (x * contrast).clamp_(0.0, 1.0))
        if coin():
            s = _uniform(*self.saturation_range, g)
            ops.append(lambda x: F.adjust_saturation(x, s))
        if coin():
            hue = _uniform(-self.hue_delta, self.hue_delta, g)
            ops.append(lambda x: F.adjust_hue(x, hue))
        if contrast is not None and not contrast_first:
            ops.append(lambda x: (x * contrast).clamp_(0.0, 1.0))
        return ops

    def __call__(self, sample: dict) -> dict:
        sample = wrap_sample(sample)
        ops = self._ops()
        for k in _images(sample):
            x = sample[k].as_subclass(torch.Tensor)
            for op in ops:
                x = op(x)
            sample[k] = tv_tensors.Image(x)
        return sample


class DropLabel:
    """Replace the label by all-255 (``IGNORE_INDEX``): use a labelled dataset as unlabelled target."""

    def __call__(self, sample: dict) -> dict:
        sample = wrap_sample(sample)
        if "label" in sample:
            sample["label"] = tv_tensors.Mask(torch.full_like(sample["label"], IGNORE_INDEX))
        return sample


class Normalize:
    """Subtract ``mean`` and divide by ``std`` per channel on ``img`` / ``img_ref`` (default ImageNet).

    Not in the default pipelines: models normalise internally.
    """

    def __init__(
        self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
    ) -> None:
        self.mean = list(mean)
        self.std = list(std)

    def __call__(self, sample: dict) -> dict:
        sample = wrap_sample(sample)
        for k in _images(sample):
            sample[k] = F.normalize(sample[k], self.mean, self.std)
        return sample


def train_pipeline(
    scale: Sequence[int],
    crop_size: Sequence[int],
    cat_max_ratio: float = 0.75,
    flip_p: float = 0.5,
    photometric: bool = True,
    keep_ratio: bool = True,
) -> Compose:
    """DAFormer's training pipeline: resize, cat-max-ratio crop, flip, photometric distortion.

    ``scale`` and ``crop_size`` are ``(H, W)``; the resize keeps the aspect ratio
    by default (as DAFormer). Output images stay in [0, 1].
    """
    steps = [
        Resize(scale, keep_ratio),
        RandomCrop(crop_size, cat_max_ratio),
        RandomHorizontalFlip(flip_p),
    ]
    if photometric:
        steps.append(PhotoMetricDistortion())
    return Compose(steps)


def val_pipeline(
    scale: Sequence[int], resize_label: bool = True, keep_ratio: bool = True
) -> Compose:
    """Validation pipeline: resize images to fit ``scale`` ``(H, W)`` (aspect kept) and labels (nearest).

    ``resize_label=False`` keeps full-resolution labels (evaluate upsampled logits against them).
    """
    return Compose([Resize(scale, keep_ratio, resize_label=resize_label)])
