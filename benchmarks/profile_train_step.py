"""torch.profiler table of the engine's training iteration (the hot operators).

Usage::

    python benchmarks/profile_train_step.py                          # quickstart, CPU
    python benchmarks/profile_train_step.py --model mit_b5_512 --device cuda --preset paper

Builds the iteration exactly as ``bench_train_step.py`` does (engine config,
networks, ``Engine.step``: training step + optimizer + EMA), runs
``--warmup`` iterations, then profiles ``--iters`` iterations and writes the
operators sorted by self time (``profile_<model>_<device>.md`` / ``.json``),
plus the count of device-to-host synchronisations (``aten::item`` /
``aten::_local_scalar_dense``) per iteration. ``--trace`` also saves a Chrome
trace for chrome://tracing or Perfetto.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_train_step as bts  # noqa: E402
import benchutil as bu  # noqa: E402

SYNC_OPS = ("aten::item", "aten::_local_scalar_dense")


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default=bu.default_device())
    p.add_argument("--model", default="quickstart", choices=sorted(bts.MODELS))
    p.add_argument("--preset", choices=("cpu", "paper", "smoke"), default="cpu")
    p.add_argument("--dtype", choices=sorted(bts.DTYPES), default="fp32")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--trace", action="store_true", help="also write a Chrome trace")
    p.add_argument("--out", type=Path, default=bu.RESULTS)
    args = p.parse_args(argv)

    device = bu.parse_device(args.device)
    bu.set_threads(args.threads, device)
    cfg, reduced = bts.build_config(args.model, args.preset, args.dtype, False, args.device)
    spec = bts.uda_config.resolve_benchmark(cfg)
    batches = bts.make_batches(cfg, spec, device)
    eng = bts.BenchEngine.for_config(cfg, device)
    for i in range(args.warmup):
        eng.run_iteration(batches[i % len(batches)])
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts, record_shapes=False) as prof:
        for i in range(args.iters):
            eng.run_iteration(batches[i % len(batches)])
    events = prof.key_averages()
    total_self = sum(e.self_cpu_time_total for e in events)
    rows = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[: args.top]
    ops = [
        {
            "op": e.key,
            "calls_per_iter": round(e.count / args.iters, 1),
            "self_cpu_ms_per_iter": round(e.self_cpu_time_total / 1e3 / args.iters, 3),
            "self_cpu_pct": round(100 * e.self_cpu_time_total / total_self, 2),
            "self_device_ms_per_iter": round(
                getattr(e, "self_device_time_total", 0) / 1e3 / args.iters, 3
            ),
        }
        for e in rows
    ]
    syncs = sum(e.count for e in events if e.key == SYNC_OPS[1]) / args.iters
    meta = {
        **bu.machine_record(
            device, None if argv is None else ["benchmarks/profile_train_step.py", *argv]
        ),
        "model": args.model,
        "arch": cfg.model.arch,
        "crop_size": list(spec.crop_size),
        "batch": cfg.data.batch_size,
        "reduced": reduced,
        "dtype": args.dtype,
        "iters": args.iters,
        "self_cpu_ms_per_iter": round(total_self / 1e3 / args.iters, 3),
        "host_syncs_per_iter": syncs,
    }
    md = (
        f"# Profile: {args.model} training iteration ({device.type}, {args.dtype})\n\n"
        + bu.machine_markdown(meta)
        + f"\n{cfg.model.arch}, crop {spec.crop_size}, batch {cfg.data.batch_size}+"
        f"{cfg.data.batch_size}; {args.iters} profiled iterations after {args.warmup} warm-up. "
        f"Self CPU time per iteration {meta['self_cpu_ms_per_iter']} ms; "
        f"`_local_scalar_dense` (host syncs: `.item()`, `float(t)`, `bool(t)`) per iteration: "
        f"{syncs:g}.\n\n"
        + bu.markdown_table(
            ["op", "calls / iter", "self CPU ms / iter", "% self CPU", "self device ms / iter"],
            [list(o.values()) for o in ops],
        )
    )
    stem = f"profile_{args.model}"
    bu.write_results(args.out, stem, device, {"meta": meta, "ops": ops}, md)
    if args.trace:
        trace = args.out / f"{stem}_{device.type}.trace.json"
        prof.export_chrome_trace(str(trace))
        print(f"wrote {trace}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
