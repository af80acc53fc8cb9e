"""Command line: ``python -m pipa_core.train --preset synthetic_pipa --set optim.max_iters=100``.

The same command runs on CPU, on one GPU, and on several GPUs / nodes::

    python -m pipa_core.train --preset gta2cs_pipa --set data.data_root=/data
    torchrun --nproc_per_node 4 -m pipa_core.train --preset gta2cs_pipa --run-dir runs/gta_pipa
    python -m pipa_core.train --run-dir runs/gta_pipa --resume     # continue a killed run

``--config`` reads a saved ``config.json`` / ``config.yaml`` (or a run directory);
``--set section.key=value`` overrides any field (repeatable); ``--list-presets``
prints the preset names; ``--print-config`` shows the resolved configuration.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from pipa_core.config import (
    ConfigError,
    TrainConfig,
    apply_overrides,
    get_preset,
    preset_names,
    validate_config,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pipa_core.train",
        description="Train DACS / DAFormer / PiPa / PiPa++ / SPCL and the source-only / oracle baselines.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    p.add_argument(
        "--preset", help="a preset name <benchmark>_<method>, e.g. gta2cs_pipa (see --list-presets)"
    )
    p.add_argument("--config", help="a config.json / config.yaml file or a run directory")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a field, e.g. --set optim.lr=1e-4 --set data.crop_size=256,256 (repeatable)",
    )  # fmt: skip
    p.add_argument("--run-dir", help="run directory (default runs/<name>)")
    p.add_argument(
        "--resume", action="store_true", help="continue from <run-dir>/checkpoints/latest.pt"
    )
    p.add_argument(
        "--allow-config-change", action="store_true",
        help="let --resume continue with a changed configuration (recorded in config_changes.json)",
    )  # fmt: skip
    p.add_argument("--stop-after", type=int, help="checkpoint and stop after this iteration")
    p.add_argument("--list-presets", action="store_true", help="print the preset names and exit")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return p


def resolve_config(args: argparse.Namespace) -> TrainConfig:
    """Config from ``--config`` / ``--preset`` / the run directory (``--resume``), then ``--set``."""
    if args.config:
        cfg = TrainConfig.load(args.config)
    elif args.preset:
        cfg = get_preset(args.preset)
    elif args.resume and args.run_dir and (Path(args.run_dir) / "config.json").is_file():
        cfg = TrainConfig.load(args.run_dir)
    else:
        raise ConfigError(
            "give --preset NAME or --config FILE (or --resume --run-dir DIR of an existing run)"
        )
    extra = list(args.overrides)
    if args.run_dir:
        extra.append(f"runtime.run_dir={args.run_dir}")
    if args.resume:
        extra.append("runtime.resume=true")
    if args.allow_config_change:
        extra.append("runtime.allow_config_change=true")
    if args.stop_after is not None:  # 0 is rejected by the config check, not ignored
        extra.append(f"runtime.stop_after={args.stop_after}")
    elif args.resume and not any(o.startswith("runtime.stop_after=") for o in args.overrides):
        # A resumed run drops the stop point saved with it unless a new one is given.
        extra.append("runtime.stop_after=null")
    return validate_config(apply_overrides(cfg, extra))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list_presets:
        print("\n".join(preset_names()))
        return 0
    try:
        cfg = resolve_config(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from pipa_core.data.base import DatasetError
    from pipa_core.uda.checkpoint import CheckpointError
    from pipa_core.uda.distributed import cleanup
    from pipa_core.uda.trainer import train

    try:
        result = train(cfg)
    except ConfigError as exc:  # a usage error: exit 2, as argparse does
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (DatasetError, CheckpointError) as exc:  # data on disk: exit 1
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        cleanup()
    summary = {k: result[k] for k in ("run_dir", "iterations", "finished") if k in result}
    if "mIoU" in result:
        summary["mIoU"] = round(result["mIoU"], 2)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
