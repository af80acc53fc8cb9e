"""HRDA self-training on the synthetic benchmark at twice its resolution (engine components)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pipa_core.config import ModelConfig
from pipa_core.data.synthetic import SyntheticDataset, ensure_synthetic
from pipa_core.labels import IGNORE_INDEX
from pipa_core.losses import PatchContrastLoss, PixelContrastLoss, sample_patch_pair
from pipa_core.models import build_from_config
from pipa_core.models.hrda import HRDASegmentor, detail_size_for, hrda_arch
from pipa_core.uda.ema import build_teacher, ema_alpha, ema_update
from pipa_core.uda.mixing import mix_batch, strong_augment
from pipa_core.uda.optim import build_optimizer
from pipa_core.uda.pseudo_label import make_pseudo_label


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def upscaled_batches(tmp_path_factory):
    """Synthetic source / target images upscaled 2x (32x64 -> 64x128), 64x64 context crops."""
    root = ensure_synthetic(tmp_path_factory.mktemp("syn") / "synthetic", size="tiny")

    def load(domain: str):
        ds = SyntheticDataset(root, domain, "train")
        items = [ds[i] for i in range(4)]
        img = torch.stack([x["img"] for x in items])
        label = torch.stack([x["label"] for x in items])
        img = F.interpolate(img, scale_factor=2, mode="bilinear", align_corners=False)
        label = F.interpolate(label[:, None].float(), scale_factor=2, mode="nearest")[:, 0].long()
        return img[..., :64], label[..., :64], img[..., 64:], label[..., 64:]

    s_img, s_lab, s_img2, s_lab2 = load("source")
    t_img, _, t_img2, _ = load("target")
    return [
        (s_img[:2], s_lab[:2], t_img[:2]),
        (s_img2[:2], s_lab2[:2], t_img2[:2]),
        (s_img[2:], s_lab[2:], t_img[2:]),
    ]


def test_hrda_detail_crop_follows_the_context_crop():
    assert detail_size_for((1024, 1024)) == (512, 512)
    assert detail_size_for((64, 96), 0.5, 8) == (32, 48)
    assert detail_size_for((20, 20), 0.25, 8) == (8, 8)  # never below the alignment
    assert hrda_arch("daformer_mit_b5") == "hrda_daformer_mit_b5"
    assert hrda_arch("hrda_daformer_mit_b5") == "hrda_daformer_mit_b5"
    seg = build_from_config(ModelConfig("hrda_daformer_mit_b0", decoder_channels=8), (64, 64))
    assert isinstance(seg, HRDASegmentor) and seg.detail_size == (32, 32) and seg.align == 8
    assert seg.hr_loss_weight == 0.1 and seg.lr_scale == 0.5
    plain = build_from_config(ModelConfig("daformer_mit_b0", decoder_channels=8), (64, 64))
    assert not isinstance(plain, HRDASegmentor)
    heads = build_from_config(ModelConfig("daformer_mit_b0"), (64, 64), ("pixel", "prototype"))
    assert set(heads.proj_heads) == {"pixel"}  # a head per enabled projection loss


def test_few_iterations_of_pipa_on_hrda(upscaled_batches):
    """Source CE + pixel contrast on the detail crop, teacher pseudo-labels from the full
    context, ClassMix, weighted mixed CE, patch contrast, EMA: every piece the engine uses."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    student = build_from_config(
        ModelConfig("hrda_daformer_mit_b0", decoder_channels=16, proj_dim=8),
        (64, 64),
        ("pixel", "patch"),
    )
    teacher = build_teacher(student)
    opt = build_optimizer(student, lr=6e-4, weight_decay=0.01)
    pixel, patch = PixelContrastLoss(0.1, max_anchors=256), PatchContrastLoss(0.1, 256, 256)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    for it, (s_img, s_lab, t_img) in enumerate(upscaled_batches):
        student.train()
        out_s = student(s_img)
        loss = student.seg_loss(out_s, s_lab)
        emb = student.project("pixel", out_s["feat"])
        lab_feat = student.label_for_feat(s_lab, out_s)
        assert lab_feat.shape[-2:] == (32, 32) and emb.shape[-2:] == (8, 8)
        loss = loss + 0.1 * pixel(emb, lab_feat, generator=g)

        with torch.no_grad():  # teacher: HRDA inference over the whole context crop
            t_out = teacher(t_img)
        assert t_out["hrda"]["crop_box"] is None and t_out["logits"].shape[-2:] == (16, 16)
        t_logits = F.interpolate(t_out["logits"], size=(64, 64), mode="bilinear")
        pl = make_pseudo_label(t_logits, 0.968, 2, 8)
        m_img, m_lab, m_w, _ = mix_batch(s_img, s_lab, t_img, pl.label, pl.weight, g)
        m_img = strong_augment(m_img, 0.2, 0.2, True, generator=g)
        loss = loss + student.seg_loss(student(m_img), m_lab, m_w)

        pair = sample_patch_pair(t_img, 32, (0.5, 2.0), (0.1, 1.0), generator=g, align=4)
        feat = student(torch.cat([pair.crop1, pair.crop2]), single_scale=True)["feat"]
        e1, e2 = student.project("patch", feat).chunk(2)
        loss = loss + 0.1 * patch(e1, e2, pair, student.output_stride, generator=g)

        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        att_grad = student.scale_attention.conv_seg.weight.grad
        assert att_grad is not None and att_grad.abs().sum() > 0
        opt.step()
        ema_update(teacher, student, ema_alpha(it, 0.99))
    after = student.state_dict()
    for prefix in ("encoder.", "decoder.", "scale_attention.", "proj_heads."):
        assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith(prefix)), (
            prefix
        )
    # The teacher followed the student (EMA) and predicts at full resolution.
    pred = teacher.predict(upscaled_batches[0][2])
    assert pred.shape == (2, 19, 64, 64) and torch.isfinite(pred).all()
    assert (pred.argmax(1) != IGNORE_INDEX).all()
