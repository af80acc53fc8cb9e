"""The README's main command (``make quickstart``): run the tutorial notebook with papermill.

Executes ``notebooks/quickstart.ipynb`` on the embedded sim-to-real benchmark
(generated under ``<data-root>/synthetic`` on first use): dataset card, the
protocol, source-only (control) / target oracle / DACS / PiPa from the shared
warm start for every seed, the table, learning curves, per-class IoU, the
teacher's pseudo-label accuracy and predictions. The executed notebook, with
every table and figure, is written to ``<out-dir>/quickstart.ipynb``; the
table to ``<out-dir>/results.{json,md}``; figures to ``<out-dir>/figures`` (or ``--figures``).

    python -m pipa_core.quickstart                              # the full tutorial (3 seeds)
    python -m pipa_core.quickstart --seeds 0 --max-iters 50     # a fast smoke run
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def data_root_of(path: str) -> str:
    """The datasets root: accepts the synthetic cache itself (``data/synthetic``) or its parent (``data``)."""
    p = Path(path)
    if p.name == "synthetic" and (p / "manifest.json").is_file():
        return str(p.parent)
    return str(p)


def notebook_parameters(args: argparse.Namespace) -> dict:
    """The papermill parameters of ``quickstart.ipynb`` for the parsed command line."""
    overrides = list(args.set)
    if args.max_iters is not None:
        from pipa_core.config import make_config

        warmup = make_config("synthetic", "pipa").optim.warmup_iters
        overrides.append(f"optim.max_iters={args.max_iters}")
        # keep the learning-rate warm-up shorter than a shortened run
        overrides.append(f"optim.warmup_iters={min(warmup, max(1, args.max_iters // 10))}")
    if args.eval_max_samples is not None:
        overrides.append(f"eval.max_samples={args.eval_max_samples}")
    return {
        "data_root": data_root_of(args.data_root),
        "out_dir": str(args.out_dir),
        "figures_dir": str(figures_dir_of(args)),
        "overrides": overrides,
        "seeds": list(args.seeds[:1] if args.no_table else args.seeds),
        "jobs": args.jobs,
    }


def figures_dir_of(args: argparse.Namespace) -> Path:
    """``--figures``, else ``<out-dir>/figures`` (generated figures never dirty the checkout)."""
    return Path(args.figures) if args.figures else Path(args.out_dir) / "figures"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pipa_core.quickstart",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--data-root",
        default="data",
        help="datasets root (synthetic benchmark in <data-root>/synthetic)",
    )
    p.add_argument(
        "--out-dir", default="runs/quickstart", help="runs, results table and the executed notebook"
    )
    p.add_argument(
        "--figures", default=None, help="where the figures are written (default: <out-dir>/figures)"
    )
    p.add_argument(
        "--max-iters", type=int, default=None, help="iterations per run (default: the preset's)"
    )
    p.add_argument(
        "--eval-max-samples",
        type=int,
        default=None,
        help="evaluate on the first N target val images",
    )
    p.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the comparison table"
    )
    p.add_argument(
        "--no-table", action="store_true", help="one seed only (the first of --seeds): a quick look"
    )
    p.add_argument(
        "--jobs", type=int, default=None, help="runs at a time (default: one per core, at most 2)"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="any other setting for every run (repeatable)",
    )
    p.add_argument("--kernel", default="python3", help="Jupyter kernel that runs the notebook")
    return p


def main(argv: list[str] | None = None) -> dict:
    """Run the quickstart notebook; returns the summary it writes (``<out-dir>/quickstart.json``)."""
    args = build_parser().parse_args(argv)

    import papermill as pm

    from pipa_core.experiments.notebook import notebook_path

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    executed = out_dir / "quickstart.ipynb"
    source = notebook_path("quickstart")
    print(f"running {source} -> {executed}")
    pm.execute_notebook(
        str(source),
        str(executed),
        parameters=notebook_parameters(args),
        kernel_name=args.kernel,
        progress_bar=True,
    )
    summary = json.loads((out_dir / "quickstart.json").read_text())
    print((out_dir / "results.md").read_text())
    print(f"executed notebook: {executed}\nfigures: {figures_dir_of(args)}/")
    return summary


if __name__ == "__main__":
    main()
