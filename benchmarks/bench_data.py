"""Data-loading throughput (UDA samples/s) with the real decoders and transforms.

Usage::

    python benchmarks/bench_data.py                     # 8 GTA5 + 8 Cityscapes full-size images
    python benchmarks/bench_data.py --workers 0,2,4 --batches 20
    python benchmarks/bench_data.py --smoke             # small images; used by the tests

The script writes a fixture tree with the *real* layouts and sizes into
``--root`` (a temporary directory by default): GTA5 ``images/*.png`` at
1914x1052 with Cityscapes-id ``labels/*.png``, and Cityscapes
``leftImg8bit/{train,val}/<city>/*_leftImg8bit.png`` at 2048x1024 (+ ``gtFine``
for val). Images are smooth colour regions plus sensor-like noise, so PNG sizes
and decode times are of the order of real frames. It then runs the real
preparation (``pipa_core.data.prepare``: train-ID labels + class statistics) and
measures the engine's own input pipeline for ``gta2cs_pipa``:
``pipa_core.uda.data_stream.build_datasets`` (GTA5 resized to 1280x720 with the
aspect ratio kept, rare class sampling, cat-max-ratio 512x512 crop, flip,
photometric distortion; Cityscapes resized to 1024x512) read through
``BatchStream`` (the trainer's DataLoader) with ``num_workers`` 0, 1, 2.

One *sample* is one UDA pair (a source and a target image with their
transforms); a training step consumes ``batch_size`` (2) samples. The result
compares the loader rate with the training-step rate read from
``train_step_<device>.json`` in the output folder (or ``--step-ms``): the target
is ``samples/s >= 3 x batch_size x steps/s``.

A per-stage table (decode PNG / JPEG, resize, crop, flip, photometric) times
each transform of ``pipa_core.data.transforms`` on one source sample in-process.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchutil as bu  # noqa: E402

from pipa_core.data.base import read_image, read_label, unwrap_sample, wrap_sample  # noqa: E402
from pipa_core.labels import CITYSCAPES_ID_TO_TRAINID  # noqa: E402

# preset -> GTA5 image (W, H), Cityscapes image (W, H), overrides of the gta2cs_pipa config
SIZES = {
    "full": ((1914, 1052), (2048, 1024), {}),
    "smoke": (
        (478, 263),
        (512, 256),
        {"data.source_scale": (180, 320), "data.target_scale": (128, 256),
         "data.crop_size": (128, 128)},
    ),
}  # fmt: skip


# ----------------------------------------------------------------------------- fixture tree
def _scene(w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    """``(h, w, 3)`` uint8: blocky colour regions, a vertical gradient and noise (sigma 4)."""
    cells = rng.integers(0, 256, size=(max(h // 64, 2), max(w // 64, 2), 3), dtype=np.uint8)
    img = cv2.resize(cells, (w, h), interpolation=cv2.INTER_NEAREST).astype(np.float32)
    img += np.linspace(-30, 30, h, dtype=np.float32)[:, None, None]
    img += rng.normal(0, 4, size=img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def _id_label(w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    """``(h, w)`` uint8 Cityscapes label ids in blocks (a dozen classes per image)."""
    ids = np.array(sorted(CITYSCAPES_ID_TO_TRAINID), dtype=np.uint8)
    present = rng.choice(ids, size=12, replace=False)
    cells = present[rng.integers(0, 12, size=(max(h // 48, 2), max(w // 48, 2)))]
    return cv2.resize(cells, (w, h), interpolation=cv2.INTER_NEAREST)


def write_fixture(root: Path, n: int, gta_size, cs_size, seed: int = 0) -> dict:
    """GTA5 + Cityscapes trees with the real names and sizes under ``root``; returns file stats."""
    from pipa_core.data.prepare import prepare

    rng = np.random.default_rng(seed)
    (root / "gta" / "images").mkdir(parents=True, exist_ok=True)
    (root / "gta" / "labels").mkdir(parents=True, exist_ok=True)
    sizes = []
    for i in range(1, n + 1):
        img_path = root / "gta" / "images" / f"{i:05d}.png"
        cv2.imwrite(str(img_path), _scene(*gta_size, rng))
        cv2.imwrite(str(root / "gta" / "labels" / f"{i:05d}.png"), _id_label(*gta_size, rng))
        sizes.append(img_path.stat().st_size)
    for split, count in (("train", n), ("val", 1)):
        img_dir = root / "cityscapes" / "leftImg8bit" / split / "aachen"
        gt_dir = root / "cityscapes" / "gtFine" / split / "aachen"
        img_dir.mkdir(parents=True, exist_ok=True)
        gt_dir.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            stem = f"aachen_{i:06d}_000019"
            cv2.imwrite(str(img_dir / f"{stem}_leftImg8bit.png"), _scene(*cs_size, rng))
            cv2.imwrite(str(gt_dir / f"{stem}_gtFine_labelIds.png"), _id_label(*cs_size, rng))
    prepare("gta", root / "gta", nproc=1, progress=False)
    prepare("cityscapes", root / "cityscapes", nproc=1, progress=False)
    return {"images_per_domain": n, "gta_png_mean_mib": round(float(np.mean(sizes)) / 2**20, 2)}


# ----------------------------------------------------------------------------- measurements
def stage_times(root: Path, cfg, spec, repeats: int) -> list[dict]:
    """Median ms per stage of the source pipeline on one GTA5 sample (in-process)."""
    from pipa_core.data.transforms import (
        PhotoMetricDistortion,
        RandomCrop,
        RandomHorizontalFlip,
        Resize,
    )

    img_path = sorted((root / "gta" / "images").glob("*.png"))[0]
    lbl_path = root / "gta" / "labels" / f"{img_path.stem}_labelTrainIds.png"
    jpg_path = root / "decode_test.jpg"
    cv2.imwrite(str(jpg_path), cv2.imread(str(img_path)), [cv2.IMWRITE_JPEG_QUALITY, 95])
    img, label = read_image(img_path), read_label(lbl_path)
    scale, crop = spec.source_scales[0], spec.crop_size
    resize, cropper = Resize(scale, keep_ratio=True), RandomCrop(crop, spec.cat_max_ratio)
    flip, photo = RandomHorizontalFlip(1.0), PhotoMetricDistortion()
    resized = resize(wrap_sample({"img": img, "label": label}))
    cropped = cropper(resized)
    stages = [
        ("decode PNG image", lambda: read_image(img_path), f"{img.shape[2]}x{img.shape[1]}"),
        ("decode JPEG image (q95)", lambda: read_image(jpg_path), f"{img.shape[2]}x{img.shape[1]}"),
        ("decode PNG label", lambda: read_label(lbl_path), f"{img.shape[2]}x{img.shape[1]}"),
        ("resize (keep ratio)", lambda: resize(wrap_sample({"img": img, "label": label})),
         f"-> {scale[1]}x{scale[0]} max"),
        ("cat-max-ratio crop", lambda: cropper(resized), f"{crop[1]}x{crop[0]}"),
        ("horizontal flip", lambda: flip(cropped), f"{crop[1]}x{crop[0]}"),
        ("photometric distortion", lambda: photo(cropped), f"{crop[1]}x{crop[0]}"),
        ("unwrap (float/long)", lambda: unwrap_sample(cropped), f"{crop[1]}x{crop[0]}"),
    ]  # fmt: skip
    rows = []
    for name, fn, size in stages:
        fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        rows.append({"stage": name, "size": size, **bu.summarize_times(times)})
    return rows


def loader_rate(train_set, batch_size: int, workers: int, batches: int, device) -> dict:
    """Samples/s of the trainer's ``BatchStream`` with ``workers`` DataLoader workers."""
    from pipa_core.uda.data_stream import BatchStream
    from pipa_core.uda.distributed import DistInfo

    stream = BatchStream(
        train_set, batch_size, DistInfo(device=device), seed=0, num_workers=workers
    )
    t0 = time.perf_counter()
    stream.next()  # worker start-up and the first batch
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(batches):
        stream.next()
    dt = time.perf_counter() - t0
    stream._it = None  # release the workers
    return {
        "num_workers": workers,
        "batches": batches,
        "first_batch_s": round(first, 3),
        "samples_per_s": round(batches * batch_size / dt, 3),
        "ms_per_sample": round(1e3 * dt / (batches * batch_size), 2),
    }


def step_rate(out_dir: Path, device: torch.device, step_ms: Optional[float]) -> Optional[dict]:
    """The training-step time to compare with: ``--step-ms`` or the train_step result file."""
    if step_ms is not None:
        return {"source": "--step-ms", "step_ms": step_ms}
    path = out_dir / f"train_step_{device.type}.json"
    if not path.is_file():
        return None
    res = json.loads(path.read_text())["results"]
    rows = {r["name"]: r for r in res}
    for name in ("mit_b5_512", "quickstart"):
        if name in rows:
            r = rows[name]
            return {
                "source": f"{path.name}: {name} ({r['arch']}, crop {r['crop_size']}, "
                f"batch {r['batch']}{', reduced' if r['reduced'] else ''})",
                "step_ms": r["step"]["median_ms"],
            }
    return None


def to_markdown(meta: dict, res: dict) -> str:
    lines = [
        f"# Data loading ({meta['device']})",
        "",
        bu.machine_markdown(meta),
        f"Fixture: {res['fixture']['images_per_domain']} GTA5 images "
        f"{res['gta_size'][0]}x{res['gta_size'][1]} (mean PNG {res['fixture']['gta_png_mean_mib']} "
        f"MiB) and Cityscapes {res['cs_size'][0]}x{res['cs_size'][1]}; pipeline `gta2cs_pipa` "
        f"(source scale {res['source_scale']}, target scale {res['target_scale']}, crop "
        f"{res['crop_size']}, RCS {res['rcs']}). One sample = one source + target pair.",
        "",
        "## Loader throughput (BatchStream)",
        "",
    ]
    need = res.get("required_samples_per_s")
    lines.append(
        bu.markdown_table(
            ["num_workers", "samples/s", "ms / sample", "first batch (s)", "≥ 3x step rate"],
            [
                [
                    r["num_workers"],
                    r["samples_per_s"],
                    r["ms_per_sample"],
                    r["first_batch_s"],
                    None if need is None else ("yes" if r["samples_per_s"] >= need else "no"),
                ]
                for r in res["loader"]
            ],
        )
    )
    if res.get("step"):
        s = res["step"]
        lines += [
            "",
            f"Training step: {s['step_ms']} ms ({s['source']}) -> the step consumes "
            f"{res['consumed_samples_per_s']} samples/s; target 3x = {need} samples/s.",
        ]
    else:
        lines += [
            "",
            "No training-step time found (run bench_train_step.py first or pass --step-ms).",
        ]
    lines += ["", "## Per-stage cost (one GTA5 source sample, in-process)", ""]
    lines.append(
        bu.markdown_table(
            ["stage", "size", "median ms"],
            [[r["stage"], r["size"], r["median_ms"]] for r in res["stages"]],
        )
    )
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default=bu.default_device(), help="pin_memory target / result name")
    p.add_argument("--smoke", action="store_true", help="small images, few batches (tests)")
    p.add_argument("--images", type=int, default=None, help="fixture images per domain (8)")
    p.add_argument("--workers", default=None, help="comma-separated num_workers (0,1,2; smoke 0,1)")
    p.add_argument("--batches", type=int, default=None, help="timed batches per setting (10)")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--repeats", type=int, default=None, help="per-stage repeats (5)")
    p.add_argument("--step-ms", type=float, default=None, help="training step time to compare")
    p.add_argument("--root", type=Path, default=None, help="fixture folder (default: a temp dir)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 1 on CPU)")
    p.add_argument("--out", type=Path, default=bu.RESULTS)
    args = p.parse_args(argv)

    device = bu.parse_device(args.device)
    bu.set_threads(args.threads, device)
    try:
        workers = [int(w) for w in (args.workers or ("0,1" if args.smoke else "0,1,2")).split(",")]
    except ValueError:
        raise SystemExit(
            f"--workers must be comma-separated integers, got {args.workers!r}"
        ) from None
    if any(w < 0 for w in workers):
        raise SystemExit(f"--workers values must be >= 0, got {workers}")
    size_key = "smoke" if args.smoke else "full"
    gta_size, cs_size, over = SIZES[size_key]
    n = args.images or (4 if args.smoke else 8)
    batches = args.batches or (2 if args.smoke else 10)
    repeats = args.repeats or (1 if args.smoke else 5)

    from pipa_core import config as uda_config
    from pipa_core.uda.data_stream import build_datasets

    tmp = None
    root = args.root
    if root is None:
        tmp = tempfile.mkdtemp(prefix="pipa_bench_data_")
        root = Path(tmp)
    try:
        print(f"writing the fixture tree under {root} ...", flush=True)
        fixture = write_fixture(root, n, gta_size, cs_size)
        cfg = uda_config.make_config("gta2cs", "pipa")
        cfg = uda_config.apply_overrides(
            cfg, {**over, "data.data_root": str(root), "data.batch_size": args.batch_size}
        )
        spec = uda_config.resolve_benchmark(cfg)
        train_set, _ = build_datasets(uda_config.resolve(cfg, validate=False))
        stages = stage_times(root, cfg, spec, repeats)
        loader = []
        for w in workers:
            r = loader_rate(train_set, args.batch_size, w, batches, device)
            loader.append(r)
            print(f"num_workers={w}: {r['samples_per_s']} samples/s", flush=True)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    res = {
        "fixture": fixture,
        "gta_size": list(gta_size),
        "cs_size": list(cs_size),
        "source_scale": list(spec.source_scales[0]),
        "target_scale": list(spec.target_scale),
        "crop_size": list(spec.crop_size),
        "rcs": spec.rcs,
        "batch_size": args.batch_size,
        "loader": loader,
        "stages": stages,
    }
    step = step_rate(args.out, device, args.step_ms)
    res["step"] = step
    if step:
        consumed = args.batch_size * 1e3 / step["step_ms"]
        res["consumed_samples_per_s"] = round(consumed, 3)
        res["required_samples_per_s"] = round(3 * consumed, 3)
        res["meets_3x_target"] = {
            str(r["num_workers"]): r["samples_per_s"] >= 3 * consumed for r in loader
        }
    meta = {
        **bu.machine_record(device, None if argv is None else ["benchmarks/bench_data.py", *argv]),
        "preset": size_key,
    }
    bu.write_results(
        args.out, "data", device, {"meta": meta, "results": res}, to_markdown(meta, res)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
