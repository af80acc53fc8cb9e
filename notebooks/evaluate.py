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
# # Evaluate a checkpoint
#
# Per-class IoU on a labelled split (one confusion matrix over the whole split),
# next to the published numbers where the benchmark matches, the confusion
# matrix, a qualitative grid and an interactive browser.
#
# `run` may also be a checkpoint released with the official DAFormer / HRDA / MIC /
# PiPa code (e.g. PiPa's `pipa_gta_to_cs.pth`): give its `benchmark` (the file
# records no pipa_core config); it is scored with that benchmark's protocol for its
# method (docs/analysis.md, "Released checkpoints").

# %% tags=["parameters"]
run = "runs/quickstart/pipa/seed0"  # run directory, checkpoints/*.pt, or a released .pth
which = "student"  # "student" or "teacher" (EMA); released files also "imagenet"
benchmark = None  # None: the run's benchmark (a released file needs it, e.g. "gta2cs")
trust_checkpoint = False  # released files only: allow objects weights_only refuses
data_root = None  # None: the run's data.data_root
mode = None  # "whole" or "slide" inference; None: the run's eval setting
max_samples = None  # first N images of the split; None: all
n_examples = 4  # rows of the qualitative grid
out_dir = None  # None: <run>/eval
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

from pipa_core.experiments.notebook import check_parameters, notebook_setup, show_table

# parameters as the command line checks them (a wrong type fails here, in one line)
globals().update(
    check_parameters(
        globals(), {"max_samples": Optional[int], "n_examples": int, "num_threads": Optional[int]}
    )
)
notebook_setup(num_threads)  # repository root as cwd (data/, runs/, figures/), threads, display

# %%
from torch.utils.data import Subset

from pipa_core.config import resolve
from pipa_core.data.benchmarks import build_val_dataset
from pipa_core.experiments.runs import evaluate_run, load_run_config, load_segmentor
from pipa_core.uda.distributed import resolve_device

dev = resolve_device(device)
cfg = load_run_config(run, benchmark, trust_checkpoint)
if benchmark is not None:
    cfg.data.benchmark = benchmark
resolved = resolve(cfg, validate=False)  # what the run used: benchmark, protocol, ...
spec = resolved.spec
model = load_segmentor(run, which, device=dev, trust_checkpoint=trust_checkpoint)
if model.pretrained_report is not None:  # a released file: what was loaded, what was not
    print(model.pretrained_report.summary())
# the split the trainer scored, for the figures and the browser (labels at image size);
# the mIoU below is computed on full-resolution labels by evaluate_run
val = build_val_dataset(spec, data_root or cfg.data.data_root)
if max_samples is not None:
    val = Subset(val, range(min(max_samples, len(val))))
if out_dir:
    out = Path(out_dir)
elif Path(run).is_dir() or Path(run).parent.name == "checkpoints":  # a pipa_core run
    out = Path(run if Path(run).is_dir() else Path(run).parent.parent) / "eval"
else:  # a released file: never write next to a downloaded checkpoint
    out = Path("runs/analysis/eval") / Path(run).stem
settings = resolved.eval
print(
    f"{cfg.name}: {len(val)} images of {spec.name} ({spec.val.root}/{spec.val.split}), "
    f"{mode or settings.mode} inference, protocols {settings.protocols}"
)

# %% [markdown]
# ## 1. mIoU per class
#
# IoU$_c$ = TP / (TP + FP + FN) from the confusion matrix of the whole split; the
# mean runs over the protocol's classes that are present.

# %%
from pipa_core.eval.published import comparison_table
from pipa_core.io import atomic_write_json

# the trainer's own evaluation (pipa_core.experiments.runs.evaluate_run): same protocol,
# so without overrides this is the run's result.json mIoU
res = evaluate_run(
    run,
    which,
    data_root=data_root,
    benchmark=benchmark,
    mode=mode,
    max_samples=max_samples,
    device=dev,
    progress=True,
    model=model,  # loaded above, for the figures and the browser too
    trust_checkpoint=trust_checkpoint,
)
for proto, r in res["protocols"].items():
    display(Markdown(f"### {proto}: mIoU {r['mIoU']:.2f} ({res['num_images']} images)"))
    display(show_table(pd.DataFrame({cfg.name: r["per_class_IoU"]}, dtype=float)))  # class rows
    display(Markdown(comparison_table(spec.name, {cfg.name: r["mIoU"]}, protocol=proto)))
atomic_write_json(out / "eval.json", res)

# %% [markdown]
# ## 2. Confusion matrix
#
# Row-normalised: each row shows where the ground-truth pixels of a class go.
# Off-diagonal mass reveals systematic confusions (e.g. sidewalk → road).

# %%
from pipa_core.viz import confusion_heatmap, save_figure

fig = confusion_heatmap(
    torch.tensor(res["confusion_matrix"]), settings.protocols[0], title=cfg.name
)
print("saved", save_figure(fig, out / "confusion.png"))

# %% [markdown]
# ## 3. Qualitative results

# %%
from pipa_core.eval.features import predict_labels
from pipa_core.viz import qualitative_grid

samples = [val[i] for i in range(min(n_examples, len(val)))]
with torch.no_grad():
    preds = [predict_labels(model, s["img"][None].to(dev))[0].cpu() for s in samples]
fig = qualitative_grid(
    [s["img"] for s in samples],
    [s["label"] for s in samples],
    {cfg.name: preds},
    names=[s["name"].split("/")[-1] for s in samples],
)
print("saved", save_figure(fig, out / "qualitative.png"))

# %% [markdown]
# ## 4. Browse the split (drag the slider)
#
# The browser is a live widget over the images scored above. In a saved notebook
# opened later, or after a kernel restart, it shows "Error displaying widget: model
# not found": run the notebook (or this cell after the ones above it) again.

# %%
from pipa_core.viz import SplitBrowser

browser = SplitBrowser(val, model, device=dev)
browser.widget
