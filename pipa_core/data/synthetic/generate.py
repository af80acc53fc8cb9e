"""Pure generators: one still scene or one video sequence as numpy arrays.

Every array is a deterministic function of ``(seed, domain, split, index)``:
the random stream of an item is ``numpy.random.default_rng(SeedSequence([seed,
domain code, split code, index]))``, so items can be generated in any order and
by any number of processes and come out bit-identical.
"""

from __future__ import annotations

import numpy as np

from pipa_core.data.synthetic.render import apply_look, rasterize, sample_look
from pipa_core.data.synthetic.scene import sample_world

DOMAINS = ("source", "target")
#: Still-image splits; "sequences" is the video split.
SPLITS = ("train", "val")
_SPLIT_CODES = {"train": 0, "val": 1, "sequences": 2}


def check_domain(domain: str) -> str:
    """``domain`` if valid, else a ``ValueError`` listing the valid domains."""
    if domain not in DOMAINS:
        raise ValueError(
            f"unknown synthetic domain {domain!r}; valid domains: {', '.join(DOMAINS)}"
        )
    return domain


def check_split(split: str) -> str:
    """``split`` if valid, else a ``ValueError`` listing the valid still-image splits."""
    if split not in SPLITS:
        raise ValueError(f"unknown synthetic split {split!r}; valid splits: {', '.join(SPLITS)}")
    return split


def check_seed(seed: int) -> int:
    """``seed`` if it is a non-negative integer, else a ``ValueError``."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _rng(seed: int, domain: str, split: str, index: int, frame: int = 0) -> np.random.Generator:
    code = [check_seed(seed), DOMAINS.index(domain), _SPLIT_CODES[split], int(index), int(frame)]
    return np.random.default_rng(np.random.SeedSequence(code))


def _check_size(height: int, width: int) -> None:
    if height < 8 or width < 8:
        raise ValueError(f"image size must be at least 8x8 pixels, got {height}x{width}")


def generate_scene(
    seed: int, domain: str, split: str, index: int, height: int = 128, width: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """One still street scene.

    Returns ``img`` uint8 ``(H, W, 3)`` RGB and ``label`` uint8 ``(H, W)`` with
    Cityscapes train IDs 0..18 (255 only on the target ego-vehicle hood).
    """
    check_domain(domain)
    check_split(split)
    _check_size(height, width)
    rng = _rng(seed, domain, split, index)
    world = sample_world(rng, domain, n_frames=1)
    look = sample_look(rng, domain)
    cv = rasterize(world, 0.0, height, width)
    return apply_look(cv, look, _rng(seed, domain, split, index, frame=1)), cv.label


def generate_sequence(
    seed: int, domain: str, index: int, n_frames: int = 10, height: int = 128, width: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """One video sequence with ego-motion and moving objects.

    Returns ``imgs`` uint8 ``(T, H, W, 3)`` and ``labels`` uint8 ``(T, H, W)``,
    ``T = n_frames``; consecutive frames show the same street a fraction of a
    metre further on.
    """
    check_domain(domain)
    _check_size(height, width)
    if n_frames < 2:
        raise ValueError(f"a sequence needs at least 2 frames, got n_frames={n_frames}")
    rng = _rng(seed, domain, "sequences", index)
    world = sample_world(rng, domain, n_frames=n_frames)
    look = sample_look(rng, domain)
    imgs = np.empty((n_frames, height, width, 3), np.uint8)
    labels = np.empty((n_frames, height, width), np.uint8)
    for t in range(n_frames):
        cv = rasterize(world, float(t), height, width)
        imgs[t] = apply_look(cv, look, _rng(seed, domain, "sequences", index, frame=t + 1))
        labels[t] = cv.label
    return imgs, labels
