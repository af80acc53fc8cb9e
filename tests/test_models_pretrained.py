"""Pretrained-weight loading: official SegFormer, Hugging Face, timm formats; exports; clear errors."""

from __future__ import annotations

import logging

import pytest
import timm
import torch

from pipa_core.models import (
    ASPPClassifier,
    PretrainedLoadError,
    ResNetEncoder,
    Segmentor,
    build_segmentor,
    load_encoder_weights,
    mit_b0,
)
from pipa_core.models.pretrained import hf_to_official, official_to_hf


def hf_key(key: str) -> str:
    """Official SegFormer key -> Hugging Face key, written out case by case (independent of the loader)."""
    if key.startswith("head."):
        return "classifier." + key[5:]
    parts = key.split(".")
    first = parts[0]
    if first.startswith("patch_embed"):
        stage = int(first[-1]) - 1
        sub = {"proj": "proj", "norm": "layer_norm"}[parts[1]]
        return f"segformer.encoder.patch_embeddings.{stage}.{sub}.{parts[2]}"
    if first.startswith("norm"):
        return f"segformer.encoder.layer_norm.{int(first[-1]) - 1}.{parts[1]}"
    stage, idx, rest = int(first[-1]) - 1, parts[1], ".".join(parts[2:])
    table = {
        "norm1": "layer_norm_1",
        "norm2": "layer_norm_2",
        "attn.q": "attention.self.query",
        "attn.sr": "attention.self.sr",
        "attn.norm": "attention.self.layer_norm",
        "attn.proj": "attention.output.dense",
        "mlp.fc1": "mlp.dense1",
        "mlp.fc2": "mlp.dense2",
        "mlp.dwconv.dwconv": "mlp.dwconv.dwconv",
    }
    module, param = rest.rsplit(".", 1)
    return f"segformer.encoder.block.{stage}.{idx}.{table[module]}.{param}"


def make_hf_state_dict(official: dict) -> dict:
    out = {}
    for k, v in official.items():
        if ".attn.kv." in k:
            dim = v.shape[0] // 2
            base = hf_key(k.replace(".attn.kv.", ".attn.q.")).replace(".query.", ".{}.")
            out[base.format("key")] = v[:dim].clone()
            out[base.format("value")] = v[dim:].clone()
        else:
            out[hf_key(k)] = v.clone()
    return out


@pytest.fixture(scope="module")
def source_b0():
    """A randomly initialised MiT-B0 plus an ImageNet classifier, as in ``mit_b0.pth``."""
    torch.manual_seed(123)
    enc = mit_b0().eval()
    sd = dict(enc.state_dict())
    sd["head.weight"] = torch.randn(1000, 256)
    sd["head.bias"] = torch.randn(1000)
    img = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        feats = enc((img - 0.45) / 0.225)
    return sd, img, feats


def _features(seg, img):
    seg.eval()
    with torch.no_grad():
        return seg.encoder((img - 0.45) / 0.225)


def _assert_same(feats, ref):
    for a, b in zip(feats, ref):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("wrapped", [False, True])
def test_official_segformer_checkpoint_round_trip(tmp_path, source_b0, wrapped, caplog):
    sd, img, ref = source_b0
    path = tmp_path / "mit_b0.pth"
    torch.save({"state_dict": sd} if wrapped else sd, path)
    with caplog.at_level(logging.INFO, logger="pipa_core.models.pretrained"):
        seg = build_segmentor("daformer_mit_b0", pretrained=path, decoder_channels=16)
    report = seg.pretrained_report
    assert report.format == "mit_official"
    assert report.missing == [] and report.unexpected == []
    assert sorted(report.ignored) == ["head.bias", "head.weight"]
    assert report.loaded == len(sd) - 2
    assert "mit_b0.pth" in caplog.text
    _assert_same(_features(seg, img), ref)


@pytest.mark.parametrize("suffix", [".bin", ".safetensors", "safetensors-named.bin"])
def test_huggingface_checkpoint_round_trip(tmp_path, source_b0, suffix):
    sd, img, ref = source_b0
    hf = make_hf_state_dict(sd)
    # Real key names of nvidia/mit-b0.
    for k in [
        "segformer.encoder.patch_embeddings.0.proj.weight",
        "segformer.encoder.patch_embeddings.0.layer_norm.weight",
        "segformer.encoder.block.0.0.layer_norm_1.weight",
        "segformer.encoder.block.0.0.attention.self.query.weight",
        "segformer.encoder.block.0.0.attention.self.key.weight",
        "segformer.encoder.block.0.0.attention.self.value.bias",
        "segformer.encoder.block.0.0.attention.self.sr.weight",
        "segformer.encoder.block.0.0.attention.self.layer_norm.weight",
        "segformer.encoder.block.0.0.attention.output.dense.weight",
        "segformer.encoder.block.3.1.mlp.dense1.weight",
        "segformer.encoder.block.3.1.mlp.dwconv.dwconv.weight",
        "segformer.encoder.layer_norm.3.bias",
        "classifier.weight",
    ]:
        assert k in hf, k
    path = tmp_path / f"pytorch_model{suffix}"
    if "safetensors" in suffix:  # also a safetensors file under a .bin name
        from safetensors.torch import save_file

        save_file(hf, str(path))
    else:
        torch.save(hf, path)
    seg = build_segmentor("segformer_mit_b0", pretrained=path)
    report = seg.pretrained_report
    assert report.format == "mit_hf"
    assert report.missing == [] and report.unexpected == []
    assert sorted(report.ignored) == ["classifier.bias", "classifier.weight"]
    _assert_same(_features(seg, img), ref)


def test_key_converters_are_inverse_and_match_hf_names(source_b0):
    sd, _, _ = source_b0
    hf = official_to_hf(sd)
    expected = make_hf_state_dict(sd)
    assert set(hf) == set(expected)
    for k in hf:
        assert torch.equal(hf[k], expected[k]), k
    back, ignored = hf_to_official(hf)
    assert sorted(ignored) == ["classifier.bias", "classifier.weight"]
    assert set(back) == set(sd) - {"head.weight", "head.bias"}
    assert all(torch.equal(back[k], sd[k]) for k in back)


def test_timm_resnet_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    src = timm.create_model("resnet18")  # same key scheme as resnet50/101, cheaper
    path = tmp_path / "resnet18.pth"
    torch.save(src.state_dict(), path)
    enc = ResNetEncoder("resnet18")
    report = load_encoder_weights(enc, path)
    assert report.format == "timm_resnet"
    assert report.missing == [] and report.unexpected == []
    assert sorted(report.ignored) == ["fc.bias", "fc.weight"]
    src_sd = src.state_dict()
    for k, v in enc.body.state_dict().items():
        assert torch.equal(v, src_sd[k]), k


def test_export_drops_projection_heads_and_reloads(tmp_path):
    torch.manual_seed(0)
    seg = build_segmentor("daformer_mit_b0", num_classes=4, decoder_channels=16, proj_dim=8)
    assert set(seg.proj_heads) == {"pixel", "patch"}
    assert not any(k.startswith("proj_heads") for k in seg.inference_state_dict())
    path = tmp_path / "model.pth"
    seg.export_weights(path)
    saved = torch.load(path, weights_only=True)
    assert saved["meta"]["arch"] == "daformer_mit_b0"
    assert not any("proj_heads" in k for k in saved["state_dict"])
    assert len(saved["state_dict"]) == len(seg.state_dict()) - len(seg.proj_heads.state_dict())

    torch.manual_seed(1)
    fresh = build_segmentor("daformer_mit_b0", num_classes=4, decoder_channels=16, proj_dim=8)
    report = fresh.load_weights(path)
    assert report.missing == [] and report.unexpected == []
    assert report.expected_missing and all(
        k.startswith("proj_heads.") for k in report.expected_missing
    )
    img = torch.rand(1, 3, 32, 32)
    seg.eval()
    fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(img)["logits"], seg(img)["logits"])
    # The builder accepts exported files too.
    again = build_segmentor("daformer_mit_b0", num_classes=4, decoder_channels=16, pretrained=path)
    assert again.pretrained_report.format == "pipa_segmentor"
    # A segmentor of another architecture refuses it clearly.
    with pytest.raises(PretrainedLoadError, match="model.pth"):
        build_segmentor("segformer_mit_b0", num_classes=4, pretrained=path)


def test_corrupt_file_gives_clear_error(tmp_path, source_b0):
    garbage = tmp_path / "mit_b0.pth"
    garbage.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(
        PretrainedLoadError, match=r"could not read weights file .*mit_b0\.pth.*corrupt"
    ):
        build_segmentor("daformer_mit_b0", pretrained=garbage)
    # A truncated download of a real checkpoint.
    good = tmp_path / "good.pth"
    torch.save(source_b0[0], good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(PretrainedLoadError, match="truncated.pth"):
        load_encoder_weights(mit_b0(), truncated)
    broken_st = tmp_path / "model.safetensors"
    broken_st.write_bytes(b"\x00" * 64)
    with pytest.raises(PretrainedLoadError, match="model.safetensors"):
        load_encoder_weights(mit_b0(), broken_st)
    unknown = tmp_path / "other.pth"
    torch.save({"foo.weight": torch.zeros(2)}, unknown)
    with pytest.raises(PretrainedLoadError, match="unrecognised checkpoint format"):
        load_encoder_weights(mit_b0(), unknown)


def test_wrong_architecture_gives_clear_error(tmp_path, source_b0):
    sd = source_b0[0]
    path = tmp_path / "mit_b0.pth"
    torch.save(sd, path)
    # MiT-B0 weights into a MiT-B1 model: every width differs.
    with pytest.raises(PretrainedLoadError, match=r"mit_b0\.pth holds mit_b0 weights .* mit_b1"):
        build_segmentor("segformer_mit_b1", pretrained=path)
    # Same widths, different depth (like MiT-B5 weights into MiT-B3).
    shallow = {k: v for k, v in sd.items() if not k.startswith("block3.1.")}
    path2 = tmp_path / "shallow.pth"
    torch.save(shallow, path2)
    with pytest.raises(PretrainedLoadError, match=r"depths \(2, 2, 1, 2\)"):
        load_encoder_weights(mit_b0(), path2)
    # ResNet weights into an MiT and vice versa.
    res = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18").state_dict(), res)
    with pytest.raises(PretrainedLoadError, match="not an MiT encoder"):
        load_encoder_weights(mit_b0(), res)
    with pytest.raises(PretrainedLoadError, match="not a ResNet"):
        load_encoder_weights(ResNetEncoder("resnet18"), path)
    # Shape mismatches are named key by key.
    bad = dict(sd)
    bad["patch_embed1.proj.weight"] = torch.zeros(32, 3, 3, 3)
    path3 = tmp_path / "bad.pth"
    torch.save(bad, path3)
    with pytest.raises(
        PretrainedLoadError, match=r"patch_embed1\.proj\.weight: file \(32, 3, 3, 3\)"
    ):
        load_encoder_weights(mit_b0(), path3)


def test_missing_file_and_unreachable_hub(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="mit_b0.pth does not exist"):
        build_segmentor("daformer_mit_b0", pretrained=tmp_path / "mit_b0.pth")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(RuntimeError, match=r"nvidia/mit-b0.*pass their path"):
        load_encoder_weights(mit_b0(), "imagenet")
    enc = ResNetEncoder("resnet18")
    seg = Segmentor(enc, ASPPClassifier(512, 3), output_stride=8)
    with pytest.raises(RuntimeError, match=r"timm ImageNet weights for resnet18.*pass the path"):
        load_encoder_weights(seg.encoder, "imagenet")
