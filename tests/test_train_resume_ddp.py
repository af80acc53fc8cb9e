"""Never lose a run: bit-exact resume after a stop, and 2-process DDP (gloo) staying in sync."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from pipa_core.config import TrainConfig, apply_overrides, get_preset
from pipa_core.data.synthetic import ensure_synthetic
from pipa_core.uda.checkpoint import load_checkpoint
from pipa_core.uda.trainer import train

REPO = Path(__file__).resolve().parents[1]


def tiny_pipa(root: Path, *extra: str) -> TrainConfig:
    """PiPa with every stateful part on (memory banks, prototypes), on the tiny synthetic benchmark."""
    return apply_overrides(
        get_preset("synthetic_pipa"),
        [
            "model.decoder_channels=16",
            "model.init_from=null",
            "model.proj_dim=8",
            "data.synthetic_size=tiny",
            f"data.data_root={root}",
            "data.num_workers=0",
            "losses.enabled=pixel,patch,prototype",
            "losses.pixel.memory_size=20",
            "losses.patch.memory_size=64",
            "losses.patch.crop_size=32",
            "optim.max_iters=6",
            "optim.warmup_iters=2",
            "runtime.num_threads=1",
            "runtime.progress=false",
            "runtime.tensorboard=false",
            "runtime.log_interval=1",
            "runtime.checkpoint_interval=0",
            "runtime.image_interval=0",
            "eval.max_samples=1",
            *extra,
        ],
    )


def _cli(*args: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-m", "pipa_core.train", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def _assert_same(a, b, where: str = "") -> None:
    """Recursive bitwise equality of nested dicts / lists / tensors."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    elif torch.is_tensor(a):
        assert a.dtype == b.dtype and torch.equal(a, b), f"{where} differs"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.mark.slow
def test_stopped_and_resumed_run_matches_uninterrupted_run_bitwise(tmp_path):
    ensure_synthetic(tmp_path / "data" / "synthetic", size="tiny")
    cfg_path = tmp_path / "cfg"
    tiny_pipa(tmp_path / "data").save(cfg_path)
    full, part = tmp_path / "full", tmp_path / "part"
    # A separate process trains 3 of 6 iterations and exits, as if killed after its checkpoint.
    _cli("--config", str(cfg_path), "--run-dir", str(part), "--stop-after", "3")
    stopped = load_checkpoint(part)
    assert stopped["iteration"] == 3 and stopped["data"]["batch_in_epoch"] == 3
    assert '"mIoU"' not in (part / "result.json").read_text()  # not finished, not evaluated
    # The uninterrupted run and the resumed run (the saved config, runtime.resume) in-process.
    train(apply_overrides(TrainConfig.load(cfg_path), [f"runtime.run_dir={full}"]))
    resumed = apply_overrides(
        TrainConfig.load(part), ["runtime.resume=true", "runtime.stop_after=null"]
    )
    assert train(resumed)["finished"]
    a, b = load_checkpoint(full), load_checkpoint(part)
    assert a["iteration"] == b["iteration"] == 6
    for key in (
        "student",
        "teacher",
        "losses",
        "optimizer",
        "scheduler",
        "rng",
        "step_generator",
        "data",
    ):
        _assert_same(a[key], b[key], key)
    assert b["losses"]["pixel"]["memory_bank.count"].sum() > 0
    rows = (part / "metrics.jsonl").read_text().splitlines()
    iters = [int(r.split('"iter": ')[1].split(",")[0]) for r in rows if '"kind": "train"' in r]
    assert iters == [1, 2, 3, 4, 5, 6]  # every iteration logged exactly once


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, cfg_dict: dict, out_dir: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    from pipa_core.uda.distributed import cleanup
    from pipa_core.uda.trainer import Trainer

    trainer = Trainer(TrainConfig.from_dict(cfg_dict))
    names: list[str] = []
    real_step = trainer.step_fn

    def step(batch, nets, cfg, ctx):
        names.extend(batch["source"]["name"])
        return real_step(batch, nets, cfg, ctx)

    trainer.step_fn = step
    result = trainer.fit()
    state = {
        "student": trainer.student.state_dict(),
        "teacher": trainer.nets.teacher.state_dict(),
        "names": names,
        "miou": result["mIoU"],
    }
    torch.save(state, Path(out_dir) / f"rank{rank}.pt")
    cleanup()


@pytest.mark.slow
def test_ddp_two_cpu_processes_stay_in_sync(tmp_path):
    ensure_synthetic(tmp_path / "data" / "synthetic", size="tiny")
    cfg = tiny_pipa(
        tmp_path / "data",
        "optim.max_iters=3",
        "data.batch_size=1",
        "data.rcs=false",  # sources by sampler index, so the shards below are the ranks' own
        f"runtime.run_dir={tmp_path / 'run'}",
    )
    mp.spawn(_ddp_worker, args=(2, _free_port(), cfg.to_dict(), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    _assert_same(r0["student"], r1["student"], "student")  # gradients and BN statistics averaged
    _assert_same(r0["teacher"], r1["teacher"], "teacher")
    assert r0["miou"] == r1["miou"]  # evaluation sums the confusion matrix over ranks
    assert not set(r0["names"]) & set(r1["names"])  # each rank read its own shard
    ck = load_checkpoint(tmp_path / "run")
    assert ck["iteration"] == 3 and ck["world_size"] == 2
    _assert_same(ck["student"], r0["student"], "checkpoint")
    assert (tmp_path / "run" / "checkpoints" / "rng_rank1.pt").is_file()


@pytest.mark.slow
def test_sigterm_checkpoints_and_exits(tmp_path):
    """A pre-empted job (SIGTERM) finishes its iteration, writes latest.pt and exits with 143."""
    ensure_synthetic(tmp_path / "data" / "synthetic", size="tiny")
    cfg_path = tmp_path / "cfg"
    tiny_pipa(tmp_path / "data", "optim.max_iters=100000").save(cfg_path)
    run = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipa_core.train", "--config", str(cfg_path), "--run-dir", str(run)],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    metrics = run / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (metrics.is_file() and metrics.read_text().strip()):
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    ck = load_checkpoint(run)
    logged = [int(r.split('"iter": ')[1].split(",")[0]) for r in metrics.read_text().splitlines()]
    assert ck["iteration"] >= 1 and ck["iteration"] == max(logged)
    assert "checkpointed at iteration" in err


def _hang_worker(rank: int, world: int, port: int, cfg_dict: dict, out_dir: str) -> None:
    """Rank 1 stops itself (SIGSTOP, a hung process) at iteration 1; rank 0 reports."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
        WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
    )  # fmt: skip
    from pipa_core.uda.distributed import DistributedTimeoutError
    from pipa_core.uda.trainer import Trainer

    trainer = Trainer(TrainConfig.from_dict(cfg_dict))
    real_step = trainer.step_fn

    def step(batch, nets, cfg, ctx):
        if rank == 1 and trainer.iteration == 1:
            os.kill(os.getpid(), signal.SIGSTOP)
        return real_step(batch, nets, cfg, ctx)

    trainer.step_fn = step
    try:
        trainer.fit()
        message = "finished"
    except DistributedTimeoutError as exc:
        message = str(exc)
    (Path(out_dir) / f"rank{rank}.txt").write_text(message)


@pytest.mark.slow
def test_a_hung_peer_makes_the_other_rank_stop_with_a_message(tmp_path):
    ensure_synthetic(tmp_path / "data" / "synthetic", size="tiny")
    cfg = tiny_pipa(
        tmp_path / "data", "optim.max_iters=4", "data.batch_size=1", "data.rcs=false",
        "runtime.ddp_timeout_s=5", f"runtime.run_dir={tmp_path / 'run'}",
    )  # fmt: skip
    ctx = mp.spawn(
        _hang_worker, args=(2, _free_port(), cfg.to_dict(), str(tmp_path)), nprocs=2, join=False
    )
    rank0, rank1 = ctx.processes
    rank0.join(timeout=300)  # rank 0 gives up after 5 s in its next collective
    try:
        assert rank0.exitcode == 0
        message = (tmp_path / "rank0.txt").read_text()
        assert "rank 0 of 2" in message and "runtime.ddp_timeout_s=5 s" in message
        assert "rank 1 stopped answering" in message and "runtime.resume=true" in message
        saved = tmp_path / "run" / "checkpoints" / "timeout_rank0.pt"
        assert f"iteration 1 is in {saved}" in message
        state = load_checkpoint(saved)
        assert state["iteration"] == 1  # back at the last boundary, the failed step undone
    finally:
        os.kill(rank1.pid, signal.SIGKILL)
        rank1.join(timeout=30)
