"""Evaluation and analysis: confusion-matrix mIoU, feature extraction, t-SNE, CCD."""

from pipa_core.eval.ccd import CCDResult, ClassCenterStats, ccd_from_stats, class_center_distance
from pipa_core.eval.features import (
    PixelEmbeddings,
    downsample_labels,
    extract_pixel_embeddings,
    iter_pixel_embeddings,
    pixel_embedding,
    predict_labels,
    sample_per_class,
)
from pipa_core.eval.metrics import (
    SegmentationMetric,
    SegmentationResult,
    confusion_matrix,
    iou_from_confusion,
    summarize,
)
from pipa_core.eval.published import PUBLISHED, comparison_table, published_for
from pipa_core.eval.temporal import (
    TemporalConsistency,
    evaluate_temporal_consistency,
    sequence_consistency,
)
from pipa_core.eval.tsne import TSNEMap, TSNEResult, concat_results, fit_map, tsne

__all__ = [
    "PUBLISHED",
    "CCDResult",
    "ClassCenterStats",
    "PixelEmbeddings",
    "SegmentationMetric",
    "SegmentationResult",
    "TSNEResult",
    "TemporalConsistency",
    "ccd_from_stats",
    "class_center_distance",
    "comparison_table",
    "confusion_matrix",
    "downsample_labels",
    "evaluate_temporal_consistency",
    "extract_pixel_embeddings",
    "iou_from_confusion",
    "iter_pixel_embeddings",
    "pixel_embedding",
    "predict_labels",
    "published_for",
    "sample_per_class",
    "sequence_consistency",
    "summarize",
    "tsne",
    "TSNEMap",
    "concat_results",
    "fit_map",
]

from pipa_core.eval.evaluate import evaluate, predict_logits  # noqa: E402

__all__ += ["evaluate", "predict_logits"]
