"""Training curves over seeds: mIoU vs iteration, the teacher's pseudo-label accuracy.

A curve is the mean over seeds of one method's values per iteration, with a band
from the lowest to the highest seed; the long table it plots comes from
:func:`pipa_core.experiments.runs.seed_curves` (one column of each run's
``metrics.jsonl``).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd


def plot_seed_curves(
    curves: pd.DataFrame,
    ax=None,
    start: Optional[float] = None,
    scale: float = 1.0,
    ylabel: Optional[str] = None,
    title: Optional[str] = None,
):
    """Plot the mean over seeds of each method's curve, with a min-max band; returns the axes.

    Args:
        curves: long table ``(method, seed, iter, value)``, e.g.
            :func:`pipa_core.experiments.runs.seed_curves` of the runs' ``metrics.jsonl``.
        start: a value at iteration 0 shared by every method (the warm start's mIoU).
        scale: multiply values (100 for fractions shown in percent).
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    for method, g in curves.groupby("method", sort=False):
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
    ax.set_ylabel(ylabel or "value")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return ax
