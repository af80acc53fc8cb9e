"""Cityscapes (target of most benchmarks): 2,975 train / 500 val images, 2048x1024.

Layout::

    <root>/leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    <root>/gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png        # as shipped
    <root>/gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelTrainIds.png   # prepared

``_gtFine_labelTrainIds.png`` is written by ``python -m pipa_core.data.prepare
cityscapes <root>`` (or by cityscapesscripts' ``csCreateTrainIdLabelImgs``; both
give the same file). As an unlabelled UDA target use ``labelled=False``: labels
are then never read and every item carries an all-255 label.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from pipa_core.data.base import (
    TRAIN_ID_SUFFIX,
    DatasetError,
    PairedFileDataset,
    Record,
    Transform,
    check_prepared,
    pair_files,
    require_dir,
    strip_suffix,
)
from pipa_core.data.video import VideoFrameDataset, link_reference_frames

IMG_SUFFIX = "_leftImg8bit.png"
GT_SUFFIX = "_gtFine" + TRAIN_ID_SUFFIX
SPLITS = ("train", "val", "test")

LAYOUT = """  <root>/leftImg8bit/{train,val}/<city>/*_leftImg8bit.png
  <root>/gtFine/{train,val}/<city>/*_gtFine_labelIds.png        (as downloaded)
  <root>/gtFine/{train,val}/<city>/*_gtFine_labelTrainIds.png   (written by the preparation command)"""


def check_split(split: str, valid: tuple[str, ...], dataset: str) -> str:
    """Return ``split`` or raise a :class:`DatasetError` listing the valid splits."""
    if split not in valid:
        raise DatasetError(f"{dataset}: unknown split {split!r}; valid splits: {', '.join(valid)}")
    return split


def cityscapes_records(root: Path, split: str, labelled: bool) -> list[Record]:
    """Records of one Cityscapes split; ``labelled=False`` leaves labels out."""
    check_split(split, SPLITS, "Cityscapes")
    img_dir = require_dir(root / "leftImg8bit" / split, "Cityscapes", root, LAYOUT)
    images = sorted(img_dir.glob(f"*/*{IMG_SUFFIX}"))
    if not labelled:
        return [Record(p, None, strip_suffix(p, IMG_SUFFIX)) for p in images]
    gt_dir = require_dir(root / "gtFine" / split, "Cityscapes", root, LAYOUT)
    labels = sorted(gt_dir.glob(f"*/*{GT_SUFFIX}"))
    check_prepared(labels, "Cityscapes", root, gt_dir)
    pairs = pair_files(
        images,
        labels,
        img_key=lambda p: strip_suffix(p, IMG_SUFFIX),
        label_key=lambda p: strip_suffix(p, GT_SUFFIX),
        dataset="Cityscapes",
    )
    return [Record(i, lb, strip_suffix(i, IMG_SUFFIX)) for i, lb in pairs]


class CityscapesDataset(PairedFileDataset):
    """Cityscapes images with train-ID labels (``labelled=True``) or all-255 labels.

    Items: ``{"img": (3,H,W) float32 in [0,1], "label": (H,W) int64, "name": str}``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        transform: Optional[Transform] = None,
        labelled: bool = True,
    ) -> None:
        root = Path(root)
        super().__init__(cityscapes_records(root, split, labelled), root, transform, "Cityscapes")


# --------------------------------------------------------------------------- Cityscapes-Seq
SEQ_SNIPPET = 30  # frames per leftImg8bit_sequence snippet
SEQ_KEY_INDEX = 19  # the annotated (gtFine) frame is the 20th of its snippet

SEQ_LAYOUT = """  <root>/leftImg8bit_sequence/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
  <root>/gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelTrainIds.png   (prepared)
  (30-frame snippets; the gtFine frame is the 20th of its snippet)"""


def parse_frame(path: Path, suffix: str) -> tuple[str, int]:
    """``(<city>_<seq>, frame number)`` of a Cityscapes file name."""
    stem = strip_suffix(path, suffix)
    parts = stem.rsplit("_", 2)
    if len(parts) != 3 or not parts[2].isdigit():
        raise DatasetError(
            f"Cityscapes-Seq: cannot parse {path.name}; expected <city>_<seq>_<frame>{suffix}"
        )
    return f"{parts[0]}_{parts[1]}", int(parts[2])


def snippet_key_frames(frames: dict[str, dict[int, Path]]) -> list[tuple[str, int]]:
    """The 20th frame of every complete 30-frame snippet (runs of consecutive frame numbers)."""
    keys = []
    for seq in sorted(frames):
        numbers = sorted(frames[seq])
        run: list[int] = []
        for n in numbers + [None]:  # sentinel flushes the last run
            if run and (n is None or n != run[-1] + 1):
                for start in range(0, len(run) - SEQ_SNIPPET + 1, SEQ_SNIPPET):
                    keys.append((seq, run[start + SEQ_KEY_INDEX]))
                run = []
            if n is not None:
                run.append(n)
    return keys


class CityscapesSeqDataset(VideoFrameDataset):
    """Cityscapes-Seq (``leftImg8bit_sequence``): the annotated frame plus a reference frame.

    Key frames are the gtFine frames (the 20th of each 30-frame snippet). With
    ``labelled=False`` (UDA target) labels are not read, the key frames are found
    from the snippet structure and items carry all-255 labels.

    Args:
        root: Cityscapes root holding ``leftImg8bit_sequence`` (and ``gtFine``).
        split: ``"train"`` or ``"val"``.
        ref_offset: frame-number offset of the reference frame (may be negative).
        transform: joint transform.
        labelled: read the gtFine train-ID label of the key frame.

    Items: ``{"img", "label", "img_ref", "ref_offset", "name"}``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        ref_offset: int = -1,
        transform: Optional[Transform] = None,
        labelled: bool = True,
    ) -> None:
        root = Path(root)
        check_split(split, ("train", "val"), "Cityscapes-Seq")
        seq_dir = require_dir(
            root / "leftImg8bit_sequence" / split, "Cityscapes-Seq", root, SEQ_LAYOUT
        )
        frames: dict[str, dict[int, Path]] = {}
        for p in sorted(seq_dir.glob(f"*/*{IMG_SUFFIX}")):
            seq, n = parse_frame(p, IMG_SUFFIX)
            frames.setdefault(seq, {})[n] = p
        if labelled:
            keys = self._labelled_keys(root, split, frames)
        else:
            keys = [
                (s, n, Record(frames[s][n], None, f"{s}_{n:06d}"))
                for s, n in snippet_key_frames(frames)
            ]
        if not keys:
            raise DatasetError(
                f"Cityscapes-Seq: no complete 30-frame snippet under {seq_dir}. Expected layout:\n"
                f"{SEQ_LAYOUT}"
            )
        records, dropped = link_reference_frames(keys, frames, ref_offset, "Cityscapes-Seq", root)
        super().__init__(records, root, ref_offset, transform, dropped, "Cityscapes-Seq")

    @staticmethod
    def _labelled_keys(root: Path, split: str, frames: dict[str, dict[int, Path]]) -> list:
        gt_dir = require_dir(root / "gtFine" / split, "Cityscapes-Seq", root, SEQ_LAYOUT)
        labels = sorted(gt_dir.glob(f"*/*{GT_SUFFIX}"))
        check_prepared(labels, "Cityscapes-Seq", root, gt_dir)
        keys = []
        for lbl in labels:
            seq, n = parse_frame(lbl, GT_SUFFIX)
            img = frames.get(seq, {}).get(n)
            if img is None:
                raise DatasetError(
                    f"Cityscapes-Seq: label {lbl} has no frame {seq}_{n:06d}{IMG_SUFFIX} under "
                    f"{root / 'leftImg8bit_sequence' / split}; download leftImg8bit_sequence_trainvaltest.zip."
                )
            keys.append((seq, n, Record(img, lbl, f"{seq}_{n:06d}")))
        return keys
