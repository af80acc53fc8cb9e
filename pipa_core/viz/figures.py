"""Saving figures atomically, class legends and qualitative grids (image | GT | prediction | error).

Figures are made with matplotlib's pyplot so that notebooks display them
inline; scripts and tests run under the non-interactive Agg backend.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from pipa_core.io import atomic_open
from pipa_core.labels import CLASSES, PALETTE
from pipa_core.viz.masks import colorize, error_map, to_numpy_label, to_uint8_image

_FORMATS = {".png", ".pdf", ".svg", ".jpg", ".jpeg", ".eps"}


def save_figure(fig, path: str | os.PathLike, dpi: int = 150, close: bool = False) -> Path:
    """Write ``fig`` to ``path`` atomically (a crash never leaves half an image); return the path.

    The format comes from the suffix (``.png``, ``.pdf``, ``.svg``, ``.jpg``, ``.eps``).
    """
    path = Path(path)
    fmt = path.suffix.lower()
    if fmt not in _FORMATS:
        raise ValueError(f"cannot tell the figure format of {path}; use one of {sorted(_FORMATS)}")
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format=fmt.lstrip(".").replace("jpg", "jpeg"), dpi=dpi, bbox_inches="tight")
    if close:
        import matplotlib.pyplot as plt

        plt.close(fig)
    return path


def class_color(train_id: int) -> tuple[float, float, float]:
    """Matplotlib RGB (0..1) of a train ID in the Cityscapes palette."""
    return tuple(c / 255.0 for c in PALETTE[train_id])


def class_legend_handles(class_ids: Sequence[int]) -> list:
    """Legend patches (Cityscapes colour + name) for the given train IDs."""
    from matplotlib.patches import Patch

    return [Patch(facecolor=class_color(i), edgecolor="0.3", label=CLASSES[i]) for i in class_ids]


def qualitative_grid(
    images: Sequence,
    labels: Sequence,
    preds: Mapping[str, Sequence] | Sequence,
    *,
    names: Sequence[str] | None = None,
    show_error: bool = True,
    legend: bool = True,
    panel_size: float = 2.6,
):
    """A grid with one row per image: image, ground truth, each model's prediction (and error map).

    Args:
        images: ``N`` images ``(3, H, W)`` in [0, 1].
        labels: ``N`` ground-truth maps ``(H, W)``.
        preds: ``{model_name: N prediction maps (H, W)}`` or one list of maps (``"prediction"``).
        names: optional row titles (e.g. sample names).
        show_error: add an error map (white = wrong) after each prediction.
        legend: add the legend of the classes that appear.
    Returns:
        a matplotlib ``Figure``.
    """
    import matplotlib.pyplot as plt

    if not isinstance(preds, Mapping):
        preds = {"prediction": preds}
    n = len(images)
    if n == 0 or len(labels) != n or any(len(p) != n for p in preds.values()):
        raise ValueError(
            f"need the same positive number of images ({n}), labels ({len(labels)}) and "
            f"predictions per model ({ {k: len(v) for k, v in preds.items()} })"
        )
    cols = ["image", "ground truth"]
    for k in preds:
        cols += [k] + ([f"{k}: errors"] if show_error else [])
    fig, axes = plt.subplots(
        n, len(cols), figsize=(panel_size * len(cols), panel_size * 0.6 * n + 0.8), squeeze=False
    )
    seen: set[int] = set()
    for r in range(n):
        gt = to_numpy_label(labels[r])
        panels = [to_uint8_image(images[r]), colorize(gt)]
        seen.update(int(c) for c in np.unique(gt) if c < len(CLASSES))
        for maps in preds.values():
            pr = to_numpy_label(maps[r])
            seen.update(int(c) for c in np.unique(pr) if c < len(CLASSES))
            panels.append(colorize(pr))
            if show_error:
                panels.append(error_map(pr, gt))
        for c, (ax, panel) in enumerate(zip(axes[r], panels)):
            ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(cols[c], fontsize=9)
        if names is not None:
            axes[r][0].set_ylabel(str(names[r]), fontsize=8)
    if legend and seen:
        fig.legend(
            handles=class_legend_handles(sorted(seen)),
            loc="lower center",
            ncol=min(len(seen), 10),
            fontsize=7,
            frameon=False,
            bbox_to_anchor=(0.5, -0.02),
        )
    fig.tight_layout(rect=(0, 0.06 if legend else 0, 1, 1))
    return fig
