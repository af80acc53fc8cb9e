"""Typed training configuration: dataclasses, method recipes, benchmark presets, validation.

A :class:`TrainConfig` has one section per concern (``data``, ``model``,
``optim``, ``uda``, ``losses``, ``eval``, ``runtime``). Every ablation of the
papers is a configuration change only:

- ``uda.mode``: ``self_training`` (DACS / DAFormer / PiPa), ``source_only``
  (supervised on source only) or ``oracle`` (supervised on *target* labels);
- ``uda.fd_lambda > 0`` switches on the ImageNet feature distance,
  ``data.rcs`` rare-class sampling, ``uda.mix`` ClassMix;
- ``losses.enabled`` lists the self-supervised losses (``pixel``, ``patch``,
  ``temporal``, ``prototype``), each with its own sub-section.

:func:`make_config` / :func:`get_preset` build the presets (``<benchmark>_<method>``,
e.g. ``gta2cs_pipa``, ``synthetic_dacs``); :func:`apply_overrides` applies
CLI-style ``section.key=value`` pairs; :func:`validate_config` raises a
:class:`ConfigError` listing every problem with the fix.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import yaml

from pipa_core.labels import PROTOCOLS, THING_CLASSES

LOSS_NAMES = ("pixel", "patch", "temporal", "prototype")
UDA_MODES = ("self_training", "source_only", "oracle")
AMP_MODES = ("auto", "bf16", "fp16", "off")
EVAL_MODES = ("whole", "slide")
TEACHER_BN_MODES = ("batch", "ema")


class ConfigError(ValueError):
    """An invalid training configuration; the message lists every problem and its fix."""


# --------------------------------------------------------------------------- sections
@dataclass
class DataConfig:
    """Datasets and loading. ``None`` fields take the benchmark's default."""

    benchmark: str = "synthetic"  # a name of pipa_core.data.benchmarks.BENCHMARKS
    data_root: str = "data"  # dataset roots are relative to it (data/README.md)
    crop_size: Optional[Tuple[int, int]] = None  # (H, W) training crop
    source_scale: Optional[Tuple[int, int]] = None  # (H, W) resize of every source before cropping
    target_scale: Optional[Tuple[int, int]] = None  # (H, W) resize of target train and val images
    batch_size: int = 2  # per domain (2 source + 2 target) and per process
    # DataLoader worker processes (items are seeded per index: results do not depend on it)
    num_workers: int = 4
    rcs: Optional[bool] = None  # rare class sampling (DAFormer)
    rcs_temperature: Optional[float] = None  # None = the benchmark's (DAFormer: 0.01)
    rcs_min_pixels: Optional[int] = None  # (3000)
    rcs_min_crop_ratio: Optional[float] = None  # (0.5)
    ref_offset: Optional[int] = None  # video: reference frame offset (PiPa++ temporal loss)
    photometric: bool = True  # DAFormer photometric distortion of the labelled training images
    # Photometric distortion of the target images too. DAFormer's target pipeline has none:
    # the teacher labels undistorted images, the student sees the strongly augmented mix.
    target_photometric: bool = False
    # SimCLR colour distortion of strength s on source crops (0 = off; not for the oracle,
    # whose labelled images are the target's). See data.transforms.ColorDistortion.
    color_distortion: float = 0.0
    source_blur: float = 0.0  # probability of SimCLR's Gaussian blur on source crops (0 = off)
    source_noise: float = 0.0  # max std of additive Gaussian noise on source crops (0 = off)
    # Random rescale (lo, hi) of source images before cropping (mmseg's ratio_range); None = off
    source_ratio_range: Optional[Tuple[float, float]] = None
    synthetic_size: str = "default"  # synthetic benchmark only: "tiny", "default" or "large"


@dataclass
class ModelConfig:
    """Segmentor built by ``pipa_core.models.build_segmentor``."""

    arch: str = "daformer_mit_b5"  # pipa_core.models.ARCHS name, or hrda_<name> for HRDA
    # ImageNet encoder weights: official mit_b*.pth, HF nvidia/mit-b* or "imagenet" (download).
    pretrained: Optional[str] = None
    # A whole segmentor to start from (a warm start): a file written by
    # Segmentor.export_weights, a finished run directory, or a shipped name
    # ("synthetic_warm_start", pipa_core.assets). Loaded after `pretrained`.
    init_from: Optional[str] = None
    decoder_channels: Optional[int] = None  # None = the architecture's default (256 for DAFormer)
    proj_dim: Optional[int] = None  # embedding size of the projection heads; None = default
    # Parameters under this prefix train at optim.lr, the rest at lr * head_lr_mult.
    backbone_prefix: str = "encoder."
    hrda_detail_ratio: float = 0.5  # hrda_* archs: detail crop side / context side (512 / 1024)
    hrda_hr_loss_weight: float = 0.1  # hrda_* archs: weight of the detail-crop CE


@dataclass
class OptimConfig:
    """AdamW + linear warmup + poly decay (DAFormer)."""

    lr: float = 6e-5  # AdamW learning rate of the encoder
    head_lr_mult: float = 10.0  # decoder / classifier / projection heads train at lr x this
    weight_decay: float = 0.01  # AdamW weight decay (0 for norm layers and positional blocks)
    betas: Tuple[float, float] = (0.9, 0.999)  # AdamW betas
    max_iters: int = 40000  # training iterations (DAFormer 40k, PiPa 60k)
    warmup_iters: int = 1500  # linear warmup iterations
    warmup_ratio: float = 1e-6  # warmup starts at lr x this
    poly_power: float = 1.0  # poly decay (1 - it / max_iters) ** power after warmup
    min_lr_ratio: float = 0.0  # the poly decay ends at lr x this
    grad_clip: Optional[float] = None  # max gradient norm; None = no clipping


@dataclass
class UDAConfig:
    """Self-training (mean teacher, pseudo-labels, ClassMix) and the DAFormer extras."""

    mode: str = "self_training"  # self_training | source_only | oracle
    ema_alpha: float = 0.999  # teacher EMA decay; min(1 - 1/(it + 1), ema_alpha) early on
    # "batch" (DAFormer): the teacher's BatchNorm layers normalise with the target batch's
    # statistics and the EMA averages parameters only; "ema": an eval-mode teacher whose
    # BN running statistics are EMA-averaged from the student's.
    teacher_bn: str = "batch"
    # confidence a pseudo-label needs to count in the confident fraction
    pseudo_threshold: float = 0.968
    pseudo_weight_per_image: bool = False  # DAFormer: one confident fraction per batch
    # Rows of the target crop whose pseudo-label weight is 0; None = the benchmark's
    # value (DAFormer's 15 / 120 for Cityscapes targets at 512 rows, scaled to the crop).
    pseudo_crop_top: Optional[int] = None
    pseudo_crop_bottom: Optional[int] = None  # see pseudo_crop_top
    mix: str = "classmix"  # "classmix" or "none" (plain pseudo-labelling of target images)
    color_jitter_s: float = 0.2  # strength of the colour jitter on mixed images
    color_jitter_p: float = 0.2  # DACS convention: jitter when u > p, i.e. with probability 1 - p
    blur: bool = True  # Gaussian blur (p = 0.5, sigma in [0.15, 1.15]) on mixed images
    fd_lambda: float = 0.0  # ImageNet feature distance weight (0.005 in DAFormer); 0 = off
    # thing classes whose features are pulled to ImageNet's
    fd_classes: Tuple[int, ...] = THING_CLASSES
    fd_min_ratio: float = 0.75  # min-ratio rule of the label downsampled to the feature map


@dataclass
class PixelLossConfig:
    """Pixel-wise contrast (PiPa eq. 4) on source labels (and optionally target pseudo-labels)."""

    weight: float = 0.1  # α
    temperature: float = 0.1  # tau of r(a, b) = exp(cos(a, b) / tau)
    use_target: bool = False  # also confident pixels of the mixed target image (pseudo-labels)
    max_anchors: int = 1024  # anchors per call (official max_samples)
    max_views: int = 100  # anchors per (image, class)
    memory_size: int = 0  # per-class memory bank (PiPa++ semantic-aware bank); 0 = off


@dataclass
class PatchLossConfig:
    """Patch-wise contrast (PiPa eq. 5) on two overlapping crops of the target image."""

    weight: float = 0.1  # β
    temperature: float = 0.1  # tau
    crop_size: Optional[int] = None  # side of the two patches; None = 9/8 of the crop (720 for 640)
    # Random rescale of the target image before cropping.
    scale_range: Tuple[float, float] = (0.5, 2.0)
    iou_range: Tuple[float, float] = (0.1, 1.0)  # IoU of the two patches
    max_locations: int = 1024  # matched locations kept per step
    num_negatives: int = 3200  # extra negatives from both patches of the batch
    memory_size: int = 0  # queue of past negatives; 0 = off


@dataclass
class TemporalLossConfig:
    """PiPa++ temporal contrast between a key frame and a reference frame (video benchmarks)."""

    weight: float = 0.1  # weight of the temporal loss
    temperature: float = 0.1  # tau
    max_locations: int = 1024  # locations sampled per step
    num_negatives: int = 3200  # extra negatives from both frames
    memory_size: int = 0  # queue of past negatives; 0 = off


@dataclass
class PrototypeLossConfig:
    """SPCL prototype contrast (class prototypes, moving average λ)."""

    weight: float = 0.1  # weight of the prototype loss
    temperature: float = 0.1  # tau
    momentum: float = 0.1  # λ in p_c ← λ·p_c + (1 − λ)·mean_c; 1 keeps prototypes fixed
    use_target: bool = True  # target pixels with class-wise thresholded pseudo-labels
    max_pixels: Optional[int] = 4096  # query pixels per call (None = all)


@dataclass
class LossConfig:
    """The self-supervised losses added to the cross-entropy terms."""

    enabled: Tuple[str, ...] = ()  # any of pixel, patch, temporal, prototype
    pixel: PixelLossConfig = field(default_factory=PixelLossConfig)
    patch: PatchLossConfig = field(default_factory=PatchLossConfig)
    temporal: TemporalLossConfig = field(default_factory=TemporalLossConfig)
    prototype: PrototypeLossConfig = field(default_factory=PrototypeLossConfig)


@dataclass
class EvalConfig:
    """Periodic validation on the target val split."""

    interval: int = 4000  # iterations between evaluations; 0 = only at the end
    mode: str = "whole"  # "whole" image or "slide" window inference
    crop_size: Optional[Tuple[int, int]] = None  # slide window (H, W); None = training crop
    stride: Optional[Tuple[int, int]] = None  # slide stride; None = 2/3 of the window
    flip: bool = False  # average with the horizontally flipped prediction
    protocols: Optional[Tuple[str, ...]] = None  # None = the benchmark's protocols
    batch_size: int = 1  # validation batch size
    max_samples: Optional[int] = None  # evaluate only the first N val images (None = all)


@dataclass
class RuntimeConfig:
    """Where and how the run executes, logs and checkpoints."""

    run_dir: Optional[str] = None  # None = runs/<name>
    seed: int = 0  # base seed (model init, data order, augmentation; + rank offsets under DDP)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "auto"  # auto: bf16 if supported, else fp16 + GradScaler on CUDA; off on CPU
    channels_last: bool = False  # NHWC memory format (faster convolutions on recent GPUs)
    compile: bool = False  # torch.compile the student
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower on GPU)
    log_interval: int = 50  # iterations between metrics.jsonl / TensorBoard rows
    checkpoint_interval: int = 2000  # latest.pt every N iterations
    keep_checkpoint_interval: int = 10000  # also keep iter_N.pt every N iterations (0 = never)
    image_interval: int = 2000  # PNG grid of source/target/pseudo-label/mix every N (0 = never)
    tensorboard: bool = True  # write TensorBoard scalars to run_dir/tb
    progress: bool = True  # tqdm progress bar
    max_nonfinite: int = 5  # consecutive non-finite losses before the run stops
    find_unused_parameters: bool = False  # DDP; needed only for custom heads used conditionally
    sync_bn: bool = True  # SyncBatchNorm for BatchNorm models (DeepLab-v2) under DDP on CUDA
    resume: bool = False  # continue from run_dir/checkpoints/latest.pt if it exists
    stop_after: Optional[int] = None  # checkpoint and stop after this iteration (tests, budgets)
    num_threads: Optional[int] = None  # torch.set_num_threads on CPU


@dataclass
class TrainConfig:
    """The whole training configuration (saved as config.json / config.yaml in the run dir)."""

    name: str = "run"
    method: str = "custom"  # informational: the recipe the preset started from
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    uda: UDAConfig = field(default_factory=UDAConfig)
    losses: LossConfig = field(default_factory=LossConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    # -------------------------------------------------------------- conversion
    def to_dict(self) -> dict:
        """Plain nested dict (tuples become lists), JSON/YAML serialisable."""
        return _to_plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`ConfigError` naming valid keys."""
        return _from_dict(cls, d, "")

    def save(self, run_dir: str | Path) -> None:
        """Write ``config.json`` and ``config.yaml`` atomically into ``run_dir``."""
        from pipa_core.io import atomic_write_json, atomic_write_text

        d = self.to_dict()
        atomic_write_json(Path(run_dir) / "config.json", d)
        atomic_write_text(Path(run_dir) / "config.yaml", yaml.safe_dump(d, sort_keys=False))

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        """Read a config from a ``.json`` / ``.yaml`` file or a run directory."""
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        text = path.read_text()
        d = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        return cls.from_dict(d)

    @property
    def resolved_run_dir(self) -> Path:
        return Path(self.runtime.run_dir or f"runs/{self.name}")


def _to_plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _to_plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_to_plain(v) for v in x]
    return x


def _fields(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _from_dict(cls, d: dict, where: str):
    if not isinstance(d, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(d).__name__}")
    types = _fields(cls)
    unknown = sorted(set(d) - set(types))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {unknown} in {where or 'config'}; valid keys: {', '.join(types)}"
        )
    kwargs = {}
    for k, v in d.items():
        tp = types[k]
        path = f"{where}.{k}" if where else k
        if dataclasses.is_dataclass(tp):
            kwargs[k] = _from_dict(tp, v, path)
        else:
            kwargs[k] = _coerce(v, tp, path)
    return cls(**kwargs)


def _parse_sequence(text: str, path: str) -> list:
    """``"1,2"``, ``"(1, 2)"`` or ``"[1, 2]"`` -> ``[1, 2]`` (items parsed as YAML scalars)."""
    text = text.strip()
    if text[:1] in "([" and text[-1:] in ")]":
        text = text[1:-1]
    try:
        return [yaml.safe_load(v.strip()) for v in text.split(",") if v.strip()]
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"{path}: cannot parse {text!r} as a comma-separated list ({exc})"
        ) from None


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Convert ``value`` (from YAML / JSON / the CLI) to the annotated type ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union:  # Optional[X]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        inner = [a for a in args if a is not type(None)][0]
        return _coerce(value, inner, path)
    if origin in (tuple, list):
        if isinstance(value, str):
            value = _parse_sequence(value, path)
        if not isinstance(value, (list, tuple)):
            value = [value]
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], path) for v in value)
        if origin is tuple:
            if len(value) != len(args):
                raise ConfigError(f"{path}: expected {len(args)} values, got {list(value)}")
            return tuple(_coerce(v, a, path) for v, a in zip(value, args))
        return [_coerce(v, args[0], path) for v in value]
    if origin is dict or tp in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "no", "off", "0"):
            return False
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"{path}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        if isinstance(value, float) and value.is_integer():
            return int(value)
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{path}: expected an integer, got {value!r}") from None
    if tp is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{path}: expected a number, got {value!r}") from None
    if tp is str:
        return str(value)
    return value


# --------------------------------------------------------------------------- overrides
def apply_overrides(cfg: TrainConfig, overrides: List[str] | Dict[str, Any]) -> TrainConfig:
    """Apply ``section.key=value`` overrides (CLI ``--set``) and return a new config.

    Values are parsed as YAML scalars (``1e-4``, ``true``, ``null``) or
    comma-separated tuples (``data.crop_size=256,256``). A dict maps dotted keys
    to already-typed values.
    """
    items = overrides.items() if isinstance(overrides, dict) else [_split(o) for o in overrides]
    d = cfg.to_dict()
    for key, raw in items:
        parts = key.split(".")
        node, tp_cls = d, TrainConfig
        for i, p in enumerate(parts):
            types = _fields(tp_cls)
            if p not in types:
                where = ".".join(parts[:i]) or "config"
                raise ConfigError(
                    f"unknown key {key!r}: {where} has no {p!r}; valid keys: {', '.join(types)}"
                )
            tp = types[p]
            if i == len(parts) - 1:
                if dataclasses.is_dataclass(tp):
                    raise ConfigError(
                        f"{key!r} is a section; set one of its keys, e.g. {key}.<name>=..."
                    )
                value = (
                    _parse_scalar(raw, key, _is_str(tp))
                    if isinstance(raw, str) and not _is_tuple(tp)
                    else raw
                )
                node[p] = _to_plain(_coerce(value, tp, key))
            else:
                if not dataclasses.is_dataclass(tp):
                    raise ConfigError(f"{'.'.join(parts[: i + 1])!r} is a value, not a section")
                node, tp_cls = node[p], tp
    return TrainConfig.from_dict(d)


def _parse_scalar(text: str, key: str, is_str: bool = False) -> Any:
    # A string field keeps the text as typed: YAML would turn "off" / "yes" into booleans
    # (runtime.amp=off); only "null" / "~" still clear an optional field.
    if is_str:
        return None if text.strip() in ("null", "~", "None") else text
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text  # a plain string (e.g. a path with odd characters)


def _is_str(tp) -> bool:
    """Whether a field is ``str`` or ``Optional[str]``."""
    args = typing.get_args(tp) if typing.get_origin(tp) is typing.Union else (tp,)
    return str in args and all(a in (str, type(None)) for a in args)


def _is_tuple(tp) -> bool:
    t = (
        [a for a in typing.get_args(tp) if a is not type(None)]
        if typing.get_origin(tp) is typing.Union
        else [tp]
    )
    return any(typing.get_origin(a) in (tuple, list) for a in t)


def _split(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.key=value, e.g. optim.lr=1e-4")
    k, v = item.split("=", 1)
    return k.strip(), v.strip()


# --------------------------------------------------------------------------- methods
def _source_only(c: TrainConfig) -> None:
    c.uda.mode = "source_only"
    c.uda.fd_lambda = 0.0
    c.losses.enabled = ()


def _oracle(c: TrainConfig) -> None:
    c.uda.mode = "oracle"
    c.uda.fd_lambda = 0.0
    c.data.rcs = False  # target labels are not prepared for RCS statistics
    c.losses.enabled = ()


def _dacs(c: TrainConfig) -> None:
    c.uda.mode = "self_training"
    c.uda.mix = "classmix"
    c.uda.fd_lambda = 0.0
    c.data.rcs = False
    c.losses.enabled = ()


def _daformer(c: TrainConfig) -> None:
    _dacs(c)
    c.uda.fd_lambda = 0.005
    c.data.rcs = None  # the benchmark's choice (on for the synthetic-to-real benchmarks)


def _pipa(c: TrainConfig) -> None:
    _daformer(c)
    c.losses.enabled = ("pixel", "patch")


def _pipa_pp(c: TrainConfig) -> None:
    _pipa(c)
    c.losses.enabled = ("pixel", "patch", "temporal")
    c.losses.pixel.memory_size = 1000  # PiPa++ semantic-aware memory bank


def _spcl(c: TrainConfig) -> None:
    _daformer(c)
    c.losses.enabled = ("prototype",)


def _hrda(c: TrainConfig) -> None:
    # PiPa on HRDA (the paper's best setting); the data schedule is set in make_config.
    _pipa(c)
    from pipa_core.uda.hrda import hrda_arch

    c.model.arch = hrda_arch(c.model.arch)


#: Method recipes: name -> function that switches a config to that method.
METHODS = {
    "source_only": _source_only,
    "oracle": _oracle,
    "dacs": _dacs,
    "daformer": _daformer,
    "pipa": _pipa,
    "pipa_pp": _pipa_pp,
    "spcl": _spcl,
    "hrda": _hrda,
}


def _real_schedule(c: TrainConfig, benchmark: str, method: str) -> None:
    """DAFormer 40k or PiPa 60k iterations for a real benchmark (MiT-B5, 512x512 crops).

    The benchmark supplies scales, crop, protocols and pseudo-label crop rows. PiPa's
    640x640 crops belong to its HRDA setting (full-resolution Cityscapes); with the
    DAFormer scales used here (Cityscapes 1024x512) the crop stays 512x512.
    """
    c.data.benchmark = benchmark
    c.model.arch = "daformer_mit_b5"
    c.optim.max_iters = 60000 if method in ("pipa", "pipa_pp") else 40000
    c.data.batch_size = 2
    c.data.num_workers = 4
    c.eval.interval = 4000
    c.eval.mode = "slide"
    c.losses.patch.crop_size = 576  # 9/8 of the crop, as 720 for PiPa's 640 crops


#: The embedded benchmarks (still images; sequences for temporal contrast).
SYNTHETIC_BENCHMARKS = ("synthetic", "synthetic_seq")


def _synthetic_schedule(c: TrainConfig) -> None:
    """The CPU tutorial on the embedded benchmark (docs/training.md, "The CPU tutorial protocol").

    MiT-B0 with a 32-channel DAFormer head on 2 + 2 crops of 128x128, trained from
    random weights (no ImageNet offline). Every method starts from the shipped
    warm start (a source model) and trains the same schedule from it.
    """
    c.data.benchmark = "synthetic"
    c.data.batch_size = 2
    c.data.num_workers = 0
    # In place of ImageNet robustness: SimCLR's colour distortion and blur and sensor
    # noise on the source crops (a from-scratch model otherwise learns colour -> class).
    c.data.color_distortion = 1.0
    c.data.source_blur = 0.5
    c.data.source_noise = 0.03
    c.model.arch = "daformer_mit_b0"
    c.model.decoder_channels = 32  # the DAFormer head dominates the cost at 64 (x2 per step)
    c.model.proj_dim = 32
    c.model.init_from = "synthetic_warm_start"
    # A tiny model trained from scratch: lr chosen on the in-domain source val split
    # (6e-4 learns slower; 4e-3 no better than 2e-3); the same for every phase.
    c.optim.lr = 2e-3
    c.optim.max_iters = 500
    c.optim.warmup_iters = 50
    # DAFormer's threshold; an EMA horizon of ~100 steps for a 500-step adaptation
    # (0.999 averages over more steps than the run has: the teacher would stay the
    # warm start). Chosen from the pseudo-label accuracy curves (docs/training.md).
    c.uda.ema_alpha = 0.99
    c.uda.pseudo_threshold = 0.968
    c.losses.patch.crop_size = 96
    c.losses.pixel.max_anchors = 512
    c.losses.patch.max_locations = 512
    c.losses.patch.num_negatives = 1024
    c.eval.interval = 100  # learning curves
    c.eval.mode = "whole"
    c.runtime.log_interval = 20
    c.runtime.checkpoint_interval = 100
    c.runtime.keep_checkpoint_interval = 0
    c.runtime.image_interval = 250


def make_config(benchmark: str, method: str = "pipa", **sections: Any) -> TrainConfig:
    """Preset for ``benchmark`` (``pipa_core.data.benchmarks.BENCHMARKS``) and ``method`` (:data:`METHODS`).

    ``sections`` are per-section overrides, e.g.
    ``make_config("synthetic", "dacs", optim={"max_iters": 50})``.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; valid methods: {', '.join(METHODS)}")
    from pipa_core.data.benchmarks import BENCHMARKS

    if benchmark not in BENCHMARKS:
        raise ConfigError(f"unknown benchmark {benchmark!r}; valid: {', '.join(BENCHMARKS)}")
    c = TrainConfig(name=f"{benchmark}_{method}", method=method)
    synthetic = benchmark in SYNTHETIC_BENCHMARKS
    if synthetic:
        _synthetic_schedule(c)
        c.data.benchmark = benchmark
    else:
        _real_schedule(c, benchmark, method)
    METHODS[method](c)
    if method == "hrda" and not synthetic:
        from pipa_core.uda.hrda import apply_hrda_schedule

        apply_hrda_schedule(c, BENCHMARKS[benchmark])
    if synthetic:
        # No ImageNet weights offline: the frozen "ImageNet" encoder would be random.
        c.uda.fd_lambda = 0.0
        # Rare class sampling for every method that reads source labels (DAFormer's RCS),
        # so DACS and PiPa differ only in PiPa's losses; the oracle reads target labels.
        c.data.rcs = c.uda.mode != "oracle"
    flat = {f"{s}.{k}": v for s, kv in sections.items() for k, v in kv.items()}
    return apply_overrides(c, flat) if flat else c


def preset_names() -> list[str]:
    """All preset names ``<benchmark>_<method>`` (PiPa++ only where frames exist)."""
    from pipa_core.data.benchmarks import BENCHMARKS

    names = []
    for b, spec in BENCHMARKS.items():
        for m in METHODS:
            if m == "pipa_pp" and not spec.video:
                continue
            names.append(f"{b}_{m}")
    return names


def get_preset(name: str) -> TrainConfig:
    """The preset called ``name`` (e.g. ``gta2cs_pipa``, ``synthetic_dacs``)."""
    names = preset_names()
    if name not in names:
        raise ConfigError(f"unknown preset {name!r}; valid presets: {', '.join(names)}")
    for m in sorted(METHODS, key=len, reverse=True):
        if name.endswith("_" + m):
            return make_config(name[: -len(m) - 1], m)
    raise AssertionError(name)  # unreachable: every name is <benchmark>_<method>


# --------------------------------------------------------------------------- resolution
def resolve_benchmark(cfg: TrainConfig):
    """The benchmark spec with the config's overrides (crop, scales, RCS, reference offset).

    Returns a ``pipa_core.data.benchmarks.BenchmarkSpec`` (frozen dataclass).
    """
    from pipa_core.data.benchmarks import get_benchmark, synthetic_benchmark

    d = cfg.data
    if d.benchmark in SYNTHETIC_BENCHMARKS:
        spec = synthetic_benchmark(d.synthetic_size, video=d.benchmark == "synthetic_seq")
    else:
        spec = get_benchmark(d.benchmark)
    changes: dict[str, Any] = {}
    for k in ("rcs_temperature", "rcs_min_pixels", "rcs_min_crop_ratio"):
        if getattr(d, k) is not None:
            changes[k] = getattr(d, k)
    if d.crop_size is not None:
        changes["crop_size"] = tuple(d.crop_size)
    if d.source_scale is not None:
        changes["source_scales"] = tuple(tuple(d.source_scale) for _ in spec.sources)
    if d.target_scale is not None:
        changes["target_scale"] = tuple(d.target_scale)
    if d.rcs is not None:
        changes["rcs"] = d.rcs
    if d.ref_offset is not None:
        changes["ref_offset"] = d.ref_offset
    return dataclasses.replace(spec, **changes) if changes else spec


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """How a run is scored: the one protocol the trainer, ``evaluate_run`` and the
    notebooks share. Labels are always read at full resolution (the published protocol)."""

    mode: str  # "whole" or "slide"
    crop_size: tuple[int, int]  # slide window (the training crop unless eval.crop_size)
    stride: Optional[tuple[int, int]]  # slide step; None = half the window (models.inference)
    flip: bool
    protocols: tuple[str, ...]  # class protocols, the first is the headline mIoU
    max_samples: Optional[int]

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`pipa_core.eval.evaluate.evaluate`."""
        return {
            "protocols": self.protocols,
            "mode": self.mode,
            "crop_size": self.crop_size,
            "stride": self.stride,
            "flip": self.flip,
            "max_samples": self.max_samples,
        }


def resolve_eval(cfg: TrainConfig, spec=None) -> EvalSettings:
    """The run's evaluation protocol: ``cfg.eval`` with the benchmark's defaults filled in."""
    spec = spec if spec is not None else resolve_benchmark(cfg)
    e = cfg.eval
    return EvalSettings(
        mode=e.mode,
        crop_size=tuple(e.crop_size) if e.crop_size else tuple(spec.crop_size),
        stride=tuple(e.stride) if e.stride else None,
        flip=bool(e.flip),
        protocols=tuple(e.protocols or spec.protocols),
        max_samples=e.max_samples,
    )


def pseudo_crop_rows(cfg: TrainConfig, spec) -> tuple[int, int]:
    """(top, bottom) pseudo-label crop rows: the config's, else the benchmark's scaled to the crop."""
    scale = spec.crop_size[0] / 512  # the benchmark values are for DAFormer's 512-row crops
    top = cfg.uda.pseudo_crop_top
    bottom = cfg.uda.pseudo_crop_bottom
    top = round(spec.pseudo_ignore_top * scale) if top is None else top
    bottom = round(spec.pseudo_ignore_bottom * scale) if bottom is None else bottom
    return int(top), int(bottom)


def patch_crop_size(cfg: TrainConfig, spec, stride: int = 32) -> int:
    """Side of the patch-contrast crops: the config's, else 9/8 of the training crop (multiple of ``stride``)."""
    if cfg.losses.patch.crop_size is not None:
        return int(cfg.losses.patch.crop_size)
    return max(stride, int(round(spec.crop_size[0] * 9 / 8 / stride)) * stride)


# --------------------------------------------------------------------------- validation
def validate_config(cfg: TrainConfig) -> TrainConfig:
    """Check every section; raise :class:`ConfigError` listing all problems (returns ``cfg``)."""
    from pipa_core.data.benchmarks import BENCHMARKS
    from pipa_core.data.synthetic import PRESETS as SYNTHETIC_SIZES
    from pipa_core.models import ARCHS

    errs: list[str] = []
    d, o, u, lo, e, r = cfg.data, cfg.optim, cfg.uda, cfg.losses, cfg.eval, cfg.runtime

    spec = None
    if d.benchmark not in BENCHMARKS:
        errs.append(f"data.benchmark={d.benchmark!r} is unknown; valid: {', '.join(BENCHMARKS)}")
    else:
        spec = BENCHMARKS[d.benchmark]
    if cfg.model.arch.removeprefix("hrda_") not in ARCHS:
        errs.append(
            f"model.arch={cfg.model.arch!r} is unknown; valid: {', '.join(ARCHS)} "
            "(each also as hrda_<name> for the HRDA multi-resolution model)"
        )
    if not 0 < cfg.model.hrda_detail_ratio <= 1:
        errs.append(f"model.hrda_detail_ratio={cfg.model.hrda_detail_ratio} must lie in (0, 1]")
    if not 0 <= cfg.model.hrda_hr_loss_weight < 1:
        errs.append(f"model.hrda_hr_loss_weight={cfg.model.hrda_hr_loss_weight} must lie in [0, 1)")
    if cfg.model.init_from is not None:
        from pipa_core.assets import resolve_weights

        try:
            resolve_weights(cfg.model.init_from)
        except FileNotFoundError as exc:
            errs.append(f"model.init_from={cfg.model.init_from!r}: {exc}")
    if cfg.model.decoder_channels is not None and cfg.model.decoder_channels < 1:
        errs.append(f"model.decoder_channels={cfg.model.decoder_channels} must be >= 1 or null")
    if cfg.model.proj_dim is not None and cfg.model.proj_dim < 1:
        errs.append(f"model.proj_dim={cfg.model.proj_dim} must be >= 1 or null")

    if d.batch_size < 1:
        errs.append(f"data.batch_size={d.batch_size} must be >= 1")
    if d.num_workers < 0:
        errs.append(f"data.num_workers={d.num_workers} must be >= 0")
    if d.synthetic_size not in SYNTHETIC_SIZES:
        errs.append(
            f"data.synthetic_size={d.synthetic_size!r} is unknown; valid: {', '.join(SYNTHETIC_SIZES)}"
        )
    for k in ("crop_size", "source_scale", "target_scale"):
        v = getattr(d, k)
        if v is not None and min(v) < 1:
            errs.append(f"data.{k}={tuple(v)} must be positive (H, W)")
    if spec is not None and not errs and d.synthetic_size in SYNTHETIC_SIZES:
        rs = resolve_benchmark(cfg)
        ch, cw = rs.crop_size
        for dom, scale in [("source", s) for s in rs.source_scales] + [("target", rs.target_scale)]:
            if ch > scale[0] or cw > scale[1]:
                errs.append(
                    f"data.crop_size (H, W)={(ch, cw)} is larger than the {dom} resize scale "
                    f"(H, W)={tuple(scale)}; lower data.crop_size or raise data.{dom}_scale"
                )
        if u.mode == "self_training":
            top, bottom = pseudo_crop_rows(cfg, rs)
            if top < 0 or bottom < 0:
                errs.append("uda.pseudo_crop_top / pseudo_crop_bottom must be >= 0")
            elif top + bottom >= ch:
                errs.append(
                    f"uda.pseudo_crop_top + pseudo_crop_bottom = {top + bottom} removes every row "
                    f"of the {ch}-row crop; lower them"
                )
        if "temporal" in lo.enabled and not rs.video:
            video = [b for b, s in BENCHMARKS.items() if s.video]
            errs.append(
                f"losses.enabled has 'temporal' but benchmark {d.benchmark!r} has no reference "
                f"frames; use a video benchmark ({', '.join(video)}) or drop the temporal loss"
            )
    if d.rcs_temperature is not None and d.rcs_temperature <= 0:
        errs.append(f"data.rcs_temperature={d.rcs_temperature} must be > 0 (0.01 in DAFormer)")
    if d.rcs_min_crop_ratio is not None and d.rcs_min_crop_ratio < 0:
        # a crop needs > min_pixels * ratio pixels of the class (DAFormer 0.5, HRDA 2.0)
        errs.append(f"data.rcs_min_crop_ratio={d.rcs_min_crop_ratio} must be >= 0")
    if d.rcs_min_pixels is not None and d.rcs_min_pixels < 0:
        errs.append(f"data.rcs_min_pixels={d.rcs_min_pixels} must be >= 0")

    if o.lr <= 0:
        errs.append(f"optim.lr={o.lr} must be > 0 (AdamW learning rate; 6e-5 in DAFormer / PiPa)")
    if o.head_lr_mult <= 0:
        errs.append(f"optim.head_lr_mult={o.head_lr_mult} must be > 0")
    if o.weight_decay < 0:
        errs.append(f"optim.weight_decay={o.weight_decay} must be >= 0")
    if not all(0 <= b < 1 for b in o.betas):
        errs.append(f"optim.betas={tuple(o.betas)} must lie in [0, 1)")
    if o.max_iters < 1:
        errs.append(f"optim.max_iters={o.max_iters} must be >= 1")
    if o.warmup_iters < 0:
        errs.append(f"optim.warmup_iters={o.warmup_iters} must be >= 0")
    if not 0 < o.warmup_ratio <= 1:
        errs.append(f"optim.warmup_ratio={o.warmup_ratio} must lie in (0, 1]")
    if o.poly_power < 0:
        errs.append(f"optim.poly_power={o.poly_power} must be >= 0")
    if not 0 <= o.min_lr_ratio <= 1:
        errs.append(f"optim.min_lr_ratio={o.min_lr_ratio} must lie in [0, 1]")
    if o.grad_clip is not None and o.grad_clip <= 0:
        errs.append(f"optim.grad_clip={o.grad_clip} must be > 0 or null")

    if u.mode not in UDA_MODES:
        errs.append(f"uda.mode={u.mode!r} is unknown; valid: {', '.join(UDA_MODES)}")
    if not 0 <= u.ema_alpha <= 1:
        errs.append(f"uda.ema_alpha={u.ema_alpha} must lie in [0, 1] (0.999 in the papers)")
    if not 0 <= u.pseudo_threshold <= 1:
        errs.append(f"uda.pseudo_threshold={u.pseudo_threshold} must lie in [0, 1] (0.968)")
    if u.teacher_bn not in TEACHER_BN_MODES:
        errs.append(
            f"uda.teacher_bn={u.teacher_bn!r} is unknown; valid: {', '.join(TEACHER_BN_MODES)}"
        )
    if d.color_distortion < 0:
        errs.append(
            f"data.color_distortion={d.color_distortion} must be >= 0 (0 = off, 1 = SimCLR)"
        )
    if u.mix not in ("classmix", "none"):
        errs.append(f"uda.mix={u.mix!r} is unknown; valid: classmix, none")
    if not 0 <= u.color_jitter_p <= 1:
        errs.append(f"uda.color_jitter_p={u.color_jitter_p} must lie in [0, 1]")
    if u.color_jitter_s < 0:
        errs.append(f"uda.color_jitter_s={u.color_jitter_s} must be >= 0")
    if u.fd_lambda < 0:
        errs.append(f"uda.fd_lambda={u.fd_lambda} must be >= 0 (0 switches it off)")
    if not 0 < u.fd_min_ratio <= 1:
        errs.append(f"uda.fd_min_ratio={u.fd_min_ratio} must lie in (0, 1]")
    if any(not 0 <= c < 19 for c in u.fd_classes):
        errs.append(f"uda.fd_classes={tuple(u.fd_classes)} must be train IDs 0..18")

    for name in lo.enabled:
        if name not in LOSS_NAMES:
            errs.append(f"losses.enabled has unknown loss {name!r}; valid: {', '.join(LOSS_NAMES)}")
    if len(set(lo.enabled)) != len(lo.enabled):
        errs.append(f"losses.enabled={list(lo.enabled)} lists a loss twice")
    if lo.enabled and u.mode != "self_training":
        errs.append(
            f"losses.enabled={list(lo.enabled)} needs uda.mode=self_training (got {u.mode!r}); "
            "source-only / oracle baselines train with cross-entropy only"
        )
    for name in LOSS_NAMES:
        sub = getattr(lo, name)
        if sub.weight < 0:
            errs.append(f"losses.{name}.weight={sub.weight} must be >= 0")
        if sub.temperature <= 0:
            errs.append(f"losses.{name}.temperature={sub.temperature} must be > 0")
        if getattr(sub, "memory_size", 0) < 0:
            errs.append(f"losses.{name}.memory_size={sub.memory_size} must be >= 0 (0 = no bank)")
    if not 0 <= lo.prototype.momentum <= 1:
        errs.append(f"losses.prototype.momentum={lo.prototype.momentum} must lie in [0, 1]")
    lo_s, hi_s = lo.patch.scale_range
    if not 0 < lo_s <= hi_s:
        errs.append(f"losses.patch.scale_range={tuple(lo.patch.scale_range)} needs 0 < min <= max")
    lo_i, hi_i = lo.patch.iou_range
    if not (0 <= lo_i <= hi_i <= 1 and hi_i > 0):
        errs.append(
            f"losses.patch.iou_range={tuple(lo.patch.iou_range)} needs 0 <= min <= max <= 1"
        )
    if lo.patch.crop_size is not None and lo.patch.crop_size < 32:
        errs.append(f"losses.patch.crop_size={lo.patch.crop_size} must be >= 32 or null")

    if e.mode not in EVAL_MODES:
        errs.append(f"eval.mode={e.mode!r} is unknown; valid: {', '.join(EVAL_MODES)}")
    for p in e.protocols or ():
        if p not in PROTOCOLS:
            errs.append(f"eval.protocols has unknown protocol {p!r}; valid: {', '.join(PROTOCOLS)}")
    if e.interval < 0:
        errs.append(f"eval.interval={e.interval} must be >= 0 (0 = evaluate at the end only)")
    if e.batch_size < 1:
        errs.append(f"eval.batch_size={e.batch_size} must be >= 1")
    if e.max_samples is not None and e.max_samples < 1:
        errs.append(f"eval.max_samples={e.max_samples} must be >= 1 or null")

    if r.amp not in AMP_MODES:
        errs.append(f"runtime.amp={r.amp!r} is unknown; valid: {', '.join(AMP_MODES)}")
    if r.max_nonfinite < 1:
        errs.append(f"runtime.max_nonfinite={r.max_nonfinite} must be >= 1")
    for k in ("log_interval", "checkpoint_interval", "keep_checkpoint_interval", "image_interval"):
        if getattr(r, k) < 0:
            errs.append(f"runtime.{k}={getattr(r, k)} must be >= 0 (0 = never)")
    if r.stop_after is not None and r.stop_after < 1:
        errs.append(f"runtime.stop_after={r.stop_after} must be >= 1 or null")
    if r.num_threads is not None and r.num_threads < 1:
        errs.append(f"runtime.num_threads={r.num_threads} must be >= 1 or null")

    if errs:
        raise ConfigError("invalid training configuration:\n  - " + "\n  - ".join(errs))
    return cfg
