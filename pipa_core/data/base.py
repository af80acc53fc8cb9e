"""Shared base for the real benchmark datasets: paired image / label file lists.

Every real dataset (GTA5, SYNTHIA, Cityscapes, ACDC, Dark Zurich and the video
ones) is a list of ``(image file, label file or None, name)`` records found by
scanning the layout its authors ship. This module holds the record type, the
readers (OpenCV, RGB float in [0, 1]; train-ID labels as int64) and the
:class:`DatasetError` every loader raises with a message that names the file,
the expected layout and the command that fixes it.

Sample contract (docs/architecture.md)::

    {"img": float32 (3, H, W) in [0, 1], "label": int64 (H, W), "name": str}

Unlabelled items carry an all-255 label so default collation works.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from pipa_core.labels import IGNORE_INDEX

#: Suffix of converted label files written by ``python -m pipa_core.data.prepare``.
TRAIN_ID_SUFFIX = "_labelTrainIds.png"
#: Per-image class pixel statistics written by the preparation command.
STATS_FILE = "sample_class_stats.json"

Transform = Callable[[dict], dict]


class DatasetError(ValueError):
    """A dataset on disk does not match the layout a loader expects.

    The message always says what was expected, where, and how to fix it
    (usually the preparation command to run).
    """


def prepare_command(dataset: str, root: str | os.PathLike) -> str:
    """The shell command that prepares ``dataset`` found at ``root``."""
    return f"python -m pipa_core.data.prepare {dataset} {root}"


@dataclass(frozen=True)
class Record:
    """One item of a paired file list.

    ``label`` is ``None`` for unlabelled (target) images.
    """

    img: Path
    label: Optional[Path]
    name: str


def require_dir(path: Path, dataset: str, root: Path, layout: str) -> Path:
    """Return ``path`` if it is a directory, else raise :class:`DatasetError` naming the layout."""
    if not root.is_dir():
        raise DatasetError(
            f"{dataset}: dataset root {root} does not exist. Expected layout:\n{layout}\n"
            f"Download it (see data/README.md), then run `{prepare_command(_cli(dataset), root)}`."
        )
    if not path.is_dir():
        raise DatasetError(
            f"{dataset}: missing folder {path}. Expected layout under {root}:\n{layout}\n"
            f"See data/README.md, then run `{prepare_command(_cli(dataset), root)}`."
        )
    return path


def _cli(dataset: str) -> str:
    # Dataset display names -> preparation sub-command names.
    return {
        "GTA5": "gta",
        "SYNTHIA": "synthia",
        "SYNTHIA-Seq": "synthia_seq",
        "Cityscapes": "cityscapes",
        "Cityscapes-Seq": "cityscapes",
        "ACDC": "acdc",
        "Dark Zurich": "darkzurich",
        "VIPER": "viper",
    }.get(dataset, dataset.lower())


def pair_files(
    images: Iterable[Path],
    labels: Iterable[Path],
    img_key: Callable[[Path], str],
    label_key: Callable[[Path], str],
    dataset: str,
) -> list[tuple[Path, Path]]:
    """Match images to labels by key; an image without its label (or the reverse) raises.

    Returns ``(image, label)`` pairs sorted by key.
    """
    img_map = {img_key(p): p for p in images}
    lbl_map = {label_key(p): p for p in labels}
    only_img = sorted(set(img_map) - set(lbl_map))
    only_lbl = sorted(set(lbl_map) - set(img_map))
    if only_img:
        raise DatasetError(
            f"{dataset}: image {img_map[only_img[0]]} has no label file "
            f"({len(only_img)} image(s) without labels in total). Re-extract the label archive, "
            "or run the preparation command if the converted *_labelTrainIds.png files are missing."
        )
    if only_lbl:
        raise DatasetError(
            f"{dataset}: label {lbl_map[only_lbl[0]]} has no image file "
            f"({len(only_lbl)} label(s) without images in total). Re-extract the image archive."
        )
    return [(img_map[k], lbl_map[k]) for k in sorted(img_map)]


def read_image(path: Path) -> torch.Tensor:
    """Read an RGB image as float32 ``(3, H, W)`` in [0, 1]; unreadable files raise naming the file."""
    arr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if arr is None:
        raise DatasetError(
            f"cannot read image file {path} (missing, truncated or not an image); "
            "re-download or re-extract it."
        )
    arr = cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)
    return torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0)


def read_label(path: Path) -> torch.Tensor:
    """Read a single-channel train-ID label PNG as int64 ``(H, W)``; unreadable files raise."""
    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise DatasetError(
            f"cannot read label file {path} (missing, truncated or not an image); "
            "delete it and rerun the preparation command."
        )
    if arr.ndim != 2:
        raise DatasetError(
            f"label file {path} has {arr.shape[2]} channels; expected a single-channel "
            "train-ID PNG (*_labelTrainIds.png written by `python -m pipa_core.data.prepare`)."
        )
    return torch.from_numpy(arr.astype(np.int64))


def ignore_label(height: int, width: int) -> torch.Tensor:
    """All-``IGNORE_INDEX`` label ``(H, W)`` int64 for unlabelled images."""
    return torch.full((height, width), IGNORE_INDEX, dtype=torch.int64)


def load_pair(record: Record) -> tuple[torch.Tensor, torch.Tensor]:
    """Image ``(3, H, W)`` and label ``(H, W)`` of ``record``; a size mismatch raises naming both files."""
    img = read_image(record.img)
    if record.label is None:
        return img, ignore_label(img.shape[1], img.shape[2])
    label = read_label(record.label)
    if tuple(label.shape) != tuple(img.shape[1:]):
        raise DatasetError(
            f"size mismatch: image {record.img} is {img.shape[2]}x{img.shape[1]} (WxH) but label "
            f"{record.label} is {label.shape[1]}x{label.shape[0]}; the pair must have equal sizes "
            "(re-extract the dataset, or delete the label and rerun the preparation command)."
        )
    return img, label


#: Key of the true label in unlabelled target items of the embedded benchmark: read only
#: to measure the teacher's pseudo-label accuracy, never by a loss.
HIDDEN_LABEL = "hidden_label"


def wrap_sample(sample: dict) -> dict:
    """Mark images as ``tv_tensors.Image`` and the label as ``tv_tensors.Mask`` for v2 transforms."""
    out = dict(sample)
    for key in ("img", "img_ref"):
        if key in out and not isinstance(out[key], tv_tensors.Image):
            out[key] = tv_tensors.Image(out[key])
    if "label" in out and not isinstance(out["label"], tv_tensors.Mask):
        out["label"] = tv_tensors.Mask(out["label"])
    return out


def unwrap_sample(sample: dict) -> dict:
    """Plain tensors again (images float32, label int64) so collation and models see ``torch.Tensor``."""
    out = dict(sample)
    for key in ("img", "img_ref"):
        if key in out:
            out[key] = out[key].as_subclass(torch.Tensor).float()
    if "label" in out:
        out["label"] = out["label"].as_subclass(torch.Tensor).long()
    return out


def apply_transform(sample: dict, transform: Optional[Transform]) -> dict:
    """Run ``transform`` on the tv_tensors-wrapped sample and return plain tensors."""
    if transform is None:
        return unwrap_sample(sample)
    return unwrap_sample(transform(wrap_sample(sample)))


class PairedFileDataset(Dataset):
    """A dataset over a list of :class:`Record` (image file, label file or None, name).

    Subclasses find the records by scanning their benchmark's layout. Items are
    ``{"img": (3,H,W) float32 in [0,1], "label": (H,W) int64, "name": str}``.

    Args:
        records: the paired file list; must not be empty.
        root: dataset root (label paths in the statistics file are relative to it).
        transform: joint transform ``t(sample) -> sample`` (see ``pipa_core.data.transforms``).
        dataset: display name used in error messages.
    """

    def __init__(
        self,
        records: Sequence[Record],
        root: str | os.PathLike,
        transform: Optional[Transform] = None,
        dataset: str = "dataset",
    ) -> None:
        self.records = list(records)
        self.root = Path(root)
        self.transform = transform
        self.dataset_name = dataset
        if not self.records:
            raise DatasetError(
                f"{dataset}: no images found under {self.root}; check the layout in data/README.md."
            )

    def __len__(self) -> int:
        return len(self.records)

    @property
    def label_files(self) -> list[Optional[Path]]:
        """Label path of every item (``None`` where unlabelled), in index order."""
        return [r.label for r in self.records]

    def __getitem__(self, idx: int) -> dict[str, Any]:
        rec = self.records[idx]
        img, label = load_pair(rec)
        return apply_transform({"img": img, "label": label, "name": rec.name}, self.transform)


def strip_suffix(path: Path, suffix: str) -> str:
    """File name of ``path`` without ``suffix`` (e.g. ``_leftImg8bit.png``)."""
    name = path.name
    return name[: -len(suffix)] if name.endswith(suffix) else path.stem


def check_prepared(labels: list[Path], dataset: str, root: Path, where: Path) -> None:
    """Raise if no converted ``*_labelTrainIds.png`` exists, naming the preparation command."""
    if not labels:
        raise DatasetError(
            f"{dataset}: no *{TRAIN_ID_SUFFIX} label files under {where}; the dataset has not been "
            f"prepared. Run `{prepare_command(_cli(dataset), root)}` once to convert its labels to "
            "Cityscapes train IDs."
        )


def flat_records(
    root: Path, img_sub: str | Path, lbl_sub: str | Path, dataset: str, layout: str
) -> list[Record]:
    """Records of a flat tree: ``<root>/<img_sub>/<name>.png`` with a prepared
    ``<root>/<lbl_sub>/<name>_labelTrainIds.png`` (GTA5, SYNTHIA-RAND-CITYSCAPES).

    Raises :class:`DatasetError` naming ``layout`` and the preparation command for a
    missing folder, an unprepared tree, or an image without its label (or the reverse).
    """
    img_dir = require_dir(root / img_sub, dataset, root, layout)
    lbl_dir = require_dir(root / lbl_sub, dataset, root, layout)
    labels = sorted(lbl_dir.glob(f"*{TRAIN_ID_SUFFIX}"))
    check_prepared(labels, dataset, root, lbl_dir)
    pairs = pair_files(
        img_dir.glob("*.png"),
        labels,
        img_key=lambda p: p.stem,
        label_key=lambda p: strip_suffix(p, TRAIN_ID_SUFFIX),
        dataset=dataset,
    )
    return [Record(i, lb, i.stem) for i, lb in pairs]
