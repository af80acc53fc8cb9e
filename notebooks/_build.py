"""Generate the tutorial notebooks from one place so they stay consistent.

    python notebooks/_build.py          # (re)write notebooks/*.ipynb
    python notebooks/_build.py --check  # exit 1 if a committed notebook differs

Every notebook: a title, exactly one cell tagged ``parameters`` (papermill
injects overrides after it), a setup cell, then short steps that call
``pipa_core`` and show a table or a figure. Notebooks are written without
outputs or execution counts. Edit this file, not the .ipynb files.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent


def md(text: str):
    return new_markdown_cell(text.strip("\n"))


def code(src: str):
    return new_code_cell(src.strip("\n"))


def params(src: str):
    cell = new_code_cell(src.strip("\n"))
    cell.metadata["tags"] = ["parameters"]
    return cell


SETUP = """
%matplotlib inline
import json
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import torch
from IPython.display import Image, Markdown, display

from pipa_core.eval.runs import enter_repo_root

enter_repo_root()  # data/, runs/ and figures/ are relative to the repository root
if num_threads:
    torch.set_num_threads(int(num_threads))
pd.set_option("display.float_format", "{:.1f}".format)
"""

# --------------------------------------------------------------------------- quickstart
QUICKSTART = [
    md(r"""
# Quickstart: domain adaptation on the embedded sim-to-real benchmark

Unsupervised domain adaptation (UDA) for semantic segmentation: a model learns
from labelled **source** images (a game engine) and unlabelled **target**
images (the real world), and is judged on the target. This notebook runs the
whole comparison on a CPU in minutes, on a procedurally generated street
benchmark that ships with `pipa_core` (no download):

1. look at both domains;
2. the protocol: one source model as the warm start of every method;
3. train source-only (the control), the target oracle, DACS self-training and PiPa, over 3 seeds;
4. the table: mIoU mean ± std and the share of the domain gap each method closes;
5. learning curves, per-class IoU, the teacher's pseudo-label accuracy, predictions.

Numbers on this toy benchmark are *not* the paper's numbers (`evaluate.ipynb`
puts those beside yours on the real benchmarks).
"""),
    params("""
data_root = "data"  # the synthetic benchmark is generated in <data_root>/synthetic
out_dir = "runs/quickstart"  # runs (<method>/seed<k>), results.md and quickstart.json go here
figures_dir = "figures"  # figures: quickstart_*.png and dataset_card.png
overrides = []  # settings for every run: section.key assignments, as in train.ipynb
seeds = [0, 1, 2]  # one run per method and seed
jobs = None  # runs at a time; None: one per CPU core (at most 2), 1 with a GPU
n_examples = 3  # rows of the qualitative grid
num_threads = None  # torch CPU threads of this kernel; None: torch's default
"""),
    code(SETUP),
    md(r"""
## 1. The two domains

The **source** domain looks like a game: flat shading, saturated colours,
crisp outlines. The **target** domain looks "real": textures, lighting, haze,
colour cast, blur, sensor noise, a lower camera and a car bonnet; its street
layouts and class frequencies differ too. Labels use the 19 Cityscapes classes
(train IDs, 255 = ignore), exactly like GTA5 → Cityscapes.
"""),
    code("""
from pipa_core.data.synthetic import ensure_synthetic
from pipa_core.uda.experiments import QUICKSTART_METHODS, quickstart_config
from pipa_core.viz.dataset_card import class_frequency_table, make_dataset_card

%matplotlib inline
configs = {m: quickstart_config(m, seeds[0], out_dir, data_root, overrides) for m in QUICKSTART_METHODS}
root = ensure_synthetic(Path(data_root) / "synthetic", size=configs["pipa"].data.synthetic_size)
card = make_dataset_card(root, Path(figures_dir) / "dataset_card.png")
display(Image(filename=str(card)))
freq = class_frequency_table(root)
freq[(freq > 0).any(axis=1)].round(2)
"""),
    md(r"""
## 2. The protocol

A model trained from random weights on a few hundred source images learns
colour → class and is confidently wrong on the target; self-training from it
only reinforces its mistakes. The real benchmarks avoid that with ImageNet
weights; this tutorial does the two things the literature does without them
(docs/training.md, "The CPU tutorial protocol"):

* **one warm start**: a source model trained with standard appearance
  augmentation (SimCLR's colour distortion and blur, sensor noise) for 8000
  iterations, shipped with the package (`model.init_from="synthetic_warm_start"`,
  made by `python -m pipa_core.warm_start`). Every method starts from it.
* **the same schedule for every method**, from that model: **source only**
  continues the source training (the control: any gain of the others is
  adaptation, not extra training), the **target oracle** fine-tunes on target
  labels (the upper bound), **DACS** self-trains (EMA teacher with DAFormer's
  batch-statistics BatchNorm, confidence-weighted pseudo-labels, ClassMix,
  colour jitter and blur on the mixed image) and **PiPa** adds
  pixel- and patch-wise contrast to the same self-training.

Each method runs once per seed (initialisation of the heads, data order,
augmentation); the table reports mean ± sample standard deviation over seeds,
the domain gap (oracle − source only) and the fraction of it each method closes.
"""),
    code("""
cfg = configs["pipa"]
pd.DataFrame(
    {
        m: {
            "mode": c.uda.mode, "losses": " + ".join(c.losses.enabled) or "-",
            "iterations": c.optim.max_iters, "warm start": c.model.init_from,
            "EMA": c.uda.ema_alpha if c.uda.mode == "self_training" else "-",
            "threshold": c.uda.pseudo_threshold if c.uda.mode == "self_training" else "-",
        }
        for m, c in configs.items()
    }
).T
"""),
    md(r"""
## 3. Train every method for every seed

Two runs at a time on two cores (one torch thread each). Finished runs with the
same configuration and warm start are reused, an interrupted one is resumed, so
this cell can be stopped and started again.
"""),
    code("""
from pipa_core.uda.experiments import run_quickstart_table

table = run_quickstart_table(
    methods=QUICKSTART_METHODS, seeds=seeds, out_dir=out_dir, data_root=data_root,
    overrides=overrides, jobs=jobs,
)
display(Markdown(table["markdown"]))
"""),
    md(r"""
## 4. Learning curves

Target val mIoU during training (mean over seeds; the band spans the seeds).
Every curve starts from the warm start's mIoU.
"""),
    code("""
from pipa_core.assets import asset_card
from pipa_core.viz import save_figure
from pipa_core.viz.curves import plot_seed_curves

labels = {r["method"]: r["label"] for r in table["rows"]}
runs = {labels[m]: dirs for m, dirs in table["runs"].items()}
start = asset_card("synthetic_warm_start").get("target_val_mIoU") if cfg.model.init_from else None
fig, ax = plt.subplots(figsize=(7, 4))
plot_seed_curves(runs, "mIoU", ax=ax, start=start, ylabel="target val mIoU (%)")
print("saved", save_figure(fig, Path(figures_dir) / "quickstart_curves.png"))
"""),
    md(r"""
## 5. Per-class IoU

Mean IoU over seeds per class (`n/a`: the class does not occur in the val split).
"""),
    code("""
display(Markdown(table["per_class_markdown"]))
per_class = pd.DataFrame({r["label"]: r["per_class"] for r in table["rows"]}).astype(float)
fig, ax = plt.subplots(figsize=(11, 3.5))
per_class.plot.bar(ax=ax, width=0.8)
ax.set_ylabel("IoU (%)")
ax.set_title("target val IoU per class (mean over seeds)")
ax.legend(fontsize=8)
print("saved", save_figure(fig, Path(figures_dir) / "quickstart_per_class.png"))
"""),
    md(r"""
## 6. How good are the teacher's pseudo-labels?

The target images of this benchmark keep their labels on disk, so we can
measure what no real UDA run can: how often the teacher's pseudo-labels on the
training crops are right (all labelled pixels, and the confident ones, with
confidence ≥ the threshold), and how many pixels are confident. No loss ever
reads these labels.
"""),
    code("""
st = {labels[m]: table["runs"][m] for m in ("dacs", "pipa") if m in table["runs"]}
fig, axes = plt.subplots(1, 3, figsize=(14, 3.5))
for ax, (col, name) in zip(axes, [
    ("pseudo_acc", "pseudo-label accuracy (%)"),
    ("pseudo_acc_confident", "accuracy of confident pixels (%)"),
    ("pseudo_confident_labelled", "confident pixels (%)"),
]):
    plot_seed_curves(st, col, kind="train", ax=ax, scale=100, ylabel=name)
fig.tight_layout()
print("saved", save_figure(fig, Path(figures_dir) / "quickstart_pseudo_labels.png"))
"""),
    md(r"""
## 7. Predictions

Image, ground truth, then each method's prediction (seed of the first run) and
its error map (white = wrong, grey = ignore).
"""),
    code("""
from pipa_core.eval.features import predict_labels
from pipa_core.eval.runs import analysis_datasets, load_segmentor
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
    [s["img"] for s in samples], [s["label"] for s in samples], preds,
    names=[s["name"].split("/")[-1] for s in samples],
)
print("saved", save_figure(fig, Path(figures_dir) / "quickstart_predictions.png"))
"""),
    code("""
from pipa_core.io import atomic_write_json

summary = {
    "runs": {r["method"]: {"mIoU": r["mean"], "run_dirs": table["runs"][r["method"]]} for r in table["rows"]},
    "table": {k: v for k, v in table.items() if not k.endswith("markdown")},
}
atomic_write_json(Path(out_dir) / "quickstart.json", summary)
print("wrote", Path(out_dir) / "quickstart.json")
"""),
    md(r"""
**Next:** `tsne.ipynb` and `ccd.ipynb` (feature analyses of these very runs),
`ablation.ipynb` (which loss helps, from the same warm start), `video.ipynb`
(PiPa++'s temporal contrast), `train.ipynb` (any benchmark), `evaluate.ipynb`.
"""),
]

# --------------------------------------------------------------------------- train
TRAIN = [
    md(r"""
# Train one model

Any benchmark preset and any method; every ablation switch is a parameter.
Run it interactively, or batch it with papermill:

```
papermill notebooks/train.ipynb runs/gta2cs_pipa.ipynb -p benchmark gta2cs -p method pipa
papermill notebooks/train.ipynb runs/abl.ipynb -p method daformer -y 'losses: [pixel]'
```

Benchmarks: `gta2cs`, `syn2cs`, `gtasyn2cs`, `cs2acdc`, `cs2darkzurich`,
`viper2csseq`, `synseq2csseq` (real data under `data/`, see data/README.md) and
`synthetic` (embedded, generated on first use). Methods: `source_only`, `oracle`,
`dacs`, `daformer`, `pipa`, `pipa_pp` (video benchmarks), `spcl`. A GPU is used when present
(`device="auto"`); the run can be killed and resumed (`overrides=["runtime.resume=true"]`).
Any other setting goes into `overrides`, e.g. `overrides=["optim.lr=1e-4", "data.batch_size=1"]`
(from the command line: `-y 'overrides: ["optim.lr=1e-4"]'`).
"""),
    params("""
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
"""),
    code(SETUP),
    md(r"""
## 1. The configuration

The preset fixes every hyper-parameter of the papers (DESIGN.md §4); the
parameters above change only what they name. The full configuration is saved
as `config.json` / `config.yaml` in the run directory.
"""),
    code("""
import yaml

from pipa_core.eval.runs import make_run_config

cfg = make_run_config(
    benchmark, method, losses=losses, seed=seed, max_iters=max_iters, run_dir=run_dir,
    data_root=data_root, device=device, eval_max_samples=eval_max_samples, overrides=overrides,
)
print(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
"""),
    md(r"""
## 2. Train

The loop (`pipa_core/uda/trainer.py`) reads top to bottom: batch → step →
backward → optimizer → EMA teacher → log / evaluate / checkpoint. `checkpoints/latest.pt`
is written atomically, so a crash never loses more than `runtime.checkpoint_interval` iterations.
"""),
    code("""
from pipa_core.uda import train

result = train(cfg)
run = Path(result["run_dir"])
{k: v for k, v in result.items() if k not in ("eval", "evals")}
"""),
    md("## 3. Training curves"),
    code("""
from pipa_core.eval.runs import read_metrics
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
"""),
    md("## 4. Result on the target validation split"),
    code("""
if result["finished"]:
    for proto, r in result["eval"]["protocols"].items():
        display(Markdown(f"**{proto}**: mIoU {r['mIoU']:.2f}"))
        display(pd.DataFrame([r["per_class_IoU"]], index=["IoU"]))
else:
    print("the run stopped early (signal or runtime.stop_after); resume with runtime.resume=true")
print("result:", run / "result.json")
"""),
]

# --------------------------------------------------------------------------- evaluate
EVALUATE = [
    md(r"""
# Evaluate a checkpoint

Per-class IoU on a labelled split (one confusion matrix over the whole split),
next to the published numbers where the benchmark matches, the confusion
matrix, a qualitative grid and an interactive browser.
"""),
    params("""
run = "runs/quickstart/pipa/seed0"  # run directory (or checkpoints/*.pt) to evaluate
which = "student"  # "student" or "teacher" (EMA) weights
benchmark = None  # None: the run's benchmark
data_root = None  # None: the run's data.data_root
mode = None  # "whole" or "slide" inference; None: the run's eval setting
max_samples = None  # first N images of the split; None: all
n_examples = 4  # rows of the qualitative grid
out_dir = None  # None: <run>/eval
device = "auto"  # "auto": GPU if present
num_threads = None  # torch CPU threads; None: torch's default
"""),
    code(SETUP),
    code("""
from pipa_core.data.benchmarks import build_val_dataset
from pipa_core.eval.runs import load_run_config, load_segmentor
from pipa_core.uda.config import resolve_benchmark
from pipa_core.uda.distributed import resolve_device

dev = resolve_device(device)
cfg = load_run_config(run)
if benchmark is not None:
    cfg.data.benchmark = benchmark
spec = resolve_benchmark(cfg)
model = load_segmentor(run, which, device=dev)
val = build_val_dataset(spec, data_root or cfg.data.data_root)
out = Path(out_dir) if out_dir else Path(run if Path(run).is_dir() else Path(run).parent.parent) / "eval"
print(f"{cfg.name}: {len(val)} images of {spec.name} ({spec.val.root}/{spec.val.split}), protocols {spec.protocols}")
"""),
    md(r"""
## 1. mIoU per class

IoU$_c$ = TP / (TP + FP + FN) from the confusion matrix of the whole split; the
mean runs over the protocol's classes that are present.
"""),
    code("""
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from pipa_core.eval.evaluate import evaluate
from pipa_core.eval.published import comparison_table
from pipa_core.io import atomic_write_json

e = cfg.eval
res = evaluate(
    model, tqdm(DataLoader(val, batch_size=1), desc="evaluate"), spec.protocols, mode=mode or e.mode,
    crop_size=tuple(e.crop_size or spec.crop_size), flip=e.flip, device=dev, max_samples=max_samples,
)
for proto, r in res["protocols"].items():
    display(Markdown(f"### {proto}: mIoU {r['mIoU']:.2f} ({res['num_images']} images)"))
    display(pd.DataFrame([r["per_class_IoU"]], index=[cfg.name]))
    display(Markdown(comparison_table(spec.name, {cfg.name: r["mIoU"]}, protocol=proto)))
atomic_write_json(out / "eval.json", res)
"""),
    md(r"""
## 2. Confusion matrix

Row-normalised: each row shows where the ground-truth pixels of a class go.
Off-diagonal mass reveals systematic confusions (e.g. sidewalk → road).
"""),
    code("""
from pipa_core.viz import confusion_heatmap, save_figure

fig = confusion_heatmap(torch.tensor(res["confusion_matrix"]), spec.protocols[0], title=cfg.name)
print("saved", save_figure(fig, out / "confusion.png"))
"""),
    md("## 3. Qualitative results"),
    code("""
from pipa_core.eval.features import predict_labels
from pipa_core.viz import qualitative_grid

samples = [val[i] for i in range(min(n_examples, len(val)))]
with torch.no_grad():
    preds = [predict_labels(model, s["img"][None].to(dev))[0].cpu() for s in samples]
fig = qualitative_grid(
    [s["img"] for s in samples], [s["label"] for s in samples], {cfg.name: preds},
    names=[s["name"].split("/")[-1] for s in samples],
)
print("saved", save_figure(fig, out / "qualitative.png"))
"""),
    md("## 4. Browse the split (drag the slider)"),
    code("""
from pipa_core.viz import SplitBrowser

browser = SplitBrowser(val, model, device=dev)
browser.widget
"""),
]

# --------------------------------------------------------------------------- ablation
ABLATION = [
    md(r"""
# Ablation: which self-supervised loss helps?

PiPa's ablation study adds its losses one at a time to the same self-training:
self-training alone, + pixel contrast, + patch contrast, + both (and, on video
benchmarks, + temporal contrast: PiPa++). On the embedded benchmark every run
starts from the tutorial's warm start with the quickstart's schedule, so the
quickstart's DACS and PiPa runs are this table's first and last rows and are
reused when they exist. The table and the plot come first; how they were made
follows.
"""),
    params("""
benchmark = "synthetic"  # benchmark preset
method = "daformer"  # the self-training recipe the losses are added to
settings = None  # None: all for the benchmark; or a subset, e.g. ["self-training", "+pixel"]
seeds = [0, 1, 2]  # one run per setting and seed
data_root = "data"  # where the datasets live
out_dir = "runs/ablation"  # <setting>/seed<k> run directories, ablation.json / .md / .png
reuse_from = ["runs/quickstart"]  # finished runs with the same configuration are taken from here
jobs = None  # runs at a time; None: one per CPU core (at most 2), 1 with a GPU
overrides = []  # passed to every run: section.key assignments, as in train.ipynb
num_threads = None  # torch CPU threads of this kernel; None: torch's default
"""),
    code(SETUP),
    md("## 1. The table: target mIoU, mean ± std over seeds"),
    code("""
from pipa_core.uda.experiments import run_ablation

ablation = run_ablation(
    benchmark, method, settings=settings, seeds=seeds, out_dir=out_dir, data_root=data_root,
    overrides=overrides, jobs=jobs, reuse_from=reuse_from,
)
display(Markdown(ablation["markdown"]))
"""),
    code("""
from pipa_core.viz import ablation_barplot, save_figure

runs = pd.DataFrame(ablation["runs"])
fig = ablation_barplot(runs, title=f"{benchmark}: {method} self-training + PiPa's losses")
print("saved", save_figure(fig, Path(out_dir) / "ablation.png"))
"""),
    md(r"""
## 2. How it was made

One configuration per setting (the `method` preset with exactly the listed
losses), one run per seed; every run of a setting differs only in its seed.
The standard deviation is the sample standard deviation over seeds (0 for one seed).
"""),
    code("""
from pipa_core.eval.runs import load_run_config

rows = {}
for r in ablation["runs"]:
    if r["setting"] in rows:
        continue
    c = load_run_config(r["run_dir"])
    rows[r["setting"]] = {
        "losses": " + ".join(c.losses.enabled) or "-", "iterations": c.optim.max_iters,
        "warm start": c.model.init_from, "pixel α": c.losses.pixel.weight, "patch β": c.losses.patch.weight,
    }
display(pd.DataFrame(rows).T)
runs.pivot(index="seed", columns="setting", values="mIoU")[list(rows)]
"""),
]

# --------------------------------------------------------------------------- t-SNE
TSNE = [
    md(r"""
# t-SNE of pixel embeddings

The papers' "Figure 4": pixel features of a baseline and of PiPa, projected to
2-D. Pixel contrast should make classes form **compact, separated clusters**,
and adaptation should put **source and target pixels of a class together**.

Recipe (docs/analysis.md): run the model over labelled source and target
images, take the decoder feature (`embedding="feat"`) or a projection head's
output (`"pixel"`), bring labels to feature resolution (nearest), sample at
most `n_per_class` pixels per class and per domain (balanced, or road and sky
would be all you see), then t-SNE: it minimises
$\mathrm{KL}(P\,\|\,Q)$ between neighbourhood probabilities in feature space
($P$, Gaussian, width set by the perplexity) and in the plane ($Q$, Student-t).
Read clusters, not distances between clusters.
"""),
    params("""
runs = {
    "source-only": "runs/quickstart/source_only/seed0",
    "DACS": "runs/quickstart/dacs/seed0",
    "PiPa": "runs/quickstart/pipa/seed0",
}  # panel title -> run directory (default: the quickstart's runs)
which = "student"  # "student" or "teacher" weights
embedding = "feat"  # "feat" (decoder) or a projection head: "pixel", "patch", "temporal"
normalize = False  # L2-normalise embeddings first (the geometry the contrastive loss sees)
data_root = None  # None: the run's data.data_root
max_images = 50  # images per domain
n_per_class = 100  # pixels per class and domain
max_pixels = 3000  # cap on the total number of points
perplexity = 30.0  # t-SNE neighbourhood size (5 to 50)
tsne_iters = 1000  # t-SNE optimisation iterations
tsne_threads = 1  # t-SNE threads: raise only on a free many-core machine (None: all cores)
backend = "sklearn"  # "sklearn", or "opentsne" (pip install openTSNE; faster)
seed = 0  # seeds the pixel sampling and t-SNE
out_dir = "figures"  # tsne.png and tsne.json
device = "auto"  # "auto": GPU if present
num_threads = None  # torch CPU threads; None: torch's default
"""),
    code(SETUP),
    code("""
from pipa_core.eval.runs import analysis_datasets, load_run_config, load_segmentor
from pipa_core.uda.distributed import resolve_device

dev = resolve_device(device)
cfg = load_run_config(next(iter(runs.values())))  # every run is read on this run's benchmark
datasets = analysis_datasets(cfg, data_root, max_images=max_images)
{k: len(v) for k, v in datasets.items()}
"""),
    md("## 1. Sample pixel embeddings (balanced per class and domain)"),
    code("""
from pipa_core.eval.features import extract_pixel_embeddings

embeddings = {}
for title, run in runs.items():
    model = load_segmentor(run, which, device=dev)
    embeddings[title] = extract_pixel_embeddings(
        model, datasets, embedding=embedding, n_per_class=n_per_class, max_pixels=max_pixels,
        normalize=normalize, seed=seed,
    )
pd.DataFrame({t: {d: sum(c.values()) for d, c in e.counts().items()} for t, e in embeddings.items()})
"""),
    md("## 2. t-SNE, side by side (colour = class, marker = domain)"),
    code("""
from pipa_core.eval.tsne import tsne
from pipa_core.io import atomic_write_json
from pipa_core.viz import save_figure, tsne_scatter

maps = {
    t: tsne(e, perplexity=perplexity, max_iter=tsne_iters, seed=seed, backend=backend, threads=tsne_threads)
    for t, e in embeddings.items()
}
fig = tsne_scatter(maps)
print("saved", save_figure(fig, Path(out_dir) / "tsne.png"))
atomic_write_json(Path(out_dir) / "tsne.json", {"embedding": embedding, "runs": runs, "maps": {t: m.to_dict() for t, m in maps.items()}})
"""),
]

# --------------------------------------------------------------------------- CCD
CCD = [
    md(r"""
# Class center distance (CCD)

SPCL's Fig. 5 (after FADA): how compact each class is relative to its distance
from the others. For class $i$ with centre $\mu_i$ and pixel set $S_i$,

$$\mathrm{CCD}(i) = \frac{1}{C-1}\sum_{j\neq i}\frac{\frac{1}{|S_i|}\sum_{x\in S_i}\lVert x-\mu_i\rVert^2}{\lVert\mu_i-\mu_j\rVert^2}$$

**Lower is more discriminative.** Computed on whole loaders with streaming
sums (never holding all features), per domain (source, target) and pooled
(`all`). Classes absent from the data are excluded and $C$ counts the present
classes (docs/analysis.md). SPCL uses 1000 source + 1000 target images.
"""),
    params("""
runs = {
    "source-only": "runs/quickstart/source_only/seed0",
    "DACS": "runs/quickstart/dacs/seed0",
    "PiPa": "runs/quickstart/pipa/seed0",
}  # bar label -> run directory (default: the quickstart's runs)
which = "student"  # "student" or "teacher" weights
embedding = "feat"  # "feat" (decoder) or a projection head: "pixel", "patch", "temporal"
classes = None  # None: the benchmark's first protocol (e.g. syn16); or a list of train IDs
data_root = None  # None: the run's data.data_root
max_images = 100  # images per domain (SPCL: 1000)
out_dir = "figures"  # ccd_source.png, ccd_target.png and ccd.json
device = "auto"  # "auto": GPU if present
num_threads = None  # torch CPU threads; None: torch's default
"""),
    code(SETUP),
    code("""
from pipa_core.eval.runs import analysis_datasets, load_run_config, load_segmentor
from pipa_core.uda.config import resolve_benchmark
from pipa_core.uda.distributed import resolve_device

dev = resolve_device(device)
cfg = load_run_config(next(iter(runs.values())))  # every run is read on this run's benchmark
datasets = analysis_datasets(cfg, data_root, max_images=max_images)
classes = classes if classes is not None else resolve_benchmark(cfg).protocols[0]
"""),
    md("## 1. CCD per class, per domain"),
    code("""
from pipa_core.eval.ccd import class_center_distance

results = {}
for title, run in runs.items():
    model = load_segmentor(run, which, device=dev)
    results[title] = class_center_distance(model, datasets, embedding=embedding, classes=classes)
    display(Markdown(results[title].to_markdown(title)))
"""),
    md("## 2. SPCL Fig. 5 style: one bar per model and class"),
    code("""
from pipa_core.io import atomic_write_json
from pipa_core.viz import ccd_barplot, ccd_table, save_figure

for domain in ("target", "source"):  # target first: what adaptation is about
    display(Markdown(f"**{domain}** features: CCD per class (lower = more discriminative)"))
    display(ccd_table(results, domain))
    fig = ccd_barplot(results, domain)
    save_figure(fig, Path(out_dir) / f"ccd_{domain}.png")
atomic_write_json(Path(out_dir) / "ccd.json", {"embedding": embedding, "runs": runs, "ccd": {t: r.to_dict() for t, r in results.items()}})
"""),
]

# --------------------------------------------------------------------------- video
VIDEO = [
    md(r"""
# Video: temporal contrast (PiPa++) and temporal consistency

On video benchmarks (VIPER → Cityscapes-Seq, SYNTHIA-Seq → Cityscapes-Seq, and the
embedded `synthetic_seq` sequences, which run on a CPU) each
target sample carries a **key frame** and a nearby **reference frame**. PiPa++'s temporal contrast treats the features at
the *same pixel location* of the two frames as a positive pair (no optical
flow) and other locations as negatives:

$$\mathcal{L}_{temp} = -\sum_{p}\log\frac{r(e^{key}_p,e^{ref}_p)}{r(e^{key}_p,e^{ref}_p)+\sum_{q\neq p} r(e^{key}_p,e^{ref}_q)}$$

We train PiPa with and without it and measure, besides mIoU, the **temporal
consistency** of predictions across consecutive frames: the fraction of pixels
whose class is unchanged, and the mIoU of frame $t+1$'s prediction against frame
$t$'s. No flow is used, so real motion lowers both: compare models, not against 100.
"""),
    params("""
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
"""),
    code(SETUP),
    code("""
from pipa_core.data.benchmarks import build_frame_pairs_dataset
from pipa_core.eval.runs import make_run_config
from pipa_core.uda.config import resolve_benchmark
from pipa_core.uda.distributed import resolve_device

dev = resolve_device(device)
configs = {
    (title, s): make_run_config(
        benchmark, method, seed=s, max_iters=max_iters, data_root=data_root, device=device,
        run_dir=Path(out_dir) / f"{benchmark}_{method}_s{s}", eval_max_samples=eval_max_samples,
        overrides=overrides,
    )
    for title, method in settings.items()
    for s in seeds
}
first = next(iter(configs.values()))
spec = resolve_benchmark(first)
frames = build_frame_pairs_dataset(spec, data_root)  # labelled key frames + reference frames
pd.DataFrame(
    {t: {"method": c.method, "losses": " + ".join(c.losses.enabled), "warm start": c.model.init_from,
         "iterations": c.optim.max_iters} for (t, s), c in configs.items() if s == seeds[0]}
).T
"""),
    md(r"""
## 1. Key frame and reference frame

Each target sample is a key frame and a frame `ref_offset` frames away from the
same sequence (the annotated Cityscapes-Seq frame is the 20th of its 30-frame snippet).
"""),
    code("""
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
"""),
    md(r"""
## 2. Train with and without temporal contrast

Both start from the same warm start with the same schedule and seeds; they
differ only in the temporal loss. Finished runs are reused.
"""),
    code("""
from pipa_core.uda.experiments import run_configs

results = dict(zip(configs, run_configs(list(configs.values()), jobs=jobs)))
"""),
    md(r"""
## 3. Temporal consistency of predictions, beside mIoU

Every key frame of the target sequences is paired with its reference frame;
both are predicted and compared (pairs ordered in time). Mean ± std over seeds.
"""),
    code("""
from torch.utils.data import Subset

from pipa_core.eval.runs import load_segmentor
from pipa_core.eval.temporal import evaluate_temporal_consistency
from pipa_core.io import atomic_write_json

pairs = frames if max_pairs is None else Subset(frames, range(min(len(frames), max_pairs)))
rows = []
for (title, s), res in results.items():
    model = load_segmentor(res["run_dir"], device=dev)
    c = evaluate_temporal_consistency(model, pairs, protocol=spec.protocols[0])
    rows.append({"model": title, "seed": s, "mIoU": res["mIoU"], "num_pairs": c["num_pairs"],
                 "pixel agreement (%)": c["pixel_agreement"], "consecutive mIoU": c["consecutive_mIoU"]})
per_run = pd.DataFrame(rows)
metrics = ["mIoU", "pixel agreement (%)", "consecutive mIoU"]
g = per_run.groupby("model", sort=False)[metrics]
table = g.mean().round(1).astype(str) + " ± " + g.std(ddof=1).fillna(0).round(1).astype(str)
display(table)
atomic_write_json(
    Path(out_dir) / "video.json",
    {"benchmark": benchmark, "protocol": spec.protocols[0], "seeds": seeds, "runs": rows,
     "table": g.mean().reset_index().to_dict("records"), "std": g.std(ddof=1).fillna(0).reset_index().to_dict("records")},
)
"""),
    md("## 4. Predictions on the two frames, and where they change"),
    code("""
from pipa_core.eval.features import predict_labels

pair = torch.stack([item["img"], item["img_ref"]]).to(dev)
shown = {t: r for (t, s), r in results.items() if s == seeds[0]}
fig, axes = plt.subplots(len(shown), 3, figsize=(12, 3 * len(shown)), squeeze=False)
for row, (title, res) in zip(axes, shown.items()):
    model = load_segmentor(res["run_dir"], device=dev)
    with torch.no_grad():
        key, ref = predict_labels(model, pair).cpu().numpy()
    for ax, (name, panel) in zip(row, [("key", colorize(key)), ("reference", colorize(ref)), ("changed (white)", key != ref)]):
        ax.imshow(panel, cmap="gray" if panel.ndim == 2 else None)
        ax.set_title(f"{title}: {name}")
        ax.axis("off")
print("saved", save_figure(fig, Path(out_dir) / "video_predictions.png"))
"""),
]

NOTEBOOKS = {
    "quickstart": QUICKSTART,
    "train": TRAIN,
    "evaluate": EVALUATE,
    "ablation": ABLATION,
    "tsne": TSNE,
    "ccd": CCD,
    "video": VIDEO,
}


def build(name: str) -> nbformat.NotebookNode:
    """The notebook ``name`` as an nbformat v4 object (no outputs)."""
    nb = new_notebook(cells=[nbformat.from_dict(c) for c in NOTEBOOKS[name]])
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.metadata["language_info"] = {"name": "python"}
    # Stable cell ids keep diffs of regenerated notebooks empty.
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"{name}-{i:02d}"
    return nb


def _ruff_format(text: str, path: Path) -> str:
    """The notebook JSON with its code cells formatted by ruff (``make lint`` checks notebooks too)."""
    ruff = Path(sys.executable).with_name("ruff")
    cmd = [str(ruff)] if ruff.is_file() else [sys.executable, "-m", "ruff"]
    proc = subprocess.run(
        [*cmd, "format", "--stdin-filename", str(path)],
        input=text,
        capture_output=True,
        text=True,
        cwd=HERE.parent,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"ruff could not format {path.name}:\n{proc.stderr}")
    return proc.stdout


def render(name: str) -> str:
    """The exact text of ``notebooks/<name>.ipynb``."""
    path = HERE / f"{name}.ipynb"
    return _ruff_format(nbformat.writes(build(name)) + "\n", path)


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for name in NOTEBOOKS:
        path = HERE / f"{name}.ipynb"
        text = render(name)
        if check:
            if not path.is_file() or path.read_text() != text:
                stale.append(path.name)
        else:
            path.write_text(text)
    if stale:
        print("out of date (run python notebooks/_build.py):", ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
