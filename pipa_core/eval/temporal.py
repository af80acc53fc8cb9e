"""Temporal consistency of predictions across video frames (an extra metric for video UDA).

Temporal contrast (PiPa++) asks features at the same location of nearby
frames to agree. A visible consequence is *stabler predictions*: a model that
flickers between classes from one frame to the next is worse for a driving
system even at equal mIoU. Two numbers, accumulated over a whole split:

* **pixel agreement**: the fraction of pixels whose predicted class is the same
  in two consecutive frames (percent);
* **consecutive mIoU**: the mIoU of frame ``t+1``'s prediction measured against
  frame ``t``'s prediction as reference, over one confusion matrix for the split
  (same rules as :mod:`pipa_core.eval.metrics`: absent classes excluded).

No optical flow is used, so genuine motion also lowers both numbers: compare
models on the same frames, never against 100. Pixels where the key frame's
ground truth is ignore (e.g. the ego vehicle) can be masked out with
``mask_ignore=True``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn
from torch.utils.data import Dataset

from pipa_core.eval.features import _loader_length, _model_device, as_loader, predict_labels
from pipa_core.eval.metrics import confusion_matrix, summarize
from pipa_core.labels import IGNORE_INDEX, NUM_CLASSES


class TemporalConsistency:
    """Accumulates agreement between predictions of consecutive frames.

    >>> tc = TemporalConsistency()
    >>> tc.update(pred_t, pred_t1)   # (B, H, W) train IDs each
    >>> tc.compute("viper15")        # {"pixel_agreement": ..., "consecutive_mIoU": ...}
    """

    def __init__(self, num_classes: int = NUM_CLASSES):
        self.num_classes = num_classes
        self.cm = torch.zeros(num_classes, num_classes, dtype=torch.int64)
        self.same = 0
        self.total = 0
        self.pairs = 0

    @torch.no_grad()
    def update(
        self, pred_a: torch.Tensor, pred_b: torch.Tensor, valid: torch.Tensor | None = None
    ) -> None:
        """Add frame pairs: ``pred_a`` (earlier) and ``pred_b`` (later), ``(B, H, W)`` or ``(H, W)``.

        ``valid`` (same shape, bool) restricts the comparison to some pixels.
        """
        if pred_a.shape != pred_b.shape:
            raise ValueError(
                f"consecutive predictions must have the same shape, got {tuple(pred_a.shape)} "
                f"and {tuple(pred_b.shape)}; predict both frames at the same resolution"
            )
        a, b = pred_a.long(), pred_b.long()
        if valid is not None:
            a, b = a[valid], b[valid]
        self.same += int((a == b).sum())
        self.total += int(a.numel())
        self.pairs += int(pred_a.shape[0]) if pred_a.ndim == 3 else 1
        # pred_a plays the ground truth: rows = class at t, columns = class at t+1.
        self.cm += confusion_matrix(b, a, self.num_classes).cpu()

    def update_sequence(self, preds: torch.Tensor) -> None:
        """Add every consecutive pair of one sequence of predictions ``(T, H, W)``."""
        if preds.ndim != 3 or preds.shape[0] < 2:
            raise ValueError(f"a sequence must be (T >= 2, H, W), got {tuple(preds.shape)}")
        self.update(preds[:-1], preds[1:])

    def compute(self, protocol: str = "cs19") -> dict:
        """``{"pixel_agreement", "consecutive_mIoU" (percent), "per_class_IoU", "num_pairs", "num_pixels"}``."""
        if self.total == 0:
            raise ValueError("no frame pair was added; call update() first")
        res = summarize(self.cm, protocol)
        return {
            "pixel_agreement": 100.0 * self.same / self.total,
            "consecutive_mIoU": res.miou,
            "per_class_IoU": res.per_class,
            "protocol": protocol,
            "num_pairs": self.pairs,
            "num_pixels": self.total,
        }


def sequence_consistency(preds: torch.Tensor, protocol: str = "cs19") -> dict:
    """Temporal consistency of one sequence of predictions ``(T, H, W)``; see :class:`TemporalConsistency`."""
    tc = TemporalConsistency()
    tc.update_sequence(preds)
    return tc.compute(protocol)


@torch.no_grad()
def evaluate_temporal_consistency(
    model: nn.Module,
    loader: Iterable | Dataset,
    *,
    protocol: str = "cs19",
    mask_ignore: bool = False,
    max_batches: int | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    batch_size: int = 2,
) -> dict:
    """Temporal consistency over a video split whose items hold ``img`` and ``img_ref``.

    Each item pairs a key frame with a reference frame ``ref_offset`` frames away
    (docs/architecture.md); with ``ref_offset = ±1`` the pair is consecutive.
    The reference frame plays "frame t" when its offset is negative.

    Returns:
        :meth:`TemporalConsistency.compute`'s dict plus ``"ref_offsets"`` (the offsets seen).
    """
    from tqdm.auto import tqdm

    device = torch.device(device) if device is not None else _model_device(model)
    loader = as_loader(loader, batch_size)
    tc = TemporalConsistency()
    offsets: set[int] = set()
    was_training = model.training
    model.eval()
    try:
        total = _loader_length(loader, max_batches)
        for b, batch in enumerate(tqdm(loader, total=total, desc="temporal", disable=not progress)):
            if max_batches is not None and b >= max_batches:
                break
            if not isinstance(batch, Mapping) or "img_ref" not in batch:
                raise ValueError(
                    "temporal consistency needs video items with 'img' and 'img_ref' "
                    "(a video dataset, e.g. SyntheticSequenceDataset or a *seq benchmark)"
                )
            key = predict_labels(model, batch["img"].to(device))
            ref = predict_labels(model, batch["img_ref"].to(device))
            off = batch.get("ref_offset", torch.ones(key.shape[0], dtype=torch.int64))
            off = torch.as_tensor(off).reshape(-1)
            offsets.update(int(o) for o in off)
            valid = None
            if mask_ignore:
                valid = batch["label"].to(device) != IGNORE_INDEX
            # Order each pair in time: the frame with the smaller index comes first.
            ref_first = (off < 0).to(device)[:, None, None]
            first = torch.where(ref_first, ref, key)
            second = torch.where(ref_first, key, ref)
            tc.update(first, second, valid)
    finally:
        model.train(was_training)
    out = tc.compute(protocol)
    out["ref_offsets"] = sorted(offsets)
    return out
