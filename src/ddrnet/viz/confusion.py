"""The confusion figure: the row-normalised confusion matrix and the per-class IoU of an
evaluation JSON (``ddrnet eval --json``, drawn by ``ddrnet viz confusion``); with
``ddrnet eval --details``, each class's boundary IoU and small objects found beside its IoU."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ddrnet.atomic import nan_for_null
from ddrnet.data.labels import CAMVID, CITYSCAPES, COCO_STUFF
from ddrnet.errors import MissingFileError, UsageError
from ddrnet.models.metadata import ClassInfo
from ddrnet.viz.figure import DPI, new_figure, prepare_output, save_figure

KNOWN_LABEL_SETS = (CAMVID, CITYSCAPES, COCO_STUFF)
LEGIBLE_CLASSES = 30  # up to this many classes the matrix cells carry their numbers
# The most classes a confusion figure draws: COCO-Stuff's 171 fit; a figure of 700 classes
# would be 40,000 pixels a side.
MAX_FIGURE_CLASSES = 256
# In a report's shape (``check_shape``): a number, or null for a score never scored.
NUMBER = "number"


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
    if path.is_dir():
        raise UsageError(f"{path}: a folder; give the file 'ddrnet eval --json' wrote")
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
    check_shape(path, per_class, {str: NUMBER}, "per_class_IoU")
    names = [str(name) for name in per_class]
    if len(names) > MAX_FIGURE_CLASSES:
        raise UsageError(
            f"{path}: {len(names)} classes, more than a figure draws ({MAX_FIGURE_CLASSES})"
        )
    iou = np.array([np.nan if v is None else float(v) for v in per_class.values()], np.float64)
    check_shape(path, document["confusion_matrix"], [[NUMBER]], "confusion_matrix")
    try:
        matrix = np.asarray(document["confusion_matrix"], dtype=np.float64)
    except ValueError:  # rows of different lengths
        raise UsageError(f"{path}: confusion_matrix: rows of different lengths") from None
    if matrix.shape != (len(names), len(names)):
        raise UsageError(
            f"{path}: confusion_matrix has shape {matrix.shape} but per_class_IoU names "
            f"{len(names)} classes"
        )
    if not (matrix >= 0).all():
        raise UsageError(f"{path}: confusion_matrix: pixel counts must be >= 0")
    return names, matrix, iou, document


def check_shape(path: str | Path, value: Any, shape: Any, where: str) -> None:
    """A ``UsageError`` naming ``path`` and the field (``where``) of a report whose ``value``
    does not have ``shape``: ``NUMBER`` (or null), ``str``, ``[shape]`` (a list of them),
    ``{str: shape}`` (an object of any keys) or ``{"key": shape, ...}`` (an object with at
    least these keys). Reports are files a user may have edited or cut."""
    if shape == NUMBER:
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise UsageError(f"{path}: {where}: expected a number, got {str(value)[:40]!r}")
    elif shape is str:
        if not isinstance(value, str):
            raise UsageError(f"{path}: {where}: expected text, got {str(value)[:40]!r}")
    elif isinstance(shape, list):
        if not isinstance(value, list):
            raise UsageError(f"{path}: {where}: expected a list")
        for index, item in enumerate(value):
            check_shape(path, item, shape[0], f"{where}[{index}]")
    elif not isinstance(value, dict):
        raise UsageError(f"{path}: {where}: expected an object")
    elif list(shape) == [str]:
        for key, item in value.items():
            check_shape(path, item, shape[str], f"{where}.{key}")
    else:
        for key, item_shape in shape.items():
            if key not in value:
                raise UsageError(f"{path}: {where}: missing {key}")
            check_shape(path, value[key], item_shape, f"{where}.{key}")


def read_eval_section(
    path: str | Path, key: str, field: str, kind: type, option: str, shape: Any = None
) -> tuple[str, dict[str, Any]]:
    """A model's label (its checkpoint's name) and the ``key`` section of an evaluation
    JSON, which must hold ``field`` of type ``kind`` and have ``shape`` (``check_shape``);
    a file without it is a ``UsageError`` that says how to write it (``ddrnet eval`` with
    ``option``)."""
    _, _, _, document = read_eval_json(path)
    section = document.get(key)
    if not isinstance(section, dict) or not isinstance(section.get(field), kind):
        raise UsageError(
            f"{path}: no {key}; write it with 'ddrnet eval CHECKPOINT {option} --json FILE'"
        )
    if shape is not None:
        check_shape(path, section, shape, key)
    label = Path(str(document.get("checkpoint") or Path(path).stem)).stem
    return label, nan_for_null(section)


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


DETAIL_HATCHES = ("////", "...")


def _draw_iou_bars(
    axis: Any,
    iou: np.ndarray,
    info: ClassInfo,
    miou: Any,
    details: Sequence[tuple[str, np.ndarray]] = (),
) -> None:
    """Per-class IoU in percent (``(C,)``, ``nan`` for classes never seen) as horizontal bars
    in the classes' colours, first class on top, with the mIoU as a dashed line. Each of
    ``details`` (``(label, (C,) percent)``, from ``_detail_rows``) adds a hatched bar in the
    same colour under each class's IoU, so that a class good on area and poor on edges or
    small objects stands out."""
    rows = [("IoU", iou, None), *((name, v, h) for (name, v), h in zip(details, DETAIL_HATCHES))]
    thickness = 0.8 / len(rows)
    colours = [_hex(c) for c in info.palette]
    for slot, (_, values, hatch) in enumerate(rows):
        centres = np.arange(len(iou)) - 0.4 + thickness * (slot + 0.5)
        axis.barh(
            centres, np.nan_to_num(values, nan=0.0), height=thickness, color=colours,
            hatch=hatch, edgecolor="black", linewidth=0.5,
        )  # fmt: skip
        for centre, value in zip(centres, values):
            never = "n/a (never seen)" if slot == 0 else "-"
            text = never if np.isnan(value) else f"{value:.1f}"
            x = (0 if np.isnan(value) else value) + 1
            axis.text(x, centre, text, va="center", fontsize=8 if len(rows) == 1 else 6)
    axis.set_yticks(np.arange(len(iou)), info.names, fontsize=8)
    axis.invert_yaxis()  # first class on top, as in the matrix
    axis.set_xlim(0, 105)
    axis.set_xlabel("IoU (%)" if not details else "%")
    title = f"per-class IoU, mIoU {miou:.2f}%" if isinstance(miou, float) else "IoU"
    axis.set_title(
        title if not details else f"{title}\nwith " + ", ".join(name for name, _ in details)
    )
    if isinstance(miou, float) and not math.isnan(miou):
        axis.axvline(miou, color="black", linestyle="--", linewidth=1)
    axis.grid(axis="x", alpha=0.3)
    if details:
        from matplotlib.patches import Patch

        legend = [
            Patch(facecolor="#bbbbbb", edgecolor="black", hatch=h, label=name)
            for name, _, h in rows
        ]
        axis.legend(handles=legend, loc="lower right", fontsize=7)


def _detail_rows(document: dict[str, Any], names: Sequence[str]) -> list[tuple[str, np.ndarray]]:
    """The ``--details`` scores of an evaluation JSON as ``(label, (C,) percent)`` rows in the
    order of ``names``; none for a file written without ``--details``."""
    boundary = document.get("boundary_IoU")
    small = (document.get("objects_found") or {}).get("small", {}).get("per_class")
    if not isinstance(boundary, dict) or not isinstance(small, dict):
        return []

    def row(values: dict[str, Any]) -> np.ndarray:
        return np.array([np.nan if values.get(n) is None else float(values[n]) for n in names])

    return [("boundary IoU", row(boundary)), ("small objects found", row(small))]


def plot_confusion(metrics_json: str | Path, output: str | Path) -> Path:
    """Row-normalised confusion matrix (percent of each true class) and per-class IoU bars
    (with boundary IoU and small objects found where the file has them)."""
    output = prepare_output(output)
    names, matrix, iou, document = read_eval_json(metrics_json)
    figure, (left, right) = new_figure(
        confusion_figure_size(len(names)), 1, 2, gridspec_kw={"width_ratios": [1.15, 1]}
    )
    _draw_matrix(figure, left, row_normalize(matrix) * 100, names)
    info = class_info_for_names(names)
    _draw_iou_bars(right, iou, info, document.get("mIoU"), _detail_rows(document, names))
    source = ", ".join(
        f"{key} {document[key]}"
        for key in ("checkpoint", "dataset", "split", "images")
        if document.get(key) is not None
    )
    figure.suptitle(source or Path(metrics_json).name, fontsize=10)
    figure.tight_layout()
    return save_figure(figure, output)
