"""Confusion-matrix mIoU over a whole split (the Cityscapes protocol, checked against cityscapesscripts).

One confusion matrix accumulates every pixel of the split; IoU per class is
``TP / (TP + FP + FN)`` from it (not a mean of per-image IoUs). A class absent
from both the ground truth and the prediction has an undefined IoU (``nan``)
and is left out of the mean, never counted as 0 or 100.

Rows are ground truth, columns prediction, both in train IDs 0..C-1; pixels
whose ground truth is the ignore index are not counted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from pipa_core.labels import CLASSES, IGNORE_INDEX, NUM_CLASSES, check_protocol

#: How every table (markdown, notebooks) shows a value undefined for a class absent
#: from the evaluated images (IoU, CCD): one marker everywhere.
ABSENT = "n/a"


def format_value(value: float | None, digits: int = 1) -> str:
    """``value`` with ``digits`` decimals, or :data:`ABSENT` for ``None`` / ``nan`` / ``inf``."""
    if value is None or not math.isfinite(float(value)):
        return ABSENT
    return f"{float(value):.{digits}f}"


def confusion_matrix(
    pred: torch.Tensor,
    target: torch.Tensor,
    num_classes: int = NUM_CLASSES,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Confusion matrix of one batch.

    Args:
        pred: predicted train IDs, any shape, integer.
        target: ground-truth train IDs, same shape; ``ignore_index`` pixels are skipped.
    Returns:
        ``(C, C)`` int64 tensor, ``[gt, pred]``, on ``pred``'s device.
    """
    if pred.shape != target.shape:
        raise ValueError(
            f"prediction shape {tuple(pred.shape)} != ground-truth shape {tuple(target.shape)}; "
            "resize logits to the label size before taking the argmax"
        )
    pred = pred.reshape(-1).long()
    target = target.reshape(-1).long()
    keep = target != ignore_index
    pred, target = pred[keep], target[keep]
    if target.numel() and (target.min() < 0 or target.max() >= num_classes):
        raise ValueError(
            f"ground truth holds values outside 0..{num_classes - 1} and {ignore_index}: "
            f"{sorted(set(target.unique().tolist()) - set(range(num_classes)))}; "
            "convert labels to train IDs first (python -m pipa_core.data.prepare ...)"
        )
    if pred.numel() and (pred.min() < 0 or pred.max() >= num_classes):
        raise ValueError(
            f"predictions hold values outside 0..{num_classes - 1}; pass train IDs "
            "(e.g. logits.argmax(1)), not colours or Cityscapes label ids"
        )
    idx = target * num_classes + pred
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )


def iou_from_confusion(cm: torch.Tensor) -> torch.Tensor:
    """Per-class IoU ``(C,)`` float64 from a ``(C, C)`` matrix; ``nan`` where TP+FP+FN == 0."""
    cm = cm.double()
    tp = cm.diagonal()
    denom = cm.sum(0) + cm.sum(1) - tp
    iou = tp / denom
    iou[denom == 0] = float("nan")
    return iou


@dataclass
class SegmentationResult:
    """Per-class IoU and means for one protocol. ``per_class`` maps name -> IoU in percent (None if absent)."""

    protocol: str
    miou: float
    per_class: dict[str, float | None]
    pixel_accuracy: float
    num_pixels: int
    excluded: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "protocol": self.protocol,
            "mIoU": self.miou,
            "per_class_IoU": self.per_class,
            "pixel_accuracy": self.pixel_accuracy,
            "num_pixels": self.num_pixels,
            "excluded_absent_classes": self.excluded,
        }

    def to_markdown(self, title: str = "") -> str:
        """A two-row markdown table: class names, then IoU (``-`` for absent classes)."""
        names = list(self.per_class)
        vals = ["-" if v is None else f"{v:.1f}" for v in self.per_class.values()]
        head = f"**{title}** " if title else ""
        lines = [
            f"{head}mIoU ({self.protocol}, {len(names) - len(self.excluded)} classes): {self.miou:.2f}",
            "",
            "| " + " | ".join(names) + " | mIoU |",
            "|" + "---|" * (len(names) + 1),
            "| " + " | ".join(vals) + f" | {self.miou:.1f} |",
        ]
        return "\n".join(lines)


def summarize(cm: torch.Tensor, protocol: str = "cs19") -> SegmentationResult:
    """mIoU of the protocol's classes from an accumulated confusion matrix (in percent)."""
    ids = check_protocol(protocol)
    cm = cm.detach().cpu()
    iou = iou_from_confusion(cm)
    per_class, excluded, kept = {}, [], []
    for i in ids:
        v = float(iou[i])
        if math.isnan(v):
            per_class[CLASSES[i]] = None
            excluded.append(CLASSES[i])
        else:
            per_class[CLASSES[i]] = 100.0 * v
            kept.append(100.0 * v)
    total = int(cm.sum())
    acc = 100.0 * float(cm.diagonal().sum()) / total if total else float("nan")
    miou = sum(kept) / len(kept) if kept else float("nan")
    return SegmentationResult(protocol, miou, per_class, acc, total, excluded)


class SegmentationMetric:
    """Accumulates one confusion matrix over a split; works across DDP ranks.

    >>> m = SegmentationMetric()
    >>> m.update(logits.argmax(1), labels)   # (B, H, W) each
    >>> m.compute("syn16").miou
    """

    def __init__(self, num_classes: int = NUM_CLASSES, ignore_index: int = IGNORE_INDEX):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.cm = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def reset(self) -> None:
        self.cm.zero_()

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: ``pred`` and ``target`` are integer maps of equal shape, e.g. ``(B, H, W)``."""
        cm = confusion_matrix(pred, target, self.num_classes, self.ignore_index)
        self.cm += cm.cpu()

    def all_reduce(self) -> None:
        """Sum the matrix over DDP ranks (no-op without an initialised process group)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            backend = dist.get_backend()
            dev = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else "cpu"
            t = self.cm.to(dev)
            dist.all_reduce(t)
            self.cm = t.cpu()

    def compute(self, protocol: str = "cs19") -> SegmentationResult:
        return summarize(self.cm, protocol)

    def compute_all(self, protocols: Sequence[str]) -> dict[str, SegmentationResult]:
        return {p: summarize(self.cm, p) for p in protocols}
