"""Pictures of what a model sees and how training went.

Six figures, each written as one PNG (``ddrnet viz ...`` on the command line), one module
each:

- ``features.plot_features``: the high- and low-resolution branches before and after every
  bilateral fusion, the DAPPM scales, class-probability maps of the top classes and an
  entropy map.
- ``confusion.plot_confusion``: the row-normalised confusion matrix and per-class IoU of an
  evaluation JSON (``ddrnet eval --json``).
- ``curves.plot_curves``: loss, validation mIoU, learning rate and throughput from a run's
  ``metrics.jsonl``.
- ``compare.plot_compare``: one image through several models, side by side with one legend.
- ``robustness.plot_robustness``: mIoU against corruption severity for several models
  (``ddrnet eval --corruptions ... --json``).
- ``confidence.plot_confidence``: reliability diagram, what flagging low-confidence pixels
  keeps and catches, per-class confidence against precision (``ddrnet eval --confidence
  --json``).

``labels.write_label_pictures`` draws a data set's own labels (``ddrnet data --show``).

``figure.py`` holds what they share (the output check, exact-size figures, saving). Label
pictures go through ``ddrnet.render`` (the data set's palette, legends with shares);
matplotlib (object-oriented, without pyplot) draws the rest and is imported inside the
functions that need it, so importing this package stays cheap.
"""

from __future__ import annotations

from ddrnet.viz.compare import TITLE_HEIGHT, compare_pictures, load_models, plot_compare, titled
from ddrnet.viz.confidence import CONFIDENCE_SIZE, plot_confidence, read_confidence
from ddrnet.viz.confusion import (
    class_info_for_names,
    confusion_figure_size,
    plot_confusion,
    read_eval_json,
    row_normalize,
)
from ddrnet.viz.curves import CURVES_SIZE, plot_curves, read_metrics_jsonl
from ddrnet.viz.features import (
    REDUCTIONS,
    Panel,
    compute_features,
    draw_panels,
    entropy_map,
    feature_figure_size,
    feature_panels,
    plot_features,
    summarize_channels,
)
from ddrnet.viz.figure import DPI
from ddrnet.viz.robustness import plot_robustness, read_robustness, robustness_figure_size

__all__ = [
    "CONFIDENCE_SIZE",
    "CURVES_SIZE",
    "DPI",
    "REDUCTIONS",
    "TITLE_HEIGHT",
    "Panel",
    "class_info_for_names",
    "compare_pictures",
    "compute_features",
    "confusion_figure_size",
    "draw_panels",
    "entropy_map",
    "feature_figure_size",
    "feature_panels",
    "load_models",
    "plot_confidence",
    "plot_compare",
    "plot_confusion",
    "plot_curves",
    "plot_features",
    "plot_robustness",
    "read_confidence",
    "read_eval_json",
    "read_metrics_jsonl",
    "read_robustness",
    "robustness_figure_size",
    "row_normalize",
    "summarize_channels",
    "titled",
]
