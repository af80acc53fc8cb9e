"""PiPa's released stage heads: ``cls_head`` and ``proj_head`` on the concatenated MiT stages.

PiPa's released code (chen742/PiPa, ``HRDAEncoderDecoder`` and, for the DAFormer
variant, ``EncoderDecoder``) adds two heads to the segmentor that read the
*encoder* pyramid, not the decoder feature:

* the four MiT stages are bilinearly resized to the stride-4 grid
  (``align_corners=True``) and concatenated: ``64 + 128 + 320 + 512 = 1024``
  channels for MiT-B1...B5;
* ``cls_head``: ``Conv3x3(1024, 1024) -> BN -> ReLU -> Dropout2d(0.1) ->
  Conv1x1(1024, K, bias=False)``. It receives no loss in the released code; its
  argmax only chooses the hard / easy anchors of the pixel contrast, so it stays
  at its random initialisation (chen742/PiPa#14);
* ``proj_head``: ``Conv1x1(1024, 1024) -> BN -> ReLU -> Conv1x1(1024, 256)``,
  L2-normalised: the embedding the released pixel contrast trains, and the one
  the paper's t-SNE figure of the released model shows.

Submodule names follow the release (``cls_head.0``, ``cls_head.1.0`` (BN),
``cls_head.3``, ``proj_head.proj.0``, ``proj_head.proj.1.0``, ``proj_head.proj.2``)
so a released checkpoint's tensors load without renaming.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pipa_core.labels import NUM_CLASSES

__all__ = ["StageHeads", "concat_stages"]


def concat_stages(enc: Sequence[torch.Tensor]) -> torch.Tensor:
    """Encoder maps ``[(B, C_i, H_i, W_i)]`` resized to ``(H_0, W_0)`` and concatenated:
    ``(B, sum C_i, H_0, W_0)``. Bilinear with ``align_corners=True``, as released."""
    size = enc[0].shape[-2:]
    maps = [enc[0]] + [
        F.interpolate(e, size=size, mode="bilinear", align_corners=True) for e in enc[1:]
    ]
    return torch.cat(maps, dim=1)


def _bn_relu(channels: int) -> nn.Sequential:
    # the release's ModuleHelper.BNReLU: its BN is ``.0`` inside the block
    return nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(inplace=True))


class _Projection(nn.Module):
    """``proj_head``: per-pixel MLP on the stage concatenation, L2-normalised output."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.proj = nn.Sequential(
            nn.Conv2d(in_dim, in_dim, 1), _bn_relu(in_dim), nn.Conv2d(in_dim, out_dim, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(x), p=2, dim=1)


class StageHeads(nn.Module):
    """PiPa's released ``cls_head`` and ``proj_head`` on the concatenated encoder stages.

    Args:
        in_channels: the encoder's stage widths (``(64, 128, 320, 512)`` for MiT-B1...B5).
        num_classes: ``K`` of ``cls_head`` (19).
        proj_dim: embedding size of ``proj_head`` (256).
    """

    def __init__(
        self, in_channels: Sequence[int], num_classes: int = NUM_CLASSES, proj_dim: int = 256
    ):
        super().__init__()
        dim = int(sum(in_channels))
        self.in_dim, self.proj_dim = dim, proj_dim
        self.cls_head = nn.Sequential(
            nn.Conv2d(dim, dim, 3, padding=1),
            _bn_relu(dim),
            nn.Dropout2d(0.1),
            nn.Conv2d(dim, num_classes, 1, bias=False),
        )
        self.proj_head = _Projection(dim, proj_dim)

    def embed(self, enc: Sequence[torch.Tensor]) -> torch.Tensor:
        """``proj_head`` embedding ``(B, proj_dim, H_0, W_0)``, unit length per pixel."""
        return self.proj_head(concat_stages(enc))

    def classify(self, enc: Sequence[torch.Tensor]) -> torch.Tensor:
        """``cls_head`` logits ``(B, K, H_0, W_0)`` (the release's hard-anchor selector)."""
        return self.cls_head(concat_stages(enc))
