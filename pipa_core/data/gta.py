"""GTA5 (Playing for Data): 24,966 synthetic 1914x1052 frames labelled with Cityscapes ids.

Layout (after ``python -m pipa_core.data.prepare gta <root>``)::

    <root>/images/00001.png
    <root>/labels/00001.png                  # Cityscapes label ids (palette PNG), as shipped
    <root>/labels/00001_labelTrainIds.png    # written by the preparation command
    <root>/sample_class_stats.json           # per-image class pixel counts (rare class sampling)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from pipa_core.data.base import (
    PairedFileDataset,
    Record,
    Transform,
    flat_records,
)

LAYOUT = """  <root>/images/*.png
  <root>/labels/*.png                 (Cityscapes label ids, as downloaded)
  <root>/labels/*_labelTrainIds.png   (written by the preparation command)"""


def gta_records(root: Path) -> list[Record]:
    """Paired (image, train-ID label) records of a prepared GTA5 tree."""
    return flat_records(root, "images", "labels", "GTA5", LAYOUT)


class GTADataset(PairedFileDataset):
    """GTA5 source images with Cityscapes train-ID labels.

    Items: ``{"img": (3,H,W) float32 in [0,1], "label": (H,W) int64, "name": str}``.
    """

    def __init__(self, root: str | os.PathLike, transform: Optional[Transform] = None) -> None:
        root = Path(root)
        super().__init__(gta_records(root), root, transform, dataset="GTA5")
