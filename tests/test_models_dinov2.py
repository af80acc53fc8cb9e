"""DINOv2 ViT encoders (timm) with the multi-scale neck: shapes, HRDA, training, weights, lr decay."""

from __future__ import annotations

import pytest
import torch

from pipa_core.config import apply_overrides, get_preset
from pipa_core.data.synthetic import ensure_synthetic
from pipa_core.models import build_segmentor
from pipa_core.models.dinov2 import DINOv2Encoder, dinov2_layer_id
from pipa_core.models.pretrained import PretrainedLoadError, load_encoder_weights
from pipa_core.uda.optim import param_groups

SMALL = {"embed_dim": 64, "depth": 4, "num_heads": 2}  # a ViT-S-shaped model at small width


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_neck_gives_mit_strides_and_channels():
    torch.manual_seed(0)
    enc = DINOv2Encoder("dinov2_s", **SMALL).eval()
    assert enc.block_ids == [0, 1, 2, 3] and enc.out_channels == [16, 32, 64, 64]
    assert DINOv2Encoder("dinov2_s").block_ids == [2, 5, 8, 11]  # ViT-S/B: 12 blocks
    maps = enc(torch.rand(2, 3, 128, 96))
    assert [tuple(m.shape) for m in maps] == [
        (2, 16, 32, 24), (2, 32, 16, 12), (2, 64, 8, 6), (2, 64, 4, 3),
    ]  # fmt: skip
    # one token per 16x16 pixels, rounded up: a 100x70 input has the grid of 112x80
    assert enc.grid(100, 70) == (7, 5) and tuple(enc(torch.rand(1, 3, 100, 70))[2].shape[-2:]) == (
        7,
        5,
    )


def test_dinov2_segmentor_predicts_and_wraps_in_hrda():
    torch.manual_seed(0)
    seg = build_segmentor("daformer_dinov2_s", decoder_channels=16, proj_heads=("pixel",),
                          proj_dim=8, vit_kwargs=SMALL).eval()  # fmt: skip
    img = torch.rand(1, 3, 64, 128)
    out = seg(img)
    assert out["logits"].shape == (1, 19, 16, 32) and out["feat"].shape == (1, 16, 16, 32)
    with torch.no_grad():
        assert seg.predict(img, mode="slide", crop_size=(64, 64)).shape == (1, 19, 64, 128)
    hrda = build_segmentor("hrda_daformer_dinov2_s", decoder_channels=16, proj_heads=(),
                           vit_kwargs=SMALL, hrda={"detail_size": (32, 32)}).train()  # fmt: skip
    label = torch.randint(0, 19, (1, 64, 64))
    out = hrda(torch.rand(1, 3, 64, 64))
    loss = hrda.seg_loss(out, label)
    loss.backward()
    assert torch.isfinite(loss) and hrda.encoder.vit.blocks[0].attn.qkv.weight.grad is not None


def test_pipa_self_training_runs_on_a_dinov2_encoder(tmp_path):
    from pipa_core.uda.trainer import train

    ensure_synthetic(tmp_path / "synthetic", size="tiny")
    cfg = apply_overrides(get_preset("synthetic_pipa"), [
        "model.arch=daformer_dinov2_s", "model.init_from=null", "model.decoder_channels=16",
        "model.proj_dim=8", "data.synthetic_size=tiny", f"data.data_root={tmp_path}",
        "losses.patch.crop_size=32", "optim.max_iters=2", "optim.warmup_iters=1",
        "optim.layer_decay=0.9", "eval.max_samples=1", "runtime.progress=false",
        "runtime.tensorboard=false", f"runtime.run_dir={tmp_path / 'run'}",
    ])  # fmt: skip
    result = train(cfg)
    assert result["finished"] and result["skipped_steps"] == 0 and 0 <= result["mIoU"] <= 100


def _official_layout(sd: dict) -> dict:
    """A timm DINOv2 state dict as the official release names it."""
    out = {("register_tokens" if k == "reg_token" else k): v for k, v in sd.items()}
    out["mask_token"] = torch.zeros(1, sd["cls_token"].shape[-1])
    return out


@pytest.mark.parametrize("name", ["dinov2_s", "dinov2_s_reg"])
@pytest.mark.parametrize("layout", ["timm", "official", "backbone_prefixed"])
def test_weights_load_from_each_layout(tmp_path, name, layout):
    torch.manual_seed(1)
    source = DINOv2Encoder(name, **SMALL).vit.state_dict()
    sd = {"timm": source, "official": _official_layout(source),
          "backbone_prefixed": {f"backbone.{k}": v for k, v in source.items()}}[layout]  # fmt: skip
    path = tmp_path / "w.pth"
    torch.save(sd, path)
    torch.manual_seed(2)
    enc = DINOv2Encoder(name, **SMALL)
    report = load_encoder_weights(enc, path)
    assert not report.missing and report.loaded == len(source)
    assert all(torch.equal(enc.vit.state_dict()[k], v) for k, v in source.items())
    if layout == "official":
        assert report.ignored == ["mask_token"]


def test_wrong_weights_are_refused_with_both_architectures(tmp_path):
    small = DINOv2Encoder("dinov2_s", **SMALL)
    path = tmp_path / "w.pth"
    torch.save(DINOv2Encoder("dinov2_s", embed_dim=64, depth=6, num_heads=2).vit.state_dict(), path)
    with pytest.raises(PretrainedLoadError, match="ViT width 64, 6 blocks.*ViT width 64, 4 blocks"):
        load_encoder_weights(small, path)
    torch.save(DINOv2Encoder("dinov2_s_reg", **SMALL).vit.state_dict(), path)
    with pytest.raises(PretrainedLoadError, match="registers True.*registers False"):
        load_encoder_weights(small, path)
    torch.save(build_segmentor("daformer_mit_b0").encoder.state_dict(), path)
    with pytest.raises(PretrainedLoadError, match="not a DINOv2 ViT"):
        load_encoder_weights(small, path)
    with pytest.raises(PretrainedLoadError, match="'dinov2' names the DINOv2 weights"):
        load_encoder_weights(small, "imagenet")


def test_layer_wise_lr_decay_groups():
    from pipa_core.uda.engine import layer_lr_scale

    seg = build_segmentor("daformer_dinov2_s", decoder_channels=16, proj_heads=(), vit_kwargs=SMALL)
    cfg = apply_overrides(get_preset("gta2cs_pipa_dinov2s"), ["optim.layer_decay=0.5"])
    scale = layer_lr_scale(seg, cfg)
    assert (
        dinov2_layer_id("vit.pos_embed", 4) == 0
        and dinov2_layer_id("vit.blocks.3.mlp.fc1.weight", 4) == 4
    )
    groups = param_groups(seg, 1.0, 0.01, 10.0, layer_scale=scale)
    lr = {n: g["lr"] for g in groups for n in g["param_names"]}
    assert lr["encoder.vit.blocks.3.attn.qkv.weight"] == 0.5  # the last block: one decay step
    assert lr["encoder.vit.blocks.0.attn.qkv.weight"] == 0.5**4
    assert (
        lr["encoder.vit.patch_embed.proj.weight"] == 0.5**5
        and lr["encoder.vit.pos_embed"] == 0.5**5
    )
    assert lr["encoder.neck.0.0.weight"] == 1.0 and lr["decoder.conv_seg.weight"] == 10.0
    # pos_embed, cls token, norms: no weight decay
    wd = {n: g["weight_decay"] for g in groups for n in g["param_names"]}
    assert wd["encoder.vit.pos_embed"] == wd["encoder.vit.cls_token"] == 0.0
    assert layer_lr_scale(seg, get_preset("gta2cs_pipa_dinov2s")) is None  # 1 = off


def test_dinov2_presets_follow_vfm_uda():
    cfg = get_preset("gta2cs_pipa_dinov2b")
    assert cfg.model.arch == "daformer_dinov2_b" and cfg.model.pretrained == "dinov2"
    assert cfg.uda.fd_lambda == 0.0 and cfg.losses.enabled == ("pixel", "patch")
    assert cfg.optim.lr == pytest.approx(7.07e-6, rel=1e-3) and cfg.optim.head_lr_mult == 10
    assert get_preset("syn2cs_mic_dinov2l").model.arch == "daformer_dinov2_l"
