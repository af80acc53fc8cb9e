"""HRDA in the self-training engine: the training recipe and its schedule.

The model side (:class:`pipa_core.models.hrda.HRDASegmentor`) keeps the engine
generic: in training mode its forward returns the fused logits over the
context crop, the detail-crop feature for pixel contrast and the LR encoder
maps for the feature distance; the EMA teacher runs in eval mode, where the
same forward is HRDA's inference over the whole context crop (LR context +
overlapping HR windows, fused), so pseudo-labels come from the teacher's full
context as in HRDA. The step only asks the model for its loss
(``seg_loss``), the label region of ``feat`` (``label_for_feat``) and a
single-scale forward for the patch / temporal crops. The student is built by
:func:`pipa_core.models.build_from_config` like every other model.

Facts from HRDA (Hoyer et al., 2022, configs ``gtaHR2csHR_hrda.py``) and PiPa's
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
"""

from __future__ import annotations

from typing import Any

from pipa_core.models.hrda import HRDA_PREFIX, is_hrda_arch

__all__ = [
    "HRDA_CONTEXT_CROP",
    "HRDA_ITERS",
    "HRDA_PATCH_CROP",
    "HRDA_RCS_MIN_CROP_RATIO",
    "apply_hrda_schedule",
    "hrda_arch",
]

#: Context crop ``(H, W)`` at full resolution (real benchmarks).
HRDA_CONTEXT_CROP = (1024, 1024)
#: PiPa's schedule on HRDA (configs/pipa/*_hrda.py: ``max_iters=60000``).
HRDA_ITERS = 60000
#: PiPa's patch-contrast crop side.
HRDA_PATCH_CROP = 720
#: HRDA's RCS crop acceptance (relative to ``min_pixels``; DAFormer's 0.5 at half resolution).
HRDA_RCS_MIN_CROP_RATIO = 2.0


def hrda_arch(arch: str) -> str:
    """``arch`` with the ``hrda_`` prefix (unchanged if it already has it)."""
    return arch if is_hrda_arch(arch) else HRDA_PREFIX + arch


def apply_hrda_schedule(c: Any, spec: Any) -> None:
    """Switch a real-benchmark :class:`~pipa_core.uda.config.TrainConfig` to HRDA's data setting.

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
