"""2-D t-SNE of sampled pixel embeddings (the "Figure 4" plots of PiPa and SPCL).

t-SNE (van der Maaten & Hinton, 2008) places points in 2-D so that pixels
that are neighbours in feature space stay neighbours. Read the plot for
*clusters*: compact, well-separated colour blobs mean discriminative features;
source and target markers mixing inside a blob mean the domains are aligned.
Distances between far-apart clusters and cluster sizes carry little meaning.

We follow the usual recipe: optional PCA to 50 dimensions (denoises and
speeds up), then sklearn ``TSNE(init="pca")`` (stable, deterministic layout
for a fixed seed). ``backend="opentsne"`` uses openTSNE (``pip install
openTSNE``; much faster for more than ~10k points) when it is installed.
"""

from __future__ import annotations

import importlib.util
import inspect
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from pipa_core.eval.features import PixelEmbeddings


@dataclass
class TSNEResult:
    """2-D coordinates with the class and domain of each point.

    Attributes:
        coords: ``(N, 2)`` float array.
        labels: ``(N,)`` int train IDs.
        domains: ``(N,)`` int index into ``domain_names``.
        domain_names: e.g. ``("source", "target")``.
        backend: ``"sklearn"`` or ``"opentsne"``; perplexity: the value used.
    """

    coords: np.ndarray
    labels: np.ndarray
    domains: np.ndarray
    domain_names: tuple[str, ...]
    backend: str
    perplexity: float

    def to_dict(self) -> dict:
        """JSON-able form (lists)."""
        return {
            "coords": self.coords.tolist(),
            "labels": self.labels.tolist(),
            "domains": self.domains.tolist(),
            "domain_names": list(self.domain_names),
            "backend": self.backend,
            "perplexity": self.perplexity,
        }


def opentsne_available() -> bool:
    """Whether the optional openTSNE package is importable."""
    return importlib.util.find_spec("openTSNE") is not None


def _resolve_backend(backend: str) -> str:
    if backend not in ("auto", "sklearn", "opentsne"):
        raise ValueError(f"backend must be 'auto', 'sklearn' or 'opentsne', got {backend!r}")
    if backend == "auto":
        return "opentsne" if opentsne_available() else "sklearn"
    if backend == "opentsne" and not opentsne_available():
        warnings.warn(
            "openTSNE is not installed (pip install 'pipa-core[fast-tsne]'); using sklearn's TSNE",
            stacklevel=3,
        )
        return "sklearn"
    return backend


def tsne(
    emb: PixelEmbeddings | torch.Tensor | np.ndarray,
    *,
    perplexity: float = 30.0,
    pca_dims: int | None = 50,
    max_iter: int = 1000,
    seed: int = 0,
    backend: str = "sklearn",
    labels: np.ndarray | None = None,
    domains: np.ndarray | None = None,
    domain_names: tuple[str, ...] = ("data",),
    threads: int | None = 1,
) -> TSNEResult:
    """Embed features in 2-D with t-SNE.

    Args:
        emb: :class:`PixelEmbeddings` or a raw ``(N, D)`` array (then give ``labels``).
        perplexity: effective neighbourhood size; lowered to ``(N - 1) / 3`` for tiny N.
        pca_dims: reduce to this many dimensions with PCA first (``None`` = off).
        max_iter: optimisation iterations (>= 250).
        seed: fixes PCA, initialisation and optimisation.
        backend: ``"sklearn"``, ``"opentsne"`` (falls back to sklearn with a warning if
            it is not installed) or ``"auto"``.
        threads: OpenMP / BLAS threads (``None``: the libraries' default, all cores). One
            by default: on a shared or busy CPU, more threads than free cores make
            sklearn's Barnes-Hut t-SNE 100x slower (measured: 60 points, 0.1 s with 1
            thread, 20 s with 2 on a loaded 2-core machine). Raise it on a free many-core box.
    Returns:
        :class:`TSNEResult` with ``coords (N, 2)``.
    """
    if isinstance(emb, PixelEmbeddings):
        x = emb.feats.numpy()
        labels = emb.labels.numpy()
        domains = emb.domains.numpy()
        domain_names = emb.domain_names
    else:
        x = emb.detach().cpu().numpy() if isinstance(emb, torch.Tensor) else np.asarray(emb)
        if labels is None:
            raise ValueError("pass labels (N,) with a raw feature array")
        labels = np.asarray(labels)
        domains = np.zeros(len(x), dtype=np.int64) if domains is None else np.asarray(domains)
    if x.ndim != 2 or len(x) != len(labels):
        raise ValueError(f"features must be (N, D) with N labels, got {x.shape} and {len(labels)}")
    n = len(x)
    if n < 5:
        raise ValueError(f"t-SNE needs at least 5 points, got {n}; sample more pixels per class")
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=threads):
        coords, which, perp = _fit(
            x.astype(np.float32), perplexity, pca_dims, max_iter, seed, backend, threads
        )
    return TSNEResult(
        coords.astype(np.float32),
        labels.astype(np.int64),
        domains.astype(np.int64),
        tuple(domain_names),
        which,
        perp,
    )


def _fit(x, perplexity, pca_dims, max_iter, seed, backend, threads):
    """PCA (optional) then t-SNE of ``x (N, D)``; returns ``(coords (N, 2), backend, perplexity)``."""
    n = len(x)
    if pca_dims is not None and x.shape[1] > pca_dims and n > pca_dims:
        from sklearn.decomposition import PCA

        x = PCA(n_components=pca_dims, random_state=seed).fit_transform(x).astype(np.float32)
    perp = float(min(perplexity, (n - 1) / 3.0))
    which = _resolve_backend(backend)
    if which == "opentsne":
        from openTSNE import TSNE as OpenTSNE

        iters = "n_iter" if "n_iter" in inspect.signature(OpenTSNE).parameters else "max_iter"
        model = OpenTSNE(
            n_components=2,
            perplexity=perp,
            initialization="pca",
            random_state=seed,
            n_jobs=threads or -1,
            **{iters: max_iter},
        )
        coords = np.asarray(model.fit(x))
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
            **{iters: max(250, max_iter)},
        ).fit_transform(x)
    return coords, which, perp
