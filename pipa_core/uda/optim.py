"""AdamW with DAFormer's parameter groups and the warmup + poly learning-rate schedule.

Parameter groups (DAFormer / SegFormer recipe):
- the encoder (backbone) trains at ``lr``; everything else (decoder, classifier,
  projection heads) at ``lr × head_lr_mult`` (10);
- normalisation layers (LayerNorm / BatchNorm / GroupNorm ...) and positional
  blocks get no weight decay.

Schedule: linear warmup over ``warmup_iters`` from ``warmup_ratio × lr``, then
polynomial decay ``(1 − it / max_iters) ** power`` down to ``min_lr`` (mmcv's
"poly" policy with a linear warmup that multiplies the poly value).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Callable, Optional

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)


def _no_decay_names(model: nn.Module, no_decay_keys: Sequence[str]) -> set[str]:
    names = set()
    for mod_name, mod in model.named_modules():
        is_norm = isinstance(mod, _NORM_TYPES) or type(mod).__name__.lower().endswith("norm")
        for p_name, _ in mod.named_parameters(recurse=False):
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            if is_norm or any(k in full for k in no_decay_keys):
                names.add(full)
    return names


def param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    head_lr_mult: float = 10.0,
    backbone_prefixes: Sequence[str] = ("encoder.",),
    no_decay_keys: Sequence[str] = ("pos_block", "pos_embed", "cls_token", "reg_token"),
    layer_scale: Optional[Callable[[str], float]] = None,
) -> list[dict]:
    """Split trainable parameters into AdamW groups.

    Groups are named ``{backbone|head}_{decay|no_decay}`` (key ``"name"``) and
    carry their ``lr`` and ``weight_decay``. Parameters whose name starts with
    one of ``backbone_prefixes`` are the backbone; the rest are heads. With
    ``layer_scale`` (layer-wise lr decay of ViT encoders), each backbone parameter's
    lr is multiplied by ``layer_scale(name)``, one group per distinct factor
    (``backbone_decay_x0.531``...).
    """
    no_decay = _no_decay_names(model, no_decay_keys)
    groups: dict[str, dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        part = "backbone" if name.startswith(tuple(backbone_prefixes)) else "head"
        decay = "no_decay" if name in no_decay else "decay"
        scale = layer_scale(name) if layer_scale is not None and part == "backbone" else 1.0
        key = f"{part}_{decay}" + ("" if scale == 1.0 else f"_x{scale:.4g}")
        if key not in groups:
            groups[key] = {
                "name": key,
                "kind": f"{part}_{decay}",
                "params": [],
                "param_names": [],
                "lr": lr * (head_lr_mult if part == "head" else scale),
                "weight_decay": 0.0 if decay == "no_decay" else weight_decay,
            }
        groups[key]["params"].append(p)
        groups[key]["param_names"].append(name)
    order = ["backbone_decay", "backbone_no_decay", "head_decay", "head_no_decay"]
    return sorted(groups.values(), key=lambda g: (order.index(g["kind"]), -g["lr"]))


def build_optimizer(
    model: nn.Module,
    lr: float = 6e-5,
    weight_decay: float = 0.01,
    head_lr_mult: float = 10.0,
    betas: tuple[float, float] = (0.9, 0.999),
    backbone_prefixes: Sequence[str] = ("encoder.",),
    layer_scale: Optional[Callable[[str], float]] = None,
) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` (``param_names`` are kept in each group for inspection)."""
    groups = param_groups(
        model, lr, weight_decay, head_lr_mult, backbone_prefixes, layer_scale=layer_scale
    )
    if not groups:
        raise ValueError("the model has no trainable parameters")
    # The fused kernel updates every tensor in one pass instead of a Python loop (CPU)
    # or a chain of foreach kernels (CUDA): 3-7x less optimizer time on CPU
    # (docs/performance.md). It needs floating-point parameters on CPU / CUDA (torch >= 2.4).
    fused = all(
        p.is_floating_point() and p.device.type in ("cpu", "cuda")
        for g in groups
        for p in g["params"]
    )
    return torch.optim.AdamW(
        groups, lr=lr, betas=tuple(betas), weight_decay=weight_decay, fused=fused or None
    )


class WarmupPoly:
    """Learning-rate factor ``f(it)`` for :class:`torch.optim.lr_scheduler.LambdaLR`.

    ``poly(it) = (1 − min_lr_ratio)·(1 − it/max_iters)^power + min_lr_ratio``; during
    warmup (``it < warmup_iters``) it is multiplied by
    ``1 − (1 − it/warmup_iters)·(1 − warmup_ratio)`` (linear from ``warmup_ratio`` to 1).
    A plain class so that ``LambdaLR.state_dict`` stores it as plain numbers.
    """

    def __init__(
        self,
        max_iters: int,
        warmup_iters: int = 1500,
        power: float = 1.0,
        warmup_ratio: float = 1e-6,
        min_lr_ratio: float = 0.0,
    ):
        if max_iters <= 0:
            raise ValueError(f"max_iters must be > 0, got {max_iters}")
        self.max_iters = max_iters
        self.warmup_iters = warmup_iters
        self.power = power
        self.warmup_ratio = warmup_ratio
        self.min_lr_ratio = min_lr_ratio

    def __call__(self, it: int) -> float:
        progress = min(it, self.max_iters) / self.max_iters
        factor = (1.0 - self.min_lr_ratio) * (1.0 - progress) ** self.power + self.min_lr_ratio
        if it < self.warmup_iters:
            factor *= 1.0 - (1.0 - it / self.warmup_iters) * (1.0 - self.warmup_ratio)
        return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    max_iters: int,
    warmup_iters: int = 1500,
    power: float = 1.0,
    warmup_ratio: float = 1e-6,
    min_lr_ratio: float = 0.0,
) -> LambdaLR:
    """Per-iteration LambdaLR applying :class:`WarmupPoly` to every group's base lr."""
    return LambdaLR(
        optimizer, WarmupPoly(max_iters, warmup_iters, power, warmup_ratio, min_lr_ratio)
    )
