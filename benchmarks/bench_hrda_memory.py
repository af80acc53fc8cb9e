"""Peak memory and time of one PiPa-on-HRDA training step (MiT-B5, bf16, gradient checkpointing).

The step is the engine's own: ``pipa_core.uda.step.training_step`` on the
``gta2cs_hrda`` preset (source forward + fused/detail CE + ImageNet feature
distance + pixel contrast on the detail crop, EMA-teacher HRDA inference over
the target context crop, ClassMix, mixed forward, patch contrast on two
single-scale patches), then backward, AdamW step and EMA update. Inputs are
random images of the preset's sizes (no dataset needed).

Usage::

    python benchmarks/bench_hrda_memory.py               # GPU if visible: real sizes
    python benchmarks/bench_hrda_memory.py --device cpu  # reduced sizes (256 context)
    python benchmarks/bench_hrda_memory.py --context 1024 --arch hrda_daformer_mit_b5 --amp bf16

Real sizes (HRDA / PiPa): 1024x1024 context, 512x512 detail crops, 720x720
patches, batch 2 source + 2 target. ``--context`` scales the detail crop (half)
and the patches (720/1024 of it) together.

Writes ``benchmarks/results/hrda_memory_<device>.json`` and ``.md`` (atomically).

Peak memory:

* CUDA: ``torch.cuda.max_memory_allocated`` (allocator level) over the step,
  also ``max_memory_reserved``; the CUDA context (~0.3-0.5 GiB) comes on top.
* CPU: the process's peak resident set (``VmHWM``), reset before the step via
  ``/proc/self/clear_refs``; the script re-executes itself with
  ``MALLOC_MMAP_THRESHOLD_`` so freed large blocks leave the RSS. It includes the
  interpreter, libraries and weights: a process figure, not a tensor figure.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pipa_core.config import apply_overrides, make_config, resolve  # noqa: E402
from pipa_core.io import atomic_write_json, atomic_write_text  # noqa: E402
from pipa_core.uda.distributed import DistInfo  # noqa: E402
from pipa_core.uda.engine import Engine  # noqa: E402

MMAP_ENV = "MALLOC_MMAP_THRESHOLD_"
RESULTS = REPO / "benchmarks" / "results"
GIB = 1024**3

#: Cases: name -> (config overrides, gradient checkpointing).
CASES = {
    "pipa_hrda": ({}, True),  # PiPa on HRDA, the gta2cs_hrda preset
    "hrda_only": ({"losses.enabled": ()}, True),  # HRDA self-training without PiPa's losses
    "pipa_hrda_no_ckpt": ({}, False),
}


# ----------------------------------------------------------------------------- memory
def _vm_status(key: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_cpu_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


class PeakMemory:
    """Peak bytes over a span: CUDA allocator peak, or the CPU process's VmHWM."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cpu_reset_ok = True

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.cpu_reset_ok = _reset_cpu_peak()

    def current(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.memory_allocated(self.device)
        return _vm_status("VmRSS") or 0

    def peak(self) -> dict[str, Optional[float]]:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return {
                "peak_allocated_gib": torch.cuda.max_memory_allocated(self.device) / GIB,
                "peak_reserved_gib": torch.cuda.max_memory_reserved(self.device) / GIB,
            }
        hwm = _vm_status("VmHWM")
        return {"peak_rss_gib": hwm / GIB if hwm else None}


# ----------------------------------------------------------------------------- step
def random_batch(b: int, size: int, device: torch.device, g: torch.Generator) -> dict:
    """Source images with blocky random labels (so ClassMix has classes) + unlabelled targets."""
    coarse = torch.randint(0, 19, (b, 1, size // 64, size // 64), generator=g).float()
    label = torch.nn.functional.interpolate(coarse, size=(size, size), mode="nearest")[:, 0]
    src = {"img": torch.rand(b, 3, size, size, generator=g), "label": label.long()}
    tgt = {
        "img": torch.rand(b, 3, size, size, generator=g),
        "label": torch.full((b, size, size), 255, dtype=torch.long),
    }
    move = lambda d: {k: v.to(device) for k, v in d.items()}  # noqa: E731
    return {"source": move(src), "target": move(tgt)}


def build_case(args: argparse.Namespace, case: str, device: torch.device):
    overrides, ckpt = CASES[case]
    patch = max(32, round(720 * args.context / 1024 / 4) * 4)
    sizes = {
        "model.arch": args.arch,
        "data.crop_size": (args.context, args.context),
        "data.batch_size": args.batch,
        "losses.patch.crop_size": patch,
        "model.pretrained": None,  # memory and time do not depend on the weights
    }
    cfg = apply_overrides(make_config("gta2cs", "hrda"), {**sizes, **overrides})
    cfg.runtime.amp = args.amp  # set directly: "off" is a YAML keyword
    cfg.runtime.seed = 0
    # the trainer's own engine: networks, AdamW, schedule, GradScaler, EMA, step context
    eng = Engine.build(resolve(cfg), DistInfo(device=device))
    eng.student.set_grad_checkpointing(ckpt)
    eng.student.train()
    return cfg, eng


def run_case(args: argparse.Namespace, case: str, device: torch.device) -> dict[str, Any]:
    cfg, eng = build_case(args, case, device)
    student, ctx = eng.student, eng.ctx
    mem = PeakMemory(device)
    g = torch.Generator().manual_seed(1)
    times, peaks = [], []
    base = None
    for i in range(args.warmup + args.steps):
        batch = random_batch(args.batch, args.context, device, g)
        if i == args.warmup:
            base = mem.current()  # weights, optimizer states, teacher, ImageNet copy
        mem.reset()
        t0 = time.perf_counter()
        out, _ = eng.step(batch, i)  # step, backward, clip, AdamW, EMA, schedule
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
            peaks.append(mem.peak())
        del out, batch
    seg = student
    row: dict[str, Any] = {
        "case": case,
        "arch": cfg.model.arch,
        "context": args.context,
        "detail": list(seg.detail_size),
        "patch": ctx.patch_crop,
        "batch": args.batch,
        "amp": args.amp,
        "grad_checkpointing": CASES[case][1],
        "losses": list(cfg.losses.enabled),
        "fd": cfg.uda.fd_lambda > 0,
        "params_m": sum(p.numel() for p in student.parameters()) / 1e6,
        "step_s_median": statistics.median(times),
        "step_s": times,
        "baseline_gib": (base or 0) / GIB,
    }
    for k in peaks[0]:
        vals = [p[k] for p in peaks if p[k] is not None]
        row[k] = max(vals) if vals else None
    if device.type == "cpu":
        row["cpu_peak_reset_ok"] = mem.cpu_reset_ok
    return row


# ----------------------------------------------------------------------------- output
def machine(device: torch.device, argv: list[str]) -> dict[str, Any]:
    rec = {
        "device": str(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "argv": ["python", "benchmarks/bench_hrda_memory.py", *argv],
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        with open("/proc/cpuinfo") as f:
            rec["cpu"] = next(x.split(":", 1)[1].strip() for x in f if x.startswith("model name"))
    except (OSError, StopIteration):
        pass
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        rec["gpu"] = props.name
        rec["gpu_memory_gib"] = props.total_memory / GIB
    return rec


def markdown(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    gpu = meta["device"].startswith("cuda")
    peak_cols = ["peak_allocated_gib", "peak_reserved_gib"] if gpu else ["peak_rss_gib"]
    head = [
        "case",
        "arch",
        "context/detail/patch",
        "amp",
        "ckpt",
        "step s",
        "baseline GiB",
        *peak_cols,
    ]
    lines = [
        f"# HRDA training-step memory ({meta['device']})",
        "",
        f"{meta.get('gpu', meta['cpu'])}, torch {meta['torch']}, {meta['threads']} threads, "
        f"{meta['time_utc']}. Command: `{' '.join(meta['argv'])}`.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rows:
        sizes = f"{r['context']}/{r['detail'][0]}/{r['patch']}"
        vals = [
            r["case"],
            r["arch"],
            sizes,
            r["amp"],
            "yes" if r["grad_checkpointing"] else "no",
            f"{r['step_s_median']:.2f}",
            f"{r['baseline_gib']:.2f}",
            *[f"{r[c]:.2f}" if r.get(c) is not None else "n/a" for c in peak_cols],
        ]
        lines.append("| " + " | ".join(vals) + " |")
    lines.append("")
    if gpu:
        lines.append("Peaks are allocator figures; the CUDA context comes on top.")
    else:
        lines.append(
            "CPU peaks are process resident-set peaks (interpreter, libraries and weights "
            "included) at a reduced size; they do not tell the GPU memory of the real sizes."
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--arch", default="hrda_daformer_mit_b5")
    p.add_argument(
        "--context", type=int, default=None, help="context crop side (default 1024 GPU / 256 CPU)"
    )
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--amp", choices=("bf16", "fp16", "off"), default=None)
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=RESULTS)
    return p.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> None:
    """Run the cases and write ``hrda_memory_<device>.json`` / ``.md`` under ``--out``."""
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.context = args.context or (1024 if device.type == "cuda" else 256)
    args.amp = args.amp or ("bf16" if device.type == "cuda" else "off")
    if args.context % 8:
        raise SystemExit(f"--context {args.context} must be a multiple of 8 (HRDA crop alignment)")
    rows = []
    meta = machine(device, sys.argv[1:] if argv is None else list(argv))
    name = f"hrda_memory_{device.type}"
    for case in args.cases:
        print(f"[bench_hrda_memory] {case} ...", flush=True)
        rows.append(run_case(args, case, device))
        print({k: v for k, v in rows[-1].items() if k != "step_s"}, flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        # Written after every case: a long run keeps what it measured.
        atomic_write_json(args.out / f"{name}.json", {"meta": meta, "rows": rows})
        atomic_write_text(args.out / f"{name}.md", markdown(meta, rows))
    print(f"wrote {args.out / name}.json / .md")


if __name__ == "__main__":
    if parse_args().device == "cpu" and os.environ.get(MMAP_ENV) is None:
        # CPU runs: glibc returns freed large blocks to the OS, so RSS follows live tensors.
        os.environ[MMAP_ENV] = "65536"
        os.execv(sys.executable, [sys.executable, *sys.argv])
    main()
