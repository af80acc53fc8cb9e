"""Released DAFormer / HRDA / MIC / PiPa checkpoints load into pipa_core exactly.

The files are written by ``official_fixtures`` with the official key names and
shapes (three prefixes, ``meta``, ``optimizer``), every tensor random and distinct,
and read through ``experiments.runs.load_segmentor``: the function the notebooks use.
Placement is checked against computations written here from the raw tensors in the
official module order (DAFormer's Linear embeddings, HRDA's finest-first attention
concatenation, PiPa's ``proj_head`` on the concatenated stages).
"""

from __future__ import annotations

import numpy as np
import official_fixtures as fx
import pytest
import torch
import torch.nn.functional as F

from pipa_core.experiments.runs import evaluate_run, load_run_config, load_segmentor
from pipa_core.models.mit import MIT_CONFIGS, mit_b0
from pipa_core.models.official import (
    UnsafeCheckpointError,
    infer_architecture,
    main,
    read_released_checkpoint,
    released_to_pipa,
)
from pipa_core.models.pretrained import PretrainedLoadError

KINDS = ("daformer", "hrda", "pipa_hrda", "pipa_daformer")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("released")
    out = {}
    for i, kind in enumerate(KINDS):
        path = d / f"{kind}_latest.pth"
        out[kind] = (path, fx.write_released(path, kind, seed=i))
    return out


def _raw(sd, prefix="model."):
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def _bn_eval(x, raw, p):
    return F.batch_norm(
        x, raw[f"{p}.running_mean"], raw[f"{p}.running_var"], raw[f"{p}.weight"],
        raw[f"{p}.bias"], training=False, eps=1e-5,
    )  # fmt: skip


def _linear_embed(x, raw, p):
    """mmseg's MLP: tokens (B, HW, C) through nn.Linear, back to (B, E, H, W)."""
    b, _, h, w = x.shape
    t = F.linear(x.flatten(2).transpose(1, 2), raw[f"{p}.proj.weight"], raw[f"{p}.proj.bias"])
    return t.transpose(1, 2).reshape(b, -1, h, w)


def _embed_all(enc, raw, p):
    """Embed every level and resize to the finest, concatenated finest first (official)."""
    size = enc[0].shape[-2:]
    out = []
    for i, x in enumerate(enc):
        e = _linear_embed(x, raw, f"{p}embed_layers.{i}")
        out.append(F.interpolate(e, size=size, mode="bilinear", align_corners=False))
    return torch.cat(out, 1)


def _official_daformer_head(enc, raw, p):
    """DAFormerHead.forward of the official code, from the raw tensors (eval mode)."""
    x = _embed_all(enc, raw, p)
    f = f"{p}fuse_layer.aspp_modules"
    outs = [F.relu(_bn_eval(F.conv2d(x, raw[f"{f}.0.conv.weight"]), raw, f"{f}.0.bn"))]
    for j, d in zip((1, 2, 3), (6, 12, 18)):
        dw = F.conv2d(
            x, raw[f"{f}.{j}.depthwise_conv.conv.weight"], padding=d, dilation=d, groups=x.shape[1]
        )
        dw = F.relu(_bn_eval(dw, raw, f"{f}.{j}.depthwise_conv.bn"))
        pw = F.conv2d(dw, raw[f"{f}.{j}.pointwise_conv.conv.weight"])
        outs.append(F.relu(_bn_eval(pw, raw, f"{f}.{j}.pointwise_conv.bn")))
    b = f"{p}fuse_layer.bottleneck"
    y = F.conv2d(torch.cat(outs, 1), raw[f"{b}.conv.weight"], padding=1)
    y = F.relu(_bn_eval(y, raw, f"{b}.bn"))
    return F.conv2d(y, raw[f"{p}conv_seg.weight"], raw[f"{p}conv_seg.bias"])


# --------------------------------------------------------------------------- layout
def test_the_fixture_backbone_has_the_segformer_names_and_shapes():
    ours = {f"backbone.{k}": tuple(v.shape) for k, v in mit_b0().state_dict().items()}
    assert fx.mit_shapes("mit_b0") == ours


@pytest.mark.parametrize(
    "kind, tensors, params",
    [("daformer", 1110, 85.16), ("hrda", 1126, 85.69), ("pipa_hrda", 1143, 96.46)],
)
def test_mit_b5_released_layouts_map_one_to_one_onto_our_segmentors(kind, tensors, params):
    """With MiT-B5's real names and shapes (meta tensors: no memory), every released
    tensor has exactly one place of the same shape in the segmentor we build."""
    shapes = fx.segmentor_shapes(kind, "mit_b5")
    assert len(shapes) == tensors  # the counts derived from the official module trees
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    n = sum(int(np.prod(s)) for k, s in shapes.items() if not k.endswith(buffers))
    assert n / 1e6 == pytest.approx(params, abs=0.005)
    sd = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    arch = infer_architecture(sd)
    assert arch.encoder == "mit_b5" and arch.num_classes == 19
    converted, unused = released_to_pipa(sd, arch)
    assert unused == []
    from pipa_core.models.official import _build

    with torch.device("meta"):
        seg = _build(arch)
    own = {k: tuple(v.shape) for k, v in seg.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in converted.items()} == own


@pytest.mark.parametrize(
    "kind, method, arch",
    [
        ("daformer", "DAFormer", "daformer_mit_b0"),
        ("hrda", "HRDA", "hrda_daformer_mit_b0"),
        ("pipa_hrda", "PiPa(HRDA)", "hrda_daformer_mit_b0"),
        ("pipa_daformer", "PiPa(DAFormer)", "daformer_mit_b0"),
    ],
)
def test_the_architecture_is_inferred_from_the_keys(files, kind, method, arch):
    ck = read_released_checkpoint(files[kind][0])
    assert set(ck.prefixes()) >= {"model", "ema_model", "imnet_model"} and ck.has_optimizer
    assert ck.meta["iter"] == 40000
    got = infer_architecture(ck.part("student"), ck.config_text)
    assert (got.method, got.arch, got.stage_heads) == (method, arch, kind.startswith("pipa"))


def test_mic_is_recognised_from_the_recorded_config(tmp_path):
    meta = fx.make_meta("hrda")
    meta["config"] += "uda = dict(mask_generator=dict(type='block', mask_ratio=0.7))\n"
    fx.write_released(tmp_path / "mic.pth", "hrda", meta=meta)
    ck = read_released_checkpoint(tmp_path / "mic.pth")
    assert infer_architecture(ck.part("student"), ck.config_text).method == "MIC(HRDA)"


# ----------------------------------------------------------------------- placement
@pytest.mark.parametrize("kind", KINDS)
def test_every_tensor_of_the_model_comes_from_the_student_and_the_rest_is_named(files, kind):
    path, sd = files[kind]
    seg = load_segmentor(path)
    raw = _raw(sd)
    # every tensor is random and distinct: find each model tensor among the file's by value
    by_value = {}
    for k, v in raw.items():
        by_value.setdefault((v.numel(), round(float(v.double().sum()), 6)), []).append(k)
    sources = set()
    for name, t in seg.state_dict().items():
        if name.endswith("linear_fuse.0.weight"):
            continue  # reordered channel blocks: checked by the attention test below
        cands = by_value.get((t.numel(), round(float(t.double().sum()), 6)), [])
        match = [k for k in cands if torch.equal(raw[k].reshape(t.shape), t)]
        assert match, f"{name} was not loaded from the file"
        sources.add(match[0])
    report = seg.pretrained_report
    assert report.loaded == len(seg.state_dict())
    assert set(report.ignored) == {k for k in sd if not k.startswith("model.")}
    if kind.startswith("pipa"):
        assert {"project.0.weight", "classifier.bias"} <= set(report.ignored)


def test_daformer_head_logits_equal_the_official_forward_from_raw_tensors(files):
    path, sd = files["daformer"]
    seg, raw = load_segmentor(path), _raw(sd)
    img = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        enc = seg.encode(img)
        x = enc[2]
        ref = _linear_embed(x, raw, "decode_head.embed_layers.2")  # one layer by hand
        assert torch.allclose(seg.decoder.embeds[2](x), ref, atol=1e-6)
        logits, _ = seg.decode(enc)
        official = _official_daformer_head(enc, raw, "decode_head.")
    assert torch.allclose(logits, official, atol=1e-5)


def test_hrda_heads_and_scale_attention_equal_the_official_forward(files):
    path, sd = files["hrda"]
    seg, raw = load_segmentor(path), _raw(sd)
    with torch.no_grad():
        enc = seg.encoder(seg.normalize(torch.rand(1, 3, 64, 64)))
        logits, _ = seg.decode(enc)
        assert torch.allclose(
            logits, _official_daformer_head(enc, raw, "decode_head.head."), atol=1e-5
        )
        # the attention: official DAFormer head with a 1x1 ConvModule fusion, finest level first
        a = "decode_head.scale_attention."
        x = F.conv2d(_embed_all(enc, raw, a), raw[f"{a}fuse_layer.conv.weight"])
        x = F.relu(_bn_eval(x, raw, f"{a}fuse_layer.bn"))
        official = torch.sigmoid(F.conv2d(x, raw[f"{a}conv_seg.weight"], raw[f"{a}conv_seg.bias"]))
        assert torch.allclose(seg.attention(enc), official, atol=1e-6)
    assert seg.detail_size == (512, 512) and seg.lr_scale == 0.5


def test_pipa_proj_head_embedding_equals_the_release_and_is_offered_for_analysis(files):
    from pipa_core.eval.features import pixel_embedding

    path, sd = files["pipa_hrda"]
    seg, raw = load_segmentor(path), _raw(sd)
    img = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        enc = seg.encoder(seg.normalize(img))
        size = enc[0].shape[-2:]
        cat = torch.cat(
            [enc[0]]
            + [F.interpolate(e, size=size, mode="bilinear", align_corners=True) for e in enc[1:]],
            1,
        )
        p = "proj_head.proj"
        x = F.relu(
            _bn_eval(F.conv2d(cat, raw[f"{p}.0.weight"], raw[f"{p}.0.bias"]), raw, f"{p}.1.0")
        )
        ref = F.normalize(F.conv2d(x, raw[f"{p}.2.weight"], raw[f"{p}.2.bias"]), dim=1)
        emb = pixel_embedding(seg, img, "proj_head")
    assert emb.shape == (2, 256, 16, 16) and torch.allclose(emb, ref, atol=1e-5)
    with pytest.raises(ValueError, match="no stage heads"):
        pixel_embedding(load_segmentor(files["daformer"][0]), img, "proj_head")


def test_teacher_student_and_imagenet_models_load_their_own_tensors(files):
    path, sd = files["hrda"]
    key = "backbone.patch_embed1.proj.weight"
    got = {
        w: load_segmentor(path, w).encoder.patch_embed1.proj.weight
        for w in ("student", "teacher", "imagenet")
    }
    for which, prefix in (
        ("student", "model."),
        ("teacher", "ema_model."),
        ("imagenet", "imnet_model."),
    ):
        assert torch.equal(got[which], sd[prefix + key])
    assert not torch.equal(got["student"], got["teacher"])


def test_a_published_student_only_file_loads_and_has_no_teacher(tmp_path, files):
    _, sd = files["daformer"]
    torch.save({"meta": {}, "state_dict": _raw(sd)}, tmp_path / "published.pth")  # publish_model.py
    seg = load_segmentor(tmp_path / "published.pth")
    assert torch.equal(seg.decoder.conv_seg.bias, sd["model.decode_head.conv_seg.bias"])
    with pytest.raises(PretrainedLoadError, match="no teacher weights"):
        load_segmentor(tmp_path / "published.pth", "teacher")


# ----------------------------------------------------------------------- bad files
def test_a_truncated_file_says_so(tmp_path, files):
    path = tmp_path / "cut.pth"
    path.write_bytes(files["daformer"][0].read_bytes()[:5000])
    with pytest.raises(PretrainedLoadError, match="truncated"):
        load_segmentor(path)


def test_a_missing_tensor_is_named_with_the_architecture(tmp_path, files):
    _, sd = files["hrda"]
    sd = dict(sd)
    del sd["model.decode_head.scale_attention.conv_seg.bias"]
    torch.save({"meta": {}, "state_dict": sd}, tmp_path / "missing.pth")
    with pytest.raises(
        PretrainedLoadError, match=r"scale_attention\.conv_seg\.bias.*|HRDA with MiT-B0"
    ) as e:
        load_segmentor(tmp_path / "missing.pth")
    assert "scale_attention.conv_seg.bias" in str(e.value) and "HRDA with MiT-B0" in str(e.value)


def test_a_misshaped_tensor_is_named_with_both_shapes(tmp_path, files):
    _, sd = files["daformer"]
    sd = dict(sd)
    sd["model.decode_head.fuse_layer.bottleneck.conv.weight"] = torch.zeros(256, 1024, 1, 1)
    torch.save({"meta": {}, "state_dict": sd}, tmp_path / "bad.pth")
    with pytest.raises(PretrainedLoadError) as e:
        load_segmentor(tmp_path / "bad.pth")
    msg = str(e.value)
    assert "model.decode_head.fuse_layer.bottleneck.conv.weight" in msg
    assert (
        "(256, 1024, 1, 1)" in msg and "(256, 1024, 3, 3)" in msg and "DAFormer with MiT-B0" in msg
    )


def test_objects_the_safe_loader_refuses_need_an_explicit_opt_in(tmp_path):
    meta = fx.make_meta("daformer")
    meta["hook_msgs"] = {"best_score": np.float64(0.75)}  # mmcv stores numpy scalars here
    path = tmp_path / "numpy_meta.pth"
    fx.write_released(path, "daformer", meta=meta)
    with pytest.raises(UnsafeCheckpointError, match="numpy") as e:
        load_segmentor(path)
    assert "trust_checkpoint=True" in str(e.value) and "--trust-checkpoint" in str(e.value)
    seg = load_segmentor(path, trust_checkpoint=True)
    assert seg.pretrained_report.format == "released DAFormer"


def test_a_file_of_another_kind_is_refused_clearly(tmp_path):
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}}, tmp_path / "resnet.pth")
    with pytest.raises(PretrainedLoadError, match="not a DAFormer / HRDA / MIC / PiPa checkpoint"):
        load_segmentor(tmp_path / "resnet.pth")


# ------------------------------------------------------------------- analysis path
def test_a_released_file_is_evaluated_with_the_benchmarks_protocol(tmp_path, files):
    from data_fixtures import make_cityscapes, make_gta

    from pipa_core.data.prepare import prepare

    make_gta(tmp_path / "gta", n=2)
    make_cityscapes(tmp_path / "cityscapes", per_city=1)
    for name in ("gta", "cityscapes"):
        prepare(name, tmp_path / name, progress=False)
    path = files["daformer"][0]
    with pytest.raises(ValueError, match="benchmark='gta2cs'"):
        load_run_config(path)
    cfg = load_run_config(path, benchmark="gta2cs")
    assert cfg.model.arch == "daformer_mit_b0" and cfg.data.benchmark == "gta2cs"
    res = evaluate_run(path, benchmark="gta2cs", data_root=tmp_path, max_samples=1)
    assert res["benchmark"] == "gta2cs" and 0.0 <= res["mIoU"] <= 100.0
    assert res["settings"]["max_samples"] == 1


def test_the_command_line_describes_a_file(files, capsys, tmp_path):
    assert main([str(files["pipa_hrda"][0])]) == 0
    out = capsys.readouterr().out
    assert "PiPa(HRDA) with MiT-B0" in out and "ema_model" in out and "project" in out
    assert main([str(tmp_path / "absent.pth")]) == 1
    assert "no checkpoint file" in capsys.readouterr().err


def test_mit_sizes_are_told_apart_by_their_shapes():
    for name in ("mit_b1", "mit_b3", "mit_b5"):
        sd = {
            k: torch.empty(s, device="meta")
            for k, s in fx.segmentor_shapes("daformer", name).items()
        }
        assert infer_architecture(sd).encoder == name
    assert MIT_CONFIGS["mit_b0"].embed_dims[0] == 32
