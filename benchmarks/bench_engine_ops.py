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

Medians of ``--repeats`` calls after one warm-up; ``--name`` sets the file stem
(``engine_ops_<device>``) so that a before and an after run can sit side by side.
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

MODELS = {
    "quickstart": ("daformer_mit_b0", {"decoder_channels": 64, "proj_dim": 32}),
    "mit_b5": ("daformer_mit_b5", {}),
}


def median_ms(fn: Callable[[], object], clock: bu.Clock, repeats: int) -> dict:
    fn()
    times = []
    for _ in range(repeats):
        t0 = clock.now()
        fn()
        times.append(clock.now() - t0)
    return bu.summarize_times(times)


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
    for c in crops:
        img = torch.rand(3, c, c, generator=torch.Generator().manual_seed(0)).to(device)
        g = torch.Generator().manual_seed(0)
        k = max(3, 2 * math.ceil(0.05 * c) + 1)
        rows.append(
            {
                "op": "gaussian_blur",
                "size": f"3x{c}x{c} (kernel {k})",
                **median_ms(lambda img=img, g=g: gaussian_blur(img, g), clock, repeats),
            }
        )
        rows.append(
            {
                "op": "color_jitter",
                "size": f"3x{c}x{c}",
                **median_ms(lambda img=img, g=g: color_jitter(img, 0.2, g), clock, repeats),
            }
        )
        print(rows[-2], rows[-1], flush=True)
    for n in names:
        arch, kwargs = MODELS[n]
        torch.manual_seed(0)
        student = build_segmentor(arch, **kwargs).to(device)
        teacher = build_teacher(student)
        size = f"{arch}, {sum(q.numel() for q in student.parameters()) / 1e6:.1f}M params"
        rows.append(
            {
                "op": "ema_update",
                "size": size,
                **median_ms(lambda t=teacher, s=student: ema_update(t, s, 0.999), clock, repeats),
            }
        )
        opt = build_optimizer(student)
        for q in student.parameters():
            q.grad = torch.randn_like(q) * 1e-3
        rows.append(
            {
                "op": "optimizer_step",
                "size": f"{size}, {type(opt).__name__}",
                **median_ms(opt.step, clock, repeats),
            }
        )
        print(rows[-2], rows[-1], flush=True)
        del student, teacher, opt
    meta = bu.machine_record(
        device, None if argv is None else ["benchmarks/bench_engine_ops.py", *argv]
    )
    md = (
        f"# Engine helper operations ({device.type})\n\n"
        + bu.machine_markdown(meta)
        + f"\nMedian of {repeats} calls after one warm-up.\n\n"
        + bu.markdown_table(
            ["op", "size", "median ms", "min ms"],
            [[r["op"], r["size"], r["median_ms"], r["min_ms"]] for r in rows],
        )
    )
    bu.write_results(args.out, args.name, device, {"meta": meta, "results": rows}, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
