"""Where the embedded benchmark's domain gap lies: layout vs. look.

The synthetic generator samples a *world* (camera, street layout, objects) and
then renders it with a domain's *look* (palette, shading, textures, camera
effects). Rendering each domain's worlds with each domain's look separates the
two halves of the gap: a model scored on (target world, source look) meets
only the layout shift, on (source world, target look) only the appearance shift.

    python -m pipa_core.eval.domain_gap                       # the shipped warm start
    python -m pipa_core.eval.domain_gap --weights runs/quickstart/dacs/seed0 --images 100
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from pipa_core.eval.metrics import SegmentationMetric

COMBINATIONS = (
    ("source", "source"),
    ("target", "source"),
    ("source", "target"),
    ("target", "target"),
)


def render_cross(
    world_domain: str,
    look_domain: str,
    index: int,
    height: int = 128,
    width: int = 256,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """One held-out scene: a ``world_domain`` world drawn with the ``look_domain`` look.

    Returns ``img`` uint8 ``(H, W, 3)`` and ``label`` uint8 ``(H, W)``. Scenes are
    drawn from a split code of their own (indices from 10 000 on), so they are
    none of the benchmark's train / val images.
    """
    from pipa_core.data.synthetic.generate import _rng
    from pipa_core.data.synthetic.render import apply_look, rasterize, sample_look
    from pipa_core.data.synthetic.scene import sample_world

    rng = _rng(seed, world_domain, "val", 10_000 + index)
    world = sample_world(rng, world_domain, n_frames=1)
    look = sample_look(rng, look_domain)
    canvas = rasterize(world, 0.0, height, width)
    canvas.domain = look_domain
    return apply_look(
        canvas, look, _rng(seed, look_domain, "val", 10_000 + index, frame=1)
    ), canvas.label


@torch.no_grad()
def cross_domain_miou(
    model: nn.Module, images: int = 40, combinations: Sequence[tuple[str, str]] = COMBINATIONS
) -> list[dict]:
    """mIoU (cs19, %) and per-class IoU of ``model`` on each (world, look) combination.

    The model predicts whole 128x256 images in eval mode. Returns one dict per
    combination: ``{"world", "look", "mIoU", "per_class_IoU"}``.
    """
    model.eval()
    device = next(model.parameters()).device
    rows = []
    for world, look in combinations:
        metric = SegmentationMetric()
        for i in range(images):
            img, label = render_cross(world, look, i)
            x = torch.from_numpy(img).permute(2, 0, 1).float().div(255)[None].to(device)
            pred = model.predict(x).argmax(1)[0].cpu()
            metric.update(pred, torch.from_numpy(label.astype(np.int64)))
        res = metric.compute("cs19")
        rows.append(
            {"world": world, "look": look, "mIoU": res.miou, "per_class_IoU": res.per_class}
        )
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(
        prog="python -m pipa_core.eval.domain_gap",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--weights",
        default="synthetic_warm_start",
        help="exported weights, a run directory or a shipped name",
    )
    p.add_argument("--images", type=int, default=40, help="scenes per combination")
    p.add_argument("--json", help="also write the rows to this file")
    args = p.parse_args(argv)
    from pipa_core.assets import resolve_weights
    from pipa_core.models import build_segmentor
    from pipa_core.models.pretrained import read_state_dict

    torch.set_num_threads(1)
    path = resolve_weights(args.weights)
    sd = read_state_dict(path)
    channels = sd["decoder.conv_seg.weight"].shape[1]
    model = build_segmentor("daformer_mit_b0", decoder_channels=channels, proj_heads=())
    model.load_weights(path)
    rows = cross_domain_miou(model, args.images)
    print(f"{'world':>7} {'look':>7} {'mIoU':>6}")
    for r in rows:
        print(f"{r['world']:>7} {r['look']:>7} {r['mIoU']:6.1f}")
    if args.json:
        from pipa_core.io import atomic_write_json

        atomic_write_json(args.json, {"weights": str(path), "images": args.images, "rows": rows})
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
