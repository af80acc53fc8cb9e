"""Confusion-matrix mIoU: hand-computed cases, protocols, and the cityscapesscripts cross-check."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from pipa_core.eval.metrics import (
    SegmentationMetric,
    confusion_matrix,
    iou_from_confusion,
    summarize,
)
from pipa_core.labels import CITYSCAPES_ID_TO_TRAINID, CLASSES, PROTOCOLS, make_lut


def test_confusion_matrix_hand_computed():
    # 3 classes; gt rows, pred columns. 255 pixels are skipped.
    gt = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 1]])
    pr = torch.tensor([[0, 1, 1, 1], [2, 0, 0, 2]])
    cm = confusion_matrix(pr, gt, num_classes=3)
    expected = torch.tensor([[1, 1, 0], [0, 2, 1], [1, 0, 1]])
    assert torch.equal(cm, expected)
    iou = iou_from_confusion(cm)
    # class 0: tp1 fp1 fn1 -> 1/3 ; class 1: tp2 fp1 fn1 -> 2/4 ; class 2: tp1 fp1 fn1 -> 1/3
    assert torch.allclose(iou, torch.tensor([1 / 3, 0.5, 1 / 3], dtype=torch.float64))


def test_whole_split_not_mean_of_images():
    # Image A: class 0 perfect over 100 px. Image B: class 0 has 1 px right, 1 px wrong.
    m = SegmentationMetric(num_classes=19)
    m.update(torch.zeros(10, 10, dtype=torch.long), torch.zeros(10, 10, dtype=torch.long))
    m.update(torch.tensor([0, 1]), torch.tensor([0, 0]))
    res = m.compute("cs19")
    # class 0: tp 101, fn 1 -> 101/102 ; class 1: tp 0 fp 1 -> 0. Other classes absent.
    assert res.per_class["road"] == pytest.approx(100 * 101 / 102)
    assert res.per_class["sidewalk"] == pytest.approx(0.0)
    assert res.miou == pytest.approx((100 * 101 / 102 + 0.0) / 2)
    assert len(res.excluded) == 17 and "building" in res.excluded
    assert res.per_class["building"] is None


def test_absent_classes_excluded_not_zero_or_hundred():
    cm = torch.zeros(19, 19, dtype=torch.long)
    cm[0, 0] = 50  # only road present, perfectly predicted
    res = summarize(cm, "cs19")
    assert res.miou == pytest.approx(100.0)
    cm[3, 0] = 10  # wall in GT, predicted as road: wall IoU 0, road 50/60
    res = summarize(cm, "cs19")
    assert res.per_class["wall"] == 0.0
    assert res.miou == pytest.approx((100 * 50 / 60 + 0) / 2)


def test_protocols_select_classes():
    assert len(PROTOCOLS["cs19"]) == 19
    assert len(PROTOCOLS["syn16"]) == 16 and len(PROTOCOLS["syn13"]) == 13
    assert len(PROTOCOLS["viper15"]) == 15 and len(PROTOCOLS["synseq11"]) == 11
    # A perfect matrix except for truck: truck drops out of syn16 but not cs19.
    cm = torch.diag(torch.full((19,), 10))
    cm[CLASSES.index("truck"), CLASSES.index("car")] = 10
    cm[CLASSES.index("truck"), CLASSES.index("truck")] = 0
    assert summarize(cm, "syn16").miou > summarize(cm, "cs19").miou
    assert set(summarize(cm, "syn13").per_class) == {CLASSES[i] for i in PROTOCOLS["syn13"]}
    with pytest.raises(ValueError, match="valid protocols"):
        summarize(cm, "gta20")


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(torch.zeros(2, 3), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="train IDs"):
        confusion_matrix(torch.zeros(4), torch.tensor([0, 1, 33, 2]))
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(torch.tensor([0, 19]), torch.tensor([0, 1]))


def test_result_json_and_markdown(tmp_path):
    from pipa_core.io import atomic_write_json

    cm = torch.diag(torch.arange(1, 20))
    res = summarize(cm, "syn16")
    atomic_write_json(tmp_path / "r.json", res.to_dict())
    assert (tmp_path / "r.json").read_text().count("road") == 1
    md = res.to_markdown("demo")
    assert "| road |" in md and "100.0" in md


def test_matches_cityscapesscripts_evaluator(tmp_path):
    """Our trainId confusion matrix gives exactly the IoUs of the official evaluator."""
    import cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling as cs_eval
    from cityscapesscripts.helpers.labels import trainId2label

    rng = np.random.default_rng(0)
    lut = make_lut(CITYSCAPES_ID_TO_TRAINID, 256)
    valid_ids = np.array([lb for lb in range(34)] + [0] * 10)  # includes ignored ids
    train_to_id = np.array([trainId2label[t].id for t in range(19)])
    preds, gts, metric = [], [], SegmentationMetric()
    for k in range(3):
        gt_ids = rng.choice(valid_ids, size=(40, 60)).astype(np.uint8)
        gt_ids[:, :10] = 26  # a big block of car
        pred_train = lut[gt_ids].astype(np.int64)
        noise = rng.random(gt_ids.shape) < 0.3
        pred_train[noise] = rng.integers(0, 19, size=int(noise.sum()))
        pred_train[pred_train == 255] = rng.integers(0, 19, size=int((pred_train == 255).sum()))
        pred_train[pred_train == CLASSES.index("train")] = CLASSES.index("bus")  # train absent
        pred_ids = train_to_id[pred_train].astype(np.uint8)
        gp, pp = tmp_path / f"{k}_gtFine_labelIds.png", tmp_path / f"{k}_pred.png"
        Image.fromarray(gt_ids).save(gp)
        Image.fromarray(pred_ids).save(pp)
        gts.append(str(gp))
        preds.append(str(pp))
        metric.update(torch.from_numpy(pred_train), torch.from_numpy(lut[gt_ids].astype(np.int64)))

    cs_eval.args.evalInstLevelScore = False
    cs_eval.args.JSONOutput = False
    cs_eval.args.quiet = True
    official = cs_eval.evaluateImgLists(preds, gts, cs_eval.args)["classScores"]
    ours = metric.compute("cs19").per_class
    compared = 0
    for name in CLASSES:
        ref = official[name]
        if math.isnan(ref):
            assert ours[name] is None
        else:
            assert ours[name] == pytest.approx(100 * ref, abs=1e-9)
            compared += 1
    assert compared >= 17
