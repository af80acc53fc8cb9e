"""Training data for the engine: datasets per method, and a resumable, sharded batch stream.

The stream walks the UDA dataset epoch by epoch in the order of a
``DistributedSampler`` (shuffled with ``seed + epoch``, one shard per rank; a
single process is rank 0 of 1). Its position — epoch and batches consumed — is
part of every checkpoint, so a resumed run reads exactly the batches the
uninterrupted run would have read. Per-item randomness (crops, flips, target
choice, RCS) is seeded by ``(seed, epoch, index)`` inside
:class:`pipa_core.data.uda.UDADataset`, so it does not depend on the number of
workers either. The DataLoader gets its own generator so that creating an
iterator never consumes the global torch RNG.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from pipa_core.config import Run, TrainConfig
from pipa_core.uda.distributed import DistInfo


def build_datasets(run: Run) -> tuple[Dataset, Dataset]:
    """``(train, val)`` datasets of a resolved run (:func:`pipa_core.config.resolve`).

    Self-training and source-only runs train on UDA pairs ``{"source", "target"}``.
    The target oracle trains on *labelled* target images: its pairs carry the
    labelled target split in the ``"source"`` slot (the supervised step reads
    only that slot). Both come from :func:`pipa_core.data.benchmarks.build_train_dataset`.
    """
    from pipa_core.data.benchmarks import build_train_dataset, build_val_dataset
    from pipa_core.data.transforms import SourceAugment

    cfg, spec = run.cfg, run.spec
    d = cfg.data
    root = d.data_root
    augment = SourceAugment(d.color_distortion, d.source_blur, d.source_noise, d.source_ratio_range)
    train = build_train_dataset(
        spec, root, cfg.runtime.seed, photometric=d.photometric,
        target_photometric=d.target_photometric, augment=augment,
        labelled_target=cfg.uda.mode == "oracle",
    )  # fmt: skip
    # Labels keep their full resolution and evaluate() upsamples the logits to it:
    # the protocol behind the published numbers (e.g. Cityscapes scored at 2048x1024).
    val = build_val_dataset(spec, root, resize_label=False)
    return train, val


class _OffsetSampler(Sampler):
    """A ``DistributedSampler`` epoch that starts ``start`` items in (to resume mid-epoch)."""

    def __init__(self, inner: DistributedSampler, start: int = 0):
        self.inner, self.start = inner, start

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self.inner), self.start, None)

    def __len__(self) -> int:
        return max(0, len(self.inner) - self.start)


class BatchStream:
    """Endless, resumable batches of a map-style dataset, sharded over DDP ranks.

    Args:
        dataset: the training dataset (``set_epoch`` is called on it if it has one).
        batch_size: per-process batch size.
        info: this process's rank / world size / device.
        seed: shuffling seed (the same on every rank).
        num_workers: DataLoader workers.
    """

    def __init__(
        self, dataset: Dataset, batch_size: int, info: DistInfo, seed: int, num_workers: int = 0
    ):
        self.dataset, self.batch_size, self.info = dataset, batch_size, info
        self.seed, self.num_workers = seed, num_workers
        self.epoch, self.batch_in_epoch = 0, 0
        self._it: Iterator | None = None
        per_rank = len(dataset) // info.world_size
        if per_rank < batch_size:
            raise ValueError(
                f"the training set has {len(dataset)} items: fewer than batch_size={batch_size} per "
                f"process on {info.world_size} process(es); lower data.batch_size or add data"
            )
        self.batches_per_epoch = per_rank // batch_size

    def _start_epoch(self) -> None:
        inner = DistributedSampler(
            self.dataset,
            self.info.world_size,
            self.info.rank,
            shuffle=True,
            seed=self.seed,
            drop_last=True,
        )
        inner.set_epoch(self.epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self.epoch)
        sampler = _OffsetSampler(inner, self.batch_in_epoch * self.batch_size)
        loader = DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            drop_last=True,
            pin_memory=self.info.device.type == "cuda",
            generator=torch.Generator().manual_seed(self.seed + self.epoch),
        )
        self._it = iter(loader)

    def next(self) -> dict:
        """The next batch; rolls over to the next epoch when one ends."""
        if self._it is None or self.batch_in_epoch >= self.batches_per_epoch:
            if self._it is not None:
                self.epoch, self.batch_in_epoch = self.epoch + 1, 0
            self._start_epoch()
        batch = next(self._it)
        self.batch_in_epoch += 1
        return batch

    def state_dict(self) -> dict:
        """Position in the stream (plain ints)."""
        return {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a saved position; the next :meth:`next` rebuilds the loader there."""
        self.epoch, self.batch_in_epoch = int(state["epoch"]), int(state["batch_in_epoch"])
        self._it = None
        if self.batch_in_epoch >= self.batches_per_epoch:
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0


class ShardSampler(Sampler):
    """Indices ``rank, rank + world, ...`` of ``n`` items: every item exactly once over all ranks."""

    def __init__(self, n: int, rank: int = 0, world_size: int = 1):
        self.n, self.rank, self.world_size = n, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))


def val_loader(dataset: Dataset, cfg: TrainConfig, info: DistInfo) -> DataLoader:
    """Evaluation loader; each rank reads its own shard (metrics are summed over ranks)."""
    n = len(dataset)
    if cfg.eval.max_samples is not None:
        n = min(n, cfg.eval.max_samples)
    return DataLoader(
        dataset,
        batch_size=cfg.eval.batch_size,
        sampler=ShardSampler(n, info.rank, info.world_size),
        num_workers=min(cfg.data.num_workers, 2),
        pin_memory=info.device.type == "cuda",
    )
