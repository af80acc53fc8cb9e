"""Unit tests of the self-training building blocks (pipa_core.uda)."""

# ruff: noqa: NPY002 - the RNG test drives numpy's legacy global RNG on purpose

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from torch import nn

from pipa_core.labels import IGNORE_INDEX, THING_CLASSES
from pipa_core.uda.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from pipa_core.uda.ema import build_teacher, ema_alpha, ema_update
from pipa_core.uda.feature_distance import (
    downscale_label_ratio,
    masked_feature_distance,
    thing_mask,
)
from pipa_core.uda.mixing import class_mix_mask, mix_batch, strong_augment
from pipa_core.uda.optim import WarmupPoly, build_optimizer, build_scheduler, param_groups
from pipa_core.uda.pseudo_label import crop_weight, make_pseudo_label, pseudo_label_accuracy


# ----------------------------------------------------------------------------- EMA
def test_ema_alpha_schedule():
    assert ema_alpha(0, 0.999) == 0.0  # first update copies the student
    assert ema_alpha(1, 0.999) == pytest.approx(0.5)
    assert ema_alpha(9, 0.999) == pytest.approx(0.9)
    assert ema_alpha(10**6, 0.999) == 0.999
    with pytest.raises(ValueError, match="alpha"):
        ema_alpha(0, 1.5)


class _BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn(self.conv(x))


def test_ema_update_params_and_buffers():
    torch.manual_seed(0)
    student = _BNNet()
    teacher = build_teacher(student)
    assert not teacher.training and all(not p.requires_grad for p in teacher.parameters())
    t0 = {k: v.clone() for k, v in teacher.state_dict().items()}
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    student.train()(torch.randn(2, 3, 4, 4))  # changes BN running stats and num_batches_tracked
    alpha = 0.9
    ema_update(teacher, student, alpha)
    s = student.state_dict()
    for k, v in teacher.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(v, alpha * t0[k] + (1 - alpha) * s[k])
        else:
            assert torch.equal(v, s[k])  # integer buffers are copied
    ema_update(teacher, student, 0.0)  # alpha 0 copies exactly
    for k, v in teacher.state_dict().items():
        torch.testing.assert_close(v, s[k].to(v.dtype))


# ----------------------------------------------------------------------------- pseudo-labels
def test_pseudo_label_fraction_weight_and_crop():
    b, c, h, w = 2, 3, 6, 5
    logits = torch.zeros(b, c, h, w)
    logits[:, 1] = 10.0  # confident class 1 everywhere ...
    logits[1, :, :2] = 0.0  # ... except the first two rows of image 1 (uniform: p = 1/3)
    pl = make_pseudo_label(logits, threshold=0.968)
    assert pl.label.shape == (b, h, w) and pl.label.dtype == torch.int64
    assert torch.equal(pl.label[0], torch.ones(h, w, dtype=torch.long))
    frac = (b * h * w - 2 * w) / (b * h * w)
    assert float(pl.confident_fraction) == pytest.approx(frac)
    torch.testing.assert_close(pl.weight, torch.full((b, h, w), frac))
    # per-image fractions
    pl2 = make_pseudo_label(logits, threshold=0.968, per_image=True)
    assert float(pl2.weight[0, 0, 0]) == pytest.approx(1.0)
    assert float(pl2.weight[1, 0, 0]) == pytest.approx((h * w - 2 * w) / (h * w))
    # crop: top 1 and bottom 2 rows get weight 0, the rest keep it
    pl3 = make_pseudo_label(logits, threshold=0.968, crop_top=1, crop_bottom=2)
    assert torch.all(pl3.weight[:, :1] == 0) and torch.all(pl3.weight[:, -2:] == 0)
    torch.testing.assert_close(pl3.weight[:, 1:-2], torch.full((b, h - 3, w), frac))


def test_pseudo_crop_rejects_everything_cropped():
    with pytest.raises(ValueError, match="nothing is left"):
        crop_weight(torch.ones(1, 4, 4), 2, 2)


# ----------------------------------------------------------------------------- ClassMix
@pytest.mark.parametrize("n_classes", [1, 2, 3, 5, 6])
def test_class_mix_pastes_exactly_half_of_present_classes(n_classes):
    g = torch.Generator().manual_seed(n_classes)
    label = torch.arange(n_classes).repeat_interleave(4).reshape(n_classes, 4) * 3  # ids 0,3,6..
    label = torch.cat([label, torch.full((1, 4), IGNORE_INDEX)])  # ignore never pasted
    mask = class_mix_mask(label, g)
    pasted = torch.unique(label[mask])
    assert pasted.numel() == math.ceil(n_classes / 2)
    assert IGNORE_INDEX not in pasted.tolist()
    # whole classes: every pixel of a pasted class is pasted, none of the others
    for cls in torch.unique(label).tolist():
        sel = label == cls
        assert bool(mask[sel].all()) == (cls in pasted.tolist())
        assert bool(mask[sel].any()) == (cls in pasted.tolist())


def test_mix_batch_label_and_weight():
    g = torch.Generator().manual_seed(0)
    b, h, w = 2, 8, 8
    src_img, tgt_img = torch.rand(b, 3, h, w), torch.rand(b, 3, h, w)
    src_label = torch.randint(0, 4, (b, h, w))
    pseudo = torch.randint(10, 14, (b, h, w))
    pweight = torch.full((b, h, w), 0.3)
    img, label, weight, mask = mix_batch(src_img, src_label, tgt_img, pseudo, pweight, g)
    m3 = mask.unsqueeze(1).expand_as(img)
    assert torch.equal(img[m3], src_img[m3]) and torch.equal(img[~m3], tgt_img[~m3])
    assert torch.equal(label[mask], src_label[mask])  # source GT where pasted
    assert torch.equal(label[~mask], pseudo[~mask])  # pseudo-label elsewhere
    assert torch.all(weight[mask] == 1.0) and torch.all(weight[~mask] == 0.3)
    for i in range(b):
        n = torch.unique(src_label[i]).numel()
        assert torch.unique(src_label[i][mask[i]]).numel() == math.ceil(n / 2)


def test_strong_augment_photometric_and_seeded():
    img = torch.rand(3, 3, 32, 32)
    a = strong_augment(img, generator=torch.Generator().manual_seed(1))
    b = strong_augment(img, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)  # reproducible from the generator
    assert a.shape == img.shape and a.min() >= 0 and a.max() <= 1
    assert not torch.equal(a, img)
    # p = 1 and no blur: jitter never applies (u > p impossible), image unchanged
    c = strong_augment(img, jitter_p=1.0, blur=False, generator=torch.Generator().manual_seed(1))
    assert torch.equal(c, img)


# ----------------------------------------------------------------------------- feature distance
def test_downscale_label_ratio_min_ratio_rule():
    # one 4x4 cell (scale 4) per quadrant of an 8x8 label
    lab = torch.full((1, 8, 8), 1)
    lab[0, :4, :4] = 6  # cell (0,0): all class 6
    lab[0, :4, 4:] = 6
    lab[0, :1, 4:] = 2  # cell (0,1): 12/16 = 0.75 class 6 -> kept at min_ratio 0.75
    lab[0, 4:, :4] = 7
    lab[0, 4:6, :4] = 2  # cell (1,0): 8/16 class 7 -> below 0.75 -> ignore
    lab[0, 4:, 4:] = IGNORE_INDEX
    lab[0, 4, 4] = 13  # cell (1,1): mostly ignore -> ignore
    out = downscale_label_ratio(lab, 4, 0.75)
    assert out.tolist() == [[[6, 6], [IGNORE_INDEX, IGNORE_INDEX]]]
    out_lo = downscale_label_ratio(lab, 4, 0.5)
    assert out_lo[0, 1, 0] in (2, 7)  # now a tie at 0.5 passes the ratio
    m = thing_mask(lab, (2, 2), THING_CLASSES, 0.75)
    assert m.tolist() == [[[True, True], [False, False]]]  # class 6 is a thing class
    with pytest.raises(ValueError, match="divisible"):
        downscale_label_ratio(torch.zeros(1, 6, 6, dtype=torch.long), 4)


def test_masked_feature_distance_value():
    f = torch.zeros(1, 2, 2, 2)
    fr = torch.zeros(1, 2, 2, 2)
    fr[0, 0, 0, 0] = 3.0
    fr[0, 1, 0, 0] = 4.0  # distance 5 at (0,0), 0 elsewhere
    mask = torch.tensor([[[True, True], [False, False]]])
    assert float(masked_feature_distance(f, fr, mask)) == pytest.approx(2.5)
    assert float(masked_feature_distance(f, fr)) == pytest.approx(1.25)
    assert float(masked_feature_distance(f, fr, torch.zeros_like(mask))) == 0.0


# ----------------------------------------------------------------------------- optimizer
class _Seg(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.ModuleDict(
            {"conv": nn.Conv2d(3, 4, 3), "norm": nn.LayerNorm(4), "pos_block": nn.Conv2d(4, 4, 1)}
        )
        self.decoder = nn.ModuleDict({"conv": nn.Conv2d(4, 4, 1), "bn": nn.BatchNorm2d(4)})
        self.proj_heads = nn.ModuleDict({"pixel": nn.Conv2d(4, 8, 1)})


def test_param_groups_lr_and_decay():
    model = _Seg()
    groups = {g["name"]: g for g in param_groups(model, lr=6e-5, weight_decay=0.01)}
    names = {k: set(g["param_names"]) for k, g in groups.items()}
    assert names["backbone_decay"] == {"encoder.conv.weight", "encoder.conv.bias"}
    assert names["backbone_no_decay"] == {
        "encoder.norm.weight", "encoder.norm.bias",
        "encoder.pos_block.weight", "encoder.pos_block.bias",
    }  # fmt: skip
    assert names["head_no_decay"] == {"decoder.bn.weight", "decoder.bn.bias"}
    assert "proj_heads.pixel.weight" in names["head_decay"]
    assert groups["backbone_decay"]["lr"] == pytest.approx(6e-5)
    assert groups["head_decay"]["lr"] == pytest.approx(6e-4)  # heads x10
    assert groups["backbone_no_decay"]["weight_decay"] == 0.0
    assert groups["head_decay"]["weight_decay"] == 0.01
    n_all = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for g in groups.values() for p in g["params"]) == n_all


def test_warmup_poly_schedule_values():
    f = WarmupPoly(max_iters=10000, warmup_iters=1500, power=1.0, warmup_ratio=1e-6)
    assert f(0) == pytest.approx(1e-6)
    # mid-warmup: linear ramp times the poly value
    assert f(750) == pytest.approx((1 - 0.5 * (1 - 1e-6)) * (1 - 750 / 10000))
    assert f(1500) == pytest.approx(1 - 1500 / 10000)
    assert f(5000) == pytest.approx(0.5)
    assert f(10000) == 0.0
    model = _Seg()
    opt = build_optimizer(model, lr=1e-3)
    sched = build_scheduler(opt, max_iters=100, warmup_iters=10)
    lrs = []
    for _ in range(100):
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    ref = WarmupPoly(100, 10)
    for it in (0, 5, 10, 50, 99):
        base = [1e-3, 1e-3, 1e-2, 1e-2]
        assert lrs[it] == pytest.approx([b * ref(it) for b in base])
    assert lrs[10][0] > lrs[5][0] and lrs[99][0] < lrs[50][0]


# ----------------------------------------------------------------------------- checkpoint / RNG
def test_rng_state_roundtrip_through_weights_only_checkpoint(tmp_path):
    random.seed(1)
    np.random.seed(2)  # noqa: NPY002
    torch.manual_seed(3)
    state = capture_rng_state()
    save_checkpoint({"iteration": 7, "rng": state}, tmp_path, keep=True)
    expect = (random.random(), np.random.rand(), torch.rand(()).item())
    random.seed(9)
    np.random.seed(9)  # noqa: NPY002
    torch.manual_seed(9)
    ck = load_checkpoint(tmp_path)  # a run dir means checkpoints/latest.pt, weights_only=True
    assert ck["iteration"] == 7
    restore_rng_state(ck["rng"])
    assert (random.random(), np.random.rand(), torch.rand(()).item()) == expect
    assert (tmp_path / "checkpoints" / "iter_0000007.pt").is_file()
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing")


class _BNDropNet(nn.Module):
    """Conv -> BN -> dropout: the teacher-mode switches act on the last two."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout2d(0.5)

    def forward(self, x):
        return self.drop(self.bn(self.conv(x)))


def test_daformer_teacher_normalises_with_the_target_batch_statistics():
    torch.manual_seed(0)
    student = _BNDropNet()
    with torch.no_grad():  # running statistics far from any batch's
        student.bn.running_mean.fill_(5.0)
        student.bn.running_var.fill_(9.0)
    teacher = build_teacher(student, "batch")
    assert teacher.bn.training and not teacher.drop.training and not teacher.training
    x = torch.randn(2, 3, 5, 5) * 3 + 1
    with torch.no_grad():
        y = teacher.conv(x)
        want = (y - y.mean((0, 2, 3), keepdim=True)) / torch.sqrt(
            y.var((0, 2, 3), unbiased=False, keepdim=True) + teacher.bn.eps
        )
        want = want * teacher.bn.weight[:, None, None] + teacher.bn.bias[:, None, None]
        got = teacher(x)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        assert torch.equal(teacher(x), got)  # dropout is off: deterministic
    # The switch back to the previous behaviour: eval mode, running statistics.
    old = build_teacher(student, "ema")
    assert not old.bn.training and not old.drop.training
    with torch.no_grad():
        torch.testing.assert_close(old(x), student.eval()(x))
    with pytest.raises(ValueError, match="batch"):
        build_teacher(student, "nosuch")


def test_parameter_only_ema_leaves_the_teacher_buffers_alone():
    torch.manual_seed(0)
    student = _BNNet()
    teacher = build_teacher(student, "batch")
    t0 = {k: v.clone() for k, v in teacher.state_dict().items()}
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    student.train()(torch.randn(2, 3, 4, 4))  # moves the student's running statistics
    ema_update(teacher, student, 0.5, buffers=False)
    s = student.state_dict()
    for name, _ in teacher.named_parameters():
        torch.testing.assert_close(teacher.state_dict()[name], 0.5 * t0[name] + 0.5 * s[name])
    for name, buf in teacher.named_buffers():
        assert torch.equal(buf, t0[name]), name  # running stats and counter untouched
        assert not torch.equal(s[name], t0[name]), name  # ... although the student's moved


def test_pseudo_label_accuracy_against_hidden_labels():
    logits = torch.zeros(1, 3, 2, 3)
    logits[0, 0] = 10.0  # confident class 0 ...
    logits[0, :, 1, :] = 0.0  # ... except the second row (uniform: confidence 1/3)
    pl = make_pseudo_label(logits, threshold=0.9)
    truth = torch.tensor([[[0, 0, 2], [0, IGNORE_INDEX, 1]]])
    acc = pseudo_label_accuracy(pl, truth, threshold=0.9)
    assert acc["pseudo_acc"] == pytest.approx(3 / 5)  # ignore excluded
    assert acc["pseudo_acc_confident"] == pytest.approx(2 / 3)  # first row: 2 of 3 right
    assert acc["pseudo_confident_labelled"] == pytest.approx(3 / 5)


def test_mic_block_mask_ratio_block_size_and_fill():
    from pipa_core.models import build_segmentor
    from pipa_core.uda.masking import block_mask, mask_image

    keep = block_mask((4, 3, 512, 1024), 0.7, 64, torch.Generator().manual_seed(0))
    assert keep.shape == (4, 1, 512, 1024) and set(keep.unique().tolist()) == {0.0, 1.0}
    cells = keep[:, :, ::64, ::64]  # one value per 64x64 block ...
    assert torch.equal(
        keep, cells.repeat_interleave(64, 2).repeat_interleave(64, 3)
    )  # ... constant
    assert cells.numel() == 4 * 8 * 16 and abs(float(1 - cells.mean()) - 0.7) < 0.06  # 512 blocks
    again = block_mask((4, 3, 512, 1024), 0.7, 64, torch.Generator().manual_seed(0))
    assert torch.equal(keep, again)  # a seed gives the mask
    img = torch.rand(4, 3, 512, 1024)
    masked = mask_image(img, keep)
    seg = build_segmentor("daformer_mit_b0", decoder_channels=8, proj_heads=())
    normalised = seg.normalize(masked)
    hidden = keep.expand_as(img) == 0
    assert torch.allclose(normalised[hidden], torch.zeros(()), atol=1e-6)  # MIC's masked zero
    assert torch.equal(masked[~hidden], img[~hidden])


def test_mic_term_trains_the_student(tmp_path):
    from pipa_core.config import apply_overrides, get_preset
    from pipa_core.data.synthetic import ensure_synthetic
    from pipa_core.uda.engine import Engine
    from pipa_core.uda.step import training_step

    ensure_synthetic(tmp_path / "synthetic", size="tiny")

    def grads(mic: bool):
        cfg = apply_overrides(get_preset("synthetic_dacs"), [
            "data.synthetic_size=tiny", f"data.data_root={tmp_path}", "model.init_from=null",
            "model.decoder_channels=8", "model.proj_dim=8", f"uda.mic={str(mic).lower()}",
            "uda.mic_block_size=8", "uda.pseudo_threshold=0.0",
        ])  # fmt: skip
        from pipa_core.config import resolve
        from pipa_core.uda.data_stream import build_datasets

        run = resolve(cfg)
        train_set, _ = build_datasets(run)
        batch = torch.utils.data.default_collate([train_set[0], train_set[1]])
        eng = Engine.build(run)
        out = training_step(batch, eng.nets, cfg, eng.ctx)
        out.loss.backward()
        return out, {
            k: p.grad.clone() for k, p in eng.student.named_parameters() if p.grad is not None
        }

    with_mic, g_mic = grads(True)
    without, g_plain = grads(False)
    assert "mic" in with_mic.logs and with_mic.logs["mic"] > 0 and "mic" not in without.logs
    assert 0 < with_mic.logs["mic_visible"] < 1
    assert with_mic.logs["ce_src"] == without.logs["ce_src"]  # the same weights and batch
    assert any(not torch.equal(g_mic[k], g_plain[k]) for k in g_plain)  # the MIC term's gradient
