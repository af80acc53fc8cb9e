"""Label conversion to train IDs and class statistics (python -m pipa_core.data.prepare)."""

from __future__ import annotations

import dataclasses
import json

import cv2
import data_fixtures as fx
import numpy as np
import pytest

import pipa_core.data.prepare as prep
from pipa_core.data.base import DatasetError

CASES = [
    ("gta", fx.make_gta),
    ("synthia", fx.make_synthia),
    ("cityscapes", fx.make_cityscapes),
    ("acdc", fx.make_acdc),
    ("darkzurich", fx.make_darkzurich),
    ("viper", fx.make_viper),
    ("synthia_seq", fx.make_synthia_seq),
    ("cityscapes_seq", fx.make_cityscapes_seq),
]


def _read(path):
    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert arr is not None and arr.ndim == 2 and arr.dtype == np.uint8
    return arr


@pytest.mark.parametrize("name,make", CASES, ids=[c[0] for c in CASES])
def test_conversion_values_and_stats(tmp_path, name, make):
    expected = make(tmp_path)
    stats_path = prep.prepare(name, tmp_path, nproc=1, progress=False)
    for rel, exp in expected.items():
        np.testing.assert_array_equal(_read(tmp_path / rel), exp, err_msg=rel)
    stats = json.loads(stats_path.read_text())
    assert sorted(e["file"] for e in stats) == sorted(expected)
    for e in stats:
        exp = expected[e["file"]]
        counts = {int(k): v for k, v in e.items() if k != "file"}
        want = {int(c): int((exp == c).sum()) for c in np.unique(exp) if c != 255}
        assert counts == want
    # Every fixture includes ids outside the map: they must become ignore.
    assert any((exp == 255).any() for exp in expected.values())


def test_unknown_16bit_synthia_id_maps_to_ignore(tmp_path):
    ids = np.full((8, 8), 3, dtype=np.int64)
    ids[:4] = 300 + 3  # low byte equals road's id: must not alias to road
    fx.write_synthia_label(tmp_path / "GT" / "LABELS" / "0000000.png", ids)
    fx.write_rgb(tmp_path / "RGB" / "0000000.png", fx.image_for(ids))
    prep.prepare("synthia", tmp_path, progress=False)
    out = _read(tmp_path / "GT" / "LABELS" / "0000000_labelTrainIds.png")
    assert (out[:4] == 255).all() and (out[4:] == 0).all()


def test_viper_colour_coded_labels(tmp_path):
    fx.make_viper(tmp_path, seqs=("001",), frames=range(1, 2), labelled=(1,))
    src = tmp_path / "train" / "cls" / "001" / "001_00001.png"
    ids = prep.read_viper_ids(src)
    rgb = np.asarray(fx.VIPER_PALETTE, dtype=np.uint8)[ids]
    fx.write_rgb(src, rgb)  # overwrite as colour-coded RGB
    got = prep.read_viper_ids(src)
    mapped = np.isin(ids, list(fx.VIPER_ID_TO_TRAINID))
    np.testing.assert_array_equal(got[mapped], ids[mapped])
    assert (got[~mapped] == 255).all()


def test_rerun_is_idempotent_and_skips_finished(tmp_path, monkeypatch):
    fx.make_gta(tmp_path, n=3)
    prep.prepare("gta", tmp_path, progress=False)
    first = (tmp_path / "sample_class_stats.json").read_text()
    calls = []

    def spy(path):
        calls.append(path)
        return prep.read_indexed_ids(path)

    monkeypatch.setitem(prep.KINDS, "gta", dataclasses.replace(prep.KINDS["gta"], reader=spy))
    prep.prepare("gta", tmp_path, progress=False)
    assert calls == []  # nothing re-read: every output already existed
    assert (tmp_path / "sample_class_stats.json").read_text() == first
    prep.prepare("gta", tmp_path, progress=False, overwrite=True)
    assert len(calls) == 3  # --overwrite reconverts every label
    assert (tmp_path / "sample_class_stats.json").read_text() == first


def test_interrupted_run_leaves_no_partial_files_and_resumes(tmp_path, monkeypatch):
    expected = fx.make_gta(tmp_path, n=4)
    real_imencode = cv2.imencode
    calls = {"n": 0}

    def flaky(ext, arr):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # the user presses Ctrl-C during the third file
        return real_imencode(ext, arr)

    monkeypatch.setattr(prep.cv2, "imencode", flaky)
    with pytest.raises(KeyboardInterrupt):
        prep.prepare("gta", tmp_path, progress=False)
    done = sorted((tmp_path / "labels").glob("*_labelTrainIds.png"))
    assert len(done) == 2
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    assert not (tmp_path / "sample_class_stats.json").exists()
    for p in done:  # finished files are complete
        np.testing.assert_array_equal(_read(p), expected[f"labels/{p.name}"])
    monkeypatch.setattr(prep.cv2, "imencode", real_imencode)
    prep.prepare("gta", tmp_path, progress=False)
    for rel, exp in expected.items():
        np.testing.assert_array_equal(_read(tmp_path / rel), exp)
    assert len(json.loads((tmp_path / "sample_class_stats.json").read_text())) == 4


def test_parallel_pool_matches_serial(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    fx.make_synthia(a, n=6)
    fx.make_synthia(b, n=6)
    sa = prep.prepare("synthia", a, nproc=1, progress=False).read_text()
    sb = prep.prepare("synthia", b, nproc=2, progress=False).read_text()
    assert sa == sb


def test_acdc_shipped_train_ids_are_kept(tmp_path):
    expected = fx.make_acdc(tmp_path, conditions=("fog",), ship_train_ids=True)
    for p in tmp_path.rglob("*_gt_labelIds.png"):
        p.unlink()  # only train-ID files shipped: statistics still written
    stats = json.loads(prep.prepare("acdc", tmp_path, progress=False).read_text())
    assert sorted(e["file"] for e in stats) == sorted(expected)


def test_cli_and_errors(tmp_path, capsys):
    fx.make_gta(tmp_path / "gta", n=2)
    assert prep.main(["gta", str(tmp_path / "gta"), "--nproc", "1", "--no-progress"]) == 0
    assert (tmp_path / "gta" / "sample_class_stats.json").exists()
    assert prep.main(["gta", str(tmp_path / "nowhere"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "does not exist" in err and "<root>/labels/*.png" in err
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no label files found"):
        prep.prepare("viper", tmp_path / "empty")
    with pytest.raises(DatasetError, match="valid:"):
        prep.prepare("kitti", tmp_path)


def test_preparation_checks_every_pair_and_reports_all_problems_at_once(tmp_path, capsys):
    fx.make_gta(tmp_path, n=6)
    labels, images = tmp_path / "labels", tmp_path / "images"
    good_before = labels / "00001_labelTrainIds.png"
    prep.prepare("gta", tmp_path, progress=False)  # a clean run: every pair is fine
    assert good_before.is_file() and "250: " in capsys.readouterr().err  # unknown id reported
    stats = tmp_path / "sample_class_stats.json"
    stats.unlink()
    prepared = good_before.read_bytes()
    for p in labels.glob("*_labelTrainIds.png"):
        if p != good_before:
            p.unlink()
    # now break five of the six pairs, each in another way
    (labels / "00002.png").write_bytes((labels / "00002.png").read_bytes()[:60])  # truncated
    (images / "00003.png").write_bytes(b"not an image at all")  # corrupt image
    cv2.imwrite(str(images / "00004.png"), np.zeros((5, 7, 3), np.uint8))  # another size
    (images / "00005.png").unlink()  # a label without its image
    cv2.imwrite(str(images / "00009.png"), np.zeros((8, 8, 3), np.uint8))  # an image, no label
    with pytest.raises(DatasetError) as info:
        prep.prepare("gta", tmp_path, progress=False)
    msg = str(info.value)
    assert "5 problem(s)" in msg and "rerun python -m pipa_core.data.prepare gta" in msg
    for needle in (
        f"{labels / '00002.png'}: cannot decode the label",
        f"{images / '00003.png'}: cannot decode the image",
        f"{images / '00004.png'}: image is 7x5 but its label",
        f"{labels / '00005.png'}: no image for this label",
        f"{images / '00009.png'}: an image without a label file",
    ):
        assert needle in msg, needle
    assert good_before.read_bytes() == prepared  # already-prepared files are left intact
    assert (labels / "00006_labelTrainIds.png").is_file()  # the good pair is converted
    for bad in ("00002", "00003", "00004", "00005"):
        assert not (labels / f"{bad}_labelTrainIds.png").exists()
    assert not stats.exists()  # no statistics over a broken dataset
