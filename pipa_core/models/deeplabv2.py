"""DeepLab-v2 (Chen et al., 2017): dilated ResNet encoder + ASPP classifier.

The UDA literature (AdaptSegNet, DACS, SPCL, DAFormer's baseline) uses a
ResNet-101 whose last two stages are dilated (output stride 8) and a classifier
that *sums* four 3x3 convolutions with dilations 6, 12, 18 and 24.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import timm
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from pipa_core.labels import NUM_CLASSES

__all__ = ["ASPPClassifier", "ResNetEncoder"]

_STAGES = ("layer1", "layer2", "layer3", "layer4")


class ResNetEncoder(nn.Module):
    """Dilated timm ResNet returning the four stage outputs.

    ``forward(x: (B, 3, H, W)) -> [(B, 256, H/4, W/4), (B, 512, H/8, W/8),
    (B, 1024, H/8, W/8), (B, 2048, H/8, W/8)]`` for ResNet-50/101 with
    ``output_stride=8`` (sizes rounded up). The input must already be normalised.

    Parameters live under ``body.`` with timm's names (``body.conv1.weight``,
    ``body.layer1.0.conv1.weight``...); :mod:`pipa_core.models.pretrained` maps a
    timm ImageNet ``state_dict`` onto them (its ``fc.*`` is unused).
    """

    def __init__(self, name: str = "resnet101", output_stride: int = 8):
        super().__init__()
        self.name = name
        self.body = timm.create_model(
            name,
            pretrained=False,  # weights come through pipa_core.models.pretrained
            features_only=True,
            output_stride=output_stride,
            out_indices=(1, 2, 3, 4),
        )
        self.out_channels: List[int] = list(self.body.feature_info.channels())
        self.strides: List[int] = [
            min(r, output_stride) for r in self.body.feature_info.reduction()
        ]
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each ResNet stage in the backward pass (saves activation memory)."""
        self.grad_checkpointing = enable

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        outs = []
        for name, module in self.body.items():
            if name in _STAGES and self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(module, x, use_reentrant=False)
            else:
                x = module(x)
            if name in _STAGES:
                outs.append(x)
        return outs


class ASPPClassifier(nn.Module):
    """DeepLab-v2 head: sum of parallel dilated 3x3 convs straight to class logits.

    ``forward(feats) -> (logits (B, K, h, w), feat (B, C, h, w))`` where ``feat`` is
    the last encoder feature (the input of the classifier; the projection heads
    read it) and ``h, w`` its size (stride 8).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int = NUM_CLASSES,
        dilations: Sequence[int] = (6, 12, 18, 24),
    ):
        super().__init__()
        self.channels = in_channels
        self.num_classes = num_classes
        self.convs = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, 3, padding=d, dilation=d) for d in dilations
        )
        for conv in self.convs:
            nn.init.normal_(conv.weight, 0.0, 0.01)
            nn.init.zeros_(conv.bias)

    def classify(self, feat: torch.Tensor) -> torch.Tensor:
        """``(B, C, h, w) -> (B, K, h, w)``."""
        return sum(conv(feat) for conv in self.convs)

    def forward(self, feats: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        feat = feats[-1]
        return self.classify(feat), feat
