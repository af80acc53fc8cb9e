"""Presets: method recipes and the benchmark schedules they run on.

:func:`make_config` builds ``<benchmark>_<method>`` (:func:`get_preset`,
:func:`preset_names`): a schedule (the real benchmarks' DAFormer / PiPa one,
HRDA's, or the CPU tutorial's on the embedded benchmark) and then a method
recipe from :data:`METHODS` (each recipe is a configuration change only).

HRDA's schedule. Facts from HRDA (Hoyer et al., 2022, configs ``gtaHR2csHR_hrda.py``) and PiPa's
HRDA configs (``configs/pipa/*HR2csHR_hrda.py``):

* data at twice DAFormer's scales: GTA 2560x1440, SYNTHIA 2560x1520, Cityscapes
  2048x1024; 1024x1024 context crops; 512x512 detail crops; LR scale 0.5;
* detail loss weight 0.1 (fused 0.9); class-wise scale attention;
* rare class sampling with ``min_crop_ratio = 2.0`` (the crops hold 4x the pixels);
* pseudo-label margins 30 rows at the top, 240 at the bottom (DAFormer's 15 / 120
  at twice the resolution);
* ImageNet feature distance on the LR features;
* test: 1024x1024 sliding windows at stride 512 over the 1024x2048 image;
* PiPa on HRDA: 60k iterations, pixel + patch contrast (α = β = 0.1), 720x720 patches.

The DAFormer schedule (DAFormer's ``configs/daformer/gta2cs_uda_warm_fdthings_rcs_croppl_a999_
daformer_mitb5_s0.py`` and ``configs/_base_/``): GTA 1280x720, SYNTHIA 1280x760, Cityscapes
1024x512, 512x512 crops, 40k iterations, whole-image evaluation at 1024x512, no
photometric distortion in the UDA pipelines (only the source-only / oracle configs
have it), MiT-B5 from ``pretrained/mit_b5.pth``.

PiPa on DAFormer (PiPa's released ``PiPa_DAFormer/configs/pipa/gta2cs_uda_warm_fdthings_rcs_
croppl_a999_daformer_mitb5_s0.py`` with ``PiPa_DAFormer/configs/_base_/datasets/gta-cs.py``
/ ``syn-cs.py``): the same sources (GTA 1280x720, SYNTHIA 1280x760), Cityscapes at
1280x640, 640x640 crops, 60k iterations, rare-class temperature 0.1 (the config's run
name says ``rcs0.01``; its ``class_temp`` is 0.1), pseudo-label margins 15 / 120 rows
(as given, at the 640 crops), whole-image evaluation at 1280x640 and 720x720 patches
(``configs/cac/config.json``). See docs/training.md, "Real-benchmark presets against the
official configs".
"""

from __future__ import annotations

from typing import Any

from pipa_core.config.overrides import apply_overrides
from pipa_core.config.schema import TrainConfig
from pipa_core.config.typed import ConfigError
from pipa_core.models.hrda import hrda_arch, is_hrda_arch

__all__ = [
    "DEFAULT_PRETRAINED",
    "HRDA_CONTEXT_CROP",
    "METHODS",
    "PIPA_METHODS",
    "SYNTHETIC_BENCHMARKS",
    "VFM_BACKBONES",
    "apply_vfm_backbone",
    "apply_hrda_schedule",
    "apply_pipa_daformer_schedule",
    "get_preset",
    "make_config",
    "preset_names",
]

#: Context crop ``(H, W)`` at full resolution (real benchmarks).
HRDA_CONTEXT_CROP = (1024, 1024)
#: PiPa's schedule on HRDA (configs/pipa/*_hrda.py: ``max_iters=60000``).
HRDA_ITERS = 60000
#: PiPa's patch-contrast crop side.
HRDA_PATCH_CROP = 720
#: HRDA's RCS crop acceptance (relative to ``min_pixels``; DAFormer's 0.5 at half resolution).
HRDA_RCS_MIN_CROP_RATIO = 2.0

#: ImageNet weights the real MiT presets start from, relative to the working directory:
#: the official configs' ``pretrained='pretrained/mit_b5.pth'`` (SegFormer's ImageNet-1k
#: release, https://github.com/NVlabs/SegFormer). Checked before training
#: (``ModelConfig.check``); ``model.pretrained=null`` is the explicit opt-in to random weights.
DEFAULT_PRETRAINED = "pretrained/mit_b5.pth"
#: DAFormer's and PiPa-on-DAFormer's schedule lengths.
DAFORMER_ITERS = 40000
PIPA_ITERS = 60000
#: Methods that run PiPa's schedule (60k iterations; PiPa's data setting on Cityscapes targets).
PIPA_METHODS = ("pipa", "pipa_pp", "pipa_mic")
#: PiPa on DAFormer (PiPa_DAFormer/configs/_base_/datasets/gta-cs.py, syn-cs.py): crop (H, W),
#: Cityscapes resize (H, W) for training and test, RCS temperature, patch side
#: (configs/cac/config.json ``crop_size``) and pseudo-label margins (rows, as given).
PIPA_DAFORMER_CROP = (640, 640)
PIPA_DAFORMER_TARGET_SCALE = (640, 1280)
PIPA_DAFORMER_RCS_TEMPERATURE = 0.1
PIPA_DAFORMER_PATCH_CROP = 720
PIPA_DAFORMER_PSEUDO_ROWS = (15, 120)


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


def _mic(c: TrainConfig) -> None:
    # MIC on DAFormer (MIC's configs/mic/gtaHR2csHR_mic_hrda.py uses the same mask settings
    # on HRDA: `--preset gta2cs_hrda --set uda.mic=true`).
    _daformer(c)
    c.uda.mic = True


def _pipa_mic(c: TrainConfig) -> None:
    _pipa(c)
    c.uda.mic = True


def _hrda(c: TrainConfig) -> None:
    # PiPa on HRDA (the paper's best setting); the data schedule is set in make_config.
    _pipa(c)
    c.model.arch = hrda_arch(c.model.arch)


def _pipa_released(c: TrainConfig) -> None:
    # PiPa on HRDA as its released code trains it (configs/pipa/*HR2csHR_hrda.py with
    # mmseg/models/uda/dacs.py, hrda_head.py): docs/losses.md, "Paper vs released code".
    _hrda(c)
    c.losses.pixel.released = True  # hrda_head.py: loss_weight 0.1 (losses.pixel.weight)
    c.losses.patch.released = True
    c.losses.patch.weight = 0.01  # dacs.py (HRDA variant) weight_unsup, on the SUM of both ways
    c.losses.patch.start_iter = 10000  # dacs.py: `if self.local_iter < 10000` (warm-up)
    c.losses.patch.scale_range = (0.8, 2.0)  # configs/cac/config.json: long side 2048 x [0.8, 2.0]


#: Method recipes: name -> function that switches a config to that method.
METHODS = {
    "source_only": _source_only,
    "oracle": _oracle,
    "dacs": _dacs,
    "daformer": _daformer,
    "pipa": _pipa,
    "pipa_pp": _pipa_pp,
    "spcl": _spcl,
    "mic": _mic,
    "pipa_mic": _pipa_mic,
    "hrda": _hrda,
    "pipa_released": _pipa_released,
}


def _real_schedule(c: TrainConfig, benchmark: str, method: str) -> None:
    """DAFormer's schedule on a real benchmark: MiT-B5 from the ImageNet weights, 512x512 crops.

    The benchmark supplies scales (DAFormer's: GTA 1280x720, SYNTHIA 1280x760,
    Cityscapes 1024x512), crop, protocols and pseudo-label crop rows. 40k iterations
    (PiPa's methods 60k); whole-image evaluation at the target scale, as DAFormer's
    ``test_cfg=dict(mode='whole')``. PiPa's methods on a Cityscapes target then get
    PiPa-on-DAFormer's data setting (:func:`apply_pipa_daformer_schedule`: 640 crops of
    1280x640 Cityscapes); HRDA's methods HRDA's (:func:`apply_hrda_schedule`: 1024 context
    crops of 2048x1024 Cityscapes). The photometric distortion is set in
    :func:`make_config` once the method's mode is known.
    """
    c.data.benchmark = benchmark
    c.model.arch = "daformer_mit_b5"
    c.model.pretrained = DEFAULT_PRETRAINED
    c.optim.max_iters = PIPA_ITERS if method in PIPA_METHODS else DAFORMER_ITERS
    c.data.batch_size = 2
    c.data.num_workers = 4
    c.eval.interval = 4000
    c.eval.mode = "whole"
    c.losses.patch.crop_size = 576  # 9/8 of the crop, as 720 for PiPa's 640 crops


def apply_pipa_daformer_schedule(c: TrainConfig) -> None:
    """PiPa's released DAFormer setting (``PiPa_DAFormer/`` in the PiPa repository).

    From ``configs/_base_/datasets/gta-cs.py`` / ``syn-cs.py`` and
    ``configs/pipa/gta2cs_uda_warm_fdthings_rcs_croppl_a999_daformer_mitb5_s0.py``:
    640x640 crops; Cityscapes resized to 1280x640 for training and for the
    whole-image test; the sources at DAFormer's scales (GTA 1280x720, SYNTHIA
    1280x760: unchanged); ``class_temp=0.1`` (the run name's ``rcs0.01`` is not
    what the config sets); pseudo-label margins 15 / 120 rows as given (not scaled
    to the crop); 60k iterations; 720x720 patches (``configs/cac/config.json``).
    For Cityscapes targets only: the ACDC / Dark Zurich targets (960x540) and their
    Cityscapes source (1024x512) are lower than the 640 crop.
    """
    c.data.crop_size = PIPA_DAFORMER_CROP
    c.data.target_scale = PIPA_DAFORMER_TARGET_SCALE
    c.data.rcs_temperature = PIPA_DAFORMER_RCS_TEMPERATURE
    c.uda.pseudo_crop_top, c.uda.pseudo_crop_bottom = PIPA_DAFORMER_PSEUDO_ROWS
    c.optim.max_iters = PIPA_ITERS
    c.eval.mode = "whole"
    c.losses.patch.crop_size = PIPA_DAFORMER_PATCH_CROP


def _cityscapes_target(spec: Any) -> bool:
    return spec.target.name in ("cityscapes", "cityscapes_seq")


def uses_pipa_data(benchmark: str, method: str, arch: str = "daformer_mit_b5") -> bool:
    """Whether ``make_config(benchmark, method)`` trains on PiPa-on-DAFormer's data setting
    (:func:`apply_pipa_daformer_schedule`): PiPa's methods on a Cityscapes target, unless
    the recipe's architecture is HRDA (which has its own)."""
    from pipa_core.data.benchmarks import BENCHMARKS

    spec = BENCHMARKS.get(benchmark)
    if benchmark in SYNTHETIC_BENCHMARKS or spec is None or is_hrda_arch(arch):
        return False
    return method in PIPA_METHODS and _cityscapes_target(spec)


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
    c.uda.mic_block_size = 16  # MIC's 64 at 512 rows, for the 4x smaller embedded benchmark
    c.losses.pixel.max_anchors = 512
    c.losses.patch.max_locations = 512
    c.losses.patch.num_negatives = 1024
    c.eval.interval = 100  # learning curves
    c.eval.mode = "whole"
    # The val images all have one size: 4 at a time score the 100 images in 2.0 s
    # instead of 3.1-3.6 (one CPU thread); the mIoU moves by at most 2e-5.
    c.eval.batch_size = 4
    c.runtime.log_interval = 20
    c.runtime.checkpoint_interval = 100
    c.runtime.keep_checkpoint_interval = 0
    c.runtime.image_interval = 250


def make_config(
    benchmark: str, method: str = "pipa", *, pipa_data: bool = True, **sections: Any
) -> TrainConfig:
    """Preset for ``benchmark`` (``pipa_core.data.benchmarks.BENCHMARKS``) and ``method`` (:data:`METHODS`).

    ``sections`` are per-section overrides, e.g.
    ``make_config("synthetic", "dacs", optim={"max_iters": 50})``. ``pipa_data=False``
    keeps PiPa's methods on DAFormer's data setting (512 crops of 1024x512 Cityscapes;
    the DINOv2 presets) instead of PiPa-on-DAFormer's (:func:`apply_pipa_daformer_schedule`).
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
    if not synthetic:
        spec = BENCHMARKS[benchmark]
        if is_hrda_arch(c.model.arch):  # the recipe chose HRDA: its data setting
            apply_hrda_schedule(c, spec)
        elif pipa_data and uses_pipa_data(benchmark, method, c.model.arch):
            apply_pipa_daformer_schedule(c)
        # The official UDA configs comment PhotoMetricDistortion out of every pipeline
        # (DACS's colour jitter of the mixed image replaces it); their source-only and
        # oracle configs keep it.
        c.data.photometric = c.uda.mode != "self_training"
    if synthetic:
        # No ImageNet weights offline: the frozen "ImageNet" encoder would be random.
        c.uda.fd_lambda = 0.0
        # Rare class sampling for every method that reads source labels (DAFormer's RCS),
        # so DACS and PiPa differ only in PiPa's losses; the oracle reads target labels.
        c.data.rcs = c.uda.mode != "oracle"
    flat = {f"{s}.{k}": v for s, kv in sections.items() for k, v in kv.items()}
    return apply_overrides(c, flat) if flat else c


# --------------------------------------------------------------------------- DINOv2
#: Backbone suffix of a preset name -> DINOv2 encoder (``gta2cs_pipa_dinov2b``).
VFM_BACKBONES = {"dinov2s": "dinov2_s", "dinov2b": "dinov2_b", "dinov2l": "dinov2_l"}
#: Methods that get a DINOv2 variant on the real benchmarks.
VFM_METHODS = ("source_only", "oracle", "dacs", "daformer", "pipa", "mic", "pipa_mic")


def apply_vfm_backbone(c: TrainConfig, encoder: str) -> None:
    """Switch a real-benchmark preset to a DINOv2 encoder with VFM-UDA's optimisation.

    From VFM-UDA (Englert et al., CVPRW 2024; tue-mps/vfm-uda,
    ``training/uda_vit/uda_vit_generic.py`` and ``uda_vit_vanilla.yaml``): no ImageNet
    feature distance (it hurts VFM backbones), decoder lr 5e-5 x sqrt(batch) and the
    encoder at 0.1 of it (here: batch 2, so 7.07e-5 / 7.07e-6), linear warm-up 1500
    iterations then linear decay, weight decay 0.01, no layer-wise decay in their
    default run (``optim.layer_decay`` offers it). Kept from our real presets, unlike
    VFM-UDA (1024 crops of full-resolution images, batch 8): the DAFormer data setting
    (512 crops, batch 2, whole-image evaluation; also for PiPa's methods, see
    :func:`get_preset`) and the method's schedule length.
    """
    c.model.arch = f"daformer_{encoder}"
    c.model.pretrained = "dinov2"  # timm's hub; offline: a local file (docs/models.md)
    c.uda.fd_lambda = 0.0
    c.optim.lr = 5e-5 * 2**0.5 * 0.1
    c.optim.head_lr_mult = 10.0
    c.optim.warmup_iters = 1500
    c.optim.poly_power = 1.0
    c.optim.weight_decay = 0.01
    c.optim.layer_decay = 1.0


def preset_names() -> list[str]:
    """All preset names ``<benchmark>_<method>`` (PiPa++ only where frames exist, the
    released-code re-enactment ``pipa_released`` only on the real benchmarks), and
    ``<benchmark>_<method>_<dinov2s|b|l>`` for the real benchmarks."""
    from pipa_core.data.benchmarks import BENCHMARKS

    names = []
    for b, spec in BENCHMARKS.items():
        for m in METHODS:
            if m == "pipa_pp" and not spec.video:
                continue
            if m == "pipa_released" and b in SYNTHETIC_BENCHMARKS:
                continue  # a re-enactment of the real-benchmark release only
            names.append(f"{b}_{m}")
    for b in BENCHMARKS:
        if b not in SYNTHETIC_BENCHMARKS:
            names += [f"{b}_{m}_{v}" for m in VFM_METHODS for v in VFM_BACKBONES]
    return names


def get_preset(name: str) -> TrainConfig:
    """The preset called ``name`` (e.g. ``gta2cs_pipa``, ``synthetic_dacs``)."""
    names = preset_names()
    if name not in names:
        raise ConfigError(f"unknown preset {name!r}; valid presets: {', '.join(names)}")
    base, _, suffix = name.rpartition("_")
    vfm = suffix in VFM_BACKBONES
    if not vfm:
        base = name
    for m in sorted(METHODS, key=len, reverse=True):
        if base.endswith("_" + m):
            # The DINOv2 presets keep DAFormer's data setting for every method.
            c = make_config(base[: -len(m) - 1], m, pipa_data=not vfm)
            if vfm:
                apply_vfm_backbone(c, VFM_BACKBONES[suffix])
                c.name = name
            return c
    raise AssertionError(name)  # unreachable: every name is <benchmark>_<method>


# --------------------------------------------------------------------------- HRDA
def apply_hrda_schedule(c: Any, spec: Any) -> None:
    """Switch a real-benchmark :class:`~pipa_core.config.TrainConfig` to HRDA's data setting.

    Doubles the benchmark's (DAFormer) resize scales and crop (1024x1024 context
    crops of 2048x1024 Cityscapes), sets HRDA's RCS crop ratio, the sliding-window
    evaluation (crop = the context crop, stride half of it), PiPa's 720x720
    patches and 60k iterations. ``spec`` is the benchmark's ``BenchmarkSpec``.
    Multi-source benchmarks with different source scales keep one shared scale
    (the first source's), as ``data.source_scale`` applies to every source.
    """
    c.model.arch = hrda_arch(c.model.arch)
    c.data.crop_size = tuple(2 * s for s in spec.crop_size)
    c.data.source_scale = tuple(2 * s for s in spec.source_scales[0])
    c.data.target_scale = tuple(2 * s for s in spec.target_scale)
    c.data.rcs_min_crop_ratio = HRDA_RCS_MIN_CROP_RATIO
    c.optim.max_iters = HRDA_ITERS
    c.eval.mode = "slide"
    c.eval.crop_size = c.data.crop_size
    c.eval.stride = tuple(s // 2 for s in c.data.crop_size)
    c.losses.patch.crop_size = HRDA_PATCH_CROP
