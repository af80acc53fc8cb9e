"""Resolution: what a run *uses* from what its config *says*, and the cross-section checks.

:func:`resolve` turns a :class:`TrainConfig` (what the user says, ``None`` = "the
benchmark's") into one frozen :class:`Run` (what the run uses: the benchmark with
the config's overrides, the evaluation protocol, the pseudo-label crop rows, the
patch crop, the projection heads). The trainer, the engine, the datasets, the
run loaders and the evaluate notebook all read the same ``Run``.

``None`` in a config means "the benchmark's"; these functions are the only place
where the config meets the benchmark: the benchmark with the config's overrides
(:func:`resolve_benchmark`), the evaluation protocol (:func:`resolve_eval`), the
pseudo-label crop rows and the patch-contrast crop. :func:`validate_config` runs
every section's own ``check()`` and then the checks that need more than one
section or the benchmark.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from pipa_core.config.presets import SYNTHETIC_BENCHMARKS
from pipa_core.config.schema import TrainConfig
from pipa_core.config.typed import ConfigError

__all__ = [
    "EvalSettings",
    "Run",
    "resolve",
    "patch_crop_size",
    "pseudo_crop_rows",
    "resolve_benchmark",
    "resolve_eval",
    "validate_config",
]


def resolve_benchmark(cfg: TrainConfig):
    """The benchmark spec with the config's overrides (crop, scales, RCS, reference offset).

    Returns a ``pipa_core.data.benchmarks.BenchmarkSpec`` (frozen dataclass).
    """
    from pipa_core.data.benchmarks import get_benchmark, synthetic_benchmark

    d = cfg.data
    if d.benchmark in SYNTHETIC_BENCHMARKS:
        spec = synthetic_benchmark(d.synthetic_size, video=d.benchmark == "synthetic_seq")
    else:
        spec = get_benchmark(d.benchmark)
    changes: dict[str, Any] = {}
    for k in ("rcs_temperature", "rcs_min_pixels", "rcs_min_crop_ratio"):
        if getattr(d, k) is not None:
            changes[k] = getattr(d, k)
    if d.crop_size is not None:
        changes["crop_size"] = tuple(d.crop_size)
    if d.source_scale is not None:
        changes["source_scales"] = tuple(tuple(d.source_scale) for _ in spec.sources)
    if d.target_scale is not None:
        changes["target_scale"] = tuple(d.target_scale)
    if d.rcs is not None:
        changes["rcs"] = d.rcs
    if d.ref_offset is not None:
        changes["ref_offset"] = d.ref_offset
    return dataclasses.replace(spec, **changes) if changes else spec


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """How a run is scored: the one protocol the trainer, ``evaluate_run`` and the
    notebooks share. Labels are always read at full resolution (the published protocol)."""

    mode: str  # "whole" or "slide"
    crop_size: tuple[int, int]  # slide window (the training crop unless eval.crop_size)
    stride: Optional[tuple[int, int]]  # slide step; None = half the window (models.inference)
    flip: bool
    protocols: tuple[str, ...]  # class protocols, the first is the headline mIoU
    max_samples: Optional[int]

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`pipa_core.eval.evaluate.evaluate`."""
        return {
            "protocols": self.protocols,
            "mode": self.mode,
            "crop_size": self.crop_size,
            "stride": self.stride,
            "flip": self.flip,
            "max_samples": self.max_samples,
        }


def resolve_eval(cfg: TrainConfig, spec=None) -> EvalSettings:
    """The run's evaluation protocol: ``cfg.eval`` with the benchmark's defaults filled in."""
    spec = spec if spec is not None else resolve_benchmark(cfg)
    e = cfg.eval
    return EvalSettings(
        mode=e.mode,
        crop_size=tuple(e.crop_size) if e.crop_size else tuple(spec.crop_size),
        stride=tuple(e.stride) if e.stride else None,
        flip=bool(e.flip),
        protocols=tuple(e.protocols or spec.protocols),
        max_samples=e.max_samples,
    )


def pseudo_crop_rows(cfg: TrainConfig, spec) -> tuple[int, int]:
    """(top, bottom) pseudo-label crop rows: the config's, else the benchmark's scaled to the crop."""
    scale = spec.crop_size[0] / 512  # the benchmark values are for DAFormer's 512-row crops
    top = cfg.uda.pseudo_crop_top
    bottom = cfg.uda.pseudo_crop_bottom
    top = round(spec.pseudo_ignore_top * scale) if top is None else top
    bottom = round(spec.pseudo_ignore_bottom * scale) if bottom is None else bottom
    return int(top), int(bottom)


def patch_crop_size(cfg: TrainConfig, spec, stride: int = 32) -> int:
    """Side of the patch-contrast crops: the config's, else 9/8 of the training crop (multiple of ``stride``)."""
    if cfg.losses.patch.crop_size is not None:
        return int(cfg.losses.patch.crop_size)
    return max(stride, int(round(spec.crop_size[0] * 9 / 8 / stride)) * stride)


def validate_config(cfg: TrainConfig) -> TrainConfig:
    """Check every section, then across sections; raise :class:`ConfigError` listing all
    problems with their fixes (returns ``cfg``)."""
    from pipa_core.data.benchmarks import BENCHMARKS

    errs = cfg.check()
    d, u, lo = cfg.data, cfg.uda, cfg.losses
    if d.benchmark not in BENCHMARKS:
        errs.append(f"data.benchmark={d.benchmark!r} is unknown; valid: {', '.join(BENCHMARKS)}")
    elif not errs:
        errs += _check_against_benchmark(cfg)
    if u.mic and u.mode != "self_training":
        errs.append(
            f"uda.mic=true needs uda.mode=self_training (got {u.mode!r}): MIC trains on the "
            "teacher's pseudo-labels"
        )
    if lo.enabled and u.mode != "self_training":
        errs.append(
            f"losses.enabled={list(lo.enabled)} needs uda.mode=self_training (got {u.mode!r}); "
            "source-only / oracle baselines train with cross-entropy only"
        )
    if "patch" in lo.enabled and lo.patch.start_iter >= cfg.optim.max_iters:
        errs.append(
            f"losses.patch.start_iter={lo.patch.start_iter} >= optim.max_iters="
            f"{cfg.optim.max_iters}: the patch loss would never run; lower it or drop 'patch'"
        )
    if errs:
        raise ConfigError("invalid training configuration:\n  - " + "\n  - ".join(errs))
    return cfg


def _check_against_benchmark(cfg: TrainConfig) -> list[str]:
    """Crop vs resize scales, pseudo-label crop vs crop, temporal loss vs video frames."""
    from pipa_core.data.benchmarks import BENCHMARKS

    errs = []
    rs = resolve_benchmark(cfg)
    ch, cw = rs.crop_size
    for dom, scale in [("source", s) for s in rs.source_scales] + [("target", rs.target_scale)]:
        if ch > scale[0] or cw > scale[1]:
            errs.append(
                f"data.crop_size (H, W)={(ch, cw)} is larger than the {dom} resize scale "
                f"(H, W)={tuple(scale)}; lower data.crop_size or raise data.{dom}_scale"
            )
    if cfg.uda.mode == "self_training":
        top, bottom = pseudo_crop_rows(cfg, rs)
        if top < 0 or bottom < 0:
            errs.append("uda.pseudo_crop_top / pseudo_crop_bottom must be >= 0")
        elif top + bottom >= ch:
            errs.append(
                f"uda.pseudo_crop_top + pseudo_crop_bottom = {top + bottom} removes every row "
                f"of the {ch}-row crop; lower them"
            )
    if "temporal" in cfg.losses.enabled and not rs.video:
        video = [b for b, s in BENCHMARKS.items() if s.video]
        errs.append(
            f"losses.enabled has 'temporal' but benchmark {cfg.data.benchmark!r} has no "
            f"reference frames; use a video benchmark ({', '.join(video)}) or drop the "
            "temporal loss"
        )
    return errs


@dataclasses.dataclass(frozen=True)
class Run:
    """Everything a run uses, resolved once (see the module docstring).

    ``cfg`` is a private copy of the config as given (saved to ``config.json``);
    the other fields are derived from it and the benchmark and are what the code
    reads instead of recomputing them.
    """

    cfg: TrainConfig
    spec: Any  # pipa_core.data.benchmarks.BenchmarkSpec with the config's overrides
    eval: EvalSettings
    pseudo_rows: tuple[int, int]  # (top, bottom) rows of the target crop without pseudo-labels
    patch_crop: int  # side of the patch-contrast crops
    heads: tuple[str, ...]  # projection heads of the enabled losses

    @property
    def crop_size(self) -> tuple[int, int]:
        """The training crop ``(H, W)``."""
        return tuple(self.spec.crop_size)

    @property
    def stage_heads(self) -> bool:
        """Whether the segmentor carries PiPa's released ``cls_head`` / ``proj_head``
        (``losses.pixel.released``; :mod:`pipa_core.models.stage_heads`)."""
        lo = self.cfg.losses
        return "pixel" in lo.enabled and lo.pixel.released


def resolve(cfg: TrainConfig, validate: bool = True) -> Run:
    """The :class:`Run` of ``cfg``; with ``validate`` it first runs :func:`validate_config`
    (raises :class:`ConfigError`). Loaders of *finished* runs pass ``validate=False``:
    their config describes the run even when a file it started from is gone."""
    import copy

    from pipa_core.models.projection import PROJ_HEAD_NAMES

    cfg = copy.deepcopy(cfg)
    if validate:
        validate_config(cfg)
    spec = resolve_benchmark(cfg)
    return Run(
        cfg=cfg,
        spec=spec,
        eval=resolve_eval(cfg, spec),
        pseudo_rows=pseudo_crop_rows(cfg, spec),
        patch_crop=patch_crop_size(cfg, spec),
        heads=tuple(n for n in PROJ_HEAD_NAMES if n in cfg.losses.enabled),
    )
