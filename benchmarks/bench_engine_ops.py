"""Time the engine's per-step helper operations in isolation (before/after optimisation record).

Usage::

    python benchmarks/bench_engine_ops.py                     # CPU: B0 and B5, crops 128..512
    python benchmarks/bench_engine_ops.py --device cuda --crops 512,640
    python benchmarks/bench_engine_ops.py --smoke

Cases, each calling the engine's own function (so a later run measures the
engine as it is then):

* ``gaussian_blur`` (``pipa_core.uda.mixing``): the DACS blur of one mixed image,
  kernel about 10 % of the crop side (53x53 at 512, 65x65 at 640), per crop size.
* ``color_jitter`` (same module) on one image, per crop size.
* ``ema_update`` (``pipa_core.uda.ema``) of the teacher from the student, per model.
* ``optimizer_step``: ``AdamW.step`` of the optimizer built by
  ``pipa_core.uda.optim.build_optimizer`` (the trainer's), with random gradients.

Where the engine was optimised, a *reference* row times the previous
implementation (the 2-D blur kernel; one ``lerp_`` per EMA tensor; torch's
default AdamW) in the same run,
calls interleaved with the engine's, so that before/after is measured under the
same machine load. Medians of ``--repeats`` calls after one warm-up; ``--name``
sets the file stem (``engine_ops_<device>``).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Callable, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchutil as bu  # noqa: E402


@torch.no_grad()
def _reference_ema(teacher: torch.nn.Module, student: torch.nn.Module, alpha: float = 0.999):
    """The EMA update as one ``lerp_`` per parameter tensor (the loop the engine had)."""
    t_params = dict(teacher.named_parameters())
    for name, s in student.named_parameters():
        t_params[name].lerp_(s.detach(), 1.0 - alpha)


_IMPL_KEYS = ("foreach", "fused", "capturable", "differentiable", "maximize")


MODELS = {
    "quickstart": None,  # the quickstart preset's model (benchutil.quickstart_model)
    "mit_b5": ("daformer_mit_b5", {}),
}


def compare_ms(fns: dict[str, Callable[[], object]], clock: bu.Clock, repeats: int) -> dict:
    """Median time per function, calls interleaved round-robin after one warm-up each.

    Interleaving makes an engine-vs-reference comparison fair on a shared machine.
    """
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = clock.now()
            fn()
            times[k].append(clock.now() - t0)
    return {k: bu.summarize_times(v) for k, v in times.items()}


def _reference_blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    """The DACS blur as one 2-D Gaussian kernel (``TF.gaussian_blur`` with (kx, ky))."""
    import torchvision.transforms.v2.functional as TF

    h, w = img.shape[-2:]
    ky, kx = (max(3, 2 * math.ceil(0.05 * side) + 1) for side in (h, w))
    return TF.gaussian_blur(img, kernel_size=[kx, ky], sigma=[sigma, sigma])


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default=bu.default_device())
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--crops", default=None, help="crop sides (default 128,256,512)")
    p.add_argument("--models", default=None, help=f"subset of {list(MODELS)}")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--name", default="engine_ops")
    p.add_argument("--out", type=Path, default=bu.RESULTS)
    args = p.parse_args(argv)

    device = bu.parse_device(args.device)
    bu.set_threads(args.threads, device)
    crops = [int(c) for c in (args.crops or ("64" if args.smoke else "128,256,512")).split(",")]
    names = (args.models or ("quickstart" if args.smoke else "quickstart,mit_b5")).split(",")
    for n in names:
        if n not in MODELS:
            raise SystemExit(f"--models: unknown model {n!r}; valid: {', '.join(MODELS)}")
    repeats = args.repeats or (1 if args.smoke else 5)

    from pipa_core.models import build_segmentor
    from pipa_core.uda.ema import build_teacher, ema_update
    from pipa_core.uda.mixing import color_jitter, gaussian_blur
    from pipa_core.uda.optim import build_optimizer

    clock = bu.Clock(device)
    rows = []

    def add(op: str, impl: str, size: str, stats: dict) -> None:
        rows.append({"op": op, "impl": impl, "size": size, **stats})
        print(rows[-1], flush=True)

    for c in crops:
        img = torch.rand(3, c, c, generator=torch.Generator().manual_seed(0)).to(device)
        k = max(3, 2 * math.ceil(0.05 * c) + 1)
        # Same sigma in both: the engine draws it from a generator seeded alike every call.
        sigma = 0.15 + float(torch.rand((), generator=torch.Generator().manual_seed(0)))
        res = compare_ms(
            {
                "engine": lambda img=img: gaussian_blur(img, torch.Generator().manual_seed(0)),
                "reference: 2-D kernel": lambda img=img, s=sigma: _reference_blur(img, s),
            },
            clock,
            repeats,
        )
        for impl, stats in res.items():
            add("gaussian_blur", impl, f"3x{c}x{c} (kernel {k})", stats)
        g = torch.Generator().manual_seed(0)
        res = compare_ms({"engine": lambda img=img, g=g: color_jitter(img, 0.2, g)}, clock, repeats)
        add("color_jitter", "engine", f"3x{c}x{c}", res["engine"])
    for n in names:
        arch, kwargs = MODELS[n] or bu.quickstart_model()
        torch.manual_seed(0)
        student = build_segmentor(arch, **kwargs).to(device)
        teacher = build_teacher(student)
        size = f"{arch}, {sum(q.numel() for q in student.parameters()) / 1e6:.1f}M params"
        res = compare_ms(
            {
                "engine": lambda t=teacher, s=student: ema_update(t, s, 0.999),
                "reference: lerp_ per tensor": lambda t=teacher, s=student: _reference_ema(t, s),
            },
            clock,
            repeats,
        )
        for impl, stats in res.items():
            add("ema_update", impl, size, stats)
        opt = build_optimizer(student)
        # Reference: torch's default AdamW implementation on the same parameter groups.
        ref = torch.optim.AdamW([{k: v for k, v in g.items() if k not in _IMPL_KEYS} for g in
                                 opt.param_groups])  # fmt: skip
        for q in student.parameters():
            q.grad = torch.randn_like(q) * 1e-3
        res = compare_ms({"engine": opt.step, "reference: AdamW()": ref.step}, clock, repeats)
        impl = (
            "fused"
            if opt.defaults.get("fused")
            else "foreach"
            if opt.defaults.get("foreach")
            else "default"
        )
        for k, stats in res.items():
            add(
                "optimizer_step",
                k,
                f"{size}, AdamW ({impl if k == 'engine' else 'default'})",
                stats,
            )
        del student, teacher, opt, ref
    meta = bu.machine_record(
        device, None if argv is None else ["benchmarks/bench_engine_ops.py", *argv]
    )
    md = (
        f"# Engine helper operations ({device.type})\n\n"
        + bu.machine_markdown(meta)
        + f"\nMedian of {repeats} calls after one warm-up.\n\n"
        + bu.markdown_table(
            ["op", "implementation", "size", "median ms", "min ms"],
            [[r["op"], r["impl"], r["size"], r["median_ms"], r["min_ms"]] for r in rows],
        )
    )
    bu.write_results(args.out, args.name, device, {"meta": meta, "results": rows}, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
