"""Patch-wise contrast (PiPa Eq. 5): the same image location seen in two crops.

:func:`sample_patch_pair` rescales each target image by a random ratio and
crops two equally sized patches whose IoU lies in a range (paper: ratio in
[0.5, 2], 720x720 crops, IoU in [0.1, 1]). :class:`PatchContrastLoss` finds
the feature cells of the two crops that see the same location of the
rescaled image and contrasts them (:mod:`pipa_core.losses.location`).

Correspondence rule (exact, symmetric, one-to-one). A feature cell ``v`` of a
crop with output stride ``s`` covers crop pixels ``[v*s, (v+1)*s)``; its
centre ``(v + 1/2) * s`` is mapped to rescaled-image coordinates by adding the
box origin, after undoing a horizontal flip (``x -> c - x``). Per axis, cells
``i`` (crop 1) and ``j`` (crop 2) match when their centres differ by less than
half a cell, ``|d| < s/2``. When the box offset puts the centres exactly half a
cell apart (``|d| = s/2``) the tie is resolved by absolute position: the pair
matches iff the smaller of the two centres satisfies ``x mod s < s/2``. This
rule depends only on the two centres, not on which crop is "first", so the
correspondence (and the loss) is symmetric, and every cell has at most one
partner. Two cells match iff they match on both axes. Both crops come from
the same rescaled image, so the rescale ratio does not enter the matching; it
is kept in :class:`PatchPair` to map boxes back to the original image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pipa_core.losses.location import LocationContrastLoss, location_contrast


@dataclass
class PatchPair:
    """Two overlapping crops of the rescaled images and their geometry.

    Attributes:
        crop1, crop2: (B, 3, c, c) crops (already flipped where ``flip*`` is True).
        box1, box2: (B, 4) long ``(y1, x1, y2, x2)`` in rescaled-image pixels
            (``y2 = y1 + c``), before flipping.
        scale: (B, 2) float ``(sy, sx)`` = rescaled size / original size.
        rescaled_size: (B, 2) long ``(H', W')``.
        flip1, flip2: (B,) bool, horizontal flip of each crop.
        crop_size: c.
    """

    crop1: torch.Tensor
    crop2: torch.Tensor
    box1: torch.Tensor
    box2: torch.Tensor
    scale: torch.Tensor
    rescaled_size: torch.Tensor
    flip1: torch.Tensor
    flip2: torch.Tensor
    crop_size: int

    def iou(self) -> torch.Tensor:
        """(B,) IoU of the two boxes."""
        return box_iou_same_size(self.box1, self.box2, self.crop_size)

    def swapped(self) -> PatchPair:
        """The same pair with crop 1 and crop 2 exchanged."""
        return PatchPair(
            self.crop2, self.crop1, self.box2, self.box1, self.scale, self.rescaled_size,
            self.flip2, self.flip1, self.crop_size,
        )  # fmt: skip


def box_iou_same_size(box1: torch.Tensor, box2: torch.Tensor, c: int) -> torch.Tensor:
    """IoU of (..., 4) ``(y1, x1, ...)`` boxes that are both ``c x c``."""
    dy = (box1[..., 0] - box2[..., 0]).abs()
    dx = (box1[..., 1] - box2[..., 1]).abs()
    inter = (c - dy).clamp(min=0) * (c - dx).clamp(min=0)
    return inter.double() / (2 * c * c - inter).double()


def _gen_device(generator: torch.Generator | None) -> torch.device | None:
    # draw on the generator's own device (a CUDA generator cannot fill CPU tensors)
    return generator.device if generator is not None else None


def _uniform(generator: torch.Generator | None, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(
        torch.rand((), generator=generator, device=_gen_device(generator))
    )


def _randint(generator: torch.Generator | None, lo: int, hi: int, size=()) -> torch.Tensor:
    """Integers uniform in [lo, hi] (inclusive), on the CPU."""
    dev = _gen_device(generator)
    return torch.randint(lo, hi + 1, size, generator=generator, device=dev).cpu()


def _second_box(
    y1: int, x1: int, hh: int, ww: int, c: int, iou_range, align: int, tries: int, generator
) -> tuple[int, int]:
    """Origin of a second c x c box in an hh x ww image with IoU to (y1, x1) in range.

    Rejection sampling of offsets in ``(-c, c)`` (so the boxes always overlap);
    fallback: a random valid offset on a coarse grid of all feasible offsets.
    """
    lo_iou, hi_iou = iou_range
    m = (c - 1) // align
    dy = _randint(generator, -m, m, (tries,)) * align
    dx = _randint(generator, -m, m, (tries,)) * align
    for cand in ((dy, dx), _offset_grid(y1, x1, hh, ww, c, align)):
        oy, ox = y1 + cand[0], x1 + cand[1]
        inside = (oy >= 0) & (ox >= 0) & (oy + c <= hh) & (ox + c <= ww)
        inter = (c - cand[0].abs()).clamp(min=0) * (c - cand[1].abs()).clamp(min=0)
        iou = inter.double() / (2 * c * c - inter).double()
        ok = inside & (iou >= lo_iou - 1e-12) & (iou <= hi_iou + 1e-12)
        good = torch.nonzero(ok, as_tuple=True)[0]
        if good.numel() > 0:
            k = good[_randint(generator, 0, good.numel() - 1)]
            return int(oy[k]), int(ox[k])
    raise ValueError(
        f"sample_patch_pair: no second {c}x{c} crop with IoU in {tuple(iou_range)} fits in a "
        f"{hh}x{ww} rescaled image; widen iou_range or scale_range, or use a smaller crop_size"
    )


def _offset_grid(y1, x1, hh, ww, c, align, steps: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """All feasible aligned offsets (dy, dx) on a grid of at most ``steps`` per axis."""

    def axis(o, size):
        lo, hi = -o, size - c - o  # keep the box inside the image
        vals = torch.arange(lo, hi + 1)
        vals = vals[vals % align == 0] if align > 1 else vals
        stride = max(1, vals.numel() // steps)
        return torch.unique(torch.cat([vals[::stride], torch.zeros(1, dtype=vals.dtype)]))

    gy, gx = torch.meshgrid(axis(y1, hh), axis(x1, ww), indexing="ij")
    return gy.reshape(-1), gx.reshape(-1)


def sample_patch_pair(
    img: torch.Tensor,
    crop_size: int,
    scale_range: tuple[float, float] = (0.5, 2.0),
    iou_range: tuple[float, float] = (0.1, 1.0),
    flip: bool = True,
    generator: torch.Generator | None = None,
    align: int = 1,
    max_tries: int = 100,
) -> PatchPair:
    """Rescale each image and crop two overlapping ``crop_size`` patches.

    Args:
        img: (B, 3, H, W) images in [0, 1].
        crop_size: c, side of both crops (paper: 720; must fit the rescaled image,
            so the ratio is raised to ``c / min(H, W)`` when needed).
        scale_range: random rescale ratio range (paper: [0.5, 2]).
        iou_range: IoU range of the two boxes (paper: [0.1, 1]).
        flip: random horizontal flip of each crop (p = 0.5).
        generator: ``torch.Generator`` (any device) for reproducibility.
        align: box origins are multiples of ``align`` (pass the output stride to
            make every overlap cell match exactly, i.e. ``d = 0``).
        max_tries: rejection-sampling candidates per image before the fallback.
    Returns:
        :class:`PatchPair`. Loops over the batch only.
    """
    if img.dim() != 4 or img.shape[1] != 3:
        raise ValueError(f"sample_patch_pair: img must be (B, 3, H, W), got {tuple(img.shape)}")
    lo_s, hi_s = scale_range
    if not 0 < lo_s <= hi_s or not 0 <= iou_range[0] <= iou_range[1] <= 1 or iou_range[1] <= 0:
        raise ValueError(
            f"sample_patch_pair: need 0 < scale_range[0] <= scale_range[1] and "
            f"0 <= iou_range[0] <= iou_range[1] <= 1, got {scale_range}, {iou_range}"
        )
    b, _, h, w = img.shape
    c = int(crop_size)
    crops1, crops2, boxes1, boxes2, scales, sizes, flips1, flips2 = ([] for _ in range(8))
    for i in range(b):
        s = max(_uniform(generator, lo_s, hi_s), c / min(h, w))
        hh, ww = max(c, round(h * s)), max(c, round(w * s))
        # antialias only matters (and is only supported smoothly) when shrinking
        im = F.interpolate(
            img[i : i + 1], size=(hh, ww), mode="bilinear", align_corners=False,
            antialias=hh < h or ww < w,
        )  # fmt: skip
        y1 = int(_randint(generator, 0, (hh - c) // align)) * align
        x1 = int(_randint(generator, 0, (ww - c) // align)) * align
        y2, x2 = _second_box(y1, x1, hh, ww, c, iou_range, align, max_tries, generator)
        f1 = bool(flip) and _uniform(generator, 0.0, 1.0) < 0.5
        f2 = bool(flip) and _uniform(generator, 0.0, 1.0) < 0.5
        p1 = im[0, :, y1 : y1 + c, x1 : x1 + c]
        p2 = im[0, :, y2 : y2 + c, x2 : x2 + c]
        crops1.append(p1.flip(-1) if f1 else p1)
        crops2.append(p2.flip(-1) if f2 else p2)
        boxes1.append([y1, x1, y1 + c, x1 + c])
        boxes2.append([y2, x2, y2 + c, x2 + c])
        scales.append([hh / h, ww / w])
        sizes.append([hh, ww])
        flips1.append(f1)
        flips2.append(f2)
    dev = img.device
    return PatchPair(
        crop1=torch.stack(crops1),
        crop2=torch.stack(crops2),
        box1=torch.tensor(boxes1, dtype=torch.long, device=dev),
        box2=torch.tensor(boxes2, dtype=torch.long, device=dev),
        scale=torch.tensor(scales, dtype=torch.float32, device=dev),
        rescaled_size=torch.tensor(sizes, dtype=torch.long, device=dev),
        flip1=torch.tensor(flips1, dtype=torch.bool, device=dev),
        flip2=torch.tensor(flips2, dtype=torch.bool, device=dev),
        crop_size=c,
    )


def cell_centres2(start: int, n: int, stride: int, crop: int, flipped: bool) -> torch.Tensor:
    """Twice the rescaled-image coordinate of the centres of ``n`` cells along one axis.

    Doubled so that centres ``(v + 1/2) * s`` stay integers. Flipped crops show
    crop pixel ``x`` at ``c - x``, hence ``2*start + 2c - (2v+1) s``.
    """
    v2 = (2 * torch.arange(n) + 1) * stride
    return 2 * start + (2 * crop - v2 if flipped else v2)


def _axis_matches(
    a2: torch.Tensor, b2: torch.Tensor, stride: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Matching (i, j) cell pairs along one axis from doubled centres (module doc rule)."""
    d = (a2[:, None] - b2[None, :]).abs()
    low = torch.minimum(a2[:, None], b2[None, :])
    tie_ok = torch.remainder(low, 2 * stride) < stride
    m = (d < stride) | ((d == stride) & tie_ok)
    return torch.nonzero(m, as_tuple=True)


def patch_correspondence(
    pair: PatchPair, feat_size: tuple[int, int], stride: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Matched feature cells of the two crops.

    Args:
        pair: the :class:`PatchPair` the embeddings were computed on.
        feat_size: (h, w) of both embedding maps; must equal ``c / stride``.
        stride: the encoder/head output stride s.
    Returns:
        ``(idx1, idx2)`` (P,) long flat indices into ``(B*h*w)`` of crop-1 and
        crop-2 features (row-major ``b, y, x``); empty if the crops do not overlap.
    """
    h, w = feat_size
    c = pair.crop_size
    if h * stride != c or w * stride != c:
        raise ValueError(
            f"patch_correspondence: features {h}x{w} with stride {stride} do not tile the "
            f"{c}x{c} crop; pass the true output stride (crop_size must be a multiple of it)"
        )
    box1, box2 = pair.box1.cpu().tolist(), pair.box2.cpu().tolist()
    f1, f2 = pair.flip1.cpu().tolist(), pair.flip2.cpu().tolist()
    out1, out2 = [], []
    for b in range(len(box1)):
        y1i, y2i = _axis_matches(
            cell_centres2(box1[b][0], h, stride, c, False),
            cell_centres2(box2[b][0], h, stride, c, False),
            stride,
        )
        x1i, x2i = _axis_matches(
            cell_centres2(box1[b][1], w, stride, c, f1[b]),
            cell_centres2(box2[b][1], w, stride, c, f2[b]),
            stride,
        )
        base = b * h * w
        out1.append((base + y1i[:, None] * w + x1i[None, :]).reshape(-1))
        out2.append((base + y2i[:, None] * w + x2i[None, :]).reshape(-1))
    dev = pair.box1.device
    return torch.cat(out1).to(dev), torch.cat(out2).to(dev)


class PatchContrastLoss(LocationContrastLoss):
    """PiPa patch-wise contrastive loss between two overlapping crops.

    Args:
        temperature: tau (official code: 0.1).
        max_locations: matched locations kept per call (random subset; ``None`` all).
        num_negatives: extra negatives drawn from the non-anchor cells of both
            crops of the whole batch (official: 1600 per crop -> 3200; ``None`` all).
        memory_bank: optional :class:`ClassMemoryBank` (``num_classes=1``) of past
            negatives (official: the last 3 steps, i.e. size 3 * 3200).
        chunk_size: anchor rows per InfoNCE chunk.
    """

    def forward(
        self,
        emb1: torch.Tensor,
        emb2: torch.Tensor,
        pair: PatchPair,
        stride: int,
        update_bank: bool = True,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Loss for embeddings (B, E, h, w) of ``pair.crop1`` and ``pair.crop2``.

        Returns a scalar; graph-connected 0 when the crops share no feature cell.
        """
        if emb1.shape != emb2.shape or emb1.dim() != 4:
            raise ValueError(
                "PatchContrastLoss: emb1 and emb2 must both be (B, E, h, w), got "
                f"{tuple(emb1.shape)} and {tuple(emb2.shape)}"
            )
        if emb1.shape[0] != pair.box1.shape[0]:
            raise ValueError(
                f"PatchContrastLoss: batch {emb1.shape[0]} != pair batch {pair.box1.shape[0]}"
            )
        b, e, h, w = emb1.shape
        idx1, idx2 = patch_correspondence(pair, (h, w), stride)
        return location_contrast(
            emb1.permute(0, 2, 3, 1).reshape(-1, e),
            emb2.permute(0, 2, 3, 1).reshape(-1, e),
            idx1.to(emb1.device),
            idx2.to(emb1.device),
            temperature=self.temperature,
            max_locations=self.max_locations,
            num_negatives=self.num_negatives,
            memory_bank=self.memory_bank,
            update_bank=update_bank and self.training,
            chunk_size=self.chunk_size,
            generator=generator,
        )
