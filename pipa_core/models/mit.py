"""Mix Transformer (MiT) encoders B0-B5, the SegFormer backbone (Xie et al., 2021).

A MiT is a four-stage pyramid. Each stage starts with an *overlapping patch
embedding* (a strided convolution whose kernel is larger than its stride), then
stacks transformer blocks made of

* *efficient self-attention*: keys and values come from a copy of the tokens
  spatially reduced by a strided convolution (``sr_ratio`` 8, 4, 2, 1), which
  cuts the attention cost by ``sr_ratio**2``;
* *Mix-FFN*: an MLP with a 3x3 depthwise convolution between its two linear
  layers, which leaks positional information so no positional encoding is
  needed;

and ends with a LayerNorm. Outputs are feature maps at strides 4, 8, 16, 32.

Submodule names follow the official SegFormer ImageNet checkpoints
(``patch_embed1.proj.weight``, ``block1.0.attn.kv.weight``, ``norm1.weight``...)
so ``mit_b5.pth`` loads without renaming; see :mod:`pipa_core.models.pretrained`
for Hugging Face ``nvidia/mit-b*`` checkpoints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Tuple

import torch
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = [
    "MIT_CONFIGS",
    "MiTConfig",
    "MixVisionTransformer",
    "mit_b0",
    "mit_b1",
    "mit_b2",
    "mit_b3",
    "mit_b4",
    "mit_b5",
]


@dataclass(frozen=True)
class MiTConfig:
    """Hyper-parameters of one MiT size (SegFormer paper, Table 6 / official configs)."""

    embed_dims: Tuple[int, int, int, int]
    depths: Tuple[int, int, int, int]
    num_heads: Tuple[int, int, int, int] = (1, 2, 5, 8)
    mlp_ratios: Tuple[int, int, int, int] = (4, 4, 4, 4)
    sr_ratios: Tuple[int, int, int, int] = (8, 4, 2, 1)
    # First stage: 7x7 kernel, stride 4; later stages: 3x3 kernel, stride 2.
    patch_sizes: Tuple[int, int, int, int] = (7, 3, 3, 3)
    strides: Tuple[int, int, int, int] = (4, 2, 2, 2)


_WIDE = (64, 128, 320, 512)
MIT_CONFIGS = {
    "mit_b0": MiTConfig(embed_dims=(32, 64, 160, 256), depths=(2, 2, 2, 2)),
    "mit_b1": MiTConfig(embed_dims=_WIDE, depths=(2, 2, 2, 2)),
    "mit_b2": MiTConfig(embed_dims=_WIDE, depths=(3, 4, 6, 3)),
    "mit_b3": MiTConfig(embed_dims=_WIDE, depths=(3, 4, 18, 3)),
    "mit_b4": MiTConfig(embed_dims=_WIDE, depths=(3, 8, 27, 3)),
    "mit_b5": MiTConfig(embed_dims=_WIDE, depths=(3, 6, 40, 3)),
}


class OverlapPatchEmbed(nn.Module):
    """Strided convolution with overlapping windows, then LayerNorm.

    ``(B, C_in, H, W) -> (B, N, C_out), (h, w)`` with ``h = ceil(H / stride)``.
    """

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int, stride: int):
        super().__init__()
        self.proj = nn.Conv2d(
            in_chans, embed_dim, patch_size, stride=stride, padding=patch_size // 2
        )
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        x = self.proj(x)
        h, w = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), (h, w)


class EfficientSelfAttention(nn.Module):
    """Multi-head self-attention whose keys/values are spatially reduced by ``sr_ratio``.

    ``(B, N, C) -> (B, N, C)`` for tokens of an ``h x w`` map (``N = h * w``).
    """

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        # Keys and values share one projection: the official checkpoints store them as ``kv``.
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
        b, n, c = x.shape
        heads = self.num_heads
        q = self.q(x).reshape(b, n, heads, c // heads).transpose(1, 2)
        if self.sr_ratio > 1:
            grid = x.transpose(1, 2).reshape(b, c, *hw)
            x = self.norm(self.sr(grid).flatten(2).transpose(1, 2))
        kv = self.kv(x).reshape(b, -1, 2, heads, c // heads).permute(2, 0, 3, 1, 4)
        # PyTorch's fused kernel (flash / memory-efficient where available).
        out = F.scaled_dot_product_attention(q, kv[0], kv[1])
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class DWConv(nn.Module):
    """3x3 depthwise convolution on a token sequence: ``(B, N, C) -> (B, N, C)``."""

    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
        b, n, c = x.shape
        x = self.dwconv(x.transpose(1, 2).reshape(b, c, *hw))
        return x.flatten(2).transpose(1, 2)


class MixFFN(nn.Module):
    """Linear -> 3x3 depthwise conv -> GELU -> Linear: ``(B, N, C) -> (B, N, C)``."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.dwconv = DWConv(hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x), hw)))


class Block(nn.Module):
    """Pre-norm transformer block with stochastic depth: ``(B, N, C) -> (B, N, C)``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: int, sr_ratio: int, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = EfficientSelfAttention(dim, num_heads, sr_ratio)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MixFFN(dim, dim * mlp_ratio)

    def forward(self, x: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), hw))
        return x + self.drop_path(self.mlp(self.norm2(x), hw))


class MixVisionTransformer(nn.Module):
    """Four-stage MiT encoder.

    ``forward(x: (B, 3, H, W)) -> [ (B, C_i, H/s_i, W/s_i) for s_i in 4, 8, 16, 32 ]``
    (sizes rounded up). The input must already be normalised.

    Attributes:
        out_channels: channels of the four outputs (``config.embed_dims``).
        strides: ``(4, 8, 16, 32)``.
    """

    def __init__(self, config: MiTConfig, in_chans: int = 3, drop_path_rate: float = 0.1):
        super().__init__()
        self.config = config
        self.out_channels: List[int] = list(config.embed_dims)
        self.strides: List[int] = [4, 8, 16, 32]
        self.grad_checkpointing = False
        # Stochastic depth grows linearly over all blocks of all stages.
        # (Plain Python so the model can be built on the "meta" device.)
        total = sum(config.depths)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        prev_dim, cursor = in_chans, 0
        for i in range(4):
            dim, depth = config.embed_dims[i], config.depths[i]
            embed = OverlapPatchEmbed(prev_dim, dim, config.patch_sizes[i], config.strides[i])
            blocks = nn.ModuleList(
                Block(dim, config.num_heads[i], config.mlp_ratios[i], config.sr_ratios[i], r)
                for r in rates[cursor : cursor + depth]
            )
            setattr(self, f"patch_embed{i + 1}", embed)
            setattr(self, f"block{i + 1}", blocks)
            setattr(self, f"norm{i + 1}", nn.LayerNorm(dim, eps=1e-6))
            prev_dim, cursor = dim, cursor + depth
        self.apply(_init_weights)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each transformer block in the backward pass (saves activation memory)."""
        self.grad_checkpointing = enable

    @property
    def min_input_size(self) -> int:
        """Smallest image side the encoder accepts (stage 1 must cover one reduction window)."""
        return (self.config.sr_ratios[0] - 1) * self.config.strides[0] + 1

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        if min(x.shape[-2:]) < self.min_input_size:
            raise ValueError(
                f"MiT needs images of at least {self.min_input_size}x{self.min_input_size} pixels "
                f"(spatial reduction {self.config.sr_ratios[0]} at stride 4), got {tuple(x.shape[-2:])}; "
                f"use larger crops or pad the image"
            )
        outs = []
        b = x.shape[0]
        for i in range(1, 5):
            x, hw = getattr(self, f"patch_embed{i}")(x)
            for blk in getattr(self, f"block{i}"):
                if self.grad_checkpointing and torch.is_grad_enabled():
                    x = checkpoint(blk, x, hw, use_reentrant=False)
                else:
                    x = blk(x, hw)
            x = getattr(self, f"norm{i}")(x)
            x = x.transpose(1, 2).reshape(b, -1, *hw)
            outs.append(x)
        return outs


def _init_weights(m: nn.Module) -> None:
    # Initialisation of the official implementation: truncated normal for linear
    # layers, He-normal (fan-out) for convolutions, identity LayerNorms.
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def _make(name: str, drop_path_rate: float, in_chans: int) -> MixVisionTransformer:
    return MixVisionTransformer(MIT_CONFIGS[name], in_chans=in_chans, drop_path_rate=drop_path_rate)


def mit_b0(drop_path_rate: float = 0.1, in_chans: int = 3) -> MixVisionTransformer:
    """MiT-B0 (dims 32/64/160/256, depths 2/2/2/2; ~3.3M parameters)."""
    return _make("mit_b0", drop_path_rate, in_chans)


def mit_b1(drop_path_rate: float = 0.1, in_chans: int = 3) -> MixVisionTransformer:
    """MiT-B1 (dims 64/128/320/512, depths 2/2/2/2; ~13.2M parameters)."""
    return _make("mit_b1", drop_path_rate, in_chans)


def mit_b2(drop_path_rate: float = 0.1, in_chans: int = 3) -> MixVisionTransformer:
    """MiT-B2 (dims 64/128/320/512, depths 3/4/6/3; ~24.2M parameters)."""
    return _make("mit_b2", drop_path_rate, in_chans)


def mit_b3(drop_path_rate: float = 0.1, in_chans: int = 3) -> MixVisionTransformer:
    """MiT-B3 (dims 64/128/320/512, depths 3/4/18/3; ~44.1M parameters)."""
    return _make("mit_b3", drop_path_rate, in_chans)


def mit_b4(drop_path_rate: float = 0.1, in_chans: int = 3) -> MixVisionTransformer:
    """MiT-B4 (dims 64/128/320/512, depths 3/8/27/3; ~60.8M parameters)."""
    return _make("mit_b4", drop_path_rate, in_chans)


def mit_b5(drop_path_rate: float = 0.1, in_chans: int = 3) -> MixVisionTransformer:
    """MiT-B5 (dims 64/128/320/512, depths 3/6/40/3; ~81.4M parameters)."""
    return _make("mit_b5", drop_path_rate, in_chans)
