"""ipywidgets browser: a slider over a dataset split showing image | ground truth | prediction | errors.

The widget is plain ipywidgets (no kernel needed to build it, so it can be
tested and scripted): panels are composed with numpy and sent as one PNG to a
``widgets.Image``. In JupyterLab, display ``SplitBrowser(...)`` or its ``.widget``.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from torch import nn

from pipa_core.eval.features import _model_device, predict_labels
from pipa_core.labels import CLASSES, IGNORE_INDEX
from pipa_core.viz.masks import colorize, error_map, to_numpy_label, to_uint8_image


def _png(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


class SplitBrowser:
    """Browse a dataset split with a slider; with a model, also its prediction and error map.

    Args:
        dataset: map-style dataset of samples ``{"img" (3,H,W), "label" (H,W), "name"}``.
        model: optional segmentor; predictions use ``model.predict`` (or upsampled logits).
        device: where the model runs (default: the model's device).
        gap: pixels between panels.

    Attributes:
        slider (``IntSlider``), image (``Image``), caption (``HTML``), widget (``VBox``).
    """

    def __init__(self, dataset, model: nn.Module | None = None, *, device=None, gap: int = 4):
        import ipywidgets as widgets

        if len(dataset) == 0:
            raise ValueError("the dataset is empty; nothing to browse")
        self.dataset = dataset
        self.model = model
        self.device = (
            torch.device(device)
            if device is not None
            else (_model_device(model) if model is not None else torch.device("cpu"))
        )
        self.gap = gap
        self.slider = widgets.IntSlider(
            value=0,
            min=0,
            max=len(dataset) - 1,
            step=1,
            description="index",
            continuous_update=False,
        )
        self.image = widgets.Image(format="png")
        self.caption = widgets.HTML()
        self.widget = widgets.VBox([self.slider, self.caption, self.image])
        self.slider.observe(lambda change: self.show(change["new"]), names="value")
        self.show(0)

    def panels(self, index: int) -> tuple[np.ndarray, dict]:
        """The composed RGB strip ``(H, W', 3)`` uint8 of sample ``index`` and facts about it."""
        s = self.dataset[index]
        img, gt = s["img"], to_numpy_label(s["label"])
        parts = [to_uint8_image(img), colorize(gt)]
        info = {"name": s.get("name", str(index)), "index": index}
        if self.model is not None:
            was = self.model.training
            self.model.eval()
            try:
                with torch.no_grad():
                    pred = predict_labels(self.model, img[None].to(self.device))[0]
            finally:
                self.model.train(was)
            pred = to_numpy_label(pred)
            parts += [colorize(pred), error_map(pred, gt)]
            valid = gt != IGNORE_INDEX
            info["pixel_accuracy"] = (
                float((pred[valid] == gt[valid]).mean() * 100) if valid.any() else None
            )
            info["predicted_classes"] = [CLASSES[c] for c in np.unique(pred) if c < len(CLASSES)]
        h = parts[0].shape[0]
        sep = np.full((h, self.gap, 3), 255, dtype=np.uint8)
        strip = [parts[0]]
        for p in parts[1:]:
            strip += [sep, p]
        return np.concatenate(strip, axis=1), info

    def show(self, index: int) -> None:
        """Render sample ``index`` into the widget."""
        rgb, info = self.panels(int(index))
        self.image.value = _png(rgb)
        cols = "image | ground truth" + (
            " | prediction | errors (white)" if self.model is not None else ""
        )
        acc = info.get("pixel_accuracy")
        extra = f" — pixel accuracy {acc:.1f}%" if acc is not None else ""
        self.caption.value = f"<b>{info['name']}</b> ({index + 1}/{len(self.dataset)}){extra}<br><small>{cols}</small>"

    def _ipython_display_(self):  # pragma: no cover - exercised only inside Jupyter
        from IPython.display import display

        display(self.widget)
