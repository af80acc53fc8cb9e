"""Working with finished training runs: load a model, the analysis datasets, metrics and results.

A run directory (written by ``pipa_core.uda.train``) holds ``config.json``,
``metrics.jsonl``, ``result.json`` and ``checkpoints/latest.pt`` (student,
teacher and projection heads). The analysis notebooks read runs only through
these helpers, so they work the same on a laptop run and on a cluster run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from pipa_core.uda.checkpoint import load_checkpoint


def _resolve_checkpoint(run: str | os.PathLike) -> Path:
    p = Path(run)
    if p.is_dir():
        ck = p / "checkpoints" / "latest.pt"
        if not ck.is_file():
            raise FileNotFoundError(
                f"{p} has no checkpoints/latest.pt; pass a run directory written by "
                "pipa_core.uda.train (or the path of a checkpoint file)"
            )
        return ck
    if not p.is_file():
        raise FileNotFoundError(f"no run directory or checkpoint at {p}")
    return p


def _open_file(path: Path, trust_checkpoint: bool = False):
    """A checkpoint file: our training checkpoint (a dict with ``student``) or a
    :class:`~pipa_core.models.official.ReleasedCheckpoint` of the official code."""
    from pipa_core.models.official import (
        UnsafeCheckpointError,
        as_released_checkpoint,
        load_checkpoint_object,
    )
    from pipa_core.models.pretrained import PretrainedLoadError

    try:
        obj = load_checkpoint_object(path, trust_checkpoint)
    except PretrainedLoadError as e:
        if path.suffix == ".pt" and not isinstance(e, UnsafeCheckpointError):
            load_checkpoint(path)  # ours (.pt): its message names the kept checkpoints
        raise
    if isinstance(obj, dict) and "student" in obj:
        return obj
    return as_released_checkpoint(obj, path)


#: Released method -> the preset whose evaluation protocol its paper used.
_RELEASED_PRESET = {
    "DAFormer": "daformer",
    "MIC(DAFormer)": "mic",
    "PiPa(DAFormer)": "pipa",
    "HRDA": "hrda",
    "MIC(HRDA)": "hrda",
    "PiPa(HRDA)": "hrda",
}


def released_run_config(arch, benchmark: str):
    """The config to analyse a released model with: the ``<benchmark>_<method>`` preset
    of its method (evaluation protocol, scales, data) with the file's architecture."""
    from pipa_core.config import make_config

    cfg = make_config(benchmark, _RELEASED_PRESET[arch.method])
    cfg.model.arch = arch.arch
    cfg.model.pretrained = None  # nothing is trained: the file holds every weight
    cfg.model.init_from = None
    cfg.name = f"released {arch.method}"
    return cfg


def load_run_config(
    run: str | os.PathLike, benchmark: str | None = None, trust_checkpoint: bool = False
):
    """The :class:`~pipa_core.config.TrainConfig` of a run directory or checkpoint file.

    A released DAFormer / HRDA / MIC / PiPa file records no pipa_core config: pass the
    ``benchmark`` it was trained on (e.g. ``"gta2cs"``) and get that benchmark's preset for
    the file's method and architecture (:func:`released_run_config`).
    """
    from pipa_core.config import TrainConfig

    p = Path(run)
    if p.is_dir() and (p / "config.json").is_file():
        return TrainConfig.load(p)
    path = _resolve_checkpoint(p)
    state = _open_file(path, trust_checkpoint)
    if not isinstance(state, dict):
        from pipa_core.models.official import infer_architecture

        if benchmark is None:
            raise ValueError(
                f"{path} is a released checkpoint and records no pipa_core config: pass the "
                "benchmark it was trained on, e.g. benchmark='gta2cs' (notebooks: "
                "-p benchmark gta2cs)"
            )
        return released_run_config(
            infer_architecture(state.part("student"), state.config_text), benchmark
        )
    return _config_of(state, path)


def _config_of(state: dict, path: Path):
    """The ``TrainConfig`` recorded in one of our training checkpoints (already loaded)."""
    from pipa_core.config import TrainConfig

    if "config" not in state:
        raise ValueError(f"{path} holds no 'config'; it is not a training checkpoint")
    return TrainConfig.from_dict(state["config"])


def build_segmentor_for(cfg) -> nn.Module:
    """A freshly initialised segmentor shaped like the run's (same arch, decoder, projection heads).

    Built by :func:`~pipa_core.models.build_from_config` as the trainer builds its
    student, so HRDA runs (``hrda_*`` archs) come back as multi-resolution segmentors
    with their scale attention.
    """
    from pipa_core.config import resolve
    from pipa_core.models import build_from_config

    run = resolve(cfg, validate=False)  # a finished run: its start files may be gone
    return build_from_config(
        cfg.model, run.crop_size, run.heads, pretrained=False, stage_heads=run.stage_heads
    )


def load_segmentor(
    run: str | os.PathLike,
    which: str = "student",
    device: torch.device | str = "cpu",
    trust_checkpoint: bool = False,
) -> nn.Module:
    """The trained segmentor of a run (with its projection heads), in eval mode.

    Args:
        run: a run directory, a checkpoint file (``checkpoints/latest.pt``/``iter_*.pt``),
            or a released DAFormer / HRDA / MIC / PiPa ``.pth`` (architecture inferred from
            its keys; its load report is at ``model.pretrained_report``).
        which: ``"student"`` (the evaluated model) or ``"teacher"`` (its EMA); released
            files also hold ``"imagenet"`` (the frozen ImageNet copy).
        device: where to put it.
        trust_checkpoint: released files only: unpickle objects that a
            ``weights_only=True`` load refuses (only for files you trust).
    """
    from pipa_core.models.official import PREFIXES, build_released_segmentor

    path = _resolve_checkpoint(run)
    state = _open_file(path, trust_checkpoint)
    if not isinstance(state, dict):
        if which not in PREFIXES:
            raise ValueError(f"which must be one of {sorted(PREFIXES)}, got {which!r}")
        seg, _, _ = build_released_segmentor(state, which)
        return seg.to(device).eval()
    if which not in ("student", "teacher"):
        raise ValueError(
            f"which must be 'student' or 'teacher' for a pipa_core run, got {which!r} "
            "('imagenet' exists only in released checkpoints)"
        )
    if which not in state or state[which] is None:
        raise ValueError(
            f"{path} has no {which!r} weights (a supervised run has no teacher); use which='student'"
        )
    cfg = load_run_config(run) if Path(run).is_dir() else _config_of(state, path)
    seg = build_segmentor_for(cfg)
    seg.load_state_dict(state[which])
    return seg.to(device).eval()


def evaluate_run(
    run: str | os.PathLike,
    which: str = "student",
    data_root: str | os.PathLike | None = None,
    benchmark: str | None = None,
    mode: str | None = None,
    max_samples: int | None = None,
    device: torch.device | str = "cpu",
    progress: bool = False,
    model: nn.Module | None = None,
    trust_checkpoint: bool = False,
) -> dict:
    """Score a finished run exactly as its trainer did: the same split, full-resolution
    labels, the run's inference mode, window, stride, flip and protocols.

    ``model``: the run's segmentor when the caller has loaded it already (the evaluate
    notebook); otherwise its ``which`` weights are loaded here.

    With no overrides the mIoU equals the run's ``result.json``; ``benchmark``,
    ``mode`` and ``max_samples`` change only what they name (e.g. another target).
    A released checkpoint file needs ``benchmark`` (it records no pipa_core config) and is
    scored with that benchmark's protocol for its method (:func:`released_run_config`).

    Returns:
        :func:`pipa_core.eval.evaluate.evaluate`'s dict plus ``"settings"`` (what was used)
        and ``"benchmark"``.
    """
    from dataclasses import asdict, replace

    from torch.utils.data import DataLoader

    from pipa_core.config import resolve
    from pipa_core.data.benchmarks import build_val_dataset
    from pipa_core.eval.evaluate import evaluate

    cfg = load_run_config(run, benchmark, trust_checkpoint)
    if benchmark is not None:
        cfg.data.benchmark = benchmark
    resolved = resolve(cfg, validate=False)  # what the run used: benchmark, protocol, ...
    spec, settings = resolved.spec, resolved.eval
    if mode is not None:
        settings = replace(settings, mode=mode)
    if max_samples is not None:
        settings = replace(settings, max_samples=max_samples)
    if model is None:
        model = load_segmentor(run, which, device=device, trust_checkpoint=trust_checkpoint)
    val = build_val_dataset(spec, data_root or cfg.data.data_root, resize_label=False)
    if settings.max_samples is not None:  # exactly the images scored, so a progress bar ends full
        val = Subset(val, range(min(len(val), settings.max_samples)))
    loader = DataLoader(val, batch_size=cfg.eval.batch_size)
    if progress:
        from tqdm.auto import tqdm

        loader = tqdm(loader, desc="evaluate")
    res = evaluate(model, loader, device=device, **settings.kwargs())
    res["settings"] = asdict(settings)
    res["benchmark"] = spec.name
    return res


def analysis_datasets(
    run_or_benchmark,
    data_root: str | os.PathLike | None = None,
    max_images: int | None = None,
    source_split: str | None = None,
) -> dict[str, Dataset]:
    """Labelled source and target datasets without augmentation, for t-SNE / CCD / browsing.

    Args:
        run_or_benchmark: a ``TrainConfig`` (its benchmark with the run's overrides: scales,
            synthetic size...), a run directory, or a benchmark preset name.
        data_root: datasets root; ``None`` = the run's ``data.data_root`` (``"data"`` for a name).
        max_images: keep the first N images of each domain (SPCL uses 1000 per domain).
        source_split: ``None`` = the source *training* images (what SPCL samples);
            e.g. ``"val"`` where the source has a val split (the synthetic benchmark).
    Returns:
        ``{"source": dataset, "target": dataset}``: source resized to its training scale,
        target = the labelled target val split at the evaluation scale.
    """
    from dataclasses import replace

    from pipa_core.data.benchmarks import build_dataset, build_val_dataset, get_benchmark
    from pipa_core.data.transforms import val_pipeline

    cfg = run_or_benchmark
    if isinstance(cfg, (str, os.PathLike)) and Path(cfg).is_dir():
        cfg = load_run_config(cfg)
    if isinstance(cfg, str):
        spec, root = get_benchmark(cfg), data_root or "data"
    else:
        from pipa_core.config import resolve_benchmark

        spec, root = resolve_benchmark(cfg), data_root or cfg.data.data_root
    ref = spec.sources[0] if source_split is None else replace(spec.sources[0], split=source_split)
    src = build_dataset(ref, root, val_pipeline(spec.source_scales[0]), spec.video, spec.ref_offset)
    tgt = build_val_dataset(spec, root)
    out = {"source": src, "target": tgt}
    if max_images is not None:
        out = {k: Subset(d, range(min(max_images, len(d)))) for k, d in out.items()}
    return out


def read_metrics(run: str | os.PathLike, kind: str | None = None):
    """``metrics.jsonl`` of a run as a pandas DataFrame (``kind`` = "train" or "eval" filters)."""
    import pandas as pd

    path = Path(run) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no metrics.jsonl in {run}; is it a run directory?")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    df = pd.DataFrame(rows)
    return df[df["kind"] == kind].reset_index(drop=True) if kind is not None and len(df) else df


def collect_results(runs: Iterable[str | os.PathLike], extra: Sequence[str] = ()):
    """One row per run directory: name, method, benchmark, seed, losses, iterations, mIoU.

    ``extra`` adds dotted config keys as columns (e.g. ``"losses.pixel.weight"``).
    Runs without ``result.json`` (still running or crashed) are skipped.
    """
    import pandas as pd

    rows = []
    for run in runs:
        run = Path(run)
        res_path = run / "result.json"
        if not res_path.is_file():
            continue
        res = json.loads(res_path.read_text())
        cfg = json.loads((run / "config.json").read_text())
        row = {
            "run": str(run),
            "name": res.get("name"),
            "method": res.get("method"),
            "benchmark": res.get("benchmark"),
            "seed": cfg["runtime"]["seed"],
            "losses": "+".join(cfg["losses"]["enabled"]) or "-",
            "iterations": res.get("iterations"),
            "mIoU": res.get("mIoU"),
        }
        for key in extra:
            node = cfg
            for part in key.split("."):
                node = node[part]
            row[key] = node
        rows.append(row)
    return pd.DataFrame(rows)


def make_run_config(
    benchmark: str,
    method: str,
    *,
    losses: Sequence[str] | None = None,
    seed: int = 0,
    max_iters: int | None = None,
    run_dir: str | os.PathLike | None = None,
    data_root: str | os.PathLike = "data",
    device: str = "auto",
    eval_max_samples: int | None = None,
    overrides: Sequence[str] | dict = (),
):
    """A :class:`~pipa_core.config.TrainConfig` from notebook-style parameters.

    Starts from the preset ``<benchmark>_<method>`` and applies, in order: the
    ablation switch ``losses`` (``None`` keeps the method's losses, ``[]`` turns
    all off, ``["pixel"]`` keeps only pixel contrast, ...), seed, iterations,
    run directory (default ``runs/<benchmark>_<method>[_<losses>]_s<seed>``),
    device, evaluation subset, then free ``section.key=value`` ``overrides``.
    """
    from pipa_core.config import apply_overrides, make_config

    # papermill's ``-p losses '["pixel"]'`` passes a string: read it as YAML / JSON.
    losses = _parse_list(losses, "losses")
    overrides = _parse_list(overrides, "overrides") or ()
    cfg = make_config(benchmark, method)
    sets: dict = {"runtime.seed": seed, "runtime.device": device, "data.data_root": str(data_root)}
    tag = ""
    if losses is not None:
        sets["losses.enabled"] = tuple(losses)
        tag = "_" + ("+".join(losses) if losses else "nossl")
    if max_iters is not None:
        sets["optim.max_iters"] = int(max_iters)
        # Keep a short run's warm-up shorter than the run itself.
        sets["optim.warmup_iters"] = min(cfg.optim.warmup_iters, max(1, int(max_iters) // 10))
    if eval_max_samples is not None:
        sets["eval.max_samples"] = int(eval_max_samples)
    name = f"{benchmark}_{method}{tag}_s{seed}"
    sets["runtime.run_dir"] = str(run_dir) if run_dir is not None else f"runs/{name}"
    cfg = apply_overrides(cfg, sets)
    cfg.name = name
    if overrides:
        cfg = apply_overrides(cfg, overrides)
    return cfg


def _parse_list(value, what: str):
    if isinstance(value, str):
        import yaml

        parsed = yaml.safe_load(value) if value.strip() else []
        if isinstance(parsed, str):  # a single item such as "pixel" or "optim.lr=1e-4"
            parsed = [parsed]
        if not isinstance(parsed, list):
            raise ValueError(f'{what} must be a list, e.g. \'["pixel", "patch"]\', got {value!r}')
        return parsed
    return value


def seed_curves(runs: Mapping[str, Sequence[str | os.PathLike]], column: str, kind: str = "eval"):
    """Long table ``(method, seed, iter, value)`` (a pandas DataFrame) of ``column`` from each run's ``metrics.jsonl``.

    Runs without the column (e.g. pseudo-label accuracy of a supervised run) are skipped.
    """
    import pandas as pd

    rows = []
    for method, dirs in runs.items():
        for seed, run in enumerate(dirs):
            log = read_metrics(run, kind=kind)
            if column not in log.columns:
                continue
            for it, v in zip(log["iter"], log[column]):
                if pd.notna(v):
                    rows.append(
                        {"method": method, "seed": seed, "iter": int(it), "value": float(v)}
                    )
    return pd.DataFrame(rows, columns=["method", "seed", "iter", "value"])
