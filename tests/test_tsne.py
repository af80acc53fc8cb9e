"""t-SNE: the scikit-learn reference, openTSNE, and the shared map (fit on one set, place others).

Real computations on well-separated Gaussian clusters in 64-d (a few hundred
points, a few seconds in all).
"""

import importlib

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from pipa_core.eval.features import PixelEmbeddings
from pipa_core.eval.tsne import (
    TSNEMap,
    TSNEResult,
    concat_results,
    fit_map,
    opentsne_available,
    tsne,
)
from pipa_core.viz import tsne_scatter

C, N_PER, D = 4, 40, 64
FAST = dict(perplexity=15, max_iter=300, pca_dims=10)


def _clusters(seed=0, n_per=N_PER, shift=0.0, centres=None):
    """``(x (C*n_per, D) float32, y, centres)``: unit Gaussians around centres 4 sigma apart."""
    rng = np.random.default_rng(seed)
    if centres is None:
        centres = np.random.default_rng(100).normal(size=(C, D)) * 4
    x = np.concatenate([centres[c] + shift + rng.normal(size=(n_per, D)) for c in range(C)])
    return x.astype(np.float32), np.repeat(np.arange(C), n_per), centres


def _nearest_centroid_accuracy(ref: TSNEResult, placed: TSNEResult) -> float:
    """Fraction of placed points whose nearest reference class centroid (in 2-D) is their class."""
    classes = np.unique(ref.labels)
    cent = np.stack([ref.coords[ref.labels == c].mean(0) for c in classes])
    pred = classes[((placed.coords[:, None] - cent[None]) ** 2).sum(-1).argmin(1)]
    return float((pred == placed.labels).mean())


def _two_domain_embeddings(seed=0) -> PixelEmbeddings:
    xs, ys, centres = _clusters(seed)
    xt, yt, _ = _clusters(seed + 1, n_per=25, shift=0.5, centres=centres)  # shifted "target"
    return PixelEmbeddings(
        torch.from_numpy(np.concatenate([xs, xt])),
        torch.from_numpy(np.concatenate([ys, yt])),
        torch.cat([torch.zeros(len(ys), dtype=torch.long), torch.ones(len(yt), dtype=torch.long)]),
        ("source", "target"),
    )


def test_opentsne_is_a_regular_dependency():
    assert opentsne_available()


# ----------------------------------------------------------------------------- scikit-learn


def test_tsne_separates_clusters_and_is_seeded():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16)) * 10
    x = np.concatenate([centres[c] + rng.normal(size=(20, 16)) for c in range(3)]).astype(
        np.float32
    )
    y = np.repeat(np.arange(3), 20)
    r = tsne(x, labels=y, perplexity=10, max_iter=300, seed=0)
    assert r.coords.shape == (60, 2) and r.backend == "sklearn"
    assert r.placed is not None and not r.placed.any()
    # nearest neighbour of each point in 2-D has its class
    d = ((r.coords[:, None] - r.coords[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    assert (y[d.argmin(1)] == y).mean() > 0.95
    r2 = tsne(x, labels=y, perplexity=10, max_iter=300, seed=0)
    assert np.allclose(r.coords, r2.coords)
    with pytest.raises(ValueError, match="at least 5"):
        tsne(x[:3], labels=y[:3])


def test_tsne_opentsne_request_falls_back_with_warning(monkeypatch):
    """A broken openTSNE install (simulated) falls back to sklearn for a plain fit."""
    # the package re-exports the function ``tsne``, which shadows the module attribute
    tsne_mod = importlib.import_module("pipa_core.eval.tsne")
    monkeypatch.setattr(tsne_mod, "opentsne_available", lambda: False)
    x = np.random.default_rng(0).normal(size=(12, 4))
    with pytest.warns(UserWarning, match="openTSNE"):
        r = tsne(x, labels=np.zeros(12, int), backend="opentsne", max_iter=250)
    assert r.backend == "sklearn" and r.perplexity == pytest.approx(11 / 3)
    # the shared map has no fallback: sklearn cannot place points
    with pytest.raises(ImportError, match="openTSNE"):
        fit_map(x, labels=np.zeros(12, int))


# ----------------------------------------------------------------------------- openTSNE


def test_opentsne_backend_separates_clusters_and_is_seeded():
    x, y, _ = _clusters()
    r = tsne(x, labels=y, backend="opentsne", seed=3, **FAST)
    assert r.backend == "opentsne" and r.coords.shape == (len(y), 2)
    d = ((r.coords[:, None] - r.coords[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    assert (y[d.argmin(1)] == y).mean() > 0.95
    assert np.array_equal(r.coords, tsne(x, labels=y, backend="opentsne", seed=3, **FAST).coords)


# ----------------------------------------------------------------------------- shared map


def test_shared_map_places_target_next_to_its_source_class():
    emb = _two_domain_embeddings()
    src, tgt = emb.subset(emb.domains == 0), emb.subset(emb.domains == 1)
    m = fit_map(src, seed=0, **FAST)
    assert isinstance(m, TSNEMap) and m.in_dims == D and m.pca.n_components_ == 10
    assert m.reference.domain_names == ("source", "target")
    assert not m.reference.placed.any() and m.reference.coords.shape == (len(src), 2)
    placed = m.transform(tgt)
    assert placed.backend == "opentsne" and placed.placed.all()
    assert (placed.domains == 1).all() and np.array_equal(placed.labels, tgt.labels.numpy())
    assert _nearest_centroid_accuracy(m.reference, placed) > 0.9
    # placed points sit inside the map, not far outside it
    lo, hi = m.reference.coords.min(0), m.reference.coords.max(0)
    span = hi - lo
    assert ((placed.coords > lo - 0.25 * span) & (placed.coords < hi + 0.25 * span)).all()


def test_placing_points_does_not_move_the_reference():
    x, y, centres = _clusters()
    xt, yt, _ = _clusters(7, n_per=20, centres=centres)
    m = fit_map(x, labels=y, **FAST)
    ref = m.reference.coords.copy()
    emb = np.array(m.embedding)
    a = m.transform(xt, labels=yt)
    assert np.array_equal(m.reference.coords, ref)
    assert np.array_equal(np.array(m.embedding), emb)  # openTSNE's in-place re-centring undone
    b = m.transform(xt, labels=yt)
    assert np.array_equal(np.array(m.embedding), emb)
    assert np.allclose(a.coords, b.coords, atol=1e-5)  # same map, same placement
    # placed points do not interact: placing a subset gives the same positions for it
    sub = m.transform(xt[::3], labels=yt[::3])
    assert np.allclose(sub.coords, a.coords[::3], atol=1e-4)


def test_shared_map_is_deterministic_for_a_seed():
    x, y, centres = _clusters()
    xt, yt, _ = _clusters(5, n_per=15, centres=centres)
    m1, m2 = fit_map(x, labels=y, seed=1, **FAST), fit_map(x, labels=y, seed=1, **FAST)
    assert np.array_equal(m1.reference.coords, m2.reference.coords)
    assert np.array_equal(m1.transform(xt, labels=yt).coords, m2.transform(xt, labels=yt).coords)
    m3 = fit_map(x, labels=y, seed=2, **FAST)
    assert not np.allclose(m1.reference.coords, m3.reference.coords)


def test_pca_is_fitted_on_the_reference_only():
    """Target pixels with strong variance off the class subspace: the reference's PCA removes it.

    Class centres live in the first 8 dimensions; the target adds noise (std 20)
    in the other 56. A PCA refitted on reference + target would keep the noise
    directions and lose the classes (the control below shows that it does).
    """
    rng = np.random.default_rng(0)
    centres = np.zeros((C, D))
    centres[:, :8] = rng.normal(size=(C, 8)) * 5
    x, y, _ = _clusters(1, centres=centres)
    xt, yt, _ = _clusters(2, n_per=25, centres=centres)
    xt[:, 8:] += rng.normal(size=(len(xt), D - 8)).astype(np.float32) * 20
    opts = dict(perplexity=15, max_iter=300, seed=0)
    m = fit_map(x, labels=y, pca_dims=8, **opts)
    ref_pca = PCA(n_components=8, random_state=0).fit(x)
    assert np.allclose(m.pca.components_, ref_pca.components_, atol=1e-4)
    assert _nearest_centroid_accuracy(m.reference, m.transform(xt, labels=yt)) > 0.9

    # control: PCA fitted on the union of both sets places the target at chance level
    union = PCA(n_components=8, random_state=0).fit(np.concatenate([x, xt]))
    mu = fit_map(union.transform(x), labels=y, pca_dims=None, **opts)
    wrong = mu.transform(union.transform(xt), labels=yt)
    assert _nearest_centroid_accuracy(mu.reference, wrong) < 0.7


def test_tsne_fit_on_source_equals_fit_map_then_transform():
    emb = _two_domain_embeddings()
    r = tsne(emb, fit_on="source", seed=0, **FAST)
    assert r.backend == "opentsne" and r.domain_names == ("source", "target")
    assert np.array_equal(r.placed, emb.domains.numpy() == 1)  # original order kept
    assert np.array_equal(r.labels, emb.labels.numpy())
    m = fit_map(emb.subset(emb.domains == 0), seed=0, **FAST)
    assert np.allclose(r.coords[~r.placed], m.reference.coords)
    assert np.allclose(r.coords[r.placed], m.transform(emb.subset(emb.domains == 1)).coords)
    assert _nearest_centroid_accuracy(m.reference, m.transform(emb.subset(emb.domains == 1))) > 0.9
    d = r.to_dict()
    assert d["placed"] == r.placed.tolist() and len(d["coords"]) == len(emb)


def test_two_checkpoints_in_one_map_with_merged_domains():
    """Fit on checkpoint A's pixels, place checkpoint B's features of the same pixels."""
    emb_a = _two_domain_embeddings()
    feats_b = emb_a.feats + 0.3 * torch.randn(
        emb_a.feats.shape, generator=torch.Generator().manual_seed(0)
    )
    emb_b = PixelEmbeddings(feats_b, emb_a.labels, emb_a.domains, emb_a.domain_names)
    m = fit_map(emb_a, **FAST)
    b = m.transform(emb_b)
    assert b.domain_names == emb_a.domain_names
    assert _nearest_centroid_accuracy(m.reference, b) > 0.9
    both = m.transform(emb_b, include_reference=True)
    assert len(both) == 2 * len(emb_a) and both.placed.sum() == len(emb_a)
    assert np.allclose(both.coords[: len(emb_a)], m.reference.coords)
    # a raw array gets domain 0 of the reference's names; other names are merged by name
    extra = TSNEResult(b.coords[:3], b.labels[:3], np.zeros(3, int), ("video",), "opentsne", 5.0)
    merged = concat_results(m.reference, extra)
    assert merged.domain_names == ("source", "target", "video")
    assert (merged.domains[-3:] == 2).all() and not merged.placed.any()


def test_tsne_scatter_draws_placed_points_hollow_on_shared_axes():
    emb = _two_domain_embeddings()
    m = fit_map(emb.subset(emb.domains == 0), **FAST)
    placed = m.transform(emb.subset(emb.domains == 1))
    fig = tsne_scatter({"fitted": m.reference, "placed": placed})
    axes = [ax for ax in fig.axes if ax.get_title()]
    assert axes[0].get_xlim() == axes[1].get_xlim()  # one coordinate system: shared axes
    filled = [
        len(c.get_facecolor()) > 0 and c.get_facecolor()[0][3] > 0 for c in axes[0].collections
    ]
    hollow = [
        len(c.get_facecolor()) == 0 or c.get_facecolor()[0][3] == 0 for c in axes[1].collections
    ]
    assert all(filled) and all(hollow) and len(axes[1].collections) == C
    assert "placed into the map" in [t.get_text() for t in fig.legends[0].get_texts()]
    plt.close(fig)


# ----------------------------------------------------------------------------- errors


def test_bad_input_gives_clear_errors():
    x, y, _ = _clusters(n_per=5)
    with pytest.raises(ValueError, match="at least 5 reference points"):
        fit_map(np.zeros((0, D), np.float32), labels=np.zeros(0, int))
    with pytest.raises(ValueError, match="labels"):
        fit_map(x)
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        fit_map(x, labels=y[:-1])
    with pytest.raises(ValueError, match="NaN"):
        bad = x.copy()
        bad[0, 0] = np.nan
        fit_map(bad, labels=y)
    m = fit_map(x, labels=y, perplexity=5, max_iter=250, pca_dims=10)
    with pytest.raises(ValueError, match="dimension 32.*64-dimensional"):
        m.transform(x[:, :32], labels=y)
    with pytest.raises(ValueError, match="no points to place"):
        m.transform(x[:0], labels=y[:0])
    emb = _two_domain_embeddings()
    with pytest.raises(ValueError, match="fit_on must name domains"):
        tsne(emb, fit_on="validation")
    with pytest.raises(ValueError, match="backend='opentsne'"):
        tsne(emb, fit_on="source", backend="sklearn")
    with pytest.raises(ValueError, match="backend must be"):
        tsne(x, labels=y, backend="umap")
