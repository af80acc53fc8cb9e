"""Run-directory logging: metrics.jsonl, TensorBoard scalars, image grids (rank 0 only).

Layout of a run directory::

    config.json / config.yaml    the full TrainConfig
    metrics.jsonl                one JSON object per logged step / evaluation
    tb/                          TensorBoard event files
    images/iter_XXXXXXX.png      source | target | pseudo-label | mixed image | mixed label
    checkpoints/latest.pt        see pipa_core.uda.checkpoint
    result.json                  final metrics of train()
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from pipa_core.io import atomic_write_text
from pipa_core.labels import colorize


class RunLogger:
    """Writes metrics and images into ``run_dir``; every method is a no-op when ``enabled`` is False.

    Args:
        run_dir: the run directory (created).
        enabled: False on DDP ranks other than 0.
        tensorboard: also write TensorBoard scalars under ``run_dir/tb``.
    """

    def __init__(
        self,
        run_dir: str | Path,
        enabled: bool = True,
        tensorboard: bool = True,
        resume_iteration: int | None = None,
    ):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self._tb = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / "metrics.jsonl"
        _truncate_metrics(path, resume_iteration)
        self._metrics = open(path, "a", buffering=1)  # noqa: SIM115
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.run_dir / "tb"))

    def log(self, step: int, values: dict[str, Any], kind: str = "train") -> None:
        """Append ``{"kind", "iter", **values}`` to metrics.jsonl and scalars to TensorBoard."""
        if not self.enabled:
            return
        row = {"kind": kind, "iter": int(step)}
        row.update({k: _plain(v) for k, v in values.items()})
        self._metrics.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "iter" and math.isfinite(float(v)):
                    self._tb.add_scalar(f"{kind}/{k}", float(v), int(step))

    def save_grid(
        self, step: int, panels: dict[str, torch.Tensor], max_rows: int = 2
    ) -> Path | None:
        """Save a PNG grid: one row per image, one column per panel.

        ``panels`` maps a title to ``(B, 3, H, W)`` images in [0, 1] or ``(B, H, W)``
        train-ID labels (colourised with :func:`pipa_core.labels.colorize`).
        Panels of different sizes are resized (nearest) to the first one.
        """
        if not self.enabled or not panels:
            return None
        cols = [_to_rgb(v[:max_rows]) for v in panels.values()]
        h, w = cols[0].shape[1:3]
        cols = [_resize(c, h, w) for c in cols]
        rows = [np.concatenate([c[i] for c in cols], axis=1) for i in range(cols[0].shape[0])]
        grid = np.concatenate(rows, axis=0)
        path = self.run_dir / "images" / f"iter_{step:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.png")
        Image.fromarray(grid).save(tmp)
        tmp.replace(path)
        (self.run_dir / "images" / "columns.txt").write_text(" | ".join(panels) + "\n")
        return path

    def close(self) -> None:
        if not self.enabled:
            return
        self._metrics.close()
        if self._tb is not None:
            self._tb.close()


def _truncate_metrics(path: Path, resume_iteration: int | None) -> None:
    """Fresh run: empty metrics.jsonl. Resumed run: drop rows logged after the checkpoint
    (they will be logged again), so every iteration appears once."""
    if not path.is_file():
        return
    keep = []
    if resume_iteration is not None:
        for line in path.read_text().splitlines():
            try:
                if json.loads(line).get("iter", 0) <= resume_iteration:
                    keep.append(line)
            except json.JSONDecodeError:  # a line cut by a crash
                continue
    atomic_write_text(path, "".join(line + "\n" for line in keep))


def _plain(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.item() if v.numel() == 1 else v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v


def _to_rgb(x: torch.Tensor) -> np.ndarray:
    """``(B,3,H,W)`` float in [0,1] or ``(B,H,W)`` labels -> ``(B,H,W,3)`` uint8."""
    x = x.detach().float().cpu() if x.is_floating_point() else x.detach().cpu()
    if x.dim() == 4:
        return (x.clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    return np.stack([colorize(lb.numpy()) for lb in x])


def _resize(x: np.ndarray, h: int, w: int) -> np.ndarray:
    if x.shape[1:3] == (h, w):
        return x
    t = torch.from_numpy(x).permute(0, 3, 1, 2).float()
    t = torch.nn.functional.interpolate(t, size=(h, w), mode="nearest")
    return t.permute(0, 2, 3, 1).numpy().astype(np.uint8)
