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
from dataclasses import dataclass
from typing import Optional

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from pipa_core.data.base import unwrap_sample, wrap_sample
from pipa_core.labels import IGNORE_INDEX

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


class ColorDistortion:
    """SimCLR's colour distortion (Chen et al., 2020) on [0, 1] images; labels untouched.

    With probability ``p_jitter`` a colour jitter of brightness, contrast and
    saturation factors in ``[1 - 0.8 s, 1 + 0.8 s]`` and a hue shift in ``±0.2 s``
    (applied in random order, torchvision's ``ColorJitter``), then with
    probability ``p_gray`` conversion to grey. ``strength`` ``s = 1`` is SimCLR's
    setting. ``img`` and ``img_ref`` get the same parameters.

    A from-scratch model learns colour → class; on a source domain whose palette
    does not overlap the target's, this randomisation makes it rely on shape and
    layout instead (the role ImageNet pretraining plays on the real benchmarks).
    """

    def __init__(self, strength: float = 1.0, p_jitter: float = 0.8, p_gray: float = 0.2) -> None:
        if strength < 0:
            raise ValueError(f"colour distortion strength must be >= 0, got {strength}")
        s = float(strength)
        self.strength, self.p_jitter, self.p_gray = s, p_jitter, p_gray
        # Hue shifts are limited to half a turn by torchvision.
        self.jitter = v2.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, min(0.2 * s, 0.5))

    def __call__(self, sample: dict) -> dict:
        sample = wrap_sample(sample)
        keys = _images(sample)
        images = [sample[k] for k in keys]
        if _rand(None) < self.p_jitter:
            images = self.jitter(*images) if len(images) > 1 else [self.jitter(images[0])]
        if _rand(None) < self.p_gray:
            images = [
                tv_tensors.Image(F.rgb_to_grayscale(x, num_output_channels=3)) for x in images
            ]
        for k, x in zip(keys, images):
            sample[k] = x
        return sample


class RandomGaussianBlur:
    """SimCLR's Gaussian blur: with probability ``p``, blur with ``sigma ~ U(sigma_range)``.

    SimCLR blurs 224-pixel crops with sigma in [0.1, 2.0] and a kernel of 10 % of
    the side; :func:`train_pipeline` scales that range to the crop height.
    ``img`` and ``img_ref`` get the same sigma; labels are untouched.
    """

    def __init__(self, p: float = 0.5, sigma_range: tuple[float, float] = (0.1, 2.0)) -> None:
        self.p, self.sigma_range = p, (float(sigma_range[0]), float(sigma_range[1]))

    def __call__(self, sample: dict) -> dict:
        sample = wrap_sample(sample)
        if _rand(None) < self.p:
            sigma = _uniform(*self.sigma_range, None)
            k = 2 * max(1, round(3 * sigma)) + 1  # covers ±3 sigma
            for key in _images(sample):
                sample[key] = F.gaussian_blur(sample[key], [k, k], [sigma, sigma])
        return sample


class RandomGaussianNoise:
    """Additive Gaussian sensor noise with a std drawn from ``U(0, max_std)``, clipped to [0, 1].

    The noise is drawn independently per pixel and per image (a reference frame gets
    its own noise, as a camera would).
    """

    def __init__(self, max_std: float = 0.03) -> None:
        self.max_std = float(max_std)

    def __call__(self, sample: dict) -> dict:
        sample = wrap_sample(sample)
        std = _uniform(0.0, self.max_std, None)
        for key in _images(sample):
            x = sample[key].as_subclass(torch.Tensor)
            sample[key] = tv_tensors.Image((x + std * torch.randn_like(x)).clamp_(0.0, 1.0))
        return sample


class DropLabel:
    """Replace the label by all-255 (``IGNORE_INDEX``): use a labelled dataset as unlabelled target.

    ``keep_as``: also keep the true label under that key (e.g. ``"hidden_label"``), for
    measurements that never enter a loss (the teacher's pseudo-label accuracy).
    """

    def __init__(self, keep_as: Optional[str] = None) -> None:
        self.keep_as = keep_as

    def __call__(self, sample: dict) -> dict:
        sample = wrap_sample(sample)
        if "label" in sample:
            if self.keep_as:
                sample[self.keep_as] = sample["label"].as_subclass(torch.Tensor).clone()
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


@dataclass(frozen=True)
class SourceAugment:
    """Extra augmentation of labelled source crops, after DAFormer's pipeline (all off by default).

    A model trained from scratch has none of the robustness ImageNet pretraining gives
    on the real benchmarks; these standard augmentations stand in for it on the
    embedded benchmark (docs/training.md).

    Attributes:
        color_distortion: strength of :class:`ColorDistortion` (SimCLR: 1); 0 = off.
        blur_p: probability of SimCLR's Gaussian blur (:class:`RandomGaussianBlur`, sigma
            range scaled from SimCLR's 224-pixel crops to the crop height); 0 = off.
        noise_std: max std of :class:`RandomGaussianNoise`; 0 = off.
        ratio_range: random rescale ``(lo, hi)`` before cropping (mmseg's ``ratio_range``).
    """

    color_distortion: float = 0.0
    blur_p: float = 0.0
    noise_std: float = 0.0
    ratio_range: Optional[tuple[float, float]] = None

    def transforms(self, crop_height: int) -> list:
        """The photometric steps, in order, for crops of ``crop_height`` rows."""
        steps: list = []
        if self.color_distortion > 0:
            steps.append(ColorDistortion(self.color_distortion))
        if self.blur_p > 0:
            f = crop_height / 224
            steps.append(RandomGaussianBlur(self.blur_p, (0.1 * f, 2.0 * f)))
        if self.noise_std > 0:
            steps.append(RandomGaussianNoise(self.noise_std))
        return steps


def train_pipeline(
    scale: Sequence[int],
    crop_size: Sequence[int],
    cat_max_ratio: float = 0.75,
    flip_p: float = 0.5,
    photometric: bool = True,
    keep_ratio: bool = True,
    augment: Optional[SourceAugment] = None,
) -> Compose:
    """DAFormer's training pipeline: resize, cat-max-ratio crop, flip, photometric distortion.

    ``scale`` and ``crop_size`` are ``(H, W)``; the resize keeps the aspect ratio
    by default (as DAFormer). ``augment`` (:class:`SourceAugment`, default none) adds a
    random rescale and its photometric steps. Output images stay in [0, 1].
    """
    augment = augment or SourceAugment()
    steps = [
        Resize(scale, keep_ratio, ratio_range=augment.ratio_range),
        RandomCrop(crop_size, cat_max_ratio),
        RandomHorizontalFlip(flip_p),
    ]
    if photometric:
        steps.append(PhotoMetricDistortion())
    steps += augment.transforms(int(crop_size[0]))
    return Compose(steps)


def val_pipeline(
    scale: Sequence[int], resize_label: bool = True, keep_ratio: bool = True
) -> Compose:
    """Validation pipeline: resize images to fit ``scale`` ``(H, W)`` (aspect kept) and labels (nearest).

    ``resize_label=False`` keeps full-resolution labels (evaluate upsampled logits against them).
    """
    return Compose([Resize(scale, keep_ratio, resize_label=resize_label)])
