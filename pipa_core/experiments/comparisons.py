"""The experiments of the embedded benchmark: its warm start, the quickstart table, run reuse.

Protocol (docs/training.md#the-cpu-tutorial-protocol): every method starts from
one source model, the *warm start* (``model.init_from="synthetic_warm_start"``,
shipped with the package and made by :func:`warm_start_config` through
``python -m pipa_core.warm_start``). From it, each method trains the same
number of iterations with the same schedule:

- **source only** continues the supervised source training: the control;
- **target oracle** fine-tunes on the labelled target images: the upper bound;
- **DACS** self-trains on the unlabelled target (mean teacher, ClassMix);
- **PiPa** adds pixel and patch contrast to the same self-training.

:func:`run_quickstart_table` trains every method for every seed (two runs at a
time on two cores, one torch thread each), evaluates on the target val split,
and writes ``results.json`` + ``results.md``: mean ± std over seeds, the domain
gap (oracle − source only), the fraction of the gap each method closes and the
per-class IoU. Finished runs of the same configuration and warm start are
reused, and an interrupted run of the same configuration is resumed.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import statistics
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Optional

from pipa_core.config import TrainConfig, apply_overrides, make_config
from pipa_core.eval.metrics import format_value
from pipa_core.io import atomic_write_json, atomic_write_text
from pipa_core.uda.checkpoint import find_latest

#: Row labels of the table.
METHOD_LABELS = {
    "source_only": "Source only (control)",
    "oracle": "Target oracle (supervised)",
    "dacs": "Self-training (DACS)",
    "daformer": "Self-training + DAFormer extras",
    "pipa": "Self-training + PiPa",
    "pipa_pp": "Self-training + PiPa++",
    "mic": "Self-training + MIC",
    "pipa_mic": "Self-training + PiPa + MIC",
    "spcl": "Self-training + SPCL",
}
#: The quickstart table's methods, in table order.
QUICKSTART_METHODS = ("source_only", "oracle", "dacs", "pipa")

#: How the shipped warm start was trained: source only from random weights (on top of the
#: synthetic preset's source augmentation), recorded so ``python -m pipa_core.warm_start``
#: reproduces it. docs/training.md explains each value.
WARM_START_OVERRIDES = (
    "model.init_from=null",
    "optim.max_iters=8000",
    "optim.warmup_iters=100",
    "eval.interval=0",
    "runtime.checkpoint_interval=1000",
    "runtime.seed=0",
)


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


def warm_start_config(
    run_dir: str | Path = "runs/warm_start", data_root: str = "data", overrides: Sequence[str] = ()
) -> TrainConfig:
    """The recipe of the shipped warm start (:data:`WARM_START_OVERRIDES`), writing to ``run_dir``."""
    cfg = make_config("synthetic", "source_only")
    return apply_overrides(
        cfg,
        [
            *WARM_START_OVERRIDES,
            f"data.data_root={data_root}",
            f"runtime.run_dir={run_dir}",
            "name=synthetic_warm_start",
            *overrides,
        ],
    )


# --------------------------------------------------------------------------- run reuse
#: Runtime settings that change no result: devices, threads, logging, checkpoints, where
#: the run lives. The others (``seed``, ``amp``, ``deterministic``, ``compile``,
#: ``channels_last``, ``sync_bn``) change the numbers, so they must match for a reuse.
NEUTRAL_RUNTIME = (
    "run_dir", "device", "num_threads", "log_interval", "checkpoint_interval",
    "keep_checkpoint_interval", "image_interval", "tensorboard", "progress", "max_nonfinite",
    "find_unused_parameters", "ddp_timeout_s", "resume", "allow_config_change", "stop_after",
)  # fmt: skip


def _comparable(d: dict) -> dict:
    # The labels (name, the recipe a config started from) change no result either.
    out = {k: v for k, v in d.items() if k not in ("runtime", "name", "method")}
    runtime = d.get("runtime", {})
    out["runtime"] = {k: v for k, v in runtime.items() if k not in NEUTRAL_RUNTIME}
    return out


def _same_config(cfg: TrainConfig) -> bool:
    """Whether the run directory holds a run of ``cfg`` (runtime settings aside)."""
    try:
        saved = json.loads((cfg.resolved_run_dir / "config.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    return _comparable(saved) == _comparable(cfg.to_dict())


def _init_sha256(cfg: TrainConfig) -> Optional[str]:
    if cfg.model.init_from is None:
        return None
    from pipa_core.assets import resolve_weights
    from pipa_core.io import sha256_file

    return sha256_file(resolve_weights(cfg.model.init_from))


def _finished_in(run_dir: Path, cfg: TrainConfig, sha: Optional[str]) -> Optional[dict]:
    try:
        saved = json.loads((run_dir / "config.json").read_text())
        result = json.loads((run_dir / "result.json").read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None
    if _comparable(saved) != _comparable(cfg.to_dict()) or not result.get("finished"):
        return None
    return result if result.get("init_from_sha256") == sha else None


def finished_result(cfg: TrainConfig, search: Sequence[str | Path] = ()) -> Optional[dict]:
    """The result of an earlier finished run with the same configuration and the same
    warm-start file (byte for byte): in the config's own run directory, else in any run
    directory below one of ``search`` (e.g. the quickstart's runs, for an ablation)."""
    sha = _init_sha256(cfg)
    found = _finished_in(cfg.resolved_run_dir, cfg, sha)
    for root in search:
        for config in sorted(Path(root).glob("**/config.json")) if found is None else ():
            found = _finished_in(config.parent, cfg, sha)
            if found is not None:
                break
    return found


def train_or_reuse(cfg: TrainConfig) -> dict:
    """``train(cfg)``, unless its run directory already holds a finished run of the same
    configuration: then that run's result, so re-running a notebook never retrains
    (and never overwrites) finished work. An interrupted run of the same configuration
    is resumed from its last checkpoint."""
    from pipa_core.uda import trainer

    result = finished_result(cfg)
    if result is not None:
        return result
    if _same_config(cfg) and find_latest(cfg.resolved_run_dir) is not None:
        cfg = apply_overrides(cfg, ["runtime.resume=true"])
    return trainer.train(cfg)


def _worker_init() -> None:
    import torch

    # Two processes on two cores: one thread each is much faster than two each.
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)


def _train_worker(cfg_dict: dict, reuse: bool = True) -> dict:
    cfg = TrainConfig.from_dict(cfg_dict)
    if reuse:
        return train_or_reuse(cfg)
    from pipa_core.uda import trainer

    return trainer.train(cfg)


def default_jobs() -> int:
    """Runs at a time: 1 with a GPU (one model per device), else one per core, at most 2."""
    import torch

    if torch.cuda.is_available():
        return 1
    return max(1, min(2, os.cpu_count() or 1))


def expected_cost(cfg: TrainConfig) -> float:
    """Relative training cost of ``cfg`` (student-forward equivalents), for scheduling only.

    Self-training adds the teacher's forward and a second student pass; each contrastive
    loss adds its own forward (patch / temporal crops) or head (pixel, prototype).
    """
    per_iter = 1.0 + (1.0 if cfg.uda.mode == "self_training" else 0.0)
    per_iter += 0.7 * len(cfg.losses.enabled)
    return cfg.optim.max_iters * per_iter


def run_configs(
    configs: Sequence[TrainConfig],
    jobs: Optional[int] = None,
    progress: bool = True,
    reuse: bool = True,
    reuse_from: Sequence[str | Path] = (),
) -> list[dict]:
    """Train every config (or, with ``reuse``, take its finished run); results in the order given.

    With ``jobs > 1`` the runs go to that many worker processes (spawned, one torch
    thread each, no per-run progress bar); finished runs are reused without starting a
    process, also from run directories below ``reuse_from`` (:func:`finished_result`).
    Results do not depend on ``jobs``.
    """
    from tqdm.auto import tqdm

    jobs = default_jobs() if jobs is None else int(jobs)
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    results = [finished_result(c, reuse_from) if reuse else None for c in configs]
    # Longest runs first: two workers then finish together instead of one waiting alone
    # on the last long run (the results do not depend on the order).
    todo = sorted(
        (i for i, r in enumerate(results) if r is None), key=lambda i: -expected_cost(configs[i])
    )
    bar = tqdm(
        total=len(configs), initial=len(configs) - len(todo), desc="runs", disable=not progress
    )
    try:
        if jobs == 1 or len(todo) <= 1:
            for i in todo:
                results[i] = _train_worker(configs[i].to_dict(), reuse)
                bar.update(1)
        else:
            quiet = ["runtime.progress=false", "runtime.num_threads=1"]
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(min(jobs, len(todo)), ctx, _worker_init) as pool:
                futures = {
                    pool.submit(
                        _train_worker, apply_overrides(configs[i], quiet).to_dict(), reuse
                    ): i
                    for i in todo
                }
                for fut in as_completed(futures):
                    results[futures[fut]] = fut.result()
                    bar.update(1)
    finally:
        bar.close()
    return results  # type: ignore[return-value]


# --------------------------------------------------------------------------- the table
def summarize_runs(results: dict[str, list[dict]], protocol: str = "cs19") -> dict[str, Any]:
    """Aggregate per-seed results into the table.

    Args:
        results: method -> list of ``train()`` result dicts (one per seed).
        protocol: the class protocol of the headline mIoU.
    Returns:
        ``{"rows": [{method, label, seeds, miou (per seed), mean, std, gap_closed,
        train_minutes, iterations, per_class (mean IoU per class over seeds; None where a
        class is absent)}], "domain_gap": oracle − source-only (or None), "protocol": ...}``.
    """

    def miou(r: dict) -> float:
        return float(r["eval"]["protocols"][protocol]["mIoU"])

    rows = []
    for method, runs in results.items():
        vals = [miou(r) for r in runs]
        per_class: dict[str, Optional[float]] = {}
        for r in runs:
            for cls, v in r["eval"]["protocols"][protocol].get("per_class_IoU", {}).items():
                per_class.setdefault(cls, [])  # type: ignore[arg-type]
                if v is not None:
                    per_class[cls].append(v)  # type: ignore[union-attr]
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
                "per_class": {c: statistics.fmean(v) if v else None for c, v in per_class.items()},
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


def per_class_markdown(table: dict[str, Any], digits: int = 1) -> str:
    """Mean IoU per class and method (one row per class, so the table stays narrow)."""
    rows = table["rows"]
    classes = list(rows[0]["per_class"]) if rows else []
    lines = [
        "| class | " + " | ".join(r["label"] for r in rows) + " |",
        "|---|" + "---|" * len(rows),
    ]
    for c in classes:
        cells = [format_value(r["per_class"].get(c), digits) for r in rows]
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run_quickstart_table(
    methods: Sequence[str] = QUICKSTART_METHODS,
    seeds: Sequence[int] = (0, 1, 2),
    out_dir: str | Path = "runs/quickstart",
    data_root: str = "data",
    overrides: Sequence[str] = (),
    reuse: bool = True,
    progress: bool = True,
    jobs: Optional[int] = None,
) -> dict[str, Any]:
    """Train every method for every seed on the synthetic benchmark and write the results table.

    Args:
        methods: method presets (:data:`pipa_core.config.METHODS`).
        seeds: one run per seed.
        out_dir: runs go to ``out_dir/<method>/seed<k>``; the table to ``out_dir/results.{json,md}``.
        data_root: where the synthetic benchmark is (generated on first use).
        overrides: ``section.key=value`` pairs applied to every run (e.g. ``optim.max_iters=100``).
        reuse: skip runs that already finished with the same configuration and warm start.
        progress: show a progress bar over runs.
        jobs: runs at a time (:func:`default_jobs`).
    Returns:
        The table dict of :func:`summarize_runs` plus ``"markdown"``, ``"per_class_markdown"``,
        ``"runs"`` (method -> run directories) and ``"paths"``.
    """
    configs = [
        quickstart_config(m, s, out_dir, data_root, overrides) for m in methods for s in seeds
    ]
    flat = run_configs(configs, jobs=jobs, progress=progress, reuse=reuse)
    results: dict[str, list[dict]] = {}
    for cfg, result in zip(configs, flat):
        result = dict(result, seed=cfg.runtime.seed)
        results.setdefault(cfg.method, []).append(result)
    table = summarize_runs(results)
    table["markdown"] = to_markdown(table)
    table["per_class_markdown"] = per_class_markdown(table)
    table["runs"] = {m: [r["run_dir"] for r in rs] for m, rs in results.items()}
    out = Path(out_dir)
    table["paths"] = {"json": str(out / "results.json"), "markdown": str(out / "results.md")}
    atomic_write_json(
        out / "results.json", {k: v for k, v in table.items() if not k.endswith("markdown")}
    )
    atomic_write_text(out / "results.md", table["markdown"] + "\n" + table["per_class_markdown"])
    return table


# --------------------------------------------------------------------------- ablation
#: PiPa's ablation study: self-training plus the listed losses.
ABLATION_SETTINGS: dict[str, tuple[str, ...]] = {
    "self-training": (),
    "+pixel": ("pixel",),
    "+patch": ("patch",),
    "+pixel+patch": ("pixel", "patch"),
    "+pixel+patch+temporal": ("pixel", "patch", "temporal"),  # PiPa++ on video benchmarks
}


def ablation_settings(video: bool) -> dict[str, tuple[str, ...]]:
    """The ablation settings for a benchmark: temporal contrast only where frames exist."""
    return {k: v for k, v in ABLATION_SETTINGS.items() if video or "temporal" not in v}


def ablation_config(
    benchmark: str,
    method: str,
    setting: str,
    losses: Sequence[str],
    seed: int,
    out_dir: str | Path,
    data_root: str = "data",
    overrides: Sequence[str] = (),
) -> TrainConfig:
    """``method``'s preset with exactly ``losses``, writing to ``out_dir/<setting>/seed<k>``."""
    slug = setting.strip("+").replace("+", "_") or "self-training"
    cfg = make_config(benchmark, method)
    return apply_overrides(
        cfg,
        [
            f"losses.enabled={','.join(losses)}" if losses else "losses.enabled=[]",
            f"data.data_root={data_root}",
            f"runtime.seed={seed}",
            f"runtime.run_dir={Path(out_dir) / slug / f'seed{seed}'}",
            f"name={benchmark}_{method}_{slug}_seed{seed}",
            *overrides,
        ],
    )


#: The ablation's reference row: the benchmark's source-only preset, same schedule and seeds.
CONTROL = "source only (control)"


def control_config(
    benchmark: str,
    seed: int,
    out_dir: str | Path,
    data_root: str = "data",
    overrides: Sequence[str] = (),
    method: str = "daformer",
) -> TrainConfig:
    """The source-only run the ablation's settings are measured against (``out_dir/source-only``).

    The benchmark's source-only preset, on ``method``'s data setting and schedule where
    the method has its own (PiPa's 640 crops and 60k iterations on Cityscapes targets;
    an HRDA method's control stays on DAFormer's single-resolution setting).
    On the embedded benchmark it is the quickstart's control (the warm start trained
    further on the source for the same schedule), so a finished quickstart run is reused.
    """
    from pipa_core.config.presets import apply_pipa_daformer_schedule, uses_pipa_data

    cfg = make_config(benchmark, "source_only")
    if uses_pipa_data(benchmark, method, make_config(benchmark, method).model.arch):
        apply_pipa_daformer_schedule(cfg)
    return apply_overrides(
        cfg,
        [
            f"data.data_root={data_root}",
            f"runtime.seed={seed}",
            f"runtime.run_dir={Path(out_dir) / 'source-only' / f'seed{seed}'}",
            f"name={benchmark}_source_only_seed{seed}",
            *overrides,
        ],
    )


def run_ablation(
    benchmark: str = "synthetic",
    method: str = "daformer",
    settings: Optional[Sequence[str]] = None,
    seeds: Sequence[int] = (0, 1, 2),
    out_dir: str | Path = "runs/ablation",
    data_root: str = "data",
    overrides: Sequence[str] = (),
    jobs: Optional[int] = None,
    reuse_from: Sequence[str | Path] = (),
    progress: bool = True,
    control: bool = True,
) -> dict[str, Any]:
    """Every setting of :func:`ablation_settings` x seed from ``method``'s preset; the table.

    Finished runs of the same configuration are reused, from ``out_dir`` or from run
    directories below ``reuse_from`` (the quickstart's source-only, DACS and PiPa runs
    are the ablation's control, first and last rows on the embedded benchmark).
    ``control=True`` adds the source-only row (:func:`control_config`, same seeds) first,
    and every other row reports its gain over it.

    Returns:
        ``{"runs": [{setting, seed, losses, mIoU, run_dir}], "table": [{setting, mean, std,
        runs, gain}], "markdown": ...}`` (``gain``: mean minus the control's mean, ``None``
        without a control); also written to ``out_dir/ablation.{json,md}``.
    """
    from pipa_core.data.benchmarks import get_benchmark

    available = ablation_settings(get_benchmark(benchmark).video)
    chosen = list(settings or available)
    unknown = [s for s in chosen if s not in available]
    if unknown:
        raise ValueError(f"unknown ablation setting(s) {unknown}; valid: {', '.join(available)}")
    jobs_cfg = [
        (
            name,
            s,
            ablation_config(
                benchmark, method, name, available[name], s, out_dir, data_root, overrides
            ),
        )
        for name in chosen
        for s in seeds
    ]
    if control:
        controls = [
            (CONTROL, s, control_config(benchmark, s, out_dir, data_root, overrides, method))
            for s in seeds
        ]
        jobs_cfg = controls + jobs_cfg
        chosen = [CONTROL, *chosen]
    results = run_configs(
        [c for _, _, c in jobs_cfg], jobs=jobs, progress=progress, reuse_from=reuse_from
    )
    runs = [
        {
            "setting": name,
            "seed": s,
            "losses": "+".join(available.get(name, ())) or "-",
            "mIoU": float(r["mIoU"]),
            "run_dir": r["run_dir"],
        }
        for (name, s, _), r in zip(jobs_cfg, results)
    ]
    table = []
    for name in chosen:
        vals = [r["mIoU"] for r in runs if r["setting"] == name]
        std = statistics.stdev(vals) if len(vals) > 1 else 0.0
        table.append(
            {"setting": name, "mean": statistics.fmean(vals), "std": std, "runs": len(vals)}
        )
    base = table[0]["mean"] if control else None
    for row in table:
        row["gain"] = None if base is None or row["setting"] == CONTROL else row["mean"] - base
    lines = [
        "| setting | mIoU mean ± std | per seed | gain over the control |",
        "|---|---|---|---|",
    ]
    for row in table:
        per_seed = ", ".join(f"{r['mIoU']:.1f}" for r in runs if r["setting"] == row["setting"])
        gain = "reference" if row["setting"] == CONTROL else "-"
        gain = gain if row["gain"] is None else f"{row['gain']:+.1f}"
        lines.append(
            f"| {row['setting']} | {row['mean']:.1f} ± {row['std']:.1f} | {per_seed} | {gain} |"
        )
    out = {"benchmark": benchmark, "method": method, "runs": runs, "table": table}
    out["markdown"] = "\n".join(lines) + "\n"
    atomic_write_json(
        Path(out_dir) / "ablation.json", {k: v for k, v in out.items() if k != "markdown"}
    )
    atomic_write_text(Path(out_dir) / "ablation.md", out["markdown"])
    return out
