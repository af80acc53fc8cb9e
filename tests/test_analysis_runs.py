"""Run helpers used by the notebooks: configs from parameters, loading runs, collecting results."""

import json

import pytest
import torch

from pipa_core.experiments.runs import (
    build_segmentor_for,
    collect_results,
    load_run_config,
    load_segmentor,
    make_run_config,
    read_metrics,
)
from pipa_core.io import atomic_torch_save, atomic_write_json


def test_make_run_config_applies_notebook_parameters():
    cfg = make_run_config(
        "synthetic", "daformer", losses=["pixel"], seed=3, max_iters=20, eval_max_samples=4,
        overrides=["optim.lr=1e-3"],
    )  # fmt: skip
    assert cfg.losses.enabled == ("pixel",) and cfg.runtime.seed == 3
    assert cfg.optim.max_iters == 20 and cfg.optim.warmup_iters == 2  # warm-up shorter than the run
    assert cfg.eval.max_samples == 4 and cfg.optim.lr == pytest.approx(1e-3)
    assert (
        cfg.runtime.run_dir == "runs/synthetic_daformer_pixel_s3"
        and cfg.name == "synthetic_daformer_pixel_s3"
    )
    # papermill -p passes lists as strings
    cfg2 = make_run_config("synthetic", "pipa", losses="[]", overrides='["data.batch_size=1"]')
    assert (
        cfg2.losses.enabled == () and cfg2.data.batch_size == 1 and cfg2.name.endswith("_nossl_s0")
    )
    # None keeps the method's losses
    assert make_run_config("synthetic", "pipa").losses.enabled == ("pixel", "patch")
    with pytest.raises(ValueError, match="must be a list"):
        make_run_config("synthetic", "pipa", losses="{a: 1}")


def _fake_run(tmp_path, name, seed, losses, miou):
    """A run directory as the trainer writes it (config, checkpoint, metrics, result)."""
    cfg = make_run_config(
        "synthetic", "daformer", losses=losses, seed=seed, run_dir=tmp_path / name
    )
    run = tmp_path / name
    cfg.save(run)
    torch.manual_seed(seed)
    seg = build_segmentor_for(cfg)
    atomic_torch_save(
        {"student": seg.state_dict(), "teacher": None, "config": cfg.to_dict()},
        run / "checkpoints" / "latest.pt",
    )
    (run / "metrics.jsonl").write_text(
        json.dumps({"kind": "train", "iter": 1, "loss": 2.0})
        + "\n"
        + json.dumps({"kind": "eval", "iter": 1, "mIoU": miou})
        + "\n"
    )
    atomic_write_json(
        run / "result.json",
        {
            "name": cfg.name,
            "method": "daformer",
            "benchmark": "synthetic",
            "iterations": 1,
            "mIoU": miou,
        },
    )
    return run, seg


def test_load_segmentor_restores_weights_and_heads(tmp_path):
    run, seg = _fake_run(tmp_path, "a", 0, ["pixel"], 10.0)
    loaded = load_segmentor(run)
    assert not loaded.training
    for (k, v), (k2, v2) in zip(seg.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    assert "pixel" in loaded.proj_heads
    # a checkpoint file works too, and a missing teacher is a clear error
    assert load_run_config(run / "checkpoints" / "latest.pt").name == load_run_config(run).name
    with pytest.raises(ValueError, match="no 'teacher'"):
        load_segmentor(run, "teacher")
    with pytest.raises(FileNotFoundError, match="latest.pt"):
        load_segmentor(tmp_path)


def test_collect_results_and_metrics(tmp_path):
    _fake_run(tmp_path, "a", 0, [], 10.0)
    _fake_run(tmp_path, "b", 1, ["pixel", "patch"], 12.0)
    (tmp_path / "unfinished").mkdir()
    df = collect_results(sorted(tmp_path.iterdir()), extra=["losses.pixel.weight"])
    assert list(df["seed"]) == [0, 1] and list(df["losses"]) == ["-", "pixel+patch"]
    assert list(df["mIoU"]) == [10.0, 12.0] and list(df["losses.pixel.weight"]) == [0.1, 0.1]
    m = read_metrics(tmp_path / "a", kind="eval")
    assert list(m["mIoU"]) == [10.0]


def test_analysis_datasets_follow_the_run_config(tmp_path):
    from pipa_core.data.synthetic import ensure_synthetic
    from pipa_core.experiments.runs import analysis_datasets

    ensure_synthetic(tmp_path / "synthetic", size="tiny")
    cfg = make_run_config(
        "synthetic", "pipa", data_root=tmp_path, overrides=["data.synthetic_size=tiny"]
    )
    data = analysis_datasets(cfg)
    # source: the 8 tiny training images; target: the 4 labelled val images, unaugmented
    assert len(data["source"]) == 8 and len(data["target"]) == 4
    s = data["source"][0]
    assert s["img"].shape == (3, 32, 64) and s["label"].shape == (32, 64)
    assert (s["label"] != 255).any()
    capped = analysis_datasets(cfg, max_images=2)
    assert [len(capped[k]) for k in ("source", "target")] == [2, 2]
    # the same image twice: no random augmentation
    assert torch.equal(data["target"][1]["img"], data["target"][1]["img"])


def test_seed_curves_read_every_run_and_the_plot_shows_mean_and_band(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from pipa_core.experiments.runs import seed_curves
    from pipa_core.viz.curves import plot_seed_curves

    runs = {}
    for method, base in (("A", 10.0), ("B", 20.0)):
        runs[method] = []
        for seed in range(2):
            run = tmp_path / method / f"seed{seed}"
            run.mkdir(parents=True)
            rows = [{"kind": "train", "iter": 10, "loss": 1.0}]
            rows += [{"kind": "eval", "iter": it, "mIoU": base + it / 10 + seed} for it in (10, 20)]
            (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
            runs[method].append(run)
    df = seed_curves(runs, "mIoU")
    assert len(df) == 8 and set(df["method"]) == {"A", "B"}
    assert seed_curves(runs, "pseudo_acc", kind="train").empty  # a column no run has
    ax = plot_seed_curves(df, start=5.0)
    (line_a, line_b) = ax.get_lines()
    assert list(line_a.get_xdata()) == [0, 10, 20]  # the shared start at iteration 0
    assert list(line_a.get_ydata()) == [5.0, 11.5, 12.5]  # mean over the two seeds
    assert list(line_b.get_ydata())[1:] == [21.5, 22.5]
    assert "2 seeds" in line_a.get_label()
