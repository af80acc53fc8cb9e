"""On-disk cache of the synthetic benchmark: presets, layout, manifest, atomic generation.

Layout under ``root`` (default ``data/synthetic``)::

    manifest.json
    sample_class_stats.json      (pixels per class of every label, for rare class sampling)
    {source,target}/{train,val}/{images,labels}/000123.png
    {source,target}/sequences/seq_007/{images,labels}/frame_0004.png

Images are uint8 RGB PNGs, labels uint8 single-channel PNGs of train IDs.
``ensure_synthetic`` reuses the cache when ``manifest.json`` matches the
requested seed, preset and :data:`GENERATOR_VERSION` and every file is there;
otherwise it generates into a temporary sibling directory and renames it over
``root``, so an interrupted generation never leaves a half-written cache.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from pipa_core.data.synthetic.generate import (
    DOMAINS,
    check_domain,
    check_seed,
    generate_scene,
    generate_sequence,
)
from pipa_core.io import atomic_write_json, current_umask
from pipa_core.labels import CLASSES, NUM_CLASSES

#: Bump whenever the generator's output changes; stale caches are regenerated.
#: 3: the target palette is the source palette muted; sample_class_stats.json (RCS).
GENERATOR_VERSION = 3
MANIFEST = "manifest.json"
STATS = "sample_class_stats.json"  # DAFormer's format, as written by pipa_core.data.prepare


@dataclass(frozen=True)
class Preset:
    """Size preset: image size, images per (domain, split), sequences per domain."""

    height: int
    width: int
    counts: dict[str, int]  # "source/train" -> number of images
    sequences: int  # per domain
    frames: int  # per sequence


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        32, 64, {"source/train": 8, "source/val": 4, "target/train": 8, "target/val": 4}, 2, 4
    ),
    "default": Preset(
        128,
        256,
        {"source/train": 500, "source/val": 50, "target/train": 500, "target/val": 100},
        12,
        10,
    ),
    "large": Preset(
        256,
        512,
        {"source/train": 2000, "source/val": 200, "target/train": 2000, "target/val": 500},
        24,
        16,
    ),
}


def check_preset(size: str) -> Preset:
    """The :class:`Preset` named ``size``; a ``ValueError`` lists valid names."""
    if size not in PRESETS:
        raise ValueError(
            f"unknown synthetic size preset {size!r}; valid presets: {', '.join(PRESETS)}"
        )
    return PRESETS[size]


def image_path(root: Path, domain: str, split: str, index: int, kind: str = "images") -> Path:
    """Path of still image ``index`` (``kind`` "images" or "labels")."""
    return Path(root) / domain / split / kind / f"{index:06d}.png"


def frame_path(root: Path, domain: str, seq: int, frame: int, kind: str = "images") -> Path:
    """Path of frame ``frame`` of sequence ``seq`` (``kind`` "images" or "labels")."""
    return Path(root) / domain / "sequences" / f"seq_{seq:03d}" / kind / f"frame_{frame:04d}.png"


def read_manifest(root: str | os.PathLike) -> dict:
    """The parsed ``manifest.json`` of a generated cache (clear error when missing)."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"no synthetic benchmark at {root} (missing {MANIFEST}); "
            f"create it with pipa_core.data.synthetic.ensure_synthetic({str(root)!r})"
        )
    return json.loads(path.read_text())


def _expected(size: str, seed: int) -> dict:
    p = PRESETS[size]
    return {
        "generator": "pipa_core.data.synthetic",
        "version": GENERATOR_VERSION,
        "seed": seed,
        "size": size,
        "height": p.height,
        "width": p.width,
        "counts": dict(p.counts),
        "sequences": {d: {"count": p.sequences, "frames": p.frames} for d in DOMAINS},
    }


def _is_fresh(root: Path, size: str, seed: int) -> bool:
    """True when the manifest matches and every image/label file exists."""
    try:
        man = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    exp = _expected(size, seed)
    if any(man.get(k) != v for k, v in exp.items()) or not (root / STATS).is_file():
        return False
    for key, n in exp["counts"].items():
        domain, split = key.split("/")
        for kind in ("images", "labels"):
            d = root / domain / split / kind
            if not d.is_dir() or sum(1 for _ in d.glob("*.png")) != n:
                return False
    for domain, s in exp["sequences"].items():
        for q in range(s["count"]):
            for kind in ("images", "labels"):
                d = frame_path(root, domain, q, 0, kind).parent
                if not d.is_dir() or sum(1 for _ in d.glob("*.png")) != s["frames"]:
                    return False
    return True


def _write_png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    out = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR) if arr.ndim == 3 else arr
    if not cv2.imwrite(str(path), out, [cv2.IMWRITE_PNG_COMPRESSION, 1]):
        raise OSError(f"could not write {path}")


def _scene_job(args: tuple) -> np.ndarray:
    """Worker: generate + write one still image; returns its class pixel counts ``(19,)``."""
    tmp, seed, domain, split, index, h, w = args
    img, lab = generate_scene(seed, domain, split, index, h, w)
    _write_png(image_path(tmp, domain, split, index), img)
    _write_png(image_path(tmp, domain, split, index, "labels"), lab)
    return np.bincount(lab.ravel(), minlength=256)[:NUM_CLASSES]


def _sequence_job(args: tuple) -> np.ndarray:
    """Worker: generate + write one sequence; returns class pixel counts per frame ``(T, 19)``."""
    tmp, seed, domain, seq, frames, h, w = args
    imgs, labs = generate_sequence(seed, domain, seq, frames, h, w)
    for t in range(frames):
        _write_png(frame_path(tmp, domain, seq, t), imgs[t])
        _write_png(frame_path(tmp, domain, seq, t, "labels"), labs[t])
    return np.stack([np.bincount(lab.ravel(), minlength=256)[:NUM_CLASSES] for lab in labs])


def _generate_into(tmp: Path, size: str, seed: int, workers: int) -> dict:
    """Write every file of the preset into ``tmp``; returns the manifest."""
    p = PRESETS[size]
    jobs, keys = [], []
    for key, n in p.counts.items():
        domain, split = key.split("/")
        for i in range(n):
            jobs.append((_scene_job, (tmp, seed, domain, split, i, p.height, p.width)))
            keys.append(key)
    for domain in DOMAINS:
        for q in range(p.sequences):
            jobs.append((_sequence_job, (tmp, seed, domain, q, p.frames, p.height, p.width)))
            keys.append(f"{domain}/sequences")
    t0 = time.perf_counter()
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as ex:
            futs = [ex.submit(fn, a) for fn, a in jobs]
            results = [f.result() for f in futs]
    else:
        results = [fn(a) for fn, a in jobs]
    pixels: dict[str, np.ndarray] = {}
    stats = []

    def entry(file: Path, counts: np.ndarray) -> dict:
        return {"file": file.as_posix(), **{str(c): int(n) for c, n in enumerate(counts) if n > 0}}

    for (fn, args), key, r in zip(jobs, keys, results):
        if fn is _scene_job:
            domain, split, index = args[2:5]
            stats.append(entry(image_path(Path("."), domain, split, index, "labels"), r))
        else:  # one entry per frame
            domain, seq = args[2:4]
            stats += [
                entry(frame_path(Path("."), domain, seq, t, "labels"), c) for t, c in enumerate(r)
            ]
            r = r.sum(0)
        pixels[key] = pixels.get(key, 0) + r
    atomic_write_json(tmp / STATS, stats)
    man = _expected(size, seed)
    man["classes"] = list(CLASSES)
    man["class_pixels"] = {k: v.astype(np.int64).tolist() for k, v in pixels.items()}
    man["generation_seconds"] = round(time.perf_counter() - t0, 2)
    man["workers"] = workers
    man["preset"] = asdict(p)
    return man


def ensure_synthetic(
    root: str | os.PathLike = "data/synthetic",
    size: str = "default",
    seed: int = 0,
    workers: int | None = None,
) -> Path:
    """Generate the synthetic benchmark under ``root``, or reuse a fresh cache; returns ``root``.

    ``size`` is a key of :data:`PRESETS` ("tiny", "default", "large"), ``seed``
    a non-negative integer. ``workers`` processes generate in parallel
    (default: ``min(2, os.cpu_count())``; the output does not depend on it).
    A stale cache (other seed / preset / generator version, or missing files)
    is replaced. ``root`` must be empty, absent or a previous cache.
    """
    check_preset(size)
    seed = check_seed(seed)
    root = Path(root)
    if _is_fresh(root, size, seed):
        return root
    if root.exists() and any(root.iterdir()) and not (root / MANIFEST).is_file():
        raise ValueError(
            f"{root} exists, is not empty and holds no synthetic {MANIFEST}; "
            "refusing to overwrite it: pass an empty or new directory as root"
        )
    if workers is None:
        # For "tiny", process start-up would cost more than the generation itself.
        workers = 1 if size == "tiny" else min(2, os.cpu_count() or 1)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700: a shared data/ stays readable
    try:
        man = _generate_into(tmp, size, seed, workers)
        atomic_write_json(tmp / MANIFEST, man)
        if root.exists():  # move the stale cache aside first, then swap the new one in
            old = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
            os.replace(root, old / "stale")
            os.replace(tmp, root)
            shutil.rmtree(old, ignore_errors=True)
        else:
            try:
                os.replace(tmp, root)
            except OSError:
                # Another process finished first: keep its cache if it is what we want.
                if not _is_fresh(root, size, seed):
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def class_frequencies(root: str | os.PathLike, domain: str, split: str) -> np.ndarray:
    """Pixel count per train ID ``(19,) int64`` of ``domain``/``split`` ("train", "val" or "sequences").

    Read from the manifest (counted at generation time).
    """
    check_domain(domain)
    man = read_manifest(root)
    key = f"{domain}/{split}"
    if key not in man["class_pixels"]:
        valid = ", ".join(sorted(man["class_pixels"]))
        raise ValueError(f"no split {key!r} in the synthetic benchmark at {root}; valid: {valid}")
    return np.asarray(man["class_pixels"][key], dtype=np.int64)
