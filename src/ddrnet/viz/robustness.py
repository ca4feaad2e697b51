"""The robustness figure: mIoU against corruption severity, one panel per corruption, one
line per model, from evaluation JSONs written by ``ddrnet eval --corruptions ... --json``
(drawn by ``ddrnet viz robustness``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ddrnet.errors import UsageError
from ddrnet.viz.confusion import NUMBER, read_eval_section
from ddrnet.viz.figure import new_figure, prepare_output, save_figure

COLUMNS = 4
PANEL_SIZE = (400, 300)  # pixels of one corruption's panel


# What the figure reads of a report's corruptions section.
SHAPE = {"mIoU": {str: {str: NUMBER}}, "clean_mIoU": NUMBER, "mean_per_corruption": {str: NUMBER}}


def read_robustness(path: str | Path) -> tuple[str, dict[str, Any]]:
    """A model's label (its checkpoint's name) and the ``corruptions`` section of an evaluation
    JSON; a file without one is a ``UsageError`` that says how to write it."""
    label, section = read_eval_section(
        path, "corruptions", "mIoU", dict, "--corruptions all", SHAPE
    )
    for name, row in section["mIoU"].items():
        if not all(str(severity).isdigit() for severity in row):
            raise UsageError(f"{path}: corruptions.mIoU.{name}: severities are whole numbers")
    return label, section


def robustness_figure_size(corruptions: int) -> tuple[int, int]:
    """``(width, height)`` in pixels: a panel per corruption and one for the summary."""
    rows, columns = _grid(corruptions)
    return columns * PANEL_SIZE[0], rows * PANEL_SIZE[1] + 60


def plot_robustness(metrics_jsons: Sequence[str | Path], output: str | Path) -> Path:
    """mIoU (%) by severity for each corruption the files share, each model's clean mIoU
    dashed in its colour, and a last panel with each model's mean over the corruptions
    against its clean mIoU."""
    output = prepare_output(output)
    if not metrics_jsons:
        raise UsageError("give at least one evaluation JSON written with --corruptions")
    models = [read_robustness(path) for path in metrics_jsons]
    names = [n for n in models[0][1]["mIoU"] if all(n in s["mIoU"] for _, s in models)]
    if not names:
        raise UsageError("the files share no corruption: evaluate them with the same names")
    figure, axes = new_figure(robustness_figure_size(len(names)), *_grid(len(names)))
    axes = list(axes.flat)
    colours = [f"C{k}" for k in range(len(models))]
    for axis, name in zip(axes, names):
        for (_, section), colour in zip(models, colours):
            row = section["mIoU"][name]
            severities = sorted(int(s) for s in row)
            axis.plot(severities, [row[str(s)] for s in severities], "o-", color=colour)
            axis.axhline(section["clean_mIoU"], color=colour, linestyle="--", linewidth=0.8)
        axis.set_title(name, fontsize=10)
        axis.set_ylim(0, 100)
        axis.set_xticks(range(1, 6))
        axis.grid(alpha=0.3)
    _draw_summary(axes[len(names)], models, names, colours)
    for axis in axes[len(names) + 1 :]:
        axis.set_visible(False)
    figure.supxlabel("severity (dashed: clean mIoU)", fontsize=9)
    figure.supylabel("mIoU (%)", fontsize=9)
    figure.tight_layout()
    return save_figure(figure, output)


def _grid(corruptions: int) -> tuple[int, int]:
    """``(rows, columns)`` of panels: one per corruption and one for the summary."""
    return math.ceil((corruptions + 1) / COLUMNS), COLUMNS


def _draw_summary(axis: Any, models: list, names: list[str], colours: list[str]) -> None:
    """Each model's mean mIoU over ``names`` (and severities) beside its clean mIoU."""
    for k, ((label, section), colour) in enumerate(zip(models, colours)):
        means = [section["mean_per_corruption"][name] for name in names]
        mean = sum(means) / len(means)
        clean = section["clean_mIoU"]
        axis.barh(2 * k, clean, color=colour, alpha=0.35)
        axis.barh(2 * k + 0.8, mean, color=colour)
        axis.text(1, 2 * k + 0.8, f"{label}: {mean:.1f} ({mean / clean:.2f} of clean)",
                  va="center", fontsize=7)  # fmt: skip
    axis.set_yticks([])
    axis.invert_yaxis()  # the first file on top
    axis.set_xlim(0, 100)
    axis.set_title("mean over the corruptions (pale: clean)", fontsize=10)
