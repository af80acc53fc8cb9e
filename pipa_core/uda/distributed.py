"""Process-group setup for one process, one GPU, or many GPUs / nodes via ``torchrun``.

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``MASTER_ADDR/PORT``;
:func:`init_distributed` reads them, picks ``nccl`` on CUDA and ``gloo`` on CPU,
and returns where this process runs. Without those variables it is a plain
single-process run and nothing is initialised.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    """Where this process runs: ``rank`` of ``world_size``, on ``device``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    """``"auto"`` -> ``cuda:<local_rank>`` if CUDA is available else ``cpu``; else ``torch.device(device)``."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"runtime.device={device!r} but CUDA is not available here; use 'auto' or 'cpu'"
        )
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank % torch.cuda.device_count())
    return dev


def init_distributed(
    device: str = "auto", backend: str | None = None, timeout_s: float = 300.0
) -> DistInfo:
    """Initialise the default process group from torchrun's environment variables.

    Returns a :class:`DistInfo`; a single process without ``WORLD_SIZE > 1`` gets
    rank 0 of 1 and no process group. Calling it again reuses the existing group.
    ``timeout_s`` bounds every collective: a rank whose peer stops answering raises
    instead of waiting (torch's default would be 30 minutes).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world > 1:
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        if not dist.is_initialized():
            backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
            dist.init_process_group(
                backend=backend, rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s)
            )
    return DistInfo(rank, world, local_rank, dev)


class DistributedTimeoutError(RuntimeError):
    """A collective waited longer than ``runtime.ddp_timeout_s``: a peer stopped answering."""


def is_timeout(exc: BaseException) -> bool:
    """Whether a collective's exception is a timeout (gloo and NCCL word it differently)."""
    text = str(exc).lower()
    return "timed out" in text or "timeout" in text or "watchdog" in text


def cleanup() -> None:
    """Destroy the default process group if one exists."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Synchronise all ranks (no-op in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average a dict of floats over ranks (for logging); identity in a single process."""
    if not (dist.is_available() and dist.is_initialized()) or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist()))


def broadcast_flag(flag: bool, device: torch.device) -> bool:
    """True on every rank if ``flag`` is True on any rank (e.g. a non-finite loss)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


@torch.no_grad()
def average_buffers(model: nn.Module) -> None:
    """Average floating-point buffers (BatchNorm running statistics) over ranks, in place.

    DDP broadcasts rank 0's buffers at the start of every forward, but the last
    forward of a step leaves each rank with statistics of its own shard; averaging
    them keeps every rank's model (and hence its EMA teacher) identical. No-op in
    a single process.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    bufs = [b for b in model.buffers() if b.is_floating_point()]
    if not bufs:
        return
    flat = torch.cat([b.reshape(-1) for b in bufs])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for b in bufs:
        b.copy_(flat[offset : offset + b.numel()].view_as(b))
        offset += b.numel()


def wrap_model(
    model: nn.Module, info: DistInfo, sync_bn: bool = True, find_unused_parameters: bool = False
) -> nn.Module:
    """DistributedDataParallel wrapper for multi-process runs (identity otherwise).

    BatchNorm layers (DeepLab-v2) become SyncBatchNorm when ``sync_bn`` on CUDA
    (PyTorch's SyncBatchNorm has no CPU kernel); MiT models only use LayerNorm,
    so this changes nothing there.
    """
    if not info.distributed:
        return model
    if (
        sync_bn
        and info.device.type == "cuda"
        and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    ):
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [info.device.index] if info.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(
        model, device_ids=ids, find_unused_parameters=find_unused_parameters
    )


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP / ``torch.compile`` wrapper."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model
