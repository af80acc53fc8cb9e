"""Weight files shipped with the package, by name.

``synthetic_warm_start``: the source model every method of the CPU tutorial
starts from (MiT-B0 + DAFormer head trained on the embedded benchmark's source
domain). It is made by one recorded command, ``python -m pipa_core.warm_start``;
``synthetic_warm_start.json`` beside it records that command, the configuration,
the benchmark's generator version, the machine and the file's SHA-256.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: Shipped weight files: name -> file in this folder.
ASSETS = {"synthetic_warm_start": "synthetic_warm_start.pt"}


def asset_path(name: str) -> Path:
    """Path of the shipped file ``name`` (:data:`ASSETS`)."""
    if name not in ASSETS:
        raise KeyError(f"unknown shipped weights {name!r}; valid names: {', '.join(ASSETS)}")
    return HERE / ASSETS[name]


def asset_card(name: str) -> dict:
    """The JSON record beside a shipped file (command, config, checksum); ``{}`` if absent."""
    path = asset_path(name).with_suffix(".json")
    return json.loads(path.read_text()) if path.is_file() else {}


def resolve_weights(source: str | os.PathLike) -> Path:
    """A weights file from a shipped name, a run directory (its ``final_weights.pt``) or a path.

    Raises:
        FileNotFoundError: naming what was looked for and how to make it.
    """
    if isinstance(source, str) and source in ASSETS:
        path = asset_path(source)
        if not path.is_file():
            raise FileNotFoundError(
                f"the shipped {source!r} weights are missing ({path}); make them with "
                "`python -m pipa_core.warm_start` or reinstall the package"
            )
        return path
    path = Path(source)
    if path.is_dir():
        path = path / "final_weights.pt"
        if not path.is_file():
            raise FileNotFoundError(
                f"{source} is a directory without final_weights.pt; pass a finished run "
                "directory or a file written by Segmentor.export_weights"
            )
    if not path.is_file():
        raise FileNotFoundError(
            f"no weights at {source}; pass a file written by Segmentor.export_weights, a "
            f"finished run directory, or a shipped name ({', '.join(ASSETS)})"
        )
    return path
