"""SYNTHIA: SYNTHIA-RAND-CITYSCAPES (image source) and SYNTHIA-SEQS (video source).

SYNTHIA-RAND-CITYSCAPES layout (9,400 images, 1280x760)::

    <root>/RGB/0000000.png
    <root>/GT/LABELS/0000000.png                 # 16-bit PNG, class id in channel R
    <root>/GT/LABELS/0000000_labelTrainIds.png   # written by the preparation command

SYNTHIA-SEQS layout (one folder per sequence and condition, 1280x760)::

    <root>/SYNTHIA-SEQS-04-DAWN/RGB/Stereo_Left/Omni_F/000000.png
    <root>/SYNTHIA-SEQS-04-DAWN/GT/LABELS/Stereo_Left/Omni_F/000000.png                # as shipped
    <root>/SYNTHIA-SEQS-04-DAWN/GT/LABELS/Stereo_Left/Omni_F/000000_labelTrainIds.png  # prepared

Both ship labels as multi-channel 16-bit PNGs with the class id in the first
(R) channel: read with ``cv2.IMREAD_UNCHANGED`` and take ``[..., 2]`` (BGR order).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from pipa_core.data.base import (
    TRAIN_ID_SUFFIX,
    DatasetError,
    PairedFileDataset,
    Record,
    Transform,
    check_prepared,
    flat_records,
    pair_files,
    require_dir,
    strip_suffix,
)
from pipa_core.data.video import VideoFrameDataset, link_reference_frames

#: SYNTHIA-SEQS class id (R channel of GT/LABELS) -> Cityscapes train id.
#: Ids from the SYNTHIA-SEQS README: 0 void, 1 sky, 2 building, 3 road, 4 sidewalk,
#: 5 fence, 6 vegetation, 7 pole, 8 car, 9 traffic sign, 10 pedestrian, 11 bicycle
#: (the rider with the bicycle), 12 lane marking, 13/14 reserved, 15 traffic light.
#: The 11-class SYNTHIA-Seq -> Cityscapes-Seq protocol (DA-VSN) names the
#: cyclist class "rider", so 11 -> rider; lane markings are part of the road in
#: Cityscapes, so 12 -> road.
SYNTHIA_SEQ_ID_TO_TRAINID: dict[int, int] = {
    1: 10, 2: 2, 3: 0, 4: 1, 5: 4, 6: 8, 7: 5, 8: 13, 9: 7, 10: 11, 11: 12, 12: 0, 15: 6,
}  # fmt: skip

LAYOUT = """  <root>/RGB/*.png
  <root>/GT/LABELS/*.png                 (16-bit, class id in channel R, as downloaded)
  <root>/GT/LABELS/*_labelTrainIds.png   (written by the preparation command)"""

SEQ_LAYOUT = """  <root>/SYNTHIA-SEQS-<xx>-<COND>/RGB/Stereo_Left/Omni_F/<frame>.png
  <root>/SYNTHIA-SEQS-<xx>-<COND>/GT/LABELS/Stereo_Left/Omni_F/<frame>.png
  <root>/SYNTHIA-SEQS-<xx>-<COND>/GT/LABELS/Stereo_Left/Omni_F/<frame>_labelTrainIds.png (prepared)
  (<root> may also be one SYNTHIA-SEQS-<xx>-<COND> folder itself)"""

SEQ_CAMERA = Path("Stereo_Left") / "Omni_F"


def synthia_records(root: Path) -> list[Record]:
    """Paired (image, train-ID label) records of a prepared SYNTHIA-RAND-CITYSCAPES tree."""
    return flat_records(root, "RGB", Path("GT") / "LABELS", "SYNTHIA", LAYOUT)


class SynthiaDataset(PairedFileDataset):
    """SYNTHIA-RAND-CITYSCAPES source images with Cityscapes train-ID labels.

    Items: ``{"img": (3,H,W) float32 in [0,1], "label": (H,W) int64, "name": str}``.
    """

    def __init__(self, root: str | os.PathLike, transform: Optional[Transform] = None) -> None:
        root = Path(root)
        super().__init__(synthia_records(root), root, transform, dataset="SYNTHIA")


def synthia_seq_folders(root: Path, sequences: Optional[Sequence[str]] = None) -> list[Path]:
    """The SYNTHIA-SEQS folders under ``root`` (or ``root`` itself if it is one)."""
    if not root.is_dir():
        require_dir(root, "SYNTHIA-Seq", root, SEQ_LAYOUT)
    if (root / "RGB").is_dir():
        return [root]
    if sequences:
        folders = [root / s for s in sequences]
        for f in folders:
            require_dir(f / "RGB" / SEQ_CAMERA, "SYNTHIA-Seq", root, SEQ_LAYOUT)
        return folders
    folders = sorted(p for p in root.glob("SYNTHIA-SEQS-*") if p.is_dir())
    if not folders:
        raise DatasetError(
            f"SYNTHIA-Seq: no SYNTHIA-SEQS-* folder under {root}. Expected layout:\n{SEQ_LAYOUT}\n"
            f"Download it (see data/README.md), then run "
            f"`python -m pipa_core.data.prepare synthia_seq {root}`."
        )
    return folders


class SynthiaSeqDataset(VideoFrameDataset):
    """SYNTHIA-SEQS video source: every frame is labelled, so every frame is a key frame.

    Args:
        root: folder holding ``SYNTHIA-SEQS-*`` folders, or one such folder.
        sequences: names of the sequence folders to use (default: all found).
        ref_offset: frame-number offset of the reference frame (may be negative).
        transform: joint transform.

    Items: ``{"img", "label", "img_ref", "ref_offset", "name"}`` (see ``pipa_core.data.video``).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        sequences: Optional[Sequence[str]] = None,
        ref_offset: int = -1,
        transform: Optional[Transform] = None,
    ) -> None:
        root = Path(root)
        keys, frames = [], {}
        for folder in synthia_seq_folders(root, sequences):
            img_dir = require_dir(folder / "RGB" / SEQ_CAMERA, "SYNTHIA-Seq", root, SEQ_LAYOUT)
            lbl_dir = require_dir(
                folder / "GT" / "LABELS" / SEQ_CAMERA, "SYNTHIA-Seq", root, SEQ_LAYOUT
            )
            labels = sorted(lbl_dir.glob(f"*{TRAIN_ID_SUFFIX}"))
            check_prepared(labels, "SYNTHIA-Seq", root, lbl_dir)
            images = sorted(img_dir.glob("*.png"))
            pairs = pair_files(
                images,
                labels,
                img_key=lambda p: p.stem,
                label_key=lambda p: strip_suffix(p, TRAIN_ID_SUFFIX),
                dataset="SYNTHIA-Seq",
            )
            frames[folder.name] = {int(p.stem): p for p in images}
            for img, lbl in pairs:
                keys.append(
                    (folder.name, int(img.stem), Record(img, lbl, f"{folder.name}/{img.stem}"))
                )
        records, dropped = link_reference_frames(keys, frames, ref_offset, "SYNTHIA-Seq", root)
        super().__init__(records, root, ref_offset, transform, dropped, "SYNTHIA-Seq")
