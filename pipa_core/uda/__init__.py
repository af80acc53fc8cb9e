"""Self-training engine: EMA teacher, pseudo-labels, ClassMix, feature distance, the PiPa step,
the trainer and its configuration.

Start with :func:`train` and :func:`make_config` / :func:`get_preset`; the
command line is ``python -m pipa_core.train`` (docs/training.md).
"""

from pipa_core.config import (
    METHODS,
    ConfigError,
    DataConfig,
    EvalConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    RuntimeConfig,
    TrainConfig,
    UDAConfig,
    apply_overrides,
    get_preset,
    make_config,
    preset_names,
    validate_config,
)
from pipa_core.uda.ema import build_teacher, ema_alpha, ema_update
from pipa_core.uda.engine import Engine
from pipa_core.uda.feature_distance import FeatureDistance, downscale_label_ratio, thing_mask
from pipa_core.uda.mixing import class_mix_mask, class_mix_masks, mix_batch, strong_augment
from pipa_core.uda.pseudo_label import PseudoLabel, make_pseudo_label
from pipa_core.uda.step import Networks, StepContext, StepOutput, training_step
from pipa_core.uda.trainer import NonFiniteLossError, Trainer, train

__all__ = [
    "METHODS",
    "ConfigError",
    "DataConfig",
    "Engine",
    "EvalConfig",
    "FeatureDistance",
    "LossConfig",
    "ModelConfig",
    "Networks",
    "NonFiniteLossError",
    "OptimConfig",
    "PseudoLabel",
    "RuntimeConfig",
    "StepContext",
    "StepOutput",
    "TrainConfig",
    "Trainer",
    "UDAConfig",
    "apply_overrides",
    "build_teacher",
    "class_mix_mask",
    "class_mix_masks",
    "downscale_label_ratio",
    "ema_alpha",
    "ema_update",
    "get_preset",
    "make_config",
    "make_pseudo_label",
    "mix_batch",
    "preset_names",
    "strong_augment",
    "thing_mask",
    "train",
    "training_step",
    "validate_config",
]
