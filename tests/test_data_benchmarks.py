"""Benchmark presets build on fixture trees laid out like the real downloads."""

from __future__ import annotations

import dataclasses

import data_fixtures as fx
import pytest
import torch

from pipa_core.data.base import DatasetError
from pipa_core.data.benchmarks import (
    BENCHMARKS,
    build_train_dataset,
    build_val_dataset,
    get_benchmark,
    synthetic_benchmark,
)
from pipa_core.labels import PROTOCOLS

REAL = ["gta2cs", "syn2cs", "gtasyn2cs", "cs2acdc", "cs2darkzurich", "viper2csseq", "synseq2csseq"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """Fixture trees laid out like the real downloads (tests/data_fixtures.py), prepared."""
    return fx.make_all_prepared(tmp_path_factory.mktemp("data"))


def test_presets_are_complete_and_consistent():
    assert set(REAL) | {"synthetic", "synthetic_seq"} == set(BENCHMARKS)
    for spec in BENCHMARKS.values():
        assert all(p in PROTOCOLS for p in spec.protocols)
        assert len(spec.source_scales) == len(spec.sources)
        with pytest.raises(dataclasses.FrozenInstanceError):
            spec.rcs = not spec.rcs
    gta = get_benchmark("gta2cs")
    assert (gta.pseudo_ignore_top, gta.pseudo_ignore_bottom) == (15, 120)
    assert gta.source_scales == ((720, 1280),) and gta.target_scale == (512, 1024)
    assert gta.crop_size == (512, 512) and gta.rcs and gta.protocols == ("cs19",)
    assert get_benchmark("syn2cs").protocols == ("syn16", "syn13")
    assert [s.name for s in get_benchmark("gtasyn2cs").sources] == ["gta", "synthia"]
    assert get_benchmark("viper2csseq").video and get_benchmark("viper2csseq").protocols == (
        "viper15",
    )
    assert get_benchmark("synseq2csseq").protocols == ("synseq11",)
    syn = get_benchmark("synthetic")
    assert syn.crop_size == (128, 128) and syn.target_scale == (128, 256)
    assert syn.protocols == ("cs19",) and not syn.rcs and not syn.video
    seq = get_benchmark("synthetic_seq")
    assert seq.video and seq.ref_offset == 1 and seq.crop_size == syn.crop_size
    with pytest.raises(DatasetError, match="valid names: gta2cs, syn2cs"):
        get_benchmark("gta2city")


@pytest.mark.parametrize("name", REAL)
def test_real_preset_builds_on_fixture_trees(data_root, name):
    # Fixture labels are tiny: lower RCS's 3000-pixel threshold so every class qualifies.
    spec = dataclasses.replace(get_benchmark(name), rcs_min_pixels=10)
    train = build_train_dataset(spec, data_root, seed=0, photometric=False)
    assert (train.rcs is not None) == spec.rcs
    item = train[0]
    for dom in ("source", "target"):
        s = item[dom]
        assert s["img"].shape == (3, *spec.crop_size) and s["label"].shape == spec.crop_size
        assert ("img_ref" in s) == spec.video
        if spec.video:
            assert s["img_ref"].shape == s["img"].shape and s["ref_offset"] == spec.ref_offset
    assert (item["target"]["label"] == 255).all()
    assert (item["source"]["label"] != 255).any()
    val = build_val_dataset(spec, data_root)
    v = val[0]
    (h, w), (sh, sw) = v["label"].shape, spec.target_scale
    assert v["img"].shape == (3, h, w) and h <= sh and w <= sw and (h == sh or w == sw)
    assert (v["label"] != 255).any()


def test_missing_dataset_under_data_root_names_layout(tmp_path):
    with pytest.raises(
        DatasetError, match="(?s)GTA5: dataset root .*gta does not exist.*prepare gta"
    ):
        build_train_dataset(get_benchmark("gta2cs"), tmp_path)


def test_synthetic_preset_uses_embedded_benchmark(tmp_path):
    spec = synthetic_benchmark("tiny")
    assert spec.crop_size == (32, 32) and spec.target_scale == (32, 64)
    train = build_train_dataset(spec, tmp_path, seed=0)
    item = train[0]
    assert item["source"]["img"].shape == (3, 32, 32)
    assert (item["source"]["label"] != 255).any()
    assert (item["target"]["label"] == 255).all()  # the target's stored labels are hidden
    val = build_val_dataset(spec, tmp_path)
    assert val[0]["img"].shape == (3, 32, 64) and (val[0]["label"] != 255).any()
    assert (tmp_path / "synthetic" / "source" / "train" / "images").is_dir()
    assert torch.equal(train[0]["source"]["img"], item["source"]["img"])  # deterministic items


def test_oracle_pairs_put_the_labelled_target_in_the_source_slot(tmp_path):
    spec = synthetic_benchmark("tiny")
    uda = build_train_dataset(spec, tmp_path, seed=0, rcs=True)
    oracle = build_train_dataset(spec, tmp_path, seed=0, rcs=True, labelled_target=True)
    assert oracle.rcs is None and uda.rcs is not None  # no RCS on target labels
    item = oracle[0]
    assert (item["source"]["label"] != 255).any()  # target labels, read for the oracle
    assert (item["target"]["label"] == 255).all()
    # the source slot now holds target images: the same files as the target split
    assert len(oracle.sources[0]) == len(uda.target)
    names = {oracle.sources[0][i]["name"] for i in range(3)}
    assert all("target" in n for n in names)


def test_synthetic_seq_preset_trains_on_sequences_and_validates_on_images(tmp_path):
    from pipa_core.data.synthetic import SyntheticDataset, SyntheticSequenceDataset

    spec = synthetic_benchmark("tiny", video=True)
    train = build_train_dataset(spec, tmp_path, seed=0)
    item = train[0]
    for dom in ("source", "target"):
        key, ref = item[dom]["img"], item[dom]["img_ref"]
        assert key.shape == ref.shape == (3, 32, 32)
        assert item[dom]["ref_offset"] in (1, -1)
        assert not torch.equal(key, ref)  # the next frame: the camera and objects moved
    assert (item["source"]["label"] != 255).any() and (item["target"]["label"] == 255).all()
    root = tmp_path / "synthetic"
    n_frames = len(SyntheticSequenceDataset(root, "source"))
    assert len(train.sources[0]) == n_frames  # every frame of every sequence is a key frame
    val = build_val_dataset(spec, tmp_path)
    assert len(val) == len(SyntheticDataset(root, "target", "val"))
    assert "img_ref" not in val[0]


def test_frame_pairs_for_temporal_consistency(tmp_path):
    from pipa_core.data.benchmarks import build_frame_pairs_dataset

    pairs = build_frame_pairs_dataset(synthetic_benchmark("tiny", video=True), tmp_path)
    item = pairs[0]
    assert item["img"].shape == item["img_ref"].shape == (3, 32, 64)
    assert (item["label"] != 255).any()  # labelled target frames, unlike UDA training
    with pytest.raises(DatasetError, match="no reference frames.*synthetic_seq"):
        build_frame_pairs_dataset(synthetic_benchmark("tiny"), tmp_path)


def _find_window(crop: torch.Tensor, images: list[torch.Tensor]):
    """(image index, left, flipped) of the full-height window of ``images`` equal to ``crop``."""
    w = crop.shape[-1]
    for i, img in enumerate(images):
        for left in range(img.shape[-1] - w + 1):
            window = img[..., left : left + w]
            for flipped, cand in ((False, window), (True, window.flip(-1))):
                if torch.equal(cand, crop):
                    return i, left, flipped
    return None


def test_synthetic_target_is_not_distorted_and_carries_its_hidden_label(tmp_path):
    from pipa_core.config import apply_overrides, make_config, resolve
    from pipa_core.data.synthetic import SyntheticDataset, ensure_synthetic
    from pipa_core.uda.data_stream import build_datasets

    root = ensure_synthetic(tmp_path / "synthetic", size="tiny")
    raw = SyntheticDataset(root, "target", "train")
    images = [raw[i]["img"] for i in range(len(raw))]
    labels = [raw[i]["label"] for i in range(len(raw))]
    base = ["data.synthetic_size=tiny", f"data.data_root={tmp_path}", "data.color_distortion=1"]
    cfg = apply_overrides(make_config("synthetic", "dacs"), base)
    train, _ = build_datasets(resolve(cfg, validate=False))
    for k in range(4):
        tgt = train[k]["target"]
        assert (tgt["label"] == 255).all()  # self-training never sees target labels ...
        found = _find_window(tgt["img"], images)  # ... and gets the image undistorted
        assert found is not None, k
        i, left, flipped = found
        want = labels[i][:, left : left + tgt["img"].shape[-1]]
        assert torch.equal(tgt["hidden_label"], want.flip(-1) if flipped else want)
    # The switch back: photometric distortion of the target images too.
    cfg = apply_overrides(cfg, ["data.target_photometric=true"])
    train, _ = build_datasets(resolve(cfg, validate=False))
    assert any(_find_window(train[k]["target"]["img"], images) is None for k in range(8))


def test_synthetic_pseudo_label_crop_covers_the_target_hood():
    from pipa_core.config import make_config, pseudo_crop_rows, resolve_benchmark
    from pipa_core.data.synthetic import generate_scene

    cfg = make_config("synthetic", "dacs")
    top, bottom = pseudo_crop_rows(cfg, resolve_benchmark(cfg))
    assert (top, bottom) == (0, 13)
    for index in range(12):
        _, label = generate_scene(0, "target", "train", index, 128, 256)
        hood_rows = (label == 255).any(1).nonzero()[0]
        assert len(hood_rows) > 0 and hood_rows.min() >= 128 - bottom, index
        _, label = generate_scene(0, "source", "train", index, 128, 256)
        assert not (label == 255).any()  # the source has no hood
