"""Seaborn / matplotlib figures for the analysis notebooks.

* :func:`confusion_heatmap`: row-normalised confusion matrix with class names;
* :func:`tsne_scatter`: t-SNE panels side by side, colour = class (Cityscapes
  palette), marker = domain, hollow = placed into a shared map;
* :func:`ccd_barplot` / :func:`ccd_table`: class center distance per class in the
  style of SPCL Fig. 5 (one bar per model and class, lower is better).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from pipa_core.eval.ccd import CCDResult
from pipa_core.eval.tsne import TSNEResult
from pipa_core.labels import CLASSES, check_protocol
from pipa_core.viz.figures import class_color, class_legend_handles

#: Marker per domain index in t-SNE plots (source, target, ...).
DOMAIN_MARKERS = ("o", "^", "s", "D", "P", "X")


def confusion_heatmap(
    cm: torch.Tensor | np.ndarray,
    protocol: str = "cs19",
    *,
    title: str = "",
    annotate: bool = True,
    ax=None,
):
    """Heatmap of a confusion matrix ``(C, C)`` (rows = ground truth), row-normalised to percent.

    Only the protocol's classes are shown; a row of a class absent from the
    ground truth stays empty (not 0 %).

    Returns:
        the matplotlib ``Figure``.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    m = (
        cm.detach().cpu().double().numpy()
        if isinstance(cm, torch.Tensor)
        else np.asarray(cm, float)
    )
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"confusion matrix must be square (C, C), got shape {m.shape}")
    ids = list(check_protocol(protocol))
    if max(ids) >= m.shape[0]:
        raise ValueError(
            f"protocol {protocol!r} needs {max(ids) + 1} classes, matrix has {m.shape[0]}"
        )
    sub = m[np.ix_(ids, ids)]
    rows = sub.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        pct = np.where(rows > 0, 100.0 * sub / rows, np.nan)
    names = [CLASSES[i] for i in ids]
    if ax is None:
        size = 0.42 * len(ids) + 2
        fig, ax = plt.subplots(figsize=(size + 1.5, size))
    else:
        fig = ax.figure
    sns.heatmap(
        pct,
        ax=ax,
        cmap="Blues",
        vmin=0,
        vmax=100,
        square=True,
        annot=annotate,
        fmt=".0f",
        annot_kws={"fontsize": 6},
        xticklabels=names,
        yticklabels=names,
        cbar_kws={"label": "% of ground-truth pixels"},
    )
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    ax.set_title(title or f"confusion matrix ({protocol}, row-normalised)")
    fig.tight_layout()
    return fig


def tsne_scatter(
    results: TSNEResult | Mapping[str, TSNEResult],
    *,
    point_size: float = 6.0,
    alpha: float = 0.7,
    panel_size: float = 5.0,
    share_axes: bool | None = None,
):
    """t-SNE panels side by side (one per checkpoint), colour = class, marker = domain.

    Points placed into a shared map (``TSNEResult.placed``, see
    :func:`pipa_core.eval.tsne.fit_map`) are drawn hollow, fitted points filled.

    Args:
        results: one :class:`TSNEResult` or ``{title: TSNEResult}`` (e.g. baseline, PiPa).
        share_axes: give all panels the same x/y range. ``None`` (default): share when
            some result has placed points, i.e. the panels are one shared map; separate
            t-SNE fits have unrelated coordinates, so their axes are not shared.
    Returns:
        the matplotlib ``Figure``.
    """
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    if isinstance(results, TSNEResult):
        results = {"": results}
    if not results:
        raise ValueError("no t-SNE result to plot")
    any_placed = any(r.placed is not None and bool(np.any(r.placed)) for r in results.values())
    share = any_placed if share_axes is None else share_axes
    fig, axes = plt.subplots(
        1,
        len(results),
        figsize=(panel_size * len(results), panel_size + 0.8),
        squeeze=False,
        sharex=share,
        sharey=share,
    )
    classes: set[int] = set()
    domain_names: tuple[str, ...] = ()
    for ax, (title, res) in zip(axes[0], results.items()):
        placed = np.zeros(len(res.labels), bool) if res.placed is None else res.placed
        for d, _dname in enumerate(res.domain_names):
            for c in np.unique(res.labels[res.domains == d]):
                for hollow in (False, True):
                    sel = (res.domains == d) & (res.labels == c) & (placed == hollow)
                    if not sel.any():
                        continue
                    color = class_color(int(c))
                    ax.scatter(
                        res.coords[sel, 0],
                        res.coords[sel, 1],
                        s=point_size,
                        marker=DOMAIN_MARKERS[d % len(DOMAIN_MARKERS)],
                        alpha=alpha,
                        **(
                            {"facecolors": "none", "edgecolors": [color], "linewidths": 0.6}
                            if hollow
                            else {"color": color, "linewidths": 0}
                        ),
                    )
                classes.add(int(c))
        if len(res.domain_names) > len(domain_names):
            domain_names = res.domain_names
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
    handles = class_legend_handles(sorted(classes))
    handles += [
        Line2D(
            [],
            [],
            marker=DOMAIN_MARKERS[d % len(DOMAIN_MARKERS)],
            color="0.3",
            linestyle="",
            label=n,
        )
        for d, n in enumerate(domain_names)
    ]
    if any_placed:
        handles.append(
            Line2D(
                [],
                [],
                marker="o",
                color="0.3",
                markerfacecolor="none",
                linestyle="",
                label="placed into the map",
            )
        )
    fig.legend(
        handles=handles, loc="lower center", ncol=min(len(handles), 8), fontsize=8, frameon=False
    )
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    return fig


def ccd_table(results: CCDResult | Mapping[str, CCDResult], domain: str = "target"):
    """CCD per class (columns) and model (rows) plus the mean, as a pandas DataFrame."""
    import pandas as pd

    if isinstance(results, CCDResult):
        results = {"model": results}
    rows = {}
    for name, res in results.items():
        if domain not in res.ccd:
            raise KeyError(f"{name}: no domain {domain!r}; available: {sorted(res.ccd)}")
        row = {CLASSES[i]: float(res.ccd[domain][i]) for i in res.class_ids}
        row["mean"] = res.mean(domain)
        rows[name] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def ccd_barplot(
    results: CCDResult | Mapping[str, CCDResult],
    domain: str = "target",
    *,
    title: str = "",
    log: bool = False,
):
    """Grouped bars of CCD per class, one colour per model (SPCL Fig. 5 style; lower is better).

    Returns:
        the matplotlib ``Figure``.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    table = ccd_table(results, domain).drop(columns="mean")
    long = table.reset_index(names="model").melt(
        id_vars="model", var_name="class", value_name="CCD"
    )
    long = long[np.isfinite(long["CCD"])]
    fig, ax = plt.subplots(
        figsize=(max(6.0, 0.4 * table.shape[1] * max(1, len(table)) ** 0.5 + 2), 3.6)
    )
    sns.barplot(data=long, x="class", y="CCD", hue="model", ax=ax, palette="deep")
    ax.set_xlabel("")
    ax.set_ylabel("CCD (lower is better)")
    ax.tick_params(axis="x", rotation=60, labelsize=8)
    if log:
        ax.set_yscale("log")
    ax.set_title(title or f"CCD per class, {domain}")
    fig.tight_layout()
    return fig
