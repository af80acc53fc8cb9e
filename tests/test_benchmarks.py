"""The benchmark suite in --smoke mode: every script runs and writes its JSON and markdown.

Timing values are never asserted (they depend on the machine); the tests check
that each script measures what it claims (phases, modes, worker counts), that
the numbers are well-formed, and that the engine is left un-instrumented.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_test_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    sys.path.insert(0, str(BENCH))
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module", autouse=True)
def _restore_threads():
    """The scripts set 1 torch thread on CPU; give the rest of the test session its own."""
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    """Run the whole suite once, in-process, at smoke sizes."""
    out = tmp_path_factory.mktemp("bench")
    assert (
        _load("run_all").main(["--smoke", "--in-process", "--device", "cpu", "--out", str(out)])
        == 0
    )
    return out


def _json(out: Path, stem: str) -> dict:
    return json.loads((out / f"{stem}_cpu.json").read_text())


def _check_meta(meta: dict) -> None:
    for key in ("date_utc", "command", "cpu_model", "cpu_cores", "torch", "device"):
        assert meta[key] not in (None, ""), key
    assert meta["device"] == "cpu" and meta["gpu_name"] is None


def test_train_step_phases_and_ablation(results):
    res = _json(results, "train_step")
    _check_meta(res["meta"])
    (r,) = res["results"]
    assert r["name"] == "quickstart" and r["losses"] == ["pixel", "patch"] and r["reduced"]
    ph = r["phases"]
    expected = {
        "teacher_forward", "pseudo_label", "classmix", "strong_augment",
        "student_forward_source", "cross_entropy_source", "student_forward_mixed",
        "cross_entropy_mixed", "pixel_projection", "pixel_loss", "patch_sampling",
        "student_forward_patch_crops", "patch_projection", "patch_loss", "backward_total",
        "backward_to_student_source", "backward_to_student_mixed",
        "backward_to_student_patch_crops", "grad_norm_and_checks", "optimizer_step",
        "ema_update", "step_total_instrumented",
    }  # fmt: skip
    assert expected <= set(ph)
    assert all(v["ms"] >= 0 for v in ph.values())
    # the backward intervals partition the measured backward pass
    parts = sum(
        v["ms"] for k, v in ph.items() if k.startswith("backward_") and k != "backward_total"
    )
    assert parts == pytest.approx(ph["backward_total"]["ms"], rel=0.02, abs=0.5)
    # phases are parts of the instrumented step
    top = [
        k
        for k in ph
        if not k.startswith("backward_to") and k not in ("backward_rest", "step_total_instrumented")
    ]
    assert sum(ph[k]["ms"] for k in top) <= ph["step_total_instrumented"]["ms"] * 1.01 + 1
    assert r["step"]["median_ms"] > 0 and r["step"]["n"] == 1 and r["step"]["cpu_median_ms"] > 0
    assert all(v["cpu_ms"] >= 0 for v in ph.values())
    base = r["ablation"]["without_contrastive"]
    assert base["losses"] == [] and base["median_ms"] > 0
    assert r["contrastive_overhead_pct"] == base["overhead_pct"]
    md = (results / "train_step_cpu.md").read_text()
    assert (
        "## Phases: quickstart" in md
        and "| teacher_forward |" in md
        and res["meta"]["command"] in md
    )


def test_train_step_probe_restores_the_engine(results):
    import pipa_core.losses as losses_pkg
    from pipa_core.uda import mixing, pseudo_label, step

    assert step.make_pseudo_label is pseudo_label.make_pseudo_label
    assert step.mix_batch is mixing.mix_batch and step.strong_augment is mixing.strong_augment
    assert losses_pkg.sample_patch_pair.__module__ == "pipa_core.losses.patch"


def test_inference_modes(results):
    res = _json(results, "inference")
    _check_meta(res["meta"])
    modes = {r["mode"]: r for r in res["results"]}
    assert set(modes) == {"whole", "slide"}
    assert all(r["images_per_s"] > 0 and r["median_ms"] >= 0 for r in modes.values())
    # the evaluation default: the training crop as window, stride half of it
    assert modes["slide"]["crop_size"] == [64, 64] and modes["slide"]["stride"] == [32, 32]
    assert (
        "| quickstart | daformer_mit_b0 | 64x128 | slide |"
        in (results / "inference_cpu.md").read_text()
    )


def test_data_loader_and_stages(results):
    res = _json(results, "data")
    _check_meta(res["meta"])
    r = res["results"]
    assert [x["num_workers"] for x in r["loader"]] == [0, 1]
    assert all(x["samples_per_s"] > 0 for x in r["loader"])
    stages = {s["stage"] for s in r["stages"]}
    assert {
        "decode PNG image",
        "decode JPEG image (q95)",
        "cat-max-ratio crop",
        "photometric distortion",
    } <= stages
    assert all(s["median_ms"] >= 0 for s in r["stages"])
    # compared with the train-step result written just before by the suite
    assert r["step"]["source"].startswith("train_step_cpu.json")
    assert r["required_samples_per_s"] == pytest.approx(3 * r["consumed_samples_per_s"], rel=1e-2)
    assert set(r["meets_3x_target"]) == {"0", "1"}
    assert "## Per-stage cost" in (results / "data_cpu.md").read_text()


def test_engine_ops(results):
    res = _json(results, "engine_ops")
    _check_meta(res["meta"])
    ops = {(r["op"], r["impl"]): r for r in res["results"]}
    assert set(ops) == {
        ("gaussian_blur", "engine"), ("gaussian_blur", "reference: 2-D kernel"),
        ("color_jitter", "engine"), ("ema_update", "engine"),
        ("ema_update", "reference: lerp_ per tensor"),
        ("optimizer_step", "engine"), ("optimizer_step", "reference: AdamW()"),
    }  # fmt: skip
    assert (
        "kernel 9" in ops[("gaussian_blur", "engine")]["size"]
    )  # 64-pixel crop: 2 * ceil(3.2) + 1
    assert all(r["median_ms"] >= 0 for r in ops.values())


def test_summary_lists_every_benchmark_and_the_targets(results):
    assert json.loads((results / "losses_cpu.json").read_text())["results"]
    md = (results / "summary.md").read_text()
    for header in (
        "## Training step",
        "## Contrastive losses",
        "## Inference",
        "## Data loading",
        "## Targets",
    ):
        assert header in md
    assert "not measured here (needs a GPU)" in md and "Missing results" not in md


def test_bad_arguments_give_clear_errors(tmp_path):
    bts = _load("bench_train_step")
    with pytest.raises(SystemExit, match="unknown configuration 'nope'; valid: quickstart"):
        bts.main(["--smoke", "--models", "nope", "--device", "cpu", "--out", str(tmp_path)])
    bd = _load("bench_data")
    with pytest.raises(SystemExit, match="comma-separated integers"):
        bd.main(["--smoke", "--workers", "zero", "--device", "cpu", "--out", str(tmp_path)])
    ra = _load("run_all")
    with pytest.raises(SystemExit, match="unknown benchmark 'speed'"):
        ra.main(["--only", "speed", "--device", "cpu", "--out", str(tmp_path)])


def test_gpu_check_without_cuda_exits_at_once_with_one_line(capsys):
    import torch

    if torch.cuda.is_available():  # on a GPU machine the check itself is what runs
        pytest.skip("a CUDA GPU is visible: the no-GPU message does not apply")
    assert _load("gpu_check").main([]) == 2
    out = capsys.readouterr().out.strip().splitlines()
    assert out == ["gpu_check needs a CUDA GPU and none is visible here; nothing was run."]


def test_gpu_check_plan_runs_end_to_end_at_smoke_sizes(tmp_path):
    gc = _load("gpu_check")
    # the paper plan: every measurement the issue names, each with a time limit
    names = [s["name"] for s in gc.plan(False, "cuda", tmp_path)]
    assert names == ["cuda_tests", "pipa_fp32", "pipa_bf16", "pipa_bf16_compile",
                     "dacs_daformer_bf16", "dinov2_l_bf16", "hrda_memory", "inference"]  # fmt: skip
    assert sum(s["limit_s"] for s in gc.plan(False, "cuda", tmp_path)) <= 8 * 60
    only = "cuda_tests,pipa_bf16,hrda_memory"
    code = gc.main(["--smoke", "--device", "cpu", "--out", str(tmp_path), "--only", only])
    report = json.loads((tmp_path / "gpu_check_cpu.json").read_text())
    assert code == 0 and [s["status"] for s in report["steps"]] == ["ok", "ok", "ok"]
    assert "skipped" in report["steps"][0]["summary"]  # the CUDA tests skip on a CPU
    h = report["headline"]
    assert h["pipa_bf16_step_s"] > 0 and h["pipa_bf16_peak_gib"] > 0 and h["hrda_pipa_peak_gib"] > 0
    assert set(h["meets_target"]) == {"pipa_step_bf16_s", "pipa_peak_gib", "hrda_pipa_peak_gib"}
    assert (
        report["meta"]["torch"]
        and "| pipa_bf16 | ok |" in (tmp_path / "gpu_check_cpu.md").read_text()
    )
