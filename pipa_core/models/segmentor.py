"""The segmentor: ImageNet normalisation + encoder + decode head (+ projection heads).

Images enter in [0, 1] (the repository-wide convention) and are normalised
inside, so mixing, colour jitter and visualisation never see normalised
tensors. Projection heads are training-only: they are excluded from
:meth:`Segmentor.inference_state_dict` and from exported weights.
"""

from __future__ import annotations

import logging
import os
from typing import Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

from pipa_core.io import atomic_torch_save
from pipa_core.losses.segmentation import segmentation_ce
from pipa_core.models.projection import PROJ_HEAD_NAMES

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "Segmentor"]

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_PROJ_PREFIX = "proj_heads."


class Segmentor(nn.Module):
    """Encoder + decode head with optional projection heads.

    ``forward(img: (B, 3, H, W) in [0, 1]) -> {"logits": (B, K, H/s, W/s),
    "feat": (B, D, H/s, W/s), "enc": [encoder maps]}`` with ``s = output_stride``
    (sizes rounded up).

    Args:
        encoder: module mapping a normalised image to a list of feature maps; has
            ``out_channels`` and ``set_grad_checkpointing(bool)``.
        decoder: module mapping that list to ``(logits, feat)``; has ``channels``
            (``D``) and ``num_classes`` (``K``).
        output_stride: stride of ``logits`` / ``feat`` w.r.t. the input.
        proj_heads: name -> projection head (names among ``pixel``, ``patch``,
            ``temporal``).
        arch: architecture name, stored in exported files.
        stage_heads: PiPa's released ``cls_head`` / ``proj_head`` on the encoder stages
            (:class:`~pipa_core.models.stage_heads.StageHeads`), or None.
        channels_last: feed the encoder NHWC-strided tensors (faster convs on GPU).
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        output_stride: int,
        proj_heads: Optional[Mapping[str, nn.Module]] = None,
        arch: str = "custom",
        channels_last: bool = False,
        stage_heads: Optional[nn.Module] = None,
    ):
        super().__init__()
        unknown = set(proj_heads or {}) - set(PROJ_HEAD_NAMES)
        if unknown:
            raise ValueError(
                f"unknown projection head name(s) {sorted(unknown)}; use names among {PROJ_HEAD_NAMES}"
            )
        self.encoder = encoder
        self.decoder = decoder
        self.proj_heads = nn.ModuleDict(dict(proj_heads or {}))
        self.stage_heads = stage_heads
        self.output_stride = output_stride
        self.num_classes = decoder.num_classes
        self.feat_channels = decoder.channels
        self.arch = arch
        self.channels_last = channels_last
        self.frozen = False
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        if channels_last:
            self.to(memory_format=torch.channels_last)

    # ------------------------------------------------------------------ forward
    def normalize(self, img: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in [0, 1] -> ImageNet-normalised, same shape."""
        if img.dim() != 4 or img.shape[1] != 3:
            raise ValueError(
                f"expected images of shape (B, 3, H, W) in [0, 1], got {tuple(img.shape)}"
            )
        x = (img - self.mean.to(img.dtype)) / self.std.to(img.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def encode(self, img: torch.Tensor) -> List[torch.Tensor]:
        """Encoder feature maps of ``img`` in [0, 1]: list of ``(B, C_i, H/s_i, W/s_i)``."""
        return self.encoder(self.normalize(img))

    def decode(self, enc: List[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(logits (B, K, H/s, W/s), feat (B, D, H/s, W/s))`` from encoder maps."""
        return self.decoder(enc)

    #: Multi-resolution segmentors (HRDA) set this; their ``forward`` then differs from
    #: the single-scale path that ``single_scale=True`` selects.
    multi_resolution = False

    def forward(self, img: torch.Tensor, single_scale: bool = False) -> Dict[str, object]:
        """See the class docstring. ``single_scale`` is accepted for the training step's
        sake (patch / temporal crops ask every model for its single-scale forward, which
        for a single-scale model is its only one)."""
        enc = self.encode(img)
        logits, feat = self.decode(enc)
        return {"logits": logits, "feat": feat, "enc": enc}

    # ---- the three hooks the training step uses, overridden by HRDASegmentor
    def seg_loss(
        self, out: Dict[str, object], label: torch.Tensor, weight: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """The supervised loss of this model's ``forward`` output: the
        :func:`~pipa_core.losses.segmentation.segmentation_ce` of ``out["logits"]``
        against a ``(B, H, W)`` label, with optional ``(B, H, W)`` pixel weights."""
        return segmentation_ce(out["logits"], label, weight)

    def label_for_feat(self, label: torch.Tensor, out: Dict[str, object]) -> torch.Tensor:
        """A per-pixel map ``(B, H, W)`` cropped to the region ``out["feat"]`` covers:
        the whole input for a single-scale model, so ``label`` itself."""
        return label

    def project(self, name: str, feat: torch.Tensor) -> torch.Tensor:
        """Apply projection head ``name``: ``(B, D, h, w) -> (B, E, h, w)`` (not normalised)."""
        if name not in self.proj_heads:
            raise KeyError(
                f"this segmentor has no '{name}' projection head (it has {list(self.proj_heads)}); "
                f"build it with build_segmentor(..., proj_heads=(..., '{name}'))"
            )
        return self.proj_heads[name](feat)

    @torch.no_grad()
    def predict(
        self,
        img: torch.Tensor,
        mode: str = "whole",
        crop_size: Optional[Tuple[int, int]] = None,
        stride: Optional[Tuple[int, int]] = None,
        flip: bool = False,
        batch_size: int = 4,
    ) -> torch.Tensor:
        """Logits at input resolution ``(B, K, H, W)``; see :func:`pipa_core.models.inference.predict`."""
        from pipa_core.models.inference import predict

        return predict(
            self,
            img,
            mode=mode,
            crop_size=crop_size,
            stride=stride,
            flip=flip,
            batch_size=batch_size,
        )

    def frozen_copy(self) -> Segmentor:
        """A frozen, eval-mode deep copy without projection heads.

        Made right after loading ImageNet weights, its :meth:`encode` gives the
        ImageNet features of DAFormer's feature-distance regulariser.
        """
        import copy

        clone = copy.deepcopy(self)
        clone.proj_heads = nn.ModuleDict()
        clone.requires_grad_(False)
        clone.frozen = True
        return clone.eval()

    def train(self, mode: bool = True) -> Segmentor:
        """Set train/eval mode; a :meth:`frozen_copy` stays in eval mode (BN statistics fixed)
        even when a parent module calls ``.train()``."""
        return super().train(mode and not self.frozen)

    # ------------------------------------------------------------ memory options
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute encoder blocks / stages in the backward pass to save activation memory."""
        self.encoder.set_grad_checkpointing(enable)

    # ------------------------------------------------------------------ weights
    def inference_state_dict(self) -> Dict[str, torch.Tensor]:
        """The state dict without the training-only projection heads."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith(_PROJ_PREFIX)}

    def export_weights(self, path: str | os.PathLike) -> None:
        """Write the inference weights (no projection heads) atomically to ``path``.

        The file holds ``{"state_dict": ..., "meta": {"arch", "num_classes"}}``; load it
        with :meth:`load_weights` or ``build_segmentor(arch, pretrained=path)``.
        """
        meta = {"arch": self.arch, "num_classes": self.num_classes, "format": "pipa_segmentor"}
        atomic_torch_save({"state_dict": self.inference_state_dict(), "meta": meta}, path)

    def load_weights(self, path: str | os.PathLike, strict: bool = True):
        """Load a file written by :meth:`export_weights` (or a training checkpoint's state dict).

        Projection heads absent from the file are expected (they are never exported) and
        reported in ``LoadReport.expected_missing``; with ``strict`` any other missing or
        unexpected key, or any shape mismatch, raises a ``ValueError`` naming the file.
        Returns a :class:`pipa_core.models.pretrained.LoadReport`.
        """
        from pipa_core.models.pretrained import load_segmentor_weights

        return load_segmentor_weights(self, path, strict=strict)
