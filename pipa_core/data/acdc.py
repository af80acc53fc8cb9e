"""Adverse-condition targets from ETH Zurich: ACDC (fog, night, rain, snow) and Dark Zurich.

ACDC layout (1920x1080; 1,600 train / 406 val images over the four conditions)::

    <root>/rgb_anon/<cond>/{train,val}/<seq>/<seq>_frame_<n>_rgb_anon.png
    <root>/gt/<cond>/{train,val}/<seq>/<seq>_frame_<n>_gt_labelTrainIds.png
    <root>/gt/<cond>/{train,val}/<seq>/<seq>_frame_<n>_gt_labelIds.png

Dark Zurich layout (night target; train is unlabelled, val has 50 labelled images)::

    <root>/rgb_anon/train/night/<seq>/<seq>_frame_<n>_rgb_anon.png
    <root>/rgb_anon/val/night/<seq>/<seq>_frame_<n>_rgb_anon.png
    <root>/gt/val/night/<seq>/<seq>_frame_<n>_gt_labelTrainIds.png

Both ship ``_gt_labelTrainIds.png``; the preparation command only converts
``_gt_labelIds.png`` where the train-ID file is missing and writes statistics.
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
    pair_files,
    require_dir,
    strip_suffix,
)
from pipa_core.data.cityscapes import check_split

IMG_SUFFIX = "_rgb_anon.png"
GT_SUFFIX = "_gt" + TRAIN_ID_SUFFIX
ACDC_CONDITIONS = ("fog", "night", "rain", "snow")

ACDC_LAYOUT = """  <root>/rgb_anon/<cond>/{train,val}/<seq>/*_rgb_anon.png       (cond: fog, night, rain, snow)
  <root>/gt/<cond>/{train,val}/<seq>/*_gt_labelTrainIds.png   (or *_gt_labelIds.png + preparation)"""

DZ_LAYOUT = """  <root>/rgb_anon/{train,val}/night/<seq>/*_rgb_anon.png
  <root>/gt/val/night/<seq>/*_gt_labelTrainIds.png   (or *_gt_labelIds.png + preparation)"""


def _records(
    img_dir: Path, gt_dir: Optional[Path], dataset: str, root: Path, layout: str
) -> list[Record]:
    """Records of one ``<seq>/*_rgb_anon.png`` folder tree, labelled when ``gt_dir`` is given."""
    require_dir(img_dir, dataset, root, layout)
    images = sorted(img_dir.glob(f"*/*{IMG_SUFFIX}"))
    if gt_dir is None:
        return [Record(p, None, strip_suffix(p, IMG_SUFFIX)) for p in images]
    require_dir(gt_dir, dataset, root, layout)
    labels = sorted(gt_dir.glob(f"*/*{GT_SUFFIX}"))
    check_prepared(labels, dataset, root, gt_dir)
    pairs = pair_files(
        images,
        labels,
        img_key=lambda p: strip_suffix(p, IMG_SUFFIX),
        label_key=lambda p: strip_suffix(p, GT_SUFFIX),
        dataset=dataset,
    )
    return [Record(i, lb, strip_suffix(i, IMG_SUFFIX)) for i, lb in pairs]


class ACDCDataset(PairedFileDataset):
    """ACDC images of the chosen adverse conditions, labelled or (as UDA target) not.

    Args:
        root: ACDC root holding ``rgb_anon`` and ``gt``.
        split: ``"train"`` or ``"val"``.
        conditions: any of ``fog, night, rain, snow`` (default: all four, the cs2acdc target).
        transform: joint transform.
        labelled: read train-ID labels; otherwise items carry all-255 labels.

    Items: ``{"img": (3,H,W) float32 in [0,1], "label": (H,W) int64, "name": str}``;
    names are ``<cond>/<seq>_frame_<n>``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        conditions: Sequence[str] = ACDC_CONDITIONS,
        transform: Optional[Transform] = None,
        labelled: bool = True,
    ) -> None:
        root = Path(root)
        check_split(split, ("train", "val"), "ACDC")
        records = []
        for cond in conditions:
            if cond not in ACDC_CONDITIONS:
                raise DatasetError(
                    f"ACDC: unknown condition {cond!r}; valid: {', '.join(ACDC_CONDITIONS)}"
                )
            gt = root / "gt" / cond / split if labelled else None
            for r in _records(root / "rgb_anon" / cond / split, gt, "ACDC", root, ACDC_LAYOUT):
                records.append(Record(r.img, r.label, f"{cond}/{r.name}"))
        super().__init__(records, root, transform, dataset="ACDC")


class DarkZurichDataset(PairedFileDataset):
    """Dark Zurich night images: ``train`` is unlabelled, ``val`` has train-ID labels.

    Items: ``{"img": (3,H,W) float32 in [0,1], "label": (H,W) int64, "name": str}``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        transform: Optional[Transform] = None,
        labelled: Optional[bool] = None,
    ) -> None:
        root = Path(root)
        check_split(split, ("train", "val"), "Dark Zurich")
        labelled = (split == "val") if labelled is None else labelled
        if labelled and split == "train":
            raise DatasetError("Dark Zurich: the train split has no labels; use labelled=False.")
        gt = root / "gt" / split / "night" if labelled else None
        records = _records(root / "rgb_anon" / split / "night", gt, "Dark Zurich", root, DZ_LAYOUT)
        super().__init__(records, root, transform, dataset="Dark Zurich")
