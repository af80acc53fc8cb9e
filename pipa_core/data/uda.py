"""UDA training pairs: a labelled source sample with an unlabelled target sample.

Item ``idx`` is ``{"source": sample, "target": sample}``. Without rare class
sampling the source is ``concat(sources)[idx]``; with it, a source dataset is
picked uniformly and its :class:`~pipa_core.data.rcs.RareClassSampler` draws the
image (DAFormer). The target index is random (default) or cycles ``idx mod len``.

Every item is deterministic: its randomness (RCS draws, target choice, random
crops and flips inside the transforms) comes from a generator seeded by
``(seed, epoch, idx)``, so results do not depend on the number of DataLoader
workers. Call :meth:`UDADataset.set_epoch` each epoch for fresh draws.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

from pipa_core.data.base import DatasetError
from pipa_core.data.rcs import RareClassSampler


class UDADataset(Dataset):
    """Pairs source and target samples.

    Args:
        sources: one or several labelled source datasets.
        target: the target dataset (items carry all-255 labels when unlabelled).
        rcs: one :class:`RareClassSampler` per source (or ``None`` to disable RCS).
        target_sampling: ``"random"`` or ``"cycle"``.
        seed: base seed of the per-item generators.

    Length: total number of source items.
    """

    def __init__(
        self,
        sources: Sequence[Dataset] | Dataset,
        target: Dataset,
        rcs: Optional[Sequence[RareClassSampler]] = None,
        target_sampling: str = "random",
        seed: int = 0,
    ) -> None:
        self.sources = list(sources) if isinstance(sources, (list, tuple)) else [sources]
        if not self.sources:
            raise DatasetError("UDADataset needs at least one source dataset")
        if target_sampling not in ("random", "cycle"):
            raise DatasetError(
                f"unknown target_sampling {target_sampling!r}; valid: 'random', 'cycle'"
            )
        if rcs is not None and len(rcs) != len(self.sources):
            raise DatasetError(
                f"got {len(rcs)} rare class samplers for {len(self.sources)} sources"
            )
        self.source = ConcatDataset(self.sources)
        self.target = target
        self.rcs = list(rcs) if rcs is not None else None
        self.target_sampling = target_sampling
        self.seed = int(seed)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.source)

    def set_epoch(self, epoch: int) -> None:
        """Change the per-item random draws (like ``DistributedSampler.set_epoch``)."""
        self.epoch = int(epoch)

    def _item_seed(self, idx: int) -> int:
        # SeedSequence mixes (seed, epoch, idx) into well-separated streams.
        state = np.random.SeedSequence([self.seed, self.epoch, int(idx)]).generate_state(2)
        return int(state[0]) << 32 | int(state[1])

    def __getitem__(self, idx: int) -> dict[str, Any]:
        if idx < 0:
            idx += len(self)
        seed = self._item_seed(idx)
        g = torch.Generator().manual_seed(seed)
        # Transforms use torch's global RNG: fork it so each item is reproducible
        # and the caller's RNG state is left untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed ^ 0x5DEECE66D)
            if self.rcs is None:
                source = self.source[idx]
            else:
                k = int(torch.randint(len(self.sources), (), generator=g))
                source = self.rcs[k].draw(self.sources[k].__getitem__, g)
            if self.target_sampling == "cycle":
                t = idx % len(self.target)
            else:
                t = int(torch.randint(len(self.target), (), generator=g))
            target = self.target[t]
        return {"source": source, "target": target}
