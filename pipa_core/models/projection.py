"""Projection heads for PiPa's contrastive losses (dropped at inference).

PiPa puts a 2-layer MLP on top of the decoder feature for each contrastive
loss (pixel-, patch- and temporal-wise). On a feature map an MLP applied per
pixel is a pair of 1x1 convolutions. The official code uses
``Conv1x1(D, D) -> BN -> ReLU -> Conv1x1(D, 256)``; we follow it (BN optional).
The embedding is *not* L2-normalised here: the losses normalise it themselves.
"""

from __future__ import annotations

from torch import nn

__all__ = ["PROJ_HEAD_NAMES", "ProjectionHead"]

#: Names a segmentor's ``proj_heads`` may use.
PROJ_HEAD_NAMES = ("pixel", "patch", "temporal")


class ProjectionHead(nn.Sequential):
    """Per-pixel 2-layer MLP: ``(B, D, H, W) -> (B, out_dim, H, W)``.

    Args:
        in_dim: channels of the decoder feature ``D``.
        out_dim: embedding size (256 in the official PiPa code).
        hidden_dim: hidden width (default: ``in_dim``, as in PiPa).
        batch_norm: BatchNorm between the layers (as in PiPa's ``convmlp``).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 256,
        hidden_dim: int | None = None,
        batch_norm: bool = True,
    ):
        hidden_dim = hidden_dim or in_dim
        layers = [nn.Conv2d(in_dim, hidden_dim, 1, bias=not batch_norm)]
        if batch_norm:
            layers.append(nn.BatchNorm2d(hidden_dim))
        layers += [nn.ReLU(inplace=True), nn.Conv2d(hidden_dim, out_dim, 1)]
        super().__init__(*layers)
        self.in_dim, self.out_dim = in_dim, out_dim
