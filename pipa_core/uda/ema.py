"""Mean teacher: the teacher is an exponential moving average (EMA) of the student.

DACS / DAFormer update ``θ_t ← α·θ_t + (1 − α)·θ_s`` after every step with
``α = min(1 − 1/(it + 1), α_max)``: early on the teacher tracks the student
closely (α = 0 at it = 0 copies it), later it averages over ~1/(1 − α_max) steps.
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


def build_teacher(student: nn.Module) -> nn.Module:
    """A frozen deep copy of ``student`` in eval mode (dropout / drop-path off, BN running stats).

    The teacher never receives gradients; it only changes through :func:`ema_update`.
    """
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.eval()


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, alpha: float) -> None:
    """In-place ``teacher ← alpha·teacher + (1 − alpha)·student`` over parameters and float buffers.

    Integer buffers (e.g. BatchNorm's ``num_batches_tracked``) are copied. Both
    modules must have the same structure (the teacher is a copy of the student;
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
    t_bufs = dict(teacher.named_buffers())
    for name, s in student.named_buffers():
        t = t_bufs.get(name)
        if t is None:
            continue
        if t.is_floating_point():
            t.lerp_(s.to(t.dtype), 1.0 - alpha)
        else:
            t.copy_(s)
