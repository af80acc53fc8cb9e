"""Cityscapes label conventions shared by every dataset, metric and figure.

Everything in this repository speaks Cityscapes *train IDs* 0..18 with
``IGNORE_INDEX = 255``. Names, colours and the Cityscapes id -> trainId map
come from ``cityscapesscripts.helpers.labels`` so they cannot drift from the
official definitions.
"""

from __future__ import annotations

import numpy as np
from cityscapesscripts.helpers.labels import labels as _CS_LABELS

IGNORE_INDEX = 255
NUM_CLASSES = 19

_TRAIN = sorted(
    (lb for lb in _CS_LABELS if 0 <= lb.trainId < NUM_CLASSES), key=lambda lb: lb.trainId
)
#: The 19 Cityscapes evaluation classes, indexed by train ID.
CLASSES: tuple[str, ...] = tuple(lb.name for lb in _TRAIN)
#: RGB colour per train ID (official Cityscapes palette).
PALETTE: tuple[tuple[int, int, int], ...] = tuple(tuple(lb.color) for lb in _TRAIN)

#: Cityscapes label id (0..33, -1 for license plate) -> train id (255 = ignore).
CITYSCAPES_ID_TO_TRAINID: dict[int, int] = {
    lb.id: (lb.trainId if 0 <= lb.trainId < NUM_CLASSES else IGNORE_INDEX)
    for lb in _CS_LABELS
    if lb.id >= 0
}

#: SYNTHIA-RAND-CITYSCAPES class id (R channel of GT/LABELS) -> train id.
#: SYNTHIA has no terrain, truck or train.
SYNTHIA_ID_TO_TRAINID: dict[int, int] = {
    3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8,
    1: 10, 10: 11, 17: 12, 8: 13, 19: 15, 12: 17, 11: 18,
}  # fmt: skip


def class_index(names: list[str] | tuple[str, ...]) -> tuple[int, ...]:
    """Train IDs of the given class names (raises ``KeyError`` naming valid names)."""
    out = []
    for n in names:
        if n not in CLASSES:
            raise KeyError(f"unknown class {n!r}; valid names: {', '.join(CLASSES)}")
        out.append(CLASSES.index(n))
    return tuple(out)


#: Evaluation protocols: which train IDs enter the mean IoU (the papers' class subsets).
PROTOCOLS: dict[str, tuple[int, ...]] = {
    # GTA5 -> Cityscapes and every 19-class benchmark.
    "cs19": tuple(range(NUM_CLASSES)),
    # SYNTHIA -> Cityscapes: no terrain, truck, train.
    "syn16": tuple(
        i for i in range(NUM_CLASSES) if CLASSES[i] not in ("terrain", "truck", "train")
    ),
    # SYNTHIA -> Cityscapes, 13 classes: the 16 minus wall, fence, pole.
    "syn13": tuple(
        i
        for i in range(NUM_CLASSES)
        if CLASSES[i] not in ("terrain", "truck", "train", "wall", "fence", "pole")
    ),
    # VIPER -> Cityscapes-Seq (15 classes).
    "viper15": class_index(
        (
            "road",
            "sidewalk",
            "building",
            "fence",
            "traffic light",
            "traffic sign",
            "vegetation",
            "terrain",
            "sky",
            "person",
            "car",
            "truck",
            "bus",
            "motorcycle",
            "bicycle",
        )
    ),  # fmt: skip
    # SYNTHIA-Seq -> Cityscapes-Seq (11 classes).
    "synseq11": class_index(
        (
            "road",
            "sidewalk",
            "building",
            "pole",
            "traffic light",
            "traffic sign",
            "vegetation",
            "sky",
            "person",
            "rider",
            "car",
        )
    ),  # fmt: skip
}

#: DAFormer's "thing" classes used by the ImageNet feature distance.
THING_CLASSES: tuple[int, ...] = (6, 7, 11, 12, 13, 14, 15, 16, 17, 18)


def check_protocol(name: str) -> tuple[int, ...]:
    """Train IDs of protocol ``name``; a clear ``ValueError`` lists valid names."""
    if name not in PROTOCOLS:
        raise ValueError(
            f"unknown class protocol {name!r}; valid protocols: {', '.join(PROTOCOLS)}"
        )
    return PROTOCOLS[name]


def make_lut(mapping: dict[int, int], size: int = 65536) -> np.ndarray:
    """A uint8 lookup table sending every key of ``mapping`` to its value and all else to 255.

    Shape ``(size,)``; apply as ``lut[label_array]``. Unknown ids map to ignore.
    """
    lut = np.full(size, IGNORE_INDEX, dtype=np.uint8)
    for k, v in mapping.items():
        if 0 <= k < size:
            lut[k] = v
    return lut


def colorize(label: np.ndarray) -> np.ndarray:
    """Colour a train-ID map ``(H, W)`` into an RGB uint8 image ``(H, W, 3)``; ignore is black."""
    pal = np.zeros((256, 3), dtype=np.uint8)
    pal[:NUM_CLASSES] = np.asarray(PALETTE, dtype=np.uint8)
    return pal[np.asarray(label, dtype=np.int64).clip(0, 255)]
