"""The CUDA paths: autocast (bf16, fp16 + GradScaler), torch.compile, channels_last,
gradient checkpointing, training and bitwise resume on the GPU, losses equal to CPU.

Run by ``benchmarks/gpu_check.py`` (``pytest -m cuda``) whenever a GPU is lent; on a
machine without CUDA every test here is skipped with that reason (CI is CPU-only).
"""

from __future__ import annotations

import pytest
import torch

from pipa_core.config import apply_overrides, get_preset
from pipa_core.data.synthetic import ensure_synthetic
from pipa_core.uda.checkpoint import load_checkpoint
from pipa_core.uda.trainer import train

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp("syn")
    ensure_synthetic(r / "synthetic", size="tiny")
    return r


def tiny(root, run_dir, *extra: str):
    """PiPa with memory banks on the tiny synthetic benchmark, on the GPU."""
    return apply_overrides(
        get_preset("synthetic_pipa"),
        [
            "data.synthetic_size=tiny", f"data.data_root={root}", "data.num_workers=0",
            "model.decoder_channels=16", "model.init_from=null", "model.proj_dim=8",
            "losses.patch.crop_size=32", "losses.pixel.memory_size=20",
            "optim.max_iters=2", "optim.warmup_iters=1", "eval.max_samples=2",
            "runtime.device=cuda", "runtime.progress=false", "runtime.tensorboard=false",
            f"runtime.run_dir={run_dir}", *extra,
        ],
    )  # fmt: skip


def _finite(state: dict) -> bool:
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


@pytest.mark.parametrize(
    "extra",
    [
        ("runtime.amp=off",),
        ("runtime.amp=bf16",),
        ("runtime.amp=fp16",),  # with a GradScaler
        ("runtime.amp=bf16", "runtime.channels_last=true"),
        ("runtime.amp=bf16", "runtime.compile=true"),
    ],
    ids=["fp32", "bf16", "fp16", "channels_last", "compile"],
)
def test_pipa_trains_on_the_gpu(root, tmp_path, extra):
    result = train(tiny(root, tmp_path / "run", *extra))
    assert result["finished"] and result["skipped_steps"] == 0
    assert 0 <= result["mIoU"] <= 100
    ck = load_checkpoint(tmp_path / "run")
    assert _finite(ck["student"]) and _finite(ck["teacher"])
    if "runtime.amp=fp16" in extra:
        assert ck["scaler"]["scale"] > 0  # the GradScaler was used and saved


def test_gradient_checkpointing_gives_the_same_gradients():
    from pipa_core.models import build_segmentor

    torch.manual_seed(0)
    img = torch.rand(2, 3, 128, 128, device="cuda")
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        seg = build_segmentor("daformer_mit_b0", decoder_channels=16, proj_heads=(),
                              drop_path_rate=0.0, grad_checkpointing=ckpt).cuda()  # fmt: skip
        seg(img)["logits"].square().mean().backward()
        grads.append({k: p.grad.clone() for k, p in seg.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k], rtol=1e-4, atol=1e-6)


def test_stopped_and_resumed_gpu_run_matches_the_uninterrupted_one(root, tmp_path):
    det = ("runtime.deterministic=true", "optim.max_iters=4", "runtime.amp=off")
    train(tiny(root, tmp_path / "full", *det))
    train(tiny(root, tmp_path / "part", *det, "runtime.stop_after=2"))
    train(tiny(root, tmp_path / "part", *det, "runtime.resume=true"))
    a, b = load_checkpoint(tmp_path / "full"), load_checkpoint(tmp_path / "part")
    assert a["iteration"] == b["iteration"] == 4
    for k in a["student"]:
        assert torch.equal(a["student"][k], b["student"][k]), k


def losses_on(device: str) -> dict[str, torch.Tensor]:
    """Every loss on the same inputs on ``device``; sampling from one CPU generator, so the
    sampled anchors / locations are the same on every device."""
    from pipa_core.losses import (
        PixelContrastLoss,
        PrototypeContrastLoss,
        TemporalContrastLoss,
        segmentation_ce,
    )

    g = torch.Generator().manual_seed(0)
    feat = torch.randn(2, 8, 16, 16, generator=g).to(device)
    ref = (feat + 0.1 * torch.randn(2, 8, 16, 16, generator=g).to(device)).contiguous()
    label = torch.randint(0, 19, (2, 16, 16), generator=g).to(device)
    logits = torch.randn(2, 19, 16, 16, generator=g).to(device)

    def gen() -> torch.Generator:
        return torch.Generator().manual_seed(1)

    return {
        "ce": segmentation_ce(logits, label),
        "pixel": PixelContrastLoss(0.1, max_anchors=256)(feat, label, generator=gen()),
        "prototype": PrototypeContrastLoss(19, 8, 0.1).to(device)(feat, label, generator=gen()),
        "temporal": TemporalContrastLoss(0.1, 128, 256)(feat, ref, generator=gen()),
    }


def test_losses_on_the_gpu_equal_the_cpu():
    cpu, gpu = losses_on("cpu"), losses_on("cuda")
    for k in cpu:
        torch.testing.assert_close(gpu[k].cpu(), cpu[k], rtol=1e-4, atol=1e-5, msg=k)
