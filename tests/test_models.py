"""Architectures: shapes, strides, parameter counts, checkpoint key names, memory options."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from timm.layers import DropPath

from pipa_core.models import (
    ARCHS,
    MIT_CONFIGS,
    ASPPClassifier,
    ResNetEncoder,
    Segmentor,
    build_segmentor,
    mit_b0,
    mit_b1,
    mit_b2,
    mit_b3,
    mit_b4,
    mit_b5,
)

CONSTRUCTORS = {
    "mit_b0": mit_b0,
    "mit_b1": mit_b1,
    "mit_b2": mit_b2,
    "mit_b3": mit_b3,
    "mit_b4": mit_b4,
    "mit_b5": mit_b5,
}

# Encoder sizes published in the SegFormer paper (Table 1, millions of parameters).
PAPER_MILLIONS = {
    "mit_b0": 3.4,
    "mit_b1": 13.1,
    "mit_b2": 24.2,
    "mit_b3": 44.0,
    "mit_b4": 60.8,
    "mit_b5": 81.4,
}


def expected_mit_params(cfg) -> int:
    """Parameter count of a MiT computed by hand from its configuration."""
    total, c_in = 0, 3
    for d, n, r, s, p in zip(
        cfg.embed_dims, cfg.depths, cfg.mlp_ratios, cfg.sr_ratios, cfg.patch_sizes
    ):
        total += c_in * d * p * p + d + 2 * d  # patch-embedding conv + LayerNorm
        h = d * r
        block = 2 * d  # norm1
        block += (d * d + d) + (2 * d * d + 2 * d) + (d * d + d)  # q, kv, proj
        if s > 1:
            block += d * d * s * s + d + 2 * d  # spatial-reduction conv + its LayerNorm
        block += 2 * d  # norm2
        block += (d * h + h) + (9 * h + h) + (h * d + d)  # fc1, depthwise 3x3, fc2
        total += n * block + 2 * d  # blocks + stage LayerNorm
        c_in = d
    return total


@pytest.mark.parametrize("name", list(CONSTRUCTORS))
def test_mit_parameter_counts(name):
    with torch.device("meta"):  # no memory, no initialisation cost
        enc = CONSTRUCTORS[name]()
    n = sum(p.numel() for p in enc.parameters())
    assert n == expected_mit_params(MIT_CONFIGS[name])
    assert n / 1e6 == pytest.approx(PAPER_MILLIONS[name], rel=0.03)


def test_mit_configs_match_segformer():
    assert MIT_CONFIGS["mit_b0"].embed_dims == (32, 64, 160, 256)
    depths = {n: c.depths for n, c in MIT_CONFIGS.items()}
    assert depths == {
        "mit_b0": (2, 2, 2, 2),
        "mit_b1": (2, 2, 2, 2),
        "mit_b2": (3, 4, 6, 3),
        "mit_b3": (3, 4, 18, 3),
        "mit_b4": (3, 8, 27, 3),
        "mit_b5": (3, 6, 40, 3),
    }
    for cfg in MIT_CONFIGS.values():
        assert cfg.num_heads == (1, 2, 5, 8)
        assert cfg.sr_ratios == (8, 4, 2, 1)
        assert cfg.mlp_ratios == (4, 4, 4, 4)


def test_mit_uses_official_checkpoint_names():
    keys = set(mit_b0().state_dict())
    for k in [
        "patch_embed1.proj.weight",
        "patch_embed1.norm.weight",
        "patch_embed4.proj.bias",
        "block1.0.norm1.weight",
        "block1.0.attn.q.weight",
        "block1.0.attn.kv.weight",
        "block1.0.attn.sr.weight",
        "block1.0.attn.norm.weight",
        "block1.0.attn.proj.weight",
        "block1.0.mlp.fc1.weight",
        "block1.0.mlp.dwconv.dwconv.weight",
        "block1.0.mlp.fc2.bias",
        "block4.1.norm2.bias",
        "norm1.weight",
        "norm4.bias",
    ]:
        assert k in keys, k
    # The last stage has no spatial reduction (sr_ratio 1).
    assert "block4.0.attn.sr.weight" not in keys


def test_mit_stochastic_depth_and_init():
    enc = mit_b0(drop_path_rate=0.1)
    rates = [
        b.drop_path.drop_prob if isinstance(b.drop_path, DropPath) else 0.0
        for i in range(1, 5)
        for b in getattr(enc, f"block{i}")
    ]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.1)
    assert all(a < b for a, b in zip(rates, rates[1:]))
    w = enc.block1[0].attn.q.weight
    assert w.std().item() == pytest.approx(0.02, rel=0.15)
    assert w.abs().max().item() <= 2.0  # truncated normal: |w| <= 2 (timm's default bounds)
    assert torch.all(enc.block1[0].attn.q.bias == 0)


@pytest.mark.parametrize("arch", ARCHS)
def test_every_architecture_output_shapes(arch):
    # Shapes and strides of every model, propagated on the meta device (no compute).
    with torch.device("meta"):
        seg = build_segmentor(arch, proj_heads=("pixel", "patch", "temporal"), proj_dim=32)
        out = seg(torch.rand(2, 3, 70, 90))
        emb = seg.project("temporal", out["feat"])
    s = seg.output_stride
    assert s == (8 if arch.startswith("deeplabv2") else 4)
    h, w = -(-70 // s), -(-90 // s)
    assert out["logits"].shape == (2, 19, h, w)
    assert out["feat"].shape == (2, seg.feat_channels, h, w)
    assert emb.shape == (2, 32, h, w)
    assert len(out["enc"]) == 4
    expected_channels = {
        "deeplabv2": [256, 512, 1024, 2048],
        "mit_b0": [32, 64, 160, 256],
        **{f"dinov2_s{r}": [96, 192, 384, 384] for r in ("", "_reg")},
        **{f"dinov2_b{r}": [192, 384, 768, 768] for r in ("", "_reg")},
        **{f"dinov2_l{r}": [256, 512, 1024, 1024] for r in ("", "_reg")},
    }.get(
        arch.split("_")[0] if arch.startswith("deeplab") else arch.split("_", 1)[1],
        [64, 128, 320, 512],
    )
    assert [e.shape[1] for e in out["enc"]] == expected_channels
    if arch.startswith("segformer"):
        assert seg.feat_channels == (256 if arch[-2:] in ("b0", "b1") else 768)
    elif arch.startswith("daformer"):
        assert seg.feat_channels == 256


def small_model(arch="daformer_mit_b0", **kw):
    torch.manual_seed(0)
    kw.setdefault("decoder_channels", 32)
    kw.setdefault("proj_dim", 16)
    return build_segmentor(arch, num_classes=5, **kw)


def small_resnet_segmentor():
    """DeepLab-v2 structure on a ResNet-18 (same code paths as R-101, a fraction of the cost)."""
    torch.manual_seed(0)
    enc = ResNetEncoder("resnet18", output_stride=8)
    return Segmentor(
        enc, ASPPClassifier(enc.out_channels[-1], 5), output_stride=8, arch="deeplabv2_r18"
    )


def test_daformer_b0_forward_backward_cpu():
    seg = small_model(proj_heads=("pixel", "patch"))
    img = torch.rand(2, 3, 32, 48)
    label = torch.randint(0, 5, (2, 32, 48))
    label[:, :4] = 255
    out = seg(img)
    assert out["logits"].shape == (2, 5, 8, 12)
    assert out["feat"].shape == (2, 32, 8, 12)
    assert [e.shape[-1] for e in out["enc"]] == [12, 6, 3, 2]
    logits = F.interpolate(out["logits"], size=(32, 48), mode="bilinear", align_corners=False)
    loss = F.cross_entropy(logits, label, ignore_index=255)
    for name in ("pixel", "patch"):
        loss = loss + seg.project(name, out["feat"]).pow(2).mean()
    loss.backward()
    for name, p in seg.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert seg.encoder.patch_embed1.proj.weight.grad.abs().sum() > 0
    assert seg.proj_heads["patch"][0].weight.grad.abs().sum() > 0


def test_segmentor_normalises_images_in_unit_range():
    seg = small_model()
    mean_img = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1).expand(1, 3, 4, 4)
    assert torch.allclose(seg.normalize(mean_img), torch.zeros(1, 3, 4, 4), atol=1e-6)
    # encode() is the encoder applied to the normalised image.
    img = torch.rand(1, 3, 32, 32)
    seg.eval()
    with torch.no_grad():
        a = seg.encode(img)[-1]
        b = seg.encoder((img - seg.mean) / seg.std)[-1]
    assert torch.allclose(a, b)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        seg(torch.rand(3, 32, 32))


def test_frozen_copy_gives_imagenet_features_without_gradients():
    seg = small_model(proj_heads=("pixel",))
    frozen = seg.frozen_copy()
    assert not frozen.training and len(frozen.proj_heads) == 0
    assert not any(p.requires_grad for p in frozen.parameters())
    parent = torch.nn.ModuleDict({"student": seg, "imnet": frozen}).train()
    assert seg.training and not frozen.training and not parent["imnet"].decoder.training
    img = torch.rand(1, 3, 32, 32)
    seg.eval()
    with torch.no_grad():
        for a, b in zip(frozen.encode(img), seg.encode(img)):
            torch.testing.assert_close(a, b)
    # Training the student leaves the frozen copy untouched.
    with torch.no_grad():
        seg.encoder.patch_embed1.proj.weight.add_(1.0)
    assert not torch.equal(
        frozen.encoder.patch_embed1.proj.weight, seg.encoder.patch_embed1.proj.weight
    )


def test_projection_head_errors():
    seg = small_model(proj_heads=("pixel",))
    feat = torch.rand(1, 32, 4, 4)
    assert seg.project("pixel", feat).shape == (1, 16, 4, 4)
    with pytest.raises(KeyError, match="no 'patch' projection head"):
        seg.project("patch", feat)
    with pytest.raises(ValueError, match="unknown projection head"):
        small_model(proj_heads=("pixel", "global"))
    assert list(small_model(proj_heads="patch").proj_heads) == ["patch"]


def test_unknown_arch_lists_valid_names():
    with pytest.raises(ValueError) as e:
        build_segmentor("daformer_mit_b9")
    assert "daformer_mit_b5" in str(e.value) and "deeplabv2_r101" in str(e.value)


def _grads(seg, img, seed):
    seg.zero_grad()
    torch.manual_seed(seed)  # same dropout / drop-path masks in both runs
    out = seg(img)
    (out["logits"].square().mean() + out["feat"].mean()).backward()
    return {n: p.grad.clone() for n, p in seg.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("arch", ["daformer_mit_b0", "deeplabv2_resnet"])
def test_gradient_checkpointing_gives_equal_gradients(arch):
    seg = (
        small_resnet_segmentor() if arch == "deeplabv2_resnet" else small_model(arch, proj_heads=())
    )
    seg.train()
    img = torch.rand(2, 3, 32, 32)
    ref = _grads(seg, img, seed=1)
    ckpt = copy.deepcopy(seg)
    ckpt.set_grad_checkpointing(True)
    assert ckpt.encoder.grad_checkpointing
    got = _grads(ckpt, img, seed=1)
    assert ref.keys() == got.keys() and len(ref) > 10
    for n in ref:
        torch.testing.assert_close(got[n], ref[n], rtol=1e-4, atol=1e-6, msg=n)


def test_grad_checkpointing_flag_in_builder():
    seg = small_model(grad_checkpointing=True)
    assert seg.encoder.grad_checkpointing


def test_bf16_autocast_on_cpu():
    seg = small_model(proj_heads=("pixel",))
    img = torch.rand(2, 3, 32, 48)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = seg(img)
        emb = seg.project("pixel", out["feat"])
        loss = (
            F.cross_entropy(out["logits"].float(), torch.randint(0, 5, (2, 8, 12)))
            + emb.float().mean()
        )
    assert out["logits"].dtype == torch.bfloat16
    loss.backward()
    assert torch.isfinite(seg.encoder.block1[0].attn.q.weight.grad).all()
    seg.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = seg.predict(img[..., :40], mode="slide", crop_size=(32, 32), stride=(16, 8))
    assert logits.shape == (2, 5, 32, 40) and logits.dtype == torch.float32
    with pytest.raises(ValueError, match="at least 29x29 pixels"):
        seg(torch.rand(1, 3, 28, 64))


def test_channels_last_matches_default_layout():
    seg = small_model().eval()
    cl = small_model(channels_last=True).eval()
    cl.load_state_dict(seg.state_dict())
    assert cl.encoder.patch_embed1.proj.weight.is_contiguous(memory_format=torch.channels_last)
    img = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(cl(img)["logits"], seg(img)["logits"], rtol=1e-4, atol=1e-5)


def test_deeplabv2_r101_shapes_and_aspp_sum():
    torch.manual_seed(0)
    seg = build_segmentor(
        "deeplabv2_r101", num_classes=19, proj_heads=("pixel",), proj_dim=8
    ).eval()
    img = torch.rand(1, 3, 33, 41)
    with torch.no_grad():
        out = seg(img)
        # The classifier is the sum of four dilated 3x3 convs on the stride-8 feature.
        manual = sum(
            F.conv2d(out["feat"], c.weight, c.bias, padding=d, dilation=d)
            for c, d in zip(seg.decoder.convs, (6, 12, 18, 24))
        )
    assert out["logits"].shape == (1, 19, 5, 6)
    assert out["feat"].shape == (1, 2048, 5, 6)
    assert [e.shape[1] for e in out["enc"]] == [256, 512, 1024, 2048]
    torch.testing.assert_close(out["logits"], manual)
    assert len(seg.encoder.body.layer3) == 23  # ResNet-101
