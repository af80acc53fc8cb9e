"""The quickstart results table: aggregation over seeds, gap closed, reuse of finished runs."""

from __future__ import annotations

import json

import pytest

import pipa_core.uda.trainer as trainer_mod
from pipa_core.data.synthetic import ensure_synthetic
from pipa_core.experiments.comparisons import (
    ablation_settings,
    quickstart_config,
    run_quickstart_table,
    summarize_runs,
    to_markdown,
)


def _result(miou: float, seed: int) -> dict:
    return {
        "seed": seed,
        "iterations": 10,
        "train_seconds": 60.0,
        "eval": {"protocols": {"cs19": {"mIoU": miou}}},
    }


def test_summary_mean_std_and_gap_closed():
    table = summarize_runs(
        {
            "source_only": [_result(10, 0), _result(14, 1)],
            "oracle": [_result(50, 0), _result(50, 1)],
            "pipa": [_result(20, 0), _result(24, 1)],
        }
    )
    rows = {r["method"]: r for r in table["rows"]}
    assert table["domain_gap"] == pytest.approx(38.0)
    assert rows["source_only"]["mean"] == 12 and rows["source_only"]["std"] == pytest.approx(
        2**0.5 * 2
    )
    assert rows["pipa"]["gap_closed"] == pytest.approx((22 - 12) / 38)
    assert rows["oracle"]["gap_closed"] == pytest.approx(1.0)
    md = to_markdown(table)
    assert "| Self-training + PiPa | 22.0 ± 2.8 | 20.0, 24.0 | 26 % | 10 | 1.0 |" in md
    assert "Domain gap (oracle − source only): 38.0" in md
    # no oracle: no gap
    assert summarize_runs({"pipa": [_result(20, 0)]})["rows"][0]["gap_closed"] is None


def test_quickstart_table_end_to_end_and_reuse(tmp_path, monkeypatch):
    ensure_synthetic(tmp_path / "data" / "synthetic", size="tiny")
    overrides = [
        "data.synthetic_size=tiny",
        "model.decoder_channels=16",
        "model.init_from=null",
        "model.proj_dim=8",
        "optim.max_iters=2",
        "runtime.num_threads=1",
        "runtime.tensorboard=false",
        "eval.max_samples=2",
    ]
    kw = dict(
        methods=("source_only", "oracle"),
        seeds=(0, 1),
        out_dir=tmp_path / "qs",
        data_root=str(tmp_path / "data"),
        overrides=overrides,
        progress=False,
        jobs=1,
    )
    table = run_quickstart_table(**kw)
    assert [r["method"] for r in table["rows"]] == ["source_only", "oracle"]
    assert all(len(r["miou"]) == 2 for r in table["rows"])
    saved = json.loads((tmp_path / "qs" / "results.json").read_text())
    assert saved["domain_gap"] == pytest.approx(table["domain_gap"])
    md = (tmp_path / "qs" / "results.md").read_text()
    assert md == table["markdown"] + "\n" + table["per_class_markdown"]
    assert (tmp_path / "qs" / "oracle" / "seed1" / "result.json").is_file()

    # A second call reuses the finished runs: training is never called.
    def no_training(cfg):
        raise AssertionError(f"{cfg.name} was trained again")

    monkeypatch.setattr(trainer_mod, "train", no_training)
    again = run_quickstart_table(**kw)
    assert [r["miou"] for r in again["rows"]] == [r["miou"] for r in table["rows"]]
    # The notebook's single runs reuse them the same way.
    from pipa_core.experiments.comparisons import quickstart_config, train_or_reuse

    cfg = quickstart_config(
        "oracle", 1, tmp_path / "qs", str(tmp_path / "data"), [*overrides, "runtime.progress=false"]
    )
    assert train_or_reuse(cfg)["mIoU"] == pytest.approx(table["rows"][1]["miou"][1])
    # A changed configuration is not reused.
    with pytest.raises(AssertionError, match="trained again"):
        run_quickstart_table(**{**kw, "overrides": [*overrides, "optim.lr=1e-3"]})


def test_quickstart_table_resumes_an_interrupted_run(tmp_path):
    ensure_synthetic(tmp_path / "data" / "synthetic", size="tiny")
    overrides = [
        "data.synthetic_size=tiny",
        "model.decoder_channels=16",
        "model.init_from=null",
        "model.proj_dim=8",
        "optim.max_iters=3",
        "runtime.log_interval=1",
        "runtime.num_threads=1",
        "runtime.tensorboard=false",
        "eval.max_samples=2",
    ]
    data_root = str(tmp_path / "data")
    cfg = quickstart_config(
        "source_only", 0, tmp_path / "qs", data_root, [*overrides, "runtime.stop_after=2"]
    )
    assert not trainer_mod.train(cfg)["finished"]  # interrupted after 2 of 3 iterations
    table = run_quickstart_table(
        methods=("source_only",), seeds=(0,), out_dir=tmp_path / "qs", data_root=data_root,
        overrides=overrides, progress=False, jobs=1,
    )  # fmt: skip
    assert table["rows"][0]["iterations"] == 3
    rows = (tmp_path / "qs" / "source_only" / "seed0" / "metrics.jsonl").read_text().splitlines()
    train_iters = [json.loads(r)["iter"] for r in rows if json.loads(r)["kind"] == "train"]
    assert train_iters == [1, 2, 3]  # iterations 1-2 from the first process, 3 resumed


def test_parallel_runs_give_the_same_results_as_sequential_ones(tmp_path):
    ensure_synthetic(tmp_path / "data" / "synthetic", size="tiny")
    overrides = [
        "data.synthetic_size=tiny",
        "model.decoder_channels=16",
        "model.init_from=null",
        "model.proj_dim=8",
        "losses.patch.crop_size=32",
        "optim.max_iters=2",
        "optim.warmup_iters=1",
        "runtime.num_threads=1",
        "runtime.tensorboard=false",
        "eval.max_samples=2",
    ]
    kw = dict(
        methods=("dacs", "pipa"), seeds=(0,), data_root=str(tmp_path / "data"),
        overrides=overrides, progress=False,
    )  # fmt: skip
    two = run_quickstart_table(out_dir=tmp_path / "two", jobs=2, **kw)
    one = run_quickstart_table(out_dir=tmp_path / "one", jobs=1, **kw)
    assert [r["miou"] for r in two["rows"]] == [r["miou"] for r in one["rows"]]
    assert [r["per_class"] for r in two["rows"]] == [r["per_class"] for r in one["rows"]]
    assert two["runs"]["pipa"] == [str(tmp_path / "two" / "pipa" / "seed0")]
    md = (tmp_path / "two" / "results.md").read_text()
    assert "| class | Self-training (DACS) | Self-training + PiPa |" in md and "| road |" in md


def test_warm_start_command_trains_exports_and_records(tmp_path):
    from pipa_core.io import sha256_file
    from pipa_core.models.pretrained import read_state_dict
    from pipa_core.warm_start import main

    ensure_synthetic(tmp_path / "data" / "synthetic", size="tiny")
    out = tmp_path / "ws.pt"
    sets = [
        "data.synthetic_size=tiny", "model.decoder_channels=16", "optim.max_iters=2",
        "optim.warmup_iters=1", "runtime.tensorboard=false", "runtime.progress=false",
        "eval.max_samples=2",
    ]  # fmt: skip
    card = main(
        [
            "--out",
            str(out),
            "--run-dir",
            str(tmp_path / "run"),
            "--data-root",
            str(tmp_path / "data"),
        ]
        + [a for s in sets for a in ("--set", s)]
    )
    assert card["sha256"] == sha256_file(out) and card["iterations"] == 2
    assert card["config"]["model"]["init_from"] is None  # trained from random weights
    assert card["command"].startswith(
        "python -m pipa_core.warm_start --set data.synthetic_size=tiny"
    )
    saved = json.loads(out.with_suffix(".json").read_text())
    assert saved == card
    sd = read_state_dict(out)
    assert any(k.startswith("encoder.") for k in sd) and not any(
        k.startswith("proj_heads.") for k in sd
    )
    # a synthetic run starts from it
    cfg = quickstart_config(
        "dacs", 0, tmp_path / "qs", str(tmp_path / "data"), [*sets, f"model.init_from={out}"]
    )
    result = trainer_mod.train(cfg)
    assert result["finished"] and result["init_from_sha256"] == card["sha256"]


def test_ablation_settings_add_temporal_only_on_video():
    assert list(ablation_settings(False)) == ["self-training", "+pixel", "+patch", "+pixel+patch"]
    assert ablation_settings(True)["+pixel+patch+temporal"] == ("pixel", "patch", "temporal")


def test_mic_is_an_optional_row_of_the_quickstart_table():
    from pipa_core.experiments.comparisons import (
        METHOD_LABELS,
        QUICKSTART_METHODS,
        quickstart_config,
    )

    assert "mic" not in QUICKSTART_METHODS  # not in the default 15-minute run
    mic, dacs = quickstart_config("mic", 0, "runs/q"), quickstart_config("dacs", 0, "runs/q")
    assert mic.uda.mic and not dacs.uda.mic and mic.uda.mic_block_size == 16
    # the same protocol as the other rows: warm start, schedule, seed; only MIC differs
    assert mic.model.init_from == dacs.model.init_from and mic.optim == dacs.optim
    assert METHOD_LABELS["mic"] == "Self-training + MIC"


def test_a_finished_run_is_reused_only_for_its_own_seed(tmp_path):
    """Reuse compares every setting that changes a result, the seed included; where the
    run lives, its threads and its logging do not count."""
    from pipa_core.experiments.comparisons import finished_result, quickstart_config

    def finish(cfg, miou):
        cfg.resolved_run_dir.mkdir(parents=True)
        (cfg.resolved_run_dir / "config.json").write_text(json.dumps(cfg.to_dict()))
        result = {"finished": True, "mIoU": miou, "init_from_sha256": None}
        (cfg.resolved_run_dir / "result.json").write_text(json.dumps(result))

    base = ["model.init_from=null", "data.synthetic_size=tiny"]
    finish(quickstart_config("dacs", 0, tmp_path / "qs", overrides=base), 30.0)
    seed1 = quickstart_config("dacs", 1, tmp_path / "abl", overrides=base)
    assert finished_result(seed1, [tmp_path / "qs"]) is None  # seed 0's run is not seed 1's
    seed0 = quickstart_config(
        "dacs",
        0,
        tmp_path / "abl",
        overrides=[*base, "runtime.num_threads=1", "runtime.log_interval=5"],
    )
    assert finished_result(seed0, [tmp_path / "qs"])["mIoU"] == 30.0
    det = quickstart_config(
        "dacs", 0, tmp_path / "abl", overrides=[*base, "runtime.deterministic=true"]
    )
    assert finished_result(det, [tmp_path / "qs"]) is None
    finish(quickstart_config("dacs", 1, tmp_path / "qs", overrides=base), 31.0)
    assert finished_result(seed1, [tmp_path / "qs"])["mIoU"] == 31.0


def test_the_ablation_control_is_source_only_on_the_method_s_data_setting(tmp_path):
    from pipa_core.experiments.comparisons import (
        _comparable,
        ablation_config,
        control_config,
        quickstart_config,
    )

    for method in ("pipa", "daformer"):
        control = control_config("gta2cs", 0, tmp_path, method=method)
        row = ablation_config("gta2cs", method, "self-training", (), 0, tmp_path)
        assert control.uda.mode == "source_only" and not control.losses.enabled
        assert control.data.crop_size == row.data.crop_size
        assert control.data.target_scale == row.data.target_scale
        assert control.optim.max_iters == row.optim.max_iters
    assert control_config("gta2cs", 0, tmp_path, method="pipa").optim.max_iters == 60000
    assert control_config("gta2cs", 0, tmp_path, method="daformer").optim.max_iters == 40000
    # on the embedded benchmark it is the quickstart's control, so its run is reused
    ours = control_config("synthetic", 1, tmp_path / "abl", "data", ["optim.max_iters=3"])
    theirs = quickstart_config("source_only", 1, tmp_path / "qs", "data", ["optim.max_iters=3"])
    assert _comparable(ours.to_dict()) == _comparable(theirs.to_dict())
