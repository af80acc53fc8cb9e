"""What every notebook does first, as one call: :func:`notebook_setup`.

The notebooks are jupytext percent scripts (``notebooks/<name>.py``) paired with
``notebooks/<name>.ipynb``; this module keeps their shared set-up out of them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

__all__ = ["enter_repo_root", "notebook_path", "notebook_setup"]


def notebook_path(name: str) -> Path:
    """Path of ``notebooks/<name>.ipynb`` in this repository (for papermill-in-papermill runs)."""
    path = Path(__file__).resolve().parents[2] / "notebooks" / f"{name}.ipynb"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found; the notebooks live in the repository checkout "
            "(install with pip install -e . from the repository root)"
        )
    return path


def enter_repo_root() -> Path:
    """When Jupyter starts in ``notebooks/``, move to the repository root so that
    ``data/``, ``runs/`` and ``figures/`` mean the same as on the command line. Returns the cwd."""
    cwd = Path.cwd()
    if cwd.name == "notebooks" and (cwd.parent / "pyproject.toml").is_file():
        os.chdir(cwd.parent)
    return Path.cwd()


def notebook_setup(num_threads: Optional[int] = None) -> Path:
    """Set up a notebook kernel: repository root as cwd, inline figures, torch threads,
    and table display that fits the page (one decimal, every column, wrapped width).

    Progress bars are plain text (``tqdm.auto`` gives the console bar) so that an
    executed notebook opened later shows each bar as it ended, not a widget frozen
    at 0 % whose state papermill never saved.

    Args:
        num_threads: torch CPU threads of this kernel; ``None`` keeps torch's default.
    Returns:
        the working directory (the repository root when started in ``notebooks/``).
    """
    import pandas as pd
    import torch

    root = enter_repo_root()
    try:
        from IPython import get_ipython

        shell = get_ipython()
        if shell is not None:
            shell.run_line_magic("matplotlib", "inline")
    except ImportError:  # plain Python: nothing to set up for figures
        pass
    if num_threads:
        torch.set_num_threads(int(num_threads))
    _text_progress_bars()
    pd.set_option("display.float_format", "{:.1f}".format)
    pd.set_option("display.max_columns", None)
    pd.set_option("display.width", 120)
    return root


def _text_progress_bars() -> None:
    """Make ``tqdm.auto.tqdm`` the console bar for this kernel: its final state is ordinary
    text output, saved in the notebook (a widget bar is saved without its state)."""
    import tqdm.auto
    import tqdm.std

    tqdm.auto.tqdm = tqdm.std.tqdm


def show_table(df, digits: int = 1):
    """Display a DataFrame with ``digits`` decimals and :data:`~pipa_core.eval.metrics.ABSENT`
    for undefined values (a class absent from the evaluated images), as every table does.
    Returns the Styler (the cell shows it when it is the cell's last expression)."""
    from pipa_core.eval.metrics import ABSENT

    return df.style.format(precision=digits, na_rep=ABSENT)


def check_parameters(values: dict, types: dict) -> dict:
    """The notebook parameters named in ``types``, converted to those types, as the command
    line converts ``--set`` values (same rules, same messages).

    Papermill injects ``-p`` values as it parses them (``-p max_iters abc`` gives a
    string); checking them in the first code cell turns a deep failure into one line.

    Args:
        values: the notebook's namespace (``globals()``) after papermill's injection.
        types: parameter name -> annotation, e.g. ``{"max_iters": Optional[int]}``.
    Raises:
        pipa_core.config.ConfigError: ``"notebook parameter max_iters: expected an integer,
        got 'abc'"``.
    """
    from pipa_core.config.typed import ConfigError, coerce, parse_scalar

    out = {}
    for name, tp in types.items():
        value = values[name]
        if isinstance(value, str) and tp is not str:
            value = parse_scalar(value, name)
        try:
            out[name] = coerce(value, tp, name)
        except ConfigError as exc:
            raise ConfigError(f"notebook parameter {exc}") from None
    return out
