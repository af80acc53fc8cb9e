"""Visualisation: masks, atomic figure saving, seaborn figures and the ipywidgets browser."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from torch import nn

from pipa_core.eval.ccd import CCDResult, ClassCenterStats
from pipa_core.eval.tsne import TSNEResult
from pipa_core.labels import PALETTE
from pipa_core.viz import (
    SplitBrowser,
    ablation_barplot,
    ablation_table,
    ccd_barplot,
    ccd_table,
    confusion_heatmap,
    error_map,
    overlay,
    qualitative_grid,
    save_figure,
    to_uint8_image,
    tsne_scatter,
)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_overlay_and_error_map_by_hand():
    img = torch.zeros(3, 1, 3)
    img[:, 0, 2] = 1.0
    label = torch.tensor([[0, 255, 13]])
    out = overlay(img, label, alpha=0.5)
    road, car = np.array(PALETTE[0]), np.array(PALETTE[13])
    assert np.array_equal(out[0, 0], (road * 0.5 + 0.5).astype(np.uint8))
    assert np.array_equal(out[0, 1], [0, 0, 0])  # ignore: plain (black) image
    assert np.array_equal(out[0, 2], (255 * 0.5 + car * 0.5 + 0.5).astype(np.uint8))
    err = error_map(torch.tensor([[0, 1, 2]]), torch.tensor([[0, 2, 255]]))
    assert err[0, 0].tolist() == [0, 0, 0] and err[0, 1].tolist() == [255, 255, 255]
    assert err[0, 2].tolist() == [110, 110, 110]
    assert to_uint8_image(torch.ones(3, 2, 2)).shape == (2, 2, 3)
    with pytest.raises(ValueError, match="differ in size"):
        error_map(np.zeros((2, 2)), np.zeros((2, 3)))


def test_save_figure_is_atomic_and_checks_format(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    p = save_figure(fig, tmp_path / "sub" / "f.png")
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert save_figure(fig, tmp_path / "f.pdf").read_bytes()[:4] == b"%PDF"
    assert sorted(x.name for x in (tmp_path / "sub").iterdir()) == ["f.png"]  # no temp file left
    with pytest.raises(ValueError, match="format"):
        save_figure(fig, tmp_path / "f.txt")


def test_qualitative_grid_layout():
    imgs = [torch.rand(3, 6, 8) for _ in range(2)]
    gts = [torch.randint(0, 3, (6, 8)) for _ in range(2)]
    preds = {"source-only": [torch.randint(0, 3, (6, 8)) for _ in range(2)], "PiPa": gts}
    fig = qualitative_grid(imgs, gts, preds, names=["a", "b"])
    # 2 rows x (image, gt, 2 x (pred, errors)) = 12 panels
    assert len(fig.axes) == 12
    assert [ax.get_title() for ax in fig.axes[:6]] == [
        "image", "ground truth", "source-only", "source-only: errors", "PiPa", "PiPa: errors",
    ]  # fmt: skip
    # PiPa predicts the ground truth -> its error map is all black
    assert fig.axes[5].images[0].get_array().max() == 0
    with pytest.raises(ValueError, match="same positive number"):
        qualitative_grid(imgs, gts[:1], preds)


def test_confusion_heatmap_row_normalised():
    cm = torch.zeros(19, 19, dtype=torch.int64)
    cm[0, 0], cm[0, 1], cm[1, 1] = 3, 1, 5
    fig = confusion_heatmap(cm, "cs19", annotate=False)
    ax = fig.axes[0]
    vals = np.ma.filled(ax.collections[0].get_array(), np.nan).reshape(19, 19)
    assert vals[0, 0] == pytest.approx(75.0) and vals[0, 1] == pytest.approx(25.0)
    assert vals[1, 1] == pytest.approx(100.0) and np.isnan(vals[2]).all()  # absent row stays empty
    assert ax.get_xticklabels()[0].get_text() == "road"
    fig16 = confusion_heatmap(cm, "syn16", annotate=False)
    assert len(fig16.axes[0].get_yticklabels()) == 16


def _tsne_result(seed):
    rng = np.random.default_rng(seed)
    return TSNEResult(
        rng.normal(size=(40, 2)).astype(np.float32),
        np.repeat([0, 13], 20),
        np.tile([0, 1], 20),
        ("source", "target"),
        "sklearn",
        5.0,
    )


def test_tsne_scatter_two_checkpoints_side_by_side():
    fig = tsne_scatter({"baseline": _tsne_result(0), "PiPa": _tsne_result(1)})
    axes = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in axes] == ["baseline", "PiPa"]
    # 2 classes x 2 domains = 4 scatter groups per panel, coloured by the Cityscapes palette
    assert len(axes[0].collections) == 4
    colours = {
        tuple(np.round(c.get_facecolor()[0][:3] * 255).astype(int)) for c in axes[0].collections
    }
    assert colours == {PALETTE[0], PALETTE[13]}
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["road", "car", "source", "target"]


def _ccd_result(scale):
    acc_s, acc_t = ClassCenterStats(), ClassCenterStats()
    x = torch.tensor([[0.0, 0], [2, 0], [5, 0], [5, 2], [1, 4]]) * scale
    y = torch.tensor([0, 0, 1, 1, 2])
    acc_s.update(x, y)
    acc_t.update(x * torch.tensor([1.0, 2.0]), y)
    stats = {"source": acc_s, "target": acc_t}
    return CCDResult(
        {k: s.ccd() for k, s in stats.items()}, {k: s.count for k, s in stats.items()}, (0, 1, 2)
    )


def test_ccd_table_and_barplot():
    res = {"baseline": _ccd_result(1.0), "PiPa": _ccd_result(1.0)}
    t = ccd_table(res, "source")
    assert list(t.columns) == ["road", "sidewalk", "building", "mean"]
    assert t.loc["baseline", "road"] == pytest.approx(0.5 * (1 / 17 + 1 / 16))
    fig = ccd_barplot(res, "target")
    assert len(fig.axes[0].patches) >= 6  # 3 classes x 2 models
    with pytest.raises(KeyError, match="no domain"):
        ccd_table(res, "elsewhere")


def test_ablation_table_mean_std_and_plot():
    runs = [
        {"setting": "baseline", "seed": 0, "mIoU": 40.0},
        {"setting": "baseline", "seed": 1, "mIoU": 42.0},
        {"setting": "+pixel", "seed": 0, "mIoU": 45.0},
    ]
    t = ablation_table(runs)
    assert list(t.index) == ["baseline", "+pixel"]
    assert t.loc["baseline", "mean"] == 41.0 and t.loc["baseline", "std"] == pytest.approx(2**0.5)
    assert t.loc["+pixel", "std"] == 0.0 and t.loc["+pixel", "runs"] == 1
    assert t.loc["baseline", "mean ± std"] == "41.00 ± 1.41"
    fig = ablation_barplot(runs)
    assert len(fig.axes[0].patches) == 2
    with pytest.raises(KeyError, match="lack column"):
        ablation_table(runs, value="accuracy")


class _ConstSeg(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, img):
        logits = torch.zeros(img.shape[0], 19, img.shape[2] // 2, img.shape[3] // 2)
        logits[:, 1] = 1.0  # always sidewalk
        return {"logits": logits + self.w, "feat": img[:, :, ::2, ::2]}


def test_split_browser_constructs_without_kernel_and_follows_slider():
    data = [
        {
            "img": torch.rand(3, 8, 10),
            "label": torch.full((8, 10), k, dtype=torch.long),
            "name": f"s{k}",
        }
        for k in range(3)
    ]
    br = SplitBrowser(data, _ConstSeg())
    first = br.image.value
    assert first[:8] == b"\x89PNG\r\n\x1a\n" and "s0" in br.caption.value
    br.slider.value = 1  # label all sidewalk -> prediction all right
    assert br.image.value != first and "s1" in br.caption.value and "100.0%" in br.caption.value
    strip, info = br.panels(2)
    assert strip.shape == (8, 4 * 10 + 3 * 4, 3) and info["pixel_accuracy"] == 0.0
    plain = SplitBrowser(data)
    assert plain.panels(0)[0].shape == (8, 2 * 10 + 4, 3)
    assert br.slider.max == 2
