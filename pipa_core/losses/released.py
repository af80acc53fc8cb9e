"""PiPa's *released-code* pixel and patch contrast (chen742/PiPa), re-enacted exactly.

The released code does not train what the paper describes (chen742/PiPa issues
#3, #9, #14, #19). These two losses reproduce what it does, so that a run can
re-enact the released 75.6 / 68.2 mIoU and each detail can be ablated
(``losses.pixel.released``, ``losses.patch.released``; docs/losses.md, "Paper vs
released code"). The paper versions are :mod:`pipa_core.losses.pixel` and
:mod:`pipa_core.losses.patch`.

Released pixel contrast (``PixelContrastLoss`` in ``mmseg/models/decode_heads/hrda_head.py``
and ``PiPa_DAFormer/mmseg/models/decode_heads/decode_head.py``):

* embedding: ``proj_head`` on the concatenated encoder stages
  (:class:`~pipa_core.models.stage_heads.StageHeads`), source images only, GT labels;
  on HRDA the encoder maps of the HR *detail crop* while the label is the *whole*
  context label, nearest-resized to the embedding size (misaligned);
* anchors per (image, class): every label value but ``-1`` is a class, so the ignore
  label 255 is one; groups of ``<= max_views`` (100) pixels are dropped;
  ``n_view = min(max_samples // groups, max_views)`` anchors per group, half *hard*
  (label != prediction) and half *easy* when both kinds have ``n_view / 2``, else the
  scarcer kind entirely and the other fills up; the prediction is the argmax of the
  never-trained ``cls_head``;
* loss of a positive pair ``(i, j)`` (same class, any image, ``i != j``):
  ``-log[r_ij / (r_ij + sum_neg r_ik)]``, mean over the anchor's positives, mean over
  anchors, times ``tau / 0.07`` (:func:`~pipa_core.losses.infonce.info_nce` with
  ``denominator="pos_neg"``, ``average="anchors"``).

Released patch contrast (``DACS.forward_train`` in ``mmseg/models/uda/dacs.py``, the CAC
loss of Lai et al. 2021):

* input: the EMA *teacher's* output on the two crops (HRDA variant: the 19-channel
  logits resized to the crop; DAFormer variant: the 256-channel fused decoder
  feature at stride 4), 2x2 average-pooled; the teacher's parameters are detached;
* ``project`` (``Conv1x1(C, C), ReLU, Conv1x1(C, 128)``, L2-normalised) gives the
  embedding; ``classifier`` (``Conv1x1(C, 19)``, used only after ``.detach()``, so it
  stays at its initialisation) gives per-cell labels and confidences. So the loss
  trains ``project`` and nothing else: no gradient reaches the segmentor;
* overlap cells: the crop-pixel overlap box divided by 8 (``ul // 8 : br // 8``)
  on the pooled map *whatever its stride*: right for the DAFormer variant (stride 8),
  but on HRDA the pooled map has stride 2, so the "matching" cells are a scaled
  window that does not see the same image content (except for a zero offset);
* negatives: ``1600`` random cells of each crop of the batch (detached), with the
  classifier's labels, kept for the last 3 steps (the current one included); a
  negative of an anchor is an entry of a different label;
* direction 1 -> 2: ``pos = <f1, sg(f2)> / tau``,
  ``l = -log(exp(pos) / (exp(pos) + sum_neg exp(<f1, n> / tau)) + 1e-8)``, averaged
  over the anchors whose partner is confident (``conf2 > 0.9``) and more confident than
  the anchor (``conf1 < conf2``); the loss is the SUM of both directions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from pipa_core.labels import NUM_CLASSES
from pipa_core.losses.infonce import info_nce, zero_loss
from pipa_core.losses.location import _randperm
from pipa_core.losses.patch import PatchPair
from pipa_core.losses.pixel import _rank_within, downsample_labels

__all__ = [
    "RELEASED_BASE_TEMPERATURE",
    "RELEASED_CELL",
    "ReleasedPatchContrastLoss",
    "ReleasedPixelContrastLoss",
    "released_anchor_sampling",
    "released_overlap_slices",
]

#: ``base_temperature`` of the released pixel loss: the loss is scaled by ``tau / 0.07``.
RELEASED_BASE_TEMPERATURE = 0.07
#: Crop pixels per overlap cell in the released patch loss (``ul // 8``, CAC's stride).
RELEASED_CELL = 8
_EPS = 1e-8  # the release's eps inside the log


# --------------------------------------------------------------------------- pixel
def released_anchor_sampling(
    labels: torch.Tensor,
    predictions: torch.Tensor,
    max_anchors: int = 1024,
    max_views: int = 100,
    ignore_index: int = -1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The release's ``_hard_anchor_sampling``, vectorised.

    Args:
        labels: (B, P) flattened labels at embedding resolution (255 is a class).
        predictions: (B, P) ``cls_head`` argmax.
        ignore_index: the release's ``ignore_label = -1`` (no real label has it).
    Returns:
        (N,) long indices into the flattened (B*P) pixels (empty: no group has more
        than ``max_views`` pixels; the release then crashes, here the loss is 0).
    """
    b, p = labels.shape
    flat = labels.reshape(-1).long()
    idx = torch.nonzero(flat != ignore_index, as_tuple=True)[0]
    if idx.numel() == 0:
        return idx
    lab = flat[idx]
    key = torch.div(idx, p, rounding_mode="floor") * (int(lab.max()) + 1) + lab
    _, group, counts = torch.unique(key, return_inverse=True, return_counts=True)
    kept = counts > max_views  # the release drops groups of <= max_views pixels
    n_groups = int(kept.sum())
    n_view = min(max_anchors // max(n_groups, 1), max_views)
    if n_groups == 0 or n_view == 0:
        return idx[:0]
    hard = (predictions.reshape(-1)[idx] != lab).long()
    n_hard = torch.bincount(group, weights=hard.double(), minlength=counts.numel()).long()
    n_easy = counts - n_hard
    half = n_view / 2
    both = (n_hard >= half) & (n_easy >= half)
    keep_hard = torch.where(both, torch.full_like(n_hard, n_view // 2),
                            torch.where(n_hard >= half, n_view - n_easy, n_hard))  # fmt: skip
    keep_easy = torch.where(both, torch.full_like(n_easy, n_view - n_view // 2),
                            torch.where(n_hard >= half, n_easy, n_view - n_hard))  # fmt: skip
    order = _randperm(idx.numel(), generator, idx.device)
    rank = _rank_within(group * 2 + hard, order)  # random rank inside (group, hard/easy)
    quota = torch.where(hard.bool(), keep_hard[group], keep_easy[group])
    return idx[kept[group] & (rank < quota)]


class ReleasedPixelContrastLoss(nn.Module):
    """The released pixel contrast (module docstring), on ``StageHeads`` embeddings.

    Args:
        temperature: tau (released 0.1).
        base_temperature: the loss is scaled by ``temperature / base_temperature`` (0.07).
        max_anchors: ``max_samples`` (1024).
        max_views: anchors per (image, class) at most, and the group-size floor (100).
        chunk_size: anchor rows per InfoNCE chunk.
    """

    def __init__(
        self,
        temperature: float = 0.1,
        base_temperature: float = RELEASED_BASE_TEMPERATURE,
        max_anchors: int = 1024,
        max_views: int = 100,
        chunk_size: int | None = 1024,
    ) -> None:
        super().__init__()
        self.temperature, self.base_temperature = temperature, base_temperature
        self.max_anchors, self.max_views, self.chunk_size = max_anchors, max_views, chunk_size

    def forward(
        self,
        emb: torch.Tensor,
        labels: torch.Tensor,
        predictions: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Loss for embeddings (B, E, h, w), labels (B, H, W) of any size (nearest-resized
        to (h, w), as released) and ``cls_head`` predictions (B, h, w)."""
        if (
            emb.dim() != 4
            or labels.dim() != 3
            or predictions.shape != (emb.shape[0], *emb.shape[2:])
        ):
            raise ValueError(
                "ReleasedPixelContrastLoss: expected emb (B, E, h, w), labels (B, H, W) and "
                f"predictions (B, h, w), got {tuple(emb.shape)}, {tuple(labels.shape)}, "
                f"{tuple(predictions.shape)}"
            )
        b, e, h, w = emb.shape
        labels = downsample_labels(labels, (h, w), "nearest")
        idx = released_anchor_sampling(
            labels.reshape(b, -1), predictions.reshape(b, -1), self.max_anchors,
            self.max_views, generator=generator,
        )  # fmt: skip
        if idx.numel() == 0:
            return zero_loss(emb)
        feats = emb.permute(0, 2, 3, 1).reshape(-1, e)[idx]
        cls = labels.reshape(-1)[idx]
        loss = info_nce(
            feats, feats, cls, cls, temperature=self.temperature,
            self_index=torch.arange(idx.numel(), device=emb.device),
            denominator="pos_neg", average="anchors", chunk_size=self.chunk_size,
        )  # fmt: skip
        return (loss + zero_loss(emb)) * (self.temperature / self.base_temperature)


# --------------------------------------------------------------------------- patch
def released_overlap_slices(pair: PatchPair, cell: int = RELEASED_CELL) -> list:
    """Per image, the released ``(rows, cols)`` slices of the overlap in both maps.

    The release (PairCity + ``dacs.py``) takes the overlap box in crop pixels,
    ``ul1 = max(0, o2 - o1)``, ``br1 = min(c, c + o2 - o1, size // cell * cell)`` per axis
    (``o`` the crop origins in the rescaled image) and symmetrically for crop 2, and
    slices ``ul // cell : br // cell`` of each (un-flipped) map, whatever its stride.

    Returns:
        ``[((rows1, cols1), (rows2, cols2)), ...]`` of ``slice`` objects, one per image.
    """
    c = pair.crop_size
    out = []
    for b in range(pair.box1.shape[0]):
        o1, o2 = pair.box1[b, :2].tolist(), pair.box2[b, :2].tolist()
        limit = [s // cell * cell for s in pair.rescaled_size[b].tolist()]
        s1, s2 = [], []
        for ax in range(2):
            d = o2[ax] - o1[ax]
            s1.append(slice(max(0, d) // cell, min(c, c + d, limit[ax]) // cell))
            s2.append(slice(max(0, -d) // cell, min(c, c - d, limit[ax]) // cell))
        out.append((tuple(s1), tuple(s2)))
    return out


def _neg_lse_chunk(a, pos, a_lab, bank, bank_lab, inv_tau):
    """``log(exp(pos) + sum_{bank label != anchor label} exp(<a, n> / tau))`` per anchor row."""
    s = (a @ bank.t()) * inv_tau
    s = s.masked_fill(bank_lab[None, :] == a_lab[:, None], float("-inf"))
    return torch.logsumexp(torch.cat([pos[:, None], s], dim=1), dim=1)


class ReleasedPatchContrastLoss(nn.Module):
    """The released patch contrast (CAC loss; module docstring) with its own heads.

    Its parameters (``project.*``, and ``classifier.*`` which never gets a gradient) are
    not part of the segmentor: the engine adds them to the optimizer at the base lr
    (the release's ``project`` has no ``head`` in its name: no ``head_lr_mult``), and
    they are not averaged into the EMA teacher.

    Args:
        in_channels: channels of the pooled teacher map (19 logits on HRDA, 256 for the
            DAFormer variant's decoder feature).
        proj_dim: embedding size of ``project`` (128).
        num_classes: outputs of ``classifier`` (19).
        temperature: tau (0.1).
        num_negatives: negatives drawn per step from both crops (2 x 1600).
        bank_steps: steps of negatives kept, the current one included (3).
        pos_threshold: confidence the partner cell needs (0.9).
        cell: crop pixels per overlap cell (8).
        chunk_size: anchor rows per similarity chunk (recomputed in backward).
    """

    def __init__(
        self,
        in_channels: int,
        proj_dim: int = 128,
        num_classes: int = NUM_CLASSES,
        temperature: float = 0.1,
        num_negatives: int = 3200,
        bank_steps: int = 3,
        pos_threshold: float = 0.9,
        cell: int = RELEASED_CELL,
        chunk_size: int = 2048,
    ) -> None:
        super().__init__()
        if num_negatives < 2 or num_negatives % 2:
            raise ValueError(f"num_negatives must be even and >= 2 (2 x 1600), got {num_negatives}")
        self.project = nn.Sequential(
            nn.Conv2d(in_channels, in_channels, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, proj_dim, 1),
        )
        self.classifier = nn.Conv2d(in_channels, num_classes, 1)
        self.temperature, self.pos_threshold, self.cell = temperature, pos_threshold, cell
        self.per_crop, self.bank_steps, self.chunk_size = num_negatives // 2, bank_steps, chunk_size
        size = bank_steps * num_negatives
        self.register_buffer("bank_feat", torch.zeros(size, proj_dim))
        self.register_buffer("bank_label", torch.zeros(size, dtype=torch.long))
        self.register_buffer("bank_valid", torch.zeros(size, dtype=torch.bool))
        self.register_buffer("bank_slot", torch.zeros((), dtype=torch.long))

    def _heads(self, x: torch.Tensor):
        f = F.normalize(self.project(x), p=2, dim=1)
        prob = torch.softmax(self.classifier(x), dim=1).detach()
        conf, lab = prob.max(dim=1)
        return f, lab, conf

    def _enqueue(self, feats: torch.Tensor, labels: torch.Tensor) -> None:
        """Write this step's negatives into the oldest slot (fixed shapes: checkpointable)."""
        n = 2 * self.per_crop
        lo = int(self.bank_slot) * n
        self.bank_valid[lo : lo + n] = False
        self.bank_feat[lo : lo + feats.shape[0]] = feats.detach().to(self.bank_feat.dtype)
        self.bank_label[lo : lo + feats.shape[0]] = labels
        self.bank_valid[lo : lo + feats.shape[0]] = True
        self.bank_slot.fill_((int(self.bank_slot) + 1) % self.bank_steps)

    def _direction(self, a, partner, a_lab, bank, bank_lab) -> torch.Tensor:
        """Per-anchor ``-log(p + 1e-8)`` with ``p = exp(pos) / (exp(pos) + sum_neg)``."""
        inv_tau = 1.0 / self.temperature
        pos = (a * partner.detach()).sum(dim=1) * inv_tau
        lse = []
        for lo in range(0, a.shape[0], self.chunk_size):
            args = (a[lo : lo + self.chunk_size], pos[lo : lo + self.chunk_size],
                    a_lab[lo : lo + self.chunk_size], bank, bank_lab, inv_tau)  # fmt: skip
            if torch.is_grad_enabled() and a.requires_grad:
                lse.append(checkpoint(_neg_lse_chunk, *args, use_reentrant=False))
            else:
                lse.append(_neg_lse_chunk(*args))
        return -torch.log(torch.exp(pos - torch.cat(lse)) + _EPS)

    def forward(
        self,
        x1: torch.Tensor,
        x2: torch.Tensor,
        pair: PatchPair,
        update_bank: bool = True,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Loss (sum of both directions) for the pooled teacher maps (B, C, h, w) of
        ``pair.crop1`` / ``pair.crop2`` (as fed, i.e. flipped where ``pair.flip*``)."""
        if x1.shape != x2.shape or x1.dim() != 4 or x1.shape[0] != pair.box1.shape[0]:
            raise ValueError(
                "ReleasedPatchContrastLoss: x1 and x2 must both be (B, C, h, w) with the pair's "
                f"batch, got {tuple(x1.shape)} and {tuple(x2.shape)}"
            )
        x1, x2 = x1.float(), x2.float()
        (f1, lab1, conf1), (f2, lab2, conf2) = self._heads(x1), self._heads(x2)
        # negatives from the maps as fed (the release samples before un-flipping)
        b, e, h, w = f1.shape
        k = min(self.per_crop, b * h * w)
        negs, neg_labs = [], []
        for f, lab in ((f1, lab1), (f2, lab2)):
            sel = _randperm(b * h * w, generator, f.device)[:k]
            negs.append(f.permute(0, 2, 3, 1).reshape(-1, e)[sel])
            neg_labs.append(lab.reshape(-1)[sel])
        if update_bank and self.training:
            self._enqueue(torch.cat(negs), torch.cat(neg_labs))
            bank, bank_lab = self.bank_feat[self.bank_valid], self.bank_label[self.bank_valid]
        else:
            bank, bank_lab = torch.cat(negs).detach(), torch.cat(neg_labs)
        # un-flip each map, then take the released overlap window of each
        fl1, fl2 = pair.flip1.to(f1.device), pair.flip2.to(f1.device)
        rows = {1: [], 2: []}
        for i, (s1, s2) in enumerate(released_overlap_slices(pair, self.cell)):
            for v, f, lab, conf, flip, s in (
                (1, f1, lab1, conf1, fl1, s1), (2, f2, lab2, conf2, fl2, s2),
            ):  # fmt: skip
                fi, li, ci = f[i], lab[i], conf[i]
                if bool(flip[i]):
                    fi, li, ci = fi.flip(-1), li.flip(-1), ci.flip(-1)
                rows[v].append((fi[:, s[0], s[1]].reshape(e, -1).t(),
                                li[s[0], s[1]].reshape(-1), ci[s[0], s[1]].reshape(-1)))  # fmt: skip
        (a1, l1, c1), (a2, l2, c2) = ([torch.cat(t) for t in zip(*rows[v])] for v in (1, 2))
        if a1.shape[0] == 0:
            return zero_loss(x1, f1, f2)
        loss1 = self._direction(a1, a2, l1, bank, bank_lab)
        loss2 = self._direction(a2, a1, l2, bank, bank_lab)
        m1 = ((c2 > self.pos_threshold) & (c1 < c2)).float()
        m2 = ((c1 > self.pos_threshold) & (c2 < c1)).float()
        loss1 = (loss1 * m1).sum() / (m1.sum() + 1e-12)
        loss2 = (loss2 * m2).sum() / (m2.sum() + 1e-12)
        return loss1 + loss2
