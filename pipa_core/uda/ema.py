"""Mean teacher: the teacher is an exponential moving average (EMA) of the student.

DACS / DAFormer update ``θ_t ← α·θ_t + (1 − α)·θ_s`` after every step with
``α = min(1 − 1/(it + 1), α_max)``: early on the teacher tracks the student
closely (α = 0 at it = 0 copies it), later it averages over ~1/(1 − α_max) steps.

Two ways to treat BatchNorm (``uda.teacher_bn``):

- ``"batch"`` (DAFormer's ``dacs.py``): the teacher runs with dropout and drop-path
  off but its BatchNorm layers in training mode, so they normalise with the
  statistics of the target batch being labelled; the EMA averages parameters only.
- ``"ema"``: the teacher is in eval mode and its BN running statistics are
  EMA-averaged from the student's (statistics of source and mixed batches).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_alpha(iteration: int, alpha: float = 0.999) -> float:
    """EMA decay at ``iteration`` (0-based): ``min(1 − 1/(iteration + 1), alpha)``."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"EMA alpha must lie in [0, 1], got {alpha}")
    if iteration < 0:
        raise ValueError(f"iteration must be >= 0, got {iteration}")
    return min(1.0 - 1.0 / (iteration + 1), alpha)


def _bn_layers(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def set_teacher_mode(teacher: nn.Module, batch_norm: str = "batch") -> nn.Module:
    """Eval mode (dropout / drop-path off), with BatchNorm in training mode for ``"batch"``.

    Module modes are not part of a state dict: call this again after loading one.
    """
    if batch_norm not in ("batch", "ema"):
        raise ValueError(f"teacher batch_norm must be 'batch' or 'ema', got {batch_norm!r}")
    teacher.eval()
    if batch_norm == "batch":
        for m in _bn_layers(teacher):
            m.train()
    return teacher


def build_teacher(student: nn.Module, batch_norm: str = "batch") -> nn.Module:
    """A frozen deep copy of ``student`` in teacher mode (see :func:`set_teacher_mode`).

    The teacher never receives gradients; its parameters only change through
    :func:`ema_update` (and, with ``batch_norm="batch"``, its BN running statistics
    follow the target batches it labels).
    """
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return set_teacher_mode(teacher, batch_norm)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, alpha: float, buffers: bool = True) -> None:
    """In-place ``teacher ← alpha·teacher + (1 − alpha)·student`` over parameters
    (and, with ``buffers``, float buffers; integer buffers such as BatchNorm's
    ``num_batches_tracked`` are then copied).

    ``buffers=False`` is DAFormer's parameter-only EMA (``uda.teacher_bn="batch"``).
    Both modules must have the same structure (the teacher is a copy of the student;
    pass the unwrapped module, not a DDP wrapper).
    """
    t_params = dict(teacher.named_parameters())
    dst, src = [], []
    for name, s in student.named_parameters():
        if name not in t_params:
            raise KeyError(
                f"teacher has no parameter {name!r}; build it with build_teacher(student)"
            )
        dst.append(t_params[name])
        src.append(s.detach().to(t_params[name].dtype))
    # One multi-tensor kernel instead of a lerp_ launch per tensor (about 1100 for
    # MiT-B5); the same arithmetic (docs/performance.md).
    torch._foreach_lerp_(dst, src, 1.0 - alpha)
    if not buffers:
        return
    t_bufs = dict(teacher.named_buffers())
    for name, s in student.named_buffers():
        t = t_bufs.get(name)
        if t is None:
            continue
        if t.is_floating_point():
            t.lerp_(s.to(t.dtype), 1.0 - alpha)
        else:
            t.copy_(s)
