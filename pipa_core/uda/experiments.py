"""The quickstart result: source-only vs. oracle vs. DACS vs. PiPa on the embedded benchmark.

:func:`run_quickstart_table` trains each method for a few hundred iterations
per seed on the synthetic sim-to-real benchmark, evaluates on the target val
split, and writes a results table (``results.json`` + ``results.md``) with the
mean ± std over seeds, the domain gap (oracle − source-only) and the fraction
of the gap each method closes. Finished runs are reused, so re-running the
notebook only trains what is missing, and an interrupted run of the same
configuration is resumed from its checkpoint.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipa_core.io import atomic_write_json, atomic_write_text
from pipa_core.uda.checkpoint import find_latest
from pipa_core.uda.config import TrainConfig, apply_overrides, make_config

#: Row labels of the table.
METHOD_LABELS = {
    "source_only": "Source only",
    "oracle": "Target oracle (supervised)",
    "dacs": "Self-training (DACS)",
    "daformer": "Self-training + DAFormer extras",
    "pipa": "Self-training + PiPa",
    "spcl": "Self-training + SPCL",
}


def quickstart_config(
    method: str,
    seed: int,
    out_dir: str | Path,
    data_root: str = "data",
    overrides: Sequence[str] = (),
) -> TrainConfig:
    """The synthetic preset of ``method`` for one seed, writing to ``out_dir/<method>/seed<k>``."""
    cfg = make_config("synthetic", method)
    run_dir = Path(out_dir) / method / f"seed{seed}"
    return apply_overrides(
        cfg,
        [
            f"data.data_root={data_root}",
            f"runtime.seed={seed}",
            f"runtime.run_dir={run_dir}",
            f"name=quickstart_{method}_seed{seed}",
            *overrides,
        ],
    )


def _same_config(cfg: TrainConfig) -> bool:
    """Whether the run directory holds a run of ``cfg`` (runtime settings aside)."""
    try:
        saved = json.loads((cfg.resolved_run_dir / "config.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    mine = cfg.to_dict()
    return {k: v for k, v in saved.items() if k != "runtime"} == {
        k: v for k, v in mine.items() if k != "runtime"
    }


def _finished_result(cfg: TrainConfig) -> dict | None:
    """The result of an earlier finished run with the same configuration, if any."""
    if not _same_config(cfg):
        return None
    try:
        result = json.loads((cfg.resolved_run_dir / "result.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return result if result.get("finished") else None


def train_or_reuse(cfg: TrainConfig) -> dict:
    """``train(cfg)``, unless its run directory already holds a finished run of the same
    configuration: then that run's result, so re-running a notebook never retrains
    (and never overwrites) finished work."""
    from pipa_core.uda.trainer import train

    return _finished_result(cfg) or train(cfg)


def summarize_runs(results: dict[str, list[dict]], protocol: str = "cs19") -> dict[str, Any]:
    """Aggregate per-seed results into the table.

    Args:
        results: method -> list of ``train()`` result dicts (one per seed).
        protocol: the class protocol of the headline mIoU.
    Returns:
        ``{"rows": [{method, label, seeds, miou (per seed), mean, std, gap_closed, train_minutes}],
        "domain_gap": oracle − source-only (or None), "protocol": ...}``.
    """

    def miou(r: dict) -> float:
        return float(r["eval"]["protocols"][protocol]["mIoU"])

    rows = []
    for method, runs in results.items():
        vals = [miou(r) for r in runs]
        rows.append(
            {
                "method": method,
                "label": METHOD_LABELS.get(method, method),
                "seeds": [r.get("seed") for r in runs],
                "miou": vals,
                "mean": statistics.fmean(vals),
                "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                "train_minutes": statistics.fmean(r["train_seconds"] for r in runs) / 60,
                "iterations": runs[0]["iterations"],
            }
        )
    by = {r["method"]: r for r in rows}
    gap = None
    if "source_only" in by and "oracle" in by:
        gap = by["oracle"]["mean"] - by["source_only"]["mean"]
    for r in rows:
        closed = None
        if gap is not None and gap > 0:
            closed = (r["mean"] - by["source_only"]["mean"]) / gap
        r["gap_closed"] = closed
    return {"protocol": protocol, "domain_gap": gap, "rows": rows}


def to_markdown(table: dict[str, Any]) -> str:
    """The table as markdown: mIoU mean ± std over seeds and the fraction of the gap closed."""
    lines = [
        f"| Method | mIoU ({table['protocol']}, %) mean ± std | per seed | gap closed | iters | min / run |",
        "|---|---|---|---|---|---|",
    ]
    for r in table["rows"]:
        seeds = ", ".join(f"{v:.1f}" for v in r["miou"])
        spread = f"± {r['std']:.1f}" if len(r["miou"]) > 1 else "(1 seed)"
        closed = "—" if r["gap_closed"] is None else f"{100 * r['gap_closed']:.0f} %"
        if r["method"] in ("source_only", "oracle"):
            closed = {"source_only": "0 % (reference)", "oracle": "100 % (reference)"}[r["method"]]
        lines.append(
            f"| {r['label']} | {r['mean']:.1f} {spread} | {seeds} | {closed} | "
            f"{r['iterations']} | {r['train_minutes']:.1f} |"
        )
    if table["domain_gap"] is not None:
        lines += ["", f"Domain gap (oracle − source only): {table['domain_gap']:.1f} mIoU points."]
    return "\n".join(lines) + "\n"


def run_quickstart_table(
    methods: Sequence[str] = ("source_only", "oracle", "dacs", "pipa"),
    seeds: Sequence[int] = (0, 1, 2),
    out_dir: str | Path = "runs/quickstart",
    data_root: str = "data",
    overrides: Sequence[str] = (),
    reuse: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Train every method for every seed on the synthetic benchmark and write the results table.

    Args:
        methods: method presets (:data:`pipa_core.uda.config.METHODS`).
        seeds: one run per seed.
        out_dir: runs go to ``out_dir/<method>/seed<k>``; the table to ``out_dir/results.{json,md}``.
        data_root: where the synthetic benchmark is (generated on first use).
        overrides: ``section.key=value`` pairs applied to every run (e.g. ``optim.max_iters=100``).
        reuse: skip runs that already finished with the same configuration.
        progress: show tqdm bars.
    Returns:
        The table dict of :func:`summarize_runs` plus ``"markdown"`` and ``"paths"``.
    """
    from pipa_core.uda.trainer import train

    extra = [*overrides, f"runtime.progress={str(progress).lower()}"]
    results: dict[str, list[dict]] = {}
    for method in methods:
        for seed in seeds:
            cfg = quickstart_config(method, seed, out_dir, data_root, extra)
            result = _finished_result(cfg) if reuse else None
            if result is None:
                if reuse and _same_config(cfg) and find_latest(cfg.resolved_run_dir):
                    # an interrupted run of the same configuration: continue it
                    cfg = apply_overrides(cfg, ["runtime.resume=true"])
                result = train(cfg)
            result["seed"] = seed
            results.setdefault(method, []).append(result)
    table = summarize_runs(results)
    table["markdown"] = to_markdown(table)
    out = Path(out_dir)
    table["paths"] = {"json": str(out / "results.json"), "markdown": str(out / "results.md")}
    atomic_write_json(out / "results.json", {k: v for k, v in table.items() if k != "markdown"})
    atomic_write_text(out / "results.md", table["markdown"])
    return table
