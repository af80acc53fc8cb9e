"""Dataset preparation: convert labels to Cityscapes train IDs once, and count class pixels.

    python -m pipa_core.data.prepare {gta,synthia,cityscapes,cityscapes_seq,acdc,darkzurich,viper,synthia_seq} <root> [--nproc N]

For every source label it writes ``*_labelTrainIds.png`` next to it (unknown
ids -> 255) and, at the end, ``<root>/sample_class_stats.json``: one entry per
train-ID label, ``{"file": <path relative to root>, "<train id>": <pixels>, ...}``
(DAFormer's format), which rare class sampling reads.

Safe to interrupt and rerun: each label is written to a temporary name and
``os.replace``-d into place, finished files are skipped on the next run (their
statistics are recounted from the finished file), and the statistics file is
written atomically once every label is done.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path
from typing import Callable, Optional

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from pipa_core.data.base import STATS_FILE, TRAIN_ID_SUFFIX, DatasetError, prepare_command
from pipa_core.data.synthia import SYNTHIA_SEQ_ID_TO_TRAINID
from pipa_core.data.viper import VIPER_ID_TO_TRAINID, VIPER_PALETTE
from pipa_core.io import atomic_open, atomic_write_json
from pipa_core.labels import (
    CITYSCAPES_ID_TO_TRAINID,
    IGNORE_INDEX,
    NUM_CLASSES,
    SYNTHIA_ID_TO_TRAINID,
    make_lut,
)


# ----------------------------------------------------------------------------- label readers
def read_indexed_ids(path: Path) -> np.ndarray:
    """Class ids of a palette or grayscale PNG (GTA5, Cityscapes, ACDC labelIds) as ``(H, W)``."""
    with Image.open(path) as im:
        if im.mode not in ("P", "L", "I", "I;16"):
            raise DatasetError(
                f"label file {path} has PIL mode {im.mode}; expected a palette or grayscale PNG "
                "of class ids"
            )
        return np.asarray(im).astype(np.int64)


def read_synthia_ids(path: Path) -> np.ndarray:
    """SYNTHIA class ids: channel R (index 2 in OpenCV's BGR order) of the 16-bit label PNG."""
    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise DatasetError(f"cannot read label file {path}; re-extract the SYNTHIA archive")
    if arr.ndim != 3 or arr.shape[2] < 3:
        raise DatasetError(
            f"SYNTHIA label {path} has shape {arr.shape}; expected a multi-channel 16-bit PNG "
            "with the class id in channel R"
        )
    return arr[..., 2].astype(np.int64)


def read_viper_ids(path: Path) -> np.ndarray:
    """VIPER class ids: palette index, or the id of each pixel's colour in colour-coded PNGs."""
    with Image.open(path) as im:
        if im.mode in ("P", "L"):
            return np.asarray(im).astype(np.int64)
        rgb = np.asarray(im.convert("RGB")).astype(np.int64)
    code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    ids = np.full(code.shape, IGNORE_INDEX, dtype=np.int64)
    # Only protocol classes are looked up: two unused VIPER classes share a colour.
    for cid in VIPER_ID_TO_TRAINID:
        r, g, b = VIPER_PALETTE[cid]
        ids[code == ((r << 16) | (g << 8) | b)] = cid
    return ids


# ----------------------------------------------------------------------------- dataset kinds
@dataclass(frozen=True)
class LabelKind:
    """How one dataset's labels are found and decoded."""

    layout: str
    patterns: tuple[str, ...]  # globs of source labels, relative to the root
    reader: Callable[[Path], np.ndarray]
    mapping: dict[int, int]
    src_suffix: str = ".png"  # replaced by TRAIN_ID_SUFFIX to name the output
    trainid_patterns: tuple[str, ...] = ()  # shipped train-ID files (stats only)


KINDS: dict[str, LabelKind] = {
    "gta": LabelKind("<root>/images/*.png, <root>/labels/*.png", ("labels/*.png",),
                     read_indexed_ids, CITYSCAPES_ID_TO_TRAINID),
    "synthia": LabelKind("<root>/RGB/*.png, <root>/GT/LABELS/*.png", ("GT/LABELS/*.png",),
                         read_synthia_ids, SYNTHIA_ID_TO_TRAINID),
    "cityscapes": LabelKind("<root>/leftImg8bit/<split>/<city>/*, <root>/gtFine/<split>/<city>/*_gtFine_labelIds.png",
                            ("gtFine/*/*/*_gtFine_labelIds.png",), read_indexed_ids,
                            CITYSCAPES_ID_TO_TRAINID, "_labelIds.png"),
    "acdc": LabelKind("<root>/rgb_anon/<cond>/<split>/<seq>/*, <root>/gt/<cond>/<split>/<seq>/*_gt_labelIds.png",
                      ("gt/*/*/*/*_gt_labelIds.png",), read_indexed_ids, CITYSCAPES_ID_TO_TRAINID,
                      "_labelIds.png", ("gt/*/*/*/*_gt_labelTrainIds.png",)),
    "darkzurich": LabelKind("<root>/rgb_anon/<split>/night/<seq>/*, <root>/gt/val/night/<seq>/*_gt_labelIds.png",
                            ("gt/*/*/*/*_gt_labelIds.png",), read_indexed_ids,
                            CITYSCAPES_ID_TO_TRAINID, "_labelIds.png",
                            ("gt/*/*/*/*_gt_labelTrainIds.png",)),
    "viper": LabelKind("<root>/<split>/img/<seq>/<seq>_<frame>.jpg, <root>/<split>/cls/<seq>/<seq>_<frame>.png",
                       ("*/cls/*/*.png",), read_viper_ids, VIPER_ID_TO_TRAINID),
    "synthia_seq": LabelKind("<root>/SYNTHIA-SEQS-<xx>-<COND>/GT/LABELS/Stereo_Left/Omni_F/*.png",
                             ("SYNTHIA-SEQS-*/GT/LABELS/Stereo_Left/Omni_F/*.png",
                              "GT/LABELS/Stereo_Left/Omni_F/*.png"),
                             read_synthia_ids, SYNTHIA_SEQ_ID_TO_TRAINID),
}  # fmt: skip
# Cityscapes-Seq reads its labels from the same gtFine folder.
KINDS["cityscapes_seq"] = KINDS["cityscapes"]


def output_path(src: Path, kind: LabelKind) -> Path:
    """``*_labelTrainIds.png`` written next to the source label ``src``."""
    name = src.name
    base = name[: -len(kind.src_suffix)] if name.endswith(kind.src_suffix) else src.stem
    return src.with_name(base + TRAIN_ID_SUFFIX)


def find_jobs(name: str, root: Path) -> list[tuple[Optional[Path], Path]]:
    """``(source label or None, train-ID output)`` for every label of dataset ``name`` under ``root``.

    ``None`` sources are train-ID files shipped without an id file (statistics only).
    """
    kind = KINDS[name]
    if not root.is_dir():
        raise DatasetError(
            f"{name}: dataset root {root} does not exist; expected layout {kind.layout} "
            "(see data/README.md for download links)."
        )
    sources = sorted(
        {p for pat in kind.patterns for p in root.glob(pat) if not p.name.endswith(TRAIN_ID_SUFFIX)}
    )
    jobs: list[tuple[Optional[Path], Path]] = [(s, output_path(s, kind)) for s in sources]
    outputs = {o for _, o in jobs}
    for pat in kind.trainid_patterns:
        jobs += [(None, p) for p in sorted(root.glob(pat)) if p not in outputs]
    if not jobs:
        raise DatasetError(
            f"{name}: no label files found under {root}; expected layout {kind.layout} "
            "(see data/README.md)."
        )
    return jobs


def class_counts(train_ids: np.ndarray) -> dict[str, int]:
    """``{"<train id>": pixels}`` for every train id present (ignore not counted)."""
    counts = np.bincount(train_ids.ravel(), minlength=256)[:NUM_CLASSES]
    return {str(c): int(n) for c, n in enumerate(counts) if n > 0}


def write_png(path: Path, arr: np.ndarray) -> None:
    """Write a uint8 ``(H, W)`` array as PNG via a temporary file and ``os.replace``."""
    ok, buf = cv2.imencode(".png", arr)
    if not ok:
        raise DatasetError(f"could not encode {path} as PNG")
    with atomic_open(path, "wb") as f:
        f.write(buf.tobytes())


def convert_one(job: tuple[str, Optional[Path], Path, bool]) -> dict[str, int]:
    """Convert one label (skipped when its output exists) and return its class pixel counts.

    ``job`` is ``(dataset name, source label or None, output, overwrite)``.
    """
    name, src, dst, overwrite = job
    if src is None or (dst.exists() and not overwrite):
        # Finished on an earlier run (outputs only ever appear complete), or shipped.
        arr = cv2.imread(str(dst), cv2.IMREAD_UNCHANGED)
        if arr is None or arr.ndim != 2:
            raise DatasetError(f"cannot read {dst}; delete it and rerun the preparation command")
        return class_counts(arr)
    kind = KINDS[name]
    ids = kind.reader(src)
    lut = make_lut(kind.mapping)
    train_ids = lut[np.clip(ids, 0, lut.size - 1)]
    train_ids[(ids < 0) | (ids >= lut.size)] = IGNORE_INDEX
    write_png(dst, train_ids)
    return class_counts(train_ids)


def prepare(
    name: str,
    root: str | os.PathLike,
    nproc: int = 1,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Prepare dataset ``name`` at ``root``; returns the path of the statistics JSON.

    Uses a ``multiprocessing.Pool`` of ``nproc`` processes (``nproc=1`` runs
    in-process). ``overwrite`` reconverts labels whose train-ID file exists.
    """
    if name not in KINDS:
        raise DatasetError(f"unknown dataset {name!r}; valid: {', '.join(sorted(KINDS))}")
    root = Path(root)
    jobs = [(name, s, d, overwrite) for s, d in find_jobs(name, root)]
    bar = dict(total=len(jobs), desc=f"prepare {name}", unit="label", disable=not progress)
    if nproc > 1:
        with Pool(nproc) as pool:
            counts = list(tqdm(pool.imap(convert_one, jobs, chunksize=8), **bar))
    else:
        counts = [convert_one(j) for j in tqdm(jobs, **bar)]
    stats = [
        {"file": d.relative_to(root).as_posix(), **c}
        for (_, _, d, _), c in sorted(zip(jobs, counts), key=lambda jc: jc[0][2])
    ]
    out = root / STATS_FILE
    atomic_write_json(out, stats)
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point (``python -m pipa_core.data.prepare``)."""
    parser = argparse.ArgumentParser(
        prog="python -m pipa_core.data.prepare",
        description="Convert dataset labels to Cityscapes train IDs and write class statistics.",
    )
    parser.add_argument("dataset", choices=sorted(KINDS))
    parser.add_argument("root", help="dataset root folder (see data/README.md for the layout)")
    parser.add_argument(
        "--nproc", type=int, default=max(1, (os.cpu_count() or 1)), help="processes"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument(
        "--overwrite", action="store_true", help="reconvert labels that were already converted"
    )
    args = parser.parse_args(argv)
    try:
        out = prepare(
            args.dataset, args.root, args.nproc, not args.no_progress, overwrite=args.overwrite
        )
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote train-ID labels and {out}")
    return 0


__all__ = ["KINDS", "prepare", "main", "prepare_command"]

if __name__ == "__main__":
    raise SystemExit(main())
