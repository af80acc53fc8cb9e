"""Evaluation and analysis: confusion-matrix mIoU, feature extraction, t-SNE, CCD."""

from pipa_core.eval.metrics import (
    SegmentationMetric,
    SegmentationResult,
    confusion_matrix,
    iou_from_confusion,
    summarize,
)

__all__ = [
    "SegmentationMetric",
    "SegmentationResult",
    "confusion_matrix",
    "iou_from_confusion",
    "summarize",
]
