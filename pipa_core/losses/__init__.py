"""The segmentation CE and the PiPa / PiPa++ / SPCL contrastive losses (one chunked InfoNCE core).

See ``docs/losses.md`` for the formulas, defaults and their sources.
"""

from pipa_core.losses.infonce import info_nce, zero_loss
from pipa_core.losses.memory_bank import ClassMemoryBank
from pipa_core.losses.patch import (
    PatchContrastLoss,
    PatchPair,
    patch_correspondence,
    sample_patch_pair,
)
from pipa_core.losses.pixel import PixelContrastLoss, downsample_labels, sample_anchors
from pipa_core.losses.prototype import (
    PrototypeContrastLoss,
    classwise_thresholds,
    pseudo_labels_with_thresholds,
)
from pipa_core.losses.segmentation import segmentation_ce
from pipa_core.losses.temporal import TemporalContrastLoss

__all__ = [
    "ClassMemoryBank",
    "PatchContrastLoss",
    "PatchPair",
    "PixelContrastLoss",
    "PrototypeContrastLoss",
    "TemporalContrastLoss",
    "classwise_thresholds",
    "downsample_labels",
    "info_nce",
    "patch_correspondence",
    "pseudo_labels_with_thresholds",
    "sample_anchors",
    "sample_patch_pair",
    "segmentation_ce",
    "zero_loss",
]
