"""Analysis library: feature extraction and balanced sampling, CCD, temporal consistency.

t-SNE is tested in tests/test_tsne.py.

CCD and extraction are checked against cases computed by hand and against a
brute-force computation over all features.
"""

import math

import pytest
import torch
from torch import nn

from pipa_core.eval.ccd import ClassCenterStats, ccd_from_stats, class_center_distance
from pipa_core.eval.features import (
    BottomKSampler,
    downsample_labels,
    extract_pixel_embeddings,
    pixel_embedding,
    sample_per_class,
)
from pipa_core.eval.published import comparison_table, published_for
from pipa_core.eval.temporal import (
    TemporalConsistency,
    evaluate_temporal_consistency,
    sequence_consistency,
)


class StrideTwoSeg(nn.Module):
    """A segmentor whose decoder feature is the image subsampled by 2: features are known exactly.

    ``feat = img[:, :, ::2, ::2]`` (D = 3), logits = a fixed 1x1 conv of it, and a
    ``pixel`` projection head that doubles the feature.
    """

    def __init__(self):
        super().__init__()
        self.cls = nn.Conv2d(3, 19, 1)

    def forward(self, img):
        feat = img[:, :, ::2, ::2]
        return {"logits": self.cls(feat), "feat": feat}

    def project(self, name, feat):
        assert name == "pixel"
        return 2 * feat


def _labelled_batch(label: torch.Tensor) -> dict:
    """Images whose three channels encode the label and the pixel position (all values known)."""
    b, h, w = label.shape
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    img = torch.stack(
        [label.float() / 255.0, (yy / h).expand(b, h, w), (xx / w).expand(b, h, w)], dim=1
    )
    return {"img": img, "label": label}


def test_downsample_labels_nearest_takes_block_top_left():
    lab = torch.arange(64).reshape(1, 8, 8)
    out = downsample_labels(lab, (2, 2))
    assert torch.equal(out, torch.tensor([[[0, 4], [32, 36]]]))
    assert out.dtype == torch.int64


def test_pixel_embedding_feat_head_and_errors():
    m = StrideTwoSeg()
    img = torch.rand(1, 3, 4, 4)
    assert torch.equal(pixel_embedding(m, img, "feat"), img[:, :, ::2, ::2])
    assert torch.equal(pixel_embedding(m, img, "pixel"), 2 * img[:, :, ::2, ::2])
    with pytest.raises(KeyError, match="available"):
        pixel_embedding(m, img, "nonsense")


def test_sample_per_class_balanced_per_domain_and_capped():
    labels = torch.tensor([0] * 50 + [1] * 5 + [2] * 20 + [255] * 7 + [0] * 30 + [1] * 3)
    domains = torch.tensor([0] * 82 + [1] * 33)
    feats = torch.arange(len(labels)).float()[:, None].repeat(1, 4)
    s = sample_per_class(feats, labels, 10, torch.Generator().manual_seed(0), domains=domains)
    # per (domain, class): min(10, size); ignore never sampled
    got = {
        (int(d), int(c)): int(((s.domains == d) & (s.labels == c)).sum())
        for d in (0, 1)
        for c in (0, 1, 2)
    }
    assert got == {(0, 0): 10, (0, 1): 5, (0, 2): 10, (1, 0): 10, (1, 1): 3, (1, 2): 0}
    assert (s.labels != 255).all()
    assert torch.equal(s.feats[:, 0].long(), s.index)  # rows really are the indexed ones
    assert torch.equal(s.labels, labels[s.index]) and len(set(s.index.tolist())) == len(s.index)
    # cap of 20 over 5 non-empty groups (sizes 50,5,20,30,3): quota 4 + the leftover pixels
    c = sample_per_class(
        feats, labels, 10, torch.Generator().manual_seed(0), domains=domains, max_total=20
    )
    assert len(c.index) == 20
    sizes = [
        int(((c.domains == d) & (c.labels == k)).sum())
        for d, k in [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
    ]
    assert sizes[4] == 3 and min(sizes[:4]) >= 4 and max(sizes) <= 5  # small group kept whole
    # same generator seed -> same sample; another seed -> another one
    s2 = sample_per_class(feats, labels, 10, torch.Generator().manual_seed(0), domains=domains)
    s3 = sample_per_class(feats, labels, 10, torch.Generator().manual_seed(1), domains=domains)
    assert torch.equal(s.index, s2.index) and not torch.equal(s.index, s3.index)


def test_sample_per_class_is_uniform_within_a_class():
    labels = torch.zeros(10, dtype=torch.int64)
    feats = torch.zeros(10, 1)
    gen = torch.Generator().manual_seed(0)
    hits = torch.zeros(10)
    for _ in range(600):
        hits[sample_per_class(feats, labels, 3, gen).index] += 1
    # each element is drawn with probability 3/10 -> 180 expected, sd ~11
    assert (hits - 180).abs().max() < 50


def test_bottom_k_sampler_streams_to_a_per_class_sample():
    gen = torch.Generator().manual_seed(0)
    sampler = BottomKSampler(4, gen)
    rows = torch.arange(30).float()[:, None]
    labels = torch.tensor([0] * 10 + [1] * 2 + [2] * 18)
    for chunk in range(3):  # three batches of 10
        sl = slice(10 * chunk, 10 * chunk + 10)
        sampler.update(rows[sl], labels[sl])
    counts = torch.bincount(sampler.labels, minlength=3).tolist()
    assert counts == [4, 2, 4]
    assert torch.equal(labels[sampler.feats[:, 0].long()], sampler.labels)


def test_extract_pixel_embeddings_exact_features_labels_and_domains():
    torch.manual_seed(0)
    m = StrideTwoSeg()
    src = [_labelled_batch(torch.randint(0, 4, (2, 8, 8))) for _ in range(2)]
    tgt_label = torch.randint(0, 3, (1, 8, 8))
    tgt_label[0, :2] = 255  # ignore rows are never sampled
    tgt = [_labelled_batch(tgt_label)]
    emb = extract_pixel_embeddings(
        m, {"source": src, "target": tgt}, n_per_class=10_000, progress=False
    )
    assert emb.domain_names == ("source", "target")
    # every feature-resolution pixel is kept (quota larger than the data)
    src_small = torch.cat([downsample_labels(b["label"], (4, 4)) for b in src]).flatten()
    tgt_small = downsample_labels(tgt_label, (4, 4)).flatten()
    assert len(emb) == src_small.numel() + int((tgt_small != 255).sum())
    for d, small in enumerate((src_small, tgt_small)):
        got = torch.bincount(emb.labels[emb.domains == d], minlength=4)
        want = torch.bincount(small[small != 255], minlength=4)
        assert torch.equal(got, want)
    # the first channel encodes the label of the pixel the feature comes from
    assert torch.equal((emb.feats[:, 0] * 255).round().long(), emb.labels)
    # projection head is selectable; balanced quota and cap apply
    emb2 = extract_pixel_embeddings(
        m,
        {"source": src, "target": tgt},
        embedding="pixel",
        n_per_class=3,
        max_pixels=10,
        progress=False,
    )
    assert emb2.embedding == "pixel" and len(emb2) == 10
    assert torch.equal((emb2.feats[:, 0] * 255 / 2).round().long(), emb2.labels)
    per = emb2.counts()
    assert all(n <= 3 for d in per.values() for n in d.values())
    # class filter by ids
    emb3 = extract_pixel_embeddings(m, src, classes=[1, 2], n_per_class=50, progress=False)
    assert set(emb3.labels.tolist()) <= {1, 2} and emb3.domain_names == ("data",)


def test_extract_pixel_embeddings_rejects_unlabelled_data():
    m = StrideTwoSeg()
    batch = _labelled_batch(torch.full((1, 4, 4), 255))
    with pytest.raises(ValueError, match="no labelled pixel"):
        extract_pixel_embeddings(m, [batch], progress=False)
    with pytest.raises(ValueError, match="'img'"):
        extract_pixel_embeddings(m, [{"image": batch["img"]}], progress=False)


# ----------------------------------------------------------------------------- CCD


def test_ccd_hand_computed_three_classes():
    # class 0: (0,0),(2,0) -> mu (1,0), spread 1 ; class 1: (5,0),(5,2) -> mu (5,1), spread 1
    # class 2: (1,4) -> mu (1,4), spread 0.  d2(0,1)=17, d2(0,2)=16, d2(1,2)=25.
    x = torch.tensor([[0.0, 0], [2, 0], [5, 0], [5, 2], [1, 4]])
    y = torch.tensor([0, 0, 1, 1, 2])
    acc = ClassCenterStats(num_classes=6)
    acc.update(x, y)
    ccd = acc.ccd()
    assert ccd[0].item() == pytest.approx(0.5 * (1 / 17 + 1 / 16))
    assert ccd[1].item() == pytest.approx(0.5 * (1 / 17 + 1 / 25))
    assert ccd[2].item() == 0.0
    # absent classes are excluded: nan, and the 1/(C-1) uses the 3 present classes
    assert all(math.isnan(v) for v in ccd[3:].tolist())
    assert torch.allclose(acc.intra()[:3], torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64))


def test_ccd_streaming_equals_one_pass_and_brute_force():
    torch.manual_seed(0)
    feats = [torch.randn(2, 5, 3, 4) * 3 + 10 for _ in range(4)]  # large offset: cancellation check
    labels = [torch.randint(0, 4, (2, 3, 4)) for _ in range(4)]
    labels[0][0, 0, 0] = 255
    acc = ClassCenterStats(num_classes=4)
    for f, lab in zip(feats, labels):
        acc.update(f, lab)
    x = torch.cat([f.permute(0, 2, 3, 1).reshape(-1, 5) for f in feats]).double()
    y = torch.cat([lab.reshape(-1) for lab in labels])
    x, y = x[y != 255], y[y != 255]
    mu = torch.stack([x[y == c].mean(0) for c in range(4)])
    intra = torch.stack([((x[y == c] - mu[c]) ** 2).sum(1).mean() for c in range(4)])
    want = torch.tensor(
        [
            sum(intra[i] / ((mu[i] - mu[j]) ** 2).sum() for j in range(4) if j != i) / 3
            for i in range(4)
        ],
        dtype=torch.float64,
    )
    assert torch.allclose(acc.mean, mu, atol=1e-10)
    assert torch.allclose(acc.ccd(), want, rtol=1e-9)
    assert torch.equal(acc.count, torch.bincount(y, minlength=4))
    # merging two halves = one accumulator over everything
    a, b = ClassCenterStats(4), ClassCenterStats(4)
    for i, (f, lab) in enumerate(zip(feats, labels)):
        (a if i < 2 else b).update(f, lab)
    assert torch.allclose(a.merge(b).ccd(), want, rtol=1e-9)


def test_ccd_from_stats_fewer_than_two_classes_is_nan():
    out = ccd_from_stats(torch.tensor([3, 0]), torch.zeros(2, 2), torch.ones(2))
    assert torch.isnan(out).all()


def test_class_center_distance_over_loaders_per_domain_and_pooled():
    m = StrideTwoSeg()
    src = [
        _labelled_batch(torch.randint(0, 3, (2, 8, 8), generator=torch.Generator().manual_seed(1)))
    ]
    tgt = [
        _labelled_batch(torch.randint(0, 3, (2, 8, 8), generator=torch.Generator().manual_seed(2)))
    ]
    res = class_center_distance(
        m, {"source": src, "target": tgt}, classes=[0, 1, 2], progress=False
    )
    assert set(res.ccd) == {"source", "target", "all"}
    # direct computation on the source features
    f = src[0]["img"][:, :, ::2, ::2]
    lab = downsample_labels(src[0]["label"], (4, 4))
    ref = ClassCenterStats()
    ref.update(f, lab)
    assert torch.allclose(res.ccd["source"], ref.ccd(), equal_nan=True)
    d = res.to_dict()
    assert set(d["target"]["per_class"]) == {"road", "sidewalk", "building"}
    assert d["all"]["pixels"]["road"] == int(res.count["source"][0] + res.count["target"][0])
    md = res.to_markdown().splitlines()
    assert md[0] == "| class | source | target | all |"  # narrow: one row per class
    assert [row.split(" | ")[0] for row in md[2:]] == [
        "| road",
        "| sidewalk",
        "| building",
        "| **mean**",
    ]
    mean = f"{res.mean('source'):.3f}"
    assert md[-1].split(" | ")[1] == f"**{mean}**"
    assert len(res.to_frame()) == 9


# ----------------------------------------------------------------------------- temporal


def test_temporal_consistency_hand_computed():
    a = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1]])
    b = torch.tensor([[0, 0, 0, 1], [0, 0, 1, 1]])
    tc = TemporalConsistency()
    tc.update(a[None], b[None])
    r = tc.compute("cs19")
    assert r["pixel_agreement"] == pytest.approx(100 * 7 / 8)
    # class 0: tp 4, fn 0, fp 1 -> 4/5 ; class 1: tp 3, fn 1 -> 3/4
    assert r["consecutive_mIoU"] == pytest.approx(100 * (0.8 + 0.75) / 2)
    seq = sequence_consistency(torch.stack([a, b, b]))
    assert seq["num_pairs"] == 2 and seq["pixel_agreement"] == pytest.approx(100 * 15 / 16)


def test_evaluate_temporal_consistency_on_video_items():
    m = StrideTwoSeg()
    img = torch.rand(2, 3, 8, 8)
    batch = {
        "img": img,
        "img_ref": img.clone(),
        "label": torch.zeros(2, 8, 8, dtype=torch.long),
        "ref_offset": torch.tensor([1, -1]),
    }
    r = evaluate_temporal_consistency(m, [batch], progress=False)
    assert r["pixel_agreement"] == 100.0 and r["ref_offsets"] == [-1, 1] and r["num_pairs"] == 2
    with pytest.raises(ValueError, match="img_ref"):
        evaluate_temporal_consistency(m, [{"img": img}], progress=False)


def test_published_numbers_filter_by_protocol():
    assert {r.method for r in published_for("gta2cs")} >= {"DAFormer", "PiPa (HRDA)", "PiPa++"}
    assert published_for("synthetic") == ()
    t = comparison_table("syn2cs", {"PiPa": 12.3}, protocol="syn16")
    assert "68.2" in t and "12.3" in t
    assert "| MIC |" not in comparison_table("syn2cs", {}, protocol="syn13")
