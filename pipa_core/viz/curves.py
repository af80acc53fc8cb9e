"""Training curves over seeds: mIoU vs iteration, the teacher's pseudo-label accuracy.

Each method is a list of run directories (one per seed); a curve is the mean
over seeds of one column of ``metrics.jsonl``, with a band from the lowest to
the highest seed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Optional

import numpy as np
import pandas as pd


def seed_curves(
    runs: Mapping[str, Sequence[str | os.PathLike]], column: str, kind: str = "eval"
) -> pd.DataFrame:
    """Long table ``(method, seed, iter, value)`` of ``column`` from each run's ``metrics.jsonl``.

    Runs without the column (e.g. pseudo-label accuracy of a supervised run) are skipped.
    """
    from pipa_core.eval.runs import read_metrics

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


def plot_seed_curves(
    runs: Mapping[str, Sequence[str | os.PathLike]],
    column: str,
    kind: str = "eval",
    ax=None,
    start: Optional[float] = None,
    scale: float = 1.0,
    ylabel: Optional[str] = None,
    title: Optional[str] = None,
):
    """Plot the mean over seeds of ``column`` per method, with a min-max band; returns the axes.

    Args:
        runs: method label -> run directories (one per seed).
        column: a ``metrics.jsonl`` column (``mIoU`` for ``kind="eval"``, ``pseudo_acc``...).
        start: a value at iteration 0 shared by every method (the warm start's mIoU).
        scale: multiply values (100 for fractions shown in percent).
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    df = seed_curves(runs, column, kind)
    for method, g in df.groupby("method", sort=False):
        stats = g.groupby("iter")["value"].agg(["mean", "min", "max"]).sort_index() * scale
        iters = stats.index.to_numpy()
        mean, lo, hi = (stats[c].to_numpy() for c in ("mean", "min", "max"))
        if start is not None and (len(iters) == 0 or iters[0] != 0):
            iters, mean = np.r_[0, iters], np.r_[start, mean]
            lo, hi = np.r_[start, lo], np.r_[start, hi]
        n = g["seed"].nunique()
        (line,) = ax.plot(
            iters, mean, marker="o", ms=3, label=f"{method} ({n} seed{'s' * (n > 1)})"
        )
        ax.fill_between(iters, lo, hi, color=line.get_color(), alpha=0.15, lw=0)
    ax.set_xlabel("iteration")
    ax.set_ylabel(ylabel or column)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return ax
