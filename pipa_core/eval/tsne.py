"""2-D t-SNE of sampled pixel embeddings (the "Figure 4" plots of PiPa and SPCL).

t-SNE (van der Maaten & Hinton, 2008) places points in 2-D so that pixels
that are neighbours in feature space stay neighbours. Read the plot for
*clusters*: compact, well-separated colour blobs mean discriminative features;
source and target markers mixing inside a blob mean the domains are aligned.
Distances between far-apart clusters and cluster sizes carry little meaning.
The plot is a picture only: the class center distance (:mod:`pipa_core.eval.ccd`)
is computed on the features themselves, never on these coordinates.

Two backends:

* ``backend="sklearn"`` (the reference): optional PCA to 50 dimensions (denoises
  and speeds up), then scikit-learn's ``TSNE(init="pca")``: a stable,
  deterministic layout for a fixed seed, one independent map per call.
* ``backend="opentsne"``: openTSNE (a regular dependency), much faster for more
  than ~10k points (FFT-accelerated gradients), and the only backend that can
  **place new points into a fitted map**.

Shared map (openTSNE): :func:`fit_map` fits the layout on a reference set (e.g.
the source pixels, or one checkpoint's pixels) and returns a :class:`TSNEMap`;
:meth:`TSNEMap.transform` places other features (the target pixels, or another
checkpoint's features of the same images) into that fixed map with openTSNE's
``TSNEEmbedding.transform``: each new point is optimised against the reference
points only, which do not move. PCA, when used, is fitted on the reference and
applied unchanged to every placed set, so all points share one coordinate
system. ``tsne(emb, fit_on="source")`` does both steps in one call.
"""

from __future__ import annotations

import importlib.util
import inspect
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pipa_core.eval.features import PixelEmbeddings

#: Iterations of early exaggeration in an openTSNE fit (openTSNE's default), at most
#: half of ``max_iter``; the rest run at exaggeration 1, so both backends run
#: ``max_iter`` iterations in total.
_OPENTSNE_EARLY_ITERS = 250


@dataclass
class TSNEResult:
    """2-D coordinates with the class and domain of each point.

    Attributes:
        coords: ``(N, 2)`` float array.
        labels: ``(N,)`` int train IDs.
        domains: ``(N,)`` int index into ``domain_names``.
        domain_names: e.g. ``("source", "target")``.
        backend: ``"sklearn"`` or ``"opentsne"``; perplexity: the value used to fit the
            map (for placed points: the map's, see :meth:`TSNEMap.transform`).
        placed: ``(N,)`` bool, True where the point was placed into a fitted map
            (:meth:`TSNEMap.transform`) rather than being part of the fit; all False
            for a plain :func:`tsne`. ``None`` in results built by hand (= all fitted).
    """

    coords: np.ndarray
    labels: np.ndarray
    domains: np.ndarray
    domain_names: tuple[str, ...]
    backend: str
    perplexity: float
    placed: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def to_dict(self) -> dict:
        """JSON-able form (lists)."""
        return {
            "coords": self.coords.tolist(),
            "labels": self.labels.tolist(),
            "domains": self.domains.tolist(),
            "domain_names": list(self.domain_names),
            "backend": self.backend,
            "perplexity": self.perplexity,
            "placed": None if self.placed is None else self.placed.tolist(),
        }


def opentsne_available() -> bool:
    """Whether openTSNE is importable (a regular dependency; False only on a broken install)."""
    return importlib.util.find_spec("openTSNE") is not None


def _resolve_backend(backend: str) -> str:
    if backend not in ("auto", "sklearn", "opentsne"):
        raise ValueError(f"backend must be 'auto', 'sklearn' or 'opentsne', got {backend!r}")
    if backend == "auto":
        return "opentsne" if opentsne_available() else "sklearn"
    if backend == "opentsne" and not opentsne_available():
        warnings.warn(
            "openTSNE is not installed (pip install openTSNE); using sklearn's TSNE",
            stacklevel=3,
        )
        return "sklearn"
    return backend


def _require_opentsne() -> None:
    if not opentsne_available():
        raise ImportError(
            "the shared t-SNE map needs openTSNE (pip install openTSNE): scikit-learn's "
            "TSNE cannot place new points into a fitted map"
        )


def _as_arrays(
    emb: PixelEmbeddings | torch.Tensor | np.ndarray,
    labels: np.ndarray | None,
    domains: np.ndarray | None,
    domain_names: Sequence[str] | None,
    what: str = "features",
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]:
    """``(x (N, D) float32, labels (N,), domains (N,), domain_names)``, validated."""
    if isinstance(emb, PixelEmbeddings):
        x = emb.feats.detach().cpu().numpy()
        labels = emb.labels.numpy()
        domains = emb.domains.numpy()
        domain_names = emb.domain_names
    else:
        x = emb.detach().cpu().numpy() if isinstance(emb, torch.Tensor) else np.asarray(emb)
        if labels is None:
            raise ValueError(f"pass labels (N,) with a raw {what} array")
        labels = np.asarray(labels)
        domains = np.zeros(len(x), dtype=np.int64) if domains is None else np.asarray(domains)
    domain_names = tuple(domain_names) if domain_names is not None else ("data",)
    if x.ndim != 2 or len(x) != len(labels) or len(domains) != len(labels):
        raise ValueError(
            f"{what} must be (N, D) with N labels and N domains, got {x.shape}, "
            f"{len(labels)} labels and {len(domains)} domains"
        )
    if len(domains) and (domains.min() < 0 or domains.max() >= len(domain_names)):
        raise ValueError(
            f"domain indices must lie in [0, {len(domain_names)}) for domain_names "
            f"{domain_names}, got {domains.min()}..{domains.max()}"
        )
    x = x.astype(np.float32, copy=False)
    if len(x) and not np.isfinite(x).all():
        raise ValueError(f"{what} contain NaN or inf")
    return x, labels.astype(np.int64), domains.astype(np.int64), domain_names


def _fit_pca(x: np.ndarray, pca_dims: int | None, seed: int):
    """PCA to ``pca_dims`` fitted on ``x`` (None when off or when ``x`` is already small)."""
    n, d = x.shape
    if pca_dims is None or d <= pca_dims or n <= pca_dims:
        return None
    from sklearn.decomposition import PCA

    return PCA(n_components=pca_dims, random_state=seed).fit(x)


def _apply_pca(pca, x: np.ndarray) -> np.ndarray:
    return x if pca is None else pca.transform(x).astype(np.float32)


def tsne(
    emb: PixelEmbeddings | torch.Tensor | np.ndarray,
    *,
    perplexity: float = 30.0,
    pca_dims: int | None = 50,
    max_iter: int = 1000,
    seed: int = 0,
    backend: str | None = None,
    labels: np.ndarray | None = None,
    domains: np.ndarray | None = None,
    domain_names: tuple[str, ...] = ("data",),
    threads: int | None = 1,
    fit_on: str | Sequence[str] | None = None,
) -> TSNEResult:
    """Embed features in 2-D with t-SNE.

    Args:
        emb: :class:`PixelEmbeddings` or a raw ``(N, D)`` array (then give ``labels``).
        perplexity: effective neighbourhood size; lowered to ``(N - 1) / 3`` for tiny N.
        pca_dims: reduce to this many dimensions with PCA first (``None`` = off).
        max_iter: optimisation iterations in total (raised to 250 if lower; the first 250
            are early exaggeration with sklearn, 125 to 250 with openTSNE).
        seed: fixes PCA, initialisation and optimisation.
        backend: ``"sklearn"`` (the reference), ``"opentsne"`` (falls back to sklearn with
            a warning if it is not importable) or ``"auto"``; ``None`` (default) is
            ``"sklearn"``, or ``"opentsne"`` when ``fit_on`` is given.
        threads: OpenMP / BLAS threads (``None``: the libraries' default, all cores). One
            by default: on a shared or busy CPU, more threads than free cores make
            sklearn's Barnes-Hut t-SNE 100x slower (measured: 60 points, 0.1 s with 1
            thread, 20 s with 2 on a loaded 2-core machine). Raise it on a free many-core box.
        fit_on: domain name(s) (e.g. ``"source"``) to fit the map on; the other points are
            placed into it with :meth:`TSNEMap.transform` (openTSNE only). ``None``: one
            joint fit of all points.
    Returns:
        :class:`TSNEResult` with ``coords (N, 2)`` in the order of ``emb``; ``placed``
        marks the points placed into the map (all False without ``fit_on``).
    """
    x, labels, domains, domain_names = _as_arrays(emb, labels, domains, domain_names)
    max_iter = max(250, max_iter)
    if fit_on is not None:
        opts = dict(perplexity=perplexity, pca_dims=pca_dims, max_iter=max_iter, seed=seed)
        return _tsne_fit_on(x, labels, domains, domain_names, fit_on, backend, threads, **opts)
    n = len(x)
    if n < 5:
        raise ValueError(f"t-SNE needs at least 5 points, got {n}; sample more pixels per class")
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=threads):
        x = _apply_pca(_fit_pca(x, pca_dims, seed), x)
        coords, which, perp = _fit(x, perplexity, max_iter, seed, backend or "sklearn", threads)
    return TSNEResult(
        np.asarray(coords, dtype=np.float32),
        labels,
        domains,
        tuple(domain_names),
        which,
        perp,
        np.zeros(n, dtype=bool),
    )


def _tsne_fit_on(x, labels, domains, domain_names, fit_on, backend, threads, **opts) -> TSNEResult:
    if backend not in (None, "opentsne", "auto"):
        raise ValueError(
            f"fit_on needs backend='opentsne' (got {backend!r}): scikit-learn's TSNE cannot "
            "place new points into a fitted map"
        )
    names = (fit_on,) if isinstance(fit_on, str) else tuple(fit_on)
    unknown = [n for n in names if n not in domain_names]
    if not names or unknown:
        raise ValueError(f"fit_on must name domains among {domain_names}, got {fit_on!r}")
    ref = np.isin(domains, [domain_names.index(n) for n in names])
    tmap = fit_map(
        x[ref],
        labels=labels[ref],
        domains=domains[ref],
        domain_names=domain_names,
        threads=threads,
        **opts,
    )
    coords = np.empty((len(x), 2), dtype=np.float32)
    coords[ref] = tmap.reference.coords
    if (~ref).any():
        placed = tmap.transform(
            x[~ref], labels=labels[~ref], domains=domains[~ref], domain_names=domain_names
        )
        coords[~ref] = placed.coords
    return TSNEResult(
        coords, labels, domains, tuple(domain_names), "opentsne", tmap.perplexity, ~ref
    )


def _opentsne_model(perplexity: float, max_iter: int, seed: int, threads: int | None):
    from openTSNE import TSNE as OpenTSNE

    early = min(_OPENTSNE_EARLY_ITERS, max_iter // 2)
    iters = "n_iter" if "n_iter" in inspect.signature(OpenTSNE).parameters else "max_iter"
    return OpenTSNE(
        n_components=2,
        perplexity=perplexity,
        initialization="pca",
        early_exaggeration_iter=early,
        random_state=seed,
        n_jobs=threads or -1,
        verbose=False,
        **{iters: max_iter - early},
    )


def _fit(x, perplexity, max_iter, seed, backend, threads):
    """t-SNE of ``x (N, D)`` (already reduced); returns ``(coords (N, 2), backend, perplexity)``."""
    n = len(x)
    perp = float(min(perplexity, (n - 1) / 3.0))
    which = _resolve_backend(backend)
    if which == "opentsne":
        coords = np.asarray(_opentsne_model(perp, max_iter, seed, threads).fit(x))
    else:
        from sklearn.manifold import TSNE

        # scikit-learn renamed n_iter to max_iter in 1.5; accept both.
        iters = "max_iter" if "max_iter" in inspect.signature(TSNE).parameters else "n_iter"
        coords = TSNE(
            n_components=2,
            perplexity=perp,
            init="pca",
            learning_rate="auto",
            random_state=seed,
            **{iters: max_iter},
        ).fit_transform(x)
    return coords, which, perp


@dataclass
class TSNEMap:
    """A t-SNE layout fitted on reference features, into which other features can be placed.

    Build it with :func:`fit_map`. The reference points never move: every
    :meth:`transform` optimises the new points against them only.

    Attributes:
        reference: the fitted points as a :class:`TSNEResult` (``placed`` all False).
        embedding: the openTSNE ``TSNEEmbedding`` (reference coordinates + affinities).
        pca: the scikit-learn ``PCA`` fitted on the reference, or ``None`` (no reduction).
        in_dims: feature dimension ``D`` the map accepts.
        perplexity: the perplexity the map was fitted with; seed: its seed.
        threads: threads used when placing points.
    """

    reference: TSNEResult
    embedding: Any
    pca: Any
    in_dims: int
    perplexity: float
    seed: int
    threads: int | None = 1
    _n_ref: int = field(default=0, repr=False)

    def transform(
        self,
        other: PixelEmbeddings | torch.Tensor | np.ndarray,
        *,
        labels: np.ndarray | None = None,
        domains: np.ndarray | None = None,
        domain_names: tuple[str, ...] | None = None,
        perplexity: float = 5.0,
        max_iter: int = 250,
        include_reference: bool = False,
        **opentsne_kwargs,
    ) -> TSNEResult:
        """Place ``other`` into this map (openTSNE ``TSNEEmbedding.transform``).

        The features must live in the same space as the reference (same ``D``, and
        for a meaningful picture the same network or checkpoints of one run): the
        reference's PCA is applied to them unchanged, then each point is initialised
        at the median of its ``k`` nearest reference points and optimised against
        the reference only (new points do not interact with one another, and the
        reference does not move).

        Args:
            other: :class:`PixelEmbeddings` or a raw ``(M, D)`` array (then give ``labels``;
                ``domains`` default to 0 and ``domain_names`` to the reference's).
            perplexity: neighbourhood size among the *reference* points (openTSNE's
                default for adding points, 5; lowered to ``(N_ref - 1) / 3``).
            max_iter: optimisation iterations for the placed points (openTSNE's 250).
            include_reference: prepend the reference points (``placed`` False) to the
                result, with the domain names of both merged.
            **opentsne_kwargs: passed to ``TSNEEmbedding.transform`` (``k``,
                ``learning_rate``, ``initialization``, ...).
        Returns:
            :class:`TSNEResult` of the placed points (``placed`` True) in the map's
            coordinates; its ``perplexity`` is the map's.
        """
        x, labels, domains, names = _as_arrays(
            other,
            labels,
            domains,
            domain_names if domain_names is not None else self.reference.domain_names,
            what="features to place",
        )
        if len(x) == 0:
            raise ValueError("no points to place into the t-SNE map (empty features)")
        if x.shape[1] != self.in_dims:
            raise ValueError(
                f"features to place have dimension {x.shape[1]}, the map was fitted on "
                f"{self.in_dims}-dimensional features"
            )
        perp = float(min(perplexity, (self._n_ref - 1) / 3.0))
        from threadpoolctl import threadpool_limits

        before = np.array(self.embedding)
        with threadpool_limits(limits=self.threads):
            placed = self.embedding.transform(
                _apply_pca(self.pca, x), perplexity=perp, n_iter=max_iter, **opentsne_kwargs
            )
        # openTSNE's transform re-centres the reference embedding in place (a translation,
        # ~0 here since fit_map centres it the same way). Express the placed points in the
        # map's frame and put the reference back, so it never moves, however often we place.
        drift = np.asarray(self.embedding) - before
        if not np.allclose(drift, drift[:1], atol=1e-6):
            raise RuntimeError("openTSNE moved the reference points while placing new ones")
        self.embedding[...] = before
        coords = (np.asarray(placed) - drift[0]).astype(np.float32)
        res = TSNEResult(
            coords, labels, domains, names, "opentsne", self.perplexity, np.ones(len(x), bool)
        )
        return concat_results(self.reference, res) if include_reference else res


def fit_map(
    reference: PixelEmbeddings | torch.Tensor | np.ndarray,
    *,
    perplexity: float = 30.0,
    pca_dims: int | None = 50,
    max_iter: int = 1000,
    seed: int = 0,
    labels: np.ndarray | None = None,
    domains: np.ndarray | None = None,
    domain_names: tuple[str, ...] = ("data",),
    threads: int | None = 1,
) -> TSNEMap:
    """Fit a t-SNE map (openTSNE) on ``reference``; place other features with :meth:`TSNEMap.transform`.

    Typical uses: fit on the source pixels and place the target pixels
    (``emb.subset(emb.domains == 0)``), or fit on one checkpoint's pixels and
    place another checkpoint's features of the same images, to compare both in
    one coordinate system. Arguments as in :func:`tsne`; PCA (``pca_dims``) is
    fitted here, on the reference only, and reused by every transform.

    Returns:
        :class:`TSNEMap`; ``map.reference`` holds the fitted coordinates.
    """
    _require_opentsne()
    x, labels, domains, domain_names = _as_arrays(reference, labels, domains, domain_names)
    max_iter = max(250, max_iter)
    n = len(x)
    if n < 5:
        raise ValueError(
            f"a t-SNE map needs at least 5 reference points, got {n}; sample more pixels"
        )
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=threads):
        pca = _fit_pca(x, pca_dims, seed)
        perp = float(min(perplexity, (n - 1) / 3.0))
        embedding = _opentsne_model(perp, max_iter, seed, threads).fit(_apply_pca(pca, x))
        # Centre the map on its bounding box, as openTSNE's transform does before placing.
        embedding -= (embedding.max(axis=0) + embedding.min(axis=0)) / 2
    ref = TSNEResult(
        np.array(embedding, dtype=np.float32),
        labels,
        domains,
        domain_names,
        "opentsne",
        perp,
        np.zeros(n, dtype=bool),
    )
    return TSNEMap(ref, embedding, pca, x.shape[1], perp, seed, threads, _n_ref=n)


def concat_results(*results: TSNEResult) -> TSNEResult:
    """Concatenate results that share one coordinate system (e.g. a map's reference and placed points).

    Domain names are merged by name (first occurrence order), so ``source`` of
    one result and ``source`` of another get the same index.
    """
    if not results:
        raise ValueError("no t-SNE result to concatenate")
    names: list[str] = []
    for r in results:
        names += [n for n in r.domain_names if n not in names]
    domains = [
        np.array([names.index(r.domain_names[d]) for d in r.domains], dtype=np.int64)
        for r in results
    ]
    placed = [np.zeros(len(r), bool) if r.placed is None else r.placed for r in results]
    return TSNEResult(
        np.concatenate([r.coords for r in results]).astype(np.float32),
        np.concatenate([r.labels for r in results]),
        np.concatenate(domains),
        tuple(names),
        results[0].backend,
        results[0].perplexity,
        np.concatenate(placed),
    )
