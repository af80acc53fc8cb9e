"""Shared base for video datasets: a key frame, a reference frame and the key frame's label.

PiPa++'s temporal contrast needs two frames of one sequence. A video dataset
knows, for every sequence, which image file holds which frame number; an item
is a *key* frame (the annotated one where annotations exist) plus the frame
``ref_offset`` frame numbers away (negative = earlier)::

    {"img": (3,H,W) float32, "label": (H,W) int64, "img_ref": (3,H,W) float32,
     "ref_offset": int, "name": str}

Key frames whose reference frame is not on disk (sequence start or end) are
left out when the dataset is built; ``dropped`` counts them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from torch.utils.data import Dataset

from pipa_core.data.base import (
    DatasetError,
    Record,
    Transform,
    apply_transform,
    load_pair,
    read_image,
)


@dataclass(frozen=True)
class VideoRecord:
    """A key frame record plus the image file of its reference frame."""

    key: Record
    ref_img: Path


def link_reference_frames(
    keys: Sequence[tuple[str, int, Record]],
    frames: Mapping[str, Mapping[int, Path]],
    ref_offset: int,
    dataset: str,
    where: Path,
) -> tuple[list[VideoRecord], int]:
    """Attach to each key ``(sequence, frame number, record)`` the image ``ref_offset`` frames away.

    Returns the linked records and how many keys were dropped for lack of a
    reference frame; raises :class:`DatasetError` if none is left.
    """
    out, dropped = [], 0
    for seq, frame, rec in keys:
        ref = frames.get(seq, {}).get(frame + ref_offset)
        if ref is None:
            dropped += 1
            continue
        out.append(VideoRecord(rec, ref))
    if not out:
        raise DatasetError(
            f"{dataset}: none of the {len(keys)} key frames under {where} has a reference frame "
            f"{ref_offset:+d} frames away; check that the full sequences (not only the annotated "
            "frames) were downloaded, or use a smaller ref_offset."
        )
    return out, dropped


class VideoFrameDataset(Dataset):
    """Key frame + reference frame items over a list of :class:`VideoRecord`.

    Args:
        records: linked key / reference frames.
        root: dataset root (label paths in the statistics are relative to it).
        ref_offset: frame-number offset of the reference frame (may be negative).
        transform: joint transform applied identically to ``img``, ``img_ref`` and ``label``.
        dropped: number of key frames left out for lack of a reference frame.
        dataset: display name for error messages.
    """

    def __init__(
        self,
        records: Sequence[VideoRecord],
        root: str | os.PathLike,
        ref_offset: int,
        transform: Optional[Transform] = None,
        dropped: int = 0,
        dataset: str = "video dataset",
    ) -> None:
        self.records = list(records)
        self.root = Path(root)
        self.ref_offset = int(ref_offset)
        self.transform = transform
        self.dropped = dropped
        self.dataset_name = dataset

    def __len__(self) -> int:
        return len(self.records)

    @property
    def label_files(self) -> list[Optional[Path]]:
        """Label path of every key frame (``None`` where unlabelled), in index order."""
        return [r.key.label for r in self.records]

    def __getitem__(self, idx: int) -> dict[str, Any]:
        rec = self.records[idx]
        img, label = load_pair(rec.key)
        img_ref = read_image(rec.ref_img)
        if img_ref.shape != img.shape:
            raise DatasetError(
                f"size mismatch: key frame {rec.key.img} is {tuple(img.shape)} but reference frame "
                f"{rec.ref_img} is {tuple(img_ref.shape)}; frames of one sequence must share a size."
            )
        sample = {
            "img": img,
            "label": label,
            "img_ref": img_ref,
            "ref_offset": self.ref_offset,
            "name": rec.key.name,
        }
        return apply_transform(sample, self.transform)
