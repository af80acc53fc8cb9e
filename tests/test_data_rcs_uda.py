"""Rare class sampling frequencies and UDA source/target pairing."""

from __future__ import annotations

import data_fixtures as fx
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from pipa_core.data.base import DatasetError
from pipa_core.data.cityscapes import CityscapesDataset
from pipa_core.data.gta import GTADataset
from pipa_core.data.prepare import prepare
from pipa_core.data.rcs import RareClassSampler, load_class_stats, rcs_class_probs
from pipa_core.data.synthia import SynthiaDataset
from pipa_core.data.uda import UDADataset

STATS = [  # per image {train id: pixels}
    {0: 50_000, 1: 20_000, 5: 4_000},
    {0: 60_000, 1: 10_000, 12: 3_500},
    {0: 40_000, 5: 2_000, 12: 3_001},
    {0: 55_000, 1: 15_000, 18: 2_999},  # bicycle never reaches min_pixels: not sampled
]


def test_class_probabilities_follow_daformer_formula():
    pixels = torch.tensor([900.0, 90.0, 10.0])
    f = pixels.double().numpy() / pixels.double().numpy().sum()  # float64: exp(99) fits
    want = np.exp((1 - f) / 0.01)
    np.testing.assert_allclose(rcs_class_probs(pixels, 0.01).numpy(), want / want.sum(), rtol=1e-9)


def test_sampler_candidates_and_empirical_frequencies():
    rcs = RareClassSampler(STATS, temperature=0.1, min_pixels=3000)
    assert rcs.classes.tolist() == [0, 1, 5, 12]
    assert rcs.candidates[5].tolist() == [0] and rcs.candidates[12].tolist() == [1, 2]
    assert rcs.candidates[1].tolist() == [0, 1, 3]
    totals = {c: sum(s.get(c, 0) for s in STATS) for c in (0, 1, 5, 12, 18)}
    f = np.array(list(totals.values()), float) / sum(totals.values())
    p = np.exp((1 - f) / 0.1)[:4]
    p /= p.sum()
    np.testing.assert_allclose(rcs.probs.numpy(), p, rtol=1e-9)
    g = torch.Generator().manual_seed(0)
    n = 10_000
    draws = [rcs.sample(g) for _ in range(n)]
    classes = np.array([c for c, _ in draws])
    emp = np.array([(classes == c).mean() for c in (0, 1, 5, 12)])
    assert np.abs(emp - p).max() < 4 * np.sqrt(p * (1 - p) / n).max()
    idx12 = np.array([i for c, i in draws if c == 12])
    assert set(idx12) == {1, 2} and abs((idx12 == 1).mean() - 0.5) < 0.05
    again = [rcs.sample(torch.Generator().manual_seed(0)) for _ in range(3)]
    assert again == [draws[0]] * 3  # deterministic under a seeded generator


def test_default_temperature_prefers_rare_classes():
    rcs = RareClassSampler(STATS)  # T = 0.01, min_pixels = 3000
    assert int(rcs.classes[rcs.probs.argmax()]) == 5  # rarest eligible class (6000 pixels)
    assert float(rcs.probs[rcs.classes.tolist().index(0)]) < 1e-6


def test_draw_recrops_until_min_crop_ratio():
    rcs = RareClassSampler([{3: 5000}], min_pixels=3000, min_crop_ratio=0.5)
    seen = []
    counts = iter([100, 1500, 1501, 4000])

    def load(i):
        n = next(counts)
        seen.append(n)
        lab = torch.zeros(100, 100, dtype=torch.long)
        lab.view(-1)[:n] = 3
        return {"label": lab}

    out = rcs.draw(load, torch.Generator().manual_seed(0))
    assert seen == [100, 1500, 1501]  # strictly more than 3000 * 0.5 pixels stops the retries
    assert int((out["label"] == 3).sum()) == 1501
    calls = []
    rcs.draw(lambda i: calls.append(i) or {"label": torch.zeros(4, 4, dtype=torch.long)})
    assert len(calls) == 11  # first crop + at most 10 re-crops


def test_sampler_from_prepared_dataset_and_stale_stats(tmp_path):
    fx.make_gta(tmp_path, n=3)
    prepare("gta", tmp_path, progress=False)
    ds = GTADataset(tmp_path)
    rcs = RareClassSampler.from_dataset(ds, min_pixels=10)
    stats = load_class_stats(tmp_path / "sample_class_stats.json")
    for c, cand in rcs.candidates.items():
        for i in cand.tolist():
            lbl = ds[i]["label"]
            assert int((lbl == c).sum()) > 10
            key = ds.records[i].label.relative_to(tmp_path).as_posix()
            assert stats[key][c] == int((lbl == c).sum())
    (tmp_path / "sample_class_stats.json").write_text('[{"file": "labels/other.png", "0": 5}]')
    with pytest.raises(DatasetError, match="stale.*Rerun the preparation"):
        RareClassSampler.from_dataset(ds)
    (tmp_path / "sample_class_stats.json").unlink()
    with pytest.raises(DatasetError, match="python -m pipa_core.data.prepare"):
        RareClassSampler.from_dataset(ds)


@pytest.fixture
def trees(tmp_path):
    fx.make_gta(tmp_path / "gta", n=4)
    fx.make_synthia(tmp_path / "synthia", n=3)
    fx.make_cityscapes(tmp_path / "cs", splits=("train",), per_city=3)
    prepare("gta", tmp_path / "gta", progress=False)
    prepare("synthia", tmp_path / "synthia", progress=False)
    return tmp_path


def test_uda_pairs_source_with_unlabelled_target(trees):
    src = GTADataset(trees / "gta")
    tgt = CityscapesDataset(trees / "cs", "train", labelled=False)
    uda = UDADataset(src, tgt, seed=0)
    assert len(uda) == 4
    item = uda[2]
    assert item["source"]["name"] == "00003"
    assert (item["source"]["label"] != 255).any() and (item["target"]["label"] == 255).all()
    cyc = UDADataset(src, tgt, target_sampling="cycle")
    assert [cyc[i]["target"]["name"] for i in range(4)] == [
        tgt.records[i % 6].name for i in range(4)
    ]
    # Random target choice: reproducible per (seed, epoch, idx), varies across epochs.
    names = lambda d: [d[i]["target"]["name"] for i in range(4)]  # noqa: E731
    first = names(uda)
    assert names(UDADataset(src, tgt, seed=0)) == first
    epochs = set()
    for e in range(6):
        uda.set_epoch(e)
        epochs.add(tuple(names(uda)))
    assert len(epochs) > 1
    batch = next(iter(DataLoader(uda, batch_size=2)))
    assert batch["source"]["img"].shape == (2, 3, fx.H, fx.W)
    assert batch["target"]["label"].dtype == torch.int64


def test_uda_multi_source_and_rcs(trees):
    gta, syn = GTADataset(trees / "gta"), SynthiaDataset(trees / "synthia")
    tgt = CityscapesDataset(trees / "cs", "train", labelled=False)
    multi = UDADataset([gta, syn], tgt)
    assert len(multi) == 7 and multi[5]["source"]["name"] == syn.records[1].name
    samplers = [
        RareClassSampler.from_dataset(d, min_pixels=10, min_crop_ratio=0) for d in (gta, syn)
    ]
    rcs = UDADataset([gta, syn], tgt, rcs=samplers, seed=3)
    names = [rcs[i]["source"]["name"] for i in range(40)]
    assert set(names) & {r.name for r in gta.records} and set(names) & {r.name for r in syn.records}
    assert names == [
        UDADataset([gta, syn], tgt, rcs=samplers, seed=3)[i]["source"]["name"] for i in range(40)
    ]
    state = torch.get_rng_state()
    rcs[0]
    assert torch.equal(state, torch.get_rng_state())  # items do not disturb the caller's RNG
    with pytest.raises(DatasetError, match="2 sources"):
        UDADataset([gta, syn], tgt, rcs=samplers[:1])
    with pytest.raises(DatasetError, match="'random', 'cycle'"):
        UDADataset(gta, tgt, target_sampling="sequential")
