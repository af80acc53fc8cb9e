"""PiPa's released-code mode (``losses.pixel.released``, ``losses.patch.released``).

Which parameters each loss trains (a real backward on MiT-B0, single-scale and HRDA),
the released details (groups <= 100 pixels dropped, 255 a class, tau / 0.07, the HRDA
label misalignment, the 8-pixel overlap cells, start_iter), the presets and the checks,
and that the paper mode builds what it built before.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pipa_core.config import ConfigError, TrainConfig, apply_overrides, validate_config
from pipa_core.config.presets import make_config
from pipa_core.losses import (
    PatchContrastLoss,
    PixelContrastLoss,
    info_nce,
    patch_correspondence,
    sample_patch_pair,
)
from pipa_core.losses.patch import PatchPair
from pipa_core.losses.released import (
    ReleasedPatchContrastLoss,
    ReleasedPixelContrastLoss,
    released_anchor_sampling,
    released_overlap_slices,
)
from pipa_core.models import build_segmentor
from pipa_core.uda.ema import build_teacher
from pipa_core.uda.step import (
    Networks,
    StepContext,
    released_patch_contrast,
    released_pixel_contrast,
    self_training_step,
)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _tiny(hrda: bool = False, stage_heads: bool = True):
    torch.manual_seed(0)
    kw = dict(proj_heads=("pixel", "patch"), proj_dim=16, decoder_channels=16)
    if hrda:
        return build_segmentor(
            "hrda_daformer_mit_b0", stage_heads=stage_heads, hrda={"detail_size": (64, 64)}, **kw
        )
    return build_segmentor("daformer_mit_b0", stage_heads=stage_heads, **kw)


def _blocky_label(b: int, h: int, w: int, block: int = 16) -> torch.Tensor:
    """Labels in ``block``-pixel squares, classes 0..3 and 255, so groups are large."""
    g = torch.Generator().manual_seed(1)
    cells = torch.tensor([0, 1, 2, 3, 255])[
        torch.randint(5, (b, h // block, w // block), generator=g)
    ]
    return cells.repeat_interleave(block, 1).repeat_interleave(block, 2)


def _halves(b: int, size: int) -> torch.Tensor:
    """Left half class 0, right half 255: two groups of > 100 pixels at stride 4 from 64 px."""
    label = torch.zeros(b, size, size, dtype=torch.long)
    label[..., size // 2 :] = 255
    return label


def _grads(named) -> set[str]:
    return {n for n, p in named if p.grad is not None and p.grad.abs().sum() > 0}


def _prefixes(names: set[str]) -> set[str]:
    out = set()
    for n in names:
        parts = n.split(".")
        out.add(".".join(parts[:2]) if parts[0] in ("stage_heads", "proj_heads") else parts[0])
    return out


# --------------------------------------------------------------------------- pixel details
def test_released_sampling_drops_small_groups_keeps_255_and_splits_hard_easy():
    # one image: class 0 with 150 px (30 mispredicted), class 1 with 100 px (dropped: <= 100),
    # label 255 with 120 px (a class in the release), class 2 with 160 px (80 hard)
    lab = torch.cat([torch.full((150,), 0), torch.full((100,), 1), torch.full((120,), 255),
                     torch.full((160,), 2)])[None]  # fmt: skip
    pred = lab.clone()
    pred[0, :30] = 5  # 30 hard pixels of class 0
    pred[0, 370:450] = 5  # 80 hard pixels of class 2
    idx = released_anchor_sampling(lab, pred, generator=torch.Generator().manual_seed(0))
    cls = lab[0, idx]
    assert set(cls.tolist()) == {0, 2, 255}  # class 1 (100 px) dropped, 255 kept
    n_view = min(1024 // 3, 100)
    for c in (0, 2, 255):
        assert int((cls == c).sum()) == n_view
    hard = pred[0, idx] != lab[0, idx]
    assert int(hard[cls == 0].sum()) == 30  # the scarce hard kind entirely, easy fills up
    assert int(hard[cls == 2].sum()) == n_view // 2  # both kinds plentiful: half / half
    assert int(hard[cls == 255].sum()) == 0


def test_released_sampling_returns_nothing_without_large_groups():
    lab = torch.arange(4).repeat_interleave(50)[None]  # four groups of 50 px
    assert released_anchor_sampling(lab, lab).numel() == 0
    emb = torch.randn(1, 8, 10, 20, requires_grad=True)
    loss = ReleasedPixelContrastLoss()(emb, lab.reshape(1, 10, 20), lab.reshape(1, 10, 20))
    assert float(loss.detach()) == 0.0 and loss.requires_grad  # released: a crash; here 0


def _naive_released_pixel(feats, cls, tau, base_tau):
    """The released per-anchor formula written out: pos_neg denominator, anchor mean."""
    s = feats @ feats.t() / tau
    same = cls[:, None] == cls[None, :]
    eye = torch.eye(len(cls), dtype=torch.bool)
    neg = (torch.exp(s) * (~same)).sum(1, keepdim=True)
    log_prob = s - torch.log(torch.exp(s) + neg)
    pos = same & ~eye
    return (-(tau / base_tau) * (log_prob * pos).sum(1) / pos.sum(1)).mean()


def test_released_pixel_loss_formula_and_tau_over_0_07_factor():
    torch.manual_seed(0)
    lab = _blocky_label(2, 32, 32, block=16)  # 4 blocks of 256 px per image
    emb = F.normalize(torch.randn(2, 8, 32, 32), dim=1)
    pred = lab.clone()
    out = ReleasedPixelContrastLoss()(emb, lab, pred, generator=torch.Generator().manual_seed(3))
    plain = ReleasedPixelContrastLoss(base_temperature=0.1)(
        emb, lab, pred, generator=torch.Generator().manual_seed(3)
    )
    assert float(out) == pytest.approx(float(plain) * 0.1 / 0.07, rel=1e-5)
    idx = released_anchor_sampling(
        lab.reshape(2, -1), pred.reshape(2, -1), generator=torch.Generator().manual_seed(3)
    )
    feats = emb.permute(0, 2, 3, 1).reshape(-1, 8)[idx]
    ref = _naive_released_pixel(feats, lab.reshape(-1)[idx], 0.1, 0.07)
    assert float(out) == pytest.approx(float(ref), rel=1e-4)
    # the core is info_nce's official-code form
    core = info_nce(feats, feats, lab.reshape(-1)[idx], lab.reshape(-1)[idx],
                    self_index=torch.arange(len(idx)), denominator="pos_neg", average="anchors")  # fmt: skip
    assert float(plain) == pytest.approx(float(core), rel=1e-5)


def test_released_pixel_on_hrda_embeds_the_detail_crop_with_the_full_label():
    seg = _tiny(hrda=True).eval()  # deterministic (no drop path); the box forces the train path
    img = torch.rand(2, 3, 128, 128)
    label = _blocky_label(2, 128, 128, block=32)
    box = (64, 128, 0, 64)
    out = seg(img, detail_box=box)
    seen = {}

    class Recorder(torch.nn.Module):
        def forward(self, emb, lab, pred, generator=None):
            seen.update(emb=emb, label=lab, pred=pred)
            return emb.sum() * 0

    nets = Networks(seg, losses={"pixel": Recorder()})
    released_pixel_contrast(out, label, nets, StepContext(torch.Generator()))
    assert seen["emb"].shape == (2, 256, 16, 16)  # the 64x64 detail crop at stride 4
    assert seen["label"] is label  # the whole 128x128 context label, not the crop
    expected = seg.stage_heads.embed(seg.encoder(seg.normalize(img[..., 64:128, 0:64])))
    assert torch.allclose(seen["emb"], expected, atol=1e-5)
    # the loss resizes the *full* label to 16x16: the label of the box differs
    full = F.interpolate(label[:, None].float(), size=(16, 16), mode="nearest")[:, 0]
    cropped = F.interpolate(label[:, None, 64:, :64].float(), size=(16, 16), mode="nearest")[:, 0]
    assert not torch.equal(full, cropped)


# --------------------------------------------------------------------------- gradients
def test_paper_pixel_trains_encoder_decoder_and_pixel_head():
    seg = _tiny(stage_heads=False).train()
    out = seg(torch.rand(2, 3, 64, 64))
    label = _blocky_label(2, 64, 64, block=8)
    emb = seg.project("pixel", out["feat"])
    loss = PixelContrastLoss(max_anchors=256)(
        emb, label, generator=torch.Generator().manual_seed(0)
    )
    loss.backward()
    assert _prefixes(_grads(seg.named_parameters())) == {"encoder", "decoder", "proj_heads.pixel"}


@pytest.mark.parametrize("hrda", [False, True])
def test_released_pixel_trains_encoder_and_proj_head_only(hrda):
    seg = _tiny(hrda=hrda).train()
    size = 128 if hrda else 64  # embeddings of 16x16: groups of > 100 pixels exist
    out = seg(torch.rand(2, 3, size, size))
    label = _halves(2, size)  # two groups of 128 embedding pixels per image
    nets = Networks(seg, losses={"pixel": ReleasedPixelContrastLoss()})
    loss = released_pixel_contrast(out, label, nets, StepContext(torch.Generator().manual_seed(0)))
    assert float(loss.detach()) > 0
    loss.backward()
    # not the decoder, not the scale attention, not the cls_head (its argmax only picks anchors)
    assert _prefixes(_grads(seg.named_parameters())) == {"encoder", "stage_heads.proj_head"}


def test_paper_patch_trains_the_student_and_its_patch_head():
    seg = _tiny(stage_heads=False).train()
    g = torch.Generator().manual_seed(0)
    pair = sample_patch_pair(torch.rand(2, 3, 64, 64), 32, generator=g, align=seg.output_stride)
    feat = seg(torch.cat([pair.crop1, pair.crop2]), single_scale=True)["feat"]
    emb1, emb2 = seg.project("patch", feat).chunk(2)
    PatchContrastLoss()(emb1, emb2, pair, seg.output_stride, generator=g).backward()
    assert _prefixes(_grads(seg.named_parameters())) == {"encoder", "decoder", "proj_heads.patch"}


@pytest.mark.parametrize("hrda", [False, True])
def test_released_patch_trains_only_its_project_head(hrda):
    seg = _tiny(hrda=hrda).train()
    teacher = build_teacher(seg)
    cfg = TrainConfig()
    cfg.losses.patch.released = True
    cfg.losses.patch.scale_range = (0.8, 2.0)
    c_in = seg.num_classes if hrda else seg.feat_channels
    loss_mod = ReleasedPatchContrastLoss(c_in, num_negatives=64, pos_threshold=0.0)
    nets = Networks(seg, teacher, losses={"patch": loss_mod})
    ctx = StepContext(torch.Generator().manual_seed(0), patch_crop=64)  # HRDA's LR view >= 29
    loss = released_patch_contrast(torch.rand(2, 3, 128, 128), nets, cfg, ctx)
    assert float(loss.detach()) > 0
    loss.backward()
    assert _grads(seg.named_parameters()) == set()
    assert _grads(teacher.named_parameters()) == set()
    assert {n.split(".")[0] for n in _grads(loss_mod.named_parameters())} == {"project"}


# --------------------------------------------------------------------------- patch details
def _pair(o1, o2, c=32, size=(64, 64), flip=(False, False)) -> PatchPair:
    box = lambda o: [o[0], o[1], o[0] + c, o[1] + c]  # noqa: E731
    return PatchPair(
        torch.zeros(1, 3, c, c), torch.zeros(1, 3, c, c), torch.tensor([box(o1)]),
        torch.tensor([box(o2)]), torch.ones(1, 2), torch.tensor([list(size)]),
        torch.tensor([flip[0]]), torch.tensor([flip[1]]), c,
    )  # fmt: skip


def test_released_overlap_cells_are_aligned_at_stride_8_only():
    pair = _pair((8, 16), (24, 8))  # crop 2 is 16 px lower and 8 px left of crop 1
    (r1, c1), (r2, c2) = released_overlap_slices(pair)[0]
    assert (r1, c1, r2, c2) == (slice(2, 4), slice(0, 3), slice(0, 2), slice(1, 4))
    # on a stride-8 map (DAFormer variant: stride-4 feature, 2x2-pooled) the released
    # cells are exactly the matching cells of the two crops
    i1, i2 = patch_correspondence(pair, (4, 4), 8)
    grid = torch.arange(16).reshape(4, 4)
    assert torch.equal(grid[r1, c1].reshape(-1), i1) and torch.equal(grid[r2, c2].reshape(-1), i2)
    # image row of the first released row pair: at stride 8 the same, at stride 2 (HRDA
    # variant: logits at the crop size, 2x2-pooled) 12 pixels apart
    row = lambda origin, sl, stride: origin + sl.start * stride + stride // 2  # noqa: E731
    assert row(8, r1, 8) == row(24, r2, 8) == 28
    assert (row(8, r1, 2), row(24, r2, 2)) == (13, 25)


def test_released_patch_bank_keeps_three_steps_and_sums_both_directions():
    torch.manual_seed(0)
    mod = ReleasedPatchContrastLoss(4, proj_dim=8, num_classes=3, num_negatives=10,
                                    pos_threshold=0.0).train()  # fmt: skip
    pair = _pair((0, 0), (8, 8), c=32)
    x1, x2 = torch.randn(1, 4, 16, 16), torch.randn(1, 4, 16, 16)
    for step in range(4):
        loss = mod(x1, x2, pair, generator=torch.Generator().manual_seed(step))
        assert int(mod.bank_valid.sum()) == min(step + 1, 3) * 10
    assert torch.isfinite(loss.detach())
    # the sum of both directions: with every cell a negative (2 x 256), swapping the
    # crops gives the same total
    torch.manual_seed(0)
    full = ReleasedPatchContrastLoss(4, proj_dim=8, num_classes=3, num_negatives=512,
                                     pos_threshold=0.0).eval()  # fmt: skip
    direct = full(x1, x2, pair, generator=torch.Generator().manual_seed(1))
    swapped = full(x2, x1, pair.swapped(), generator=torch.Generator().manual_seed(2))
    assert float(direct.detach()) == pytest.approx(float(swapped.detach()), rel=1e-5)


def _step_nets(start_iter: int):
    seg = _tiny(stage_heads=True).train()
    cfg = TrainConfig()
    cfg.uda.pseudo_threshold = 0.0
    cfg.losses.enabled = ("pixel", "patch")
    cfg.losses.pixel.released = True
    cfg.losses.patch.released = True
    cfg.losses.patch.start_iter = start_iter
    cfg.losses.patch.scale_range = (0.8, 2.0)
    losses = {
        "pixel": ReleasedPixelContrastLoss(),
        "patch": ReleasedPatchContrastLoss(seg.feat_channels, num_negatives=64, pos_threshold=0.0),
    }
    return Networks(seg, build_teacher(seg), losses=losses), cfg


def test_patch_loss_is_skipped_before_start_iter():
    torch.manual_seed(0)
    batch = {
        "source": {"img": torch.rand(2, 3, 64, 64), "label": _halves(2, 64)},
        "target": {"img": torch.rand(2, 3, 64, 64)},
    }
    states = {}
    for it in (0, 9, 10):
        nets, cfg = _step_nets(start_iter=10)
        torch.manual_seed(1)
        ctx = StepContext(torch.Generator().manual_seed(5), patch_crop=32, iteration=it)
        out = self_training_step(batch, nets, cfg, ctx)
        states[it] = (out.logs["patch"], ctx.generator.get_state())
        assert out.logs["pixel"] > 0
    assert states[0][0] == 0.0 and states[9][0] == 0.0 and states[10][0] > 0
    assert torch.equal(states[0][1], states[9][1])  # before start: no crops, no draws
    assert not torch.equal(states[9][1], states[10][1])


# --------------------------------------------------------------------------- config
def test_released_switches_default_off_and_presets():
    c = TrainConfig()
    assert not c.losses.pixel.released and not c.losses.patch.released
    assert c.losses.patch.start_iter == 0
    r = make_config("gta2cs", "pipa_released")
    assert r.model.arch == "hrda_daformer_mit_b5" and r.optim.max_iters == 60000
    assert r.losses.enabled == ("pixel", "patch")
    assert r.losses.pixel.released and r.losses.pixel.weight == 0.1
    p = r.losses.patch
    assert p.released and p.weight == 0.01 and p.start_iter == 10000 and p.crop_size == 720
    assert make_config("syn2cs", "pipa_released").losses.patch.weight == 0.01


@pytest.mark.parametrize(
    "override, message",
    [
        ("losses.pixel.use_target=true", "source pixels only"),
        ("losses.pixel.memory_size=100", "losses.pixel.memory_size=0"),
        ("losses.patch.memory_size=100", "losses.patch.memory_size=0"),
        ("losses.patch.num_negatives=3201", "must be even"),
        ("losses.patch.crop_size=100", "multiple of 8"),
        ("losses.patch.start_iter=500", "would never run"),
        ("losses.patch.start_iter=-1", "must be >= 0"),
    ],
)
def test_released_checks_reject_what_the_release_has_no_counterpart_for(override, message):
    cfg = make_config("synthetic", "pipa")
    cfg = apply_overrides(cfg, ["losses.pixel.released=true", "losses.patch.released=true"])
    validate_config(cfg)
    with pytest.raises(ConfigError, match=message):
        validate_config(apply_overrides(cfg, [override]))


def test_paper_mode_builds_the_paper_losses_and_no_extra_optimizer_group():
    from pipa_core.config import resolve
    from pipa_core.uda.engine import Engine

    cfg = make_config("synthetic", "pipa", optim={"max_iters": 2})
    eng = Engine.build(resolve(cfg))
    assert type(eng.nets.losses["pixel"]) is PixelContrastLoss
    assert type(eng.nets.losses["patch"]) is PatchContrastLoss
    assert eng.student.stage_heads is None and eng.ctx.iteration == 0
    n_opt = sum(p.numel() for g in eng.optimizer.param_groups for p in g["params"])
    assert n_opt == sum(p.numel() for p in eng.student.parameters())
    rel = apply_overrides(cfg, ["losses.pixel.released=true", "losses.patch.released=true"])
    eng = Engine.build(resolve(rel))
    assert eng.student.stage_heads is not None  # the warm start leaves them initialised
    names = [g["name"] for g in eng.optimizer.param_groups]
    assert (
        names[-1] == "loss_patch" and eng.optimizer.param_groups[-1]["initial_lr"] == cfg.optim.lr
    )
