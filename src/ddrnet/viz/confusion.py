"""The confusion figure: the row-normalised confusion matrix and the per-class IoU of an
evaluation JSON (``ddrnet eval --json``, drawn by ``ddrnet viz confusion``)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ddrnet.data.labels import CAMVID, CITYSCAPES, COCO_STUFF
from ddrnet.errors import MissingFileError, UsageError
from ddrnet.models.metadata import ClassInfo
from ddrnet.viz.figure import DPI, new_figure, prepare_output, save_figure

KNOWN_LABEL_SETS = (CAMVID, CITYSCAPES, COCO_STUFF)
LEGIBLE_CLASSES = 30  # up to this many classes the matrix cells carry their numbers


def row_normalize(matrix: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """Each row of a ``(C, C)`` confusion matrix (rows = ground truth) divided by its sum.

    Entry ``[i, j]`` is the fraction (0..1) of class ``i``'s pixels predicted as ``j``; the
    diagonal is the per-class recall. Rows without any ground-truth pixel have no meaningful
    fractions and are ``nan`` (drawn blank), not zeros, which would read as "always wrong".
    """
    array = np.asarray(matrix, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] != array.shape[1]:
        raise ValueError(f"a confusion matrix must be square (C, C), got shape {array.shape}")
    totals = array.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, array / np.where(totals > 0, totals, 1), np.nan)


def class_info_for_names(names: Sequence[str]) -> ClassInfo:
    """Colours for class names read from a metrics file: the palette of the known data set
    with exactly these classes (CamVid, Cityscapes, COCO-Stuff), else distinct colours."""
    for labels in KNOWN_LABEL_SETS:
        if tuple(labels.class_names) == tuple(names):
            return ClassInfo(tuple(names), tuple(labels.palette))
    return ClassInfo.of(len(names), names)


def _hex(colour: Sequence[int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(v) for v in colour[:3]))


def read_eval_json(path: str | Path) -> tuple[list[str], np.ndarray, np.ndarray, dict[str, Any]]:
    """Class names, the ``(C, C)`` confusion matrix, ``(C,)`` IoU in percent (``nan`` for
    classes never seen) and the whole document of an ``ddrnet eval --json`` file."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: no such metrics file")
    try:
        document = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UsageError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(document, dict):
        raise UsageError(f"{path}: expected a JSON object from 'ddrnet eval --json'")
    missing = [key for key in ("confusion_matrix", "per_class_IoU") if key not in document]
    if missing:
        raise UsageError(
            f"{path}: missing {', '.join(missing)}; write it with 'ddrnet eval CHECKPOINT --json'"
        )
    per_class = document["per_class_IoU"]
    if not isinstance(per_class, dict):
        raise UsageError(f"{path}: per_class_IoU must map class names to IoU in percent")
    names = [str(name) for name in per_class]
    iou = np.array([np.nan if v is None else float(v) for v in per_class.values()], np.float64)
    matrix = np.asarray(document["confusion_matrix"], dtype=np.float64)
    if matrix.shape != (len(names), len(names)):
        raise UsageError(
            f"{path}: confusion_matrix has shape {matrix.shape} but per_class_IoU names "
            f"{len(names)} classes"
        )
    return names, matrix, iou, document


def confusion_figure_size(num_classes: int) -> tuple[int, int]:
    """``(width, height)`` in pixels of the confusion figure for ``num_classes`` classes."""
    side = max(6.0, 0.55 * num_classes + 2.5)  # inches: ~0.55 in per matrix row
    return round((2 * side + 1) * DPI), round(side * DPI)


def _draw_matrix(figure: Any, axis: Any, percent: np.ndarray, names: Sequence[str]) -> None:
    """The ``(C, C)`` row-normalised matrix in percent on ``axis``, with its colour bar."""
    import matplotlib

    count = len(names)
    # Grey for nan: the rows of classes absent from the ground truth.
    cmap = matplotlib.colormaps["Blues"].with_extremes(bad="#dddddd")
    shown = axis.imshow(np.ma.masked_invalid(percent), cmap=cmap, vmin=0, vmax=100)
    axis.set_xticks(range(count), names, rotation=60, ha="right", fontsize=8)
    axis.set_yticks(range(count), names, fontsize=8)
    axis.set_xlabel("predicted class")
    axis.set_ylabel("true class")
    axis.set_title(
        "confusion matrix: % of each true class's pixels\n"
        "(rows sum to 100; grey: class absent from the ground truth)"
    )
    if count <= LEGIBLE_CLASSES:
        for row in range(count):
            for column in range(count):
                value = percent[row, column]
                if np.isnan(value) or value < 0.5:
                    continue
                axis.text(
                    column,
                    row,
                    f"{value:.0f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if value > 55 else "black",
                )
    figure.colorbar(shown, ax=axis, fraction=0.046, pad=0.02).set_label("% of true class")


def _draw_iou_bars(axis: Any, iou: np.ndarray, info: ClassInfo, miou: Any) -> None:
    """Per-class IoU in percent (``(C,)``, ``nan`` for classes never seen) as horizontal bars
    in the classes' colours, first class on top, with the mIoU as a dashed line."""
    positions = np.arange(len(iou))
    heights = np.nan_to_num(iou, nan=0.0)
    colours = [_hex(c) for c in info.palette]
    axis.barh(positions, heights, color=colours, edgecolor="black", linewidth=0.5)
    for position, value in zip(positions, iou):
        text = "n/a (never seen)" if np.isnan(value) else f"{value:.1f}"
        axis.text((0 if np.isnan(value) else value) + 1, position, text, va="center", fontsize=8)
    axis.set_yticks(positions, info.names, fontsize=8)
    axis.invert_yaxis()  # first class on top, as in the matrix
    axis.set_xlim(0, 105)
    axis.set_xlabel("IoU (%)")
    axis.set_title(f"per-class IoU, mIoU {miou:.2f}%" if isinstance(miou, float) else "IoU")
    if isinstance(miou, float) and not math.isnan(miou):
        axis.axvline(miou, color="black", linestyle="--", linewidth=1)
    axis.grid(axis="x", alpha=0.3)


def plot_confusion(metrics_json: str | Path, output: str | Path) -> Path:
    """Row-normalised confusion matrix (percent of each true class) and per-class IoU bars."""
    output = prepare_output(output)
    names, matrix, iou, document = read_eval_json(metrics_json)
    figure, (left, right) = new_figure(
        confusion_figure_size(len(names)), 1, 2, gridspec_kw={"width_ratios": [1.15, 1]}
    )
    _draw_matrix(figure, left, row_normalize(matrix) * 100, names)
    _draw_iou_bars(right, iou, class_info_for_names(names), document.get("mIoU"))
    source = ", ".join(
        f"{key} {document[key]}"
        for key in ("checkpoint", "dataset", "split", "images")
        if document.get(key) is not None
    )
    figure.suptitle(source or Path(metrics_json).name, fontsize=10)
    figure.tight_layout()
    return save_figure(figure, output)
