"""Ablation tables and bar plots: mean ± std over seeds for each setting.

Input is a long table with one row per run, e.g.::

    setting     seed  mIoU
    baseline    0     41.2
    +pixel      0     43.0
    ...
"""

from __future__ import annotations

from collections.abc import Sequence


def ablation_table(runs, value: str = "mIoU", by: str | Sequence[str] = "setting", order=None):
    """Mean, std (sample, ddof=1; 0 for one run), number of runs and a ``"mean ± std"`` string per group.

    Args:
        runs: pandas DataFrame (or list of dicts) with one row per run.
        value: column to aggregate.
        by: grouping column(s).
        order: optional order of the groups (defaults to first appearance).
    Returns:
        a DataFrame indexed by ``by`` with columns ``mean, std, runs, mean ± std``.
    """
    import pandas as pd

    df = pd.DataFrame(runs) if not isinstance(runs, pd.DataFrame) else runs
    by = [by] if isinstance(by, str) else list(by)
    missing = [c for c in [*by, value] if c not in df.columns]
    if missing:
        raise KeyError(f"ablation runs lack column(s) {missing}; columns are {list(df.columns)}")
    g = df.groupby(by, sort=False)[value]
    out = pd.DataFrame({"mean": g.mean(), "std": g.std(ddof=1).fillna(0.0), "runs": g.size()})
    out["mean ± std"] = [f"{m:.2f} ± {s:.2f}" for m, s in zip(out["mean"], out["std"])]
    if order is not None:
        out = out.loc[[o for o in order if o in out.index]]
    return out


def ablation_barplot(
    runs, value: str = "mIoU", x: str = "setting", hue: str | None = None, title: str = ""
):
    """Bars of the mean with ± std error bars and one dot per seed.

    Returns:
        the matplotlib ``Figure``.
    """
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    df = pd.DataFrame(runs) if not isinstance(runs, pd.DataFrame) else runs
    for c in [x, value] + ([hue] if hue else []):
        if c not in df.columns:
            raise KeyError(f"ablation runs lack column {c!r}; columns are {list(df.columns)}")
    fig, ax = plt.subplots(figsize=(1.3 * df[x].nunique() + 2.5, 3.8))
    # Without a hue, colour the bars by setting (seaborn ties a palette to a hue).
    sns.barplot(
        data=df,
        x=x,
        y=value,
        hue=hue or x,
        legend=hue is not None,
        errorbar="sd",
        capsize=0.15,
        palette="deep",
        ax=ax,
    )
    # One dark dot per seed on top of its bar.
    dots = (
        {"hue": hue, "dodge": True, "palette": ["0.15"] * df[hue].nunique()}
        if hue
        else {"color": "0.15"}
    )
    sns.stripplot(data=df, x=x, y=value, size=4, legend=False, ax=ax, **dots)
    ax.set_ylabel(f"{value} (mean ± std over seeds)")
    ax.set_xlabel("")
    ax.set_title(title)
    fig.tight_layout()
    return fig
