# ---
# jupyter:
#   jupytext:
#     notebook_metadata_filter: kernelspec,jupytext,-jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Quickstart: domain adaptation on the embedded sim-to-real benchmark
#
# Unsupervised domain adaptation (UDA) for semantic segmentation: a model learns
# from labelled **source** images (a game engine) and unlabelled **target**
# images (the real world), and is judged on the target. This notebook runs the
# whole comparison on a CPU in minutes, on a procedurally generated street
# benchmark that ships with `pipa_core` (no download):
#
# 1. look at both domains;
# 2. the protocol: one source model as the warm start of every method;
# 3. train source-only (the control), the target oracle, DACS self-training and PiPa, over 3 seeds;
# 4. the table: mIoU mean ± std and the share of the domain gap each method closes;
# 5. learning curves, per-class IoU, the teacher's pseudo-label accuracy, predictions.
#
# Numbers on this toy benchmark are *not* the paper's numbers (`evaluate.ipynb`
# puts those beside yours on the real benchmarks).

# %% tags=["parameters"]
data_root = "data"  # the synthetic benchmark is generated in <data_root>/synthetic
out_dir = "runs/quickstart"  # runs (<method>/seed<k>), results.md and quickstart.json go here
figures_dir = "runs/quickstart/figures"  # quickstart_*.png and dataset_card.png (figures/ holds the README copies)
overrides = []  # settings for every run: section.key assignments, as in train.ipynb
seeds = [0, 1, 2]  # one run per method and seed
jobs = None  # runs at a time; None: one per CPU core (at most 2), 1 with a GPU
n_examples = 3  # rows of the qualitative grid
num_threads = None  # torch CPU threads of this kernel; None: torch's default

# %%
import json
from pathlib import Path
from typing import Optional

import matplotlib.pyplot as plt
import pandas as pd
import torch
from IPython.display import Image, Markdown, display

from pipa_core.experiments.notebook import check_parameters, notebook_setup

# parameters as the command line checks them (a wrong type fails here, in one line)
globals().update(
    check_parameters(
        globals(),
        {
            "seeds": list[int],
            "jobs": Optional[int],
            "n_examples": int,
            "num_threads": Optional[int],
        },
    )
)
notebook_setup(num_threads)  # repository root as cwd (data/, runs/, figures/), threads, display

# %% [markdown]
# ## 1. The two domains
#
# The **source** domain looks like a game: flat shading, saturated colours,
# crisp outlines. The **target** domain looks "real": textures, lighting, haze,
# colour cast, blur, sensor noise, a lower camera and a car bonnet; its street
# layouts and class frequencies differ too. Labels use the 19 Cityscapes classes
# (train IDs, 255 = ignore), exactly like GTA5 → Cityscapes.

# %%
from pipa_core.data.synthetic import ensure_synthetic
from pipa_core.experiments.comparisons import QUICKSTART_METHODS, quickstart_config
from pipa_core.viz.dataset_card import class_frequency_table, make_dataset_card

# %matplotlib inline
configs = {
    m: quickstart_config(m, seeds[0], out_dir, data_root, overrides) for m in QUICKSTART_METHODS
}
root = ensure_synthetic(Path(data_root) / "synthetic", size=configs["pipa"].data.synthetic_size)
card = make_dataset_card(root, Path(figures_dir) / "dataset_card.png")
display(Image(filename=str(card)))
freq = class_frequency_table(root)
freq[(freq > 0).any(axis=1)].round(2)

# %% [markdown]
# ## 2. The protocol
#
# A model trained from random weights on a few hundred source images learns
# colour → class and is confidently wrong on the target; self-training from it
# only reinforces its mistakes. The real benchmarks avoid that with ImageNet
# weights; this tutorial does the two things the literature does without them
# (docs/training.md, "The CPU tutorial protocol"):
#
# * **one warm start**: a source model trained with standard appearance
#   augmentation (SimCLR's colour distortion and blur, sensor noise) for 8000
#   iterations, shipped with the package (`model.init_from="synthetic_warm_start"`,
#   made by `python -m pipa_core.warm_start`). Every method starts from it.
# * **the same schedule for every method**, from that model: **source only**
#   continues the source training (the control: any gain of the others is
#   adaptation, not extra training), the **target oracle** fine-tunes on target
#   labels (the upper bound), **DACS** self-trains (EMA teacher with DAFormer's
#   batch-statistics BatchNorm, confidence-weighted pseudo-labels, ClassMix,
#   colour jitter and blur on the mixed image) and **PiPa** adds
#   pixel- and patch-wise contrast to the same self-training.
#
# Each method runs once per seed (initialisation of the heads, data order,
# augmentation); the table reports mean ± sample standard deviation over seeds,
# the domain gap (oracle − source only) and the fraction of it each method closes.

# %%
cfg = configs["pipa"]
pd.DataFrame(
    {
        m: {
            "mode": c.uda.mode,
            "losses": " + ".join(c.losses.enabled) or "-",
            "iterations": c.optim.max_iters,
            "warm start": c.model.init_from,
            "EMA": c.uda.ema_alpha if c.uda.mode == "self_training" else "-",
            "threshold": c.uda.pseudo_threshold if c.uda.mode == "self_training" else "-",
        }
        for m, c in configs.items()
    }
).T

# %% [markdown]
# ## 3. Train every method for every seed
#
# Two runs at a time on two cores (one torch thread each). Finished runs with the
# same configuration and warm start are reused, an interrupted one is resumed, so
# this cell can be stopped and started again.

# %%
from pipa_core.experiments.comparisons import run_quickstart_table

table = run_quickstart_table(
    methods=QUICKSTART_METHODS,
    seeds=seeds,
    out_dir=out_dir,
    data_root=data_root,
    overrides=overrides,
    jobs=jobs,
)
display(Markdown(table["markdown"]))

# %% [markdown]
# ## 4. Learning curves
#
# Target val mIoU during training (mean over seeds; the band spans the seeds).
# Every curve starts from the warm start's mIoU.

# %%
from pipa_core.assets import asset_card
from pipa_core.experiments.runs import seed_curves
from pipa_core.viz import save_figure
from pipa_core.viz.curves import plot_seed_curves

labels = {r["method"]: r["label"] for r in table["rows"]}
runs = {labels[m]: dirs for m, dirs in table["runs"].items()}
start = asset_card("synthetic_warm_start").get("target_val_mIoU") if cfg.model.init_from else None
fig, ax = plt.subplots(figsize=(7, 4))
plot_seed_curves(seed_curves(runs, "mIoU"), ax=ax, start=start, ylabel="target val mIoU (%)")
print("saved", save_figure(fig, Path(figures_dir) / "quickstart_curves.png"))

# %% [markdown]
# ## 5. Per-class IoU
#
# Mean IoU over seeds per class (`n/a`: the class does not occur in the val split).

# %%
display(Markdown(table["per_class_markdown"]))
per_class = pd.DataFrame({r["label"]: r["per_class"] for r in table["rows"]}).astype(float)
fig, ax = plt.subplots(figsize=(11, 3.5))
per_class.plot.bar(ax=ax, width=0.8)
ax.set_ylabel("IoU (%)")
ax.set_title("target val IoU per class (mean over seeds)")
ax.legend(fontsize=8)
print("saved", save_figure(fig, Path(figures_dir) / "quickstart_per_class.png"))

# %% [markdown]
# ## 6. How good are the teacher's pseudo-labels?
#
# The target images of this benchmark keep their labels on disk, so we can
# measure what no real UDA run can: how often the teacher's pseudo-labels on the
# training crops are right (all labelled pixels, and the confident ones, with
# confidence ≥ the threshold), and how many pixels are confident. No loss ever
# reads these labels.

# %%
st = {labels[m]: table["runs"][m] for m in ("dacs", "pipa") if m in table["runs"]}
fig, axes = plt.subplots(1, 3, figsize=(14, 3.5))
for ax, (col, name) in zip(
    axes,
    [
        ("pseudo_acc", "pseudo-label accuracy (%)"),
        ("pseudo_acc_confident", "accuracy of confident pixels (%)"),
        ("pseudo_confident_labelled", "confident pixels (%)"),
    ],
):
    plot_seed_curves(seed_curves(st, col, kind="train"), ax=ax, scale=100, ylabel=name)
fig.tight_layout()
print("saved", save_figure(fig, Path(figures_dir) / "quickstart_pseudo_labels.png"))

# %% [markdown]
# ## 7. Predictions
#
# Image, ground truth, then each method's prediction (seed of the first run) and
# its error map (white = wrong, grey = ignore).

# %%
from pipa_core.eval.features import predict_labels
from pipa_core.experiments.runs import analysis_datasets, load_segmentor
from pipa_core.viz import qualitative_grid

first = {labels[m]: dirs[0] for m, dirs in table["runs"].items()}
val = analysis_datasets(next(iter(first.values())))["target"]  # target val, as the runs saw it
samples = [val[i] for i in range(n_examples)]
imgs = torch.stack([s["img"] for s in samples])
preds = {}
for title, run in first.items():
    model = load_segmentor(run)
    with torch.no_grad():
        preds[title] = list(predict_labels(model, imgs))
fig = qualitative_grid(
    [s["img"] for s in samples],
    [s["label"] for s in samples],
    preds,
    names=[s["name"].split("/")[-1] for s in samples],
)
print("saved", save_figure(fig, Path(figures_dir) / "quickstart_predictions.png"))

# %%
from pipa_core.io import atomic_write_json

summary = {
    "runs": {
        r["method"]: {"mIoU": r["mean"], "run_dirs": table["runs"][r["method"]]}
        for r in table["rows"]
    },
    "table": {k: v for k, v in table.items() if not k.endswith("markdown")},
}
atomic_write_json(Path(out_dir) / "quickstart.json", summary)
print("wrote", Path(out_dir) / "quickstart.json")

# %% [markdown]
# **Next:** `tsne.ipynb` and `ccd.ipynb` (feature analyses of these very runs),
# `ablation.ipynb` (which loss helps, from the same warm start), `video.ipynb`
# (PiPa++'s temporal contrast), `train.ipynb` (any benchmark), `evaluate.ipynb`.
