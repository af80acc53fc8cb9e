"""``build_segmentor``: architecture names -> ready-to-train :class:`Segmentor`.

Names: ``daformer_mit_b0`` ... ``daformer_mit_b5`` (DAFormer head on MiT),
``segformer_mit_b0`` ... ``segformer_mit_b5`` (SegFormer all-MLP head) and
``deeplabv2_r50`` / ``deeplabv2_r101`` (dilated ResNet + ASPP classifier),
``daformer_dinov2_{s,b,l}`` (+ ``_reg``: with registers; DINOv2 ViT from timm with a
multi-scale neck, :mod:`pipa_core.models.dinov2`), and
``hrda_<any of these>`` (HRDA's multi-resolution segmentor around it).
:func:`build_from_config` builds the segmentor a run's ``model`` config describes;
the trainer, the run loaders and the benchmarks all build through it.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional, Sequence, Union

from torch import nn

from pipa_core.labels import NUM_CLASSES
from pipa_core.models import mit
from pipa_core.models.decoders import DAFormerHead, SegFormerHead
from pipa_core.models.deeplabv2 import ASPPClassifier, ResNetEncoder
from pipa_core.models.dinov2 import DINOV2_ENCODERS, DINOv2Encoder
from pipa_core.models.hrda import (
    HRDA_PREFIX,
    LR_SCALE,
    HRDASegmentor,
    detail_size_for,
    is_hrda_arch,
)
from pipa_core.models.pretrained import load_pretrained
from pipa_core.models.projection import PROJ_HEAD_NAMES, ProjectionHead
from pipa_core.models.segmentor import Segmentor
from pipa_core.models.stage_heads import StageHeads

__all__ = ["ARCHS", "build_from_config", "build_segmentor", "output_stride_of"]

_MIT = [f"mit_b{i}" for i in range(6)]
_RESNETS = {"deeplabv2_r50": "resnet50", "deeplabv2_r101": "resnet101"}
#: Every architecture name ``build_segmentor`` accepts.
ARCHS = tuple(
    [f"daformer_{m}" for m in _MIT]
    + [f"segformer_{m}" for m in _MIT]
    + list(_RESNETS)
    + [f"daformer_{d}" for d in DINOV2_ENCODERS]
)


def output_stride_of(arch: str) -> int:
    """Stride of the logits / features of ``arch`` (a base or ``hrda_`` name) w.r.t. the input."""
    base = arch[len(HRDA_PREFIX) :] if is_hrda_arch(arch) else arch
    _check_arch(base, arch)
    return 8 if base in _RESNETS else 4  # dilated ResNet at 1/8; MiT's first stage at 1/4


def _check_arch(base: str, arch: str) -> None:
    if base not in ARCHS:
        valid = ARCHS + tuple(HRDA_PREFIX + a for a in ARCHS)
        raise ValueError(f"unknown architecture {arch!r}; valid names: {', '.join(valid)}")


def _segformer_channels(mit_name: str) -> int:
    # SegFormer paper: MLP decoder width 256 for B0/B1, 768 for B2-B5.
    return 256 if mit_name in ("mit_b0", "mit_b1") else 768


def build_segmentor(
    arch: str,
    num_classes: int = NUM_CLASSES,
    pretrained: Optional[Union[str, os.PathLike]] = None,
    proj_heads: Sequence[str] = ("pixel", "patch"),
    proj_dim: int = 256,
    proj_hidden: Optional[int] = None,
    decoder_channels: Optional[int] = None,
    drop_path_rate: float = 0.1,
    grad_checkpointing: bool = False,
    channels_last: bool = False,
    hrda: Optional[Mapping[str, Any]] = None,
    vit_kwargs: Optional[Mapping[str, Any]] = None,
    stage_heads: bool = False,
) -> Segmentor:
    """Build a segmentor by name.

    Args:
        arch: one of :data:`ARCHS`, or ``hrda_<one of ARCHS>`` for an
            :class:`~pipa_core.models.hrda.HRDASegmentor` around that base model.
        num_classes: classifier outputs (19 for Cityscapes train IDs).
        pretrained: ``None`` (random init), ``"imagenet"`` (download from the hub),
            or a path to encoder weights (official ``mit_b*.pth``, Hugging Face
            ``pytorch_model.bin`` / ``model.safetensors``, timm/torchvision ResNet) or to
            a file written by ``Segmentor.export_weights``. The load report is kept in
            ``seg.pretrained_report``.
        proj_heads: projection heads to create (among ``pixel``, ``patch``, ``temporal``).
        proj_dim: embedding size of the projection heads (256 as in PiPa).
        proj_hidden: hidden width of the projection heads (default: decoder channels).
        decoder_channels: decoder width ``D`` (default 256 for DAFormer, 256/768 for
            SegFormer; ignored by DeepLab-v2 whose feature is the 2048-d ResNet output).
        drop_path_rate: stochastic depth of MiT encoders (0.1 in SegFormer/DAFormer).
        grad_checkpointing: recompute encoder blocks in backward (less memory).
        channels_last: NHWC memory format (faster convolutions on recent GPUs).
        hrda: ``HRDASegmentor`` keyword arguments (``detail_size``, ``hr_loss_weight``,
            ``attention_channels`` ...) for ``hrda_*`` names; HRDA's defaults if omitted.
        vit_kwargs: timm architecture overrides of a DINOv2 encoder (``embed_dim``,
            ``depth``, ``num_heads``: small ViTs for tests and CPU tutorials).
        stage_heads: add PiPa's released ``cls_head`` / ``proj_head`` on the concatenated
            encoder stages (:mod:`pipa_core.models.stage_heads`): for released PiPa
            checkpoints and the released-code training mode.

    Raises:
        ValueError: unknown ``arch`` (the message lists the valid names), or ``hrda``
            options for a single-scale name.
    """
    if is_hrda_arch(arch):
        base_arch = arch[len(HRDA_PREFIX) :]
        _check_arch(base_arch, arch)
        base = build_segmentor(
            base_arch, num_classes, pretrained, proj_heads, proj_dim, proj_hidden,
            decoder_channels, drop_path_rate, grad_checkpointing, channels_last,
            vit_kwargs=vit_kwargs, stage_heads=stage_heads,
        )  # fmt: skip
        return HRDASegmentor(base, **dict(hrda or {}))
    _check_arch(arch, arch)
    if hrda:
        raise ValueError(f"hrda options {sorted(hrda)} given for {arch!r}; use 'hrda_{arch}'")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if isinstance(proj_heads, str):  # a single name, not its characters
        proj_heads = (proj_heads,)
    if arch in _RESNETS:
        encoder: nn.Module = ResNetEncoder(_RESNETS[arch], output_stride=8)
        decoder: nn.Module = ASPPClassifier(encoder.out_channels[-1], num_classes)
        output_stride = 8
    else:
        head, enc_name = arch.split("_", 1)
        if enc_name in DINOV2_ENCODERS:
            encoder = DINOv2Encoder(enc_name, drop_path_rate=drop_path_rate, **(vit_kwargs or {}))
        else:
            encoder = getattr(mit, enc_name)(drop_path_rate=drop_path_rate)
        mit_name = enc_name
        if head == "daformer":
            decoder = DAFormerHead(
                encoder.out_channels, num_classes, channels=decoder_channels or 256
            )
        else:
            channels = decoder_channels or _segformer_channels(mit_name)
            decoder = SegFormerHead(encoder.out_channels, num_classes, channels=channels)
        output_stride = encoder.strides[0]
    heads = {
        name: ProjectionHead(decoder.channels, proj_dim, hidden_dim=proj_hidden)
        for name in proj_heads
    }
    extra = StageHeads(encoder.out_channels, num_classes) if stage_heads else None
    seg = Segmentor(
        encoder, decoder, output_stride, heads, arch=arch, channels_last=channels_last,
        stage_heads=extra,
    )  # fmt: skip
    seg.pretrained_report = None
    if pretrained is not None:
        seg.pretrained_report = load_pretrained(seg, pretrained)
    if grad_checkpointing:
        seg.set_grad_checkpointing(True)
    return seg


def build_from_config(
    model: Any,
    crop_size: Sequence[int],
    enabled_losses: Sequence[str] = (),
    num_classes: int = NUM_CLASSES,
    pretrained: bool = True,
    channels_last: bool = False,
    stage_heads: bool = False,
) -> Segmentor:
    """The segmentor a run's ``model`` config section describes.

    Args:
        model: a ``ModelConfig`` (any object with ``arch``, ``pretrained``,
            ``decoder_channels``, ``proj_dim``, ``hrda_detail_ratio``,
            ``hrda_hr_loss_weight`` and optionally ``grad_checkpointing``).
        crop_size: the run's resolved training crop ``(H, W)``; an HRDA detail crop is
            ``model.hrda_detail_ratio`` of it, aligned to the LR grid.
        enabled_losses: the run's enabled losses; each of ``pixel`` / ``patch`` /
            ``temporal`` gets its projection head.
        pretrained: load ``model.pretrained`` (the trainer); ``False`` builds the same
            shapes freshly initialised, for loading a trained run's weights.
        channels_last: NHWC memory format.
        stage_heads: add PiPa's released stage heads (``Run.stage_heads``: the released
            pixel contrast, ``losses.pixel.released``).
    """
    kwargs: dict[str, Any] = {
        "proj_heads": tuple(n for n in PROJ_HEAD_NAMES if n in enabled_losses),
        "pretrained": model.pretrained if pretrained else None,
        "channels_last": channels_last,
        "grad_checkpointing": getattr(model, "grad_checkpointing", False),
        "stage_heads": stage_heads,
    }
    if model.proj_dim is not None:
        kwargs["proj_dim"] = model.proj_dim
    if model.decoder_channels is not None:
        kwargs["decoder_channels"] = model.decoder_channels
    if is_hrda_arch(model.arch):
        align = round(output_stride_of(model.arch) / LR_SCALE)
        kwargs["hrda"] = {
            "detail_size": detail_size_for(crop_size, model.hrda_detail_ratio, align),
            "lr_scale": LR_SCALE,
            "hr_loss_weight": model.hrda_hr_loss_weight,
        }
    return build_segmentor(model.arch, num_classes=num_classes, **kwargs)
