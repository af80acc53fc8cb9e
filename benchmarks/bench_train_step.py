"""Training-step time and peak memory of the self-training engine, split into phases.

Usage::

    python benchmarks/bench_train_step.py                    # --preset cpu on CPU, paper on CUDA
    python benchmarks/bench_train_step.py --preset paper --dtype bf16 --device cuda
    python benchmarks/bench_train_step.py --models quickstart --iters 10 --warmup 3
    python benchmarks/bench_train_step.py --smoke            # seconds; used by the tests

Everything is built by the engine itself (``pipa_core.uda``): the config preset
(``make_config``) and ``pipa_core.uda.engine.Engine.build``, the trainer's own
builder (student, EMA teacher, ImageNet feature-distance copy, loss modules, AdamW
groups, the warmup/poly schedule), and one iteration is exactly the trainer's
``Engine.step``: ``training_step`` -> ``Engine.optimizer_step`` (backward,
grad-norm, finite checks, AdamW) -> EMA update -> scheduler step. Batches are synthetic tensors of
the preset's crop size (data loading is measured by ``bench_data.py``).

Three measurements per model configuration:

1. **Step time**: the uninstrumented iteration after ``--warmup`` iterations,
   device synchronised only at iteration boundaries (median over ``--iters``), and
   the peak memory of one iteration run alone (weights, optimizer state and
   activations of the full recipe).
2. **Phases**: the same iteration with timing probes (forward hooks on the
   engine's modules, wrappers around the engine's functions, autograd hooks in the
   backward pass, a proxy around the GradScaler). Every probe synchronises the
   device, so phase sums exceed the plain step time a little on GPUs. Backward
   intervals end when the backward of one student forward call reaches the
   encoder's first convolution; each includes the backward of the loss terms built
   after the previous student call (the autograd engine runs them in reverse order).
3. **Contrastive overhead** (ablation): the plain step time of the same recipe with
   ``losses.enabled`` emptied (the DAFormer step), and with each loss removed in
   turn (``--ablation each``). The variants' iterations are interleaved
   round-robin with the full recipe's, so load changes on a shared machine hit all
   alike. ``overhead_pct = (t_full - t_base) / t_base * 100``
   is what the contrastive losses add to the step (target: <= 15 %).

Model configurations (``--models``):

* ``quickstart``: the ``synthetic_pipa`` preset (MiT-B0, small DAFormer head,
  128x128 crops, batch 2 + 2, pixel + patch contrast; no feature distance because the
  synthetic preset has no ImageNet weights).
* ``quickstart_pipa_pp``: the same model with the PiPa++ losses (pixel with memory
  bank, patch, temporal; ``viper2csseq_pipa_pp`` recipe with the quickstart preset's
  model, crop and loss sizes).
* ``mit_b5_512``: ``gta2cs_pipa`` (MiT-B5 + DAFormer head, 512x512, batch 2 + 2,
  feature distance, pixel + patch contrast, 576x576 patch crops).
* ``mit_b5_640``: the same at 640x640 crops with 720x720 patch crops (PiPa's crop
  sizes; single-resolution, not HRDA's multi-resolution pair).

``--preset paper`` runs these sizes. ``--preset cpu`` (the CPU default) divides the
B5 crops by 4 (128 / 160, patch crops 144 / 180) and uses batch 1 + 1 with 1
warm-up and 2 measured iterations, so that B5 finishes on a shared 2-core CPU; the
result rows say so (``reduced: true``). Its default model list leaves out
``mit_b5_640`` (ask for it with ``--models``).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchutil as bu  # noqa: E402

from pipa_core import config as uda_config  # noqa: E402
from pipa_core.labels import IGNORE_INDEX  # noqa: E402
from pipa_core.uda import step as uda_step  # noqa: E402
from pipa_core.uda.distributed import DistInfo  # noqa: E402
from pipa_core.uda.engine import Engine  # noqa: E402

DTYPES = {"fp32": "off", "bf16": "bf16", "fp16": "fp16"}
CONTRASTIVE = ("pixel", "patch", "temporal")

# Settings copied from the quickstart (synthetic) preset for the PiPa++ variant, so that
# both quickstart rows always use the same model whatever the preset currently says.
_QUICK_KEYS = (
    "model.arch", "model.decoder_channels", "model.proj_dim", "losses.patch.crop_size",
    "losses.pixel.max_anchors", "losses.patch.max_locations", "losses.patch.num_negatives",
    "uda.ema_alpha", "uda.pseudo_threshold",
)  # fmt: skip


def quickstart_settings() -> dict:
    """Overrides that give any preset the quickstart's model, crop and loss sizes."""
    q = uda_config.make_config("synthetic", "pipa")
    over = {}
    for key in _QUICK_KEYS:
        section, name = key.split(".", 1)
        node = getattr(q, section)
        for part in name.split("."):
            node = getattr(node, part)
        over[key] = node
    over["data.crop_size"] = tuple(uda_config.resolve_benchmark(q).crop_size)
    over["losses.temporal.max_locations"] = q.losses.patch.max_locations
    over["losses.temporal.num_negatives"] = q.losses.patch.num_negatives
    over["uda.fd_lambda"] = 0.0  # as the synthetic preset: no ImageNet weights offline
    return over


@dataclass(frozen=True)
class ModelSpec:
    """A benchmarked model configuration: a preset plus overrides per size preset."""

    benchmark: str
    method: str
    overrides: dict = field(default_factory=dict)
    cpu: dict = field(default_factory=dict)  # overrides of --preset cpu
    smoke: dict = field(default_factory=dict)  # overrides of --smoke
    label: str = ""


_SMOKE = {"data.crop_size": (64, 64), "losses.patch.crop_size": 48, "data.batch_size": 1}
_B5_640 = {
    "data.crop_size": (640, 640),
    "data.source_scale": (1440, 2560),  # full resolution (HRDA / PiPa setting) so 640 fits
    "data.target_scale": (1024, 2048),
    "losses.patch.crop_size": 720,
}
MODELS: dict[str, ModelSpec] = {
    "quickstart": ModelSpec(
        "synthetic", "pipa", smoke=_SMOKE, label="MiT-B0 quickstart (synthetic_pipa)"
    ),
    "quickstart_mic": ModelSpec(
        "synthetic",
        "pipa_mic",
        smoke=_SMOKE,
        label="MiT-B0 quickstart, PiPa + MIC (synthetic_pipa_mic)",
    ),
    "quickstart_pipa_pp": ModelSpec(
        "viper2csseq",
        "pipa_pp",
        {"quickstart": True},
        smoke=_SMOKE,
        label="MiT-B0 quickstart, PiPa++ losses (pixel+bank, patch, temporal)",
    ),
    "mit_b5_512": ModelSpec(
        "gta2cs",
        "pipa",
        cpu={"data.crop_size": (128, 128), "losses.patch.crop_size": 144, "data.batch_size": 1},
        smoke={**_SMOKE, "model.arch": "daformer_mit_b0"},
        label="MiT-B5 + DAFormer, PiPa (gta2cs_pipa)",
    ),
    "mit_b5_512_dacs": ModelSpec(
        "gta2cs",
        "dacs",
        cpu={"data.crop_size": (128, 128), "data.batch_size": 1},
        smoke={**_SMOKE, "model.arch": "daformer_mit_b0"},
        label="MiT-B5 + DAFormer head, DACS self-training (gta2cs_dacs)",
    ),
    "mit_b5_512_daformer": ModelSpec(
        "gta2cs",
        "daformer",
        cpu={"data.crop_size": (128, 128), "data.batch_size": 1},
        smoke={**_SMOKE, "model.arch": "daformer_mit_b0"},
        label="MiT-B5 + DAFormer, DAFormer (RCS, feature distance; gta2cs_daformer)",
    ),
    "dinov2_l_512": ModelSpec(
        "gta2cs",
        "pipa",
        {"model.arch": "daformer_dinov2_l", "uda.fd_lambda": 0.0, "model.grad_checkpointing": True},
        cpu={"data.crop_size": (128, 128), "losses.patch.crop_size": 144, "data.batch_size": 1},
        smoke={**_SMOKE, "model.arch": "daformer_dinov2_s"},
        label="DINOv2 ViT-L/14 + DAFormer head, PiPa, gradient checkpointing (gta2cs_pipa_dinov2l)",
    ),
    "mit_b5_640": ModelSpec(
        "gta2cs",
        "pipa",
        _B5_640,
        cpu={"data.crop_size": (160, 160), "losses.patch.crop_size": 180, "data.batch_size": 1},
        smoke={**_SMOKE, "model.arch": "daformer_mit_b0"},
        label="MiT-B5 + DAFormer, PiPa at 640x640 crops",
    ),
}
DEFAULT_MODELS = {
    "cpu": "quickstart,quickstart_pipa_pp,mit_b5_512",
    "paper": "quickstart,quickstart_pipa_pp,mit_b5_512,mit_b5_640",
    "smoke": "quickstart",
}


# ----------------------------------------------------------------------------- config
def build_config(name: str, preset: str, dtype: str, channels_last: bool, device: str):
    """The engine's ``TrainConfig`` for model configuration ``name`` at size ``preset``.

    Returns ``(cfg, reduced)``; ``reduced`` is True when sizes are below the paper's.
    """
    if name not in MODELS:
        raise SystemExit(f"unknown model configuration {name!r}; valid: {', '.join(MODELS)}")
    spec = MODELS[name]
    # DAFormer's data setting (512 crops) for every model (mit_b5_640 sets its own); random
    # weights: a step's time and memory do not depend on them (no weights file needed)
    cfg = uda_config.make_config(spec.benchmark, spec.method, pipa_data=False)
    over = {"model.pretrained": None, **spec.overrides}
    if over.pop("quickstart", False):
        over.update(quickstart_settings())
    reduced = False
    if preset == "cpu" and spec.cpu:
        over.update(spec.cpu)
        reduced = True
    if preset == "smoke":
        over.update(spec.smoke)
        reduced = True
    over.update({"runtime.channels_last": channels_last, "runtime.device": device})
    cfg = uda_config.apply_overrides(cfg, over)
    # Set directly: apply_overrides parses the string "off" as YAML (-> False).
    cfg.runtime.amp = DTYPES[dtype]
    return uda_config.validate_config(cfg), reduced


def without_losses(cfg, drop: tuple[str, ...]):
    """``cfg`` with the losses in ``drop`` removed from ``losses.enabled``."""
    kept = tuple(n for n in cfg.losses.enabled if n not in drop)
    return uda_config.apply_overrides(cfg, {"losses.enabled": kept})


# ----------------------------------------------------------------------------- engine
@dataclass
class BenchEngine(Engine):
    """The trainer's own :class:`~pipa_core.uda.engine.Engine` with an iteration counter.

    :meth:`run_iteration` is exactly one ``Trainer.fit`` iteration (``Engine.step``:
    step, backward + AdamW, EMA, schedule) without data loading and logging.
    """

    iteration: int = 0

    @classmethod
    def for_config(
        cls, cfg, device: torch.device, compile_student: bool = False, seed: int = 0
    ) -> BenchEngine:
        cfg = copy.deepcopy(cfg)
        cfg.runtime.seed = seed
        # Static shapes when compiled: the step feeds the student three input sizes (crop,
        # patch crops, temporal frames); see docs/performance.md.
        cfg.runtime.compile = compile_student
        eng = cls.build(uda_config.resolve(cfg), DistInfo(device=device))
        eng.student.train()
        for m in eng.nets.losses.values():
            m.train()
        return eng

    def run_iteration(self, batch: dict) -> None:
        self.step(batch, self.iteration)
        self.iteration += 1


def make_batches(cfg, spec, device: torch.device, count: int = 2, seed: int = 0) -> list[dict]:
    """``count`` synthetic UDA batches of the config's crop and batch size.

    Images are smooth random fields in [0, 1]; source labels are blocky maps with
    about a dozen classes and 5 % ignore pixels (so ClassMix, pixel contrast and the
    feature-distance mask see realistic class counts); target labels are all 255;
    video presets add a reference frame (the key frame shifted by 4 pixels + noise).
    """
    g = torch.Generator().manual_seed(seed)
    b, (h, w) = cfg.data.batch_size, spec.crop_size
    pin = device.type == "cuda"

    def image() -> torch.Tensor:
        low = torch.rand(b, 3, max(h // 16, 2), max(w // 16, 2), generator=g)
        img = nn.functional.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
        return (img + 0.05 * torch.rand(b, 3, h, w, generator=g)).clamp(0, 1)

    def label() -> torch.Tensor:
        classes = torch.randperm(19, generator=g)[:12]
        cells = classes[torch.randint(0, 12, (b, max(h // 32, 1), max(w // 32, 1)), generator=g)]
        lab = nn.functional.interpolate(cells[:, None].float(), size=(h, w), mode="nearest")
        lab = lab[:, 0].long()
        lab[torch.rand(b, h, w, generator=g) < 0.05] = IGNORE_INDEX
        return lab

    batches = []
    for _ in range(count):
        tgt = {"img": image(), "label": torch.full((b, h, w), IGNORE_INDEX, dtype=torch.long)}
        if spec.video:
            ref = torch.roll(tgt["img"], shifts=(4, 4), dims=(-2, -1))
            tgt["img_ref"] = (ref + 0.02 * torch.rand(ref.shape, generator=g)).clamp(0, 1)
        batch = {"source": {"img": image(), "label": label()}, "target": tgt}
        if pin:
            batch = {d: {k: v.pin_memory() for k, v in s.items()} for d, s in batch.items()}
        batches.append(batch)
    return batches


# ----------------------------------------------------------------------------- plain timing
def warm_up(eng: BenchEngine, batches: list[dict], warmup: int) -> dict:
    """``warmup`` iterations, then one more alone with the peak memory reset before it."""
    clock, mem = bu.Clock(eng.device), bu.PeakMemory(eng.device)
    for i in range(warmup):
        eng.run_iteration(batches[i % len(batches)])
    mem.reset()
    t0 = clock.now()
    eng.run_iteration(batches[warmup % len(batches)])
    return {"single_ms": round((clock.now() - t0) * 1e3, 3), "peak_mem_mib": mem.peak_mib()}


def time_interleaved(engines: dict[str, BenchEngine], batches: list[dict], iters: int) -> dict:
    """Median plain step time per engine, iterations interleaved round-robin.

    Interleaving makes the comparison fair on a shared machine: a load change
    hits every variant alike instead of whichever ran at that moment.
    """
    clock = bu.Clock(next(iter(engines.values())).device)
    times: dict[str, list[float]] = {k: [] for k in engines}
    cpu: dict[str, list[float]] = {k: [] for k in engines}
    for i in range(iters):
        for name, eng in engines.items():
            t0, c0 = clock.now(), time.process_time()
            eng.run_iteration(batches[i % len(batches)])
            times[name].append(clock.now() - t0)
            cpu[name].append(time.process_time() - c0)
    return {
        k: {**bu.summarize_times(v), "cpu_median_ms": bu.summarize_times(cpu[k])["median_ms"]}
        for k, v in times.items()
    }


# ----------------------------------------------------------------------------- phase probes
class PhaseProbe:
    """Timing probes attached to an :class:`Engine` (see the module docstring, point 2).

    After :meth:`attach`, each iteration appends ``{phase: (ms, peak MiB)}`` to
    ``self.iterations``; :meth:`detach` removes every hook and wrapper.
    """

    def __init__(self, eng: BenchEngine, backward_split: bool = True):
        self.eng = eng
        self.clock = bu.Clock(eng.device)
        self.mem = bu.PeakMemory(eng.device)
        self.backward_split = backward_split
        self.iterations: list[dict[str, tuple[float, Optional[float]]]] = []
        self._handles: list[Any] = []
        self._patches: list[tuple[Any, str, Any]] = []
        self._cur: dict[str, tuple[float, Optional[float]]] = {}
        self._open: list[tuple[str, float]] = []
        self._calls: list[str] = []
        self._ce_calls = 0
        self._bwd_marks: list[tuple[str, float, Optional[float]]] = []
        # Process CPU time per phase (robust to other processes' load on a shared CPU).
        self._cpu: dict[str, float] = {}
        self._open_cpu: list[float] = []
        self._bwd_cpu: list[float] = []
        self.iterations_cpu: list[dict[str, float]] = []

    # ---------------------------------------------------------------- spans
    def begin(self, name: str) -> None:
        if self._open:  # nested: the outer span keeps the time, the inner is not recorded
            self._open.append((name, -1.0))
            return
        t = self.clock.now()
        self.mem.reset()
        self._open.append((name, t))
        self._open_cpu.append(time.process_time())

    def end(self) -> None:
        name, t0 = self._open.pop()
        if t0 < 0:
            return
        dt = (self.clock.now() - t0) * 1e3
        self._add_cpu(name, (time.process_time() - self._open_cpu.pop()) * 1e3)
        ms, peak = self._cur.get(name, (0.0, None))
        p = self.mem.peak_mib()
        self._cur[name] = (ms + dt, p if peak is None or (p or 0) > peak else peak)

    @contextlib.contextmanager
    def span(self, name: str):
        self.begin(name)
        try:
            yield
        finally:
            self.end()

    def _add_cpu(self, name: str, ms: float) -> None:
        self._cpu[name] = self._cpu.get(name, 0.0) + ms

    def _mark_backward(self, label: str) -> None:
        self._bwd_marks.append((label, self.clock.now(), self.mem.peak_mib()))
        self._bwd_cpu.append(time.process_time())
        self.mem.reset()

    # ---------------------------------------------------------------- wiring
    def _hook_module(self, module: nn.Module, name_fn: Callable[[tuple], str]) -> None:
        def pre(mod, args):
            self.begin(name_fn(args))

        def post(mod, args, out):
            self.end()

        self._handles.append(module.register_forward_pre_hook(pre))
        self._handles.append(module.register_forward_hook(post))

    def _wrap(self, owner: Any, attr: str, name_fn: Callable[..., str]) -> None:
        orig = getattr(owner, attr)

        @functools.wraps(orig)
        def wrapper(*args, **kwargs):
            with self.span(name_fn(*args, **kwargs)):
                return orig(*args, **kwargs)

        self._patches.append((owner, attr, orig))
        setattr(owner, attr, wrapper)

    def _student_call_name(self, args: tuple) -> str:
        """Name a student forward call by its order and batch size (see ``step.py``)."""
        b = self.eng.cfg.data.batch_size
        n = args[0].shape[0] if args and torch.is_tensor(args[0]) else -1
        single = [c for c in self._calls if c in ("source", "mixed")]
        double = [c for c in self._calls if c in ("patch_crops", "temporal_frames")]
        if n == b and len(single) < 2:
            kind = ("source", "mixed")[len(single)]
        elif n == 2 * b:
            order = [x for x in ("patch", "temporal") if x in self.eng.nets.losses]
            kinds = [{"patch": "patch_crops", "temporal": "temporal_frames"}[x] for x in order]
            kind = kinds[len(double)] if len(double) < len(kinds) else f"other{len(self._calls)}"
        else:
            kind = f"other{len(self._calls)}"
        self._calls.append(kind)
        return f"student_forward_{kind}"

    def _ce_name(self, *args, **kwargs) -> str:
        self._ce_calls += 1
        return "cross_entropy_source" if self._ce_calls == 1 else "cross_entropy_mixed"

    def attach(self) -> PhaseProbe:
        import pipa_core.losses as losses_pkg
        import pipa_core.models.hrda as hrda_mod
        import pipa_core.models.segmentor as segmentor_mod

        eng, nets = self.eng, self.eng.nets
        seg = nets.segmentor
        self._hook_module(nets.student, self._student_call_name)
        if nets.teacher is not None:
            self._hook_module(nets.teacher, lambda a: "teacher_forward")
        if nets.feature_distance is not None:
            self._hook_module(nets.feature_distance, lambda a: "feature_distance")
        for name, head in seg.proj_heads.items():
            self._hook_module(head, lambda a, n=name: f"{n}_projection")
        for name, loss in nets.losses.items():
            self._hook_module(loss, lambda a, n=name: f"{n}_loss")
        self._wrap(uda_step, "make_pseudo_label", lambda *a, **k: "pseudo_label")
        self._wrap(uda_step, "mix_batch", lambda *a, **k: "classmix")
        self._wrap(uda_step, "strong_augment", lambda *a, **k: "strong_augment")
        # the CE is called through the segmentor's seg_loss (models.segmentor / models.hrda)
        self._wrap(segmentor_mod, "segmentation_ce", self._ce_name)
        self._wrap(hrda_mod, "segmentation_ce", self._ce_name)
        self._wrap(losses_pkg, "sample_patch_pair", lambda *a, **k: "patch_sampling")
        if self.backward_split:
            first_conv = next(m for m in seg.encoder.modules() if isinstance(m, nn.Conv2d))

            def conv_out(mod, args, out):
                if torch.is_tensor(out) and out.requires_grad:
                    label = self._calls[-1] if self._calls else "unknown"
                    out.register_hook(lambda grad, lb=label: self._mark_backward(lb))

            self._handles.append(first_conv.register_forward_hook(conv_out))
        eng.scaler = _ScalerProbe(eng.scaler, self)
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        for owner, attr, orig in reversed(self._patches):
            setattr(owner, attr, orig)
        self._handles, self._patches = [], []
        if isinstance(self.eng.scaler, _ScalerProbe):
            self.eng.scaler = self.eng.scaler.inner

    # ---------------------------------------------------------------- one iteration
    def run_iteration(self, batch: dict) -> None:
        """One engine iteration, recording every phase into ``self.iterations``."""
        eng = self.eng
        self._cur, self._calls, self._ce_calls, self._bwd_marks = {}, [], 0, []
        self._cpu, self._open_cpu, self._bwd_cpu = {}, [], []
        t_start, c_start = self.clock.now(), time.process_time()
        self.mem.reset()
        # forward: the engine's step, instrumented by the hooks
        t0, c0 = self.clock.now(), time.process_time()
        out = uda_step.training_step(batch, eng.nets, eng.cfg, eng.ctx)
        fwd_ms = (self.clock.now() - t0) * 1e3
        fwd_cpu = (time.process_time() - c0) * 1e3
        fwd_phases = sum(ms for ms, _ in self._cur.values())
        self._cur["forward_other"] = (max(fwd_ms - fwd_phases, 0.0), None)
        self._cpu["forward_other"] = max(fwd_cpu - sum(self._cpu.values()), 0.0)
        # backward + grad-norm + AdamW: the engine's own method (spans via _ScalerProbe)
        ok = eng.optimizer_step(out)
        while self._open:  # a skipped (non-finite) step never reaches scaler.step
            self.end()
        eng.sync_buffers()
        if ok and eng.nets.teacher is not None:
            with self.span("ema_update"):
                eng.update_teacher(eng.iteration)
        with self.span("lr_schedule"):
            eng.scheduler.step()
        eng.iteration += 1
        total_ms = (self.clock.now() - t_start) * 1e3
        self._cur["step_total_instrumented"] = (total_ms, None)
        self._cpu["step_total_instrumented"] = (time.process_time() - c_start) * 1e3
        self.iterations.append(dict(self._cur))
        self.iterations_cpu.append(dict(self._cpu))

    def backward_started(self) -> None:
        self._bwd_marks = [("start", self.clock.now(), None)]
        self._bwd_cpu = [time.process_time()]
        self.mem.reset()

    def backward_finished(self) -> None:
        t_end, c_end = self.clock.now(), time.process_time()
        marks, cpus = self._bwd_marks, self._bwd_cpu
        if not marks:
            return
        t_start = marks[0][1]
        self._cur["backward_total"] = ((t_end - t_start) * 1e3, self.mem.peak_mib())
        self._add_cpu("backward_total", (c_end - cpus[0]) * 1e3)
        prev, prev_c = t_start, cpus[0]
        for (label, t, peak), c in sorted(zip(marks[1:], cpus[1:]), key=lambda m: m[0][1]):
            name = f"backward_to_student_{label}"
            ms, p0 = self._cur.get(name, (0.0, None))
            self._cur[name] = (ms + (t - prev) * 1e3, peak)
            self._add_cpu(name, (c - prev_c) * 1e3)
            prev, prev_c = t, c
        if len(marks) > 1:
            self._cur["backward_rest"] = ((t_end - prev) * 1e3, self.mem.peak_mib())
            self._add_cpu("backward_rest", (c_end - prev_c) * 1e3)

    # ---------------------------------------------------------------- summary
    def summary(self) -> dict[str, dict[str, Optional[float]]]:
        """Median wall ms, median process-CPU ms and max peak MiB per phase."""
        names: list[str] = []
        for it in self.iterations:
            names += [n for n in it if n not in names]
        res = {}
        for n in names:
            vals = [it[n] for it in self.iterations if n in it]
            cpus = [it[n] for it in self.iterations_cpu if n in it]
            peaks = [p for _, p in vals if p is not None]
            res[n] = {
                "ms": round(statistics.median(ms for ms, _ in vals), 3),
                "cpu_ms": round(statistics.median(cpus), 3) if cpus else None,
                "peak_mem_mib": max(peaks) if peaks else None,
            }
        return res


class _ScalerProbe:
    """GradScaler proxy marking backward start (``scale``), backward end (``unscale_``),
    grad-norm / finite checks (until ``step``) and the optimizer step."""

    def __init__(self, inner: torch.amp.GradScaler, probe: PhaseProbe):
        self.inner, self.probe = inner, probe

    def scale(self, loss):
        self.probe.backward_started()
        return self.inner.scale(loss)

    def unscale_(self, optimizer):
        self.probe.backward_finished()
        self.probe.begin("grad_norm_and_checks")
        return self.inner.unscale_(optimizer)

    def step(self, optimizer, *args, **kwargs):
        self.probe.end()
        with self.probe.span("optimizer_step"):
            return self.inner.step(optimizer, *args, **kwargs)

    def update(self, *args, **kwargs):
        return self.inner.update(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


# ----------------------------------------------------------------------------- one configuration
def bench_model(name: str, args, device: torch.device) -> dict:
    """All measurements of one model configuration (see the module docstring)."""
    cfg, reduced = build_config(name, args.preset, args.dtype, args.channels_last, args.device)
    spec = uda_config.resolve_benchmark(cfg)
    warmup, iters = args.warmup, args.iters
    if warmup is None:
        warmup = {"smoke": 0, "cpu": 1 if "b5" in name else 2, "paper": 5}[args.preset]
    if iters is None:
        iters = {"smoke": 1, "cpu": 2 if "b5" in name else 5, "paper": 20}[args.preset]
    print(
        f"[{name}] {cfg.model.arch} crop {spec.crop_size} batch {cfg.data.batch_size}+"
        f"{cfg.data.batch_size} losses {list(cfg.losses.enabled)} dtype {args.dtype} "
        f"(warm-up {warmup}, iterations {iters})",
        flush=True,
    )
    batches = make_batches(cfg, spec, device)
    base_mib = bu.current_memory_mib(device)
    eng = BenchEngine.for_config(cfg, device, args.compile)
    n_params = sum(p.numel() for p in eng.student.parameters())
    alone = warm_up(eng, batches, warmup)
    print(f"[{name}] warm, peak {alone['peak_mem_mib']} MiB", flush=True)

    probe = PhaseProbe(eng, backward_split=not args.compile).attach()
    try:
        for i in range(iters):
            probe.run_iteration(batches[i % len(batches)])
    finally:
        probe.detach()
    phases = probe.summary()

    enabled = tuple(cfg.losses.enabled)
    contrastive = tuple(n for n in enabled if n in CONTRASTIVE)
    variants: dict[str, tuple[str, ...]] = {}
    if contrastive and args.ablation != "none":
        variants["without_contrastive"] = contrastive
        if args.ablation == "each" and len(contrastive) > 1:
            variants.update({f"without_{n}": (n,) for n in contrastive})
    engines = {"full": eng}
    for vname, drop in variants.items():
        engines[vname] = BenchEngine.for_config(without_losses(cfg, drop), device, args.compile)
        warm_up(engines[vname], batches, warmup)
    timed = time_interleaved(engines, batches, iters)
    step = {**timed.pop("full"), "peak_mem_mib": alone["peak_mem_mib"]}
    print(f"[{name}] step {step['median_ms']:.1f} ms", flush=True)
    ablations: dict[str, Any] = {}
    for vname, res in timed.items():
        res["losses"] = list(engines[vname].cfg.losses.enabled)
        res["added_ms"] = round(step["median_ms"] - res["median_ms"], 3)
        res["overhead_pct"] = round(100 * res["added_ms"] / res["median_ms"], 2)
        res["overhead_pct_cpu_time"] = round(
            100 * (step["cpu_median_ms"] - res["cpu_median_ms"]) / res["cpu_median_ms"], 2
        )
        ablations[vname] = res
        print(f"[{name}] {vname}: {res['median_ms']:.1f} ms -> +{res['overhead_pct']}%", flush=True)
    del engines, eng

    return {
        "name": name,
        "label": MODELS[name].label,
        "preset": f"{MODELS[name].benchmark}_{MODELS[name].method}",
        "arch": cfg.model.arch,
        "params_m": round(n_params / 1e6, 2),
        "crop_size": list(spec.crop_size),
        "patch_crop": uda_config.patch_crop_size(cfg, spec),
        "batch": f"{cfg.data.batch_size}+{cfg.data.batch_size}",
        "losses": list(enabled),
        "feature_distance": cfg.uda.fd_lambda > 0,
        "reduced": reduced,
        "warmup": warmup,
        "iters": iters,
        "measured_utc": bu.machine_record(device)["date_utc"],
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "memory_before_build_mib": base_mib,
        "step": step,
        "phases": phases,
        "ablation": ablations,
        "contrastive_overhead_pct": ablations.get("without_contrastive", {}).get("overhead_pct"),
        "contrastive_overhead_pct_cpu_time": ablations.get("without_contrastive", {}).get(
            "overhead_pct_cpu_time"
        ),
    }


# ----------------------------------------------------------------------------- output
_PHASE_ORDER = [
    "teacher_forward", "pseudo_label", "classmix", "strong_augment",
    "student_forward_source", "cross_entropy_source", "feature_distance",
    "student_forward_mixed", "cross_entropy_mixed",
    "pixel_projection", "pixel_loss",
    "patch_sampling", "student_forward_patch_crops", "patch_projection", "patch_loss",
    "student_forward_temporal_frames", "temporal_projection", "temporal_loss",
    "prototype_loss", "forward_other",
    "backward_total", "backward_to_student_temporal_frames", "backward_to_student_patch_crops",
    "backward_to_student_mixed", "backward_to_student_source", "backward_rest",
    "grad_norm_and_checks", "optimizer_step", "ema_update", "lr_schedule",
]  # fmt: skip


def ordered_phases(phases: dict) -> list[str]:
    return [p for p in _PHASE_ORDER if p in phases] + [
        p for p in phases if p not in _PHASE_ORDER and p != "step_total_instrumented"
    ]


def to_markdown(meta: dict, results: list[dict]) -> str:
    mem = "CUDA max allocated" if meta["device"] == "cuda" else "process peak RSS"
    out = [
        f"# Training step ({meta['device']}, {meta['dtype']})",
        "",
        bu.machine_markdown(meta),
        f"Options: dtype `{meta['dtype']}`, channels_last {meta['channels_last']}, "
        f"compile {meta['compile']}, size preset `{meta['preset']}`. Memory: {mem} (MiB). "
        "`ms` is wall time; `CPU ms` is the process CPU time over the same span: on a shared "
        "CPU it is the robust figure (wall time grows with other processes' load).",
        "",
        "## Step time and contrastive overhead",
        "",
    ]
    headers = [
        "config", "arch", "crop", "batch", "losses", "step ms (median)", "step CPU ms", "it/s",
        "peak MiB", "step ms w/o contrastive", "contrastive overhead %",
        "overhead % (CPU time)",
    ]  # fmt: skip
    rows = []
    for r in results:
        base = r["ablation"].get("without_contrastive", {})
        rows.append(
            [
                r["name"] + (" (reduced)" if r["reduced"] else ""),
                r["arch"],
                "x".join(map(str, r["crop_size"])),
                r["batch"],
                ",".join(r["losses"]) or "-",
                r["step"]["median_ms"],
                r["step"].get("cpu_median_ms"),
                round(1e3 / r["step"]["median_ms"], 3),
                r["step"]["peak_mem_mib"],
                base.get("median_ms"),
                r["contrastive_overhead_pct"],
                r.get("contrastive_overhead_pct_cpu_time"),
            ]
        )
    out.append(bu.markdown_table(headers, rows))
    for r in results:
        extra = [
            f"{k}: {v['median_ms']} ms (+{v['overhead_pct']} %; CPU time "
            f"+{v.get('overhead_pct_cpu_time')} %)"
            for k, v in r["ablation"].items()
            if k != "without_contrastive"
        ]
        if extra:
            out += ["", f"Per-loss ablation of `{r['name']}`: " + "; ".join(extra) + "."]
    for r in results:
        ph = r["phases"]
        total = ph["step_total_instrumented"]["ms"]
        cpu_total = ph["step_total_instrumented"].get("cpu_ms")
        out += [
            "",
            f"## Phases: {r['name']} ({r['label']}; {r['arch']}, crop "
            f"{'x'.join(map(str, r['crop_size']))}, patch crop {r['patch_crop']}, batch "
            f"{r['batch']}{', reduced sizes' if r['reduced'] else ''})",
            "",
            f"Instrumented step {total:.1f} ms (median of {r['iters']}); plain step "
            f"{r['step']['median_ms']:.1f} ms. Backward rows `backward_to_student_X` run from "
            "the previous mark until the backward of student call X reached its first "
            "convolution; they are parts of `backward_total`.",
            "",
        ]
        rows = []
        for p in ordered_phases(ph):
            sub = p.startswith("backward_") and p != "backward_total"
            cpu = ph[p].get("cpu_ms")
            rows.append(
                [
                    ("  - " if sub else "") + p,
                    ph[p]["ms"],
                    round(100 * ph[p]["ms"] / total, 1) if total else None,
                    cpu,
                    round(100 * cpu / cpu_total, 1) if cpu is not None and cpu_total else None,
                    ph[p]["peak_mem_mib"],
                ]
            )
        out.append(
            bu.markdown_table(
                ["phase", "ms", "% of step", "CPU ms", "% of step CPU", "peak MiB"], rows
            )
        )
    return "\n".join(out)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default=bu.default_device())
    p.add_argument("--preset", choices=("cpu", "paper"), default=None,
                   help="sizes: paper (default on CUDA) or cpu (reduced B5; default on CPU)")  # fmt: skip
    p.add_argument("--smoke", action="store_true", help="tiny sizes, 1 iteration (tests)")
    p.add_argument("--models", default=None, help=f"comma-separated subset of {list(MODELS)}")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the student")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--iters", type=int, default=None)
    p.add_argument("--ablation", choices=("none", "total", "each"), default=None,
                   help="contrastive-loss ablation: none, all losses off (total), or also one "
                        "at a time (each; default for the quickstart models)")  # fmt: skip
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default 1 on CPU: see docs/performance.md)")  # fmt: skip
    p.add_argument("--out", type=Path, default=bu.RESULTS)
    p.add_argument("--name", default="train_step", help="result file stem")
    p.add_argument("--update", action="store_true",
                   help="keep the other configurations of an existing result file (each row "
                        "records its own date and load)")  # fmt: skip
    args = p.parse_args(argv)

    device = bu.parse_device(args.device)
    if argv is None:  # script mode: make CPU RSS follow live tensors (benchutil docstring)
        bu.reexec_for_rss(device.type)
    bu.set_threads(args.threads, device)
    args.preset = (
        "smoke" if args.smoke else args.preset or ("paper" if device.type == "cuda" else "cpu")
    )
    names = (args.models or DEFAULT_MODELS[args.preset]).split(",")
    for n in names:
        if n not in MODELS:
            raise SystemExit(f"--models: unknown configuration {n!r}; valid: {', '.join(MODELS)}")
    meta = {
        **bu.machine_record(
            device, None if argv is None else ["benchmarks/bench_train_step.py", *argv]
        ),
        "dtype": args.dtype,
        "channels_last": args.channels_last,
        "compile": args.compile,
        "preset": args.preset,
        "memory": "cuda_max_memory_allocated" if device.type == "cuda" else "cpu_peak_rss",
        "batches": "synthetic tensors (smooth random images, blocky 12-class labels)",
    }
    stem = args.name if args.dtype == "fp32" else f"{args.name}_{args.dtype}"
    results: list[dict] = []
    previous: list[dict] = []
    path = args.out / f"{stem}_{device.type}.json"
    if args.update and path.is_file():
        previous = [r for r in json.loads(path.read_text())["results"] if r["name"] not in names]
    abl = args.ablation
    for n in names:
        quick = n.startswith("quickstart") and args.preset != "smoke"
        args.ablation = abl or ("each" if quick else "total")
        results.append(bench_model(n, args, device))
        # Written after every configuration: a long CPU run keeps what it measured.
        meta["complete"] = len(results) == len(names)
        rows = sorted(previous + results, key=lambda r: list(MODELS).index(r["name"]))
        bu.write_results(
            args.out, stem, device, {"meta": meta, "results": rows}, to_markdown(meta, rows)
        )
    args.ablation = abl
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
