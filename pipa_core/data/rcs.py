"""Rare class sampling (RCS, DAFormer section 3.3): sample source images of rare classes more often.

From the per-image class pixel counts written by the preparation command:

* class frequency ``f_c`` = pixels of class c / all labelled pixels of the dataset;
* class probability ``P(c) ∝ exp((1 - f_c) / T)`` with temperature ``T = 0.01``
  (a softmax over ``(1 - f) / T``), so rare classes are drawn far more often;
* an image is a candidate for class c if it holds more than ``min_pixels = 3000``
  pixels of c (counted at full resolution, as in DAFormer); classes without any
  candidate image are left out and the others renormalised;
* DAFormer's ``min_crop_ratio = 0.5`` rule: after the random crop, the crop is
  accepted when it holds more than ``min_pixels * min_crop_ratio`` (= 1500)
  pixels of c; otherwise the same image is loaded (and randomly cropped) again,
  up to 10 times. So the ratio is relative to ``min_pixels``, not to the crop area.

DAFormer compares with strict ``>`` in both rules; so does this module.
Everything is deterministic given a ``torch.Generator``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Callable, Optional

import torch

from pipa_core.data.base import STATS_FILE, DatasetError, prepare_command

TEMPERATURE = 0.01
MIN_PIXELS = 3000
MIN_CROP_RATIO = 0.5
MAX_CROP_TRIES = 10


def load_class_stats(path: str | os.PathLike) -> dict[str, dict[int, int]]:
    """Read ``sample_class_stats.json`` into ``{relative label path: {train id: pixels}}``."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(
            f"rare class sampling needs {path}, which is missing; run the preparation command "
            f"for this dataset (e.g. `{prepare_command('gta', path.parent)}`)."
        )
    with open(path) as f:
        entries = json.load(f)
    out = {}
    for e in entries:
        e = dict(e)
        file = e.pop("file")
        out[file] = {int(c): int(n) for c, n in e.items()}
    return out


def rcs_class_probs(class_pixels: torch.Tensor, temperature: float = TEMPERATURE) -> torch.Tensor:
    """``P(c) ∝ exp((1 - f_c) / T)`` from total pixels per class ``(C,)``; returns ``(C,)`` float64."""
    freq = class_pixels.double() / class_pixels.sum().double()
    return torch.softmax((1.0 - freq) / temperature, dim=0)


class RareClassSampler:
    """Draw (class, dataset index) pairs the DAFormer way from per-item class pixel counts.

    Args:
        item_stats: for every dataset index, ``{train id: pixels}`` of its label.
        temperature: ``T`` of the class softmax.
        min_pixels: an item is a candidate for class c if it has more than this many pixels of c.
        min_crop_ratio: a crop is accepted if it has more than ``min_pixels * min_crop_ratio``
            pixels of the sampled class.

    Attributes:
        classes: ``(K,)`` int64 train ids that can be sampled.
        probs: ``(K,)`` float64 their probabilities.
        candidates: per class, ``(N_c,)`` int64 dataset indices.
    """

    def __init__(
        self,
        item_stats: Sequence[dict[int, int]],
        temperature: float = TEMPERATURE,
        min_pixels: int = MIN_PIXELS,
        min_crop_ratio: float = MIN_CROP_RATIO,
    ) -> None:
        self.min_pixels = min_pixels
        self.min_crop_ratio = min_crop_ratio
        all_classes = sorted({c for s in item_stats for c in s})
        if not all_classes:
            raise DatasetError("rare class sampling: the class statistics hold no labelled pixel")
        totals = torch.tensor([sum(s.get(c, 0) for s in item_stats) for c in all_classes])
        probs = rcs_class_probs(totals, temperature)
        keep, self.candidates = [], {}
        for k, c in enumerate(all_classes):
            idx = [i for i, s in enumerate(item_stats) if s.get(c, 0) > min_pixels]
            if idx:
                keep.append(k)
                self.candidates[c] = torch.tensor(idx, dtype=torch.int64)
        if not keep:
            raise DatasetError(
                f"rare class sampling: no image has more than min_pixels={min_pixels} pixels of "
                "any class; lower min_pixels or disable RCS."
            )
        self.classes = torch.tensor([all_classes[k] for k in keep], dtype=torch.int64)
        self.probs = probs[keep] / probs[keep].sum()

    @classmethod
    def from_dataset(
        cls, dataset, stats_path: Optional[str | os.PathLike] = None, **kwargs
    ) -> RareClassSampler:
        """Build from a dataset with ``root`` and ``label_files`` and its statistics file.

        ``stats_path`` defaults to ``<dataset.root>/sample_class_stats.json``.
        """
        root = Path(dataset.root)
        stats = load_class_stats(stats_path or root / STATS_FILE)
        item_stats = []
        for lbl in dataset.label_files:
            key = Path(lbl).relative_to(root).as_posix() if lbl is not None else None
            if key not in stats:
                raise DatasetError(
                    f"rare class sampling: {lbl} is not in {stats_path or root / STATS_FILE}; "
                    "the statistics are stale. Rerun the preparation command for this dataset."
                )
            item_stats.append(stats[key])
        return cls(item_stats, **kwargs)

    def sample(self, generator: Optional[torch.Generator] = None) -> tuple[int, int]:
        """Draw a class by ``probs``, then a uniform candidate image of it: ``(train id, index)``."""
        k = int(torch.multinomial(self.probs, 1, generator=generator))
        c = int(self.classes[k])
        cand = self.candidates[c]
        i = int(cand[torch.randint(len(cand), (), generator=generator)])
        return c, i

    def crop_ok(self, label: torch.Tensor, c: int) -> bool:
        """Whether the cropped ``label`` ``(H, W)`` has more than ``min_pixels * min_crop_ratio`` pixels of c."""
        return int((label == c).sum()) > self.min_pixels * self.min_crop_ratio

    def draw(
        self, load: Callable[[int], dict], generator: Optional[torch.Generator] = None
    ) -> dict:
        """A rare-class sample: ``load(index)`` is retried (new random crop) until ``crop_ok``.

        At most ``MAX_CROP_TRIES`` extra loads; the last sample is returned regardless.
        """
        c, i = self.sample(generator)
        sample = load(i)
        if self.min_crop_ratio > 0:
            for _ in range(MAX_CROP_TRIES):
                if self.crop_ok(sample["label"], c):
                    break
                sample = load(i)
        return sample
