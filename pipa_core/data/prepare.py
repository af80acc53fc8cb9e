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
    # Every id the dataset defines, trained or void (Cityscapes / GTA labelIds 0..33);
    # other ids are reported as unknown by the preparation.
    num_ids: int = 34


KINDS: dict[str, LabelKind] = {
    "gta": LabelKind("<root>/images/*.png, <root>/labels/*.png", ("labels/*.png",),
                     read_indexed_ids, CITYSCAPES_ID_TO_TRAINID),
    "synthia": LabelKind("<root>/RGB/*.png, <root>/GT/LABELS/*.png", ("GT/LABELS/*.png",),
                         read_synthia_ids, SYNTHIA_ID_TO_TRAINID, num_ids=23),  # ids 0..22
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
                       ("*/cls/*/*.png",), read_viper_ids, VIPER_ID_TO_TRAINID, num_ids=32),
    "synthia_seq": LabelKind("<root>/SYNTHIA-SEQS-<xx>-<COND>/GT/LABELS/Stereo_Left/Omni_F/*.png",
                             ("SYNTHIA-SEQS-*/GT/LABELS/Stereo_Left/Omni_F/*.png",
                              "GT/LABELS/Stereo_Left/Omni_F/*.png"),
                             read_synthia_ids, SYNTHIA_SEQ_ID_TO_TRAINID, num_ids=16),
}  # fmt: skip
# Cityscapes-Seq reads its labels from the same gtFine folder.
KINDS["cityscapes_seq"] = KINDS["cityscapes"]


def image_candidates(name: str, root: Path, label: Path) -> list[Path]:
    """Where the image of ``label`` lives in dataset ``name`` (the first that exists is it)."""
    rel = label.relative_to(root)
    base = label.name
    for suffix in ("_gtFine_labelIds.png", "_gt_labelIds.png", "_gt_labelTrainIds.png",
                   "_gtFine_labelTrainIds.png", TRAIN_ID_SUFFIX):  # fmt: skip
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    else:
        base = label.stem
    if name == "gta":
        return [root / "images" / label.name]
    if name == "synthia":
        return [root / "RGB" / label.name]
    if name in ("cityscapes", "cityscapes_seq"):
        sub = rel.parent.relative_to("gtFine")
        return [root / folder / sub / f"{base}_leftImg8bit.png"
                for folder in ("leftImg8bit", "leftImg8bit_sequence")]  # fmt: skip
    if name in ("acdc", "darkzurich"):
        sub = rel.parent.relative_to("gt")
        return [root / "rgb_anon" / sub / f"{base}_rgb_anon.png"]
    if name == "viper":
        split, _, *rest = rel.parent.parts
        return [root.joinpath(split, "img", *rest, base + ext) for ext in (".jpg", ".png")]
    if name == "synthia_seq":
        parts = list(rel.parent.parts)
        i = parts.index("GT")
        return [root.joinpath(*parts[:i], "RGB", *parts[i + 2 :], label.name)]
    return []


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


@dataclass
class LabelResult:
    """What preparing one label found: its class pixels, problems, unknown ids."""

    counts: dict[str, int]
    problems: list[str]
    unknown: dict[int, int]  # label id outside the dataset's mapping -> pixels (made 255)


def _image_size(path: Path, decode: bool = True) -> tuple[int, int]:
    """``(W, H)`` of an image; ``decode`` reads all its pixels (a truncated file fails
    then), else only its header."""
    with Image.open(path) as im:
        if decode:
            im.load()
        return im.size


def check_pair(
    name: str, root: Path, label: Path, label_size: tuple[int, int], decode: bool = True
) -> list[str]:
    """Problems of the image belonging to ``label``: missing, undecodable, another size.

    ``decode=False`` (a pair prepared by an earlier run, whose image was decoded then)
    reads only the image header."""
    image = next((p for p in image_candidates(name, root, label) if p.is_file()), None)
    if image is None:
        where = " or ".join(str(p) for p in image_candidates(name, root, label)) or "?"
        return [f"{label}: no image for this label (looked for {where})"]
    try:
        size = _image_size(image, decode)
    except (OSError, SyntaxError) as exc:  # PIL: truncated / unidentified / corrupt
        return [f"{image}: cannot decode the image ({exc}); re-download or re-extract it"]
    if size != label_size:
        return [f"{image}: image is {size[0]}x{size[1]} but its label {label} is "
                f"{label_size[0]}x{label_size[1]}; the pair does not belong together"]  # fmt: skip
    return []


def convert_one(job: tuple[str, Optional[Path], Path, bool, Path]) -> LabelResult:
    """Convert one label (skipped when its output exists), check its image, count its pixels.

    ``job`` is ``(dataset name, source label or None, output, overwrite, root)``. Problems
    (an unreadable label or image, a size mismatch, a missing image) are returned, not
    raised, so one run reports every bad file at once.
    """
    name, src, dst, overwrite, root = job
    if src is None or (dst.exists() and not overwrite):
        # Finished on an earlier run (outputs only ever appear complete), or shipped.
        arr = cv2.imread(str(dst), cv2.IMREAD_UNCHANGED)
        if arr is None or arr.ndim != 2:
            return LabelResult({}, [f"{dst}: cannot read it; delete it and rerun"], {})
        size = (arr.shape[1], arr.shape[0])
        problems = check_pair(name, root, src or dst, size, decode=src is None)
        return LabelResult(class_counts(arr), problems, {})
    kind = KINDS[name]
    try:
        ids = kind.reader(src)
    except (OSError, SyntaxError, DatasetError) as exc:
        return LabelResult({}, [f"{src}: cannot decode the label ({exc}); re-download it"], {})
    problems = check_pair(name, root, src, (ids.shape[1], ids.shape[0]))
    lut = make_lut(kind.mapping)
    unknown_mask = (ids < 0) | (ids >= kind.num_ids)
    if name == "viper":  # colour-coded VIPER labels decode unlisted colours to 255 already
        unknown_mask &= ids != IGNORE_INDEX
    uniq, cnt = np.unique(ids[unknown_mask], return_counts=True)
    inside = (ids >= 0) & (ids < lut.size)
    train_ids = lut[np.clip(ids, 0, lut.size - 1)]
    train_ids[~inside] = IGNORE_INDEX
    if not problems:  # a bad pair leaves nothing behind; earlier outputs stay as they are
        write_png(dst, train_ids)
    return LabelResult(class_counts(train_ids), problems, dict(zip(uniq.tolist(), cnt.tolist())))


def images_without_labels(name: str, root: Path, labels: list[Path]) -> list[str]:
    """Still-image datasets label every image: list the images that have no label file."""
    folder = {"gta": root / "images", "synthia": root / "RGB"}.get(name)
    if folder is None or not folder.is_dir():
        return []
    have = {p.name for p in labels}
    return [f"{img}: an image without a label file" for img in sorted(folder.glob("*.png"))
            if img.name not in have]  # fmt: skip


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
    found = find_jobs(name, root)
    jobs = [(name, s, d, overwrite, root) for s, d in found]
    bar = dict(total=len(jobs), desc=f"prepare {name}", unit="label", disable=not progress)
    if nproc > 1:
        with Pool(nproc) as pool:
            results = list(tqdm(pool.imap(convert_one, jobs, chunksize=8), **bar))
    else:
        results = [convert_one(j) for j in tqdm(jobs, **bar)]
    problems = [p for r in results for p in r.problems]
    problems += images_without_labels(name, root, [s for s, _ in found if s is not None])
    _report_unknown_ids(name, jobs, results)
    if problems:
        shown = "\n  - ".join(problems[:50])
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        raise DatasetError(
            f"{name}: {len(problems)} problem(s) under {root}; the labels of the good pairs are "
            f"converted, the statistics file is not written:\n  - {shown}{more}\nFix or remove "
            f"these files, then rerun {prepare_command(name, root)}."
        )
    stats = [
        {"file": d.relative_to(root).as_posix(), **r.counts}
        for (_, _, d, _, _), r in sorted(zip(jobs, results), key=lambda jr: jr[0][2])
    ]
    out = root / STATS_FILE
    atomic_write_json(out, stats)
    return out


def _report_unknown_ids(name: str, jobs: list, results: list[LabelResult]) -> None:
    """Warn once about label ids outside the dataset's id list (they became 255, ignored)."""
    total: dict[int, int] = {}
    files = 0
    for r in results:
        files += bool(r.unknown)
        for k, v in r.unknown.items():
            total[k] = total.get(k, 0) + v
    if total:
        ids = ", ".join(f"{k}: {v} px" for k, v in sorted(total.items()))
        print(
            f"warning: {name}: {files} of {len(jobs)} labels hold ids outside the dataset's "
            f"class list ({ids}); those pixels are ignored (255). Expected for void ids; "
            "otherwise check that the folder holds this dataset's labels.",
            file=sys.stderr,
        )


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
