"""Inference throughput (images/s) and peak memory: whole image and sliding window.

Usage::

    python benchmarks/bench_inference.py                   # --preset cpu on CPU, paper on CUDA
    python benchmarks/bench_inference.py --preset paper --dtype bf16 --device cuda
    python benchmarks/bench_inference.py --smoke           # seconds; used by the tests
    python benchmarks/bench_inference.py --models quickstart --modes whole \
        --batch-sizes 1,4,10 --name inference_batch        # the evaluation batch size

Each case calls the model's own API, ``Segmentor.predict(img, mode, crop_size,
stride)`` (``pipa_core.models.inference``), on batches of ``--batch-sizes`` images
(default 1, as the real benchmarks' evaluation; the embedded benchmarks evaluate 4 at
a time), after ``--warmup`` calls; the device is synchronised before reading the
clock; times are per image. Sliding windows use the evaluation default of the
engine (``pipa_core.config.resolve_eval`` / ``pipa_core.models.inference``): the
training crop as window, stride half of it (512x512 windows at stride 256 on
1024x512 Cityscapes images; HRDA's 1024x1024 at 512 on 1024x2048).

Models (``--models``):

* ``quickstart``: the quickstart preset's segmentor (MiT-B0, small DAFormer head) on
  128x256 synthetic images, windows 128x128.
* ``mit_b5``: MiT-B5 + DAFormer head on 512x1024 Cityscapes-sized images, windows
  512x512 (``--preset paper``). ``--preset cpu`` halves the image and the window
  (256x512, 256x256), labelled ``reduced``.
* ``mit_b5_full``: the same model on full-resolution 1024x2048 Cityscapes images,
  windows 1024x1024 (the HRDA-setting evaluation); ``--preset paper`` only by
  default (``--preset cpu``: 256x512, windows 256x256).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path
from typing import Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchutil as bu  # noqa: E402

from pipa_core.models import build_segmentor  # noqa: E402

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

# name -> (arch, build kwargs, {preset: (image (H, W), window (H, W))})
MODELS = {
    "quickstart": (  # arch and head width are read from the quickstart preset in main()
        "daformer_mit_b0",
        {},
        {"paper": ((128, 256), (128, 128)), "cpu": ((128, 256), (128, 128)),
         "smoke": ((64, 128), (64, 64))},
    ),
    "mit_b5": (
        "daformer_mit_b5",
        {},
        {"paper": ((512, 1024), (512, 512)), "cpu": ((256, 512), (256, 256))},
    ),
    "mit_b5_full": (
        "daformer_mit_b5",
        {},
        {"paper": ((1024, 2048), (1024, 1024)), "cpu": ((256, 512), (256, 256))},
    ),
}  # fmt: skip
DEFAULT_MODELS = {"paper": "quickstart,mit_b5", "cpu": "quickstart,mit_b5", "smoke": "quickstart"}


def bench_case(seg, img, mode, window, dtype, warmup: int, iters: int, device) -> dict:
    """Images/s, ms per image and peak memory of ``seg.predict`` in ``mode`` on ``img`` (B, 3, H, W)."""
    clock, mem = bu.Clock(device), bu.PeakMemory(device)
    kwargs = {}
    if mode == "slide":
        kwargs = {"crop_size": window, "stride": tuple(c // 2 for c in window)}  # the default
    autocast = (
        torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    )
    with autocast:
        for _ in range(warmup):
            seg.predict(img, mode=mode, **kwargs)
        mem.reset()
        times, cpu = [], []
        for _ in range(iters):
            t0, c0 = clock.now(), time.process_time()
            seg.predict(img, mode=mode, **kwargs)
            times.append(clock.now() - t0)
            cpu.append(time.process_time() - c0)
    stats = bu.summarize_times(times)
    stats["cpu_median_ms"] = bu.summarize_times(cpu)["median_ms"]
    b = img.shape[0]
    return {
        **stats,
        "batch": b,
        "ms_per_image": round(stats["median_ms"] / b, 2),
        "cpu_ms_per_image": round(stats["cpu_median_ms"] / b, 2),
        "images_per_s": round(1e3 * b / stats["median_ms"], 3),
        "peak_mem_mib": mem.peak_mib(),
        **{k: list(v) for k, v in kwargs.items()},
    }


def to_markdown(meta: dict, rows: list[dict]) -> str:
    mem = "CUDA max allocated" if meta["device"] == "cuda" else "process peak RSS"
    table = bu.markdown_table(
        [
            "model",
            "arch",
            "image",
            "mode",
            "batch",
            "window / stride",
            "ms / image",
            "CPU ms / image",
            "images/s",
            "peak MiB",
        ],  # fmt: skip
        [
            [
                r["model"] + (" (reduced)" if r["reduced"] else ""),
                r["arch"],
                "x".join(map(str, r["image"])),
                r["mode"],
                r["batch"],
                f"{'x'.join(map(str, r['crop_size']))} / {'x'.join(map(str, r['stride']))}"
                if r["mode"] == "slide"
                else "-",
                r["ms_per_image"],
                r["cpu_ms_per_image"],
                r["images_per_s"],
                r["peak_mem_mib"],
            ]
            for r in rows
        ],
    )
    return (
        f"# Inference throughput ({meta['device']}, {meta['dtype']})\n\n"
        + bu.machine_markdown(meta)
        + f"\nBatch sizes {meta['batch_sizes']}, median of {meta['iters']} calls after {meta['warmup']} warm-up calls; "
        f"channels_last {meta['channels_last']}. Memory: {mem} (MiB).\n\n" + table
    )


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default=bu.default_device())
    p.add_argument("--preset", choices=("cpu", "paper"), default=None)
    p.add_argument("--smoke", action="store_true", help="tiny sizes, 1 call (tests)")
    p.add_argument("--models", default=None, help=f"comma-separated subset of {list(MODELS)}")
    p.add_argument("--modes", default="whole,slide")
    p.add_argument("--batch-sizes", default="1", help="comma-separated images per call")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--iters", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 1 on CPU)")
    p.add_argument("--out", type=Path, default=bu.RESULTS)
    p.add_argument("--name", default="inference", help="result file stem")
    args = p.parse_args(argv)

    device = bu.parse_device(args.device)
    if argv is None:
        bu.reexec_for_rss(device.type)
    bu.set_threads(args.threads, device)
    preset = "smoke" if args.smoke else args.preset or ("paper" if device.type == "cuda" else "cpu")
    names = (args.models or DEFAULT_MODELS[preset]).split(",")
    modes = args.modes.split(",")
    for n in names:
        if n not in MODELS:
            raise SystemExit(f"--models: unknown model {n!r}; valid: {', '.join(MODELS)}")
    for m in modes:
        if m not in ("whole", "slide"):
            raise SystemExit(f"--modes: unknown mode {m!r}; valid: whole, slide")
    try:
        batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    except ValueError:
        raise SystemExit(
            f"--batch-sizes: expected integers like 1,4, got {args.batch_sizes!r}"
        ) from None
    if min(batch_sizes) < 1:
        raise SystemExit(f"--batch-sizes: every size must be >= 1, got {args.batch_sizes!r}")
    warmup = args.warmup if args.warmup is not None else {"smoke": 0, "cpu": 1, "paper": 5}[preset]
    iters = args.iters if args.iters is not None else {"smoke": 1, "cpu": 3, "paper": 20}[preset]

    rows = []
    for n in names:
        arch, kwargs, sizes = MODELS[n]
        if n == "quickstart":
            arch, kwargs = bu.quickstart_model()
            kwargs.pop("proj_dim", None)
        size_key = preset if preset in sizes else "cpu"
        image, window = sizes[size_key]
        torch.manual_seed(0)
        seg = build_segmentor(arch, proj_heads=(), channels_last=args.channels_last, **kwargs).to(
            device
        )
        seg.eval()
        for mode, b in ((m, b) for m in modes for b in batch_sizes):
            img = torch.rand(b, 3, *image, generator=torch.Generator().manual_seed(0)).to(device)
            res = bench_case(seg, img, mode, window, DTYPES[args.dtype], warmup, iters, device)
            row = {
                "model": n,
                "arch": arch,
                "image": list(image),
                "mode": mode,
                "reduced": size_key != "paper" and n != "quickstart",
                **res,
            }
            rows.append(row)
            print(f"{n} {mode} {image} batch {b}: {res['images_per_s']} images/s", flush=True)
        del seg
    meta = {
        **bu.machine_record(
            device, None if argv is None else ["benchmarks/bench_inference.py", *argv]
        ),
        "dtype": args.dtype,
        "channels_last": args.channels_last,
        "batch_sizes": batch_sizes,
        "preset": preset,
        "warmup": warmup,
        "iters": iters,
        "memory": "cuda_max_memory_allocated" if device.type == "cuda" else "cpu_peak_rss",
    }
    stem = args.name if args.dtype == "fp32" else f"{args.name}_{args.dtype}"
    bu.write_results(
        args.out, stem, device, {"meta": meta, "results": rows}, to_markdown(meta, rows)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
