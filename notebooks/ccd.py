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
# # Class center distance (CCD)
#
# SPCL's Fig. 5 (after FADA): how compact each class is relative to its distance
# from the others. For class $i$ with centre $\mu_i$ and pixel set $S_i$,
#
# $$\mathrm{CCD}(i) = \frac{1}{C-1}\sum_{j\neq i}\frac{\frac{1}{|S_i|}\sum_{x\in S_i}\lVert x-\mu_i\rVert^2}{\lVert\mu_i-\mu_j\rVert^2}$$
#
# **Lower is more discriminative.** Computed on whole loaders with streaming
# sums (never holding all features), per domain (source, target) and pooled
# (`all`). Classes absent from the data are excluded and $C$ counts the present
# classes (docs/analysis.md). SPCL uses 1000 source + 1000 target images.

# %% tags=["parameters"]
runs = {
    "source-only": "runs/quickstart/source_only/seed0",
    "DACS": "runs/quickstart/dacs/seed0",
    "PiPa": "runs/quickstart/pipa/seed0",
}  # bar label -> run directory or released .pth (default: the quickstart's runs)
which = "student"  # "student" or "teacher" weights (released files also "imagenet")
embedding = "feat"  # "feat" (decoder), "pixel" / "patch" / "temporal" (a projection head), "proj_head" (released PiPa)
benchmark = None  # None: the first run's; needed when every entry is a released .pth
trust_checkpoint = False  # released files only: allow objects weights_only refuses
classes = None  # None: the benchmark's first protocol (e.g. syn16); or a list of train IDs
data_root = None  # None: the run's data.data_root
max_images = 100  # images per domain (SPCL: 1000)
out_dir = "runs/analysis/ccd"  # ccd_source.png, ccd_target.png and ccd.json
device = "auto"  # "auto": GPU if present
num_threads = None  # torch CPU threads; None: torch's default

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
globals().update(check_parameters(globals(), {"max_images": int, "num_threads": Optional[int]}))
notebook_setup(num_threads)  # repository root as cwd (data/, runs/, figures/), threads, display

# %%
from pipa_core.config import resolve_benchmark
from pipa_core.experiments.runs import analysis_datasets, load_run_config, load_segmentor
from pipa_core.uda.distributed import resolve_device

dev = resolve_device(device)
# every run is read on the first run's benchmark (or on `benchmark`)
cfg = load_run_config(next(iter(runs.values())), benchmark, trust_checkpoint)
if benchmark is not None:
    cfg.data.benchmark = benchmark
datasets = analysis_datasets(cfg, data_root, max_images=max_images)
classes = classes if classes is not None else resolve_benchmark(cfg).protocols[0]

# %% [markdown]
# ## 1. CCD per class, per domain

# %%
from pipa_core.eval.ccd import class_center_distance

results = {}
for title, run in runs.items():
    model = load_segmentor(run, which, device=dev, trust_checkpoint=trust_checkpoint)
    results[title] = class_center_distance(model, datasets, embedding=embedding, classes=classes)
    display(Markdown(results[title].to_markdown(title)))

# %% [markdown]
# ## 2. SPCL Fig. 5 style: one bar per model and class

# %%
from pipa_core.io import atomic_write_json
from pipa_core.viz import ccd_barplot, ccd_table, save_figure

for domain in ("target", "source"):  # target first: what adaptation is about
    display(Markdown(f"**{domain}** features: CCD per class (lower = more discriminative)"))
    display(ccd_table(results, domain))
    fig = ccd_barplot(results, domain)
    save_figure(fig, Path(out_dir) / f"ccd_{domain}.png")
atomic_write_json(
    Path(out_dir) / "ccd.json",
    {"embedding": embedding, "runs": runs, "ccd": {t: r.to_dict() for t, r in results.items()}},
)
