"""pipa_core.data: real and synthetic datasets, joint transforms, rare class sampling, UDA pairs.

Names below are imported lazily (on first attribute access) so that
``import pipa_core.data`` stays light; see data/README.md for the datasets.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "DatasetError": "pipa_core.data.base",
    "BENCHMARKS": "pipa_core.data.benchmarks",
    "BenchmarkSpec": "pipa_core.data.benchmarks",
    "get_benchmark": "pipa_core.data.benchmarks",
    "build_train_dataset": "pipa_core.data.benchmarks",
    "build_val_dataset": "pipa_core.data.benchmarks",
    "GTADataset": "pipa_core.data.gta",
    "SynthiaDataset": "pipa_core.data.synthia",
    "SynthiaSeqDataset": "pipa_core.data.synthia",
    "CityscapesDataset": "pipa_core.data.cityscapes",
    "CityscapesSeqDataset": "pipa_core.data.cityscapes",
    "ACDCDataset": "pipa_core.data.acdc",
    "DarkZurichDataset": "pipa_core.data.acdc",
    "ViperSeqDataset": "pipa_core.data.viper",
    "RareClassSampler": "pipa_core.data.rcs",
    "UDADataset": "pipa_core.data.uda",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pipa_core.data' has no attribute {name!r}")
