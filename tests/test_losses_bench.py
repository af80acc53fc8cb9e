"""The loss benchmark runs end to end and writes its JSON and markdown results."""

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_losses.py"


def test_bench_writes_json_and_markdown(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_losses", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert (
        mod.main(["--device", "cpu", "--size", "tiny", "--repeats", "1", "--out", str(tmp_path)])
        == 0
    )
    data = json.loads((tmp_path / "losses_cpu.json").read_text())
    losses = {r["loss"] for r in data["results"]}
    assert losses == {"info_nce", "pixel", "patch", "temporal", "prototype"}
    assert all(r["time_ms"] > 0 and r["peak_mib"] >= 0 for r in data["results"])
    md = (tmp_path / "losses_cpu.md").read_text()
    assert md.count("\n| ") == len(data["results"]) + 1  # header + one row per result
