"""Joint image / label transforms: nearest labels, cat_max_ratio crops, consistent flips."""

from __future__ import annotations

import pytest
import torch

from pipa_core.data.transforms import (
    ColorDistortion,
    Compose,
    DropLabel,
    Normalize,
    PhotoMetricDistortion,
    RandomCrop,
    RandomGaussianBlur,
    RandomGaussianNoise,
    RandomHorizontalFlip,
    Resize,
    SourceAugment,
    train_pipeline,
    val_pipeline,
)


def _sample(label: torch.Tensor) -> dict:
    """Image whose R channel encodes the label (label / 255), G a column index; same ref frame."""
    h, w = label.shape
    img = torch.stack(
        [label.float() / 255, torch.arange(w).float().expand(h, w) / w, torch.full((h, w), 0.5)]
    )
    return {"img": img, "img_ref": img.clone(), "label": label, "name": "x"}


def _consistent(s: dict) -> bool:
    return torch.equal((s["img"][0] * 255).round().long(), s["label"]) and torch.equal(
        s["img"], s["img_ref"]
    )


def test_resize_label_is_nearest_image_bilinear():
    label = torch.tensor([[0, 5], [18, 255]])
    out = Resize((4, 4))({"img": torch.rand(3, 2, 2), "label": label})
    want = label.repeat_interleave(2, 0).repeat_interleave(2, 1)
    assert torch.equal(out["label"].as_subclass(torch.Tensor), want)
    big = torch.randint(0, 19, (64, 64))
    small = Resize((17, 23))({"img": torch.rand(3, 64, 64), "label": big})["label"]
    assert small.shape == (17, 23) and set(small.unique().tolist()) <= set(big.unique().tolist())
    img = torch.zeros(3, 2, 2)
    img[:, :, 1] = 1.0
    up = Resize((2, 8))({"img": img})["img"]
    assert 0.0 < float(up[0, 0, 3]) < 1.0  # bilinear: intermediate values appear


@pytest.mark.parametrize(
    "hw,scale,want",
    [((1052, 1914), (720, 1280), (704, 1280)), ((1024, 2048), (512, 1024), (512, 1024)),
     ((1080, 1920), (540, 960), (540, 960)), ((760, 1280), (760, 1280), (760, 1280))],
)  # fmt: skip
def test_keep_ratio_resize_matches_daformer_sizes(hw, scale, want):
    out = Resize(scale, keep_ratio=True)(
        {"img": torch.zeros(1, *hw), "label": torch.zeros(hw, dtype=torch.long)}
    )
    assert out["img"].shape[-2:] == want and out["label"].shape == want


def test_resize_keeps_full_res_label_when_asked():
    out = val_pipeline((8, 8), resize_label=False)({"img": torch.rand(3, 16, 16),
                                                     "label": torch.zeros(16, 16, dtype=torch.long)})  # fmt: skip
    assert out["img"].shape == (3, 8, 8) and out["label"].shape == (16, 16)


def _two_class_label() -> torch.Tensor:
    label = torch.zeros(24, 64, dtype=torch.long)
    label[:, 48:] = 1
    return label


def _acceptance(cat_max_ratio: float, max_tries: int, n: int = 400) -> float:
    g = torch.Generator().manual_seed(0)
    crop = RandomCrop((24, 16), cat_max_ratio, max_tries, generator=g)
    ok = 0
    for _ in range(n):
        lab = crop(_sample(_two_class_label()))["label"]
        counts = torch.bincount(lab.flatten(), minlength=2)
        ok += int(counts.min() > 0 and counts.max() / counts.sum() < 0.75)
    return ok / n


def test_random_crop_cat_max_ratio_matches_retry_probability():
    # 49 window positions, 7 of them (left 37..43) have both classes below 75 %.
    p = 7 / 49
    assert _acceptance(0.75, 10) == pytest.approx(1 - (1 - p) ** 10, abs=0.07)
    assert _acceptance(0.75, 1) == pytest.approx(p, abs=0.06)
    assert _acceptance(1.0, 10) == pytest.approx(p, abs=0.06)  # check disabled


def test_random_crop_keeps_image_and_label_aligned_and_pads():
    label = torch.randint(0, 19, (20, 30))
    out = RandomCrop((8, 12), generator=torch.Generator().manual_seed(1))(_sample(label))
    assert out["img"].shape == (3, 8, 12) and out["label"].shape == (8, 12)
    assert _consistent(out)
    small = RandomCrop((32, 32))(_sample(torch.ones(20, 30, dtype=torch.long)))
    assert small["label"].shape == (32, 32)
    assert (small["label"][20:] == 255).all() and (small["img"][:, 20:] == 0).all()


def test_flip_is_consistent_for_img_ref_and_label():
    label = torch.randint(0, 19, (6, 9))
    g = torch.Generator().manual_seed(3)
    flip = RandomHorizontalFlip(0.5, generator=g)
    flipped = 0
    for _ in range(40):
        out = flip(_sample(label))
        assert _consistent(out)
        is_flipped = torch.equal(out["label"].as_subclass(torch.Tensor), label.flip(-1))
        assert is_flipped or torch.equal(out["label"].as_subclass(torch.Tensor), label)
        flipped += is_flipped
    assert 8 < flipped < 32
    assert _consistent(RandomHorizontalFlip(1.0)(_sample(label)))


def test_photometric_same_for_both_frames_and_labels_untouched():
    label = torch.randint(0, 19, (8, 8))
    changed = 0
    torch.manual_seed(0)
    for _ in range(10):
        s = _sample(label)
        out = PhotoMetricDistortion()(s)
        assert torch.equal(out["img"], out["img_ref"])
        assert torch.equal(out["label"].as_subclass(torch.Tensor), label)
        assert float(out["img"].min()) >= 0 and float(out["img"].max()) <= 1
        changed += not torch.allclose(out["img"], s["img"])
    assert changed >= 5


def test_normalize_drop_label_and_pipelines_return_plain_tensors():
    img = torch.rand(3, 4, 4)
    out = Compose([Normalize()])({"img": img, "label": torch.zeros(4, 4, dtype=torch.long)})
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    assert torch.allclose(out["img"], (img - mean) / std)
    assert type(out["img"]) is torch.Tensor and out["label"].dtype == torch.int64
    dropped = Compose([DropLabel()])({"img": img, "label": torch.zeros(4, 4, dtype=torch.long)})
    assert (dropped["label"] == 255).all()
    torch.manual_seed(0)
    s = train_pipeline((40, 60), (16, 16))(_sample(torch.randint(0, 19, (20, 30))))
    assert s["img"].shape == (3, 16, 16) and s["img_ref"].shape == (3, 16, 16)
    assert type(s["label"]) is torch.Tensor and s["label"].dtype == torch.int64


def test_color_distortion_same_for_both_frames_labels_untouched_and_grey():
    label = torch.randint(0, 19, (8, 8))
    torch.manual_seed(0)
    changed = 0
    for _ in range(10):
        s = _sample(label)
        out = ColorDistortion(1.0)(s)
        assert torch.equal(out["img"], out["img_ref"])
        assert torch.equal(out["label"].as_subclass(torch.Tensor), label)
        assert float(out["img"].min()) >= 0 and float(out["img"].max()) <= 1
        changed += not torch.allclose(out["img"], s["img"])
    assert changed >= 7  # jitter with p = 0.8, grey with p = 0.2
    grey = ColorDistortion(1.0, p_jitter=0.0, p_gray=1.0)(_sample(label))["img"]
    assert torch.allclose(grey[0], grey[1]) and torch.allclose(grey[1], grey[2])
    s = _sample(label)
    same = ColorDistortion(0.0, p_gray=0.0)(s)  # strength 0: identity
    assert torch.allclose(same["img"], s["img"])
    with pytest.raises(ValueError, match=">= 0"):
        ColorDistortion(-1.0)


def test_source_augment_adds_its_steps_in_order_and_rescales():
    aug = SourceAugment(color_distortion=0.5, blur_p=0.3, noise_std=0.02, ratio_range=(1.5, 1.5))
    steps = train_pipeline((8, 16), (8, 8), photometric=False, augment=aug).transforms
    kinds = [type(t) for t in steps]
    assert kinds[-3:] == [ColorDistortion, RandomGaussianBlur, RandomGaussianNoise]
    assert steps[-3].strength == 0.5 and steps[-2].p == 0.3 and steps[-1].max_std == 0.02
    assert steps[-2].sigma_range == pytest.approx(
        (0.1 * 8 / 224, 2.0 * 8 / 224)
    )  # SimCLR's, scaled
    assert steps[0].ratio_range == (1.5, 1.5)
    plain = train_pipeline((8, 16), (8, 8), photometric=False).transforms
    assert [type(t) for t in plain] == [Resize, RandomCrop, RandomHorizontalFlip]
    resized = Resize((8, 16), keep_ratio=True, ratio_range=(1.5, 1.5))(
        _sample(torch.zeros(8, 16, dtype=torch.long))
    )
    assert resized["img"].shape[-2:] == (12, 24) and resized["label"].shape == (12, 24)


def test_blur_and_noise_keep_labels_and_range():
    label = torch.randint(0, 19, (16, 16))
    torch.manual_seed(0)
    s = _sample(label)
    s["img"] = torch.rand(3, 16, 16)
    s["img_ref"] = s["img"].clone()
    blurred = RandomGaussianBlur(p=1.0, sigma_range=(1.0, 1.0))(s)
    assert torch.equal(blurred["img"], blurred["img_ref"])  # the same sigma for both frames
    assert blurred["img"].std() < s["img"].std() * 0.7  # smoother
    assert torch.equal(blurred["label"].as_subclass(torch.Tensor), label)
    noisy = RandomGaussianNoise(0.05)(s)
    assert not torch.equal(noisy["img"], noisy["img_ref"])  # each frame its own sensor noise
    assert float(noisy["img"].min()) >= 0 and float(noisy["img"].max()) <= 1
    assert torch.equal(noisy["label"].as_subclass(torch.Tensor), label)


def test_drop_label_can_keep_the_true_label_aside():
    label = torch.randint(0, 19, (4, 4))
    out = Compose([DropLabel(keep_as="hidden_label")])({"img": torch.rand(3, 4, 4), "label": label})
    assert (out["label"] == 255).all()
    assert torch.equal(out["hidden_label"], label) and type(out["hidden_label"]) is torch.Tensor
