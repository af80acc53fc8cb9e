"""The training configuration's schema: one dataclass per section, each with its checks.

A :class:`TrainConfig` has one section per concern (``data``, ``model``,
``optim``, ``uda``, ``losses``, ``eval``, ``runtime``). Every ablation of the
papers is a configuration change only:

- ``uda.mode``: ``self_training`` (DACS / DAFormer / PiPa), ``source_only``
  (supervised on source only) or ``oracle`` (supervised on *target* labels);
- ``uda.fd_lambda > 0`` switches on the ImageNet feature distance,
  ``data.rcs`` rare-class sampling, ``uda.mix`` ClassMix;
- ``losses.enabled`` lists the self-supervised losses (``pixel``, ``patch``,
  ``temporal``, ``prototype``), each with its own sub-section.

Each section's ``check()`` returns its own problems (bounds next to the fields
they bound); checks that need two sections or the benchmark live in
:mod:`pipa_core.config.resolve`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Tuple

import yaml

from pipa_core.config.typed import from_dict, to_plain
from pipa_core.labels import NUM_CLASSES, PROTOCOLS, THING_CLASSES

LOSS_NAMES = ("pixel", "patch", "temporal", "prototype")
UDA_MODES = ("self_training", "source_only", "oracle")
AMP_MODES = ("auto", "bf16", "fp16", "off")
EVAL_MODES = ("whole", "slide")
TEACHER_BN_MODES = ("batch", "ema")


@dataclass
class DataConfig:
    """Datasets and loading. ``None`` fields take the benchmark's default."""

    benchmark: str = "synthetic"  # a name of pipa_core.data.benchmarks.BENCHMARKS
    data_root: str = "data"  # dataset roots are relative to it (data/README.md)
    crop_size: Optional[Tuple[int, int]] = None  # (H, W) training crop
    source_scale: Optional[Tuple[int, int]] = None  # (H, W) resize of every source before cropping
    target_scale: Optional[Tuple[int, int]] = None  # (H, W) resize of target train and val images
    batch_size: int = 2  # per domain (2 source + 2 target) and per process
    # DataLoader worker processes (items are seeded per index: results do not depend on it)
    num_workers: int = 4
    rcs: Optional[bool] = None  # rare class sampling (DAFormer)
    rcs_temperature: Optional[float] = None  # None = the benchmark's (DAFormer: 0.01)
    rcs_min_pixels: Optional[int] = None  # (3000)
    rcs_min_crop_ratio: Optional[float] = None  # (0.5)
    ref_offset: Optional[int] = None  # video: reference frame offset (PiPa++ temporal loss)
    photometric: bool = True  # DAFormer photometric distortion of the labelled training images
    # Photometric distortion of the target images too. DAFormer's target pipeline has none:
    # the teacher labels undistorted images, the student sees the strongly augmented mix.
    target_photometric: bool = False
    # SimCLR colour distortion of strength s on source crops (0 = off; not for the oracle,
    # whose labelled images are the target's). See data.transforms.ColorDistortion.
    color_distortion: float = 0.0
    source_blur: float = 0.0  # probability of SimCLR's Gaussian blur on source crops (0 = off)
    source_noise: float = 0.0  # max std of additive Gaussian noise on source crops (0 = off)
    # Random rescale (lo, hi) of source images before cropping (mmseg's ratio_range); None = off
    source_ratio_range: Optional[Tuple[float, float]] = None
    synthetic_size: str = "default"  # synthetic benchmark only: "tiny", "default" or "large"

    def check(self) -> list[str]:
        """This section's own bounds (cross-section checks live in ``config.resolve``)."""
        from pipa_core.data.synthetic import PRESETS as SYNTHETIC_SIZES

        errs = []
        if self.batch_size < 1:
            errs.append(f"data.batch_size={self.batch_size} must be >= 1")
        if self.num_workers < 0:
            errs.append(f"data.num_workers={self.num_workers} must be >= 0")
        if self.synthetic_size not in SYNTHETIC_SIZES:
            errs.append(
                f"data.synthetic_size={self.synthetic_size!r} is unknown; "
                f"valid: {', '.join(SYNTHETIC_SIZES)}"
            )
        for k in ("crop_size", "source_scale", "target_scale"):
            v = getattr(self, k)
            if v is not None and min(v) < 1:
                errs.append(f"data.{k}={tuple(v)} must be positive (H, W)")
        if self.rcs_temperature is not None and self.rcs_temperature <= 0:
            errs.append(
                f"data.rcs_temperature={self.rcs_temperature} must be > 0 (0.01 in DAFormer)"
            )
        if self.rcs_min_crop_ratio is not None and self.rcs_min_crop_ratio < 0:
            # a crop needs > min_pixels * ratio pixels of the class (DAFormer 0.5, HRDA 2.0)
            errs.append(f"data.rcs_min_crop_ratio={self.rcs_min_crop_ratio} must be >= 0")
        if self.rcs_min_pixels is not None and self.rcs_min_pixels < 0:
            errs.append(f"data.rcs_min_pixels={self.rcs_min_pixels} must be >= 0")
        if self.color_distortion < 0:
            errs.append(
                f"data.color_distortion={self.color_distortion} must be >= 0 (0 = off, 1 = SimCLR)"
            )
        return errs


@dataclass
class ModelConfig:
    """Segmentor built by ``pipa_core.models.build_segmentor``."""

    arch: str = "daformer_mit_b5"  # pipa_core.models.ARCHS name, or hrda_<name> for HRDA
    # ImageNet encoder weights: a file (official mit_b*.pth, HF nvidia/mit-b* pytorch_model.bin /
    # model.safetensors; relative to the working directory), "imagenet" / "dinov2" (download),
    # or None (random weights). The real-benchmark presets name pretrained/mit_b5.pth.
    pretrained: Optional[str] = None
    # A whole segmentor to start from (a warm start): a file written by
    # Segmentor.export_weights, a finished run directory, or a shipped name
    # ("synthetic_warm_start", pipa_core.assets). Loaded after `pretrained`.
    init_from: Optional[str] = None
    decoder_channels: Optional[int] = None  # None = the architecture's default (256 for DAFormer)
    proj_dim: Optional[int] = None  # embedding size of the projection heads; None = default
    # Parameters under this prefix train at optim.lr, the rest at lr * head_lr_mult.
    backbone_prefix: str = "encoder."
    hrda_detail_ratio: float = 0.5  # hrda_* archs: detail crop side / context side (512 / 1024)
    hrda_hr_loss_weight: float = 0.1  # hrda_* archs: weight of the detail-crop CE
    # recompute the encoder blocks in backward: less activation memory, one more encoder forward
    # (MiT-B5 / HRDA / DINOv2 ViT-L on a 24-40 GB GPU)
    grad_checkpointing: bool = False

    def check(self) -> list[str]:
        """This section's own bounds; ``init_from`` must name an existing file or asset."""
        from pipa_core.models import ARCHS

        errs = []
        if self.arch.removeprefix("hrda_") not in ARCHS:
            errs.append(
                f"model.arch={self.arch!r} is unknown; valid: {', '.join(ARCHS)} "
                "(each also as hrda_<name> for the HRDA multi-resolution model)"
            )
        if not 0 < self.hrda_detail_ratio <= 1:
            errs.append(f"model.hrda_detail_ratio={self.hrda_detail_ratio} must lie in (0, 1]")
        if not 0 <= self.hrda_hr_loss_weight < 1:
            errs.append(f"model.hrda_hr_loss_weight={self.hrda_hr_loss_weight} must lie in [0, 1)")
        if self.pretrained is not None and self.pretrained not in PRETRAINED_HUB_NAMES:
            if not Path(self.pretrained).is_file():
                errs.append(_missing_pretrained(self.pretrained, self.arch))
        if self.init_from is not None:
            from pipa_core.assets import resolve_weights

            try:
                resolve_weights(self.init_from)
            except FileNotFoundError as exc:
                errs.append(f"model.init_from={self.init_from!r}: {exc}")
        if self.decoder_channels is not None and self.decoder_channels < 1:
            errs.append(f"model.decoder_channels={self.decoder_channels} must be >= 1 or null")
        if self.proj_dim is not None and self.proj_dim < 1:
            errs.append(f"model.proj_dim={self.proj_dim} must be >= 1 or null")
        return errs


#: ``model.pretrained`` values that name hub downloads, not files.
PRETRAINED_HUB_NAMES = ("imagenet", "dinov2")


def _missing_pretrained(path: str, arch: str) -> str:
    """The error for a ``model.pretrained`` file that does not exist: which file, where from."""
    enc = arch.removeprefix("hrda_").split("_", 1)[-1]
    where = f"{path!r} (relative to the working directory {Path.cwd()})"
    if enc.startswith("mit_b"):
        hf = f"nvidia/mit-b{enc[len('mit_b') :]}"
        dest = path if Path(path).name == f"{enc}.pth" else "a file"
        how = (
            f"download the ImageNet-1k weights {enc}.pth of the official SegFormer release "
            f"(https://github.com/NVlabs/SegFormer, 'ImageNet-1K pretrained weights') to {dest}, "
            f"or pytorch_model.bin / model.safetensors of Hugging Face {hf} "
            f"(https://huggingface.co/{hf}), and set model.pretrained=<that file> if it is "
            f"not {path}; model.pretrained=imagenet downloads {hf} from the hub"
        )
    elif enc.startswith("dinov2"):
        how = "model.pretrained=dinov2 downloads timm's DINOv2 weights (docs/models.md)"
    else:
        how = "model.pretrained=imagenet downloads the ImageNet weights from the hub"
    return (
        f"model.pretrained: the ImageNet weights file {where} does not exist; {how}. "
        "To train from random weights instead (not the papers' setting), set "
        "model.pretrained=null"
    )


@dataclass
class OptimConfig:
    """AdamW + linear warmup + poly decay (DAFormer)."""

    lr: float = 6e-5  # AdamW learning rate of the encoder
    head_lr_mult: float = 10.0  # decoder / classifier / projection heads train at lr x this
    weight_decay: float = 0.01  # AdamW weight decay (0 for norm layers and positional blocks)
    betas: Tuple[float, float] = (0.9, 0.999)  # AdamW betas
    max_iters: int = 40000  # training iterations (DAFormer 40k, PiPa 60k)
    warmup_iters: int = 1500  # linear warmup iterations
    warmup_ratio: float = 1e-6  # warmup starts at lr x this
    poly_power: float = 1.0  # poly decay (1 - it / max_iters) ** power after warmup
    min_lr_ratio: float = 0.0  # the poly decay ends at lr x this
    grad_clip: Optional[float] = None  # max gradient norm; None = no clipping
    # Layer-wise lr decay of ViT (DINOv2) encoders: block i of n trains at
    # lr * layer_decay ** (n - i), the embeddings at lr * layer_decay ** (n + 1); 1 = off
    layer_decay: float = 1.0

    def check(self) -> list[str]:
        """This section's own bounds."""
        errs = []
        if self.lr <= 0:
            errs.append(
                f"optim.lr={self.lr} must be > 0 (AdamW learning rate; 6e-5 in DAFormer / PiPa)"
            )
        if self.head_lr_mult <= 0:
            errs.append(f"optim.head_lr_mult={self.head_lr_mult} must be > 0")
        if self.weight_decay < 0:
            errs.append(f"optim.weight_decay={self.weight_decay} must be >= 0")
        if not all(0 <= b < 1 for b in self.betas):
            errs.append(f"optim.betas={tuple(self.betas)} must lie in [0, 1)")
        if self.max_iters < 1:
            errs.append(f"optim.max_iters={self.max_iters} must be >= 1")
        if self.warmup_iters < 0:
            errs.append(f"optim.warmup_iters={self.warmup_iters} must be >= 0")
        if not 0 < self.warmup_ratio <= 1:
            errs.append(f"optim.warmup_ratio={self.warmup_ratio} must lie in (0, 1]")
        if self.poly_power < 0:
            errs.append(f"optim.poly_power={self.poly_power} must be >= 0")
        if not 0 <= self.min_lr_ratio <= 1:
            errs.append(f"optim.min_lr_ratio={self.min_lr_ratio} must lie in [0, 1]")
        if not 0 < self.layer_decay <= 1:
            errs.append(f"optim.layer_decay={self.layer_decay} must lie in (0, 1] (1 = off)")
        if self.grad_clip is not None and self.grad_clip <= 0:
            errs.append(f"optim.grad_clip={self.grad_clip} must be > 0 or null")
        return errs


@dataclass
class UDAConfig:
    """Self-training (mean teacher, pseudo-labels, ClassMix) and the DAFormer extras."""

    mode: str = "self_training"  # self_training | source_only | oracle
    ema_alpha: float = 0.999  # teacher EMA decay; min(1 - 1/(it + 1), ema_alpha) early on
    # "batch" (DAFormer): the teacher's BatchNorm layers normalise with the target batch's
    # statistics and the EMA averages parameters only; "ema": an eval-mode teacher whose
    # BN running statistics are EMA-averaged from the student's.
    teacher_bn: str = "batch"
    # confidence a pseudo-label needs to count in the confident fraction
    pseudo_threshold: float = 0.968
    pseudo_weight_per_image: bool = False  # DAFormer: one confident fraction per batch
    # Rows of the target crop whose pseudo-label weight is 0; None = the benchmark's
    # value (DAFormer's 15 / 120 for Cityscapes targets at 512 rows, scaled to the crop).
    pseudo_crop_top: Optional[int] = None
    pseudo_crop_bottom: Optional[int] = None  # see pseudo_crop_top
    mix: str = "classmix"  # "classmix" or "none" (plain pseudo-labelling of target images)
    color_jitter_s: float = 0.2  # strength of the colour jitter on mixed images
    color_jitter_p: float = 0.2  # DACS convention: jitter when u > p, i.e. with probability 1 - p
    blur: bool = True  # Gaussian blur (p = 0.5, sigma in [0.15, 1.15]) on mixed images
    fd_lambda: float = 0.0  # ImageNet feature distance weight (0.005 in DAFormer); 0 = off
    # thing classes whose features are pulled to ImageNet's
    fd_classes: Tuple[int, ...] = THING_CLASSES
    fd_min_ratio: float = 0.75  # min-ratio rule of the label downsampled to the feature map
    # MIC (masked image consistency): the student also predicts the teacher's pseudo-labels
    # on a block-masked, strongly augmented copy of the target image (MIC's released code)
    mic: bool = False
    mic_mask_ratio: float = 0.7  # share of blocks masked
    mic_block_size: int = 64  # block side in pixels at the training resolution
    mic_weight: float = 1.0  # weight of the masked-image cross-entropy

    def check(self) -> list[str]:
        """This section's own bounds (the pseudo-label crop is checked against the crop in
        ``config.resolve``)."""
        errs = []
        if self.mode not in UDA_MODES:
            errs.append(f"uda.mode={self.mode!r} is unknown; valid: {', '.join(UDA_MODES)}")
        if not 0 <= self.ema_alpha <= 1:
            errs.append(f"uda.ema_alpha={self.ema_alpha} must lie in [0, 1] (0.999 in the papers)")
        if not 0 <= self.pseudo_threshold <= 1:
            errs.append(f"uda.pseudo_threshold={self.pseudo_threshold} must lie in [0, 1] (0.968)")
        if self.teacher_bn not in TEACHER_BN_MODES:
            errs.append(
                f"uda.teacher_bn={self.teacher_bn!r} is unknown; "
                f"valid: {', '.join(TEACHER_BN_MODES)}"
            )
        if self.mix not in ("classmix", "none"):
            errs.append(f"uda.mix={self.mix!r} is unknown; valid: classmix, none")
        if not 0 <= self.color_jitter_p <= 1:
            errs.append(f"uda.color_jitter_p={self.color_jitter_p} must lie in [0, 1]")
        if self.color_jitter_s < 0:
            errs.append(f"uda.color_jitter_s={self.color_jitter_s} must be >= 0")
        if self.fd_lambda < 0:
            errs.append(f"uda.fd_lambda={self.fd_lambda} must be >= 0 (0 switches it off)")
        if not 0 < self.fd_min_ratio <= 1:
            errs.append(f"uda.fd_min_ratio={self.fd_min_ratio} must lie in (0, 1]")
        if not 0 <= self.mic_mask_ratio < 1:
            errs.append(f"uda.mic_mask_ratio={self.mic_mask_ratio} must lie in [0, 1) (MIC: 0.7)")
        if self.mic_block_size < 1:
            errs.append(f"uda.mic_block_size={self.mic_block_size} must be >= 1 (MIC: 64)")
        if self.mic_weight < 0:
            errs.append(f"uda.mic_weight={self.mic_weight} must be >= 0 (MIC: 1)")
        if any(not 0 <= c < NUM_CLASSES for c in self.fd_classes):
            errs.append(f"uda.fd_classes={tuple(self.fd_classes)} must be train IDs 0..18")
        return errs


@dataclass
class PixelLossConfig:
    """Pixel-wise contrast (PiPa eq. 4) on source labels (and optionally target pseudo-labels)."""

    weight: float = 0.1  # α
    temperature: float = 0.1  # tau of r(a, b) = exp(cos(a, b) / tau)
    use_target: bool = False  # also confident pixels of the mixed target image (pseudo-labels)
    max_anchors: int = 1024  # anchors per call (official max_samples)
    max_views: int = 100  # anchors per (image, class)
    memory_size: int = 0  # per-class memory bank (PiPa++ semantic-aware bank); 0 = off
    # PiPa's released code instead of the paper (docs/losses.md, "Paper vs released code"):
    # proj_head on the encoder stages, GT of the source only, groups <= max_views dropped,
    # 255 a class, x tau/0.07, anchors by the untrained cls_head, HRDA detail-crop features
    released: bool = False


@dataclass
class PatchLossConfig:
    """Patch-wise contrast (PiPa eq. 5) on two overlapping crops of the target image."""

    weight: float = 0.1  # β
    temperature: float = 0.1  # tau
    crop_size: Optional[int] = None  # side of the two patches; None = 9/8 of the crop (720 for 640)
    # Random rescale of the target image before cropping.
    scale_range: Tuple[float, float] = (0.5, 2.0)
    iou_range: Tuple[float, float] = (0.1, 1.0)  # IoU of the two patches
    max_locations: int = 1024  # matched locations kept per step
    num_negatives: int = 3200  # extra negatives from both patches of the batch
    memory_size: int = 0  # queue of past negatives; 0 = off
    # PiPa's released code instead of the paper (docs/losses.md, "Paper vs released code"):
    # the CAC loss on the EMA teacher's pooled output through a separate `project` head
    # (trains only that head), SUM of both directions, the last 3 steps' negatives
    released: bool = False
    start_iter: int = 0  # first iteration with the patch loss (released: 10000)


@dataclass
class TemporalLossConfig:
    """PiPa++ temporal contrast between a key frame and a reference frame (video benchmarks)."""

    weight: float = 0.1  # weight of the temporal loss
    temperature: float = 0.1  # tau
    max_locations: int = 1024  # locations sampled per step
    num_negatives: int = 3200  # extra negatives from both frames
    memory_size: int = 0  # queue of past negatives; 0 = off


@dataclass
class PrototypeLossConfig:
    """SPCL prototype contrast (class prototypes, moving average λ)."""

    weight: float = 0.1  # weight of the prototype loss
    temperature: float = 0.1  # tau
    momentum: float = 0.1  # λ in p_c ← λ·p_c + (1 − λ)·mean_c; 1 keeps prototypes fixed
    use_target: bool = True  # target pixels with class-wise thresholded pseudo-labels
    max_pixels: Optional[int] = 4096  # query pixels per call (None = all)


@dataclass
class LossConfig:
    """The self-supervised losses added to the cross-entropy terms."""

    enabled: Tuple[str, ...] = ()  # any of pixel, patch, temporal, prototype
    pixel: PixelLossConfig = field(default_factory=PixelLossConfig)
    patch: PatchLossConfig = field(default_factory=PatchLossConfig)
    temporal: TemporalLossConfig = field(default_factory=TemporalLossConfig)
    prototype: PrototypeLossConfig = field(default_factory=PrototypeLossConfig)

    def check(self) -> list[str]:
        """The loss names and every loss's own bounds (that losses need self-training is
        checked in ``config.resolve``)."""
        errs = []
        for name in self.enabled:
            if name not in LOSS_NAMES:
                errs.append(
                    f"losses.enabled has unknown loss {name!r}; valid: {', '.join(LOSS_NAMES)}"
                )
        if len(set(self.enabled)) != len(self.enabled):
            errs.append(f"losses.enabled={list(self.enabled)} lists a loss twice")
        for name in LOSS_NAMES:
            sub = getattr(self, name)
            if sub.weight < 0:
                errs.append(f"losses.{name}.weight={sub.weight} must be >= 0")
            if sub.temperature <= 0:
                errs.append(f"losses.{name}.temperature={sub.temperature} must be > 0")
            if getattr(sub, "memory_size", 0) < 0:
                errs.append(
                    f"losses.{name}.memory_size={sub.memory_size} must be >= 0 (0 = no bank)"
                )
        if not 0 <= self.prototype.momentum <= 1:
            errs.append(f"losses.prototype.momentum={self.prototype.momentum} must lie in [0, 1]")
        lo_s, hi_s = self.patch.scale_range
        if not 0 < lo_s <= hi_s:
            errs.append(
                f"losses.patch.scale_range={tuple(self.patch.scale_range)} needs 0 < min <= max"
            )
        lo_i, hi_i = self.patch.iou_range
        if not (0 <= lo_i <= hi_i <= 1 and hi_i > 0):
            errs.append(
                f"losses.patch.iou_range={tuple(self.patch.iou_range)} needs 0 <= min <= max <= 1"
            )
        if self.patch.crop_size is not None and self.patch.crop_size < 32:
            errs.append(f"losses.patch.crop_size={self.patch.crop_size} must be >= 32 or null")
        return errs + self._check_released()

    def _check_released(self) -> list[str]:
        """``released`` switches: what the released code has no counterpart for."""
        errs = []
        px, pt = self.pixel, self.patch
        if pt.start_iter < 0:
            errs.append(f"losses.patch.start_iter={pt.start_iter} must be >= 0")
        if px.released and px.use_target:
            errs.append(
                "losses.pixel.released=true contrasts source pixels only; set "
                "losses.pixel.use_target=false"
            )
        for name, sub, bank in (("pixel", px, "semantic memory bank"), ("patch", pt, "queue")):
            if sub.released and sub.memory_size > 0:
                errs.append(
                    f"losses.{name}.released=true has no {bank} (the released patch loss keeps "
                    f"its own last-3-steps negatives); set losses.{name}.memory_size=0"
                )
        if pt.released and (pt.num_negatives < 2 or pt.num_negatives % 2):
            errs.append(
                f"losses.patch.released=true draws num_negatives / 2 cells per crop; "
                f"losses.patch.num_negatives={pt.num_negatives} must be even and >= 2 (3200)"
            )
        if pt.released and pt.crop_size is not None and pt.crop_size % 8:
            errs.append(
                f"losses.patch.released=true indexes the overlap in 8-pixel cells; "
                f"losses.patch.crop_size={pt.crop_size} must be a multiple of 8 (720)"
            )
        return errs


@dataclass
class EvalConfig:
    """Periodic validation on the target val split."""

    interval: int = 4000  # iterations between evaluations; 0 = only at the end
    mode: str = "whole"  # "whole" image or "slide" window inference
    crop_size: Optional[Tuple[int, int]] = None  # slide window (H, W); None = training crop
    stride: Optional[Tuple[int, int]] = None  # slide stride; None = half the window
    flip: bool = False  # average with the horizontally flipped prediction
    protocols: Optional[Tuple[str, ...]] = None  # None = the benchmark's protocols
    batch_size: int = 1  # validation batch size
    max_samples: Optional[int] = None  # evaluate only the first N val images (None = all)

    def check(self) -> list[str]:
        """This section's own bounds."""
        errs = []
        if self.mode not in EVAL_MODES:
            errs.append(f"eval.mode={self.mode!r} is unknown; valid: {', '.join(EVAL_MODES)}")
        for p in self.protocols or ():
            if p not in PROTOCOLS:
                errs.append(
                    f"eval.protocols has unknown protocol {p!r}; valid: {', '.join(PROTOCOLS)}"
                )
        if self.interval < 0:
            errs.append(
                f"eval.interval={self.interval} must be >= 0 (0 = evaluate at the end only)"
            )
        if self.batch_size < 1:
            errs.append(f"eval.batch_size={self.batch_size} must be >= 1")
        if self.max_samples is not None and self.max_samples < 1:
            errs.append(f"eval.max_samples={self.max_samples} must be >= 1 or null")
        return errs


@dataclass
class RuntimeConfig:
    """Where and how the run executes, logs and checkpoints."""

    run_dir: Optional[str] = None  # None = runs/<name>
    seed: int = 0  # base seed (model init, data order, augmentation; + rank offsets under DDP)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "auto"  # auto: bf16 if supported, else fp16 + GradScaler on CUDA; off on CPU
    channels_last: bool = False  # NHWC memory format (faster convolutions on recent GPUs)
    compile: bool = False  # torch.compile the student
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower on GPU)
    log_interval: int = 50  # iterations between metrics.jsonl / TensorBoard rows
    checkpoint_interval: int = 2000  # latest.pt every N iterations
    keep_checkpoint_interval: int = 10000  # also keep iter_N.pt every N iterations (0 = never)
    image_interval: int = 2000  # PNG grid of source/target/pseudo-label/mix every N (0 = never)
    tensorboard: bool = True  # write TensorBoard scalars to run_dir/tb
    progress: bool = True  # tqdm progress bar
    max_nonfinite: int = 5  # consecutive non-finite losses before the run stops
    find_unused_parameters: bool = False  # DDP; needed only for custom heads used conditionally
    sync_bn: bool = True  # SyncBatchNorm for BatchNorm models (DeepLab-v2) under DDP on CUDA
    # DDP: seconds a collective may wait for the other ranks before this rank gives up
    # (torch's default is 30 minutes; a hung peer should not hold a job that long)
    ddp_timeout_s: float = 300.0
    resume: bool = False  # continue from run_dir/checkpoints/latest.pt if it exists
    # let a resume change the run's configuration (recorded in run_dir/config_changes.json)
    allow_config_change: bool = False
    stop_after: Optional[int] = None  # checkpoint and stop after this iteration (tests, budgets)
    num_threads: Optional[int] = None  # torch.set_num_threads on CPU

    def check(self) -> list[str]:
        """This section's own bounds."""
        errs = []
        if self.amp not in AMP_MODES:
            errs.append(f"runtime.amp={self.amp!r} is unknown; valid: {', '.join(AMP_MODES)}")
        if self.device != "auto":
            import torch

            try:
                torch.device(self.device)
            except RuntimeError:
                errs.append(
                    f"runtime.device={self.device!r} is not a device; use auto, cpu, cuda or "
                    "cuda:<index>"
                )
        if self.ddp_timeout_s <= 0:
            errs.append(f"runtime.ddp_timeout_s={self.ddp_timeout_s} must be > 0 (seconds)")
        if self.max_nonfinite < 1:
            errs.append(f"runtime.max_nonfinite={self.max_nonfinite} must be >= 1")
        for k in (
            "log_interval",
            "checkpoint_interval",
            "keep_checkpoint_interval",
            "image_interval",
        ):
            if getattr(self, k) < 0:
                errs.append(f"runtime.{k}={getattr(self, k)} must be >= 0 (0 = never)")
        if self.stop_after is not None and self.stop_after < 1:
            errs.append(f"runtime.stop_after={self.stop_after} must be >= 1 or null")
        if self.num_threads is not None and self.num_threads < 1:
            errs.append(f"runtime.num_threads={self.num_threads} must be >= 1 or null")
        return errs


@dataclass
class TrainConfig:
    """The whole training configuration (saved as config.json / config.yaml in the run dir)."""

    name: str = "run"
    method: str = "custom"  # informational: the recipe the preset started from
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    uda: UDAConfig = field(default_factory=UDAConfig)
    losses: LossConfig = field(default_factory=LossConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    # -------------------------------------------------------------- conversion
    def to_dict(self) -> dict:
        """Plain nested dict (tuples become lists), JSON/YAML serialisable."""
        return to_plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`ConfigError` naming valid keys."""
        return from_dict(cls, d, "")

    def save(self, run_dir: str | Path) -> None:
        """Write ``config.json`` and ``config.yaml`` atomically into ``run_dir``."""
        from pipa_core.io import atomic_write_json, atomic_write_text

        d = self.to_dict()
        atomic_write_json(Path(run_dir) / "config.json", d)
        atomic_write_text(Path(run_dir) / "config.yaml", yaml.safe_dump(d, sort_keys=False))

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        """Read a config from a ``.json`` / ``.yaml`` file or a run directory."""
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        text = path.read_text()
        d = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        return cls.from_dict(d)

    def check(self) -> list[str]:
        """Every section's own problems (see :func:`pipa_core.config.validate_config`)."""
        return [e for s in dataclasses.fields(self) if s.name not in ("name", "method")
                for e in getattr(self, s.name).check()]  # fmt: skip

    @property
    def resolved_run_dir(self) -> Path:
        return Path(self.runtime.run_dir or f"runs/{self.name}")
