"""The inference benchmark times every (mode, batch size) and reports times per image."""

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_inference.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_inference", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_inference_reports_each_batch_size_per_image(tmp_path):
    mod = _load()
    argv = ["--device", "cpu", "--smoke", "--modes", "whole", "--batch-sizes", "1,3"]
    assert mod.main([*argv, "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "inference_cpu.json").read_text())
    rows = data["results"]
    assert [r["batch"] for r in rows] == [1, 3] and data["meta"]["batch_sizes"] == [1, 3]
    for r in rows:
        assert r["ms_per_image"] == pytest.approx(r["median_ms"] / r["batch"], abs=0.01)
        assert r["images_per_s"] == pytest.approx(1e3 / r["ms_per_image"], rel=0.01)
    md = (tmp_path / "inference_cpu.md").read_text()
    assert md.count("\n| quickstart ") == 2


def test_bench_inference_rejects_a_bad_batch_size(tmp_path):
    mod = _load()
    with pytest.raises(SystemExit, match="batch-sizes"):
        mod.main(["--device", "cpu", "--smoke", "--batch-sizes", "0", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="batch-sizes"):
        mod.main(["--device", "cpu", "--smoke", "--batch-sizes", "four", "--out", str(tmp_path)])
