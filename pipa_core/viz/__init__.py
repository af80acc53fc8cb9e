"""Visualisation: colourised masks, qualitative grids, seaborn figures, ipywidgets browsers."""

from pipa_core.viz.ablation import ablation_barplot, ablation_table
from pipa_core.viz.browser import SplitBrowser
from pipa_core.viz.figures import class_legend_handles, qualitative_grid, save_figure
from pipa_core.viz.masks import colorize, error_map, overlay, to_uint8_image
from pipa_core.viz.plots import ccd_barplot, ccd_table, confusion_heatmap, tsne_scatter

__all__ = [
    "SplitBrowser",
    "ablation_barplot",
    "ablation_table",
    "ccd_barplot",
    "ccd_table",
    "class_legend_handles",
    "colorize",
    "confusion_heatmap",
    "error_map",
    "overlay",
    "qualitative_grid",
    "save_figure",
    "to_uint8_image",
    "tsne_scatter",
]
