"""The training engine: everything one iteration needs, built in one place.

:meth:`Engine.build` turns a resolved run (:func:`pipa_core.config.resolve`) into the networks (student, EMA teacher, feature
distance, loss modules), the optimizer and schedule, mixed precision and the step's
context; :meth:`Engine.step` runs one iteration: the training step (forward and
losses, :mod:`pipa_core.uda.step`), backward, gradient clipping, the optimizer,
the EMA teacher and the learning-rate schedule. The trainer
(:mod:`pipa_core.uda.trainer`) adds data, logging, evaluation and checkpoints
around it; the benchmarks time the same object.
"""

from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn

from pipa_core.config import Run, TrainConfig
from pipa_core.labels import NUM_CLASSES
from pipa_core.uda import checkpoint as ckpt
from pipa_core.uda.distributed import (
    DistInfo,
    average_buffers,
    broadcast_flag,
    wrap_model,
)
from pipa_core.uda.ema import build_teacher, ema_alpha, ema_update
from pipa_core.uda.feature_distance import FeatureDistance
from pipa_core.uda.optim import build_optimizer, build_scheduler
from pipa_core.uda.step import Networks, StepContext, StepOutput, training_step

__all__ = ["Engine", "build_networks", "resolve_amp", "seed_everything"]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) global RNGs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - datasets may use the legacy global RNG
    torch.manual_seed(seed)


def resolve_amp(amp: str, device: torch.device) -> Optional[torch.dtype]:
    """Autocast dtype for ``runtime.amp`` on ``device`` (None = full precision).

    ``auto``: bf16 on CUDA GPUs that support it, else fp16 (with a GradScaler); off on CPU.
    """
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def layer_lr_scale(student: nn.Module, cfg: TrainConfig) -> Optional[Callable[[str], float]]:
    """``name -> lr factor`` of layer-wise lr decay for a DINOv2 encoder (None: off)."""
    from pipa_core.models.dinov2 import DINOv2Encoder, dinov2_layer_id

    encoder = getattr(student, "encoder", None)
    decay, prefix = cfg.optim.layer_decay, cfg.model.backbone_prefix
    if decay >= 1 or not isinstance(encoder, DINOv2Encoder):
        return None
    n = len(encoder.vit.blocks)

    def scale(name: str) -> float:
        layer = dinov2_layer_id(name[len(prefix) :], n)
        return 1.0 if layer is None else decay ** (n + 1 - layer)

    return scale


def describe_fault(out: StepOutput, batch: dict) -> str:
    """Which loss terms and which input images of a rejected step were non-finite."""
    terms = [f"{k}={v}" for k, v in out.logs.items() if not math.isfinite(v)]
    inputs = [
        f"{dom}.{key}[{i}]"
        for dom, sample in batch.items()
        if isinstance(sample, dict)
        for key in ("img", "img_ref")
        if torch.is_tensor(sample.get(key))
        for i in torch.nonzero(~torch.isfinite(sample[key]).flatten(1).all(1)).flatten().tolist()
    ]
    parts = [f"loss terms {', '.join(terms) or 'finite (the gradients were not)'}"]
    if inputs:
        parts.append(f"non-finite pixels in the input images {', '.join(inputs)}")
    return "; ".join(parts)


def build_networks(run: Run, device: torch.device) -> tuple[nn.Module, Networks]:
    """Student segmentor, EMA teacher, feature-distance copy and loss modules of ``run``.

    Only the projection heads of enabled losses (``run.heads``) are built, so DDP never
    sees unused parameters; the crop sizes an HRDA detail crop. Returns
    ``(student_module, Networks)`` (student not yet wrapped).
    """
    from pipa_core.losses import (
        ClassMemoryBank,
        PatchContrastLoss,
        PixelContrastLoss,
        PrototypeContrastLoss,
        TemporalContrastLoss,
    )
    from pipa_core.losses.released import ReleasedPatchContrastLoss, ReleasedPixelContrastLoss
    from pipa_core.models import build_from_config

    cfg = run.cfg
    m, lc = cfg.model, cfg.losses
    student = build_from_config(
        m, run.crop_size, run.heads, channels_last=cfg.runtime.channels_last,
        stage_heads=run.stage_heads,
    ).to(device)  # fmt: skip
    if m.init_from is not None:  # a warm start: every tensor but the projection heads
        _warm_start(student, m.init_from, run.stage_heads)
    proj_dim = m.proj_dim or 256

    def bank(size: int, classes: int) -> Optional[ClassMemoryBank]:
        return ClassMemoryBank(classes, proj_dim, size).to(device) if size > 0 else None

    losses: dict[str, nn.Module] = {}
    if "pixel" in lc.enabled and lc.pixel.released:
        p = lc.pixel
        losses["pixel"] = ReleasedPixelContrastLoss(
            p.temperature, max_anchors=p.max_anchors, max_views=p.max_views
        )
    elif "pixel" in lc.enabled:
        p = lc.pixel
        losses["pixel"] = PixelContrastLoss(
            p.temperature, p.max_anchors, p.max_views, memory_bank=bank(p.memory_size, NUM_CLASSES)
        )
    if "patch" in lc.enabled and lc.patch.released:
        # HRDA variant: the teacher's logits; DAFormer variant: its decoder feature
        c_in = student.num_classes if student.multi_resolution else student.feat_channels
        losses["patch"] = ReleasedPatchContrastLoss(
            c_in, temperature=lc.patch.temperature, num_negatives=lc.patch.num_negatives
        ).to(device)
    elif "patch" in lc.enabled:
        p = lc.patch
        losses["patch"] = PatchContrastLoss(
            p.temperature, p.max_locations, p.num_negatives, memory_bank=bank(p.memory_size, 1)
        )
    if "temporal" in lc.enabled:
        p = lc.temporal
        losses["temporal"] = TemporalContrastLoss(
            p.temperature, p.max_locations, p.num_negatives, memory_bank=bank(p.memory_size, 1)
        )
    if "prototype" in lc.enabled:
        p = lc.prototype
        losses["prototype"] = PrototypeContrastLoss(
            NUM_CLASSES, student.feat_channels, p.temperature, p.momentum, max_pixels=p.max_pixels
        ).to(device)
    teacher = None
    if cfg.uda.mode == "self_training":
        teacher = build_teacher(student, cfg.uda.teacher_bn)
    fd = None
    if cfg.uda.fd_lambda > 0:
        fd = FeatureDistance(student, cfg.uda.fd_lambda, cfg.uda.fd_classes, cfg.uda.fd_min_ratio)
    return student, Networks(student, teacher, fd, losses)


def _warm_start(student: nn.Module, init_from: str, stage_heads: bool) -> None:
    """Load a warm start (strict). With the released stage heads a warm start that lacks
    them leaves them at their initialisation; every other key must still match."""
    from pipa_core.assets import resolve_weights
    from pipa_core.models.pretrained import PretrainedLoadError, load_segmentor_weights

    path = resolve_weights(init_from)
    report = load_segmentor_weights(student, path, strict=not stage_heads)
    if stage_heads:
        stray = [k for k in report.missing if not k.startswith("stage_heads.")]
        if stray or report.unexpected:
            raise PretrainedLoadError(
                f"{path} does not match the segmentor: missing {stray[:5]}, unexpected "
                f"{report.unexpected[:5]}"
            )


def add_loss_param_groups(
    optimizer: torch.optim.Optimizer, losses: dict[str, nn.Module], lr: float, weight_decay: float
) -> None:
    """Give loss modules with parameters (the released patch loss's ``project``) their own
    AdamW group at the base ``lr`` (no ``head_lr_mult``: the release's ``project`` has no
    ``head`` in its name). Modules without parameters (every paper loss) add nothing."""
    for name, module in losses.items():
        params = [p for p in module.parameters() if p.requires_grad]
        if params:
            names = [f"losses.{name}.{n}" for n, p in module.named_parameters() if p.requires_grad]
            optimizer.add_param_group({
                "params": params, "param_names": names, "lr": lr, "weight_decay": weight_decay,
                "name": f"loss_{name}", "kind": "head_decay",
            })  # fmt: skip


@dataclass
class Engine:
    """One run's networks, optimizer, schedule and step context (see the module docstring).

    ``student`` is the unwrapped segmentor; ``nets.student`` is what the step calls
    (DDP-wrapped and/or compiled). ``generator`` drives the step's own sampling
    (ClassMix masks, patch crops), seeded per rank.
    """

    run: Run
    info: DistInfo
    student: nn.Module
    nets: Networks
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    amp_dtype: Optional[torch.dtype]
    generator: torch.Generator
    ctx: StepContext
    #: why the last step was rejected (None after an applied step)
    last_fault: Optional[str] = None

    @classmethod
    def build(cls, run: Run, info: Optional[DistInfo] = None) -> Engine:
        """Build everything a resolved :class:`~pipa_core.config.Run` needs on ``info.device``.

        Every rank builds the same initial weights (under ``runtime.seed``), then reseeds
        per rank for the step's randomness. ``info`` defaults to one process on the CPU.
        """
        info = info if info is not None else DistInfo()
        cfg = run.cfg
        r, o, device = cfg.runtime, cfg.optim, info.device
        seed_everything(r.seed)
        student, nets = build_networks(run, device)
        seed_everything(r.seed + 1000 * info.rank)
        nets.student = wrap_model(student, info, r.sync_bn, r.find_unused_parameters)
        if r.compile:
            # Static shapes: the student sees a few fixed sizes (crops, patch crops), and
            # torch 2.14's dynamic-shape path fails on the second one.
            nets.student = torch.compile(nets.student, dynamic=False)
        optimizer = build_optimizer(
            student, o.lr, o.weight_decay, o.head_lr_mult, tuple(o.betas),
            (cfg.model.backbone_prefix,), layer_scale=layer_lr_scale(student, cfg),
        )  # fmt: skip
        add_loss_param_groups(optimizer, nets.losses, o.lr, o.weight_decay)
        scheduler = build_scheduler(
            optimizer, o.max_iters, o.warmup_iters, o.poly_power, o.warmup_ratio, o.min_lr_ratio
        )
        amp_dtype = resolve_amp(r.amp, device)
        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        generator = torch.Generator().manual_seed(r.seed * 7919 + info.rank)
        ctx = StepContext(
            generator=generator,
            pseudo_crop=run.pseudo_rows,
            patch_crop=run.patch_crop,
            autocast=functools.partial(
                torch.autocast, device.type, dtype=amp_dtype, enabled=amp_dtype is not None
            ),
        )
        return cls(
            run, info, student, nets, optimizer, scheduler, scaler, amp_dtype, generator, ctx
        )

    @property
    def cfg(self) -> TrainConfig:
        return self.run.cfg

    @property
    def spec(self):
        return self.run.spec

    @property
    def device(self) -> torch.device:
        return self.info.device

    def step(
        self,
        batch: dict,
        iteration: int,
        step_fn: Callable[..., StepOutput] = training_step,
    ) -> tuple[StepOutput, bool]:
        """One iteration at ``iteration`` (0-based): step, backward, clip, optimizer, EMA, schedule.

        Returns the step's output and whether the update was applied. ``False``: the loss,
        the gradients or a state the forward writes (BatchNorm statistics, memory banks,
        prototypes) was non-finite on some rank; then everything the step touched, the
        RNG states included, is restored, so the run continues exactly as if it had
        skipped the batch (only the schedule advances, keeping the run's length), and
        :attr:`last_fault` says what was non-finite.
        """
        before = self._capture()
        self.ctx.iteration = iteration
        try:
            out = step_fn(batch, self.nets, self.cfg, self.ctx)
            applied = self.optimizer_step(out)
        except RuntimeError:  # e.g. a DDP peer stopped answering: back to the last boundary
            self.optimizer.zero_grad(set_to_none=True)
            self._restore(before)
            raise
        if applied and not self._states_finite():
            # a finite loss, but a forward wrote NaN / Inf into a BatchNorm statistic,
            # a memory bank or a prototype (e.g. a NaN pixel seen only by the teacher)
            applied = False
            self.optimizer.zero_grad(set_to_none=True)
            self.last_fault = "non-finite running statistics or memory after the forward"
        elif applied:
            self.last_fault = None
        else:
            self.last_fault = describe_fault(out, batch)
        if applied:
            self.sync_buffers()
            self.update_teacher(iteration)
        else:
            self._restore(before)  # as if the batch had never been seen
        self.scheduler.step()
        return out, applied

    # ---- rollback of a rejected step: everything a forward may write, and the RNGs
    def _stateful(self) -> list[nn.Module]:
        mods = [self.student, self.nets.teacher, self.nets.feature_distance]
        return [m for m in mods if m is not None]

    def _capture(self) -> dict[str, Any]:
        """Copies of what a forward changes besides the parameters: module buffers (BatchNorm
        statistics), loss-module state (memory banks, prototypes), the RNG states."""
        return {
            "buffers": [b.detach().clone() for m in self._stateful() for b in m.buffers()],
            "losses": {
                k: {n: v.clone() for n, v in m.state_dict().items()}
                for k, m in self.nets.losses.items()
            },
            "rng": ckpt.capture_rng_state(),
            "generator": self.generator.get_state(),
        }

    def _restore(self, state: dict[str, Any]) -> None:
        live = [b for m in self._stateful() for b in m.buffers()]
        with torch.no_grad():
            for b, saved in zip(live, state["buffers"]):
                b.copy_(saved)
        for k, m in self.nets.losses.items():
            m.load_state_dict(state["losses"][k])
        ckpt.restore_rng_state(state["rng"])
        self.generator.set_state(state["generator"])

    def _states_finite(self) -> bool:
        """Whether every floating buffer and loss state is finite on every rank."""
        tensors = [b for m in self._stateful() for b in m.buffers()]
        tensors += [v for m in self.nets.losses.values() for v in m.state_dict().values()]
        flags = [torch.isfinite(t).all() for t in tensors if t.is_floating_point()]
        ok = bool(torch.stack(flags).all()) if flags else True
        return not broadcast_flag(not ok, self.device)

    def sync_buffers(self) -> None:
        """Average BatchNorm statistics over ranks (DDP syncs gradients, not buffers)."""
        if not self.info.distributed:
            return
        average_buffers(self.student)
        if self.nets.teacher is not None and self.cfg.uda.teacher_bn == "batch":
            # its BatchNorm statistics follow each rank's own target batch
            average_buffers(self.nets.teacher)

    def update_teacher(self, iteration: int) -> None:
        """EMA of the student's parameters into the teacher (buffers too if ``teacher_bn="ema"``)."""
        if self.nets.teacher is None:
            return
        ema_update(
            self.nets.teacher, self.student, ema_alpha(iteration, self.cfg.uda.ema_alpha),
            buffers=self.cfg.uda.teacher_bn == "ema",
        )  # fmt: skip

    def optimizer_step(self, out: StepOutput) -> bool:
        """Backward + optimizer step; False (and nothing applied) when loss or gradients are non-finite."""
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        bad = broadcast_flag(not bool(torch.isfinite(out.loss.detach())), self.device)
        if not bad:
            self.scaler.scale(out.loss).backward()
            self.scaler.unscale_(self.optimizer)
            max_norm = self.cfg.optim.grad_clip or float("inf")
            norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
            out.logs["grad_norm"] = float(norm)
            # With a GradScaler an inf gradient is an expected overflow: the scaler skips it.
            bad = broadcast_flag(
                not math.isfinite(float(norm)) and not self.scaler.is_enabled(), self.device
            )
        if bad:
            self.optimizer.zero_grad(set_to_none=True)
            return False
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return True
