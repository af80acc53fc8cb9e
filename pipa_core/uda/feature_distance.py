"""ImageNet feature distance (DAFormer, Hoyer et al. 2022, section 3.3).

The student's bottleneck features on *source* images are pulled towards those
of a frozen copy of the ImageNet-pretrained encoder, so that the generic
"thing" knowledge of ImageNet is not forgotten while fitting synthetic data:

    L_FD = λ · Σ_j M_j · ‖F_θ(x)_j − F_ImageNet(x)_j‖₂ / Σ_j M_j

Only pixels whose downsampled label is a thing class count (mask ``M``). The
label is downsampled to the feature resolution with the *min-ratio* rule: a
feature cell takes the majority class of the label pixels it covers if that
class fills at least ``min_ratio`` (0.75) of the cell, else it is ignored. The
ignore index takes part in the vote, so mostly-unlabelled cells are ignored.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pipa_core.labels import IGNORE_INDEX, NUM_CLASSES, THING_CLASSES


def downscale_label_ratio(
    label: torch.Tensor,
    scale: int,
    min_ratio: float = 0.75,
    num_classes: int = NUM_CLASSES,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Downsample a label by an integer factor with DAFormer's min-ratio criterion.

    Args:
        label: ``(B, H, W)`` int64 train IDs (``ignore_index`` allowed); H, W divisible by ``scale``.
        scale: integer downsampling factor (label size / feature size).
        min_ratio: fraction of the cell the majority class must fill.
    Returns:
        ``(B, H/scale, W/scale)`` int64; cells failing the criterion or whose majority is
        ``ignore_index`` hold ``ignore_index``.
    """
    if label.dim() != 3:
        raise ValueError(f"label must be (B, H, W), got shape {tuple(label.shape)}")
    b, h, w = label.shape
    if scale < 1 or h % scale or w % scale:
        raise ValueError(
            f"label size {h}x{w} is not divisible by the feature stride {scale}; "
            "use crop sizes that are multiples of the encoder's output stride (32 for MiT)"
        )
    # Ignore votes as an extra class so that unlabelled cells lose to nothing.
    lab = label.clone()
    lab[lab == ignore_index] = num_classes
    onehot = F.one_hot(lab, num_classes + 1).permute(0, 3, 1, 2).float()
    ratio = F.avg_pool2d(onehot, kernel_size=scale)
    best, out = ratio.max(dim=1)
    out[out == num_classes] = ignore_index
    out[best < min_ratio] = ignore_index
    return out


def thing_mask(
    label: torch.Tensor,
    feat_size: Sequence[int],
    classes: Sequence[int] = THING_CLASSES,
    min_ratio: float = 0.75,
) -> torch.Tensor:
    """Feature-resolution mask ``(B, h, w)`` bool of cells whose min-ratio label is in ``classes``."""
    h, w = label.shape[-2:]
    fh, fw = feat_size
    if h // fh != w // fw or h % fh or w % fw:
        raise ValueError(
            f"label {h}x{w} is not an integer multiple of the feature map {fh}x{fw}; "
            "crop sizes must be multiples of the encoder's output stride"
        )
    small = downscale_label_ratio(label, h // fh, min_ratio)
    cls = torch.as_tensor(tuple(classes), device=label.device, dtype=small.dtype)
    return torch.isin(small, cls)


def masked_feature_distance(
    feat: torch.Tensor, feat_ref: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean L2 distance ``‖feat − feat_ref‖₂`` over the channel axis of ``(B, D, h, w)`` maps,
    averaged over the True cells of ``mask`` ``(B, h, w)`` (all cells when None).

    Returns a scalar; 0 (with a graph) when the mask is empty.
    """
    dist = torch.linalg.vector_norm(feat.float() - feat_ref.float(), dim=1)
    if mask is None:
        return dist.mean()
    if not mask.any():
        return dist.sum() * 0.0
    return dist[mask].mean()


class FeatureDistance(nn.Module):
    """λ·L_FD against a frozen copy of the (ImageNet-pretrained) encoder.

    Args:
        segmentor: the student *before* training; a frozen deep copy is kept and only
            its ``encode(img)`` (ImageNet normalisation + encoder) is used. Build this
            before the first step so the copy holds the pretrained weights.
        weight: λ (0.005 in DAFormer).
        classes: train IDs of the thing classes; None uses every pixel.
        min_ratio: DAFormer's scale-min-ratio (0.75).
    """

    def __init__(
        self,
        segmentor: nn.Module,
        weight: float = 0.005,
        classes: Sequence[int] | None = THING_CLASSES,
        min_ratio: float = 0.75,
    ):
        super().__init__()
        if not callable(getattr(segmentor, "encode", None)):
            raise AttributeError(
                f"{type(segmentor).__name__} has no `encode(img)` method; the feature distance "
                "needs the segmentor's encoder features (pipa_core.models.Segmentor)"
            )
        if hasattr(segmentor, "frozen_copy"):  # drops the projection heads
            self.imnet = segmentor.frozen_copy()
        else:
            self.imnet = copy.deepcopy(segmentor).eval().requires_grad_(False)
        self.weight = weight
        self.classes = tuple(classes) if classes is not None else None
        self.min_ratio = min_ratio

    def train(self, mode: bool = True) -> FeatureDistance:
        # The ImageNet copy stays in eval mode whatever the trainer does.
        super().train(mode)
        self.imnet.eval()
        return self

    def forward(self, img: torch.Tensor, enc_student: Sequence[torch.Tensor], label: torch.Tensor):
        """λ·L_FD on the last encoder stage.

        Args:
            img: ``(B, 3, H, W)`` source images (the same the student encoded).
            enc_student: the student's encoder features (list of ``(B, D_i, h_i, w_i)``).
            label: ``(B, H, W)`` source labels.
        Returns:
            ``(loss, mask)``: the weighted scalar loss and the ``(B, h, w)`` mask used.
        """
        with torch.no_grad():
            ref = self.imnet.encode(img)
        f, fr = enc_student[-1], ref[-1]
        mask = None
        if self.classes is not None:
            mask = thing_mask(label, f.shape[-2:], self.classes, self.min_ratio)
        return self.weight * masked_feature_distance(f, fr.detach(), mask), mask
