"""Decode heads: DAFormer (context-aware fusion) and SegFormer (all-MLP).

Every head maps the encoder pyramid to a fused feature at the finest input
stride and a classifier on top of it:

``forward(feats: list[(B, C_i, H_i, W_i)]) -> (logits (B, K, H_0, W_0), feat (B, D, H_0, W_0))``

``feat`` is the decoder feature *before* dropout and the 1x1 classifier; the
projection heads of PiPa read it. Attributes: ``channels`` (``D``),
``num_classes`` (``K``).
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from pipa_core.labels import NUM_CLASSES

__all__ = ["ConvBNReLU", "DAFormerHead", "SegFormerHead", "SeparableASPP"]


class ConvBNReLU(nn.Sequential):
    """Conv2d (no bias) -> BatchNorm2d -> ReLU: ``(B, C_in, H, W) -> (B, C_out, H', W')``."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int = 1,
        dilation: int = 1,
        groups: int = 1,
    ):
        padding = dilation * (kernel_size // 2)
        super().__init__(
            nn.Conv2d(
                in_ch,
                out_ch,
                kernel_size,
                padding=padding,
                dilation=dilation,
                groups=groups,
                bias=False,
            ),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )


class _SeparableConv(nn.Sequential):
    """Depthwise-separable 3x3 conv: depthwise (dilated) then pointwise, each with BN + ReLU."""

    def __init__(self, in_ch: int, out_ch: int, dilation: int):
        super().__init__(
            ConvBNReLU(in_ch, in_ch, 3, dilation=dilation, groups=in_ch),
            ConvBNReLU(in_ch, out_ch, 1),
        )


class _ImagePool(nn.Module):
    """Global-average-pool branch of ASPP: ``(B, C, H, W) -> (B, D, H, W)``."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv = ConvBNReLU(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.conv(F.adaptive_avg_pool2d(x, 1))
        return pooled.expand(-1, -1, *x.shape[-2:])


class SeparableASPP(nn.Module):
    """DAFormer's context-aware fusion: ASPP with depthwise-separable convolutions.

    One branch per dilation (dilation 1 is a 1x1 conv, the others depthwise-separable
    3x3 convs), an optional image-pooling branch, then a 3x3 bottleneck conv.
    ``(B, C_in, H, W) -> (B, D, H, W)``.
    """

    def __init__(
        self, in_ch: int, out_ch: int, dilations: Sequence[int] = (1, 6, 12, 18), pool: bool = False
    ):
        super().__init__()
        branches = [
            ConvBNReLU(in_ch, out_ch, 1) if d == 1 else _SeparableConv(in_ch, out_ch, d)
            for d in dilations
        ]
        if pool:
            branches.append(_ImagePool(in_ch, out_ch))
        self.branches = nn.ModuleList(branches)
        self.bottleneck = ConvBNReLU(len(branches) * out_ch, out_ch, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bottleneck(torch.cat([b(x) for b in self.branches], dim=1))


class _ClassifierMixin(nn.Module):
    """Dropout + 1x1 conv classifier shared by the MLP-style heads."""

    def _init_classifier(self, channels: int, num_classes: int, dropout: float) -> None:
        self.channels = channels
        self.num_classes = num_classes
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        nn.init.normal_(self.conv_seg.weight, 0.0, 0.01)
        nn.init.zeros_(self.conv_seg.bias)

    def classify(self, feat: torch.Tensor) -> torch.Tensor:
        """``(B, D, H, W) -> (B, K, H, W)`` logits."""
        return self.conv_seg(self.dropout(feat))


def _embed_and_upsample(
    feats: Sequence[torch.Tensor], embeds: nn.ModuleList, order: Sequence[int]
) -> List[torch.Tensor]:
    size = feats[0].shape[-2:]
    out = []
    for i in order:
        e = embeds[i](feats[i])
        if e.shape[-2:] != size:
            e = F.interpolate(e, size=size, mode="bilinear", align_corners=False)
        out.append(e)
    return out


class DAFormerHead(_ClassifierMixin):
    """DAFormer decoder (Hoyer et al., 2022): multi-level context-aware feature fusion.

    Each encoder level gets a linear (1x1) embedding to ``embed_dim`` channels and
    is bilinearly upsampled to the finest level (stride 4); the concatenation goes
    through :class:`SeparableASPP` (dilations 1, 6, 12, 18, no pooling branch as in
    the official ``daformer_sepaspp`` config) to ``channels`` features, then
    dropout 0.1 and a 1x1 classifier.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int = NUM_CLASSES,
        channels: int = 256,
        embed_dim: int | None = None,
        dilations: Sequence[int] = (1, 6, 12, 18),
        pool: bool = False,
        dropout: float = 0.1,
    ):
        super().__init__()
        embed_dim = embed_dim or channels
        self.embeds = nn.ModuleList(nn.Conv2d(c, embed_dim, 1) for c in in_channels)
        self.fuse = SeparableASPP(len(in_channels) * embed_dim, channels, dilations, pool)
        self._init_classifier(channels, num_classes, dropout)

    def forward(self, feats: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat(_embed_and_upsample(feats, self.embeds, range(len(feats))), dim=1)
        feat = self.fuse(x)
        return self.classify(feat), feat


class SegFormerHead(_ClassifierMixin):
    """SegFormer all-MLP decoder (Xie et al., 2021).

    Linear (1x1) embedding of each level to ``channels``, bilinear upsampling to
    stride 4, concatenation (coarsest first, as in the reference), a 1x1 conv +
    BN + ReLU fusion, dropout 0.1 and a 1x1 classifier. ``channels`` is 256 for
    B0/B1 and 768 for B2-B5 in the paper.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int = NUM_CLASSES,
        channels: int = 256,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.embeds = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.linear_fuse = ConvBNReLU(len(in_channels) * channels, channels, 1)
        self._init_classifier(channels, num_classes, dropout)

    def forward(self, feats: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        order = range(len(feats) - 1, -1, -1)
        feat = self.linear_fuse(torch.cat(_embed_and_upsample(feats, self.embeds, order), dim=1))
        return self.classify(feat), feat
