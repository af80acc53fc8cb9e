"""Torch datasets over a generated synthetic benchmark cache (see ``cache.py`` for the layout)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from pipa_core.data.synthetic.cache import frame_path, image_path, read_manifest
from pipa_core.data.synthetic.generate import check_domain, check_split

Transform = Callable[[dict], dict]


def read_image(path: Path) -> torch.Tensor:
    """uint8 RGB PNG -> float32 ``(3, H, W)`` in [0, 1]."""
    arr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if arr is None:
        raise FileNotFoundError(
            f"missing or unreadable image {path}; regenerate with ensure_synthetic"
        )
    arr = cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).float().div_(255.0)


def read_label(path: Path) -> torch.Tensor:
    """uint8 train-ID PNG -> int64 ``(H, W)``."""
    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise FileNotFoundError(
            f"missing or unreadable label {path}; regenerate with ensure_synthetic"
        )
    return torch.from_numpy(arr.astype(np.int64))


class SyntheticDataset(Dataset):
    """Still images of one domain and split.

    ``domain`` in {"source", "target"}, ``split`` in {"train", "val"} (both
    domains have both splits). Items: ``{"img": float32 (3, H, W) in [0, 1],
    "label": int64 (H, W), "name": str}``; labels are always stored (the
    target train split is meant to be used unlabelled by UDA, but an oracle can
    read them). ``transform(sample) -> sample`` is applied last.
    """

    def __init__(
        self, root: str | os.PathLike, domain: str, split: str, transform: Transform | None = None
    ):
        self.root = Path(root)
        self.domain, self.split = check_domain(domain), check_split(split)
        man = read_manifest(self.root)
        self.n = int(man["counts"][f"{domain}/{split}"])
        self.transform = transform

    def __len__(self) -> int:
        return self.n

    @property
    def label_files(self) -> list[Path]:
        """Label file of every item (rare class sampling reads their statistics)."""
        return [image_path(self.root, self.domain, self.split, i, "labels") for i in range(self.n)]

    def __getitem__(self, i: int) -> dict:
        if not -self.n <= i < self.n:
            raise IndexError(f"index {i} out of range for {self.n} items")
        i %= self.n
        sample = {
            "img": read_image(image_path(self.root, self.domain, self.split, i)),
            "label": read_label(image_path(self.root, self.domain, self.split, i, "labels")),
            "name": f"synthetic/{self.domain}/{self.split}/{i:06d}",
        }
        return self.transform(sample) if self.transform is not None else sample


class SyntheticSequenceDataset(Dataset):
    """Video frames of one domain with a reference frame for temporal contrast.

    Every frame of every sequence is a key frame (``len = sequences x frames``,
    sequence-major). The reference frame of key frame ``t`` is ``t +
    ref_offset`` when that exists in the same sequence, else ``t - ref_offset``
    (the last frames look back), so ``img_ref`` always comes from the same
    sequence and is ``abs(ref_offset)`` frames away; the item's ``ref_offset``
    is the signed offset actually used. Items: ``{"img", "label", "img_ref",
    "ref_offset", "name"}``. Use :meth:`frames` to walk one sequence in order.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        domain: str,
        ref_offset: int = 1,
        transform: Transform | None = None,
    ):
        self.root = Path(root)
        self.domain = check_domain(domain)
        man = read_manifest(self.root)
        self.num_sequences = int(man["sequences"][domain]["count"])
        self.frames_per_sequence = int(man["sequences"][domain]["frames"])
        if (
            isinstance(ref_offset, bool)
            or not isinstance(ref_offset, int)
            or not 1 <= abs(ref_offset) < self.frames_per_sequence
        ):
            raise ValueError(
                f"ref_offset must be a non-zero integer with |ref_offset| < {self.frames_per_sequence} "
                f"(frames per sequence), got {ref_offset!r}"
            )
        self.ref_offset = ref_offset
        self.transform = transform

    def __len__(self) -> int:
        return self.num_sequences * self.frames_per_sequence

    @property
    def label_files(self) -> list[Path]:
        """Label file of every key frame (rare class sampling reads their statistics)."""
        n = self.frames_per_sequence
        return [
            frame_path(self.root, self.domain, i // n, i % n, "labels") for i in range(len(self))
        ]

    def ref_index(self, t: int) -> int:
        """Frame index of the reference for key frame ``t`` (same sequence)."""
        r = t + self.ref_offset
        return r if 0 <= r < self.frames_per_sequence else t - self.ref_offset

    def frame(self, seq: int, t: int) -> dict:
        """Frame ``t`` of sequence ``seq`` as ``{"img", "label", "name"}`` (no transform)."""
        if not (0 <= seq < self.num_sequences and 0 <= t < self.frames_per_sequence):
            raise IndexError(
                f"frame ({seq}, {t}) out of range: {self.num_sequences} sequences x {self.frames_per_sequence} frames"
            )
        return {
            "img": read_image(frame_path(self.root, self.domain, seq, t)),
            "label": read_label(frame_path(self.root, self.domain, seq, t, "labels")),
            "name": f"synthetic/{self.domain}/sequences/seq_{seq:03d}/frame_{t:04d}",
        }

    def frames(self, seq: int) -> Iterator[dict]:
        """Yield the frames of sequence ``seq`` in temporal order."""
        for t in range(self.frames_per_sequence):
            yield self.frame(seq, t)

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} key frames")
        seq, t = divmod(i, self.frames_per_sequence)
        sample = self.frame(seq, t)
        r = self.ref_index(t)
        sample["img_ref"] = read_image(frame_path(self.root, self.domain, seq, r))
        sample["ref_offset"] = r - t
        return self.transform(sample) if self.transform is not None else sample
