"""Few-iteration runs of every preset (fixture trees / tiny synthetic), non-finite handling, evaluate()."""

from __future__ import annotations

import json
import math

import data_fixtures as fx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipa_core.config import apply_overrides, get_preset, resolve, resolve_benchmark
from pipa_core.data.synthetic import ensure_synthetic
from pipa_core.eval.evaluate import evaluate
from pipa_core.uda.checkpoint import load_checkpoint
from pipa_core.uda.step import StepOutput
from pipa_core.uda.trainer import NonFiniteLossError, Trainer, train

# A tiny MiT-B0 / DAFormer model from random weights (the explicit opt-in: the real presets
# expect ImageNet weights) and one thread (robust on a loaded 2-core CI machine).
TINY_MODEL = [
    "model.arch=daformer_mit_b0",
    "model.decoder_channels=16",
    "model.init_from=null",
    "model.pretrained=null",
    "model.proj_dim=8",
    "runtime.num_threads=1",
    "runtime.progress=false",
    "runtime.tensorboard=false",
    "runtime.log_interval=1",
    "runtime.image_interval=1",
    "eval.max_samples=2",
]


@pytest.fixture(scope="module")
def real_root(tmp_path_factory):
    """Fixture trees laid out like the real downloads (tests/data_fixtures.py), prepared."""
    return fx.make_all_prepared(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    ensure_synthetic(root / "synthetic", size="tiny")
    return root


def synthetic_config(method: str, root, run_dir, *extra: str):
    """A synthetic preset shrunk to the tiny benchmark (32x32 crops)."""
    return apply_overrides(
        get_preset(f"synthetic_{method}"),
        [
            *TINY_MODEL,
            "data.synthetic_size=tiny",
            f"data.data_root={root}",
            "data.batch_size=2",
            "losses.patch.crop_size=32",
            "optim.max_iters=2",
            "optim.warmup_iters=1",
            f"runtime.run_dir={run_dir}",
            *extra,
        ],
    )


REAL_PRESETS = [
    "gta2cs_pipa",
    "syn2cs_pipa",
    "gtasyn2cs_daformer",
    "cs2acdc_spcl",
    "cs2darkzurich_dacs",
    "viper2csseq_pipa_pp",
    "synseq2csseq_pipa_pp",
    "gta2cs_hrda",
    "gta2cs_mic",
    "syn2cs_pipa_mic",
]


@pytest.mark.parametrize("preset", REAL_PRESETS)
def test_real_preset_trains_on_fixture_trees(real_root, tmp_path, preset):
    # HRDA's low-resolution view halves the crop: MiT needs at least 29x29 pixels.
    side = 64 if preset.endswith("_hrda") else 32
    cfg = apply_overrides(
        get_preset(preset),
        [
            *TINY_MODEL,
            f"data.data_root={real_root}",
            f"data.source_scale={side},{side * 3 // 2}",
            f"data.target_scale={side},{side * 3 // 2}",
            f"data.crop_size={side},{side}",
            "eval.crop_size=null",
            "eval.stride=null",
            "data.batch_size=1",
            "data.num_workers=0",
            "data.rcs_min_pixels=10",  # fixture labels are tiny
            # PiPa's margins are rows of its 640 crops: the benchmark's, scaled to this crop
            "uda.pseudo_crop_top=null",
            "uda.pseudo_crop_bottom=null",
            f"losses.patch.crop_size={side}",
            "optim.max_iters=2",
            f"runtime.run_dir={tmp_path / 'run'}",
        ],
    )
    result = train(cfg)
    assert result["finished"] and result["iterations"] == 2 and result["skipped_steps"] == 0
    assert 0.0 <= result["mIoU"] <= 100.0
    spec = resolve_benchmark(cfg)
    assert tuple(result["eval"]["protocols"]) == spec.protocols  # e.g. syn16 + syn13 for SYNTHIA
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert [r["iter"] for r in train_rows] == [1, 2]
    for term in ["ce_src"] + [t for t in cfg.losses.enabled] + (["mic"] if cfg.uda.mic else []):
        assert all(torch.isfinite(torch.tensor(r[term])) for r in train_rows), term
    if cfg.uda.fd_lambda > 0:
        assert "fd" in train_rows[0]
    assert (tmp_path / "run" / "checkpoints" / "latest.pt").is_file()
    assert (tmp_path / "run" / "final_weights.pt").is_file()


@pytest.mark.parametrize("method", ["source_only", "oracle", "dacs", "pipa", "spcl"])
def test_synthetic_methods_train(synthetic_root, tmp_path, method):
    extra = []
    if method == "pipa":  # also the optional parts: target pixels, memory banks
        extra = [
            "losses.pixel.use_target=true",
            "losses.pixel.memory_size=20",
            "losses.patch.memory_size=64",
        ]
    cfg = synthetic_config(
        method, synthetic_root, tmp_path / "run", "runtime.tensorboard=true", *extra
    )
    trainer = Trainer(cfg)
    before = {k: v.clone() for k, v in trainer.student.state_dict().items()}
    result = trainer.fit()
    assert result["finished"] and result["skipped_steps"] == 0
    after = trainer.student.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # it learned something
    run = tmp_path / "run"
    for f in (
        "config.json",
        "config.yaml",
        "metrics.jsonl",
        "result.json",
        "images/iter_0000002.png",
    ):
        assert (run / f).is_file(), f
    assert any((run / "tb").iterdir())
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["kind"] == "eval" and "IoU_cs19/road" in last
    ck = load_checkpoint(run)
    assert ck["iteration"] == 2 and ck["config"]["method"] == method
    assert (ck["teacher"] is not None) == (method not in ("source_only", "oracle"))
    if method == "pipa":
        assert ck["losses"]["pixel"]["memory_bank.count"].sum() > 0  # banks are checkpointed
    if method == "spcl":
        assert ck["losses"]["prototype"]["initialized"].any()


def test_nonfinite_loss_is_skipped_then_stops_the_run(synthetic_root, tmp_path):
    cfg = synthetic_config(
        "dacs", synthetic_root, tmp_path / "run",
        "optim.max_iters=8", "runtime.max_nonfinite=2", "runtime.checkpoint_interval=1",
    )  # fmt: skip
    trainer = Trainer(cfg)
    real_step = trainer.step_fn
    snapshots = {}

    def step(batch, nets, cfg, ctx):
        it = trainer.iteration
        out = real_step(batch, nets, cfg, ctx)
        if it == 1 or it >= 4:  # one isolated failure, then a persistent one
            out.loss = out.loss * float("nan")
        # parameters only: the forward itself updates BatchNorm running statistics
        snapshots[it] = {k: v.detach().clone() for k, v in trainer.student.named_parameters()}
        return out

    trainer.step_fn = step
    with pytest.raises(NonFiniteLossError, match="2 consecutive non-finite steps at iteration 5"):
        trainer.fit()
    # The isolated NaN at iteration 1 changed nothing; iteration 2 trained again.
    assert all(torch.equal(snapshots[1][k], snapshots[2][k]) for k in snapshots[1])
    assert any(not torch.equal(snapshots[2][k], snapshots[3][k]) for k in snapshots[2])
    ck = load_checkpoint(tmp_path / "run")
    # No checkpoint is written during a streak: the newest is from before the fatal one.
    assert ck["iteration"] == 4 and ck["skipped_steps"] == 1
    assert all(torch.isfinite(v).all() for v in ck["student"].values() if v.is_floating_point())
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[1]["skipped_steps"] == 1


@pytest.mark.parametrize(
    ("method", "extra"),
    [
        ("dacs", ()),
        ("pipa", ("losses.pixel.memory_size=8", "losses.patch.memory_size=64")),
        ("spcl", ()),
    ],
)
@pytest.mark.parametrize("domain", ["source", "target"])
def test_a_nan_pixel_leaves_no_trace(synthetic_root, tmp_path, method, extra, domain):
    """One NaN pixel in one input image: the run ends bitwise equal to a run that skipped
    that batch (BatchNorm statistics, teacher, memory banks, prototypes, RNG untouched)."""

    def run(name: str, poison: bool):
        cfg = synthetic_config(
            method, synthetic_root, tmp_path / name, "optim.max_iters=5",
            "runtime.max_nonfinite=3", "runtime.checkpoint_interval=1", *extra,
        )  # fmt: skip
        trainer = Trainer(cfg)
        real_step = trainer.step_fn

        def step(batch, nets, cfg, ctx):
            if trainer.iteration != 2:
                return real_step(batch, nets, cfg, ctx)
            if not poison:  # the reference: this batch is skipped before anything runs
                nan = torch.tensor(float("nan"), requires_grad=True)
                return StepOutput(nan * 1.0, {"loss": float("nan")}, {})
            batch[domain]["img"][1, 0, 5, 7] = float("nan")
            return real_step(batch, nets, cfg, ctx)

        trainer.step_fn = step
        result = trainer.fit()
        return trainer, result

    poisoned, res_p = run("poisoned", True)
    skipped, res_s = run("skipped", False)
    assert res_p["skipped_steps"] == res_s["skipped_steps"] == 1 and res_p["finished"]
    for a, b in [
        (poisoned.student.state_dict(), skipped.student.state_dict()),
        (poisoned.nets.teacher.state_dict(), skipped.nets.teacher.state_dict()),
        *[(poisoned.nets.losses[k].state_dict(), skipped.nets.losses[k].state_dict())
          for k in poisoned.nets.losses],
    ]:  # fmt: skip
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), k
    assert res_p["mIoU"] == res_s["mIoU"]
    log = (tmp_path / "poisoned" / "metrics.jsonl").read_text()
    assert "NaN" not in log and "Infinity" not in log  # a rejected step adds nothing to the logs


class _ColourModel(nn.Module):
    """Predicts the class written in channel 0 (class / 18): a perfect segmenter for the test."""

    def __init__(self):
        super().__init__()
        self.p = nn.Parameter(torch.zeros(()))

    def predict(self, img, mode="whole", crop_size=None, stride=None, flip=False):
        cls = (img[:, 0] * 18).round().long()
        return F.one_hot(cls, 19).permute(0, 3, 1, 2).float() * 10 + self.p


def test_evaluate_upsamples_to_label_size_and_counts_every_pixel():
    torch.manual_seed(0)
    cls = torch.randint(0, 5, (3, 4, 6))
    img = torch.zeros(3, 3, 4, 6)
    img[:, 0] = cls / 18
    label = cls.repeat_interleave(2, 1).repeat_interleave(2, 2)  # labels at 2x the image size
    label[0, :2] = 255
    loader = [{"img": img[:2], "label": label[:2]}, {"img": img[2:], "label": label[2:]}]
    res = evaluate(_ColourModel(), loader, ("cs19", "syn16"))
    assert res["mIoU"] == pytest.approx(100.0) and res["num_images"] == 3
    assert res["protocols"]["syn16"]["mIoU"] == pytest.approx(100.0)
    cm = torch.tensor(res["confusion_matrix"])
    assert int(cm.sum()) == int((label != 255).sum())
    # a wrong model: everything predicted as class 0
    wrong = _ColourModel()
    wrong.predict = lambda img, **kw: torch.zeros(img.shape[0], 19, *img.shape[-2:]).index_fill_(
        1, torch.tensor([0]), 1.0
    )
    res = evaluate(wrong, loader, ("cs19",), device="cpu", max_samples=2)
    assert res["num_images"] == 2
    road = res["protocols"]["cs19"]["per_class_IoU"]["road"]
    n0 = int((label[:2] == 0).sum())
    assert road == pytest.approx(100.0 * n0 / int((label[:2] != 255).sum()))
    with pytest.raises(ValueError, match="slide inference needs crop_size"):
        evaluate(_ColourModel(), loader, ("cs19",), mode="slide")


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_paths_run_on_cpu(synthetic_root, tmp_path, amp):
    cfg = synthetic_config("pipa", synthetic_root, tmp_path / "run", f"runtime.amp={amp}")
    trainer = Trainer(cfg)
    assert trainer.scaler.is_enabled() == (amp == "fp16")  # fp16 needs loss scaling, bf16 does not
    result = trainer.fit()
    assert result["finished"] and result["skipped_steps"] == 0
    assert all(torch.isfinite(p).all() for p in trainer.student.parameters())
    assert "scale" in load_checkpoint(tmp_path / "run")["scaler"] or amp == "bf16"


def test_synthetic_sequences_train_pipa_pp_with_temporal_contrast(synthetic_root, tmp_path):
    cfg = apply_overrides(
        get_preset("synthetic_seq_pipa_pp"),
        [
            *TINY_MODEL,
            "data.synthetic_size=tiny",
            f"data.data_root={synthetic_root}",
            "losses.patch.crop_size=32",
            "optim.max_iters=2",
            "optim.warmup_iters=1",
            "eval.max_samples=2",
            f"runtime.run_dir={tmp_path / 'run'}",
        ],
    )
    assert resolve_benchmark(cfg).video and "temporal" in cfg.losses.enabled
    result = Trainer(cfg).fit()
    assert result["finished"] and result["skipped_steps"] == 0
    rows = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert train_rows and all(
        r["temporal"] > 0 and math.isfinite(r["temporal"]) for r in train_rows
    )


def test_real_benchmark_is_scored_at_full_label_resolution(real_root, tmp_path):
    """Images are resized to the target scale, labels are not: evaluate() upsamples the logits."""
    from pipa_core.data.synthetic.dataset import read_label
    from pipa_core.uda.data_stream import build_datasets

    cfg = apply_overrides(
        get_preset("gta2cs_dacs"),
        [f"data.data_root={real_root}", "data.target_scale=16,32", "data.source_scale=16,32",
         "data.crop_size=16,16", "data.rcs=false"],
    )  # fmt: skip
    _, val = build_datasets(resolve(cfg, validate=False))
    item = val[0]
    files = sorted((real_root / "cityscapes" / "gtFine" / "val").rglob("*_labelTrainIds.png"))
    full = read_label(files[0])
    assert item["img"].shape[-2] == 16  # resized (keep-ratio) to the target scale
    assert item["label"].shape == full.shape and full.shape[-2] > item["img"].shape[-2]


def test_warm_start_initialises_every_tensor_but_the_projection_heads(synthetic_root, tmp_path):
    from pipa_core.io import sha256_file
    from pipa_core.models import build_segmentor

    torch.manual_seed(123)
    warm = build_segmentor("daformer_mit_b0", decoder_channels=16, proj_dim=8)
    warm.export_weights(tmp_path / "warm.pt")
    cfg = synthetic_config(
        "pipa", synthetic_root, tmp_path / "run", f"model.init_from={tmp_path / 'warm.pt'}"
    )
    trainer = Trainer(cfg)
    got = trainer.student.state_dict()
    for k, v in warm.inference_state_dict().items():
        assert torch.equal(got[k], v), k
    heads = [k for k in got if k.startswith("proj_heads.")]
    assert heads and not all(torch.equal(got[k], warm.state_dict()[k]) for k in heads)
    for k, v in trainer.nets.teacher.state_dict().items():  # the teacher starts as the student
        assert torch.equal(v, got[k]), k
    result = trainer.fit()
    assert result["init_from_sha256"] == sha256_file(tmp_path / "warm.pt")
    # a run directory works too (its final_weights.pt)
    again = synthetic_config(
        "dacs", synthetic_root, tmp_path / "run2", f"model.init_from={tmp_path / 'run'}"
    )
    assert Trainer(again).student.state_dict().keys() >= warm.inference_state_dict().keys()


def test_missing_warm_start_is_a_config_error_naming_the_fix(synthetic_root, tmp_path):
    from pipa_core.config import ConfigError, validate_config

    cfg = synthetic_config(
        "dacs", synthetic_root, tmp_path / "run", "model.init_from=/nonexistent/w.pt"
    )
    with pytest.raises(
        ConfigError, match=r"model.init_from=.*no weights at /nonexistent/w.pt.*export_weights"
    ):
        validate_config(cfg)
    cfg = synthetic_config("dacs", synthetic_root, tmp_path / "run", f"model.init_from={tmp_path}")
    with pytest.raises(ConfigError, match="without final_weights.pt"):
        validate_config(cfg)


def test_synthetic_presets_start_from_the_shipped_warm_start():
    from pipa_core.assets import asset_card, asset_path
    from pipa_core.experiments.comparisons import WARM_START_OVERRIDES, warm_start_config
    from pipa_core.io import sha256_file
    from pipa_core.models import build_from_config
    from pipa_core.models.pretrained import load_segmentor_weights
    from pipa_core.uda.trainer import RESUMABLE_CHANGES

    path = asset_path("synthetic_warm_start")
    assert path.stat().st_size <= 20 * 2**20
    card = asset_card("synthetic_warm_start")
    assert card["sha256"] == sha256_file(path) and card["bytes"] == path.stat().st_size
    # the shipped file was made by the recipe the code records today
    assert card["recipe"] == list(WARM_START_OVERRIDES)
    recorded = {k: v for k, v in card["config"].items() if k != "runtime"}
    today = warm_start_config().to_dict()
    today = {k: v for k, v in today.items() if k != "runtime"}

    # Fields added to the config after the card was written (e.g. uda.mic_*) did not exist
    # when it was trained; every field it records must still hold today's value.
    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
        return out

    # The fields a resumed run may change (RESUMABLE_CHANGES: data.data_root,
    # eval.batch_size, ...) do not change what is trained; the warm start never evaluates.
    recorded = {k: v for k, v in flat(recorded).items() if k not in RESUMABLE_CHANGES}
    today = {k: v for k, v in flat(today).items() if k not in RESUMABLE_CHANGES}
    assert {k: today.get(k, "<absent>") for k in recorded} == recorded
    added = set(today) - set(recorded)
    assert added <= {"uda.mic", "uda.mic_mask_ratio", "uda.mic_block_size", "uda.mic_weight",
                     "optim.layer_decay", "model.grad_checkpointing", "losses.pixel.released",
                     "losses.patch.released", "losses.patch.start_iter"}  # fmt: skip
    for method in ("source_only", "oracle", "dacs", "pipa"):
        cfg = get_preset(f"synthetic_{method}")
        assert cfg.model.init_from == "synthetic_warm_start"
        m = cfg.model
        seg = build_from_config(m, (128, 128), pretrained=False)
        report = load_segmentor_weights(seg, path, strict=True)
        assert report.loaded > 0 and not report.missing and not report.unexpected


def test_released_preset_trains_and_resumes_with_its_patch_head(real_root, tmp_path):
    """gta2cs_pipa_released end to end on the fixture trees: no patch term before
    losses.patch.start_iter, the released `project` / `classifier` heads and the negative
    bank are checkpointed, and a run resumed from an earlier checkpoint ends with the same
    student and the same patch-loss state. (Which parameters the released losses train is
    tested in test_released_mode.py; a tiny random teacher is never confident enough for
    the release's 0.9 positive mask, so `project` gets no gradient here.)"""
    import shutil

    def config(run_dir, *extra):
        return apply_overrides(
            get_preset("gta2cs_pipa_released"),
            [
                *TINY_MODEL, f"data.data_root={real_root}", "data.source_scale=128,192",
                "data.target_scale=128,192", "data.crop_size=128,128", "eval.crop_size=null",
                "eval.stride=null", "data.batch_size=1", "data.num_workers=0",
                "data.rcs_min_pixels=10", "uda.pseudo_crop_top=null", "uda.pseudo_crop_bottom=null",
                "losses.patch.crop_size=64", "losses.patch.num_negatives=64",
                "losses.patch.start_iter=1", "optim.max_iters=3", "runtime.checkpoint_interval=1",
                "runtime.keep_checkpoint_interval=1", f"runtime.run_dir={run_dir}", *extra,
            ],
        )  # fmt: skip

    result = train(config(tmp_path / "a"))
    assert result["finished"] and result["skipped_steps"] == 0
    rows = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    patch = [r["patch"] for r in rows if r["kind"] == "train"]
    assert patch[0] == 0.0 and all(math.isfinite(p) for p in patch)
    final = load_checkpoint(tmp_path / "a")
    assert {"project.0.weight", "project.2.weight", "classifier.weight"} <= set(
        final["losses"]["patch"]
    )
    # resume run b from a's iteration-2 checkpoint
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    ck = tmp_path / "b" / "checkpoints"
    shutil.copy(ck / "iter_0000002.pt", ck / "latest.pt")
    train(config(tmp_path / "b", "runtime.resume=true"))
    resumed = load_checkpoint(tmp_path / "b")
    assert resumed["iteration"] == final["iteration"] == 3
    for k, v in final["losses"]["patch"].items():
        assert torch.equal(resumed["losses"]["patch"][k], v), k
    assert all(torch.equal(v, final["student"][k]) for k, v in resumed["student"].items())
