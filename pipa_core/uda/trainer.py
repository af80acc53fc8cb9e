"""The training loop: ``train(config) -> result`` on CPU, one GPU, or many via ``torchrun``.

Read :meth:`Trainer.fit` top to bottom: fetch a batch, run the step
(:mod:`pipa_core.uda.step`), back-propagate (mixed precision optional), skip
non-finite steps, step the optimizer and the learning-rate schedule, update the
EMA teacher, then log / evaluate / checkpoint on schedule.

Nothing is lost when a run dies: ``checkpoints/latest.pt`` holds everything
needed to continue bit-for-bit (see :mod:`pipa_core.uda.checkpoint`), a
SIGTERM / SIGINT finishes the current iteration and checkpoints before exiting,
and ``runtime.resume=true`` continues from the last checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from pipa_core.config import ConfigError, TrainConfig, resolve
from pipa_core.io import atomic_torch_save, atomic_write_json
from pipa_core.uda import checkpoint as ckpt
from pipa_core.uda.data_stream import BatchStream, build_datasets, val_loader
from pipa_core.uda.distributed import (
    DistInfo,
    DistributedTimeoutError,
    all_reduce_mean,
    barrier,
    broadcast_flag,
    init_distributed,
    is_timeout,
)
from pipa_core.uda.engine import Engine
from pipa_core.uda.run_logger import RunLogger
from pipa_core.uda.step import StepOutput, training_step

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Too many consecutive non-finite losses / gradients; the last good checkpoint is kept."""


#: Fields a resumed run may change freely: where and how it runs and logs, not what it
#: trains (the seed, the schedule, the data and the model must match the checkpoint).
RESUMABLE_CHANGES = ("name", "method", "data.data_root", "data.num_workers", "eval.interval",
                     "eval.batch_size")  # fmt: skip


def config_changes(saved: dict, now: dict, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """``(field, saved value, new value)`` for every difference that a resume must not make
    silently: anything but ``runtime.*`` (``runtime.seed`` excepted) and
    :data:`RESUMABLE_CHANGES`."""
    out = []
    for k in sorted(set(saved) | set(now)):
        key = f"{prefix}{k}"
        a, b = saved.get(k), now.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_changes(a, b, key + ".")
        elif (
            a != b
            and key not in RESUMABLE_CHANGES
            and not (key.startswith("runtime.") and key != "runtime.seed")
        ):
            out.append((key, a, b))
    return out


def check_run_dir(run_dir: Path, is_main: bool = True) -> None:
    """A usable run directory: not a file, creatable and writable (raises ConfigError)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(
            f"runtime.run_dir={run_dir} is a file, not a directory; choose another --run-dir"
        )
    if not is_main:
        return
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write_test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(
            f"runtime.run_dir={run_dir} is not writable ({exc.strerror}); choose a directory "
            "you can write to (--run-dir) or fix its permissions"
        ) from None


class Trainer:
    """Builds everything from a :class:`TrainConfig` and runs :meth:`fit`.

    Attributes of interest: ``student`` (unwrapped segmentor), ``nets``
    (:class:`~pipa_core.uda.step.Networks`), ``optimizer``, ``scheduler``,
    ``iteration`` (completed iterations), ``run_dir``, ``step_fn`` (the step function;
    replaceable, e.g. to inject failures in tests).
    """

    def __init__(self, cfg: TrainConfig):
        self.run = resolve(cfg)  # validated, resolved once: everything below reads it
        self.cfg = cfg = self.run.cfg
        r = cfg.runtime
        if r.num_threads is not None:
            torch.set_num_threads(r.num_threads)
        if r.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        self.info: DistInfo = init_distributed(r.device, timeout_s=r.ddp_timeout_s)
        self.device = self.info.device
        self.run_dir = cfg.resolved_run_dir
        self.spec = self.run.spec
        # What a user can get wrong is checked before the (slow) model building.
        check_run_dir(self.run_dir, self.info.is_main)
        resume_state = self._read_resume_state() if r.resume else None
        train_set, self.val_set = build_datasets(self.run)

        self.engine = Engine.build(self.run, self.info)
        e = self.engine  # the trainer's names for the engine's parts (same objects)
        self.student, self.nets, self.optimizer = e.student, e.nets, e.optimizer
        self.scheduler, self.scaler, self.amp_dtype = e.scheduler, e.scaler, e.amp_dtype
        self.generator, self.ctx = e.generator, e.ctx

        self.stream = BatchStream(
            train_set, cfg.data.batch_size, self.info, r.seed, cfg.data.num_workers
        )
        self.val_loader = val_loader(self.val_set, cfg, self.info)
        self.eval_settings = self.run.eval

        self.iteration = 0
        self.nonfinite_streak = 0
        self.skipped_steps = 0
        self.step_fn: Callable[..., StepOutput] = training_step
        self._stop_signal: Optional[int] = None
        if resume_state is not None:
            self.resume(resume_state)
        elif r.resume:
            log.warning("runtime.resume: no checkpoint in %s; starting from scratch", self.run_dir)
        elif ckpt.find_latest(self.run_dir) is not None and self.info.is_main:
            log.warning(
                "%s already holds a checkpoint; starting from scratch and overwriting it "
                "(pass --resume / runtime.resume=true to continue it instead)",
                self.run_dir,
            )
        resumed_at = self.iteration if r.resume else None
        self.logger = RunLogger(self.run_dir, self.info.is_main, r.tensorboard, resumed_at)
        if self.info.is_main:
            cfg.save(self.run_dir)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything a bit-exact continuation needs (weights_only-loadable)."""
        return {
            "iteration": self.iteration,
            "config": self.cfg.to_dict(),
            "student": self.student.state_dict(),
            "teacher": self.nets.teacher.state_dict() if self.nets.teacher is not None else None,
            "losses": {k: v.state_dict() for k, v in self.nets.losses.items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": ckpt.capture_rng_state(),
            "step_generator": ckpt.generator_state(self.generator),
            "data": self.stream.state_dict(),
            "nonfinite_streak": self.nonfinite_streak,
            "skipped_steps": self.skipped_steps,
            "world_size": self.info.world_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` (RNG states are per process; see :meth:`save`)."""
        try:
            self.student.load_state_dict(state["student"])
        except RuntimeError as exc:
            lines = [x.strip() for x in str(exc).splitlines() if "size mismatch" in x]
            saved = state.get("config", {}).get("model", {}).get("arch")
            raise ConfigError(
                f"the checkpoint's weights do not fit model.arch={self.cfg.model.arch!r} "
                f"(it was written by model.arch={saved!r}): {len(lines)} tensors differ in "
                f"shape, e.g. {lines[0] if lines else str(exc).splitlines()[0]}. Resume with "
                "the checkpoint's own model settings."
            ) from None
        if self.nets.teacher is not None:
            if state["teacher"] is None:
                raise ValueError("the checkpoint has no teacher (it is from a supervised run)")
            self.nets.teacher.load_state_dict(state["teacher"])
        for k, v in self.nets.losses.items():
            v.load_state_dict(state["losses"][k])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.generator.set_state(state["step_generator"])
        ckpt.restore_rng_state(state["rng"])
        self.stream.load_state_dict(state["data"])
        self.iteration = int(state["iteration"])
        self.nonfinite_streak = int(state["nonfinite_streak"])
        self.skipped_steps = int(state["skipped_steps"])

    def _rank_rng_path(self) -> Path:
        return self.run_dir / "checkpoints" / f"rng_rank{self.info.rank}.pt"

    def save(self, keep: bool = False) -> None:
        """Checkpoint (rank 0 writes the model; every rank writes its own RNG / data position)."""
        state = self.state_dict()
        if self.info.distributed:
            # Other ranks' RNG and stream states differ from rank 0's: keep one small file each.
            atomic_torch_save(
                {
                    "rng": state["rng"],
                    "step_generator": state["step_generator"],
                    "data": state["data"],
                },
                self._rank_rng_path(),
            )
        if self.info.is_main:
            ckpt.save_checkpoint(state, self.run_dir, keep=keep)
        barrier()

    def _read_resume_state(self) -> Optional[dict[str, Any]]:
        """The checkpoint to resume from (None: there is none), after checking that it is the
        run this config describes (:func:`config_changes`)."""
        path = ckpt.find_latest(self.run_dir)
        if path is None:
            return None
        state = ckpt.load_checkpoint(path, map_location="cpu")
        changes = config_changes(state.get("config", {}), self.cfg.to_dict())
        if changes and not self.cfg.runtime.allow_config_change:
            listed = "\n  - ".join(
                f"{k}: {old!r} in the checkpoint, {new!r} now" for k, old, new in changes
            )
            raise ConfigError(
                f"--resume of {path} with a different configuration:\n  - {listed}\n"
                "Resume with the run's own configuration (python -m pipa_core.train --run-dir "
                f"{self.run_dir} --resume, no --preset / --set), start a new run directory, "
                "or pass --allow-config-change (runtime.allow_config_change=true) to continue "
                "with the new values; the change is then recorded in config_changes.json."
            )
        if changes and self.info.is_main:
            for k, old, new in changes:
                log.warning("resume with a changed configuration: %s %r -> %r", k, old, new)
            record = self.run_dir / "config_changes.json"
            history = json.loads(record.read_text()) if record.is_file() else []
            history.append(
                {
                    "iteration": int(state["iteration"]),
                    "changes": [{"field": k, "old": o, "new": n} for k, o, n in changes],
                }
            )
            atomic_write_json(record, history)
        state["path"] = str(path)
        return state

    def resume(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint read by :meth:`_read_resume_state`."""
        path = state.pop("path")  # read on the CPU: load_state_dict copies to the device
        if int(state.get("world_size", 1)) != self.info.world_size:
            log.warning(
                "resuming a %s-process run on %s processes: the data order will differ",
                state.get("world_size"), self.info.world_size,
            )  # fmt: skip
        self.load_state_dict(state)
        rank_file = self._rank_rng_path()
        if (
            self.info.distributed
            and rank_file.is_file()
            and state.get("world_size") == self.info.world_size
        ):
            own = ckpt.load_checkpoint(rank_file, map_location="cpu")
            ckpt.restore_rng_state(own["rng"])
            self.generator.set_state(own["step_generator"])
            self.stream.load_state_dict(own["data"])
        if self.info.is_main:
            log.info("resumed from %s at iteration %d", path, self.iteration)

    # ------------------------------------------------------------------ pieces
    def evaluate(self) -> dict[str, Any]:
        """Target-val mIoU of the student (every rank evaluates its shard; results are summed)."""
        from pipa_core.eval.evaluate import evaluate

        kw = self.eval_settings.kwargs()
        kw.pop("max_samples")  # the val loader already holds the first eval.max_samples
        return evaluate(
            self.student, self.val_loader, device=self.device, autocast_dtype=self.amp_dtype, **kw
        )

    def _on_collective_timeout(self, exc: RuntimeError) -> DistributedTimeoutError:
        """Save this rank's state (back at the last iteration boundary: the engine undid the
        step) next to the checkpoints, and say who stopped answering and where to resume."""
        info, r = self.info, self.cfg.runtime
        peer = f"rank {1 - info.rank}" if info.world_size == 2 else "another rank"
        own = self.run_dir / "checkpoints" / f"timeout_rank{info.rank}.pt"
        try:
            atomic_torch_save(self.state_dict(), own)
            saved = f"this rank's state at iteration {self.iteration} is in {own}; "
        except OSError as err:
            saved = f"this rank's state could not be saved ({err.strerror}); "
        latest = ckpt.find_latest(self.run_dir)
        return DistributedTimeoutError(
            f"rank {info.rank} of {info.world_size}: a collective after iteration "
            f"{self.iteration} waited more than runtime.ddp_timeout_s={r.ddp_timeout_s:g} s; "
            f"{peer} stopped answering (stopped, hung or on a dead node). Backend: "
            f"{str(exc).splitlines()[0]}. {saved}resume the job from "
            f"{latest or self.run_dir / 'checkpoints'} (runtime.resume=true), the last "
            "checkpoint every rank wrote, once every node is healthy."
        )

    def _install_signal_handlers(self) -> list:
        """SIGTERM / SIGINT: finish the iteration, checkpoint, exit (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            return []
        old = []
        for sig in (signal.SIGTERM, signal.SIGINT):

            def handler(signum, frame):
                self._stop_signal = signum

            old.append((sig, signal.signal(sig, handler)))
        return old

    # ------------------------------------------------------------------ loop
    def fit(self) -> dict[str, Any]:
        """Train until ``optim.max_iters`` (or ``runtime.stop_after`` / a signal); returns the result dict."""
        from tqdm.auto import tqdm

        cfg, r = self.cfg, self.cfg.runtime
        max_iters = cfg.optim.max_iters
        stop_at = min(max_iters, r.stop_after) if r.stop_after else max_iters
        bar = tqdm(
            total=max_iters, initial=self.iteration, disable=not (r.progress and self.info.is_main),
            desc=cfg.name, dynamic_ncols=True,
        )  # fmt: skip
        old_handlers = self._install_signal_handlers()
        window, evals, signalled = _LogWindow(), [], False
        t_start = time.perf_counter()
        self.student.train()
        try:
            while self.iteration < stop_at:
                it = self.iteration
                out, ok = self.engine.step(self.stream.next(), it, self.step_fn)
                self._count_rejections(it, ok)
                self.iteration = it + 1
                bar.update(1)
                window.add(out.logs, ok)
                if r.log_interval and (
                    self.iteration % r.log_interval == 0 or self.iteration == stop_at
                ):
                    values = self._log_window(window)
                    bar.set_postfix(loss=f"{values.get('loss', float('nan')):.3f}")
                if ok and r.image_interval and self.iteration % r.image_interval == 0:
                    self.logger.save_grid(self.iteration, out.vis)
                due = cfg.eval.interval and self.iteration % cfg.eval.interval == 0
                if due and self.iteration < max_iters:  # the end has its own evaluation
                    res = self.evaluate()
                    self.logger.log(self.iteration, _eval_row(res), kind="eval")
                    evals.append({"iter": self.iteration, "mIoU": res["mIoU"]})
                signalled = self._checkpoint_if_due(stop_at)
                if signalled:
                    log.warning("signal: checkpointed at iteration %d, stopping", self.iteration)
                    break
        except RuntimeError as exc:
            if self.info.distributed and is_timeout(exc):
                raise self._on_collective_timeout(exc) from None
            raise
        finally:
            bar.close()
            for sig, h in old_handlers:
                signal.signal(sig, h)
        if signalled:
            # Do not let a notebook cell or a driver loop carry on as if training had ended.
            self.logger.close()
            if self._stop_signal == signal.SIGINT:
                raise KeyboardInterrupt(f"training interrupted; resume from {self.run_dir}")
            raise SystemExit(128 + int(self._stop_signal or signal.SIGTERM))
        return self._finish(evals, time.perf_counter() - t_start)

    # ------------------------------------------------------------------ loop parts
    def _count_rejections(self, it: int, ok: bool) -> None:
        """Track a streak of rejected (undone) steps; stop the run when it is too long."""
        r = self.cfg.runtime
        if ok:
            self.nonfinite_streak = 0
            return
        self.nonfinite_streak += 1
        self.skipped_steps += 1
        log.warning(
            "iteration %d: step rejected and undone (%s); %d in a row, limit "
            "runtime.max_nonfinite=%d",
            it, self.engine.last_fault, self.nonfinite_streak, r.max_nonfinite,
        )  # fmt: skip
        if self.nonfinite_streak >= r.max_nonfinite:
            raise NonFiniteLossError(
                f"{self.nonfinite_streak} consecutive non-finite steps at iteration {it} "
                f"({self.engine.last_fault}); stopping. Every rejected step was undone "
                f"and the last good checkpoint is kept in {self.run_dir / 'checkpoints'}. "
                "Likely causes: corrupt input images (NaN / Inf pixels; check the "
                "dataset files the log names), a learning rate too high for the model "
                "(lower optim.lr or set optim.grad_clip), or fp16 overflow (try "
                "runtime.amp=bf16 or off). Then resume with runtime.resume=true."
            )

    def _log_window(self, window: _LogWindow) -> dict[str, float]:
        """One metrics.jsonl / TensorBoard row: the window's means over ranks, lr, speed."""
        values = all_reduce_mean(window.means(), self.device)
        values["lr"] = self.optimizer.param_groups[0]["lr"]
        values["sec_per_iter"] = window.seconds_per_step()
        values["skipped_steps"] = self.skipped_steps
        self.logger.log(self.iteration, values)
        window.reset()
        return values

    def _checkpoint_if_due(self, stop_at: int) -> bool:
        """Save on schedule, at the stop point or on a signal; returns whether a signal came.

        No periodic checkpoint while steps are being rejected: the last one written
        before the streak stays the newest (a stop still saves, and the state it saves
        is the undone, last good one).
        """
        r, n = self.cfg.runtime, self.iteration
        ckpt_due = bool(r.checkpoint_interval) and n % r.checkpoint_interval == 0
        keep = bool(r.keep_checkpoint_interval) and n % r.keep_checkpoint_interval == 0
        # Every rank stops together, even if only one received the signal.
        signalled = broadcast_flag(self._stop_signal is not None, self.device)
        periodic = (ckpt_due or keep) and self.nonfinite_streak == 0
        if periodic or signalled or n == stop_at:
            self.save(keep=keep and periodic)
        return signalled

    def _finish(self, evals: list[dict], train_seconds: float) -> dict[str, Any]:
        """The final evaluation (a finished run), final weights and ``result.json``."""
        cfg = self.cfg
        finished = self.iteration >= cfg.optim.max_iters
        result: dict[str, Any] = {
            "name": cfg.name,
            "method": cfg.method,
            "benchmark": cfg.data.benchmark,
            "run_dir": str(self.run_dir),
            "iterations": self.iteration,
            "finished": finished,
            "skipped_steps": self.skipped_steps,
            "train_seconds": train_seconds,
            "evals": evals,
        }
        if cfg.model.init_from is not None:  # which warm start, byte for byte
            from pipa_core.assets import resolve_weights
            from pipa_core.io import sha256_file

            result["init_from_sha256"] = sha256_file(resolve_weights(cfg.model.init_from))
        if finished:
            res = self.evaluate()
            self.logger.log(self.iteration, _eval_row(res), kind="eval")
            result["mIoU"] = res["mIoU"]
            result["eval"] = {k: v for k, v in res.items() if k != "confusion_matrix"}
            if self.info.is_main:
                self.student.export_weights(self.run_dir / "final_weights.pt")
        if self.info.is_main:
            atomic_write_json(self.run_dir / "result.json", result)
        self.logger.close()
        barrier()
        return result


class _LogWindow:
    """Running sums of the step logs between two log rows (rejected steps add no terms)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, float] = {}
        self.steps, self.applied, self.t0 = 0, 0, time.perf_counter()

    def add(self, logs: dict[str, float], applied: bool) -> None:
        self.steps += 1
        if applied:
            self.applied += 1
            for k, v in logs.items():
                self.sums[k] = self.sums.get(k, 0.0) + v

    def means(self) -> dict[str, float]:
        return {k: v / self.applied for k, v in self.sums.items()}

    def seconds_per_step(self) -> float:
        return (time.perf_counter() - self.t0) / max(self.steps, 1)


def _eval_row(res: dict) -> dict:
    row = {"mIoU": res["mIoU"], "num_images": res["num_images"]}
    for p, r in res["protocols"].items():
        row[f"mIoU_{p}"] = r["mIoU"]
        for cls, v in r["per_class_IoU"].items():
            if v is not None:
                row[f"IoU_{p}/{cls}"] = v
    return row


def train(config: TrainConfig) -> dict[str, Any]:
    """Train with ``config`` and return the result dict (also written to ``run_dir/result.json``).

    Works in-process (notebooks), from the CLI and under ``torchrun``. Keys: ``name``,
    ``method``, ``benchmark``, ``run_dir``, ``iterations``, ``finished``, ``skipped_steps``,
    ``train_seconds``, ``evals`` and, for a finished run, ``mIoU`` and ``eval`` (per-protocol,
    per-class IoU).
    """
    return Trainer(config).fit()
