"""Run the whole benchmark suite and write ``benchmarks/results/summary.md``.

Usage::

    python benchmarks/run_all.py                 # every benchmark, cuda if available
    python benchmarks/run_all.py --device cpu --only train_step,inference
    python benchmarks/run_all.py --summary-only  # rebuild summary.md from existing results
    python benchmarks/run_all.py --smoke         # tiny sizes (seconds per script)
    make bench                                   # the same as the first line

Order: training step (its time is the reference of the data benchmark), the
contrastive losses (``bench_losses.py``), inference, data loading, and the
engine's per-step helper operations (``bench_engine_ops.py``). Each script
runs in its own process so that peak-memory figures do not leak between them
(``--in-process`` runs them in this interpreter instead; the tests use it).
The summary collects the headline figures of every ``*_<device>.json`` found in
the output folder and checks them against the targets of the performance issue.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchutil as bu  # noqa: E402

HERE = Path(__file__).resolve().parent
ORDER = ("train_step", "losses", "inference", "data", "engine_ops")
SCRIPTS = {
    "train_step": "bench_train_step.py",
    "losses": "bench_losses.py",
    "inference": "bench_inference.py",
    "data": "bench_data.py",
    "engine_ops": "bench_engine_ops.py",
}

#: The targets of the performance issue: (what, threshold, where it is measured).
TARGETS = [
    ("contrastive losses add to a training step (paper settings)", "<= 15 %", "gpu"),
    ("full PiPa step, MiT-B5 512x512, 2+2, bf16, one H100", "<= 0.15 s", "gpu"),
    ("peak memory of that step at 512x512", "<= 16 GB", "gpu"),
    ("data pipeline rate / training-step rate", ">= 3x", "any"),
]


def script_args(name: str, device: str, smoke: bool, out: Path) -> list[str]:
    """Command-line arguments of benchmark ``name``."""
    common = ["--device", device, "--out", str(out)]
    if name == "losses":
        return common + (["--size", "tiny", "--repeats", "1"] if smoke else [])
    return common + (["--smoke"] if smoke else [])


def run_script(name: str, argv: list[str], in_process: bool) -> int:
    """Run one benchmark script (subprocess, or its ``main(argv)`` in this process)."""
    path = HERE / SCRIPTS[name]
    print(f"== {name}: {path.name} {' '.join(argv)}", flush=True)
    if not in_process:
        env_cmd = [sys.executable, str(path), *argv]
        return subprocess.call(env_cmd)
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return int(mod.main(argv) or 0)


# ----------------------------------------------------------------------------- summary
def _load(out: Path, stem: str, device: str) -> Optional[dict]:
    path = out / f"{stem}_{device}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _train_section(res: dict) -> list[str]:
    rows = []
    for r in res["results"]:
        rows.append(
            [
                r["name"] + (" (reduced)" if r["reduced"] else ""),
                r["arch"],
                "x".join(map(str, r["crop_size"])),
                r["batch"],
                ",".join(r["losses"]),
                r["step"]["median_ms"],
                r["step"]["peak_mem_mib"],
                r["contrastive_overhead_pct"],
            ]
        )
    return [
        f"## Training step ({res['meta']['dtype']}; `train_step_{res['meta']['device']}.md`)",
        "",
        bu.markdown_table(
            [
                "config",
                "arch",
                "crop",
                "batch",
                "losses",
                "step ms",
                "peak MiB",
                "contrastive overhead %",
            ],
            rows,
        ),  # fmt: skip
    ]


def _losses_section(res: dict, device: str) -> list[str]:
    best: dict[str, dict] = {}
    for r in res["results"]:
        if r["loss"] not in best or r["anchors"] > best[r["loss"]]["anchors"]:
            best[r["loss"]] = r
        elif r["anchors"] == best[r["loss"]]["anchors"] and r["bank"] > best[r["loss"]]["bank"]:
            best[r["loss"]] = r
    rows = [
        [k, v["anchors"], v["bank"], v["time_ms"], v["peak_mib"]] for k, v in sorted(best.items())
    ]
    return [
        f"## Contrastive losses, largest case each (`losses_{device}.md`, by bench_losses.py)",
        "",
        bu.markdown_table(["loss", "anchors", "bank", "fwd+bwd ms", "peak MiB"], rows),
    ]


def _inference_section(res: dict) -> list[str]:
    rows = [
        [
            r["model"] + (" (reduced)" if r["reduced"] else ""),
            "x".join(map(str, r["image"])),
            r["mode"],
            r["images_per_s"],
            r["peak_mem_mib"],
        ]
        for r in res["results"]
    ]
    return [
        f"## Inference (`inference_{res['meta']['device']}.md`)",
        "",
        bu.markdown_table(["model", "image", "mode", "images/s", "peak MiB"], rows),
    ]


def _data_section(res: dict) -> list[str]:
    r = res["results"]
    need = r.get("required_samples_per_s")
    rows = [
        [
            x["num_workers"],
            x["samples_per_s"],
            need,
            None if need is None else ("yes" if x["samples_per_s"] >= need else "no"),
        ]
        for x in r["loader"]
    ]
    lines = [
        f"## Data loading (`data_{res['meta']['device']}.md`)",
        "",
        bu.markdown_table(["num_workers", "samples/s", "needed (3x step)", "meets"], rows),
    ]
    if r.get("step"):
        lines += ["", f"Reference step: {r['step']['step_ms']} ms, {r['step']['source']}."]
    return lines


def _engine_ops_section(res: dict) -> list[str]:
    rows = [[r["op"], r.get("impl", "engine"), r["size"], r["median_ms"]] for r in res["results"]]
    return [
        f"## Engine helper operations (`engine_ops_{res['meta']['device']}.md`)",
        "",
        bu.markdown_table(["op", "implementation", "size", "median ms"], rows),
    ]


def _targets_section(device: str, train: Optional[dict], data: Optional[dict]) -> list[str]:
    rows = []
    for what, thr, where in TARGETS:
        measured = "not measured here (needs a GPU)"
        if where == "any" and data and data["results"].get("meets_3x_target") is not None:
            best = max(x["samples_per_s"] for x in data["results"]["loader"])
            need = data["results"]["required_samples_per_s"]
            measured = (
                f"{device}: best {best} samples/s vs {need} needed -> "
                f"{'met' if best >= need else 'not met'} (against the {device} step rate)"
            )
        elif where == "gpu" and device == "cuda" and train:
            measured = "see the training-step table (GPU run)"
        elif what.startswith("contrastive") and train:
            ov = [
                f"{r['name']}: {r['contrastive_overhead_pct']} %"
                for r in train["results"]
                if r["contrastive_overhead_pct"] is not None
            ]
            measured = f"not measured at paper settings; {device} runs: " + "; ".join(ov)
        rows.append([what, thr, measured])
    return ["## Targets", "", bu.markdown_table(["target", "threshold", "status"], rows)]


def write_summary(out: Path, device: str) -> Path:
    """``<out>/summary.md`` from the result files of ``device`` found in ``out``."""
    train = _load(out, "train_step", device)
    losses = _load(out, "losses", device)
    inference = _load(out, "inference", device)
    data = _load(out, "data", device)
    ops = _load(out, "engine_ops", device)
    meta = next((r["meta"] for r in (train, inference, data) if r), None)
    lines = [f"# Benchmark summary ({device})", ""]
    if meta:
        lines += [bu.machine_markdown(meta), ""]
    lines += ["Per-benchmark tables with phases and options are in the linked files.", ""]
    sections: list[tuple[Any, Any]] = [
        (train, _train_section),
        (losses, lambda r: _losses_section(r, device)),
        (inference, _inference_section),
        (data, _data_section),
        (ops, _engine_ops_section),
    ]
    for res, fn in sections:
        if res is not None:
            lines += fn(res) + [""]
    lines += _targets_section(device, train, data)
    missing = [s for s, r in zip(ORDER, (train, losses, inference, data, ops)) if r is None]
    if missing:
        lines += ["", f"Missing results (not run yet): {', '.join(missing)}."]
    path = out / "summary.md"
    bu.atomic_write_text(path, "\n".join(lines) + "\n")
    print(f"wrote {path}", flush=True)
    return path


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default=bu.default_device())
    p.add_argument("--smoke", action="store_true", help="tiny sizes (tests)")
    p.add_argument("--only", default=None, help=f"comma-separated subset of {list(ORDER)}")
    p.add_argument("--in-process", action="store_true", help="no subprocesses (tests)")
    p.add_argument("--summary-only", action="store_true", help="only rebuild summary.md")
    p.add_argument("--out", type=Path, default=bu.RESULTS)
    args = p.parse_args(argv)

    device = bu.parse_device(args.device)
    names = args.only.split(",") if args.only else list(ORDER)
    for n in names:
        if n not in SCRIPTS:
            raise SystemExit(f"--only: unknown benchmark {n!r}; valid: {', '.join(ORDER)}")
    failed = []
    if not args.summary_only:
        for n in [n for n in ORDER if n in names]:
            rc = run_script(n, script_args(n, args.device, args.smoke, args.out), args.in_process)
            if rc:
                failed.append(n)
    write_summary(args.out, device.type)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
