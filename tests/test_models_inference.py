"""Whole-image and sliding-window inference."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pipa_core.models import build_segmentor, predict
from pipa_core.models.inference import slide_windows


class PointwiseModel(nn.Module):
    """A per-pixel model (1x1 conv, stride 1): its prediction of a pixel ignores the context,
    so any window layout must reproduce the whole-image logits exactly."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 1)
        self.calls = 0

    def forward(self, img):
        self.calls += 1
        return {"logits": self.conv(img)}


class ShiftModel(nn.Module):
    """Logits depend on the window position (a ramp over the window's columns)."""

    def forward(self, img):
        ramp = torch.linspace(0, 1, img.shape[-1]).expand(img.shape[0], 1, img.shape[-2], -1)
        return {"logits": ramp}


@pytest.mark.parametrize("size", [(37, 53), (16, 16), (10, 40)])
def test_slide_equals_whole_for_pointwise_model(size):
    model = PointwiseModel()
    img = torch.rand(2, 3, *size)
    whole = predict(model, img, mode="whole")
    slide = predict(model, img, mode="slide", crop_size=(16, 16), stride=(10, 11), batch_size=3)
    assert slide.shape == whole.shape == (2, 4, *size)
    torch.testing.assert_close(slide, whole)


def test_slide_averages_overlaps_with_count_map():
    # Width 12, crop 8, stride 4: windows at x=0 and x=4; columns 4..7 are seen twice.
    img = torch.rand(1, 3, 8, 12)
    out = predict(ShiftModel(), img, mode="slide", crop_size=(8, 8), stride=(8, 4))
    ramp = torch.linspace(0, 1, 8)
    expected = torch.cat([ramp[:4], (ramp[4:] + ramp[:4]) / 2, ramp[4:]])
    torch.testing.assert_close(out[0, 0, 0], expected)


def test_slide_windows_cover_image_and_stay_inside():
    for size, crop, stride in [((37, 53), (16, 16), (10, 11)), ((16, 16), (16, 16), (8, 8))]:
        covered = torch.zeros(size)
        for y1, y2, x1, x2 in slide_windows(size, crop, stride):
            assert 0 <= y1 and y2 <= size[0] and 0 <= x1 and x2 <= size[1]
            assert (y2 - y1, x2 - x1) == crop
            covered[y1:y2, x1:x2] += 1
        assert covered.min() >= 1
    assert len(slide_windows((16, 16), (16, 16), (8, 8))) == 1


def test_segmentor_slide_and_whole_agree_on_one_window():
    torch.manual_seed(0)
    seg = build_segmentor(
        "daformer_mit_b0", num_classes=3, decoder_channels=16, proj_heads=()
    ).eval()
    img = torch.rand(1, 3, 32, 48)
    whole = seg.predict(img)
    slide = seg.predict(img, mode="slide", crop_size=(32, 48), stride=(16, 24))
    assert whole.shape == (1, 3, 32, 48)
    torch.testing.assert_close(slide, whole)
    # Non-divisible sizes and images smaller than the crop (padded) come back at input size.
    odd = seg.predict(torch.rand(1, 3, 30, 45), mode="slide", crop_size=(32, 32), stride=(16, 16))
    assert odd.shape == (1, 3, 30, 45) and torch.isfinite(odd).all()
    # Flip averaging: equals the mean of the prediction and the flipped prediction of the flip.
    flipped = seg.predict(img, flip=True)
    manual = 0.5 * (whole + seg.predict(img.flip(-1)).flip(-1))
    torch.testing.assert_close(flipped, manual)


def test_padding_uses_normalisation_mean():
    # The padded border must be the image mean colour, i.e. exactly zero after normalising.
    seen = {}

    class Spy(nn.Module):
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)

        def forward(self, img):
            seen["img"] = img.clone()
            return {"logits": img[:, :1]}

    img = torch.rand(1, 3, 10, 12)
    predict(Spy(), img, mode="slide", crop_size=(16, 16))
    padded = seen["img"]
    assert padded.shape == (1, 3, 16, 16)
    torch.testing.assert_close(padded[..., :10, :12], img)
    torch.testing.assert_close(padded[..., 10:, :], Spy.mean.expand(1, 3, 6, 16))


def test_predict_errors():
    model = PointwiseModel()
    img = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match="mode must be"):
        predict(model, img, mode="sliding")
    with pytest.raises(ValueError, match="needs crop_size"):
        predict(model, img, mode="slide")
    with pytest.raises(ValueError, match="leave gaps"):
        predict(model, img, mode="slide", crop_size=(4, 4), stride=(6, 2))
