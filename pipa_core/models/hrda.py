"""HRDA: context-aware high-resolution self-training (Hoyer et al., ECCV 2022).

PiPa's best results (75.6 mIoU GTA→Cityscapes, 68.2 SYNTHIA→Cityscapes) sit on
top of HRDA. HRDA trains one segmentor on two views of a full-resolution
*context crop* (1024x1024 on Cityscapes at 2048x1024):

* a **low-resolution (LR) context view**: the whole crop downscaled by 0.5;
* a **high-resolution (HR) detail crop**: a 512x512 window of the crop at full
  resolution, placed at random with corners on a grid of ``output_stride / 0.5
  = 8`` pixels so its logits fall exactly on the LR logit grid;
* a **scale attention** head on the LR encoder features predicting, per class,
  ``a = sigmoid(head(LR features))`` at the LR logit resolution.

Both views share the encoder and the decoder. With ``U`` the bilinear
upsampling by ``1 / lr_scale`` (2x) and ``a`` zeroed outside the detail box,
HRDA fuses

    fused = U(a) · HR_inserted + U((1 − a) · LR)

where ``HR_inserted`` is the HR logits placed at the box and 0 elsewhere: inside
the detail region this is ``a·HR + (1 − a)·LR`` (exactly so where ``a`` is
locally constant), outside it is the upsampled LR prediction.

The training loss is ``(1 − λ_d − λ_l)·CE(fused) + λ_d·CE(HR) + λ_l·CE(LR)``
with the detail weight ``λ_d = 0.1`` (HRDA's ``hr_loss_weight``) and ``λ_l = 0``
(so the fused term has weight 0.9, as in the official code).

At inference (and for the teacher's pseudo-labels) the HR prediction is made by
overlapping sliding windows of the detail size (stride half a window) over the
whole input and fused with the LR prediction of the whole input by the
attention. The ImageNet feature distance uses the LR encoder features (HRDA's
``feature_scale=0.5``, "as in the original DAFormer").
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from pipa_core.losses.segmentation import segmentation_ce
from pipa_core.models.decoders import SegFormerHead
from pipa_core.models.deeplabv2 import ASPPClassifier
from pipa_core.models.inference import slide_windows
from pipa_core.models.segmentor import Segmentor

__all__ = [
    "HRDA_PREFIX",
    "HRDASegmentor",
    "LR_SCALE",
    "crop_to_box",
    "detail_size_for",
    "fuse_scales",
    "hrda_arch",
    "is_hrda_arch",
    "sample_detail_box",
]

#: Architecture names ``hrda_<arch>`` select an HRDA segmentor around ``<arch>``.
HRDA_PREFIX = "hrda_"
#: Scale of the low-resolution context view (HRDA: 0.5).
LR_SCALE = 0.5


def detail_size_for(crop_size: Sequence[int], ratio: float = 0.5, align: int = 8) -> tuple:
    """HRDA detail crop for a context ``crop_size`` ``(H, W)``: ``ratio`` of each side,
    rounded down to a multiple of ``align`` (``output_stride / lr_scale``), at least ``align``."""
    if not 0 < ratio <= 1:
        raise ValueError(f"HRDA detail ratio must lie in (0, 1], got {ratio}")
    return tuple(max(align, int(s * ratio) // align * align) for s in crop_size)


Box = Tuple[int, int, int, int]  # (y1, y2, x1, x2), end-exclusive, input pixels


# --------------------------------------------------------------------------- geometry
def sample_detail_box(
    context_hw: Sequence[int],
    detail_hw: Sequence[int],
    stride: int,
    generator: Optional[torch.Generator] = None,
) -> Box:
    """Random detail-crop box inside a context crop, its corner on a ``stride`` grid.

    Every aligned position ``(i·stride, j·stride)`` with the box inside the context
    is equally likely (HRDA draws ``randint(0, (margin + 1) // stride)`` and so
    never reaches the last aligned position when ``stride`` divides the margin;
    here the full range is used).

    Args:
        context_hw: ``(H, W)`` of the context crop (input pixels).
        detail_hw: ``(h, w)`` of the detail crop; ``h <= H``, ``w <= W``.
        stride: alignment of the top-left corner (``output_stride / lr_scale``, 8 for
            MiT at scale 0.5, so the box maps to whole LR and HR logit cells).
        generator: CPU ``torch.Generator`` (None = torch's global RNG).
    Returns:
        ``(y1, y2, x1, x2)`` with ``y2 - y1 = h`` and ``x2 - x1 = w``.
    """
    (ch, cw), (dh, dw) = (int(v) for v in context_hw), (int(v) for v in detail_hw)
    if stride < 1:
        raise ValueError(f"sample_detail_box: stride must be >= 1, got {stride}")
    if dh > ch or dw > cw or dh < 1 or dw < 1:
        raise ValueError(
            f"sample_detail_box: the detail crop {dh}x{dw} must be non-empty and fit in the "
            f"context crop {ch}x{cw}; lower the detail size or raise data.crop_size"
        )
    ny, nx = (ch - dh) // stride + 1, (cw - dw) // stride + 1
    y1 = int(torch.randint(ny, (1,), generator=generator)) * stride
    x1 = int(torch.randint(nx, (1,), generator=generator)) * stride
    return (y1, y1 + dh, x1, x1 + dw)


def crop_to_box(t: torch.Tensor, box: Box, context_hw: Sequence[int]) -> torch.Tensor:
    """Crop the last two axes of ``t`` to ``box`` given in context-crop pixels.

    ``t`` may be at any resolution that divides the context evenly (the label at
    full resolution, a stride-4 prediction map ...): the box is scaled by
    ``t.shape[-2:] / context_hw`` and must land on whole cells.

    Args:
        t: ``(..., h, w)`` tensor covering the whole context crop.
        box: ``(y1, y2, x1, x2)`` in context pixels.
        context_hw: ``(H, W)`` of the context crop.
    Returns:
        ``(..., h·(y2−y1)/H, w·(x2−x1)/W)`` view of ``t``.
    """
    (H, W), (h, w) = context_hw, t.shape[-2:]
    scaled = [v * h / H for v in box[:2]] + [v * w / W for v in box[2:]]
    if any(abs(s - round(s)) > 1e-6 for s in scaled):
        raise ValueError(
            f"crop_to_box: box {tuple(box)} of the {H}x{W} context does not fall on whole cells "
            f"of a {h}x{w} map; use maps whose size divides the context by the box alignment"
        )
    y1, y2, x1, x2 = (int(round(s)) for s in scaled)
    return t[..., y1:y2, x1:x2]


def fuse_scales(
    lr_logits: torch.Tensor,
    hr_logits: torch.Tensor,
    attention: torch.Tensor,
    box: Optional[Box],
    output_stride: int,
    lr_scale: float,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """HRDA's attention fusion of an LR context and an HR detail prediction.

    ``fused = U(a_m) · HR_inserted + U((1 − a_m) · LR)`` with ``U`` bilinear upsampling
    by ``1 / lr_scale``, ``a_m`` the attention zeroed outside the box (on the LR grid)
    and ``HR_inserted`` the HR logits placed at the box (0 elsewhere).

    Args:
        lr_logits: ``(B, K, h, w)`` logits of the LR view (stride ``output_stride`` of
            the downscaled context).
        hr_logits: ``(B, K, h_d, w_d)`` logits of the detail crop, or with ``box=None``
            of the whole context: ``(B, K, h/lr_scale, w/lr_scale)``.
        attention: ``(B, K or 1, h, w)`` scale attention in [0, 1] on the LR grid.
        box: detail box ``(y1, y2, x1, x2)`` in context pixels, or None (HR everywhere).
        output_stride: stride of the logits w.r.t. their input.
        lr_scale: scale of the LR view (0.5).
    Returns:
        ``(fused (B, K, h/lr_scale, w/lr_scale), masked attention (B, K or 1, h, w))``.
    """
    h, w = lr_logits.shape[-2:]
    up = round(1 / lr_scale)
    size = (h * up, w * up)
    if box is not None:
        y1, y2, x1, x2 = box
        cell = round(output_stride / lr_scale)  # context pixels per LR logit cell
        mask = attention.new_zeros((attention.shape[0], 1, h, w))
        mask[..., y1 // cell : y2 // cell, x1 // cell : x2 // cell] = 1
        attention = attention * mask
        hr_full = hr_logits.new_zeros((*hr_logits.shape[:2], *size))
        s = output_stride
        hr_full[..., y1 // s : y2 // s, x1 // s : x2 // s] = hr_logits
    else:
        hr_full = hr_logits
    if hr_full.shape[-2:] != size:
        raise ValueError(
            f"fuse_scales: HR logits {tuple(hr_full.shape[-2:])} do not match the upsampled LR "
            f"grid {size}; the context must be divisible by output_stride / lr_scale"
        )
    up_lr = F.interpolate(
        (1 - attention) * lr_logits, size=size, mode="bilinear", align_corners=False
    )
    up_att = F.interpolate(attention, size=size, mode="bilinear", align_corners=False)
    return up_att * hr_full + up_lr, attention


# --------------------------------------------------------------------------- model
def _attention_head(base: Segmentor, channels: int, classwise: bool) -> nn.Module:
    """HRDA's scale-attention decoder for ``base``.

    For MiT encoders HRDA uses the DAFormer head with a 1x1 conv fusion (no ASPP)
    at embedding width 256: per-level 1x1 embeddings, upsampling to stride 4,
    concatenation, 1x1 conv + BN + ReLU, dropout 0.1, 1x1 classifier, which is
    :class:`SegFormerHead`'s structure. For DeepLab-v2 it is another ASPP classifier.
    """
    out = base.num_classes if classwise else 1
    if isinstance(base.decoder, ASPPClassifier):
        return ASPPClassifier(base.encoder.out_channels[-1], out)
    return SegFormerHead(base.encoder.out_channels, out, channels=channels)


class HRDASegmentor(Segmentor):
    """A :class:`Segmentor` trained and run at two resolutions with a learned scale attention.

    Built around a base segmentor whose encoder, decoder and projection heads it
    shares (same state-dict keys, plus ``scale_attention.*``), so the optimizer's
    ``encoder.`` backbone prefix, EMA teacher and exports work unchanged.

    ``forward(img (B, 3, H, W))`` with ``H, W`` divisible by ``output_stride / lr_scale``:

    * in training mode (or with ``detail_box``): ``img`` is the context crop; returns
      ``{"logits": fused (B, K, H/s, W/s), "feat": HR detail-crop decoder feature
      (B, D, h/s, w/s), "enc": LR encoder maps, "hrda": {...}}`` with ``s`` the output
      stride, ``(h, w)`` the detail size and ``"hrda"`` holding ``lr_logits``
      ``(B, K, H·r/s, W·r/s)``, ``hr_logits`` ``(B, K, h/s, w/s)``, ``hr_enc`` (the
      detail crop's encoder maps), ``crop_box``
      ``(y1, y2, x1, x2)``, ``attention`` (masked, LR grid) and ``context_size`` ``(H, W)``;
    * in eval mode: LR view of the whole input + sliding-window HR prediction,
      fused; ``"feat"`` is then the stitched HR decoder feature ``(B, D, H/s, W/s)``
      and ``crop_box`` is None (inputs of any size; padded internally);
    * with ``single_scale=True``: the plain base forward at full resolution (the
      patch / temporal contrast branches need features aligned with the whole input).

    Args:
        base: the single-scale segmentor (e.g. ``build_segmentor("daformer_mit_b5")``).
        detail_size: ``(h, w)`` of the HR detail crop / inference window (512x512).
        lr_scale: scale of the LR context view (0.5).
        hr_loss_weight: detail loss weight λ_d (0.1).
        lr_loss_weight: LR loss weight λ_l (0 in HRDA).
        attention_channels: width of the scale-attention head (None = the decoder's width;
            256 for DAFormer, as HRDA's ``attention_embed_dim``).
        attention_classwise: one attention map per class (HRDA) instead of one in total.
        slide_stride: HR sliding-window stride at inference (None = half the window).
        slide_batch_size: HR windows per forward pass at inference (times ``B``).
    """

    multi_resolution = True  # lets the training step pick the single-scale forward

    def __init__(
        self,
        base: Segmentor,
        detail_size: Sequence[int] = (512, 512),
        lr_scale: float = 0.5,
        hr_loss_weight: float = 0.1,
        lr_loss_weight: float = 0.0,
        attention_channels: Optional[int] = None,
        attention_classwise: bool = True,
        slide_stride: Optional[Sequence[int]] = None,
        slide_batch_size: int = 4,
    ):
        if not isinstance(base, Segmentor) or isinstance(base, HRDASegmentor):
            raise TypeError(
                f"HRDASegmentor wraps a single-scale pipa_core Segmentor, got {type(base).__name__}; "
                "build it with build_segmentor(arch) first"
            )
        super().__init__(
            base.encoder,
            base.decoder,
            base.output_stride,
            dict(base.proj_heads),
            arch=HRDA_PREFIX + base.arch,
            channels_last=base.channels_last,
            stage_heads=base.stage_heads,
        )
        self.pretrained_report = getattr(base, "pretrained_report", None)
        cell = self.output_stride / lr_scale
        if not 0 < lr_scale < 1 or abs(1 / lr_scale - round(1 / lr_scale)) > 1e-9:
            raise ValueError(
                f"lr_scale must be 1/n for an integer n >= 2 (HRDA: 0.5), got {lr_scale}"
            )
        self.align = round(cell)  # context pixels per LR logit cell (8 for MiT at 0.5)
        self.detail_size = (int(detail_size[0]), int(detail_size[1]))
        if any(d < self.align or d % self.align for d in self.detail_size):
            raise ValueError(
                f"detail_size {self.detail_size} must be a positive multiple of "
                f"output_stride / lr_scale = {self.align} so the HR crop maps onto the LR grid"
            )
        stride = tuple(slide_stride) if slide_stride is not None else None
        if stride is not None and any(s < 1 or s % self.output_stride for s in stride):
            raise ValueError(
                f"slide_stride {stride} must be positive multiples of the output stride "
                f"{self.output_stride}"
            )
        for name, v in (("hr_loss_weight", hr_loss_weight), ("lr_loss_weight", lr_loss_weight)):
            if v < 0:
                raise ValueError(f"{name} must be >= 0, got {v}")
        if hr_loss_weight + lr_loss_weight > 1:
            raise ValueError(
                f"hr_loss_weight + lr_loss_weight = {hr_loss_weight + lr_loss_weight} > 1 leaves "
                "a negative weight on the fused loss (HRDA: 0.1 + 0)"
            )
        self.lr_scale = float(lr_scale)
        self.hr_loss_weight = float(hr_loss_weight)
        self.lr_loss_weight = float(lr_loss_weight)
        self.slide_stride = stride
        self.slide_batch_size = int(slide_batch_size)
        self.scale_attention = _attention_head(
            base, attention_channels or base.feat_channels, attention_classwise
        )
        if base.channels_last:
            self.scale_attention.to(memory_format=torch.channels_last)
        # Detail-box RNG; None = torch's global RNG (seeded and checkpointed by the trainer).
        self.generator: Optional[torch.Generator] = None

    # ------------------------------------------------------------------ pieces
    def _single(self, img: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, List[torch.Tensor]]:
        """Base encoder + decoder at the image's own resolution: ``(logits, feat, enc)``."""
        enc = self.encoder(self.normalize(img))
        logits, feat = self.decode(enc)
        return logits, feat, enc

    def _downscale(self, img: torch.Tensor) -> torch.Tensor:
        """LR view ``(B, 3, H·r, W·r)`` (bilinear, as HRDA's resize)."""
        h, w = img.shape[-2:]
        size = (round(h * self.lr_scale), round(w * self.lr_scale))
        return F.interpolate(img, size=size, mode="bilinear", align_corners=False)

    def attention(self, lr_enc: List[torch.Tensor]) -> torch.Tensor:
        """Scale attention ``(B, K or 1, H·r/s, W·r/s)`` in [0, 1] from the LR encoder maps."""
        return torch.sigmoid(self.scale_attention(lr_enc)[0])

    def encode(self, img: torch.Tensor) -> List[torch.Tensor]:
        """LR encoder maps of ``img`` (the features the ImageNet feature distance compares)."""
        return self.encoder(self.normalize(self._downscale(img)))

    def _check_context(self, img: torch.Tensor) -> None:
        h, w = img.shape[-2:]
        if h % self.align or w % self.align:
            raise ValueError(
                f"HRDA context crop {h}x{w} must be divisible by output_stride / lr_scale = "
                f"{self.align}; use crop sizes that are multiples of {self.align}"
            )

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        img: torch.Tensor,
        single_scale: bool = False,
        detail_box: Optional[Box] = None,
    ) -> Dict[str, Any]:
        """See the class docstring."""
        if single_scale:
            logits, feat, enc = self._single(img)
            return {"logits": logits, "feat": feat, "enc": enc}
        if self.training or detail_box is not None:
            return self.forward_train(img, detail_box)
        return self.forward_inference(img)

    def forward_train(self, img: torch.Tensor, detail_box: Optional[Box] = None) -> Dict[str, Any]:
        """Multi-resolution training forward on a context crop (see the class docstring)."""
        self._check_context(img)
        context = tuple(img.shape[-2:])
        box = detail_box
        if box is None:
            box = sample_detail_box(context, self.detail_size, self.align, self.generator)
        else:
            box = tuple(int(v) for v in box)
            y1, y2, x1, x2 = box
            if (y2 - y1, x2 - x1) != self.detail_size or y1 % self.align or x1 % self.align:
                raise ValueError(
                    f"detail_box {box} must have the detail size {self.detail_size} and corners "
                    f"on the {self.align}-pixel grid"
                )
            if y1 < 0 or x1 < 0 or y2 > context[0] or x2 > context[1]:
                raise ValueError(f"detail_box {box} lies outside the {context} context crop")
        lr_logits, _, lr_enc = self._single(self._downscale(img))
        y1, y2, x1, x2 = box
        hr_logits, hr_feat, hr_enc = self._single(img[..., y1:y2, x1:x2])
        att = self.attention(lr_enc)
        fused, att = fuse_scales(lr_logits, hr_logits, att, box, self.output_stride, self.lr_scale)
        hrda = {
            "lr_logits": lr_logits,
            "hr_logits": hr_logits,
            "hr_enc": hr_enc,  # the released pixel contrast embeds the detail crop's stages
            "crop_box": box,
            "attention": att,
            "context_size": context,
        }
        return {"logits": fused, "feat": hr_feat, "enc": lr_enc, "hrda": hrda}

    def slide_hr(
        self,
        img: torch.Tensor,
        window: Optional[Sequence[int]] = None,
        stride: Optional[Sequence[int]] = None,
        batch_size: Optional[int] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """HR prediction of the whole ``img`` by overlapping sliding windows.

        Windows of ``window`` (default: the detail size, clipped to the image) step by
        ``stride`` (default: half a window, HRDA's overlapping slide); each window's
        logits and decoder features are placed at stride ``s`` and overlaps averaged.
        ``img`` sides must be multiples of the output stride.

        Returns:
            float32 ``(logits (B, K, H/s, W/s), feat (B, D, H/s, W/s))``.
        """
        s = self.output_stride
        h, w = img.shape[-2:]
        if h % s or w % s:
            raise ValueError(f"slide_hr: image {h}x{w} must be divisible by the output stride {s}")
        win = tuple(window) if window is not None else self.detail_size
        win = (min(int(win[0]), h), min(int(win[1]), w))
        step = tuple(stride) if stride is not None else self.slide_stride
        if step is None:
            step = (max(win[0] // 2 // s * s, s), max(win[1] // 2 // s * s, s))
        if any(v % s for v in (*win, *step)):
            raise ValueError(
                f"slide_hr: window {win} and stride {step} must be multiples of the output stride {s}"
            )
        windows = slide_windows((h, w), win, step)
        b = img.shape[0]
        n = batch_size or self.slide_batch_size
        logits = feat = None
        count = img.new_zeros((1, 1, h // s, w // s), dtype=torch.float32)
        for start in range(0, len(windows), n):
            chunk = windows[start : start + n]
            crops = torch.cat([img[..., y1:y2, x1:x2] for y1, y2, x1, x2 in chunk])
            lg, ft, _ = self._single(crops)
            if logits is None:  # accumulate overlaps in float32 (inputs may be bf16 / fp16)
                logits = lg.new_zeros((b, lg.shape[1], h // s, w // s), dtype=torch.float32)
                feat = ft.new_zeros((b, ft.shape[1], h // s, w // s), dtype=torch.float32)
            for i, (y1, y2, x1, x2) in enumerate(chunk):
                sl = (Ellipsis, slice(y1 // s, y2 // s), slice(x1 // s, x2 // s))
                logits[sl] += lg[i * b : (i + 1) * b]
                feat[sl] += ft[i * b : (i + 1) * b]
                count[sl] += 1
        return logits / count, feat / count

    def forward_inference(self, img: torch.Tensor) -> Dict[str, Any]:
        """LR context of the whole input + sliding-window HR detail, fused by the attention.

        Any input size: the image is padded (bottom / right, with the normalisation
        mean, i.e. zeros after normalising) to a multiple of ``output_stride / lr_scale``
        and the outputs are cropped back to ``ceil(H / s) x ceil(W / s)``.
        """
        h, w = img.shape[-2:]
        ph, pw = (-h) % self.align, (-w) % self.align
        x = img
        if ph or pw:
            mean = self.mean.to(img.dtype)
            x = F.pad(img - mean, (0, pw, 0, ph)) + mean
        lr_logits, _, lr_enc = self._single(self._downscale(x))
        hr_logits, hr_feat = self.slide_hr(x)
        att = self.attention(lr_enc)
        fused, att = fuse_scales(lr_logits, hr_logits, att, None, self.output_stride, self.lr_scale)
        s = self.output_stride
        oh, ow = -(-h // s), -(-w // s)
        hrda = {
            "lr_logits": lr_logits,
            "hr_logits": hr_logits[..., :oh, :ow],
            "crop_box": None,
            "attention": att,
            "context_size": (h, w),
        }
        return {
            "logits": fused[..., :oh, :ow],
            "feat": hr_feat[..., :oh, :ow],
            "enc": lr_enc,
            "hrda": hrda,
        }

    @torch.no_grad()
    def predict(
        self,
        img: torch.Tensor,
        mode: str = "whole",
        crop_size: Optional[Tuple[int, int]] = None,
        stride: Optional[Tuple[int, int]] = None,
        flip: bool = False,
        batch_size: int = 4,
    ) -> torch.Tensor:
        """HRDA inference, logits ``(B, K, H, W)`` at input resolution.

        ``"whole"``: LR view of the whole image + sliding HR windows over it (at
        1024x2048: a 512x1024 LR view and 21 HR windows of 512x512). ``"slide"``:
        HRDA's test protocol, ``crop_size`` windows (1024x1024, stride 512) each
        predicted as in ``"whole"``. The model is put in eval mode for the call.
        """
        was_training = self.training
        self.eval()
        try:
            return super().predict(img, mode, crop_size, stride, flip, batch_size)
        finally:
            self.train(was_training)

    # ------------------------------------------------------------------ losses
    def seg_loss(
        self, out: Dict[str, Any], label: torch.Tensor, weight: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """HRDA's multi-output cross-entropy.

        ``(1 − λ_d − λ_l)·CE(fused, label) + λ_d·CE(HR, label cropped to the detail box)
        + λ_l·CE(LR, label)``, each term the engine's
        :func:`~pipa_core.losses.segmentation.segmentation_ce` (logits upsampled to the label,
        mean over labelled pixels, optional ``(B, H, W)`` weight map cropped like the
        label). Outputs without a detail box (eval mode) give the plain CE of ``logits``.

        Args:
            out: this model's forward output on a context crop.
            label: ``(B, H, W)`` int64 label of the context crop (ignore 255).
            weight: optional ``(B, H, W)`` pixel weights (pseudo-label confidence).
        """
        hrda = out.get("hrda")
        if hrda is None or hrda["crop_box"] is None:
            return segmentation_ce(out["logits"], label, weight)
        wd, wl = self.hr_loss_weight, self.lr_loss_weight
        loss = (1 - wd - wl) * segmentation_ce(out["logits"], label, weight)
        if wd > 0:
            crop_label = self.label_for_feat(label, out)
            crop_weight = self.label_for_feat(weight, out) if weight is not None else None
            loss = loss + wd * segmentation_ce(hrda["hr_logits"], crop_label, crop_weight)
        if wl > 0:
            loss = loss + wl * segmentation_ce(hrda["lr_logits"], label, weight)
        return loss

    def label_for_feat(self, label: torch.Tensor, out: Dict[str, Any]) -> torch.Tensor:
        """``label`` (or any per-pixel map ``(B, H', W')`` covering the context, e.g. a
        prediction at stride 4) cropped to the region ``out["feat"]`` covers.

        Training outputs: the detail box scaled to the map's resolution; eval outputs
        cover the whole input, so the map is returned unchanged.
        """
        hrda = out.get("hrda")
        if hrda is None or hrda["crop_box"] is None:
            return label
        return crop_to_box(label, hrda["crop_box"], hrda["context_size"])


# --------------------------------------------------------------------------- builder
def is_hrda_arch(arch: str) -> bool:
    """Whether ``arch`` names an HRDA segmentor (``hrda_<base arch>``)."""
    return arch.startswith(HRDA_PREFIX)


def hrda_arch(arch: str) -> str:
    """``arch`` with the ``hrda_`` prefix (unchanged if it already has it)."""
    return arch if is_hrda_arch(arch) else HRDA_PREFIX + arch
