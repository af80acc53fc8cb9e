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
# # Ablation: which self-supervised loss helps?
#
# PiPa's ablation study adds its losses one at a time to the same self-training:
# self-training alone, + pixel contrast, + patch contrast, + both (and, on video
# benchmarks, + temporal contrast: PiPa++), each measured against the same
# control, source-only training with the same schedule and seeds. On the embedded
# benchmark every run starts from the tutorial's warm start with the quickstart's
# schedule, so the quickstart's source-only, DACS and PiPa runs are this table's
# control, first and last rows and are reused when they exist. The table and the
# plot come first; how they were made follows.

# %% tags=["parameters"]
benchmark = "synthetic"  # benchmark preset
method = "daformer"  # the self-training recipe the losses are added to
settings = None  # None: all for the benchmark; or a subset, e.g. ["self-training", "+pixel"]
control = True  # a source-only row first (same warm start, schedule and seeds); gains are over it
seeds = [0, 1, 2]  # one run per setting and seed
data_root = "data"  # where the datasets live
out_dir = "runs/ablation"  # <setting>/seed<k> run directories, ablation.json / .md / .png
reuse_from = ["runs/quickstart"]  # finished runs with the same configuration are taken from here
jobs = None  # runs at a time; None: one per CPU core (at most 2), 1 with a GPU
overrides = []  # passed to every run: section.key assignments, as in train.ipynb
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
        globals(), {"seeds": list[int], "jobs": Optional[int], "num_threads": Optional[int]}
    )
)
notebook_setup(num_threads)  # repository root as cwd (data/, runs/, figures/), threads, display

# %% [markdown]
# ## 1. The table: target mIoU, mean ± std over seeds

# %%
from pipa_core.experiments.comparisons import run_ablation

ablation = run_ablation(
    benchmark,
    method,
    settings=settings,
    seeds=seeds,
    out_dir=out_dir,
    data_root=data_root,
    overrides=overrides,
    jobs=jobs,
    reuse_from=reuse_from,
    control=control,
)
display(Markdown(ablation["markdown"]))

# %%
from pipa_core.viz import ablation_barplot, save_figure

runs = pd.DataFrame(ablation["runs"])
fig = ablation_barplot(runs, title=f"{benchmark}: {method} self-training + PiPa's losses")
print("saved", save_figure(fig, Path(out_dir) / "ablation.png"))

# %% [markdown]
# ## 2. How it was made
#
# One configuration per setting (the `method` preset with exactly the listed
# losses), one run per seed; every run of a setting differs only in its seed.
# The standard deviation is the sample standard deviation over seeds (0 for one seed).

# %%
from pipa_core.experiments.runs import load_run_config

rows = {}
for r in ablation["runs"]:
    if r["setting"] in rows:
        continue
    c = load_run_config(r["run_dir"])
    rows[r["setting"]] = {
        "losses": " + ".join(c.losses.enabled) or "-",
        "iterations": c.optim.max_iters,
        "warm start": c.model.init_from,
        "pixel α": c.losses.pixel.weight,
        "patch β": c.losses.patch.weight,
    }
display(pd.DataFrame(rows).T)
runs.pivot(index="seed", columns="setting", values="mIoU")[list(rows)]
