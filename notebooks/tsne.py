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
# # t-SNE of pixel embeddings
#
# The papers' "Figure 4": pixel features of a baseline and of PiPa, projected to
# 2-D. Pixel contrast should make classes form **compact, separated clusters**,
# and adaptation should put **source and target pixels of a class together**.
#
# Recipe (docs/analysis.md): run the model over labelled source and target
# images, take the decoder feature (`embedding="feat"`) or a projection head's
# output (`"pixel"`), bring labels to feature resolution (nearest), sample at
# most `n_per_class` pixels per class and per domain (balanced, or road and sky
# would be all you see), then t-SNE: it minimises
# $\mathrm{KL}(P\,\|\,Q)$ between neighbourhood probabilities in feature space
# ($P$, Gaussian, width set by the perplexity) and in the plane ($Q$, Student-t).
# Read clusters, not distances between clusters.

# %% tags=["parameters"]
runs = {
    "source-only": "runs/quickstart/source_only/seed0",
    "DACS": "runs/quickstart/dacs/seed0",
    "PiPa": "runs/quickstart/pipa/seed0",
}  # panel title -> run directory or released .pth (default: the quickstart's runs)
which = "student"  # "student" or "teacher" weights (released files also "imagenet")
embedding = "feat"  # "feat" (decoder), "pixel" / "patch" / "temporal" (a projection head), "proj_head" (released PiPa)
benchmark = None  # None: the first run's; needed when every entry is a released .pth
trust_checkpoint = False  # released files only: allow objects weights_only refuses
normalize = False  # L2-normalise embeddings first (the geometry the contrastive loss sees)
data_root = None  # None: the run's data.data_root
max_images = 50  # images per domain
n_per_class = 100  # pixels per class and domain
max_pixels = 3000  # cap on the total number of points
perplexity = 30.0  # t-SNE neighbourhood size (5 to 50)
tsne_iters = 1000  # t-SNE optimisation iterations
tsne_threads = 1  # t-SNE threads: raise only on a free many-core machine (None: all cores)
backend = "sklearn"  # "sklearn" (the reference), or "opentsne" (faster; needed by fit_on)
fit_on = None  # "source": map fitted on source pixels, target placed in it (opentsne)
seed = 0  # seeds the pixel sampling and t-SNE
out_dir = "runs/analysis/tsne"  # tsne.png and tsne.json
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
globals().update(
    check_parameters(
        globals(),
        {
            "max_images": int,
            "n_per_class": int,
            "max_pixels": int,
            "perplexity": float,
            "tsne_iters": int,
            "tsne_threads": Optional[int],
            "seed": int,
            "num_threads": Optional[int],
        },
    )
)
notebook_setup(num_threads)  # repository root as cwd (data/, runs/, figures/), threads, display

# %%
from pipa_core.experiments.runs import analysis_datasets, load_run_config, load_segmentor
from pipa_core.uda.distributed import resolve_device

dev = resolve_device(device)
# every run is read on the first run's benchmark (or on `benchmark`)
cfg = load_run_config(next(iter(runs.values())), benchmark, trust_checkpoint)
if benchmark is not None:
    cfg.data.benchmark = benchmark
datasets = analysis_datasets(cfg, data_root, max_images=max_images)
{k: len(v) for k, v in datasets.items()}

# %% [markdown]
# ## 1. Sample pixel embeddings (balanced per class and domain)

# %%
from pipa_core.eval.features import extract_pixel_embeddings

embeddings = {}
for title, run in runs.items():
    model = load_segmentor(run, which, device=dev, trust_checkpoint=trust_checkpoint)
    embeddings[title] = extract_pixel_embeddings(
        model,
        datasets,
        embedding=embedding,
        n_per_class=n_per_class,
        max_pixels=max_pixels,
        normalize=normalize,
        seed=seed,
    )
pd.DataFrame(
    {t: {d: sum(c.values()) for d, c in e.counts().items()} for t, e in embeddings.items()}
)

# %% [markdown]
# ## 2. t-SNE, side by side (colour = class, marker = domain)

# %%
from pipa_core.eval.tsne import tsne
from pipa_core.io import atomic_write_json
from pipa_core.viz import save_figure, tsne_scatter

maps = {
    t: tsne(
        e,
        perplexity=perplexity,
        max_iter=tsne_iters,
        seed=seed,
        backend=backend,
        threads=tsne_threads,
        fit_on=fit_on,
    )
    for t, e in embeddings.items()
}
fig = tsne_scatter(maps)
print("saved", save_figure(fig, Path(out_dir) / "tsne.png"))
atomic_write_json(
    Path(out_dir) / "tsne.json",
    {"embedding": embedding, "runs": runs, "maps": {t: m.to_dict() for t, m in maps.items()}},
)
