"""HRDA through the training engine: presets, step hooks, runs on the synthetic benchmark and fixture trees."""

from __future__ import annotations

import json

import pytest
import torch

from pipa_core.config import (
    ConfigError,
    apply_overrides,
    get_preset,
    preset_names,
    pseudo_crop_rows,
    resolve_benchmark,
    validate_config,
)
from pipa_core.data.synthetic import ensure_synthetic
from pipa_core.losses.segmentation import segmentation_ce
from pipa_core.models import build_segmentor
from pipa_core.models.hrda import HRDASegmentor
from pipa_core.uda.trainer import Trainer


@pytest.fixture(autouse=True)
def _one_thread():
    # 2 shared cores: one intra-op thread avoids oversubscription.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


TINY = [
    "model.decoder_channels=16",
    "model.init_from=null",
    "model.proj_dim=8",
    "runtime.num_threads=1",
    "runtime.progress=false",
    "runtime.tensorboard=false",
    "runtime.log_interval=1",
    "runtime.image_interval=0",
    "eval.max_samples=2",
    "optim.warmup_iters=1",
]


@pytest.mark.parametrize(
    "preset, source_scale", [("gta2cs_hrda", (1440, 2560)), ("syn2cs_hrda", (1520, 2560))]
)
def test_real_hrda_presets_follow_hrda_and_pipa(preset, source_scale, tmp_path, monkeypatch):
    # validation checks the ImageNet weights file exists: a placeholder in a scratch directory
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pretrained").mkdir()
    (tmp_path / "pretrained" / "mit_b5.pth").write_bytes(b"")
    cfg = validate_config(get_preset(preset))
    assert cfg.model.pretrained == "pretrained/mit_b5.pth"
    assert cfg.model.arch == "hrda_daformer_mit_b5"
    assert cfg.model.hrda_detail_ratio == 0.5 and cfg.model.hrda_hr_loss_weight == 0.1
    assert cfg.data.crop_size == (1024, 1024) and cfg.data.source_scale == source_scale
    assert cfg.data.target_scale == (1024, 2048) and cfg.data.rcs_min_crop_ratio == 2.0
    assert cfg.optim.max_iters == 60000 and cfg.optim.lr == 6e-5
    assert cfg.losses.enabled == ("pixel", "patch") and cfg.losses.patch.crop_size == 720
    assert cfg.losses.pixel.weight == 0.1 and cfg.losses.patch.weight == 0.1
    assert cfg.uda.fd_lambda == 0.005 and cfg.uda.ema_alpha == 0.999
    assert (cfg.eval.mode, cfg.eval.crop_size, cfg.eval.stride) == (
        "slide",
        (1024, 1024),
        (512, 512),
    )
    assert pseudo_crop_rows(cfg, resolve_benchmark(cfg)) == (30, 240)  # HRDA's margins
    assert preset in preset_names()
    # The DAFormer-scale PiPa preset is untouched.
    assert get_preset(preset.replace("hrda", "pipa")).model.arch == "daformer_mit_b5"


def test_hrda_config_validation_names_the_fix():
    cfg = apply_overrides(get_preset("synthetic_hrda"), ["model.hrda_detail_ratio=1.5"])
    with pytest.raises(ConfigError, match="hrda_detail_ratio"):
        validate_config(cfg)
    cfg = apply_overrides(get_preset("synthetic_pipa"), ["model.arch=hrda_resnet9"])
    with pytest.raises(ConfigError, match="hrda_<name>"):
        validate_config(cfg)


def test_segmentor_hooks_single_scale_defaults_and_hrda_overrides():
    torch.manual_seed(0)
    seg = build_segmentor("daformer_mit_b0", decoder_channels=8, proj_heads=())
    img, label = torch.rand(1, 3, 64, 64), torch.randint(0, 19, (1, 64, 64))
    out = seg(img)
    assert torch.equal(seg.seg_loss(out, label), segmentation_ce(out["logits"], label))
    assert seg.label_for_feat(label, out) is label
    assert not seg.multi_resolution
    # the step asks every model for its single-scale forward: a single-scale model's only one
    seg.eval()  # (no drop-path randomness between the two calls)
    with torch.no_grad():
        assert torch.equal(seg(img, single_scale=True)["logits"], seg(img)["logits"])
    hrda = build_segmentor(
        "hrda_daformer_mit_b0", decoder_channels=8, proj_heads=(), hrda={"detail_size": (32, 32)}
    )
    assert hrda.multi_resolution
    hrda.train()
    out = hrda(img, detail_box=(0, 32, 32, 64))
    fused_only = segmentation_ce(out["logits"], label)
    assert not torch.equal(hrda.seg_loss(out, label), fused_only)  # the detail term is in
    assert torch.equal(hrda.label_for_feat(label, out), label[:, 0:32, 32:64])


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    ensure_synthetic(root / "synthetic", size="tiny")
    return root


def test_synthetic_hrda_trains_through_the_engine(synthetic_root, tmp_path):
    """PiPa on HRDA on the synthetic benchmark upscaled 2x (64x128 images, 64x64 context crops)."""
    cfg = apply_overrides(
        get_preset("synthetic_hrda"),
        [
            *TINY,
            "data.synthetic_size=tiny",
            f"data.data_root={synthetic_root}",
            "data.source_scale=64,128",
            "data.target_scale=64,128",
            "data.crop_size=64,64",
            "losses.patch.crop_size=32",
            "losses.pixel.use_target=true",
            "optim.max_iters=3",
            f"runtime.run_dir={tmp_path / 'run'}",
        ],
    )
    trainer = Trainer(cfg)
    seg = trainer.student
    assert isinstance(seg, HRDASegmentor) and seg.detail_size == (32, 32)
    before = {k: v.clone() for k, v in seg.state_dict().items()}
    result = trainer.fit()
    assert result["finished"] and result["skipped_steps"] == 0
    assert 0.0 <= result["mIoU"] <= 100.0
    after = seg.state_dict()
    for prefix in (
        "encoder.",
        "decoder.",
        "scale_attention.",
        "proj_heads.pixel",
        "proj_heads.patch",
    ):
        assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith(prefix)), (
            prefix
        )
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert [r["iter"] for r in train_rows] == [1, 2, 3]
    for term in ("ce_src", "ce_mix", "pixel", "patch"):
        assert all(torch.isfinite(torch.tensor(r[term])) for r in train_rows), term
    # The analysis notebooks reload the run as the same multi-resolution model.
    from pipa_core.experiments.runs import load_segmentor

    loaded = load_segmentor(tmp_path / "run")
    assert isinstance(loaded, HRDASegmentor) and loaded.detail_size == seg.detail_size
    for k, v in seg.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_memory_benchmark_measures_an_engine_step(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_hrda_memory.py"
    spec = importlib.util.spec_from_file_location("bench_hrda_memory", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(
        ["--device", "cpu", "--arch", "hrda_daformer_mit_b0", "--context", "64", "--steps", "1",
         "--warmup", "0", "--cases", "hrda_only", "--threads", "1", "--out", str(tmp_path)]
    )  # fmt: skip
    data = json.loads((tmp_path / "hrda_memory_cpu.json").read_text())
    (row,) = data["rows"]
    assert row["case"] == "hrda_only" and row["losses"] == [] and row["fd"]
    assert row["detail"] == [32, 32] and row["context"] == 64 and row["step_s_median"] > 0
    assert row["peak_rss_gib"] is None or row["peak_rss_gib"] > 0
    md = (tmp_path / "hrda_memory_cpu.md").read_text()
    assert "| hrda_only | hrda_daformer_mit_b0 | 64/32/" in md
