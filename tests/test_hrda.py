"""HRDA multi-resolution segmentor: crop geometry, attention fusion, multi-output loss, inference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pipa_core.labels import IGNORE_INDEX
from pipa_core.models import build_segmentor
from pipa_core.models.hrda import (
    HRDASegmentor,
    crop_to_box,
    fuse_scales,
    sample_detail_box,
)


@pytest.fixture(autouse=True)
def _one_thread():
    # 2 shared cores: one intra-op thread avoids oversubscription (10x faster here).
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def seg() -> HRDASegmentor:
    torch.manual_seed(0)
    m = build_segmentor(
        "hrda_daformer_mit_b0",
        decoder_channels=16,
        proj_heads=("pixel",),
        proj_dim=8,
        hrda={"detail_size": (32, 32), "attention_channels": 8},
    )
    return m


# --------------------------------------------------------------------------- geometry
def test_detail_box_inside_aligned_and_seeded():
    boxes = []
    for seed in range(50):
        g = torch.Generator().manual_seed(seed)
        y1, y2, x1, x2 = sample_detail_box((1024, 1024), (512, 512), 8, g)
        assert 0 <= y1 and y2 <= 1024 and 0 <= x1 and x2 <= 1024
        assert (y2 - y1, x2 - x1) == (512, 512)
        assert y1 % 8 == 0 and x1 % 8 == 0
        boxes.append((y1, x1))
        g2 = torch.Generator().manual_seed(seed)
        assert sample_detail_box((1024, 1024), (512, 512), 8, g2) == (y1, y2, x1, x2)
    assert len(set(boxes)) > 40  # different seeds give different boxes


def test_detail_box_uniform_over_every_aligned_position():
    # Context 64x96, detail 32x32, stride 8: 5 row and 9 column positions, incl. the last.
    g = torch.Generator().manual_seed(0)
    n = 4500
    rows = torch.zeros(5)
    cols = torch.zeros(9)
    for _ in range(n):
        y1, _, x1, _ = sample_detail_box((64, 96), (32, 32), 8, g)
        rows[y1 // 8] += 1
        cols[x1 // 8] += 1
    for counts in (rows, cols):
        expected = n / len(counts)
        assert counts.min() > 0  # every aligned position is reachable, the last included
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        assert chi2 < 30.0, counts  # chi-square, p << 0.001 for 4-8 degrees of freedom


def test_detail_box_rejects_bad_sizes():
    with pytest.raises(ValueError, match="fit in the context"):
        sample_detail_box((256, 256), (512, 512), 8)
    with pytest.raises(ValueError, match="stride"):
        sample_detail_box((256, 256), (128, 128), 0)


def test_crop_to_box_scales_the_box_to_the_map():
    label = torch.arange(64 * 64).view(1, 64, 64)
    box = (8, 40, 16, 48)
    assert torch.equal(crop_to_box(label, box, (64, 64)), label[:, 8:40, 16:48])
    small = torch.arange(16 * 16).view(1, 16, 16)  # a stride-4 map of the same context
    assert torch.equal(crop_to_box(small, box, (64, 64)), small[:, 2:10, 4:12])
    with pytest.raises(ValueError, match="whole cells"):
        crop_to_box(torch.zeros(1, 16, 16), (6, 38, 16, 48), (64, 64))


# --------------------------------------------------------------------------- fusion
def test_fuse_scales_rule_on_hand_made_tensors():
    torch.manual_seed(0)
    b, k, s, r = 2, 3, 4, 0.5
    lr = torch.randn(b, k, 8, 8)  # LR logits of a 64x64 context (32x32 view, stride 4)
    hr = torch.randn(b, k, 8, 8)  # HR logits of the 32x32 detail crop
    box = (16, 48, 8, 40)  # context pixels; LR cells 2..6 x 1..5, HR cells 4..12 x 2..10
    att_raw = torch.rand(b, k, 8, 8)
    fused, att = fuse_scales(lr, hr, att_raw, box, s, r)
    assert fused.shape == (b, k, 16, 16) and att.shape == att_raw.shape
    # The attention survives inside the box only (on the LR grid).
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:6, 1:5] = 1
    assert torch.equal(att, att_raw * mask)
    # The exact rule: U(a)·HR_inserted + U((1 − a)·LR).
    hr_ins = torch.zeros(b, k, 16, 16)
    hr_ins[..., 4:12, 2:10] = hr
    up = lambda t: F.interpolate(t, size=(16, 16), mode="bilinear", align_corners=False)  # noqa: E731
    assert torch.allclose(fused, up(att) * hr_ins + up((1 - att) * lr), atol=1e-6)

    # With a constant attention a, the interior of the box is a·HR + (1 − a)·U(LR)
    # and everything away from the box is U(LR).
    a = 0.3
    fused_c, _ = fuse_scales(lr, hr, torch.full((b, k, 8, 8), a), box, s, r)
    inner = (Ellipsis, slice(5, 11), slice(3, 9))  # one HR cell away from the box edge
    expect = a * hr_ins + (1 - a) * up(lr)
    assert torch.allclose(fused_c[inner], expect[inner], atol=1e-6)
    outside = (Ellipsis, slice(0, 3), slice(None))  # rows 0-2: above the box and its blend rim
    assert torch.allclose(fused_c[outside], up(lr)[outside], atol=1e-6)
    # Zero attention: the LR prediction everywhere; one attention: HR inside the box.
    assert torch.allclose(fuse_scales(lr, hr, torch.zeros(b, k, 8, 8), box, s, r)[0], up(lr))
    full_hr, _ = fuse_scales(lr, torch.randn(b, k, 16, 16), torch.ones(b, 1, 8, 8), None, s, r)
    assert full_hr.shape == (b, k, 16, 16)


def test_training_forward_shapes_and_wiring(seg):
    torch.manual_seed(1)
    img = torch.rand(2, 3, 64, 64)
    seg.train()
    out = seg(img, detail_box=(8, 40, 24, 56))
    h = out["hrda"]
    assert out["logits"].shape == (2, 19, 16, 16)  # fused over the context at stride 4
    assert out["feat"].shape == (2, 16, 8, 8)  # HR detail-crop decoder feature
    assert h["lr_logits"].shape == (2, 19, 8, 8) and h["hr_logits"].shape == (2, 19, 8, 8)
    assert h["attention"].shape == (2, 19, 8, 8) and h["crop_box"] == (8, 40, 24, 56)
    assert [e.shape[-1] for e in out["enc"]] == [8, 4, 2, 1]  # LR encoder maps (32x32 view)
    # Random box when none is given: aligned to output_stride / lr_scale = 8.
    y1, y2, x1, x2 = seg(img)["hrda"]["crop_box"]
    assert y1 % 8 == 0 and x1 % 8 == 0 and (y2 - y1, x2 - x1) == (32, 32)
    # Eval-mode BN so that separate forwards are comparable, then rebuild the fusion by hand.
    seg.eval()
    out = seg(img, detail_box=(8, 40, 24, 56))
    with torch.no_grad():
        lr = seg(F.interpolate(img, size=(32, 32), mode="bilinear"), single_scale=True)
        hr = seg(img[..., 8:40, 24:56], single_scale=True)
        att = torch.sigmoid(seg.scale_attention(lr["enc"])[0])
        fused, _ = fuse_scales(lr["logits"], hr["logits"], att, (8, 40, 24, 56), 4, 0.5)
    assert torch.allclose(out["logits"], fused, atol=1e-5)
    assert torch.allclose(out["feat"], hr["feat"], atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(seg.encode(img), lr["enc"]))


def test_bad_context_and_box_raise_clear_errors(seg):
    seg.train()
    with pytest.raises(ValueError, match="divisible by output_stride / lr_scale = 8"):
        seg(torch.rand(1, 3, 60, 64))
    with pytest.raises(ValueError, match="8-pixel grid"):
        seg(torch.rand(1, 3, 64, 64), detail_box=(4, 36, 0, 32))
    base = build_segmentor("daformer_mit_b0", decoder_channels=16, proj_heads=())
    with pytest.raises(ValueError, match="multiple of output_stride / lr_scale"):
        HRDASegmentor(base, detail_size=(36, 36))
    with pytest.raises(ValueError, match="lr_scale must be 1/n"):
        HRDASegmentor(base, lr_scale=0.75)
    with pytest.raises(TypeError, match="single-scale"):
        HRDASegmentor(seg)
    with pytest.raises(ValueError, match="unknown architecture 'hrda_resnet9'"):
        build_segmentor("hrda_resnet9")
    with pytest.raises(ValueError, match="use 'hrda_daformer_mit_b0'"):
        build_segmentor("daformer_mit_b0", hrda={"detail_size": (32, 32)})


# --------------------------------------------------------------------------- losses
def _ce(logits, label, weight=None):
    """Direct CE: bilinear upsampling, mean over labelled pixels, optional weight."""
    logits = F.interpolate(logits, size=label.shape[-2:], mode="bilinear", align_corners=False)
    logp = F.log_softmax(logits, 1)
    valid = label != IGNORE_INDEX
    nll = -logp.gather(1, label.clamp(max=18)[:, None])[:, 0]
    w = weight if weight is not None else torch.ones_like(nll)
    return (nll * w * valid).sum() / valid.sum()


def test_multi_output_loss_matches_direct_computation(seg):
    torch.manual_seed(2)
    seg.train()
    img = torch.rand(2, 3, 64, 64)
    label = torch.randint(0, 19, (2, 64, 64))
    label[:, :5] = IGNORE_INDEX
    weight = torch.rand(2, 64, 64)
    box = (16, 48, 8, 40)
    out = seg(img, detail_box=box)
    h = out["hrda"]
    y1, y2, x1, x2 = box
    for w in (None, weight):
        wc = None if w is None else w[:, y1:y2, x1:x2]
        expect = 0.9 * _ce(out["logits"], label, w) + 0.1 * _ce(
            h["hr_logits"], label[:, y1:y2, x1:x2], wc
        )
        assert torch.allclose(seg.seg_loss(out, label, w), expect, atol=1e-5)
    # An LR term when asked for: weights (1 − 0.1 − 0.2, 0.1, 0.2).
    seg.lr_loss_weight = 0.2
    try:
        expect = (
            0.7 * _ce(out["logits"], label)
            + 0.1 * _ce(h["hr_logits"], label[:, y1:y2, x1:x2])
            + 0.2 * _ce(h["lr_logits"], label)
        )
        assert torch.allclose(seg.seg_loss(out, label), expect, atol=1e-5)
    finally:
        seg.lr_loss_weight = 0.0
    # Gradients reach the encoder through both views and the attention head.
    seg.zero_grad()
    seg.seg_loss(out, label).backward()
    assert seg.scale_attention.conv_seg.weight.grad.abs().sum() > 0
    assert seg.encoder.patch_embed1.proj.weight.grad.abs().sum() > 0


def test_label_for_feat_aligns_labels_and_predictions_with_feat(seg):
    seg.train()
    img = torch.rand(1, 3, 64, 64)
    out = seg(img, detail_box=(24, 56, 0, 32))
    label = torch.randint(0, 19, (1, 64, 64))
    assert torch.equal(seg.label_for_feat(label, out), label[:, 24:56, 0:32])
    pred = out["logits"].argmax(1)  # stride-4 map of the context
    cropped = seg.label_for_feat(pred, out)
    assert cropped.shape[-2:] == out["feat"].shape[-2:]
    assert torch.equal(cropped, pred[:, 6:14, 0:8])
    seg.eval()
    with torch.no_grad():
        full = seg(img)
    assert seg.label_for_feat(label, full) is label  # eval outputs cover the whole input


# --------------------------------------------------------------------------- inference
def test_slide_hr_equals_whole_image_when_one_window_covers(seg):
    seg.eval()
    torch.manual_seed(3)
    img = torch.rand(2, 3, 32, 32)  # == detail size: one window
    with torch.no_grad():
        whole = seg(img, single_scale=True)
        logits, feat = seg.slide_hr(img)
        assert torch.allclose(logits, whole["logits"], atol=1e-6)
        assert torch.allclose(feat, whole["feat"], atol=1e-6)
        # A window larger than the image is clipped to it: still one whole-image pass.
        logits_big, _ = seg.slide_hr(torch.cat([img, img], -1), window=(64, 64))
        assert torch.allclose(
            logits_big, seg(torch.cat([img, img], -1), single_scale=True)["logits"], atol=1e-6
        )


def test_slide_hr_averages_overlapping_windows(seg):
    seg.eval()
    img = torch.rand(1, 3, 32, 64)
    with torch.no_grad():
        logits, _ = seg.slide_hr(img, window=(32, 32), stride=(16, 16))  # windows at x=0,16,32
        win = [seg(img[..., x : x + 32], single_scale=True)["logits"] for x in (0, 16, 32)]
    # Columns 0-3 (stride 4) are seen by the first window only, 4-7 by the first two.
    assert torch.allclose(logits[..., 0:4], win[0][..., 0:4], atol=1e-6)
    assert torch.allclose(logits[..., 4:8], (win[0][..., 4:8] + win[1][..., 0:4]) / 2, atol=1e-6)
    assert torch.allclose(logits[..., 12:16], win[2][..., 4:8], atol=1e-6)


def test_predict_fuses_lr_context_with_sliding_hr_detail(seg):
    seg.train()  # predict switches to eval for the call and restores the mode
    torch.manual_seed(4)
    img = torch.rand(1, 3, 64, 128)
    out = seg.predict(img)
    assert out.shape == (1, 19, 64, 128) and seg.training
    seg.eval()
    with torch.no_grad():
        lr = seg(F.interpolate(img, size=(32, 64), mode="bilinear"), single_scale=True)
        hr_logits, _ = seg.slide_hr(img)
        att = torch.sigmoid(seg.scale_attention(lr["enc"])[0])
        fused, _ = fuse_scales(lr["logits"], hr_logits, att, None, 4, 0.5)
    expect = F.interpolate(fused, size=(64, 128), mode="bilinear", align_corners=False)
    assert torch.allclose(out, expect, atol=1e-5)
    # Sizes that are not multiples of 8 are padded internally and cropped back.
    assert seg.predict(torch.rand(1, 3, 60, 76)).shape == (1, 19, 60, 76)
    # HRDA's test protocol: slide over context windows, each predicted as above.
    slide = seg.predict(img, mode="slide", crop_size=(64, 64), stride=(64, 64))
    left = seg.predict(img[..., :64])
    assert torch.allclose(slide[..., :64], left, atol=1e-5)


def test_state_dict_keys_share_the_base_layout(seg):
    keys = set(seg.state_dict())
    assert any(k.startswith("encoder.") for k in keys)
    assert any(k.startswith("decoder.") for k in keys)
    assert any(k.startswith("scale_attention.") for k in keys)
    assert not any(k.startswith("proj_heads.") for k in seg.inference_state_dict())
    assert seg.arch == "hrda_daformer_mit_b0" and seg.output_stride == 4


def test_bf16_autocast_training_and_inference(seg):
    torch.manual_seed(5)
    img, label = torch.rand(1, 3, 64, 64), torch.randint(0, 19, (1, 64, 64))
    seg.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = seg(img)
        loss = seg.seg_loss(out, label)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    seg.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        hr_logits, _ = seg.slide_hr(img)
        full = seg(img)
    assert hr_logits.dtype == torch.float32  # overlapping windows are averaged in float32
    assert torch.isfinite(full["logits"]).all()


def test_export_and_load_weights_roundtrip(seg, tmp_path):
    seg.export_weights(tmp_path / "hrda.pt")
    torch.manual_seed(123)  # a differently initialised twin
    twin = build_segmentor(
        "hrda_daformer_mit_b0",
        decoder_channels=16,
        proj_heads=("pixel",),
        proj_dim=8,
        hrda={"detail_size": (32, 32), "attention_channels": 8},
    )
    report = twin.load_weights(tmp_path / "hrda.pt")
    assert not report.missing and not report.unexpected
    ref, got = seg.inference_state_dict(), twin.inference_state_dict()
    assert any(k.startswith("scale_attention.") for k in got)
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    # A plain single-scale segmentor file lacks the attention head: a clear error.
    plain = build_segmentor("daformer_mit_b0", decoder_channels=16, proj_heads=())
    plain.export_weights(tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="scale_attention"):
        twin.load_weights(tmp_path / "plain.pt")
