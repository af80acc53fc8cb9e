"""The training configuration: schema, presets, overrides, resolution.

- :mod:`~pipa_core.config.schema`: :class:`TrainConfig` and its sections, each with
  its own checks beside its fields;
- :mod:`~pipa_core.config.presets`: method recipes (:data:`METHODS`) and benchmark
  schedules; :func:`make_config` / :func:`get_preset` / :func:`preset_names`;
- :mod:`~pipa_core.config.overrides`: :func:`apply_overrides` (``section.key=value``);
- :mod:`~pipa_core.config.resolve`: :func:`resolve` -> :class:`Run`, what a run uses
  (benchmark, evaluation protocol, pseudo-label and patch crops, heads), and
  :func:`validate_config`;
- :mod:`~pipa_core.config.typed`: the generic dict / YAML / CLI-text coercion and
  :class:`ConfigError`.
"""

from pipa_core.config.overrides import apply_overrides
from pipa_core.config.presets import (
    METHODS,
    SYNTHETIC_BENCHMARKS,
    get_preset,
    make_config,
    preset_names,
)
from pipa_core.config.resolve import (
    EvalSettings,
    Run,
    patch_crop_size,
    pseudo_crop_rows,
    resolve,
    resolve_benchmark,
    resolve_eval,
    validate_config,
)
from pipa_core.config.schema import (
    AMP_MODES,
    EVAL_MODES,
    LOSS_NAMES,
    TEACHER_BN_MODES,
    UDA_MODES,
    DataConfig,
    EvalConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    PatchLossConfig,
    PixelLossConfig,
    PrototypeLossConfig,
    RuntimeConfig,
    TemporalLossConfig,
    TrainConfig,
    UDAConfig,
)
from pipa_core.config.typed import ConfigError

__all__ = [
    "AMP_MODES",
    "EVAL_MODES",
    "LOSS_NAMES",
    "METHODS",
    "SYNTHETIC_BENCHMARKS",
    "TEACHER_BN_MODES",
    "UDA_MODES",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "EvalSettings",
    "Run",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "PatchLossConfig",
    "PixelLossConfig",
    "PrototypeLossConfig",
    "RuntimeConfig",
    "TemporalLossConfig",
    "TrainConfig",
    "UDAConfig",
    "apply_overrides",
    "get_preset",
    "make_config",
    "patch_crop_size",
    "preset_names",
    "pseudo_crop_rows",
    "resolve",
    "resolve_benchmark",
    "resolve_eval",
    "validate_config",
]
