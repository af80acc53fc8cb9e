"""The embedded synthetic sim-to-real benchmark: determinism, labels, cache, video, domain gap, datasets."""

import json
import os

import cv2
import numpy as np
import pytest
import torch

from pipa_core.data.synthetic import (
    PRESETS,
    SyntheticDataset,
    SyntheticSequenceDataset,
    class_frequencies,
    ensure_synthetic,
    frame_path,
    generate_scene,
    generate_sequence,
    image_path,
    read_manifest,
)
from pipa_core.labels import IGNORE_INDEX, NUM_CLASSES
from pipa_core.viz.dataset_card import make_dataset_card

H, W = 48, 96  # small but Cityscapes-shaped: enough pixels for thin classes to show up


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return ensure_synthetic(tmp_path_factory.mktemp("syn") / "synthetic", size="tiny", seed=3)


@pytest.fixture(scope="module")
def scenes():
    """40 scenes per domain at default-like statistics (reduced resolution)."""
    return {
        d: [generate_scene(0, d, "train", i, H, W) for i in range(40)] for d in ("source", "target")
    }


# ------------------------------------------------------------------ generator


def test_scene_determinism_and_seed_dependence():
    a_img, a_lab = generate_scene(5, "target", "train", 7, H, W)
    b_img, b_lab = generate_scene(5, "target", "train", 7, H, W)
    assert a_img.dtype == np.uint8 and a_img.shape == (H, W, 3)
    assert a_lab.dtype == np.uint8 and a_lab.shape == (H, W)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_lab, b_lab)
    c_img, c_lab = generate_scene(6, "target", "train", 7, H, W)
    assert not np.array_equal(a_img, c_img) and not np.array_equal(a_lab, c_lab)
    # other index / split are other scenes too
    assert not np.array_equal(a_lab, generate_scene(5, "target", "train", 8, H, W)[1])
    assert not np.array_equal(a_lab, generate_scene(5, "target", "val", 7, H, W)[1])
    s1, s2 = generate_sequence(1, "source", 0, 3, H, W), generate_sequence(1, "source", 0, 3, H, W)
    assert np.array_equal(s1[0], s2[0]) and np.array_equal(s1[1], s2[1])


def test_label_values_and_class_coverage(scenes):
    present = set()
    for domain, items in scenes.items():
        for _, lab in items:
            vals = set(np.unique(lab).tolist())
            assert vals <= set(range(NUM_CLASSES)) | {IGNORE_INDEX}
            if domain == "source":
                assert IGNORE_INDEX not in vals  # ignore only marks the target ego-vehicle hood
            else:
                rows = np.nonzero((lab == IGNORE_INDEX).any(axis=1))[0]
                assert rows.min() > 0.8 * H  # the hood is at the bottom of the frame
            present |= vals
    classes = present - {IGNORE_INDEX}
    assert len(classes) >= 15, sorted(classes)
    # the thin / small thing classes are all there
    assert {5, 6, 7, 11, 12, 13, 18} <= classes
    # rare classes: truck, bus, train each appear, but in a minority of images
    all_labs = [lab for items in scenes.values() for _, lab in items]
    for cls in (14, 15, 16):
        frac = np.mean([(lab == cls).any() for lab in all_labs])
        assert 0 < frac < 0.4, (cls, frac)


def test_domain_gap_is_measurable(scenes):
    """Target has sensor noise, lower saturation and a lower horizon than source (measured)."""

    def noise_level(img):  # median |Laplacian| ~ 0 in flat-shaded regions, > 0 with noise
        g = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float32)
        return float(np.median(np.abs(cv2.Laplacian(g, cv2.CV_32F))))

    def saturation(img):
        return float(cv2.cvtColor(img, cv2.COLOR_RGB2HSV)[..., 1].mean())

    def road_top(lab):  # first row with road pixels ~ horizon row
        return np.nonzero((lab == 0).any(axis=1))[0].min() / lab.shape[0]

    stats = {
        d: np.array([[noise_level(i), saturation(i), road_top(lab)] for i, lab in items])
        for d, items in scenes.items()
    }
    src, tgt = stats["source"].mean(0), stats["target"].mean(0)
    assert tgt[0] > src[0] + 2.0  # noise
    assert src[1] > 1.25 * tgt[1]  # saturated palette (the target's is the same, muted)
    assert tgt[2] > src[2] + 0.05  # horizon lower in the target frame
    # Layout frequencies differ: more persons in the target, relative to cars.
    frac = {
        d: np.mean([(lab == 11).mean() for _, lab in items])
        / np.mean([(lab == 13).mean() for _, lab in items])
        for d, items in scenes.items()
    }
    assert frac["target"] > 1.5 * frac["source"]


def test_video_frames_are_continuous():
    seqs = [generate_sequence(0, d, q, 5, H, W) for d in ("source", "target") for q in range(2)]
    for imgs, labs in seqs:
        consecutive = np.mean(
            [np.abs(imgs[t + 1].astype(float) - imgs[t]).mean() for t in range(4)]
        )
        others = [o for o in seqs if o[0] is not imgs]
        random_pair = np.mean(
            [np.abs(o[0][t].astype(float) - imgs[t]).mean() for o in others for t in range(5)]
        )
        assert consecutive < 0.5 * random_pair, (consecutive, random_pair)
        same = np.mean([(labs[t + 1] == labs[t]).mean() for t in range(4)])
        same_rand = np.mean([(o[1][t] == labs[t]).mean() for o in others for t in range(5)])
        assert same > 0.8 and same > same_rand + 0.1, (same, same_rand)
        assert not np.array_equal(imgs[0], imgs[-1])  # the camera does move


# ------------------------------------------------------------------ cache


def test_manifest_counts_and_files(tiny_root):
    man = read_manifest(tiny_root)
    p = PRESETS["tiny"]
    assert (man["seed"], man["size"], man["height"], man["width"]) == (3, "tiny", p.height, p.width)
    for key, n in p.counts.items():
        domain, split = key.split("/")
        assert man["counts"][key] == n == len(SyntheticDataset(tiny_root, domain, split))
        assert len(list((tiny_root / domain / split / "labels").glob("*.png"))) == n
        assert sum(class_frequencies(tiny_root, domain, split)) <= n * p.height * p.width
    for domain in ("source", "target"):
        ds = SyntheticSequenceDataset(tiny_root, domain)
        assert len(ds) == p.sequences * p.frames
        assert frame_path(tiny_root, domain, p.sequences - 1, p.frames - 1).is_file()
    # stored PNGs are exactly the generator's arrays
    img, lab = generate_scene(3, "target", "val", 2, p.height, p.width)
    stored = cv2.cvtColor(
        cv2.imread(str(image_path(tiny_root, "target", "val", 2))), cv2.COLOR_BGR2RGB
    )
    assert np.array_equal(stored, img)
    assert np.array_equal(
        cv2.imread(str(image_path(tiny_root, "target", "val", 2, "labels")), -1), lab
    )
    counts = class_frequencies(tiny_root, "source", "train")
    labs = [
        cv2.imread(str(image_path(tiny_root, "source", "train", i, "labels")), -1) for i in range(8)
    ]
    assert np.array_equal(
        counts, np.bincount(np.concatenate([x.ravel() for x in labs]), minlength=19)[:19]
    )


def test_cache_reuse_and_regeneration(tmp_path):
    root = ensure_synthetic(tmp_path / "syn", size="tiny", seed=1)
    probe = image_path(root, "source", "train", 0)
    stamp = probe.stat().st_mtime_ns
    assert ensure_synthetic(root, size="tiny", seed=1) == root
    assert probe.stat().st_mtime_ns == stamp  # reused, not rewritten
    # a missing file makes the cache stale
    os.remove(image_path(root, "target", "train", 3, "labels"))
    ensure_synthetic(root, size="tiny", seed=1)
    assert image_path(root, "target", "train", 3, "labels").is_file()
    assert probe.stat().st_mtime_ns != stamp
    # a manifest from another generator version is stale
    man = json.loads((root / "manifest.json").read_text())
    man["version"] = -1
    (root / "manifest.json").write_text(json.dumps(man))
    ensure_synthetic(root, size="tiny", seed=1)
    assert read_manifest(root)["version"] != -1
    # another seed regenerates other content; no temporary directories are left behind
    before = cv2.imread(str(probe))
    ensure_synthetic(root, size="tiny", seed=2)
    assert read_manifest(root)["seed"] == 2
    assert not np.array_equal(before, cv2.imread(str(probe)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["syn"]


def test_interrupted_generation_leaves_no_half_cache(tmp_path, monkeypatch):
    import pipa_core.data.synthetic.cache as cache

    real_job, calls = cache._scene_job, []

    def dying_job(args):
        calls.append(args)
        if len(calls) == 5:
            raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of the generation
        return real_job(args)

    monkeypatch.setattr(cache, "_scene_job", dying_job)
    with pytest.raises(KeyboardInterrupt):
        ensure_synthetic(tmp_path / "syn", size="tiny", seed=0)
    assert list(tmp_path.iterdir()) == []  # neither root nor a temporary directory
    monkeypatch.setattr(cache, "_scene_job", real_job)
    root = ensure_synthetic(tmp_path / "syn", size="tiny", seed=0)
    # interrupting the regeneration of a stale cache keeps the old, complete cache
    calls.clear()
    monkeypatch.setattr(cache, "_scene_job", dying_job)
    with pytest.raises(KeyboardInterrupt):
        ensure_synthetic(root, size="tiny", seed=9)
    assert read_manifest(root)["seed"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["syn"]


def test_generation_independent_of_worker_count(tmp_path):
    a = ensure_synthetic(tmp_path / "a", size="tiny", seed=4, workers=1)
    b = ensure_synthetic(tmp_path / "b", size="tiny", seed=4, workers=2)
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert files == sorted(p.relative_to(b) for p in b.rglob("*.png")) and files
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f


def test_bad_arguments(tmp_path, tiny_root):
    with pytest.raises(ValueError, match="valid presets: tiny, default, large"):
        ensure_synthetic(tmp_path / "x", size="huge")
    with pytest.raises(ValueError, match="non-negative"):
        ensure_synthetic(tmp_path / "x", size="tiny", seed=-1)
    with pytest.raises(ValueError, match="valid domains: source, target"):
        SyntheticDataset(tiny_root, "game", "train")
    with pytest.raises(ValueError, match="valid splits: train, val"):
        SyntheticDataset(tiny_root, "source", "test")
    with pytest.raises(ValueError, match="valid domains"):
        generate_scene(0, "real", "train", 0)
    with pytest.raises(ValueError, match="ref_offset"):
        SyntheticSequenceDataset(tiny_root, "source", ref_offset=0)
    with pytest.raises(ValueError, match="ref_offset"):
        SyntheticSequenceDataset(tiny_root, "source", ref_offset=PRESETS["tiny"].frames)
    with pytest.raises(FileNotFoundError, match="ensure_synthetic"):
        SyntheticDataset(tmp_path / "nothing", "source", "train")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("not a cache")
    with pytest.raises(ValueError, match="refusing to overwrite"):
        ensure_synthetic(foreign, size="tiny")
    assert (foreign / "keep.txt").read_text() == "not a cache"


# ------------------------------------------------------------------ datasets


def test_dataset_items(tiny_root):
    p = PRESETS["tiny"]
    seen = []
    ds = SyntheticDataset(
        tiny_root, "target", "train", transform=lambda s: seen.append(s["name"]) or s
    )
    item = ds[1]
    assert item["img"].dtype == torch.float32 and item["img"].shape == (3, p.height, p.width)
    assert 0.0 <= item["img"].min() and item["img"].max() <= 1.0
    assert item["label"].dtype == torch.int64 and item["label"].shape == (p.height, p.width)
    assert item["name"] == "synthetic/target/train/000001" and seen == [item["name"]]
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=3)))
    assert batch["img"].shape == (3, 3, p.height, p.width) and batch["label"].shape == (
        3,
        p.height,
        p.width,
    )
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_sequence_dataset_reference_rule(tiny_root):
    p = PRESETS["tiny"]
    ds = SyntheticSequenceDataset(tiny_root, "source", ref_offset=2)
    first, last = ds[0], ds[p.frames - 1]
    assert first["ref_offset"] == 2 and last["ref_offset"] == -2
    assert torch.equal(first["img_ref"], ds.frame(0, 2)["img"])
    assert torch.equal(last["img_ref"], ds.frame(0, p.frames - 3)["img"])
    assert first["img_ref"].shape == first["img"].shape and first["label"].dtype == torch.int64
    names = [f["name"] for f in ds.frames(1)]
    assert names == [f"synthetic/source/sequences/seq_001/frame_{t:04d}" for t in range(p.frames)]
    assert ds[p.frames]["name"] == names[0]


def test_dataset_card(tiny_root, tmp_path):
    out = make_dataset_card(tiny_root, tmp_path / "card.png")
    img = cv2.imread(str(out))
    assert img is not None and img.shape[0] > 500 and img.shape[1] > 500


def test_cross_domain_renders_split_the_gap_into_layout_and_look():
    from pipa_core.data.synthetic.generate import generate_scene
    from pipa_core.eval.domain_gap import cross_domain_miou, render_cross
    from pipa_core.models import build_segmentor

    tw_sl, tw_sl_label = render_cross("target", "source", 0, 32, 64)
    tw_tl, tw_tl_label = render_cross("target", "target", 0, 32, 64)
    assert np.array_equal(tw_sl_label, tw_tl_label)  # the same world, two looks
    assert not np.array_equal(tw_sl, tw_tl)
    assert (tw_tl_label == 255).any()  # a target world keeps its ego hood
    # held-out scenes: none of the benchmark's own images
    img, _ = generate_scene(0, "target", "val", 0, 32, 64)
    assert not np.array_equal(img, tw_tl)
    torch.manual_seed(0)
    model = build_segmentor("daformer_mit_b0", decoder_channels=8, proj_heads=())
    rows = cross_domain_miou(model, images=1)
    assert [(r["world"], r["look"]) for r in rows] == [
        ("source", "source"), ("target", "source"), ("source", "target"), ("target", "target")
    ]  # fmt: skip
    assert all(0 <= r["mIoU"] <= 100 and len(r["per_class_IoU"]) == 19 for r in rows)
