"""Shared helpers of the benchmark scripts: machine record, timing, peak memory, result files.

Every script writes ``<out>/<name>_<device>.json`` (atomically, via
``pipa_core.io``) holding ``{"meta": machine_record(...), ...}`` and a markdown
table ``<name>_<device>.md`` beside it.

Timing: :class:`Clock` synchronises the CUDA device before reading the host
clock, so a span covers the GPU work launched inside it. Peak memory:

* CUDA: ``torch.cuda.max_memory_allocated`` (allocator level, exact).
* CPU: the process's peak resident-set size (``VmHWM`` in ``/proc/self/status``),
  reset between measurements by writing ``5`` to ``/proc/self/clear_refs``.
  :func:`reexec_for_rss` restarts the script with ``MALLOC_MMAP_THRESHOLD_`` set so
  glibc returns large freed blocks to the OS and RSS follows the live tensors.
  RSS also counts the Python interpreter, libraries and model weights, so CPU figures
  are *process* peaks, not tensor peaks.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import shlex
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pipa_core.io import atomic_write_json, atomic_write_text  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
MMAP_ENV = "MALLOC_MMAP_THRESHOLD_"


# ----------------------------------------------------------------------------- machine
def cpu_model() -> str:
    """CPU model name from ``/proc/cpuinfo`` (falls back to ``platform.processor()``)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def default_device() -> str:
    """``"cuda"`` when a GPU is visible, else ``"cpu"`` (the scripts' ``--device`` default)."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def parse_device(name: str) -> torch.device:
    """``--device`` value -> ``torch.device``; a clear error when CUDA is asked for but absent."""
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise SystemExit(
            f"--device {name!r} is not a torch device (use cpu or cuda[:N]): {e}"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            "--device cuda was given but torch sees no CUDA GPU; run with --device cpu"
        )
    if device.type not in ("cpu", "cuda"):
        raise SystemExit(f"--device {name!r}: the benchmarks support cpu and cuda only")
    return device


def set_threads(threads: Optional[int], device: torch.device) -> None:
    """``torch.set_num_threads``: ``threads`` if given, else 1 on CPU (GPU runs keep torch's default).

    One thread is the CPU default because on a shared, oversubscribed machine the
    OpenMP worker threads spin-wait on each other: docs/performance.md measured a
    MiT-B0 step 5-8x slower with 2 threads than with 1 at a load average of 10.
    """
    if threads is not None:
        if threads < 1:
            raise SystemExit(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    elif device.type == "cpu":
        torch.set_num_threads(1)


def machine_record(device: torch.device, argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Where and when a benchmark ran: CPU model, cores, torch version, GPU, command, UTC date."""
    rec: dict[str, Any] = {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *(sys.argv if argv is None else argv)]),
        "host": socket.gethostname(),
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": device.type,
        "gpu_name": None,
        "cuda": torch.version.cuda,
    }
    if device.type == "cuda":
        rec["gpu_name"] = torch.cuda.get_device_name(device)
        rec["gpu_memory_gib"] = round(
            torch.cuda.get_device_properties(device).total_memory / 2**30, 1
        )
    return rec


def reexec_for_rss(device: str) -> None:
    """On CPU, restart this script with ``MALLOC_MMAP_THRESHOLD_`` set (see module docstring).

    Call it first in ``__main__`` only (never from tests / in-process callers).
    """
    if device.startswith("cpu") and os.environ.get(MMAP_ENV) is None:
        env = {**os.environ, MMAP_ENV: "65536"}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)


def quickstart_model() -> tuple[str, dict[str, Any]]:
    """``(arch, build_segmentor kwargs)`` of the quickstart preset (``synthetic_pipa``) as it is now."""
    from pipa_core.config import make_config

    m = make_config("synthetic", "pipa").model
    kwargs = {k: v for k, v in (("decoder_channels", m.decoder_channels),
                                ("proj_dim", m.proj_dim)) if v is not None}  # fmt: skip
    return m.arch, kwargs


# ----------------------------------------------------------------------------- timing
class Clock:
    """Host clock that first waits for the CUDA device (no-op sync on CPU)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def now(self) -> float:
        """Seconds (``time.perf_counter``) after every queued GPU kernel has finished."""
        self.sync()
        return time.perf_counter()


def summarize_times(times_s: Iterable[float]) -> dict[str, float]:
    """``{"median_ms", "mean_ms", "min_ms", "max_ms", "n"}`` of a list of durations in seconds."""
    t = [x * 1e3 for x in times_s]
    if not t:
        raise ValueError("no timings to summarise (0 measured iterations)")
    return {
        "median_ms": round(statistics.median(t), 3),
        "mean_ms": round(statistics.fmean(t), 3),
        "min_ms": round(min(t), 3),
        "max_ms": round(max(t), 3),
        "n": len(t),
    }


# ----------------------------------------------------------------------------- memory
def _cpu_hwm_bytes() -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _cpu_reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Peak memory since the last :meth:`reset` (MiB); see the module docstring for the kind.

    ``kind`` is ``"cuda_max_memory_allocated"`` or ``"cpu_peak_rss"``; ``resettable``
    is False where the CPU high-water mark cannot be reset (then peaks are since start).
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"
        self.kind = "cuda_max_memory_allocated" if self.cuda else "cpu_peak_rss"
        self.resettable = True if self.cuda else _cpu_reset_hwm()

    def reset(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.resettable:
            _cpu_reset_hwm()

    def peak_mib(self) -> Optional[float]:
        if self.cuda:
            return round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)
        b = _cpu_hwm_bytes()
        return None if b is None else round(b / 2**20, 1)


def current_memory_mib(device: torch.device) -> Optional[float]:
    """Memory in use now (MiB): CUDA allocated bytes, or the process RSS on CPU."""
    if device.type == "cuda":
        return round(torch.cuda.memory_allocated(device) / 2**20, 1)
    try:
        with open("/proc/self/statm") as f:
            return round(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
    except OSError:
        return None


# ----------------------------------------------------------------------------- output
def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub markdown table; numbers are right-aligned, ``None`` prints as ``-``."""
    rows = [list(r) for r in rows]

    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.0f}"
        return str(v).replace("|", "\\|")

    numeric = [
        all(isinstance(r[i], (int, float)) or r[i] is None for r in rows) if rows else False
        for i in range(len(headers))
    ]
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---:" if n else "---" for n in numeric) + "|",
    ]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def machine_markdown(meta: dict[str, Any]) -> str:
    """One paragraph naming the machine, the command and the date of a result file."""
    gpu = meta.get("gpu_name") or "no GPU"
    return (
        f"Machine: {meta['cpu_model']} ({meta['cpu_cores']} cores, {meta['torch_threads']} torch "
        f"threads, 1-min load average {meta['load_avg_1min']}), {gpu}; torch {meta['torch']}, "
        f"device `{meta['device']}`. Date (UTC): {meta['date_utc']}.\n\n"
        f"Command: `{meta['command']}`\n"
    )


def write_results(
    out_dir: Path, name: str, device: torch.device, payload: dict, markdown: str
) -> tuple[Path, Path]:
    """Write ``<out_dir>/<name>_<device>.json`` and ``.md`` atomically; returns both paths."""
    out_dir = Path(out_dir)
    stem = out_dir / f"{name}_{device.type}"
    json_path, md_path = stem.with_suffix(".json"), stem.with_suffix(".md")
    atomic_write_json(json_path, payload)
    atomic_write_text(md_path, markdown)
    print(f"wrote {json_path} and {md_path}", flush=True)
    return json_path, md_path
