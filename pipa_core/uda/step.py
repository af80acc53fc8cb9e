"""One training step, readable top to bottom (PiPa Algorithm 1).

Self-training (DACS / DAFormer + PiPa):

1. supervised cross-entropy on the labelled source batch (+ ImageNet feature
   distance, + pixel contrast on source labels);
2. the EMA teacher predicts target pseudo-labels and their confidence weight;
3. ClassMix pastes half of the source classes onto the target images, the
   mixed images get the strong augmentation, and the student is trained on
   them with the pseudo-weighted cross-entropy; with ``uda.mic`` (MIC) the student
   also predicts the same pseudo-labels on a block-masked copy of the target images;
4. patch contrast on two overlapping crops of the unlabelled target images;
   temporal contrast between a target key frame and its reference frame
   (PiPa++); SPCL prototype contrast;
5. total = L_ce(source) + L_ce(mixed) + λ_FD·L_FD + α·L_pixel + β·L_patch (+ L_mic, ...).

With ``losses.pixel.released`` / ``losses.patch.released`` the pixel / patch terms are
what PiPa's released code trains instead (:func:`released_pixel_contrast`,
:func:`released_patch_contrast`; docs/losses.md, "Paper vs released code"); the patch
term is 0 before ``losses.patch.start_iter``.

The source-only and target-oracle baselines use :func:`supervised_step` (the
oracle's "source" batch holds labelled target images). The step returns the
loss; backward, optimizer and EMA updates belong to the engine (``uda.engine``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from pipa_core.config import TrainConfig
from pipa_core.data.base import HIDDEN_LABEL
from pipa_core.labels import IGNORE_INDEX
from pipa_core.uda.distributed import unwrap
from pipa_core.uda.feature_distance import FeatureDistance
from pipa_core.uda.masking import block_mask, mask_image
from pipa_core.uda.mixing import mix, mix_batch, strong_augment
from pipa_core.uda.pseudo_label import make_pseudo_label, pseudo_label_accuracy


@dataclass
class Networks:
    """The modules a step uses.

    Attributes:
        student: the trained segmentor, possibly wrapped (DDP / ``torch.compile``); used for forwards.
        teacher: EMA teacher (self-training only).
        feature_distance: ImageNet feature distance module (None = off).
        losses: enabled self-supervised losses by name (``pixel``, ``patch``, ``temporal``, ``prototype``).
    """

    student: nn.Module
    teacher: Optional[nn.Module] = None
    feature_distance: Optional[FeatureDistance] = None
    losses: dict[str, nn.Module] = field(default_factory=dict)

    @property
    def segmentor(self) -> nn.Module:
        """The unwrapped student (for ``project`` and ``output_stride``)."""
        return unwrap(self.student)


@dataclass
class StepContext:
    """Per-run settings of the step that do not live in the config sections directly.

    Attributes:
        generator: CPU ``torch.Generator`` for every random choice of the step (ClassMix
            classes, augmentation, patch boxes, loss sampling); checkpointed by the trainer.
        pseudo_crop: (top, bottom) rows of the pseudo-label crop.
        patch_crop: side of the patch-contrast crops.
        autocast: a context-manager factory for mixed precision (``contextlib.nullcontext`` = off).
        iteration: the 0-based iteration of the step (set by the engine; ``losses.patch.start_iter``).
    """

    generator: torch.Generator
    pseudo_crop: tuple[int, int] = (0, 0)
    patch_crop: int = 96
    autocast: Any = contextlib.nullcontext
    iteration: int = 0


@dataclass
class StepOutput:
    """Result of one step.

    Attributes:
        loss: scalar total loss (with graph).
        logs: detached float values (``loss``, each term, pseudo-label statistics).
        vis: tensors for the image grid: ``(B,3,H,W)`` images and ``(B,H,W)`` labels.
    """

    loss: torch.Tensor
    logs: dict[str, float]
    vis: dict[str, torch.Tensor]


def _to(batch: dict, device: torch.device) -> dict:
    return {
        k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()
    }


def supervised_step(batch: dict, nets: Networks, cfg: TrainConfig, ctx: StepContext) -> StepOutput:
    """Cross-entropy on ``batch["source"]`` only (source-only baseline, or the target oracle)."""
    device = next(nets.segmentor.parameters()).device
    src = _to(batch["source"], device)
    with ctx.autocast():
        out = nets.student(src["img"])
    terms = {"ce_src": nets.segmentor.seg_loss(out, src["label"])}
    if nets.feature_distance is not None:
        terms["fd"] = nets.feature_distance(src["img"], out["enc"], src["label"])[0]
    loss = sum(terms.values())
    logs = {"loss": float(loss.detach()), **{k: float(v.detach()) for k, v in terms.items()}}
    vis = {
        "source": src["img"],
        "source_label": src["label"],
        "prediction": out["logits"].argmax(1),
    }
    return StepOutput(loss, logs, vis)


def self_training_step(
    batch: dict, nets: Networks, cfg: TrainConfig, ctx: StepContext
) -> StepOutput:
    """One DACS / DAFormer / PiPa / PiPa++ / SPCL step; see the module docstring."""
    u, lc, g = cfg.uda, cfg.losses, ctx.generator
    seg = nets.segmentor
    device = next(seg.parameters()).device
    src, tgt = _to(batch["source"], device), _to(batch["target"], device)
    terms: dict[str, torch.Tensor] = {}
    logs: dict[str, float] = {}

    # 1. Source: supervised cross-entropy (+ ImageNet feature distance).
    with ctx.autocast():
        out_s = nets.student(src["img"])
    terms["ce_src"] = seg.seg_loss(out_s, src["label"])
    if nets.feature_distance is not None:
        terms["fd"] = nets.feature_distance(src["img"], out_s["enc"], src["label"])[0]

    # 2. Teacher pseudo-labels on the clean target images.
    with torch.no_grad(), ctx.autocast():
        t_logits = nets.teacher(tgt["img"])["logits"]
    t_logits = F.interpolate(
        t_logits.float(), size=tgt["img"].shape[-2:], mode="bilinear", align_corners=False
    )
    pl = make_pseudo_label(
        t_logits, u.pseudo_threshold, *ctx.pseudo_crop, per_image=u.pseudo_weight_per_image
    )
    logs["pseudo_confident"] = float(pl.confident_fraction)
    if HIDDEN_LABEL in tgt:  # a measurement only (embedded benchmark): no loss reads it
        logs.update(pseudo_label_accuracy(pl, tgt[HIDDEN_LABEL], u.pseudo_threshold))

    # 3. ClassMix (source classes pasted on target) + strong augmentation; weighted CE.
    if u.mix == "classmix":
        mixed_img, mixed_label, mixed_weight, paste = mix_batch(
            src["img"], src["label"], tgt["img"], pl.label, pl.weight, g
        )
    else:  # plain pseudo-labelling of the target images
        mixed_img, mixed_label, mixed_weight = tgt["img"], pl.label, pl.weight
        paste = torch.zeros_like(pl.label, dtype=torch.bool)
    mixed_img = strong_augment(mixed_img, u.color_jitter_s, u.color_jitter_p, u.blur, generator=g)
    logs["mix_fraction"] = float(paste.float().mean())
    with ctx.autocast():
        out_m = nets.student(mixed_img)
    terms["ce_mix"] = seg.seg_loss(out_m, mixed_label, mixed_weight)

    # 3b. MIC: a block-masked, strongly augmented target image, the same pseudo-labels.
    if u.mic:
        keep = block_mask(tgt["img"].shape, u.mic_mask_ratio, u.mic_block_size, g, device)
        aug = strong_augment(tgt["img"], u.color_jitter_s, u.color_jitter_p, u.blur, generator=g)
        with ctx.autocast():
            out_k = nets.student(mask_image(aug, keep))
        terms["mic"] = u.mic_weight * seg.seg_loss(out_k, pl.label, pl.weight)
        logs["mic_visible"] = float(keep.mean())

    # 4a. Pixel contrast: source labels (+ confident pixels of the mixed image).
    if "pixel" in nets.losses and lc.pixel.released:  # PiPa's released code (losses.released)
        terms["pixel"] = lc.pixel.weight * released_pixel_contrast(out_s, src["label"], nets, ctx)
    elif "pixel" in nets.losses:
        feats = [out_s["feat"]]
        labels = [seg.label_for_feat(src["label"], out_s)]
        preds = [seg.label_for_feat(out_s["logits"].argmax(1), out_s)]
        if lc.pixel.use_target:
            confident = torch.where(pl.confidence >= u.pseudo_threshold, pl.label, IGNORE_INDEX)
            feats.append(out_m["feat"])
            labels.append(seg.label_for_feat(mix(paste, src["label"], confident), out_m))
            preds.append(seg.label_for_feat(out_m["logits"].argmax(1), out_m))
        with ctx.autocast():
            emb = seg.project("pixel", torch.cat(feats))
        terms["pixel"] = lc.pixel.weight * nets.losses["pixel"](
            emb.float(), torch.cat(labels), predictions=torch.cat(preds), generator=g
        )

    # 4b. Patch contrast: two overlapping crops of the rescaled target images.
    if "patch" in nets.losses and ctx.iteration < lc.patch.start_iter:
        terms["patch"] = torch.zeros((), device=device)  # not started yet: no crops, no RNG
    elif "patch" in nets.losses and lc.patch.released:  # PiPa's released code (losses.released)
        terms["patch"] = lc.patch.weight * released_patch_contrast(tgt["img"], nets, cfg, ctx)
    elif "patch" in nets.losses:
        from pipa_core.losses import sample_patch_pair

        pair = sample_patch_pair(
            tgt["img"], ctx.patch_crop, tuple(lc.patch.scale_range), tuple(lc.patch.iou_range),
            generator=g, align=seg.output_stride,
        )  # fmt: skip
        with ctx.autocast():
            feat = nets.student(torch.cat([pair.crop1, pair.crop2]), single_scale=True)["feat"]
            emb1, emb2 = seg.project("patch", feat).float().chunk(2)
        terms["patch"] = lc.patch.weight * nets.losses["patch"](
            emb1, emb2, pair, seg.output_stride, generator=g
        )

    # 4c. Temporal contrast (PiPa++): the same location in the key and reference frames.
    if "temporal" in nets.losses:
        if "img_ref" not in tgt:
            raise KeyError(
                "the temporal loss needs target items with 'img_ref' (a video benchmark); "
                "drop 'temporal' from losses.enabled for image benchmarks"
            )
        with ctx.autocast():
            feat = nets.student(torch.cat([tgt["img"], tgt["img_ref"]]), single_scale=True)["feat"]
            emb_k, emb_r = seg.project("temporal", feat).float().chunk(2)
        terms["temporal"] = lc.temporal.weight * nets.losses["temporal"](emb_k, emb_r, generator=g)

    # 4d. SPCL prototype contrast on the decoder features.
    if "prototype" in nets.losses:
        from pipa_core.losses import pseudo_labels_with_thresholds

        proto = nets.losses["prototype"]
        src_label = seg.label_for_feat(src["label"], out_s)
        l_proto = proto(out_s["feat"].float(), src_label, update=True, generator=g)
        if lc.prototype.use_target:
            # SPCL: class-wise thresholds min(0.9, median confidence) on the teacher's softmax
            thresholded = pseudo_labels_with_thresholds(torch.softmax(t_logits, 1))
            tgt_label = seg.label_for_feat(mix(paste, src["label"], thresholded), out_m)
            l_proto = l_proto + proto(out_m["feat"].float(), tgt_label, update=False, generator=g)
        terms["prototype"] = lc.prototype.weight * l_proto

    loss = sum(terms.values())
    logs.update({"loss": float(loss.detach()), **{k: float(v.detach()) for k, v in terms.items()}})
    vis = {
        "source": src["img"],
        "source_label": src["label"],
        "target": tgt["img"],
        "pseudo_label": pl.label,
        "mixed": mixed_img,
        "mixed_label": mixed_label,
    }
    return StepOutput(loss, logs, vis)


def released_pixel_contrast(out: dict, label: torch.Tensor, nets: Networks, ctx: StepContext):
    """PiPa's released pixel contrast (:mod:`pipa_core.losses.released`), unweighted.

    The stage heads read the source forward's encoder maps: on HRDA those of the HR
    detail crop, while ``label`` stays the whole context label (the loss resizes it to
    the embedding: misaligned, as released). The never-trained ``cls_head`` picks the
    hard / easy anchors.
    """
    heads = nets.segmentor.stage_heads
    enc = out["hrda"]["hr_enc"] if "hrda" in out else out["enc"]
    with ctx.autocast():
        emb = heads.embed(enc)
        with torch.no_grad():
            pred = heads.classify(enc).argmax(1)
    return nets.losses["pixel"](emb.float(), label, pred, generator=ctx.generator)


def released_patch_contrast(img: torch.Tensor, nets: Networks, cfg: TrainConfig, ctx: StepContext):
    """PiPa's released patch contrast (:mod:`pipa_core.losses.released`), unweighted.

    The EMA teacher sees both crops (no gradient); HRDA variant: its logits resized to
    the crop (``encode_decode``), DAFormer variant: its fused decoder feature; 2x2
    average-pooled, then the loss module's own ``project`` / ``classifier`` heads.
    """
    from pipa_core.losses import sample_patch_pair
    from pipa_core.losses.released import RELEASED_CELL

    p, seg = cfg.losses.patch, nets.segmentor
    pair = sample_patch_pair(
        img, ctx.patch_crop, tuple(p.scale_range), tuple(p.iou_range),
        generator=ctx.generator, align=RELEASED_CELL,
    )  # fmt: skip
    crops = torch.cat([pair.crop1, pair.crop2])
    with torch.no_grad(), ctx.autocast():
        t_out = nets.teacher(crops)
    if seg.multi_resolution:
        x = F.interpolate(
            t_out["logits"].float(), size=crops.shape[-2:], mode="bilinear", align_corners=False
        )
    else:
        x = t_out["feat"].float()
    x1, x2 = F.avg_pool2d(x, kernel_size=2, stride=2).chunk(2)
    return nets.losses["patch"](x1, x2, pair, generator=ctx.generator)


def training_step(batch: dict, nets: Networks, cfg: TrainConfig, ctx: StepContext) -> StepOutput:
    """Dispatch on ``cfg.uda.mode``: self-training, or supervised (source-only / oracle)."""
    if cfg.uda.mode == "self_training":
        return self_training_step(batch, nets, cfg, ctx)
    return supervised_step(batch, nets, cfg, ctx)
