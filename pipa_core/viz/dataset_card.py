"""Dataset card of the synthetic benchmark: example images, label maps and class frequencies."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns

# A bare Figure (no pyplot) renders off-screen without touching the global
# backend, so importing this module never stops notebooks from showing figures.
from matplotlib.figure import Figure

from pipa_core.data.synthetic.cache import image_path, read_manifest
from pipa_core.data.synthetic.dataset import read_image, read_label
from pipa_core.labels import CLASSES, PALETTE, colorize


def class_frequency_table(root: str | os.PathLike) -> pd.DataFrame:
    """Percent of labelled pixels per class (rows) for every split of the cache (columns)."""
    man = read_manifest(root)
    cols = {}
    for key, counts in man["class_pixels"].items():
        c = np.asarray(counts, dtype=np.float64)
        cols[key] = 100.0 * c / max(c.sum(), 1.0)
    return pd.DataFrame(cols, index=list(CLASSES))


def make_dataset_card(
    root: str | os.PathLike, out_path: str | os.PathLike, n_examples: int = 3
) -> Path:
    """Write the dataset card figure to ``out_path`` (PNG) and return its path.

    Top: ``n_examples`` source and target train images with their colourised
    label maps. Bottom: class-frequency bars (percent of pixels, log scale) of
    source train and target train.
    """
    root, out_path = Path(root), Path(out_path)
    man = read_manifest(root)
    fig = Figure(figsize=(4.2 * n_examples, 11.5), dpi=110)
    grid = fig.add_gridspec(5, n_examples, height_ratios=[1, 1, 1, 1, 2.4])
    for r, domain in enumerate(("source", "target")):
        n = man["counts"][f"{domain}/train"]
        for c in range(n_examples):
            i = (c * 7) % n
            img = read_image(image_path(root, domain, "train", i)).permute(1, 2, 0).numpy()
            lab = read_label(image_path(root, domain, "train", i, "labels")).numpy()
            for k, arr in enumerate((img, colorize(lab))):
                ax = fig.add_subplot(grid[2 * r + k, c])
                ax.imshow(arr, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if c == 0:
                    ax.set_ylabel(f"{domain}\n{'image' if k == 0 else 'label'}", fontsize=11)
    table = class_frequency_table(root)[["source/train", "target/train"]]
    long = table.reset_index(names="class").melt(
        id_vars="class", var_name="split", value_name="percent"
    )
    ax = fig.add_subplot(grid[4, :])
    sns.barplot(
        data=long, x="class", y="percent", hue="split", ax=ax, palette=["#d95f02", "#1b9e77"]
    )
    ax.set_yscale("log")
    ax.set_ylabel("% of pixels (log)")
    ax.set_xlabel("")
    ax.tick_params(axis="x", rotation=45)
    for tick, rgb in zip(ax.get_xticklabels(), PALETTE):
        tick.set_color(np.asarray(rgb) / 255.0 * 0.8)
        tick.set_horizontalalignment("right")
    fig.suptitle(
        f"Synthetic sim-to-real benchmark (preset {man['size']}, seed {man['seed']}, "
        f"{man['height']}x{man['width']}, generator v{man['version']})",
        fontsize=13,
    )
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.stem}.tmp.png")
    fig.savefig(tmp)
    os.replace(tmp, out_path)
    return out_path
