"""Benchmark presets: which datasets, scales, crops, class protocols and UDA options.

``get_benchmark(name)`` returns a frozen :class:`BenchmarkSpec`;
``build_train_dataset(spec, data_root, seed=0)`` builds the UDA training pairs
and ``build_val_dataset(spec, data_root)`` the labelled evaluation split.
Dataset roots are relative to ``data_root`` (default layout in data/README.md).
Sizes are ``(H, W)``. Scales follow DAFormer (GTA5 1280x720, SYNTHIA 1280x760,
Cityscapes 1024x512, ACDC / Dark Zurich 960x540) with 512x512 crops.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from torch.utils.data import Dataset

from pipa_core.data.base import HIDDEN_LABEL, DatasetError, Transform
from pipa_core.data.transforms import (
    Compose,
    DropLabel,
    SourceAugment,
    train_pipeline,
    val_pipeline,
)
from pipa_core.labels import check_protocol

Size = tuple[int, int]


@dataclass(frozen=True)
class DatasetRef:
    """One dataset of a benchmark: builder ``name``, ``root`` relative to data_root, split, options."""

    name: str
    root: str
    split: str = "train"
    labelled: bool = True
    options: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class BenchmarkSpec:
    """A UDA benchmark preset.

    Attributes:
        name: preset name.
        sources: labelled source dataset(s) (several = multi-source).
        target: the unlabelled target training split.
        val: the labelled target evaluation split.
        source_scales: resize ``(H, W)`` per source.
        target_scale: resize ``(H, W)`` of target training and evaluation images.
        crop_size: training crop ``(H, W)``.
        protocols: class protocols (``labels.PROTOCOLS``); the first is the headline mIoU.
        video: items carry a reference frame (``img_ref``) at ``ref_offset``.
        ref_offset: frame offset of the reference frame (negative = earlier).
        rcs: rare class sampling on the source(s).
        pseudo_ignore_top / pseudo_ignore_bottom: rows of the *crop* whose pseudo-labels
            get weight 0 (DAFormer: 15 / 120 for synthetic-to-Cityscapes at 512x512 crops,
            hiding the ego-car hood and the rectification border).
        cat_max_ratio: maximum single-class share of a source crop.
        rcs_temperature / rcs_min_pixels / rcs_min_crop_ratio: RCS settings (DAFormer:
            0.01 / 3000 / 0.5; see ``pipa_core.data.rcs``).
    """

    name: str
    sources: tuple[DatasetRef, ...]
    target: DatasetRef
    val: DatasetRef
    source_scales: tuple[Size, ...]
    target_scale: Size
    crop_size: Size = (512, 512)
    protocols: tuple[str, ...] = ("cs19",)
    video: bool = False
    ref_offset: int = -1
    rcs: bool = False
    pseudo_ignore_top: int = 0
    pseudo_ignore_bottom: int = 0
    cat_max_ratio: float = 0.75
    rcs_temperature: float = 0.01
    rcs_min_pixels: int = 3000
    rcs_min_crop_ratio: float = 0.5
    notes: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if len(self.source_scales) != len(self.sources):
            raise DatasetError(
                f"benchmark {self.name}: {len(self.sources)} sources but "
                f"{len(self.source_scales)} source scales"
            )
        for p in self.protocols:
            check_protocol(p)


_CS_TARGET = DatasetRef("cityscapes", "cityscapes", "train", labelled=False)
_CS_VAL = DatasetRef("cityscapes", "cityscapes", "val")
_CSSEQ_TARGET = DatasetRef("cityscapes_seq", "cityscapes", "train", labelled=False)
_CSSEQ_VAL = DatasetRef("cityscapes_seq", "cityscapes", "val")
_GTA = DatasetRef("gta", "gta")
_SYNTHIA = DatasetRef("synthia", "synthia")
_CS_SOURCE = DatasetRef("cityscapes", "cityscapes", "train")

BENCHMARKS: dict[str, BenchmarkSpec] = {
    s.name: s
    for s in (
        BenchmarkSpec("gta2cs", (_GTA,), _CS_TARGET, _CS_VAL, ((720, 1280),), (512, 1024),
                      rcs=True, pseudo_ignore_top=15, pseudo_ignore_bottom=120),
        BenchmarkSpec("syn2cs", (_SYNTHIA,), _CS_TARGET, _CS_VAL, ((760, 1280),), (512, 1024),
                      protocols=("syn16", "syn13"), rcs=True,
                      pseudo_ignore_top=15, pseudo_ignore_bottom=120),
        BenchmarkSpec("gtasyn2cs", (_GTA, _SYNTHIA), _CS_TARGET, _CS_VAL,
                      ((720, 1280), (760, 1280)), (512, 1024), rcs=True,
                      pseudo_ignore_top=15, pseudo_ignore_bottom=120,
                      notes="multi-source: GTA5 + SYNTHIA, each with its own RCS"),
        BenchmarkSpec("cs2acdc", (_CS_SOURCE,), DatasetRef("acdc", "acdc", "train", False),
                      DatasetRef("acdc", "acdc", "val"), ((512, 1024),), (540, 960), rcs=True),
        BenchmarkSpec("cs2darkzurich", (_CS_SOURCE,),
                      DatasetRef("darkzurich", "dark_zurich", "train", False),
                      DatasetRef("darkzurich", "dark_zurich", "val"), ((512, 1024),), (540, 960),
                      rcs=True),
        BenchmarkSpec("viper2csseq", (DatasetRef("viper", "viper"),), _CSSEQ_TARGET, _CSSEQ_VAL,
                      ((720, 1280),), (512, 1024), protocols=("viper15",), video=True),
        BenchmarkSpec("synseq2csseq",
                      (DatasetRef("synthia_seq", "synthia_seq",
                                  options=(("sequences", ("SYNTHIA-SEQS-04-DAWN",)),)),),
                      _CSSEQ_TARGET, _CSSEQ_VAL, ((760, 1280),), (512, 1024),
                      protocols=("synseq11",), video=True),
    )
}  # fmt: skip


def synthetic_benchmark(size: str = "default", seed: int = 0, video: bool = False) -> BenchmarkSpec:
    """The embedded synthetic benchmark (``pipa_core.data.synthetic``) at a size preset.

    Images are used at their generated size (128x256 for ``"default"``) with
    square crops of the image height (128x128); class protocol ``cs19``; no RCS.
    The cache is generated under ``<data_root>/synthetic`` on first use.

    ``video=True`` gives ``synthetic_seq``: source and target *sequences* for
    training (key frame + the next frame as reference, for temporal contrast),
    evaluated on the target val images (the sequences are not held out).
    """
    from pipa_core.data.synthetic import PRESETS

    if size not in PRESETS:
        raise DatasetError(f"unknown synthetic size {size!r}; valid: {', '.join(PRESETS)}")
    h, w = PRESETS[size].height, PRESETS[size].width
    gen = (("size", size), ("seed", seed))
    # DAFormer's RCS threshold (3000 pixels of a 1914x1052 GTA5 label), scaled to the image size.
    min_pixels = max(1, round(3000 * h * w / (1914 * 1052)))

    def ref(domain: str, split: str, labelled: bool) -> DatasetRef:
        return DatasetRef("synthetic", "synthetic", split, labelled, (("domain", domain), *gen))

    return BenchmarkSpec(
        "synthetic_seq" if video else "synthetic",
        (ref("source", "train", True),),
        ref("target", "train", False),
        ref("target", "val", True),
        ((h, w),),
        (h, w),
        crop_size=(h, h),
        video=video,
        ref_offset=1,
        # The target's ego-vehicle hood covers the bottom 6-10 % of every frame (label
        # 255); the teacher calls it road with high confidence. 52 rows of a 512-row
        # crop = the bottom 10 % (13 rows at 128): DAFormer's pseudo-label crop for it.
        pseudo_ignore_bottom=52,
        rcs_min_pixels=min_pixels,
        notes="embedded benchmark, generated on first use (pipa_core.data.synthetic)",
    )


BENCHMARKS["synthetic"] = synthetic_benchmark()
BENCHMARKS["synthetic_seq"] = synthetic_benchmark(video=True)


def get_benchmark(name: str) -> BenchmarkSpec:
    """The preset called ``name``; a clear :class:`DatasetError` lists the valid names."""
    if name not in BENCHMARKS:
        raise DatasetError(f"unknown benchmark {name!r}; valid names: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]


# ----------------------------------------------------------------------------- dataset builders
def _gta(root: Path, ref: DatasetRef, t: Transform, video: bool, off: int, **o) -> Dataset:
    from pipa_core.data.gta import GTADataset

    return GTADataset(root, transform=t, **o)


def _synthia(root: Path, ref: DatasetRef, t: Transform, video: bool, off: int, **o) -> Dataset:
    from pipa_core.data.synthia import SynthiaDataset

    return SynthiaDataset(root, transform=t, **o)


def _cityscapes(root: Path, ref: DatasetRef, t: Transform, video: bool, off: int, **o) -> Dataset:
    from pipa_core.data.cityscapes import CityscapesDataset

    return CityscapesDataset(root, ref.split, transform=t, labelled=ref.labelled, **o)


def _cityscapes_seq(root: Path, ref: DatasetRef, t: Transform, video: bool, off: int, **o):
    from pipa_core.data.cityscapes import CityscapesSeqDataset

    return CityscapesSeqDataset(root, ref.split, off, transform=t, labelled=ref.labelled, **o)


def _acdc(root: Path, ref: DatasetRef, t: Transform, video: bool, off: int, **o) -> Dataset:
    from pipa_core.data.acdc import ACDCDataset

    return ACDCDataset(root, ref.split, transform=t, labelled=ref.labelled, **o)


def _darkzurich(root: Path, ref: DatasetRef, t: Transform, video: bool, off: int, **o):
    from pipa_core.data.acdc import DarkZurichDataset

    return DarkZurichDataset(root, ref.split, transform=t, labelled=ref.labelled, **o)


def _viper(root: Path, ref: DatasetRef, t: Transform, video: bool, off: int, **o) -> Dataset:
    from pipa_core.data.viper import ViperSeqDataset

    return ViperSeqDataset(root, ref.split, off, transform=t, **o)


def _synthia_seq(root: Path, ref: DatasetRef, t: Transform, video: bool, off: int, **o):
    from pipa_core.data.synthia import SynthiaSeqDataset

    return SynthiaSeqDataset(root, ref_offset=off, transform=t, **o)


def _synthetic(root: Path, ref: DatasetRef, t: Transform, video: bool, off: int, **o):
    # Imported lazily: generating the cache is the synthetic package's job.
    from pipa_core.data.synthetic import (
        SyntheticDataset,
        SyntheticSequenceDataset,
        ensure_synthetic,
    )

    domain = o.pop("domain")
    root = ensure_synthetic(root, **o)
    if not ref.labelled:
        # The synthetic target stores labels; UDA must not see them. They travel as
        # "hidden_label" (after the crop and flip) only to measure the teacher's
        # pseudo-label accuracy during training; no loss reads them.
        t = Compose(([t] if t is not None else []) + [DropLabel(keep_as=HIDDEN_LABEL)])
    if video and ref.split != "val":  # sequences train; val stays the held-out images
        return SyntheticSequenceDataset(root, domain, ref_offset=off, transform=t)
    return SyntheticDataset(root, domain, ref.split, transform=t)


BUILDERS: dict[str, Callable[..., Dataset]] = {
    "gta": _gta,
    "synthia": _synthia,
    "cityscapes": _cityscapes,
    "cityscapes_seq": _cityscapes_seq,
    "acdc": _acdc,
    "darkzurich": _darkzurich,
    "viper": _viper,
    "synthia_seq": _synthia_seq,
    "synthetic": _synthetic,
}


def build_dataset(
    ref: DatasetRef,
    data_root: str | os.PathLike,
    transform: Optional[Transform] = None,
    video: bool = False,
    ref_offset: int = -1,
) -> Dataset:
    """Instantiate one :class:`DatasetRef` under ``data_root``."""
    if ref.name not in BUILDERS:
        raise DatasetError(f"unknown dataset {ref.name!r}; valid: {', '.join(BUILDERS)}")
    return BUILDERS[ref.name](
        Path(data_root) / ref.root, ref, transform, video, ref_offset, **dict(ref.options)
    )


def build_source_datasets(
    spec: BenchmarkSpec,
    data_root: str | os.PathLike,
    photometric: bool = True,
    augment: Optional[SourceAugment] = None,
) -> list[Dataset]:
    """The source training dataset(s) with their resize / crop / flip / photometric pipelines
    and the extra source augmentation ``augment`` (default none)."""
    return [
        build_dataset(
            ref,
            data_root,
            train_pipeline(
                scale, spec.crop_size, spec.cat_max_ratio, photometric=photometric, augment=augment
            ),
            spec.video,
            spec.ref_offset,
        )
        for ref, scale in zip(spec.sources, spec.source_scales)
    ]


def build_target_dataset(
    spec: BenchmarkSpec, data_root: str | os.PathLike, photometric: bool = True
) -> Dataset:
    """The unlabelled target training dataset (all-255 labels; no class-ratio crop check)."""
    t = train_pipeline(spec.target_scale, spec.crop_size, 1.0, photometric=photometric)
    return build_dataset(spec.target, data_root, t, spec.video, spec.ref_offset)


def build_train_dataset(
    spec: BenchmarkSpec,
    data_root: str | os.PathLike = "data",
    seed: int = 0,
    rcs: Optional[bool] = None,
    target_sampling: str = "random",
    photometric: bool = True,
    target_photometric: Optional[bool] = None,
    augment: Optional[SourceAugment] = None,
    labelled_target: bool = False,
):
    """The training pairs ``{"source", "target"}`` for ``spec`` (see ``pipa_core.data.uda``);
    the one builder of training data (the trainer's ``build_datasets`` calls it).

    Args:
        rcs: rare class sampling of the source(s); ``None`` = ``spec.rcs``. Needs each
            source's ``sample_class_stats.json``.
        photometric: the source pipeline's colour jitter; ``target_photometric`` the
            target's (``None``: the same). DAFormer's teacher labels undistorted images.
        augment: extra source augmentation (colour distortion, blur, noise).
        labelled_target: the target oracle: the *labelled* target split takes the
            ``"source"`` slot (the supervised step reads only that slot); no RCS.
    """
    from pipa_core.data.rcs import RareClassSampler
    from pipa_core.data.uda import UDADataset

    target_photometric = photometric if target_photometric is None else target_photometric
    if labelled_target:
        labelled = dataclasses.replace(spec.target, labelled=True)
        pipe = train_pipeline(
            spec.target_scale, spec.crop_size, spec.cat_max_ratio, photometric=photometric
        )
        sources = [build_dataset(labelled, data_root, pipe, spec.video, spec.ref_offset)]
        target = build_target_dataset(spec, data_root, target_photometric)
        return UDADataset(sources, target, None, target_sampling, seed)
    sources = build_source_datasets(spec, data_root, photometric, augment)
    target = build_target_dataset(spec, data_root, target_photometric)
    samplers = None
    if spec.rcs if rcs is None else rcs:
        samplers = [
            RareClassSampler.from_dataset(
                s,
                temperature=spec.rcs_temperature,
                min_pixels=spec.rcs_min_pixels,
                min_crop_ratio=spec.rcs_min_crop_ratio,
            )
            for s in sources
        ]
    return UDADataset(sources, target, samplers, target_sampling, seed)


def build_val_dataset(
    spec: BenchmarkSpec, data_root: str | os.PathLike = "data", resize_label: bool = True
) -> Dataset:
    """The labelled evaluation split, images resized to ``spec.target_scale``."""
    t = val_pipeline(spec.target_scale, resize_label)
    return build_dataset(spec.val, data_root, t, spec.video, spec.ref_offset)


def build_frame_pairs_dataset(
    spec: BenchmarkSpec, data_root: str | os.PathLike = "data", resize_label: bool = True
) -> Dataset:
    """Labelled target key frames with their reference frame, for temporal consistency.

    Items are ``{"img", "img_ref", "ref_offset", "label", "name"}``. Real video
    benchmarks use their evaluation split (Cityscapes-Seq val: the annotated 20th
    frame of each snippet and its neighbour); the embedded ``synthetic_seq``
    benchmark uses its target sequences, whose frames are all labelled.
    Raises :class:`DatasetError` for a benchmark without reference frames.
    """
    if not spec.video:
        raise DatasetError(
            f"benchmark {spec.name!r} has no reference frames; use a video benchmark "
            f"({', '.join(n for n, s in BENCHMARKS.items() if s.video)})"
        )
    t = val_pipeline(spec.target_scale, resize_label)
    ref = spec.val
    if ref.name == "synthetic":  # its val split is still images; the sequences carry labels
        ref = dataclasses.replace(spec.target, labelled=True)
    return build_dataset(ref, data_root, t, True, spec.ref_offset)
