"""Time (forward + backward) and peak memory of the PiPa losses as anchors and bank grow.

Usage::

    python benchmarks/bench_losses.py                 # cuda if available, else cpu
    python benchmarks/bench_losses.py --device cpu --size small

Writes ``benchmarks/results/losses_<device>.json`` and ``.md`` (atomically).

Peak memory:
* CUDA: ``torch.cuda.max_memory_allocated`` minus the allocation before the
  call (exact, allocator level).
* CPU: peak resident-set size above the level before the call, sampled every
  0.2 ms by a background thread. The script re-executes itself with
  ``MALLOC_MMAP_THRESHOLD_=65536`` so that glibc returns every large freed
  block to the OS; RSS then follows the live tensors and the measurement of
  one case is not hidden by memory cached from an earlier one. Sampling can
  miss very short spikes, so CPU numbers are a (tight) lower bound.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pipa_core.io import atomic_write_json, atomic_write_text  # noqa: E402
from pipa_core.losses import (  # noqa: E402
    ClassMemoryBank,
    PatchContrastLoss,
    PixelContrastLoss,
    PrototypeContrastLoss,
    TemporalContrastLoss,
    info_nce,
    sample_patch_pair,
)

MMAP_ENV = "MALLOC_MMAP_THRESHOLD_"

SIZES = {
    # anchors / locations, bank sizes (entries), chunk size
    "tiny": {"anchors": [16], "bank": [32], "feat": 4, "dim": 8},  # smoke test
    "small": {"anchors": [256, 1024, 2048], "bank": [0, 2048, 8192], "feat": 32, "dim": 64},
    "large": {"anchors": [1024, 4096, 16384], "bank": [0, 16384, 65536], "feat": 64, "dim": 128},
}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _PeakRSS:
    """Background sampler of the resident set size (CPU peak memory)."""

    def __init__(self, interval: float = 2e-4) -> None:
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    def __enter__(self) -> _PeakRSS:
        self.base = self.peak = _rss_bytes()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(self.interval)

    def __exit__(self, *exc) -> None:
        self.peak = max(self.peak, _rss_bytes())
        self._stop.set()
        self._t.join()


def measure(fn: Callable[[], torch.Tensor], device: torch.device, repeats: int) -> dict:
    """Median fwd+bwd time (ms) over ``repeats`` after one warm-up, and peak memory (MiB)."""
    cuda = device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    fn().backward()  # warm-up
    sync()
    times, cpu_times = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        fn().backward()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
        cpu_times.append((time.process_time() - c0) * 1e3)
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn().backward()
        sync()
        peak = torch.cuda.max_memory_allocated(device) - before
    else:
        with _PeakRSS() as rec:
            fn().backward()
        peak = rec.peak - rec.base
    return {
        "time_ms": round(statistics.median(times), 3),
        # process CPU time: robust to other jobs on a shared machine (wall time is not)
        "cpu_time_ms": round(statistics.median(cpu_times), 3),
        "peak_mib": round(peak / 2**20, 2),
    }


def _leaf(*shape, device, seed) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(device).requires_grad_(True)


def _filled_bank(num_classes: int, dim: int, total: int, device) -> ClassMemoryBank | None:
    if total == 0:
        return None
    per = max(1, total // num_classes)
    bank = ClassMemoryBank(num_classes, dim, per).to(device)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(per * num_classes, dim, generator=g).to(device)
    bank.enqueue(x, torch.arange(num_classes, device=device).repeat_interleave(per))
    return bank


def cases(size: str, device: torch.device, chunk: int):
    """Yield ``(loss, params, fn)`` benchmark cases."""
    cfg = SIZES[size]
    d, f, ncls = cfg["dim"], cfg["feat"], 19
    for n in cfg["anchors"]:
        for m_bank in cfg["bank"]:
            for ch in (chunk, None):
                a = _leaf(n, d, device=device, seed=0)
                bank = torch.randn(m_bank, d, device=device)
                ids = torch.randint(0, ncls, (n,), device=device)
                c_ids = torch.cat([ids, torch.randint(0, ncls, (m_bank,), device=device)])

                def fn(a=a, bank=bank, ids=ids, c_ids=c_ids, ch=ch):
                    return info_nce(
                        a, torch.cat([a, bank]), ids, c_ids,
                        self_index=torch.arange(a.shape[0], device=a.device), chunk_size=ch,
                    )  # fmt: skip

                yield "info_nce", {"anchors": n, "bank": m_bank, "chunk": ch}, fn

    emb_shape = (2, d, f, f)
    labels = torch.randint(0, ncls, (2, f, f), device=device)
    preds = torch.where(torch.rand(2, f, f, device=device) < 0.2, (labels + 1) % ncls, labels)
    for n in cfg["anchors"]:
        for m_bank in cfg["bank"]:
            emb = _leaf(*emb_shape, device=device, seed=1)
            loss = PixelContrastLoss(
                max_anchors=n,
                max_views=n,
                memory_bank=_filled_bank(ncls, d, m_bank, device),
                chunk_size=chunk,
            ).eval()  # fmt: skip  (eval: bank stays at its size)
            yield (
                "pixel",
                {"anchors": n, "bank": m_bank, "chunk": chunk},
                (lambda emb=emb, loss=loss: loss(emb, labels, preds)),
            )

    stride = 4
    img = torch.rand(2, 3, 2 * f * stride, 2 * f * stride, device=device)
    pair = sample_patch_pair(
        img, f * stride, generator=torch.Generator().manual_seed(0), align=stride
    )
    for n in cfg["anchors"]:
        for m_bank in cfg["bank"]:
            e1 = _leaf(*emb_shape, device=device, seed=2)
            e2 = _leaf(*emb_shape, device=device, seed=3)
            patch = PatchContrastLoss(
                max_locations=n, num_negatives=3200, memory_bank=_filled_bank(1, d, m_bank, device),
                chunk_size=chunk,
            ).eval()  # fmt: skip
            yield (
                "patch",
                {"anchors": 2 * n, "bank": m_bank, "chunk": chunk},
                (lambda e1=e1, e2=e2, patch=patch: patch(e1, e2, pair, stride)),
            )
            temporal = TemporalContrastLoss(
                max_locations=n, num_negatives=3200, memory_bank=_filled_bank(1, d, m_bank, device),
                chunk_size=chunk,
            ).eval()  # fmt: skip
            yield (
                "temporal",
                {"anchors": 2 * n, "bank": m_bank, "chunk": chunk},
                (lambda e1=e1, e2=e2, temporal=temporal: temporal(e1, e2)),
            )

    for n in cfg["anchors"]:
        emb = _leaf(*emb_shape, device=device, seed=4)
        proto = PrototypeContrastLoss(ncls, d, max_pixels=n, chunk_size=chunk).to(device)
        proto.init_from(emb.detach(), labels)
        yield (
            "prototype",
            {"anchors": n, "bank": ncls, "chunk": chunk},
            (lambda emb=emb, proto=proto: proto(emb, labels, update=False)),
        )


def to_markdown(meta: dict, rows: list[dict]) -> str:
    lines = [
        f"# Loss benchmark ({meta['device']})",
        "",
        f"torch {meta['torch']}, {meta['device_name']}, size preset `{meta['size']}`, "
        f"embedding dim {meta['dim']}, {meta['threads']} thread(s), load average "
        f"{meta['load_avg_1min']}, median of {meta['repeats']} fwd+bwd runs. "
        f"`anchors`: anchor rows (patch/temporal: both views), `bank`: memory-bank entries "
        f"(prototype: number of prototypes), `chunk`: InfoNCE rows per chunk (`-` = unchunked).",
        "",
        "| loss | anchors | bank | chunk | wall time (ms) | process CPU time (ms) | peak memory (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ch = "-" if r["chunk"] is None else r["chunk"]
        lines.append(
            f"| {r['loss']} | {r['anchors']} | {r['bank']} | {ch} | {r['time_ms']} "
            f"| {r.get('cpu_time_ms', '')} | {r['peak_mib']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--size", choices=sorted(SIZES), default="small")
    p.add_argument("--chunk", type=int, default=1024, help="InfoNCE chunk size (rows)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--only", default=None, help="comma-separated subset of losses")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cpu" and os.environ.get(MMAP_ENV) is None and argv is None:
        # see module doc: make freed large blocks go back to the OS so RSS tracks live tensors
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, MMAP_ENV: "65536"})
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    only = set(args.only.split(",")) if args.only else None
    rows = []
    for name, params, fn in cases(args.size, device, args.chunk):
        if only and name not in only:
            continue
        res = measure(fn, device, args.repeats)
        rows.append({"loss": name, **params, **res})
        print(f"{name:10s} {params} -> {res}", flush=True)
    meta = {
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "size": args.size,
        "dim": SIZES[args.size]["dim"],
        "repeats": args.repeats,
        "memory": "cuda max_memory_allocated"
        if device.type == "cuda"
        else "peak RSS delta (sampled)",
    }
    stem = args.out / f"losses_{device.type}"
    atomic_write_json(stem.with_suffix(".json"), {"meta": meta, "results": rows})
    atomic_write_text(stem.with_suffix(".md"), to_markdown(meta, rows))
    print(f"wrote {stem}.json and {stem}.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
