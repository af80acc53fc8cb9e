"""Loading the real benchmark layouts through the dataset classes users run, and bad input."""

from __future__ import annotations

import cv2
import data_fixtures as fx
import numpy as np
import pytest
import torch

from pipa_core.data.acdc import ACDCDataset, DarkZurichDataset
from pipa_core.data.base import DatasetError
from pipa_core.data.cityscapes import CityscapesDataset, CityscapesSeqDataset
from pipa_core.data.gta import GTADataset
from pipa_core.data.prepare import prepare
from pipa_core.data.synthia import SynthiaDataset, SynthiaSeqDataset
from pipa_core.data.viper import ViperSeqDataset


def _check_sample(s, labelled=True):
    assert s["img"].dtype == torch.float32 and s["img"].shape == (3, fx.H, fx.W)
    assert 0.0 <= float(s["img"].min()) and float(s["img"].max()) <= 1.0
    assert s["label"].dtype == torch.int64 and s["label"].shape == (fx.H, fx.W)
    assert isinstance(s["name"], str)
    if not labelled:
        assert (s["label"] == 255).all()
    assert type(s["img"]) is torch.Tensor and type(s["label"]) is torch.Tensor


def _label_matches(ds, expected, root):
    for i, lbl in enumerate(ds.label_files):
        exp = expected[lbl.relative_to(root).as_posix()]
        np.testing.assert_array_equal(ds[i]["label"].numpy(), exp)


def test_gta_and_synthia_load_prepared_pairs(tmp_path):
    for make, name, cls in (
        (fx.make_gta, "gta", GTADataset),
        (fx.make_synthia, "synthia", SynthiaDataset),
    ):
        root = tmp_path / name
        expected = make(root, n=3)
        prepare(name, root, progress=False)
        ds = cls(root)
        assert len(ds) == 3
        _check_sample(ds[0])
        _label_matches(ds, expected, root)
        # image R channel encodes the raw id: image and label come from the same file pair
        assert ds[1]["name"] == ds.records[1].img.stem


def test_cityscapes_splits_and_unlabelled_target(tmp_path):
    expected = fx.make_cityscapes(tmp_path)
    prepare("cityscapes", tmp_path, progress=False)
    train = CityscapesDataset(tmp_path, "train")
    val = CityscapesDataset(tmp_path, "val")
    assert len(train) == 4 and len(val) == 4
    assert train[0]["name"] == "aachen_000000_000019"
    _label_matches(val, expected, tmp_path)
    target = CityscapesDataset(tmp_path, "train", labelled=False)
    _check_sample(target[0], labelled=False)
    with pytest.raises(DatasetError, match="valid splits: train, val, test"):
        CityscapesDataset(tmp_path, "trainval")


def test_acdc_conditions_and_dark_zurich(tmp_path):
    expected = fx.make_acdc(tmp_path / "acdc", conditions=("fog", "night"))
    prepare("acdc", tmp_path / "acdc", progress=False)
    ds = ACDCDataset(tmp_path / "acdc", "val", conditions=("fog", "night"))
    assert len(ds) == 4 and {n.split("/")[0] for n in (r.name for r in ds.records)} == {
        "fog",
        "night",
    }
    _label_matches(ds, expected, tmp_path / "acdc")
    fog = ACDCDataset(tmp_path / "acdc", "train", conditions=("fog",), labelled=False)
    assert len(fog) == 2
    _check_sample(fog[0], labelled=False)
    with pytest.raises(DatasetError, match="missing folder.*rain"):
        ACDCDataset(tmp_path / "acdc", "train")  # rain / snow were not extracted
    dz_exp = fx.make_darkzurich(tmp_path / "dz")
    prepare("darkzurich", tmp_path / "dz", progress=False)
    assert len(DarkZurichDataset(tmp_path / "dz", "train")) == 3
    dz_val = DarkZurichDataset(tmp_path / "dz", "val")
    _label_matches(dz_val, dz_exp, tmp_path / "dz")
    with pytest.raises(DatasetError, match="no labels"):
        DarkZurichDataset(tmp_path / "dz", "train", labelled=True)


def test_cityscapes_seq_key_frame_is_20th_and_offsets(tmp_path):
    expected = fx.make_cityscapes_seq(tmp_path, seqs=(0, 1), start=100)
    prepare("cityscapes_seq", tmp_path, progress=False)
    for off in (-1, -3, 2):
        ds = CityscapesSeqDataset(tmp_path, "train", ref_offset=off)
        assert len(ds) == 2
        s = ds[1]
        assert s["name"] == "aachen_000001_000119" and s["ref_offset"] == off
        # frame k of seq 1 has R = (k % 200) + 1
        assert round(float(s["img"][0, 0, 0]) * 255) == 119 + 1
        assert round(float(s["img_ref"][0, 0, 0]) * 255) == 119 + off + 1
    _label_matches(ds, expected, tmp_path)
    # Unlabelled target: key frames from the snippet structure equal the gtFine frames.
    target = CityscapesSeqDataset(tmp_path, "train", ref_offset=-1, labelled=False)
    assert [r.key.name for r in target.records] == [r.key.name for r in ds.records]
    assert (target[0]["label"] == 255).all()
    with pytest.raises(DatasetError, match="reference frame"):
        CityscapesSeqDataset(tmp_path, "train", ref_offset=20)


def test_viper_keys_are_annotated_frames_with_reference(tmp_path):
    expected = fx.make_viper(tmp_path, frames=range(0, 5), labelled=(0, 2, 4))
    prepare("viper", tmp_path, progress=False)
    ds = ViperSeqDataset(tmp_path, "train", ref_offset=-1)
    # frame 0 has no previous frame: dropped, the others kept
    assert [r.key.name for r in ds.records] == ["001_00002", "001_00004", "002_00002", "002_00004"]
    assert ds.dropped == 2
    s = ds[2]
    assert round(float(s["img"][0, 0, 0]) * 255) == 10 * 2 + 2
    assert round(float(s["img_ref"][0, 0, 0]) * 255) == 10 * 1 + 2
    _label_matches(ds, expected, tmp_path)
    fwd = ViperSeqDataset(tmp_path, "train", ref_offset=1)
    assert [r.ref_img.stem for r in fwd.records][:2] == ["001_00001", "001_00003"]
    fx.write_rgb(
        tmp_path / "train" / "img" / "001" / "001_final.png", np.zeros((4, 4, 3), np.uint8)
    )
    with pytest.raises(DatasetError, match=r"cannot parse .*001_final\.png"):
        ViperSeqDataset(tmp_path, "train")


def test_viper_jpeg_images(tmp_path):
    fx.make_viper(tmp_path, seqs=("003",), frames=range(0, 3), labelled=(1,), ext=".jpg")
    prepare("viper", tmp_path, progress=False)
    ds = ViperSeqDataset(tmp_path, "train", ref_offset=1)
    assert len(ds) == 1 and ds.records[0].ref_img.name == "003_00002.jpg"


def test_synthia_seq_every_frame_is_key(tmp_path):
    expected = fx.make_synthia_seq(tmp_path, n=4)
    prepare("synthia_seq", tmp_path, progress=False)
    ds = SynthiaSeqDataset(tmp_path, ref_offset=-2)
    assert len(ds) == 2 and ds.dropped == 2
    s = ds[0]
    assert s["name"] == "SYNTHIA-SEQS-04-DAWN/000002"
    assert round(float(s["img_ref"][1, 0, 0]) * 255) == 0  # frame 0's marker
    _label_matches(ds, expected, tmp_path)
    one = SynthiaSeqDataset(tmp_path / "SYNTHIA-SEQS-04-DAWN", ref_offset=1)  # a single folder
    assert len(one) == 3


# ----------------------------------------------------------------------------- bad input
def test_missing_root_names_layout_and_command(tmp_path):
    with pytest.raises(DatasetError) as e:
        GTADataset(tmp_path / "gta")
    msg = str(e.value)
    assert "does not exist" in msg and "<root>/images/*.png" in msg
    assert f"python -m pipa_core.data.prepare gta {tmp_path / 'gta'}" in msg
    (tmp_path / "cs" / "leftImg8bit" / "train").mkdir(parents=True)
    with pytest.raises(
        DatasetError, match=r"(?s)missing folder .*gtFine.*leftImg8bit/\{train,val\}"
    ):
        CityscapesDataset(tmp_path / "cs", "train")


def test_unprepared_dataset_names_command(tmp_path):
    fx.make_synthia(tmp_path, n=2)
    with pytest.raises(DatasetError) as e:
        SynthiaDataset(tmp_path)
    assert "not been prepared" in str(e.value)
    assert f"python -m pipa_core.data.prepare synthia {tmp_path}" in str(e.value)


def test_image_without_label_and_label_without_image(tmp_path):
    fx.make_gta(tmp_path, n=3)
    prepare("gta", tmp_path, progress=False)
    (tmp_path / "labels" / "00002_labelTrainIds.png").unlink()
    with pytest.raises(DatasetError, match=r"image .*00002\.png has no label"):
        GTADataset(tmp_path)
    prepare("gta", tmp_path, progress=False)
    (tmp_path / "images" / "00003.png").unlink()
    with pytest.raises(DatasetError, match=r"label .*00003_labelTrainIds\.png has no image"):
        GTADataset(tmp_path)


def test_size_mismatch_and_unreadable_files_name_the_file(tmp_path):
    fx.make_gta(tmp_path, n=2)
    prepare("gta", tmp_path, progress=False)
    big = np.zeros((fx.H + 4, fx.W, 3), np.uint8)
    cv2.imwrite(str(tmp_path / "images" / "00001.png"), big)
    ds = GTADataset(tmp_path)
    with pytest.raises(
        DatasetError, match=r"size mismatch: image .*00001\.png.*00001_labelTrainIds"
    ):
        ds[0]
    (tmp_path / "images" / "00002.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=r"cannot read image file .*00002\.png"):
        ds[1]
    (tmp_path / "labels" / "00002_labelTrainIds.png").write_bytes(b"\x89PNG truncated")
    fx.write_rgb(tmp_path / "images" / "00002.png", fx.image_for(np.zeros((fx.H, fx.W), int)))
    with pytest.raises(DatasetError, match=r"cannot read label file .*00002_labelTrainIds\.png"):
        ds[1]
