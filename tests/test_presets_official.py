"""The real-benchmark presets against DAFormer's, HRDA's and PiPa's official configs.

Each test resolves presets (``get_preset`` -> ``resolve``) and checks the value the
official config sets (the config file is named beside each check; docs/training.md,
"Real-benchmark presets against the official configs", has the table).
"""

from __future__ import annotations

import data_fixtures as fx
import pytest

from pipa_core.config import (
    ConfigError,
    apply_overrides,
    get_preset,
    make_config,
    preset_names,
    resolve,
)
from pipa_core.config.presets import DEFAULT_PRETRAINED, SYNTHETIC_BENCHMARKS, VFM_BACKBONES
from pipa_core.data.benchmarks import BENCHMARKS
from pipa_core.data.transforms import PhotoMetricDistortion
from pipa_core.train import main as cli_main

REAL = [n for n in preset_names() if not n.startswith(SYNTHETIC_BENCHMARKS)]
MIT_REAL = [n for n in REAL if n.rpartition("_")[2] not in VFM_BACKBONES]
# PiPa's methods on DAFormer with a Cityscapes target (PiPa_DAFormer/configs)
PIPA_DAFORMER = [
    f"{b}_{m}"
    for b, s in BENCHMARKS.items()
    if s.target.name in ("cityscapes", "cityscapes_seq")
    for m in ("pipa", "pipa_pp", "pipa_mic")
    if f"{b}_{m}" in preset_names()
]
HRDA = [n for n in REAL if get_preset(n).model.arch.startswith("hrda_")]
# DAFormer-setting presets (non-HRDA, non-PiPa-on-DAFormer)
DAFORMER_SETTING = [n for n in REAL if n not in HRDA and n not in PIPA_DAFORMER]


@pytest.fixture
def imagenet_weights(tmp_path, monkeypatch):
    """Work in a directory that holds ``pretrained/mit_b5.pth`` (a placeholder: the start-file
    check tests that it exists; nothing here loads it)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / DEFAULT_PRETRAINED).parent.mkdir(parents=True)
    (tmp_path / DEFAULT_PRETRAINED).write_bytes(b"")
    return tmp_path / DEFAULT_PRETRAINED


@pytest.fixture
def empty_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ----------------------------------------------------------------- 1. photometric distortion
def test_uda_presets_have_no_photometric_distortion_baselines_keep_it():
    # DAFormer configs/_base_/datasets/uda_*_512x512.py, HRDA / PiPa uda_*HR_*_1024x1024.py and
    # PiPa_DAFormer/configs/_base_/datasets/gta-cs.py: "# dict(type='PhotoMetricDistortion')";
    # source-only (gta_to_cityscapes_512x512.py) and oracle (cityscapes_half_512x512.py) keep it.
    seen = set()
    for name in REAL:
        cfg = get_preset(name)
        uda = cfg.uda.mode == "self_training"
        assert cfg.data.photometric is (not uda), name
        assert cfg.data.target_photometric is False, name
        seen.add(cfg.uda.mode)
    assert seen == {"self_training", "source_only", "oracle"}


@pytest.fixture(scope="module")
def gta_cs_root(tmp_path_factory):
    from pipa_core.data.prepare import prepare

    root = tmp_path_factory.mktemp("data")
    fx.make_gta(root / "gta", n=2)
    fx.make_cityscapes(root / "cityscapes", per_city=1)
    for name in ("gta", "cityscapes"):
        prepare(name, root / name)
    return root


@pytest.mark.parametrize(
    "preset, distorted", [("gta2cs_daformer", False), ("gta2cs_source_only", True),
                          ("gta2cs_oracle", True), ("gta2cs_pipa", False)],
)  # fmt: skip
def test_the_built_training_pipelines_follow_the_photometric_setting(
    gta_cs_root, preset, distorted
):
    from pipa_core.uda.data_stream import build_datasets

    cfg = apply_overrides(get_preset(preset), [f"data.data_root={gta_cs_root}", "data.rcs=false"])
    train, _ = build_datasets(resolve(cfg, validate=False))
    for ds in (*train.sources, train.target):
        steps = [type(t) for t in ds.transform.transforms]
        # the labelled images (the source; the oracle's labelled target) only, never the target
        expected = distorted and ds is not train.target
        assert (PhotoMetricDistortion in steps) is expected, (preset, steps)


# ----------------------------------------------------------------- 2. evaluation
@pytest.mark.parametrize("preset", ["gta2cs_daformer", "syn2cs_dacs", "gta2cs_source_only",
                                    "gta2cs_oracle", "gtasyn2cs_mic", "cs2acdc_pipa"])  # fmt: skip
def test_daformer_presets_evaluate_the_whole_image(imagenet_weights, preset):
    # configs/_base_/models/daformer_conv1_mitb5.py: test_cfg=dict(mode='whole');
    # uda_gta_to_cityscapes_512x512.py: test img_scale=(1024, 512)
    run = resolve(get_preset(preset))
    assert run.eval.mode == "whole" and run.eval.flip is False
    assert run.crop_size == (512, 512)
    target = (512, 1024) if BENCHMARKS[run.cfg.data.benchmark].target.name == "cityscapes" else (
        540, 960)  # fmt: skip
    assert run.spec.target_scale == target


def test_every_daformer_setting_preset_evaluates_whole_and_hrda_slides():
    for name in DAFORMER_SETTING:
        assert get_preset(name).eval.mode == "whole", name
    assert "gta2cs_hrda" in HRDA and "syn2cs_hrda" in HRDA
    for name in HRDA:
        # configs/pipa/gtaHR2csHR_hrda.py: test_cfg mode='slide', crop 1024, stride 512
        e = get_preset(name).eval
        assert (e.mode, tuple(e.crop_size), tuple(e.stride)) == ("slide", (1024, 1024), (512, 512))


# ----------------------------------------------------------------- 3. PiPa on DAFormer
def test_pipa_daformer_presets_are_the_listed_ones():
    assert "gta2cs_pipa" in PIPA_DAFORMER and "syn2cs_pipa" in PIPA_DAFORMER
    assert "viper2csseq_pipa_pp" in PIPA_DAFORMER and "gta2cs_pipa_mic" in PIPA_DAFORMER
    assert "cs2acdc_pipa" not in PIPA_DAFORMER  # ACDC (960x540) is lower than a 640 crop


@pytest.mark.parametrize("preset", PIPA_DAFORMER)
def test_pipa_daformer_presets_follow_the_released_config(imagenet_weights, preset):
    # PiPa_DAFormer/configs/_base_/datasets/gta-cs.py and syn-cs.py; configs/pipa/
    # gta2cs_uda_warm_fdthings_rcs_croppl_a999_daformer_mitb5_s0.py; configs/cac/config.json
    run = resolve(get_preset(preset))
    spec, cfg = run.spec, run.cfg
    assert run.crop_size == (640, 640)
    assert spec.target_scale == (640, 1280)  # Cityscapes Resize img_scale=(1280, 640)
    # the sources at DAFormer's scales: GTA Resize (1280, 720), SYNTHIA (1280, 760)
    assert spec.source_scales == BENCHMARKS[cfg.data.benchmark].source_scales
    assert spec.rcs_temperature == 0.1  # class_temp=0.1 (the run name says rcs0.01)
    assert spec.rcs_min_pixels == 3000 and spec.rcs_min_crop_ratio == 0.5
    assert run.pseudo_rows == (15, 120)  # pseudo_weight_ignore_top / _bottom, as given
    assert run.patch_crop == 720  # cac config.json crop_size
    assert cfg.optim.max_iters == 60000 and cfg.optim.lr == 6e-5
    assert (run.eval.mode, cfg.eval.interval) == ("whole", 4000)  # test img_scale=(1280, 640)
    assert cfg.uda.ema_alpha == 0.999 and cfg.uda.fd_lambda == 0.005
    assert cfg.data.batch_size == 2 and cfg.model.arch == "daformer_mit_b5"


def test_pipa_on_the_other_benchmarks_and_dinov2_keeps_daformers_data(imagenet_weights):
    for name in ("cs2acdc_pipa", "cs2darkzurich_pipa_mic", "gta2cs_pipa_dinov2b"):
        run = resolve(get_preset(name))
        assert run.crop_size == (512, 512) and run.patch_crop == 576, name
        assert run.spec.rcs_temperature == 0.01 and run.eval.mode == "whole", name
        assert run.cfg.optim.max_iters == 60000, name
    assert resolve(get_preset("gta2cs_pipa_dinov2b")).spec.target_scale == (512, 1024)
    # DAFormer's own methods stay at DAFormer's setting on Cityscapes targets
    run = resolve(get_preset("gta2cs_daformer"))
    assert run.crop_size == (512, 512) and run.spec.rcs_temperature == 0.01
    assert run.pseudo_rows == (15, 120) and run.cfg.optim.max_iters == 40000


def test_make_config_can_keep_pipa_on_daformers_data():
    cfg = make_config("gta2cs", "pipa", pipa_data=False)
    assert cfg.data.crop_size is None and cfg.losses.patch.crop_size == 576
    assert cfg.optim.max_iters == 60000 and cfg.data.photometric is False


# ----------------------------------------------------------------- 4. ImageNet weights
def test_real_presets_expect_the_imagenet_weights():
    # configs/_base_/models/daformer_conv1_mitb5.py: pretrained='pretrained/mit_b5.pth'
    for name in REAL:
        expected = "dinov2" if name.rpartition("_")[2] in VFM_BACKBONES else DEFAULT_PRETRAINED
        assert get_preset(name).model.pretrained == expected, name
    assert DEFAULT_PRETRAINED == "pretrained/mit_b5.pth"


@pytest.mark.parametrize("preset", ["gta2cs_pipa", "syn2cs_daformer", "gta2cs_hrda"])
def test_a_missing_weights_file_fails_at_resolve_naming_file_and_download(empty_dir, preset):
    cfg = get_preset(preset)
    with pytest.raises(ConfigError) as exc:
        resolve(cfg)
    msg = str(exc.value)
    assert "'pretrained/mit_b5.pth'" in msg and str(empty_dir) in msg
    assert "https://github.com/NVlabs/SegFormer" in msg and "nvidia/mit-b5" in msg
    assert "model.pretrained=imagenet" in msg and "model.pretrained=null" in msg
    # a weights file there, the hub download, or the explicit opt-in to random weights
    (empty_dir / "pretrained").mkdir()
    (empty_dir / "pretrained" / "mit_b5.pth").write_bytes(b"")
    assert resolve(cfg).cfg.model.pretrained == DEFAULT_PRETRAINED
    (empty_dir / "pretrained" / "mit_b5.pth").unlink()
    assert resolve(apply_overrides(cfg, ["model.pretrained=imagenet"])).cfg.model.pretrained
    assert resolve(apply_overrides(cfg, ["model.pretrained=null"])).cfg.model.pretrained is None


def test_the_message_names_the_encoder_of_an_overridden_architecture(empty_dir):
    cfg = apply_overrides(get_preset("gta2cs_dacs"), ["model.arch=daformer_mit_b0"])
    with pytest.raises(ConfigError, match=r"weights mit_b0\.pth .* nvidia/mit-b0"):
        resolve(cfg)


def test_the_cli_refuses_to_train_without_the_weights(empty_dir, capsys):
    run_dir = empty_dir / "run"
    assert cli_main(["--preset", "gta2cs_dacs", "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "pretrained/mit_b5.pth" in err and "model.pretrained=null" in err
    assert "Traceback" not in err and not run_dir.exists()  # nothing started


def test_synthetic_presets_still_start_from_random_weights_and_the_warm_start(empty_dir):
    for name in [n for n in preset_names() if n.startswith(SYNTHETIC_BENCHMARKS)]:
        cfg = get_preset(name)
        assert cfg.model.pretrained is None and cfg.model.init_from == "synthetic_warm_start"
        assert cfg.data.photometric is True and cfg.eval.mode == "whole", name
        resolve(cfg)  # no weights file needed
