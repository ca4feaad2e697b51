"""The confidence figure: whether a model's confidence can be trusted, from evaluation JSONs
written by ``ddrnet eval --confidence --json`` (drawn by ``ddrnet viz confidence``), one
colour per model:

1. the reliability diagram: accuracy against mean confidence of each confidence bin (on the
   diagonal: as right as confident), with the ECE in the legend;
2. what flagging low-confidence pixels keeps and catches: for each threshold, the share of
   the pixels kept against the share of the errors below it;
3. per predicted class, mean confidence minus pixel precision (right of 0: over-confident).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ddrnet.errors import UsageError
from ddrnet.viz.confusion import NUMBER, read_eval_section
from ddrnet.viz.figure import new_figure, prepare_output, save_figure

CONFIDENCE_SIZE = (1500, 480)  # pixels of the whole figure


# What the figure reads of a report's confidence section.
SHAPE = {
    "ECE": NUMBER,
    "reliability": [{"pixels": NUMBER, "confidence": NUMBER, "accuracy": NUMBER}],
    "selective": [{"pixels": NUMBER, "errors_below": NUMBER, "min_confidence": NUMBER}],
    "predicted_class": {str: {"confidence": NUMBER, "precision": NUMBER}},
}


def read_confidence(path: str | Path) -> tuple[str, dict[str, Any]]:
    """A model's label (its checkpoint's name) and the ``confidence`` section of an evaluation
    JSON; a file without one is a ``UsageError`` that says how to write it."""
    return read_eval_section(path, "confidence", "reliability", list, "--confidence", SHAPE)


def plot_confidence(metrics_jsons: Sequence[str | Path], output: str | Path) -> Path:
    """The three panels of the module docstring for each file, written as one PNG."""
    output = prepare_output(output)
    if not metrics_jsons:
        raise UsageError("give at least one evaluation JSON written with --confidence")
    models = [read_confidence(path) for path in metrics_jsons]
    figure, (reliability, selective, classes) = new_figure(CONFIDENCE_SIZE, 1, 3)
    for k, (label, section) in enumerate(models):
        colour = f"C{k}"
        bins = [b for b in section["reliability"] if b["pixels"] > 0]
        reliability.plot(
            [b["confidence"] for b in bins],
            [b["accuracy"] for b in bins],
            "o-",
            color=colour,
            label=f"{label}: ECE {section['ECE']:.2f}%",
        )
        rows = section["selective"]
        selective.plot(
            [r["pixels"] for r in rows], [r["errors_below"] for r in rows], "o-", color=colour
        )
        for row in rows:
            selective.annotate(
                f"{row['min_confidence']:g}",
                (row["pixels"], row["errors_below"]),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
        _draw_class_gaps(classes, section["predicted_class"], k, len(models), colour)
    reliability.plot([0, 100], [0, 100], color="grey", linestyle="--", linewidth=0.8)
    percent = {"xlim": (0, 100), "ylim": (0, 100)}  # both panels are shares in percent
    reliability.set(
        **percent,
        xlabel="mean confidence of a bin (%)",
        ylabel="accuracy (%)",
        title="reliability (dashed: calibrated)",
    )
    reliability.legend(fontsize=7, loc="upper left")
    selective.set(
        **percent,
        xlabel="pixels at or above the threshold (%)",
        ylabel="errors below it (%)",
        title="flagging pixels under a confidence",
    )
    classes.axvline(0, color="grey", linewidth=0.8)
    classes.set(xlabel="confidence - precision (points)", title="per predicted class")
    for axis in (reliability, selective, classes):
        axis.title.set_fontsize(10)
        axis.grid(alpha=0.3)
    figure.tight_layout()
    return save_figure(figure, output)


def _draw_class_gaps(
    axis: Any, per_class: dict[str, dict[str, float]], k: int, models: int, colour: str
) -> None:
    """Horizontal bars of confidence minus precision, the first class on top, one bar per
    model in each class's row."""
    names = list(per_class)
    height = 0.8 / models
    positions = [row + k * height for row in range(len(names))]
    gaps = [per_class[n]["confidence"] - per_class[n]["precision"] for n in names]
    axis.barh(positions, gaps, height=height, color=colour)
    axis.set_yticks([row + 0.4 - height / 2 for row in range(len(names))], names, fontsize=7)
    axis.set_ylim(len(names), -height)
