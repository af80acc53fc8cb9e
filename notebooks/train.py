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
# # Train one model
#
# Any benchmark preset and any method; every ablation switch is a parameter.
# Run it interactively, or batch it with papermill:
#
# ```
# papermill notebooks/train.ipynb runs/gta2cs_pipa.ipynb -p benchmark gta2cs -p method pipa
# papermill notebooks/train.ipynb runs/abl.ipynb -p method daformer -y 'losses: [pixel]'
# ```
#
# Benchmarks: `gta2cs`, `syn2cs`, `gtasyn2cs`, `cs2acdc`, `cs2darkzurich`,
# `viper2csseq`, `synseq2csseq` (real data under `data/`, see data/README.md) and
# `synthetic` (embedded, generated on first use). Methods: `source_only`, `oracle`,
# `dacs`, `daformer`, `pipa`, `pipa_pp` (video benchmarks), `spcl`. A GPU is used when present
# (`device="auto"`); the run can be killed and resumed (`overrides=["runtime.resume=true"]`).
# Any other setting goes into `overrides`, e.g. `overrides=["optim.lr=1e-4", "data.batch_size=1"]`
# (from the command line: `-y 'overrides: ["optim.lr=1e-4"]'`).

# %% tags=["parameters"]
benchmark = "synthetic"  # benchmark preset (see above)
method = "pipa"  # method recipe (see above)
losses = None  # ablation switch: None keeps the method's losses; [], ["pixel"], ["pixel", "patch"]
seed = 0  # runtime.seed
max_iters = None  # None: the preset schedule (real data 40k / 60k, synthetic 400)
data_root = "data"  # where the datasets live
run_dir = None  # None: runs/<benchmark>_<method>[_<losses>]_s<seed>
device = "auto"  # "auto" (GPU if present), "cpu", "cuda", "cuda:1", "mps"
eval_max_samples = None  # evaluate on the first N target val images; None: all
overrides = []  # any other setting: a list of section.key assignments (see above)
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
        globals(),
        {
            "seed": int,
            "max_iters": Optional[int],
            "eval_max_samples": Optional[int],
            "num_threads": Optional[int],
        },
    )
)
notebook_setup(num_threads)  # repository root as cwd (data/, runs/, figures/), threads, display

# %% [markdown]
# ## 1. The configuration
#
# The preset fixes every hyper-parameter of the papers (docs/training.md); the
# parameters above change only what they name. The full configuration is saved
# as `config.json` / `config.yaml` in the run directory.

# %%
import yaml

from pipa_core.experiments.runs import make_run_config

cfg = make_run_config(
    benchmark,
    method,
    losses=losses,
    seed=seed,
    max_iters=max_iters,
    run_dir=run_dir,
    data_root=data_root,
    device=device,
    eval_max_samples=eval_max_samples,
    overrides=overrides,
)
print(yaml.safe_dump(cfg.to_dict(), sort_keys=False))

# %% [markdown]
# ## 2. Train
#
# The loop (`pipa_core/uda/trainer.py`) reads top to bottom: batch → step →
# backward → optimizer → EMA teacher → log / evaluate / checkpoint. `checkpoints/latest.pt`
# is written atomically, so a crash never loses more than `runtime.checkpoint_interval` iterations.

# %%
from pipa_core.uda import train

result = train(cfg)
run = Path(result["run_dir"])
{k: v for k, v in result.items() if k not in ("eval", "evals")}

# %% [markdown]
# ## 3. Training curves

# %%
from pipa_core.experiments.runs import read_metrics
from pipa_core.viz import save_figure

log = read_metrics(run, kind="train")
terms = [c for c in log.columns if c.startswith("loss")]
fig, ax = plt.subplots(figsize=(7, 3.5))
for c in terms:
    ax.plot(log["iter"], log[c], label=c)
ax.set_xlabel("iteration")
ax.set_ylabel("loss")
ax.legend(fontsize=8)
ax.set_title(cfg.name)
print("saved", save_figure(fig, run / "figures" / "losses.png"))

# %% [markdown]
# ## 4. Result on the target validation split

# %%
if result["finished"]:
    for proto, r in result["eval"]["protocols"].items():
        display(Markdown(f"**{proto}**: mIoU {r['mIoU']:.2f}"))
        display(show_table(pd.DataFrame({"IoU": r["per_class_IoU"]}, dtype=float)))  # class rows
else:
    print("the run stopped early (signal or runtime.stop_after); resume with runtime.resume=true")
print("result:", run / "result.json")
