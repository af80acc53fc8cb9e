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
# # Video: temporal contrast (PiPa++) and temporal consistency
#
# On video benchmarks (VIPER → Cityscapes-Seq, SYNTHIA-Seq → Cityscapes-Seq, and the
# embedded `synthetic_seq` sequences, which run on a CPU) each
# target sample carries a **key frame** and a nearby **reference frame**. PiPa++'s temporal contrast treats the features at
# the *same pixel location* of the two frames as a positive pair (no optical
# flow) and other locations as negatives:
#
# $$\mathcal{L}_{temp} = -\sum_{p}\log\frac{r(e^{key}_p,e^{ref}_p)}{r(e^{key}_p,e^{ref}_p)+\sum_{q\neq p} r(e^{key}_p,e^{ref}_q)}$$
#
# We train PiPa with and without it and measure, besides mIoU, the **temporal
# consistency** of predictions across consecutive frames: the fraction of pixels
# whose class is unchanged, and the mIoU of frame $t+1$'s prediction against frame
# $t$'s. No flow is used, so real motion lowers both: compare models, not against 100.

# %% tags=["parameters"]
benchmark = "synthetic_seq"  # video benchmark preset: synthetic_seq, viper2csseq, synseq2csseq
data_root = "data"  # where the datasets live
settings = {"PiPa": "pipa", "PiPa++ (+temporal)": "pipa_pp"}  # title -> method
seeds = [0, 1, 2]  # runtime.seed of each pair of runs
max_iters = None  # None: the preset schedule
eval_max_samples = None  # evaluate on the first N target val images; None: all
overrides = []  # settings for every run, as in train.ipynb
max_pairs = None  # (key, reference) frame pairs for temporal consistency; None: all
out_dir = "runs/video"  # runs, video.json and figures
jobs = None  # runs at a time; None: one per CPU core (at most 2), 1 with a GPU
device = "auto"  # "auto": GPU if present
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
            "max_iters": Optional[int],
            "eval_max_samples": Optional[int],
            "max_pairs": Optional[int],
            "jobs": Optional[int],
            "num_threads": Optional[int],
        },
    )
)
notebook_setup(num_threads)  # repository root as cwd (data/, runs/, figures/), threads, display

# %%
from pipa_core.config import resolve_benchmark
from pipa_core.data.benchmarks import build_frame_pairs_dataset
from pipa_core.experiments.runs import make_run_config
from pipa_core.uda.distributed import resolve_device

dev = resolve_device(device)
configs = {
    (title, s): make_run_config(
        benchmark,
        method,
        seed=s,
        max_iters=max_iters,
        data_root=data_root,
        device=device,
        run_dir=Path(out_dir) / f"{benchmark}_{method}_s{s}",
        eval_max_samples=eval_max_samples,
        overrides=overrides,
    )
    for title, method in settings.items()
    for s in seeds
}
first = next(iter(configs.values()))
spec = resolve_benchmark(first)
frames = build_frame_pairs_dataset(spec, data_root)  # labelled key frames + reference frames
pd.DataFrame(
    {
        t: {
            "method": c.method,
            "losses": " + ".join(c.losses.enabled),
            "warm start": c.model.init_from,
            "iterations": c.optim.max_iters,
        }
        for (t, s), c in configs.items()
        if s == seeds[0]
    }
).T

# %% [markdown]
# ## 1. Key frame and reference frame
#
# Each target sample is a key frame and a frame `ref_offset` frames away from the
# same sequence (the annotated Cityscapes-Seq frame is the 20th of its 30-frame snippet).

# %%
from pipa_core.viz import save_figure
from pipa_core.viz.masks import colorize, to_uint8_image

item = frames[0]
panels = {
    "key frame": to_uint8_image(item["img"]),
    f"reference frame ({int(item['ref_offset']):+d})": to_uint8_image(item["img_ref"]),
    "key frame label": colorize(item["label"].numpy()),
}
fig, axes = plt.subplots(1, 3, figsize=(12, 3))
for ax, (title, panel) in zip(axes, panels.items()):
    ax.imshow(panel)
    ax.set_title(title)
    ax.axis("off")
print("saved", save_figure(fig, Path(out_dir) / "video_frames.png"))

# %% [markdown]
# ## 2. Train with and without temporal contrast
#
# Both start from the same warm start with the same schedule and seeds; they
# differ only in the temporal loss. Finished runs are reused.

# %%
from pipa_core.experiments.comparisons import run_configs

results = dict(zip(configs, run_configs(list(configs.values()), jobs=jobs)))

# %% [markdown]
# ## 3. Temporal consistency of predictions, beside mIoU
#
# Every key frame of the target sequences is paired with its reference frame;
# both are predicted and compared (pairs ordered in time). Mean ± std over seeds.

# %%
from torch.utils.data import Subset

from pipa_core.eval.temporal import evaluate_temporal_consistency
from pipa_core.experiments.runs import load_segmentor
from pipa_core.io import atomic_write_json

pairs = frames if max_pairs is None else Subset(frames, range(min(len(frames), max_pairs)))
rows = []
for (title, s), res in results.items():
    model = load_segmentor(res["run_dir"], device=dev)
    c = evaluate_temporal_consistency(model, pairs, protocol=spec.protocols[0])
    rows.append(
        {
            "model": title,
            "seed": s,
            "mIoU": res["mIoU"],
            "num_pairs": c["num_pairs"],
            "pixel agreement (%)": c["pixel_agreement"],
            "consecutive mIoU": c["consecutive_mIoU"],
        }
    )
per_run = pd.DataFrame(rows)
metrics = ["mIoU", "pixel agreement (%)", "consecutive mIoU"]
g = per_run.groupby("model", sort=False)[metrics]
table = g.mean().round(1).astype(str) + " ± " + g.std(ddof=1).fillna(0).round(1).astype(str)
display(table)
atomic_write_json(
    Path(out_dir) / "video.json",
    {
        "benchmark": benchmark,
        "protocol": spec.protocols[0],
        "seeds": seeds,
        "runs": rows,
        "table": g.mean().reset_index().to_dict("records"),
        "std": g.std(ddof=1).fillna(0).reset_index().to_dict("records"),
    },
)

# %% [markdown]
# ## 4. Predictions on the two frames, and where they change

# %%
from pipa_core.eval.features import predict_labels

pair = torch.stack([item["img"], item["img_ref"]]).to(dev)
shown = {t: r for (t, s), r in results.items() if s == seeds[0]}
fig, axes = plt.subplots(len(shown), 3, figsize=(12, 3 * len(shown)), squeeze=False)
for row, (title, res) in zip(axes, shown.items()):
    model = load_segmentor(res["run_dir"], device=dev)
    with torch.no_grad():
        key, ref = predict_labels(model, pair).cpu().numpy()
    for ax, (name, panel) in zip(
        row, [("key", colorize(key)), ("reference", colorize(ref)), ("changed (white)", key != ref)]
    ):
        ax.imshow(panel, cmap="gray" if panel.ndim == 2 else None)
        ax.set_title(f"{title}: {name}")
        ax.axis("off")
print("saved", save_figure(fig, Path(out_dir) / "video_predictions.png"))
