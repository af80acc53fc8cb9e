"""Training configuration: presets, overrides, validation messages, save / load, CLI parsing."""

from __future__ import annotations

import json

import pytest

from pipa_core.config import (
    METHODS,
    ConfigError,
    TrainConfig,
    apply_overrides,
    get_preset,
    make_config,
    patch_crop_size,
    preset_names,
    pseudo_crop_rows,
    resolve_benchmark,
    validate_config,
)
from pipa_core.config.presets import DEFAULT_PRETRAINED, SYNTHETIC_BENCHMARKS
from pipa_core.data.benchmarks import BENCHMARKS
from pipa_core.train import main as cli_main


@pytest.fixture
def imagenet_weights(tmp_path, monkeypatch):
    """Work in a directory that holds the real presets' ImageNet weights file (a placeholder:
    validation checks that the file exists; nothing here loads it)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / DEFAULT_PRETRAINED).parent.mkdir(parents=True)
    (tmp_path / DEFAULT_PRETRAINED).write_bytes(b"")


def test_every_benchmark_has_presets_that_validate(imagenet_weights):
    names = preset_names()
    for b, spec in BENCHMARKS.items():
        for m in METHODS:
            released = m == "pipa_released" and b in SYNTHETIC_BENCHMARKS  # real only
            assert (f"{b}_{m}" in names) == ((m != "pipa_pp" or spec.video) and not released)
    for name in names:
        cfg = validate_config(get_preset(name))
        assert cfg.name == name
    pipa = get_preset("gta2cs_pipa")
    assert pipa.optim.max_iters == 60000 and pipa.losses.enabled == ("pixel", "patch")
    assert pipa.losses.pixel.weight == 0.1 and pipa.losses.patch.weight == 0.1
    assert pipa.uda.fd_lambda == 0.005 and pipa.uda.pseudo_threshold == 0.968
    assert (
        pipa.optim.lr == 6e-5 and pipa.optim.head_lr_mult == 10 and pipa.optim.warmup_iters == 1500
    )
    assert get_preset("gta2cs_daformer").optim.max_iters == 40000
    assert get_preset("viper2csseq_pipa_pp").losses.enabled == ("pixel", "patch", "temporal")
    assert get_preset("syn2cs_spcl").losses.enabled == ("prototype",)
    assert get_preset("synthetic_oracle").uda.mode == "oracle"
    assert get_preset("synthetic_source_only").uda.mode == "source_only"


def test_benchmark_values_flow_into_the_run():
    cfg = get_preset("gta2cs_daformer")
    spec = resolve_benchmark(cfg)
    assert spec.crop_size == (512, 512) and spec.rcs
    assert pseudo_crop_rows(cfg, spec) == (15, 120)  # DAFormer's rows for Cityscapes targets
    assert patch_crop_size(cfg, spec) == 576
    cfg = apply_overrides(
        cfg,
        [
            "data.crop_size=256,256",
            "data.rcs=false",
            "uda.pseudo_crop_top=3",
            "losses.patch.crop_size=null",
        ],
    )
    spec = resolve_benchmark(cfg)
    assert spec.crop_size == (256, 256) and not spec.rcs
    assert pseudo_crop_rows(cfg, spec) == (3, 60)  # the benchmark's bottom rows scaled to 256 rows
    assert patch_crop_size(cfg, spec) == 288  # 9/8 of the crop, a multiple of 32


def test_overrides_are_typed():
    cfg = apply_overrides(
        make_config("synthetic", "pipa"),
        [
            "optim.lr=1e-4",
            "optim.max_iters=7",
            "data.crop_size=64,96",
            "losses.enabled=pixel,prototype",
            "uda.blur=false",
            "optim.grad_clip=null",
            "losses.patch.iou_range=[0.2, 0.9]",
        ],
    )
    assert (
        cfg.optim.lr == 1e-4 and isinstance(cfg.optim.max_iters, int) and cfg.optim.max_iters == 7
    )
    assert cfg.data.crop_size == (64, 96)
    assert cfg.losses.enabled == ("pixel", "prototype")
    assert cfg.uda.blur is False and cfg.optim.grad_clip is None
    assert cfg.losses.patch.iou_range == (0.2, 0.9)
    with pytest.raises(ConfigError, match="optim has no 'lrr'; valid keys: lr, head_lr_mult"):
        apply_overrides(cfg, ["optim.lrr=1"])
    with pytest.raises(ConfigError, match="expected an integer"):
        apply_overrides(cfg, ["optim.max_iters=ten"])
    with pytest.raises(ConfigError, match="section.key=value"):
        apply_overrides(cfg, ["optim.lr"])
    with pytest.raises(ConfigError, match="is a section"):
        apply_overrides(cfg, ["optim=3"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.benchmark=gta2city", "data.benchmark='gta2city' is unknown; valid: gta2cs, syn2cs"),
        ("model.arch=resnet", "model.arch='resnet' is unknown; valid: daformer_mit_b0"),
        (
            "losses.enabled=pixel,pixle",
            "unknown loss 'pixle'; valid: pixel, patch, temporal, prototype",
        ),
        ("optim.lr=-0.1", "optim.lr=-0.1 must be > 0"),
        ("data.crop_size=256,256", "larger than the source resize scale (H, W)=(128, 256)"),
        ("uda.ema_alpha=1.5", "uda.ema_alpha=1.5 must lie in [0, 1]"),
        ("uda.pseudo_threshold=2", "uda.pseudo_threshold=2.0 must lie in [0, 1]"),
        ("losses.pixel.weight=-1", "losses.pixel.weight=-1.0 must be >= 0"),
        ("losses.enabled=temporal", "has no reference frames; use a video benchmark (viper2csseq"),
        ("uda.mode=mean_teacher", "uda.mode='mean_teacher' is unknown; valid: self_training"),
        ("runtime.amp=fp8", "runtime.amp='fp8' is unknown"),
        ("eval.protocols=cs20", "unknown protocol 'cs20'"),
        ("uda.pseudo_crop_top=128", "removes every row of the 128-row crop"),
        ("data.synthetic_size=huge", "data.synthetic_size='huge' is unknown; valid: tiny"),
    ],
)
def test_validation_names_the_problem(override, message):
    cfg = apply_overrides(make_config("synthetic", "pipa"), [override])
    with pytest.raises(ConfigError) as exc:
        validate_config(cfg)
    assert message in str(exc.value)


def test_validation_lists_every_problem_and_baselines_have_no_ssl_losses():
    cfg = apply_overrides(
        make_config("synthetic", "source_only"), ["optim.lr=0", "losses.enabled=pixel"]
    )
    with pytest.raises(ConfigError) as exc:
        validate_config(cfg)
    text = str(exc.value)
    assert "optim.lr=0.0 must be > 0" in text and "needs uda.mode=self_training" in text
    with pytest.raises(ConfigError, match="unknown method 'pipa2'; valid methods: source_only"):
        make_config("synthetic", "pipa2")
    with pytest.raises(
        ConfigError, match="unknown preset 'gta_pipa'; valid presets: gta2cs_source_only"
    ):
        get_preset("gta_pipa")


def test_save_load_roundtrip(tmp_path):
    cfg = apply_overrides(get_preset("syn2cs_pipa"), ["data.crop_size=256,256", "runtime.seed=3"])
    cfg.save(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["data"]["crop_size"] == [256, 256]
    for path in (tmp_path, tmp_path / "config.json", tmp_path / "config.yaml"):
        back = TrainConfig.load(path)
        assert back == cfg
    with pytest.raises(ConfigError, match="unknown key"):
        TrainConfig.from_dict({"optim": {"learning_rate": 1}})


def test_cli_reports_config_errors_and_prints_config(capsys):
    assert cli_main(["--preset", "synthetic_pipa", "--set", "optim.lr=-1"]) == 2
    assert "optim.lr=-1.0 must be > 0" in capsys.readouterr().err
    assert (
        cli_main(["--preset", "synthetic_dacs", "--set", "optim.max_iters=5", "--print-config"])
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["optim"]["max_iters"] == 5 and out["method"] == "dacs"
    assert cli_main(["--list-presets"]) == 0
    assert "gta2cs_pipa" in capsys.readouterr().out.split()
    assert cli_main([]) == 2
    assert "give --preset" in capsys.readouterr().err


def test_string_overrides_keep_yaml_keywords_as_text():
    """``--set runtime.amp=off`` must stay the string "off" (YAML would read it as False)."""
    from pipa_core.config import apply_overrides, get_preset, validate_config

    cfg = apply_overrides(get_preset("synthetic_pipa"), ["runtime.amp=off", "runtime.run_dir=null"])
    assert cfg.runtime.amp == "off" and cfg.runtime.run_dir is None
    validate_config(cfg)  # "off" is a valid amp mode
    assert apply_overrides(cfg, ["runtime.amp=bf16"]).runtime.amp == "bf16"


def test_each_section_checks_its_own_fields():
    from pipa_core.config import DataConfig, EvalConfig, OptimConfig, RuntimeConfig, UDAConfig

    assert OptimConfig().check() == [] and UDAConfig().check() == []
    assert [e.split("=")[0] for e in OptimConfig(lr=-1, max_iters=0).check()] == [
        "optim.lr",
        "optim.max_iters",
    ]
    assert "uda.teacher_bn" in UDAConfig(teacher_bn="frozen").check()[0]
    assert "data.batch_size" in DataConfig(batch_size=0).check()[0]
    assert "eval.mode" in EvalConfig(mode="tiles").check()[0]
    assert "runtime.amp" in RuntimeConfig(amp="fp8").check()[0]
    # the whole config reports every section's problems at once
    cfg = apply_overrides(get_preset("synthetic_pipa"), ["optim.lr=-1", "eval.batch_size=0"])
    with pytest.raises(ConfigError, match=r"(?s)optim\.lr=-1\.0.*eval\.batch_size=0"):
        validate_config(cfg)


def test_a_fractional_integer_is_an_error_not_truncated():
    with pytest.raises(ConfigError, match="optim.max_iters: expected an integer, got 1.5"):
        apply_overrides(get_preset("synthetic_pipa"), ["optim.max_iters=1.5"])
    assert (
        apply_overrides(get_preset("synthetic_pipa"), ["optim.max_iters=2e3"]).optim.max_iters
        == 2000
    )


def test_resolve_gives_one_frozen_description_of_the_run(imagenet_weights):
    import dataclasses

    from pipa_core.config import Run, resolve, resolve_eval

    cfg = get_preset("gta2cs_hrda")
    run = resolve(cfg)
    assert isinstance(run, Run) and run.spec == resolve_benchmark(cfg)
    assert run.pseudo_rows == pseudo_crop_rows(cfg, run.spec) == (30, 240)
    assert run.patch_crop == patch_crop_size(cfg, run.spec) == 720
    assert run.eval == resolve_eval(cfg, run.spec) and run.eval.stride == (512, 512)
    assert run.heads == ("pixel", "patch") and run.crop_size == (1024, 1024)
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.patch_crop = 1  # type: ignore[misc]
    cfg.optim.max_iters = 1  # the run keeps its own copy of the config
    assert run.cfg.optim.max_iters == 60000
    with pytest.raises(ConfigError, match="optim.lr"):
        resolve(apply_overrides(cfg, ["optim.lr=-1"]))
