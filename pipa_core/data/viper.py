"""VIPER (Playing for Benchmarks): synthetic driving videos, the VIPER -> Cityscapes-Seq source.

Layout (1920x1080; images ship as ``.jpg`` or lossless ``.png``)::

    <root>/{train,val}/img/<seq>/<seq>_<frame>.jpg            # e.g. train/img/001/001_00000.jpg
    <root>/{train,val}/cls/<seq>/<seq>_<frame>.png            # class ids, indexed-colour PNG
    <root>/{train,val}/cls/<seq>/<seq>_<frame>_labelTrainIds.png   # written by the preparation command

``cls`` PNGs are palette images whose index is the VIPER class id (their colours
are :data:`VIPER_PALETTE`); colour-coded RGB copies are also accepted by the
preparation command. Class ids (VIPER ``classes.csv``): 0 unlabeled, 1 ambiguous,
2 sky, 3 road, 4 sidewalk, 5 railtrack, 6 terrain, 7 tree, 8 vegetation,
9 building, 10 infrastructure, 11 fence, 12 billboard, 13 traffic light,
14 traffic sign, 15 mobile barrier, 16 fire hydrant, 17 chair, 18 trash,
19 trash can, 20 person, 21 animal, 22 bicycle, 23 motorcycle, 24 car, 25 van,
26 bus, 27 truck, 28 trailer, 29 train, 30 plane, 31 boat.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from pipa_core.data.base import (
    TRAIN_ID_SUFFIX,
    DatasetError,
    Record,
    Transform,
    check_prepared,
    pair_files,
    require_dir,
    strip_suffix,
)
from pipa_core.data.cityscapes import check_split
from pipa_core.data.video import VideoFrameDataset, link_reference_frames

#: VIPER class id -> Cityscapes train id for the 15-class VIPER -> Cityscapes-Seq
#: protocol (DA-VSN): tree and vegetation both become vegetation; classes
#: outside the protocol (van, train, trailer, billboard, ...) are ignored.
VIPER_ID_TO_TRAINID: dict[int, int] = {
    3: 0, 4: 1, 9: 2, 11: 4, 13: 6, 14: 7, 7: 8, 8: 8, 6: 9, 2: 10,
    20: 11, 24: 13, 27: 14, 26: 15, 23: 17, 22: 18,
}  # fmt: skip

#: RGB colour of every VIPER class id (index = id), used for colour-coded label files.
VIPER_PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0), (111, 74, 0), (70, 130, 180), (128, 64, 128), (244, 35, 232), (230, 150, 140),
    (152, 251, 152), (87, 182, 35), (35, 142, 35), (70, 70, 70), (153, 153, 153),
    (190, 153, 153), (150, 20, 20), (250, 170, 30), (220, 220, 0), (180, 180, 100),
    (173, 153, 153), (168, 153, 153), (81, 0, 21), (81, 0, 81), (220, 20, 60), (255, 0, 0),
    (119, 11, 32), (0, 0, 230), (0, 0, 142), (0, 80, 100), (0, 60, 100), (0, 0, 70),
    (0, 0, 90), (0, 80, 100), (0, 100, 100), (50, 0, 90),
)  # fmt: skip

LAYOUT = """  <root>/{train,val}/img/<seq>/<seq>_<frame>.jpg|png
  <root>/{train,val}/cls/<seq>/<seq>_<frame>.png                  (VIPER class ids, as downloaded)
  <root>/{train,val}/cls/<seq>/<seq>_<frame>_labelTrainIds.png    (written by the preparation command)"""

IMG_EXTS = (".jpg", ".png")


def _frame(path: Path) -> tuple[str, int]:
    """``(<seq>, frame)`` from a ``<seq>_<frame>.<ext>`` file name."""
    seq, _, frame = path.stem.rpartition("_")
    if not seq or not frame.isdigit():
        raise DatasetError(
            f"VIPER: cannot parse {path}; expected <seq>_<frame>.jpg|png, e.g. 001_00010.jpg"
        )
    return seq, int(frame)


class ViperSeqDataset(VideoFrameDataset):
    """VIPER video source: a labelled key frame plus the frame ``ref_offset`` frames away.

    Args:
        root: VIPER root holding ``train`` / ``val``.
        split: ``"train"`` or ``"val"``.
        ref_offset: frame-number offset of the reference frame (may be negative).
        transform: joint transform.

    Items: ``{"img", "label", "img_ref", "ref_offset", "name"}`` (names ``<seq>_<frame>``).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        ref_offset: int = -1,
        transform: Optional[Transform] = None,
    ) -> None:
        root = Path(root)
        check_split(split, ("train", "val"), "VIPER")
        img_dir = require_dir(root / split / "img", "VIPER", root, LAYOUT)
        cls_dir = require_dir(root / split / "cls", "VIPER", root, LAYOUT)
        images = sorted(p for p in img_dir.glob("*/*") if p.suffix.lower() in IMG_EXTS)
        labels = sorted(cls_dir.glob(f"*/*{TRAIN_ID_SUFFIX}"))
        check_prepared(labels, "VIPER", root, cls_dir)
        frames: dict[str, dict[int, Path]] = {}
        for p in images:
            seq, n = _frame(p)
            frames.setdefault(seq, {})[n] = p
        # Not every VIPER image is annotated: key frames are the annotated ones.
        lbl_keys = {strip_suffix(p, TRAIN_ID_SUFFIX) for p in labels}
        pairs = pair_files(
            (p for p in images if p.stem in lbl_keys),
            labels,
            img_key=lambda p: p.stem,
            label_key=lambda p: strip_suffix(p, TRAIN_ID_SUFFIX),
            dataset="VIPER",
        )
        keys = [(*_frame(i), Record(i, lb, i.stem)) for i, lb in pairs]
        records, dropped = link_reference_frames(keys, frames, ref_offset, "VIPER", root)
        super().__init__(records, root, ref_offset, transform, dropped, "VIPER")
