"""Pixel embeddings of a segmentor over a dataset, for t-SNE and class-centre analyses.

A segmentor returns ``{"logits", "feat", ...}`` where ``feat`` is the decoder
feature ``(B, D, H/s, W/s)``; its projection heads (``seg.project(name, feat)``)
map it to the contrastive embedding ``(B, E, H/s, W/s)``. Either can be
analysed: choose with ``embedding="feat"`` (decoder feature, what the
classifier sees) or ``embedding="pixel"`` / ``"patch"`` / ``"temporal"`` (a
projection head's output, what the contrastive loss shapes). Any other key of
the model's output dict (e.g. ``"logits"``) works as well. ``embedding="proj_head"``
is the embedding of PiPa's released code: its ``proj_head`` on the concatenated
encoder stages (:mod:`pipa_core.models.stage_heads`), what the paper's t-SNE figure
of the released model shows; released PiPa checkpoints carry it.

Labels are brought to feature resolution by *nearest* downsampling, so every
feature vector carries the ground-truth class of the pixel it sits on.

Sampling is balanced per class and per domain: a whole split holds millions of
pixels dominated by road and sky, so t-SNE on a uniform sample would show
nothing but those. :func:`extract_pixel_embeddings` keeps, per domain and
class, a uniform random sample of at most ``n_per_class`` pixels while it
streams over the loader (a bottom-k sample on random keys), so memory stays
bounded however large the split is.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from pipa_core.labels import CLASSES, IGNORE_INDEX, NUM_CLASSES, check_protocol

PROJECTION_HEADS = ("pixel", "patch", "temporal")


@dataclass
class PixelEmbeddings:
    """A sample of pixel embeddings with their class and domain.

    Attributes:
        feats: ``(N, D)`` float32 features on the CPU.
        labels: ``(N,)`` int64 train IDs (never the ignore index).
        domains: ``(N,)`` int64 index into ``domain_names``.
        domain_names: name of each domain, e.g. ``("source", "target")``.
        embedding: which output was read (``"feat"``, ``"pixel"``, ...).
    """

    feats: torch.Tensor
    labels: torch.Tensor
    domains: torch.Tensor
    domain_names: tuple[str, ...]
    embedding: str = "feat"

    def __len__(self) -> int:
        return int(self.labels.numel())

    def counts(self) -> dict[str, dict[str, int]]:
        """Number of sampled pixels per domain and class name (classes with none left out)."""
        out: dict[str, dict[str, int]] = {}
        for d, name in enumerate(self.domain_names):
            lab = self.labels[self.domains == d]
            cnt = torch.bincount(lab, minlength=NUM_CLASSES)
            out[name] = {CLASSES[c]: int(cnt[c]) for c in range(NUM_CLASSES) if cnt[c] > 0}
        return out

    def subset(self, index: torch.Tensor) -> PixelEmbeddings:
        """The embeddings at ``index`` (``(M,)`` int64 or bool mask)."""
        return PixelEmbeddings(
            self.feats[index],
            self.labels[index],
            self.domains[index],
            self.domain_names,
            self.embedding,
        )


class Sampled(NamedTuple):
    """Result of :func:`sample_per_class`: the chosen rows and their indices ``(M,)`` (ascending)."""

    feats: torch.Tensor
    labels: torch.Tensor
    domains: torch.Tensor | None
    index: torch.Tensor


# ----------------------------------------------------------------------------- sampling


def _rank_in_group(groups: torch.Tensor, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Order elements by (group, key) and give each its rank inside its group.

    Args:
        groups: ``(N,)`` int64 group ids >= 0.
        keys: ``(N,)`` float sort keys (random keys give a uniform random order).
    Returns:
        ``order`` ``(N,)`` indices sorted by (group, key) and ``rank`` ``(N,)``, the
        0-based position of ``order[k]`` within its group.
    """
    by_key = torch.argsort(keys)
    # A stable sort on the group keeps the key order inside each group.
    g_sorted, perm = torch.sort(groups[by_key], stable=True)
    order = by_key[perm]
    counts = torch.bincount(g_sorted)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(groups.numel(), device=groups.device) - starts[g_sorted]
    return order, rank


def _balanced_quota(sizes: torch.Tensor, n_per_group: int, max_total: int | None) -> torch.Tensor:
    """Per-group sample sizes: ``min(size, n)``, lowered evenly until the total fits ``max_total``.

    Water-filling: the largest common cap ``q`` with ``sum(min(size, n, q)) <= max_total``;
    the pixels left over go one each to the first groups that still have some.
    """
    take = sizes.clamp(max=n_per_group)
    if max_total is None or int(take.sum()) <= max_total:
        return take
    lo, hi = 0, n_per_group  # invariant: total(lo) <= max_total < total(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if int(sizes.clamp(max=mid).sum()) <= max_total:
            lo = mid
        else:
            hi = mid
    quota = sizes.clamp(max=lo)
    left = max_total - int(quota.sum())
    can_grow = (sizes > lo).nonzero().flatten()[:left]
    quota[can_grow] += 1
    return quota


def sample_per_class(
    feats: torch.Tensor,
    labels: torch.Tensor,
    n_per_class: int,
    generator: torch.Generator | None = None,
    *,
    domains: torch.Tensor | None = None,
    max_total: int | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> Sampled:
    """Balanced random sample: at most ``n_per_class`` pixels of every class in every domain.

    Vectorised (one sort, no Python loop over classes). Ignore pixels are dropped.
    With ``max_total`` the per-group quota is lowered evenly (large groups are cut
    first, small ones are kept whole) so that at most ``max_total`` rows remain.

    Args:
        feats: ``(N, D)`` features.
        labels: ``(N,)`` integer class ids.
        n_per_class: quota per (domain, class) group, >= 1.
        generator: a CPU ``torch.Generator`` for reproducible sampling.
        domains: ``(N,)`` integer domain ids; ``None`` = one domain.
        max_total: cap on the total number of sampled rows.
    Returns:
        :class:`Sampled` with ``feats (M, D)``, ``labels (M,)``, ``domains (M,)`` or
        ``None``, and ``index (M,)`` into the inputs, ascending.
    """
    if feats.ndim != 2 or labels.ndim != 1 or feats.shape[0] != labels.shape[0]:
        raise ValueError(
            f"sample_per_class expects feats (N, D) and labels (N,), got {tuple(feats.shape)} "
            f"and {tuple(labels.shape)}; flatten pixel maps with .permute(0, 2, 3, 1).reshape(-1, D)"
        )
    if domains is not None and domains.shape != labels.shape:
        raise ValueError(
            f"domains must have shape {tuple(labels.shape)}, got {tuple(domains.shape)}"
        )
    if n_per_class < 1:
        raise ValueError(f"n_per_class must be >= 1, got {n_per_class}")
    if max_total is not None and max_total < 1:
        raise ValueError(f"max_total must be >= 1 or None, got {max_total}")

    labels_cpu = labels.detach().long().cpu()
    valid = (labels_cpu != ignore_index).nonzero().flatten()
    lab = labels_cpu[valid]
    if lab.numel() and lab.min() < 0:
        raise ValueError("labels must be >= 0 (train IDs, ignore = 255)")
    dom = torch.zeros_like(lab) if domains is None else domains.detach().long().cpu()[valid]
    span = int(lab.max()) + 1 if lab.numel() else 1
    groups = dom * span + lab

    keys = torch.rand(groups.numel(), generator=generator)
    order, rank = _rank_in_group(groups, keys)
    sizes = torch.bincount(groups)
    quota = _balanced_quota(sizes, n_per_class, max_total)
    keep = rank < quota[groups[order]]
    index = valid[order[keep]].sort().values
    idx_dev = index.to(feats.device)
    return Sampled(
        feats[idx_dev],
        labels[idx_dev.to(labels.device)],
        None if domains is None else domains[index.to(domains.device)],
        index,
    )


class BottomKSampler:
    """Streaming uniform sample of at most ``k`` rows per class (bottom-k on random keys).

    Each incoming row draws a uniform key; per class the ``k`` smallest keys seen
    so far are kept. The kept rows are a uniform random sample without
    replacement of the whole stream, whatever the batch order or size.
    """

    def __init__(self, k: int, generator: torch.Generator | None = None):
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k = k
        self.generator = generator
        self.feats: torch.Tensor | None = None
        self.labels = torch.empty(0, dtype=torch.int64)
        self.keys = torch.empty(0)

    def update(self, feats: torch.Tensor, labels: torch.Tensor) -> None:
        """Offer rows ``feats (n, D)`` with class ids ``labels (n,)`` (no ignore values)."""
        labels = labels.detach().long().cpu()
        keys = torch.rand(labels.numel(), generator=self.generator)
        # Pre-select inside the batch so only <= k rows per class leave the device.
        order, rank = _rank_in_group(labels, keys)
        pick = order[rank < self.k]
        new_feats = feats[pick.to(feats.device)].detach().float().cpu()
        all_feats = new_feats if self.feats is None else torch.cat([self.feats, new_feats])
        all_labels = torch.cat([self.labels, labels[pick]])
        all_keys = torch.cat([self.keys, keys[pick]])
        order, rank = _rank_in_group(all_labels, all_keys)
        keep = order[rank < self.k]
        self.feats, self.labels, self.keys = all_feats[keep], all_labels[keep], all_keys[keep]


# ----------------------------------------------------------------------------- model outputs


def downsample_labels(labels: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Nearest-neighbour resize of label maps ``(B, H, W)`` to ``(B, h, w)`` (int64).

    torch's ``"nearest"`` takes source pixel ``floor(i * H / h)``: for an exact
    stride ``s`` that is the top-left pixel of each ``s x s`` block. Labels are
    never averaged, so no class is invented at boundaries.
    """
    if labels.ndim != 3:
        raise ValueError(f"labels must be (B, H, W), got shape {tuple(labels.shape)}")
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels.long()
    out = F.interpolate(labels[:, None].float(), size=tuple(size), mode="nearest")
    return out[:, 0].long()


#: ``embedding`` name of PiPa's released stage embedding (``proj_head``).
STAGE_EMBEDDING = "proj_head"


def pixel_embedding(model: nn.Module, img: torch.Tensor, embedding: str = "feat") -> torch.Tensor:
    """Per-pixel embedding ``(B, E, h, w)`` of images ``(B, 3, H, W)`` in [0, 1].

    ``embedding`` is a key of ``model(img)`` (``"feat"``, ``"logits"``, ...), the
    name of a projection head (``"pixel"``, ``"patch"``, ``"temporal"``) applied
    with ``model.project(name, out["feat"])``, or ``"proj_head"``: PiPa's released
    ``proj_head`` on the encoder stages of the image at its own resolution
    (``(B, 256, H/4, W/4)``, unit length).
    """
    if embedding == STAGE_EMBEDDING:
        heads = getattr(model, "stage_heads", None)
        if heads is None:
            raise ValueError(
                "embedding='proj_head' is the embedding of PiPa's released code; this model has "
                "no stage heads (released PiPa checkpoints have them). Use embedding='feat'"
            )
        return heads.embed(model.encoder(model.normalize(img)))
    out = model(img)
    if not isinstance(out, Mapping):
        raise TypeError(
            f"model must return a dict with 'logits' and 'feat' (docs/architecture.md), got {type(out).__name__}"
        )
    if embedding in PROJECTION_HEADS and embedding not in out:
        if not hasattr(model, "project"):
            raise ValueError(
                f"embedding={embedding!r} needs a projection head, but {type(model).__name__} "
                "has no .project(name, feat); use embedding='feat' or build the segmentor with its heads"
            )
        if "feat" not in out:
            raise KeyError("model output has no 'feat' to feed the projection head")
        return model.project(embedding, out["feat"])
    if embedding not in out:
        raise KeyError(
            f"model output has no {embedding!r}; available: {sorted(out)} "
            f"or a projection head {PROJECTION_HEADS}"
        )
    emb = out[embedding]
    if emb.ndim != 4:
        raise ValueError(f"{embedding!r} must be a (B, E, h, w) map, got shape {tuple(emb.shape)}")
    return emb


@torch.no_grad()
def predict_labels(model: nn.Module, img: torch.Tensor) -> torch.Tensor:
    """Train-ID prediction ``(B, H, W)`` of images ``(B, 3, H, W)`` at input resolution.

    Uses ``model.predict(img)`` (whole-image inference) when the model has it,
    otherwise bilinearly upsamples ``model(img)["logits"]``.
    """
    if hasattr(model, "predict"):
        logits = model.predict(img)
    else:
        logits = model(img)["logits"]
        if logits.shape[-2:] != img.shape[-2:]:
            logits = F.interpolate(
                logits, size=img.shape[-2:], mode="bilinear", align_corners=False
            )
    return logits.argmax(1)


def as_loader(data: Iterable | Dataset, batch_size: int = 2, num_workers: int = 0) -> Iterable:
    """A batch iterable from a loader (returned unchanged) or a map-style dataset (wrapped, not shuffled)."""
    if isinstance(data, Dataset) and not isinstance(data, torch.utils.data.IterableDataset):
        return DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    return data


def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _loader_length(loader: Iterable, max_batches: int | None) -> int | None:
    try:
        n = len(loader)  # type: ignore[arg-type]
    except TypeError:
        return max_batches
    return n if max_batches is None else min(n, max_batches)


@torch.no_grad()
def iter_pixel_embeddings(
    model: nn.Module,
    loader: Iterable | Dataset,
    *,
    embedding: str = "feat",
    normalize: bool = False,
    max_batches: int | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    desc: str = "features",
    batch_size: int = 2,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(emb (B, E, h, w), labels (B, h, w))`` for each batch, model in eval mode.

    Batches are dicts with ``"img" (B, 3, H, W)`` and ``"label" (B, H, W)``
    (docs/architecture.md). Labels are downsampled to feature resolution by
    nearest. ``normalize`` L2-normalises each embedding (the geometry the
    contrastive losses see). The model's train/eval mode is restored afterwards.
    """
    from tqdm.auto import tqdm

    device = torch.device(device) if device is not None else _model_device(model)
    loader = as_loader(loader, batch_size)
    was_training = model.training
    model.eval()
    try:
        it = tqdm(
            loader, total=_loader_length(loader, max_batches), desc=desc, disable=not progress
        )
        for b, batch in enumerate(it):
            if max_batches is not None and b >= max_batches:
                break
            if not isinstance(batch, Mapping) or "img" not in batch or "label" not in batch:
                raise ValueError(
                    "each batch must be a dict with 'img' (B,3,H,W) and 'label' (B,H,W); "
                    "for a UDA dataset pass the source or target dataset itself"
                )
            img = batch["img"].to(device)
            emb = pixel_embedding(model, img, embedding)
            if normalize:
                emb = F.normalize(emb, dim=1)
            lab = downsample_labels(batch["label"].to(device), emb.shape[-2:])
            yield emb, lab
    finally:
        model.train(was_training)


def _class_filter(classes: str | Sequence[int] | None) -> torch.Tensor | None:
    """Boolean lookup ``(256,)`` of the train IDs to keep, from a protocol name or ids."""
    if classes is None:
        return None
    ids = check_protocol(classes) if isinstance(classes, str) else tuple(int(c) for c in classes)
    keep = torch.zeros(256, dtype=torch.bool)
    keep[list(ids)] = True
    return keep


def flatten_pixels(
    emb: torch.Tensor,
    labels: torch.Tensor,
    keep: torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Valid pixels of a batch: ``emb (B, E, h, w)``, ``labels (B, h, w)`` -> ``(n, E)``, ``(n,)``.

    Drops ignore pixels and, with ``keep`` (a ``(256,)`` bool lookup), classes outside it.
    """
    e = emb.permute(0, 2, 3, 1).reshape(-1, emb.shape[1])
    lab = labels.reshape(-1)
    valid = lab != ignore_index
    if keep is not None:
        valid &= keep.to(lab.device)[lab.clamp(0, 255)]
    return e[valid], lab[valid]


def extract_pixel_embeddings(
    model: nn.Module,
    loaders: Mapping[str, Iterable | Dataset] | Iterable | Dataset,
    *,
    embedding: str = "feat",
    n_per_class: int = 300,
    max_pixels: int | None = None,
    classes: str | Sequence[int] | None = None,
    normalize: bool = False,
    max_batches: int | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = True,
    batch_size: int = 2,
) -> PixelEmbeddings:
    """Balanced sample of pixel embeddings over one or more domains.

    Args:
        model: segmentor returning ``{"feat", "logits", ...}``.
        loaders: ``{"source": loader_or_dataset, "target": ...}``; a single loader
            or dataset is the domain ``"data"``.
        embedding: ``"feat"`` (decoder), a projection head name or another output key.
        n_per_class: per domain and class, a uniform sample of at most this many pixels.
        max_pixels: cap on the total (quotas lowered evenly, see :func:`sample_per_class`).
        classes: protocol name (``"syn16"``) or train IDs to keep; ``None`` = all 19.
        normalize: L2-normalise embeddings.
        max_batches: batches per domain (``None`` = the whole loader).
        seed: seeds the sampling (same seed + same data = same pixels).
    Returns:
        :class:`PixelEmbeddings` with ``feats (N, E)`` on the CPU.
    """
    if not isinstance(loaders, Mapping):
        loaders = {"data": loaders}
    if not loaders:
        raise ValueError("loaders is empty; pass e.g. {'source': src_loader, 'target': tgt_loader}")
    keep = _class_filter(classes)
    gen = torch.Generator().manual_seed(seed)
    feats, labels, domains = [], [], []
    for d, (name, loader) in enumerate(loaders.items()):
        sampler = BottomKSampler(n_per_class, gen)
        for emb, lab in iter_pixel_embeddings(
            model,
            loader,
            embedding=embedding,
            normalize=normalize,
            max_batches=max_batches,
            device=device,
            progress=progress,
            desc=f"{embedding} · {name}",
            batch_size=batch_size,
        ):
            e, y = flatten_pixels(emb, lab, keep)
            if y.numel():
                sampler.update(e, y)
        if sampler.feats is not None:
            feats.append(sampler.feats)
            labels.append(sampler.labels)
            domains.append(torch.full_like(sampler.labels, d))
    if not feats:
        raise ValueError(
            "no labelled pixel found in any loader (all labels are ignore or outside `classes`); "
            "analyse a labelled split (e.g. the target 'val' split)"
        )
    out = PixelEmbeddings(
        torch.cat(feats), torch.cat(labels), torch.cat(domains), tuple(loaders), embedding
    )
    if max_pixels is not None and len(out) > max_pixels:
        s = sample_per_class(
            out.feats, out.labels, n_per_class, gen, domains=out.domains, max_total=max_pixels
        )
        out = out.subset(s.index)
    return out
