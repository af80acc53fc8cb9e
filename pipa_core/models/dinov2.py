"""DINOv2 ViT encoders (timm) with a simple multi-scale neck, for the DAFormer head.

A vision foundation model as the segmentor's encoder (as in VFM-UDA, Englert et
al. 2024): timm's ``vit_{small,base,large}_patch14_dinov2`` and their register
variants ``..._reg4_dinov2``, followed by a ViTDet-style simple feature pyramid
(Li et al. 2022) that turns the single-scale token map into the four maps at
strides 4, 8, 16, 32 the DAFormer head, the projection heads, the losses and the
HRDA wrapper expect from MiT.

**Patch size 14.** The input is padded to whole 16x16 cells (with the value 0,
the mean after normalisation) and resized bilinearly by 14 / 16, so each token
covers one 16x16 cell of the input, the token grid is ``(ceil(H / 16),
ceil(W / 16))``, and after the padded cells are cropped again every map has
exactly the size an MiT map of the same input has (``ceil(H / s)``). Crops and
sliding windows therefore stay what they are for MiT; position embeddings are
interpolated by timm (``dynamic_img_size``). DINOv2 itself was trained at 518 =
37 x 14 pixels; a 512 crop gives a 32 x 32 grid (448 pixels seen).

**Intermediate blocks.** The four pyramid levels read four evenly spaced blocks
(ViT-S / B: 3, 6, 9, 12; ViT-L: 6, 12, 18, 24), the last one included:
level 1 upsamples x4 (two stride-2 transposed convolutions), level 2 x2, level 3
keeps the grid, level 4 max-pools x2. Channels: ``D/4, D/2, D, D`` for embedding
width ``D``.
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from torch import nn

__all__ = ["DINOV2_ENCODERS", "DINOv2Encoder", "dinov2_layer_id"]

#: Encoder name (as in ``<head>_<encoder>`` architecture names) -> timm model name.
DINOV2_ENCODERS = {
    "dinov2_s": "vit_small_patch14_dinov2",
    "dinov2_b": "vit_base_patch14_dinov2",
    "dinov2_l": "vit_large_patch14_dinov2",
    "dinov2_s_reg": "vit_small_patch14_reg4_dinov2",
    "dinov2_b_reg": "vit_base_patch14_reg4_dinov2",
    "dinov2_l_reg": "vit_large_patch14_reg4_dinov2",
}

#: The grid stride the neck emulates (one token per 16x16 input pixels, like MiT's stage 3).
TOKEN_STRIDE = 16


class DINOv2Encoder(nn.Module):
    """A DINOv2 ViT from timm plus a 4-level neck: ``forward(x (B,3,H,W) normalised)`` returns
    ``[(B, D/4, H/4, W/4), (B, D/2, H/8, W/8), (B, D, H/16, W/16), (B, D, H/32, W/32)]``
    (sizes rounded up, as MiT's).

    Args:
        name: a key of :data:`DINOV2_ENCODERS`.
        drop_path_rate: stochastic depth of the ViT blocks.
        vit_kwargs: overrides of timm's architecture (``embed_dim``, ``depth``,
            ``num_heads``...; tests build small ViTs with them).
    """

    def __init__(self, name: str, drop_path_rate: float = 0.1, **vit_kwargs):
        super().__init__()
        import timm

        if name not in DINOV2_ENCODERS:
            raise ValueError(
                f"unknown DINOv2 encoder {name!r}; valid: {', '.join(DINOV2_ENCODERS)}"
            )
        self.name = name
        self.timm_name = DINOV2_ENCODERS[name]
        self.vit = timm.create_model(
            self.timm_name, pretrained=False, dynamic_img_size=True, num_classes=0,
            drop_path_rate=drop_path_rate, **vit_kwargs,
        )  # fmt: skip
        d, depth = self.vit.embed_dim, len(self.vit.blocks)
        self.patch = self.vit.patch_embed.patch_size[0]
        self.block_ids = [round(depth * (i + 1) / 4) - 1 for i in range(4)]
        self.out_channels = [d // 4, d // 2, d, d]
        self.strides = [4, 8, 16, 32]
        up = functools.partial(nn.ConvTranspose2d, kernel_size=2, stride=2)
        self.neck = nn.ModuleList(
            [
                nn.Sequential(up(d, d // 2), LayerNorm2d(d // 2), nn.GELU(), up(d // 2, d // 4)),
                up(d, d // 2),
                nn.Identity(),
                nn.MaxPool2d(2, ceil_mode=True),
            ]
        )

    def grid(self, h: int, w: int) -> tuple[int, int]:
        """Token grid for an ``(h, w)`` input: one token per 16x16 pixels, rounded up."""
        return math.ceil(h / TOKEN_STRIDE), math.ceil(w / TOKEN_STRIDE)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h, w = x.shape[-2:]
        gh, gw = self.grid(h, w)
        # pad to whole 16-pixel cells (0 = the mean after normalisation), so that token
        # (i, j) covers input pixels [16i, 16i + 16) x [16j, 16j + 16); then 16 -> 14
        x = F.pad(x, (0, gw * TOKEN_STRIDE - w, 0, gh * TOKEN_STRIDE - h))
        x = F.interpolate(x, size=(gh * self.patch, gw * self.patch), mode="bilinear",
                          align_corners=False)  # fmt: skip
        maps = self.vit.forward_intermediates(
            x, indices=self.block_ids, output_fmt="NCHW", intermediates_only=True
        )
        # the padded cells go: every map has the size MiT's has, ceil(H / s) x ceil(W / s)
        return [
            neck(m)[..., : math.ceil(h / s), : math.ceil(w / s)]
            for neck, m, s in zip(self.neck, maps, self.strides)
        ]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute the ViT blocks in backward (timm's checkpointing)."""
        self.vit.set_grad_checkpointing(enable)


def dinov2_layer_id(name: str, num_blocks: int) -> Optional[int]:
    """Depth of parameter ``name`` of a :class:`DINOv2Encoder` for layer-wise lr decay:
    0 for the embeddings, ``i + 1`` for block ``i``, ``num_blocks + 1`` for the rest
    (final norm, neck); ``None`` for names outside the ViT."""
    if not name.startswith("vit."):
        return num_blocks + 1 if name.startswith("neck.") else None
    rest = name[len("vit.") :]
    if rest.startswith(("cls_token", "reg_token", "pos_embed", "patch_embed", "mask_token")):
        return 0
    if rest.startswith("blocks."):
        return int(rest.split(".")[1]) + 1
    return num_blocks + 1
