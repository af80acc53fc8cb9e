"""The embedded synthetic sim-to-real street benchmark (no download, runs anywhere).

Two renderings of procedurally generated streets: ``source`` ("game": flat
shading, saturated palette, crisp edges) and ``target`` ("real": textures,
lighting, colour cast, blur, sensor noise, and different layout statistics).
Labels are Cityscapes train IDs. See docs/synthetic_benchmark.md.

- ``scene``: world sampling per domain (layout statistics);
- ``render``: rasterisation and the two domain looks;
- ``generate``: pure, seeded ``generate_scene`` / ``generate_sequence``;
- ``cache``: presets, on-disk layout, manifest, ``ensure_synthetic``;
- ``dataset``: ``SyntheticDataset`` / ``SyntheticSequenceDataset``.
"""

from pipa_core.data.synthetic.cache import (
    GENERATOR_VERSION,
    PRESETS,
    Preset,
    class_frequencies,
    ensure_synthetic,
    frame_path,
    image_path,
    read_manifest,
)
from pipa_core.data.synthetic.dataset import (
    SyntheticDataset,
    SyntheticSequenceDataset,
    read_image,
    read_label,
)
from pipa_core.data.synthetic.generate import DOMAINS, SPLITS, generate_scene, generate_sequence

__all__ = [
    "DOMAINS",
    "GENERATOR_VERSION",
    "PRESETS",
    "SPLITS",
    "Preset",
    "SyntheticDataset",
    "SyntheticSequenceDataset",
    "class_frequencies",
    "ensure_synthetic",
    "frame_path",
    "generate_scene",
    "generate_sequence",
    "image_path",
    "read_image",
    "read_label",
    "read_manifest",
]
