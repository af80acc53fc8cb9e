"""Make the CPU tutorial's warm start: ``python -m pipa_core.warm_start``.

Every method of the embedded benchmark (``synthetic_*`` presets) starts from
one source model, shipped as ``pipa_core/assets/synthetic_warm_start.pt``.
This command is how that file was made, and how to make it again: it trains
source-only from random weights with the recorded recipe
(:data:`pipa_core.experiments.comparisons.WARM_START_OVERRIDES`, on one torch thread),
exports the student's weights and writes ``synthetic_warm_start.json`` beside
them (command, configuration, generator version, results, machine, SHA-256).

    python -m pipa_core.warm_start                         # rewrite the shipped file (~20 min, 1 core)
    python -m pipa_core.warm_start --out /tmp/ws.pt        # make a copy elsewhere
    python -m pipa_core.train --preset synthetic_pipa --set model.init_from=/tmp/ws.pt

With one thread on the same machine and torch version the result is the same
bit for bit; elsewhere floating-point kernels differ slightly and so do the weights.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import platform
import shutil
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    from pipa_core.assets import asset_path

    p = argparse.ArgumentParser(
        prog="python -m pipa_core.warm_start",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--out", default=str(asset_path("synthetic_warm_start")), help="where the weights go"
    )
    p.add_argument("--run-dir", default="runs/warm_start", help="the training run's directory")
    p.add_argument("--data-root", default="data", help="datasets root (synthetic benchmark inside)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="change the recipe (then the file is no longer the recorded one)",
    )
    return p


def main(argv: list[str] | None = None) -> dict:
    """Train, export and record the warm start; returns the record written beside it."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    import torch

    from pipa_core.data.synthetic import GENERATOR_VERSION
    from pipa_core.experiments.comparisons import WARM_START_OVERRIDES, warm_start_config
    from pipa_core.io import atomic_open, atomic_write_json, sha256_file
    from pipa_core.uda.trainer import train

    overrides = ["runtime.num_threads=1", *args.set]
    cfg = warm_start_config(args.run_dir, args.data_root, overrides)
    result = train(cfg)
    if not result.get("finished"):
        raise SystemExit(f"the warm-start run stopped early; resume it in {args.run_dir}")
    out = Path(args.out)
    with atomic_open(out, "wb") as f, open(Path(args.run_dir) / "final_weights.pt", "rb") as src:
        shutil.copyfileobj(src, f)
    card = {
        "command": "python -m pipa_core.warm_start" + "".join(f" --set {o}" for o in args.set),
        "recipe": list(WARM_START_OVERRIDES) + list(args.set),
        "config": cfg.to_dict(),
        "synthetic_generator_version": GENERATOR_VERSION,
        "iterations": result["iterations"],
        "train_seconds": round(result["train_seconds"], 1),
        "target_val_mIoU": result.get("mIoU"),
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "torch": torch.__version__,
        "threads": 1,
        "sha256": sha256_file(out),
        "bytes": out.stat().st_size,
    }
    atomic_write_json(out.with_suffix(".json"), card)
    print(f"wrote {out} ({card['bytes'] / 2**20:.1f} MiB, sha256 {card['sha256'][:12]}…)")
    return card


if __name__ == "__main__":
    main(sys.argv[1:])
