"""Checkpoints that let a killed run continue exactly where it stopped.

A checkpoint is a plain dict of tensors and Python scalars / lists / dicts, so
it loads with ``torch.load(..., weights_only=True)``: model, teacher,
optimizer, scheduler, AMP scaler, every RNG state (Python, NumPy, torch CPU,
CUDA), the data sampler position, loss-module state (memory banks,
prototypes), the configuration and the iteration. Files are written
atomically (:func:`pipa_core.io.atomic_torch_save`): ``latest.pt`` after every
save plus ``iter_XXXXXXX.pt`` every ``keep_every`` iterations.
"""

from __future__ import annotations

import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipa_core.io import atomic_torch_save

LATEST = "latest.pt"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read; the message names the file and what to do."""


def capture_rng_state() -> dict[str, Any]:
    """All global RNG states as weights_only-loadable types."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002 (the global state datasets use)
    state = {
        "python": {
            "version": version,
            "state": torch.tensor(mt, dtype=torch.int64),
            "gauss": gauss,
        },
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    npst = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (
            npst["kind"],
            npst["keys"].numpy().astype(np.uint32),
            npst["pos"],
            npst["has_gauss"],
            npst["cached"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


def generator_state(gen: torch.Generator) -> torch.Tensor:
    """State of a ``torch.Generator`` (a uint8 tensor; CPU copy for CUDA generators)."""
    return gen.get_state().cpu()


def checkpoint_path(run_dir: str | Path, iteration: int | None = None) -> Path:
    """``run_dir/checkpoints/latest.pt`` or ``.../iter_0001000.pt``."""
    d = Path(run_dir) / "checkpoints"
    return d / (LATEST if iteration is None else f"iter_{iteration:07d}.pt")


def save_checkpoint(state: dict[str, Any], run_dir: str | Path, keep: bool = False) -> Path:
    """Write ``state`` atomically to ``latest.pt`` (and to ``iter_N.pt`` when ``keep``).

    ``state["iteration"]`` must hold the number of completed iterations.
    """
    if "iteration" not in state:
        raise KeyError("checkpoint state needs an 'iteration' entry")
    latest = checkpoint_path(run_dir)
    atomic_torch_save(state, latest)
    if keep:
        atomic_torch_save(state, checkpoint_path(run_dir, int(state["iteration"])))
    return latest


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; a run directory means its ``latest.pt``."""
    path = Path(path)
    if path.is_dir():
        path = checkpoint_path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no checkpoint at {path}; pass a run directory containing checkpoints/latest.pt "
            "or the path of a .pt file written by pipa_core training"
        )
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path} was refused: it holds objects a weights-only load does not run "
            f"({str(exc).splitlines()[0]}). pipa_core checkpoints hold only tensors and plain "
            "values; load files only from sources you trust."
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        kept = sorted(path.parent.glob("iter_*.pt"))
        hint = (
            f"an earlier kept checkpoint is {kept[-1]}: copy it to {path} to resume from it"
            if kept
            else "no earlier iter_*.pt is kept next to it; start the run again"
        )
        raise CheckpointError(
            f"{path} cannot be read as a checkpoint ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0]}); it is truncated or not a pipa_core checkpoint. "
            f"{hint[0].upper() + hint[1:]}."
        ) from None


def find_latest(run_dir: str | Path) -> Path | None:
    """``checkpoints/latest.pt`` of ``run_dir`` if it exists, else None."""
    p = checkpoint_path(run_dir)
    return p if p.is_file() else None
