"""The README's main command (``make quickstart``): the tutorial on the embedded benchmark.

Until the training engine lands this generates the synthetic sim-to-real
benchmark and its dataset card.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data-root", default="data/synthetic")
    p.add_argument("--figures", default="figures")
    args = p.parse_args(argv)

    from pipa_core.data.synthetic import ensure_synthetic
    from pipa_core.viz.dataset_card import make_dataset_card

    root = ensure_synthetic(args.data_root)
    out = make_dataset_card(root, Path(args.figures) / "dataset_card.png")
    print(f"synthetic benchmark at {root}; dataset card at {out}")


if __name__ == "__main__":
    main()
