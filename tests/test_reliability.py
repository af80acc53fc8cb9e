"""What a user can get wrong gets one clear message, and nothing on disk is lost.

Each case goes through the command line users run (``python -m pipa_core.train``'s
``main``), on the tiny synthetic benchmark.
"""

from __future__ import annotations

import json
import os
import stat
import time

import pytest

from pipa_core.data.synthetic import ensure_synthetic
from pipa_core.io import atomic_write_json, remove_stale_temporaries
from pipa_core.train import main as cli_main
from pipa_core.uda.checkpoint import CheckpointError, load_checkpoint

TINY = [
    "data.synthetic_size=tiny",
    "data.batch_size=2",
    "losses.patch.crop_size=32",
    "model.decoder_channels=16",
    "model.init_from=null",
    "model.proj_dim=8",
    "optim.warmup_iters=1",
    "eval.max_samples=2",
    "runtime.num_threads=1",
    "runtime.progress=false",
    "runtime.tensorboard=false",
    "runtime.checkpoint_interval=1",
]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp("syn")
    ensure_synthetic(r / "synthetic", size="tiny")
    return r


def args(root, run_dir, *extra: str, preset: str = "synthetic_dacs") -> list[str]:
    sets = [*TINY, f"data.data_root={root}", *extra]
    return ["--preset", preset, "--run-dir", str(run_dir)] + [a for s in sets for a in ("--set", s)]


def test_resume_with_another_configuration_is_refused_then_allowed_and_recorded(
    root, tmp_path, capsys
):
    run = tmp_path / "run"
    assert cli_main(args(root, run, "optim.max_iters=3", "runtime.stop_after=2")) == 0
    capsys.readouterr()
    # the same run, asked to train longer with another seed: refused, every field listed
    changed = args(root, run, "optim.max_iters=6", "runtime.seed=5") + ["--resume"]
    assert cli_main(changed) == 2
    err = capsys.readouterr().err
    assert "optim.max_iters: 3 in the checkpoint, 6 now" in err
    assert "runtime.seed: 0 in the checkpoint, 5 now" in err
    assert "--allow-config-change" in err
    assert json.loads((run / "config.json").read_text())["optim"]["max_iters"] == 3  # untouched
    # runtime-only changes (device, logging, where the data lives) resume silently
    same = args(root, run, "optim.max_iters=3", "runtime.log_interval=7") + ["--resume"]
    assert cli_main(same + ["--stop-after", "2"]) == 0
    # with the flag the run continues and the change is on record
    assert cli_main(changed + ["--allow-config-change"]) == 0
    record = json.loads((run / "config_changes.json").read_text())
    fields = {c["field"]: (c["old"], c["new"]) for c in record[-1]["changes"]}
    assert fields == {"optim.max_iters": (3, 6), "runtime.seed": (0, 5)}
    assert load_checkpoint(run)["iteration"] == 6


def test_a_truncated_checkpoint_names_the_file_and_what_to_do(root, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli_main(args(root, run, "optim.max_iters=2", "runtime.keep_checkpoint_interval=1")) == 0
    latest = run / "checkpoints" / "latest.pt"
    latest.write_bytes(latest.read_bytes()[:1000])  # a write cut short
    with pytest.raises(CheckpointError, match="truncated or not a pipa_core checkpoint"):
        load_checkpoint(run)
    from pipa_core.experiments.runs import load_segmentor

    with pytest.raises(CheckpointError, match="iter_0000002.pt"):  # evaluating it says the same
        load_segmentor(run)
    capsys.readouterr()
    assert cli_main(args(root, run, "optim.max_iters=2") + ["--resume"]) == 1
    err = capsys.readouterr().err
    assert str(latest) in err and "iter_0000002.pt" in err and "Traceback" not in err


def test_usage_errors_exit_2_data_errors_exit_1_without_tracebacks(root, tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    cases = [
        (args(root, a_file, "optim.max_iters=1"), 2, "is a file, not a directory"),
        (args(root, tmp_path / "r1", "runtime.device=nosuch"), 2, "runtime.device='nosuch'"),
        (args(root, tmp_path / "r2") + ["--stop-after", "0"], 2, "runtime.stop_after=0"),
        (args(root, tmp_path / "r3", "optim.max_iters=1.5"), 2, "expected an integer, got 1.5"),
        (
            args(
                tmp_path / "empty", tmp_path / "r4", "model.pretrained=null", preset="gta2cs_dacs"
            ),
            1,
            "does not exist",
        ),
    ]
    for argv, code, message in cases:
        assert cli_main(argv) == code, message
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err


def test_an_uncreatable_run_dir_is_reported_before_building_the_model(root, tmp_path, capsys):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("")
    # (as root, permissions do not stop writes; a file in the path does, for every user)
    assert cli_main(args(root, blocker / "run", "optim.max_iters=1")) == 2
    err = capsys.readouterr().err
    assert f"runtime.run_dir={blocker / 'run'} is not writable" in err


def test_written_files_follow_the_umask_and_stale_temporaries_go(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "result.json", {"a": 1})
        assert stat.S_IMODE((tmp_path / "result.json").stat().st_mode) == 0o644
        stale = tmp_path / ".result.json.abc123.tmp"
        live = tmp_path / ".result.json.def456.tmp"
        stale.write_text("half")
        live.write_text("being written")
        hour_ago = time.time() - 7200
        os.utime(stale, (hour_ago, hour_ago))
        atomic_write_json(tmp_path / "result.json", {"a": 2})
        assert not stale.exists() and live.exists()  # a concurrent writer's file is kept
        assert remove_stale_temporaries(tmp_path / "result.json", older_than=-1) == [live]
        os.umask(0o077)
        atomic_write_json(tmp_path / "private.json", {})
        assert stat.S_IMODE((tmp_path / "private.json").stat().st_mode) == 0o600
    finally:
        os.umask(old)


def test_generated_data_folders_are_readable_by_the_group(tmp_path):
    old = os.umask(0o022)
    try:
        root = ensure_synthetic(tmp_path / "synthetic", size="tiny")
    finally:
        os.umask(old)
    assert stat.S_IMODE(root.stat().st_mode) == 0o755
