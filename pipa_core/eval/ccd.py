r"""Class Center Distance (CCD): how compact and separated the classes are in feature space.

Introduced by FADA and used in SPCL (Fig. 5) to show that contrastive training
makes pixel features more discriminative. For class ``i`` with centre
``mu_i`` (mean feature) and pixel set ``S_i``:

.. math::

    CCD(i) = \frac{1}{C-1} \sum_{j \ne i}
             \frac{\frac{1}{|S_i|}\sum_{x \in S_i} \lVert x - \mu_i \rVert^2}
                  {\lVert \mu_i - \mu_j \rVert^2}

the intra-class spread of ``i`` divided by its squared distance to every
other centre, averaged. **Lower is better** (tight clusters, far apart).

Choices made here (the papers do not say):

* Classes with no pixel in the data are *excluded*: they have no centre, so
  they are neither a term of the sum nor get a CCD value (``nan``). The
  ``1 / (C - 1)`` therefore uses ``C`` = the number of *present* classes, so
  CCD stays a mean over the distances that exist and values computed on
  data where a class is missing remain comparable.
* Centres and spreads are computed per domain (source, target) and, in
  addition, on the pooled pixels of all domains (``"all"``).
* The statistics stream over the whole loader: per class we keep the pixel
  count, the mean and the sum of squared deviations (merged batch by batch with
  Chan et al.'s parallel update, in float64), never the features themselves.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import Dataset

from pipa_core.eval.features import _class_filter, flatten_pixels, iter_pixel_embeddings
from pipa_core.eval.metrics import format_value
from pipa_core.labels import CLASSES, IGNORE_INDEX, NUM_CLASSES

POOLED = "all"


class ClassCenterStats:
    """Streaming per-class count, centre and spread of features.

    ``update`` accepts feature maps ``(B, D, h, w)`` with labels ``(B, h, w)`` or
    rows ``(N, D)`` with labels ``(N,)``; ignore pixels and classes ``>= num_classes``
    are skipped. Statistics live on the CPU in float64.

    Attributes:
        count: ``(C,)`` int64 pixels per class.
        mean: ``(C, D)`` float64 class centres ``mu_c`` (zero where count is 0).
        m2: ``(C,)`` float64 ``sum_{x in S_c} ||x - mu_c||^2``.
    """

    def __init__(self, num_classes: int = NUM_CLASSES, ignore_index: int = IGNORE_INDEX):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.count = torch.zeros(num_classes, dtype=torch.int64)
        self.mean: torch.Tensor | None = None
        self.m2 = torch.zeros(num_classes, dtype=torch.float64)

    @torch.no_grad()
    def update(self, feats: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a batch of features (see class docstring for shapes)."""
        if feats.ndim == 4:
            if labels.shape != (feats.shape[0], *feats.shape[-2:]):
                raise ValueError(
                    f"labels {tuple(labels.shape)} must match the feature map {tuple(feats.shape)} "
                    "as (B, h, w); downsample them with pipa_core.eval.features.downsample_labels"
                )
            feats, labels = flatten_pixels(feats, labels, ignore_index=self.ignore_index)
        if feats.ndim != 2 or labels.shape != feats.shape[:1]:
            raise ValueError(
                f"expected feats (N, D) with labels (N,), got {tuple(feats.shape)} and {tuple(labels.shape)}"
            )
        labels = labels.long()
        valid = (labels >= 0) & (labels < self.num_classes)
        x, y = feats[valid], labels[valid]
        if y.numel() == 0:
            return
        # float64 where the device has it (MPS does not); the merge is always float64 on CPU.
        dt = torch.float32 if x.device.type == "mps" else torch.float64
        x = x.to(dt)
        c = self.num_classes
        n_b = torch.bincount(y, minlength=c)
        sum_b = torch.zeros(c, x.shape[1], dtype=dt, device=x.device).index_add_(0, y, x)
        mean_b = sum_b / n_b.clamp(min=1)[:, None].to(dt)
        # Two-pass inside the batch: deviations from the batch mean, no E[x^2]-E[x]^2 cancellation.
        dev2 = (x - mean_b[y]).pow(2).sum(1)
        m2_b = torch.zeros(c, dtype=dt, device=x.device).index_add_(0, y, dev2)
        self._merge(n_b.cpu(), mean_b.double().cpu(), m2_b.double().cpu())

    def _merge(self, n_b: torch.Tensor, mean_b: torch.Tensor, m2_b: torch.Tensor) -> None:
        """Chan et al.'s parallel update of (count, mean, M2) with a batch's statistics."""
        if self.mean is None:
            self.mean = torch.zeros_like(mean_b)
        elif self.mean.shape != mean_b.shape:
            raise ValueError(
                f"feature dimension changed from {self.mean.shape[1]} to {mean_b.shape[1]} between batches"
            )
        n_a = self.count.double()
        nb = n_b.double()
        n = n_a + nb
        w = torch.where(n > 0, nb / n.clamp(min=1), torch.zeros_like(n))
        delta = mean_b - self.mean
        self.mean = self.mean + delta * w[:, None]
        self.m2 = self.m2 + m2_b + delta.pow(2).sum(1) * n_a * w
        self.count = self.count + n_b

    def merge(self, other: ClassCenterStats) -> ClassCenterStats:
        """A new accumulator holding the pooled statistics of ``self`` and ``other``."""
        out = ClassCenterStats(self.num_classes, self.ignore_index)
        for s in (self, other):
            if s.mean is not None:
                out._merge(s.count, s.mean, s.m2)
        return out

    @property
    def present(self) -> torch.Tensor:
        """``(C,)`` bool, classes with at least one pixel."""
        return self.count > 0

    def intra(self) -> torch.Tensor:
        """``(C,)`` mean squared distance to the centre ``(1/|S_i|) sum ||x - mu_i||^2`` (nan if absent)."""
        out = self.m2 / self.count.clamp(min=1).double()
        out[~self.present] = float("nan")
        return out

    def ccd(self) -> torch.Tensor:
        """``(C,)`` CCD per class (``nan`` for absent classes); see :func:`ccd_from_stats`."""
        if self.mean is None:
            return torch.full((self.num_classes,), float("nan"), dtype=torch.float64)
        return ccd_from_stats(self.count, self.mean, self.m2 / self.count.clamp(min=1).double())


def ccd_from_stats(count: torch.Tensor, centers: torch.Tensor, intra: torch.Tensor) -> torch.Tensor:
    """CCD per class from class statistics.

    Args:
        count: ``(C,)`` pixels per class; classes with 0 are excluded.
        centers: ``(C, D)`` class centres ``mu_i``.
        intra: ``(C,)`` mean squared distance of a class's pixels to its centre.
    Returns:
        ``(C,)`` float64: ``1/(K-1) * sum_{j != i, present} intra_i / ||mu_i - mu_j||^2``
        with ``K`` the number of present classes; ``nan`` for absent classes and
        for every class when fewer than 2 are present; ``inf`` if two centres coincide.
    """
    present = count > 0
    k = int(present.sum())
    out = torch.full(count.shape, float("nan"), dtype=torch.float64)
    if k < 2:
        return out
    mu = centers.double()
    d2 = torch.cdist(mu, mu).pow(2)
    pair = present[:, None] & present[None, :] & ~torch.eye(len(count), dtype=torch.bool)
    ratio = torch.where(pair, intra.double()[:, None] / d2, torch.zeros_like(d2))
    out[present] = ratio.sum(1)[present] / (k - 1)
    return out


@dataclass
class CCDResult:
    """CCD per domain and class.

    Attributes:
        ccd: ``{domain: (C,) float64}`` (``nan`` for absent / excluded classes).
        count: ``{domain: (C,) int64}`` pixels per class.
        class_ids: train IDs that entered the computation.
        embedding: which features were measured.
    """

    ccd: dict[str, torch.Tensor]
    count: dict[str, torch.Tensor]
    class_ids: tuple[int, ...] = tuple(range(NUM_CLASSES))
    embedding: str = "feat"
    stats: dict[str, ClassCenterStats] = field(default_factory=dict, repr=False)

    def mean(self, domain: str) -> float:
        """Mean CCD over the present classes of ``domain`` (``nan`` if none)."""
        v = self.ccd[domain][list(self.class_ids)]
        v = v[torch.isfinite(v)]
        return float(v.mean()) if v.numel() else float("nan")

    def to_dict(self) -> dict[str, dict]:
        """``{domain: {"per_class": {name: ccd | None}, "mean": float, "pixels": {name: n}}}``."""
        out = {}
        for dom, vals in self.ccd.items():
            per = {}
            for i in self.class_ids:
                v = float(vals[i])
                per[CLASSES[i]] = None if v != v else v  # nan -> None for JSON
            out[dom] = {
                "per_class": per,
                "mean": self.mean(dom),
                "pixels": {CLASSES[i]: int(self.count[dom][i]) for i in self.class_ids},
            }
        return out

    def to_frame(self):
        """Long pandas DataFrame with columns ``domain, class, train_id, ccd, pixels``."""
        import pandas as pd

        rows = [
            {
                "domain": dom,
                "class": CLASSES[i],
                "train_id": i,
                "ccd": float(vals[i]),
                "pixels": int(self.count[dom][i]),
            }
            for dom, vals in self.ccd.items()
            for i in self.class_ids
        ]
        return pd.DataFrame(rows)

    def to_markdown(self, title: str = "") -> str:
        """One row per class and a last row with the mean, one column per domain (so the
        table stays narrow); absent classes show :data:`~pipa_core.eval.metrics.ABSENT`."""
        domains = list(self.ccd)
        lines = [f"**{title}**", ""] if title else []
        lines += ["| class | " + " | ".join(domains) + " |", "|---" * (len(domains) + 1) + "|"]
        for i in self.class_ids:
            cells = [format_value(float(self.ccd[d][i]), 3) for d in domains]
            lines.append(f"| {CLASSES[i]} | " + " | ".join(cells) + " |")
        means = [format_value(self.mean(d), 3) for d in domains]
        lines.append("| **mean** | " + " | ".join(f"**{m}**" for m in means) + " |")
        return "\n".join(lines)


def class_center_distance(
    model: nn.Module,
    loaders: Mapping[str, Iterable | Dataset] | Iterable | Dataset,
    *,
    embedding: str = "feat",
    classes: str | Sequence[int] | None = None,
    pooled: bool = True,
    normalize: bool = False,
    max_batches: int | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    batch_size: int = 2,
) -> CCDResult:
    """CCD of a segmentor's pixel features, per domain, streamed over whole loaders.

    Args:
        model: segmentor returning ``{"feat", ...}`` (see :mod:`pipa_core.eval.features`).
        loaders: ``{"source": ..., "target": ...}`` loaders or datasets of labelled samples.
        embedding: ``"feat"`` or a projection head name (``"pixel"``, ...).
        classes: protocol name or train IDs; other classes are left out entirely
            (neither a centre nor a term of the sum). ``None`` = all 19.
        pooled: also report the pooled statistics of all domains under ``"all"``.
        max_batches: batches per domain (SPCL uses 1000 images per domain).
    Returns:
        :class:`CCDResult`.
    """
    if not isinstance(loaders, Mapping):
        loaders = {"data": loaders}
    keep = _class_filter(classes)
    class_ids = (
        tuple(range(NUM_CLASSES)) if keep is None else tuple(keep.nonzero().flatten().tolist())
    )
    stats: dict[str, ClassCenterStats] = {}
    for name, loader in loaders.items():
        acc = ClassCenterStats()
        for emb, lab in iter_pixel_embeddings(
            model,
            loader,
            embedding=embedding,
            normalize=normalize,
            max_batches=max_batches,
            device=device,
            progress=progress,
            desc=f"CCD · {name}",
            batch_size=batch_size,
        ):
            acc.update(*flatten_pixels(emb, lab, keep))
        if not acc.present.any():
            raise ValueError(f"domain {name!r}: no labelled pixel of the chosen classes was found")
        stats[name] = acc
    if pooled and len(stats) > 1:
        total = ClassCenterStats()
        for s in stats.values():
            total = total.merge(s)
        stats[POOLED] = total
    return CCDResult(
        ccd={k: s.ccd() for k, s in stats.items()},
        count={k: s.count.clone() for k, s in stats.items()},
        class_ids=class_ids,
        embedding=embedding,
        stats=stats,
    )
