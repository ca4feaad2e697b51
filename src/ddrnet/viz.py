"""Pictures of what a model sees and how training went.

Four figures, each written as one PNG (``ddrnet viz ...`` on the command line):

- ``plot_features``: the high- and low-resolution branches before and after every bilateral
  fusion, the DAPPM scales, class-probability maps of the top classes and an entropy map.
- ``plot_confusion``: the row-normalised confusion matrix and per-class IoU of an
  evaluation JSON (``ddrnet eval --json``).
- ``plot_curves``: loss, validation mIoU, learning rate and throughput from a run's
  ``metrics.jsonl``.
- ``plot_compare``: one image through several models, side by side with one legend.

Label pictures go through ``ddrnet.render`` (the data set's palette, legends with shares);
matplotlib (object-oriented, without pyplot) draws the rest and is imported inside the
functions that need it, so importing this module stays cheap.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn

from ddrnet import render
from ddrnet.data.labels import CAMVID, CITYSCAPES, COCO_STUFF
from ddrnet.engine.inference import normalize
from ddrnet.errors import MissingFileError, UsageError
from ddrnet.models.metadata import ClassInfo, class_info, normalisation

logger = logging.getLogger(__name__)

# Figures are saved without ``bbox_inches="tight"`` so that their pixel size is exactly
# ``figsize * DPI`` and predictable (tests and documentation rely on it).
DPI = 100
FEATURE_COLUMNS = 4
PANEL_INCHES = (4.0, 3.4)  # width, height of one panel of the feature grid, title included
TITLE_INCHES = 0.5  # room for the feature figure's own title
REDUCTIONS = ("mean-abs", "pca")
KNOWN_LABEL_SETS = (CAMVID, CITYSCAPES, COCO_STUFF)


# --------------------------------------------------------------------------------------------
# Small numeric helpers (tested against hand values)
# --------------------------------------------------------------------------------------------


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


def entropy_map(probabilities: np.ndarray | torch.Tensor, base: float = 2.0) -> np.ndarray:
    """Per-pixel entropy ``-sum_c p_c log p_c`` of ``(C, H, W)`` class probabilities.

    ``base=2`` gives bits: 0 for a certain pixel, ``log2(C)`` when all classes are equally
    likely. Returns ``(H, W)`` float32.
    """
    p = torch.as_tensor(probabilities, dtype=torch.float64)
    # xlogy(0, 0) = 0: classes with zero probability add nothing (instead of nan).
    nats = -torch.special.xlogy(p, p).sum(dim=0)
    return (nats / math.log(base)).clamp(min=0).float().numpy()


def summarize_channels(feature: torch.Tensor | np.ndarray, method: str = "mean-abs") -> np.ndarray:
    """A ``(C, h, w)`` feature map as one ``(h, w)`` float32 map scaled to 0..1.

    ``mean-abs``: the channel mean of ``|activation|`` (where the layer responds at all).
    ``pca``: the projection on the first principal component of the channel vectors (the
    strongest pattern of variation), signed so that it correlates positively with
    ``mean-abs``, since a component's sign is arbitrary. Each map is min-max scaled on its own.
    """
    x = torch.as_tensor(feature).detach().float().cpu()
    if x.ndim != 3:
        raise ValueError(f"expected a (C, h, w) feature map, got shape {tuple(x.shape)}")
    energy = x.abs().mean(dim=0)
    if method == "mean-abs":
        result = energy
    elif method == "pca":
        channels, height, width = x.shape
        vectors = x.reshape(channels, -1).T  # (h*w, C): one sample per position
        vectors = vectors - vectors.mean(dim=0, keepdim=True)
        if height * width < 2 or float(vectors.abs().max()) == 0.0:
            result = torch.zeros(height, width)
        else:
            _, _, right = torch.linalg.svd(vectors, full_matrices=False)
            result = (vectors @ right[0]).reshape(height, width)
            centred_energy = energy - energy.mean()
            if float((result * centred_energy).sum()) < 0:
                result = -result
    else:
        raise ValueError(f"unknown channel summary {method!r}; choose from {REDUCTIONS}")
    low, high = float(result.min()), float(result.max())
    scaled = (result - low) / (high - low) if high > low else torch.zeros_like(result)
    return scaled.numpy().astype(np.float32)


# --------------------------------------------------------------------------------------------
# Class names and palettes
# --------------------------------------------------------------------------------------------


def class_info_for_names(names: Sequence[str]) -> ClassInfo:
    """Colours for class names read from a metrics file: the palette of the known data set
    with exactly these classes (CamVid, Cityscapes, COCO-Stuff), else distinct colours."""
    for labels in KNOWN_LABEL_SETS:
        if tuple(labels.class_names) == tuple(names):
            return ClassInfo(tuple(names), tuple(labels.palette))
    return ClassInfo.of(len(names), names)


def _hex(colour: Sequence[int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(v) for v in colour[:3]))


# --------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------


@dataclass
class Panel:
    """One picture of a grid: a 2-D map drawn with a colour map, or an RGB image."""

    title: str
    data: np.ndarray  # (h, w) float for maps, (H, W, 3) uint8 for pictures
    cmap: str | None = None
    vmin: float | None = None
    vmax: float | None = None
    colorbar: str | None = None  # colour-bar label; None draws no bar


def _stage_names(count: int) -> list[str]:
    """Paper names of the bilateral stages: '3', '4' (DDRNet-23) or '3a', '3b', '4' (-39)."""
    if count == 2:
        return ["3", "4"]
    return [f"3{chr(ord('a') + index)}" for index in range(count - 1)] + ["4"]


def _resolution(feature: torch.Tensor, image_height: int) -> str:
    """``'1/8, 64 ch, 60x45'`` for a ``(1, C, h, w)`` map of an ``image_height``-row input."""
    _, channels, height, width = feature.shape
    # Maps are ceil(H / stride) high, so round the ratio to the nearest power of two.
    stride = 2 ** max(0, round(math.log2(image_height / height)))
    return f"1/{stride}, {channels} ch, {width}x{height}"


@torch.no_grad()
def compute_features(model: nn.Module, image: np.ndarray) -> dict[str, torch.Tensor]:
    """``model.forward_features`` on an ``(H, W, 3)`` uint8 RGB image, with the model's own
    normalisation; every map is ``(1, C, h, w)`` on the CPU, ``logits`` at 1/8."""
    if not hasattr(model, "forward_features"):
        raise ValueError(f"{type(model).__name__} has no forward_features (not a DDRNet?)")
    mean, std = normalisation(model)
    device = next(model.parameters()).device
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].to(device)
    model.eval()
    features = model.forward_features(normalize(tensor, mean, std))
    return {name: value.float().cpu() for name, value in features.items()}


def feature_panels(
    model: nn.Module, image: np.ndarray, top_k: int = 5, reduction: str = "mean-abs"
) -> list[Panel]:
    """All panels of the feature figure, in reading order (rows of ``FEATURE_COLUMNS``).

    Output first (input, prediction with legend, entropy in bits, top-``top_k`` class
    probabilities at input resolution), then one row per bilateral stage (high branch before
    and after fusion, low branch before and after), then the low-branch input of DAPPM, its
    five scales, its output and the final high branch.
    """
    height, width = image.shape[:2]
    features = compute_features(model, image)
    info = class_info(model)
    logits = torch.nn.functional.interpolate(
        features["logits"], size=(height, width), mode="bilinear", align_corners=False
    )
    probabilities = logits.softmax(dim=1)[0]  # (C, H, W)
    labels = probabilities.argmax(dim=0).numpy().astype(np.uint8)
    num_classes = probabilities.shape[0]

    picture = render.overlay(image, render.colorize(labels, info.palette, num_classes))
    panels = [
        Panel(f"input ({width}x{height})", image),
        Panel(
            "prediction (legend: pixel share)",
            render.with_legend(picture, labels, info.names, info.palette),
        ),
        Panel(
            f"uncertainty: entropy in bits (max log2 {num_classes} = {math.log2(num_classes):.2f})",
            entropy_map(probabilities, base=2.0),
            cmap="inferno",
            vmin=0.0,
            vmax=math.log2(num_classes),
            colorbar="bits",
        ),
    ]
    # Top classes by predicted area: the maps a reader can check against the prediction.
    area = np.bincount(labels.ravel(), minlength=num_classes)
    mean_probability = probabilities.mean(dim=(1, 2)).numpy()
    order = np.lexsort((-mean_probability, -area))[:top_k]
    for class_id in order:
        panels.append(
            Panel(
                f"P({info.names[class_id]}), {100 * area[class_id] / labels.size:.1f}% of pixels",
                probabilities[class_id].numpy(),
                cmap="magma",
                vmin=0.0,
                vmax=1.0,
                colorbar="probability",
            )
        )
    while len(panels) % FEATURE_COLUMNS:
        panels.append(Panel("", np.zeros((1, 1))))  # blank: sections start on a new row

    def feature_panel(key: str, title: str) -> Panel:
        feature = features[key]
        return Panel(
            f"{title}\n{_resolution(feature, height)}",
            summarize_channels(feature[0], reduction),
            cmap="viridis",
            vmin=0.0,
            vmax=1.0,
        )

    stage_count = len({key.split(".")[0] for key in features if key.startswith("stage")})
    for index, name in enumerate(_stage_names(stage_count)):
        for branch in ("high", "low"):
            for moment in ("before", "after"):
                panels.append(
                    feature_panel(
                        f"stage{index}.{branch}_{moment}_fusion",
                        f"stage {name}: {branch}-res branch, {moment} fusion",
                    )
                )
    panels.append(feature_panel("low_final", "low-res branch after Bottleneck (DAPPM input)"))
    # Scales 1-4 pool the 1/64 map, upsample it back and add the previous scale (hierarchical).
    pooling = (
        "1x1 conv, no pooling",
        "avg pool k5 s2 (1/128) + scale 0",
        "avg pool k9 s4 (1/256) + scale 1",
        "avg pool k17 s8 (1/512) + scale 2",
        "global pool + scale 3",
    )
    for index, description in enumerate(pooling):
        panels.append(feature_panel(f"dappm.scale{index}", f"DAPPM scale {index}: {description}"))
    panels.append(feature_panel("dappm.output", "DAPPM output (context)"))
    panels.append(feature_panel("high_final", "high-res branch after Bottleneck"))
    return panels


def draw_panels(panels: Sequence[Panel], output: str | Path, suptitle: str) -> Path:
    """Panels in a grid of ``FEATURE_COLUMNS`` columns, saved as a PNG of exactly
    ``feature_figure_size(len(panels))`` pixels."""
    rows = math.ceil(len(panels) / FEATURE_COLUMNS)
    size = feature_figure_size(len(panels))
    figure, axes = _figure(size, rows, FEATURE_COLUMNS, squeeze=False)
    for axis, panel in zip(axes.ravel(), panels):
        axis.set_xticks([])
        axis.set_yticks([])
        if not panel.title:
            axis.axis("off")
            continue
        shown = axis.imshow(
            panel.data,
            cmap=panel.cmap,
            vmin=panel.vmin,
            vmax=panel.vmax,
            # nearest: a 1/64 map should look coarse, that is its real resolution.
            interpolation="nearest",
        )
        axis.set_title(panel.title, fontsize=9)
        if panel.colorbar:
            figure.colorbar(shown, ax=axis, fraction=0.046, pad=0.02).set_label(
                panel.colorbar, fontsize=8
            )
    for axis in axes.ravel()[len(panels) :]:
        axis.axis("off")
    figure.suptitle(suptitle, fontsize=12)
    figure.tight_layout(rect=(0, 0, 1, 1 - TITLE_INCHES / (size[1] / DPI)))
    return _save(figure, output)


def feature_figure_size(panel_count: int) -> tuple[int, int]:
    """``(width, height)`` in pixels of a feature figure with ``panel_count`` panels."""
    rows = math.ceil(panel_count / FEATURE_COLUMNS)
    width = FEATURE_COLUMNS * PANEL_INCHES[0]
    height = rows * PANEL_INCHES[1] + TITLE_INCHES
    return round(width * DPI), round(height * DPI)


def plot_features(
    model: nn.Module,
    image: np.ndarray,
    output: str | Path,
    top_k: int = 5,
    reduction: str = "mean-abs",
    title: str | None = None,
) -> Path:
    """Write the feature figure of ``image`` (``(H, W, 3)`` uint8 RGB) through ``model``."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown channel summary {reduction!r}; choose from {REDUCTIONS}")
    output = _prepare(output)  # a bad output path fails before the forward pass
    panels = feature_panels(model, image, top_k=top_k, reduction=reduction)
    metadata = getattr(model, "metadata", None)
    architecture = metadata.architecture if metadata else type(model).__name__
    summary = "|activation| channel mean" if reduction == "mean-abs" else "1st PCA component"
    heading = title or architecture
    return draw_panels(
        panels,
        output,
        f"{heading}: feature maps show the {summary}, min-max scaled per map",
    )


# --------------------------------------------------------------------------------------------
# Confusion matrix and IoU
# --------------------------------------------------------------------------------------------


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


def plot_confusion(metrics_json: str | Path, output: str | Path) -> Path:
    """Row-normalised confusion matrix (percent of each true class) and per-class IoU bars."""
    output = _prepare(output)
    names, matrix, iou, document = read_eval_json(metrics_json)
    info = class_info_for_names(names)
    normalized = row_normalize(matrix) * 100
    count = len(names)
    figure, (left, right) = _figure(
        confusion_figure_size(count), 1, 2, gridspec_kw={"width_ratios": [1.15, 1]}
    )
    import matplotlib

    # Grey for nan: the rows of classes absent from the ground truth.
    cmap = matplotlib.colormaps["Blues"].with_extremes(bad="#dddddd")
    shown = left.imshow(np.ma.masked_invalid(normalized), cmap=cmap, vmin=0, vmax=100)
    left.set_xticks(range(count), names, rotation=60, ha="right", fontsize=8)
    left.set_yticks(range(count), names, fontsize=8)
    left.set_xlabel("predicted class")
    left.set_ylabel("true class")
    left.set_title(
        "confusion matrix: % of each true class's pixels\n"
        "(rows sum to 100; grey: class absent from the ground truth)"
    )
    if count <= 30:  # numbers stay legible up to about 30 classes
        for row in range(count):
            for column in range(count):
                value = normalized[row, column]
                if np.isnan(value) or value < 0.5:
                    continue
                left.text(
                    column,
                    row,
                    f"{value:.0f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if value > 55 else "black",
                )
    figure.colorbar(shown, ax=left, fraction=0.046, pad=0.02).set_label("% of true class")

    positions = np.arange(count)
    heights = np.nan_to_num(iou, nan=0.0)
    right.barh(
        positions, heights, color=[_hex(c) for c in info.palette], edgecolor="black", linewidth=0.5
    )
    for position, value in zip(positions, iou):
        text = "n/a (never seen)" if np.isnan(value) else f"{value:.1f}"
        right.text((0 if np.isnan(value) else value) + 1, position, text, va="center", fontsize=8)
    right.set_yticks(positions, names, fontsize=8)
    right.invert_yaxis()  # first class on top, as in the matrix
    right.set_xlim(0, 105)
    right.set_xlabel("IoU (%)")
    miou = document.get("mIoU")
    right.set_title(f"per-class IoU, mIoU {miou:.2f}%" if isinstance(miou, float) else "IoU")
    if isinstance(miou, float) and not math.isnan(miou):
        right.axvline(miou, color="black", linestyle="--", linewidth=1)
    right.grid(axis="x", alpha=0.3)
    source = ", ".join(
        f"{key} {document[key]}"
        for key in ("checkpoint", "dataset", "split", "images")
        if document.get(key) is not None
    )
    figure.suptitle(source or Path(metrics_json).name, fontsize=10)
    figure.tight_layout()
    return _save(figure, output)


# --------------------------------------------------------------------------------------------
# Training curves
# --------------------------------------------------------------------------------------------


def read_metrics_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Epoch records of a run's ``metrics.jsonl``, sorted by epoch.

    When a run was resumed an epoch can appear twice; the later line wins. A half-written
    last line (training still running) is skipped; any other bad line is an error.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: no such file (is this a training run folder?)")
    lines = path.read_text().splitlines()
    by_epoch: dict[int, dict[str, Any]] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            if number == len(lines):
                logger.warning("%s: skipping the unfinished last line %d", path, number)
                continue
            raise UsageError(f"{path}:{number}: not a JSON line ({error})") from None
        if not isinstance(record, dict) or "epoch" not in record:
            raise UsageError(f"{path}:{number}: expected an object with an 'epoch' key")
        by_epoch[int(record["epoch"])] = record
    if not by_epoch:
        raise UsageError(f"{path}: no epoch records yet")
    return [by_epoch[epoch] for epoch in sorted(by_epoch)]


def _series(records: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """Epochs and values of ``key`` where the record has a finite number for it."""
    epochs, values = [], []
    for record in records:
        value = record.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            epochs.append(int(record["epoch"]))
            values.append(float(value))
    return epochs, values


CURVES_SIZE = (1200, 800)  # pixels


def plot_curves(run_dir: str | Path, output: str | Path) -> Path:
    """Four panels from ``run_dir/metrics.jsonl``: train loss, val mIoU (epochs where it was
    measured), learning rate and images per second. The PNG is ``1200 x 800`` pixels."""
    output = _prepare(output)
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MissingFileError(f"{run_dir}: no such run folder")
    records = read_metrics_jsonl(run_dir / "metrics.jsonl")
    from matplotlib.ticker import MaxNLocator

    figure, axes = _figure(CURVES_SIZE, 2, 2)
    first, last_epoch = int(records[0]["epoch"]), int(records[-1]["epoch"])
    panels = (
        ("train_loss", "training loss", "loss", "tab:blue"),
        ("val_mIoU", "validation mIoU", "mIoU (%)", "tab:green"),
        ("lr", "learning rate", "learning rate", "tab:orange"),
        ("images_per_second", "training throughput", "images / s", "tab:purple"),
    )
    for axis, (key, title, ylabel, colour) in zip(axes.ravel(), panels):
        epochs, values = _series(records, key)
        axis.set_title(title)
        axis.set_xlabel("epoch")
        axis.set_ylabel(ylabel)
        axis.grid(alpha=0.3)
        # The same epoch axis everywhere, so that sparse val_mIoU points line up with the rest.
        axis.set_xlim(first - 0.5, last_epoch + 0.5)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        if not values:
            message = f"no '{key}' in metrics.jsonl"
            axis.text(0.5, 0.5, message, ha="center", va="center", transform=axis.transAxes)
            continue
        axis.plot(epochs, values, marker="o" if len(values) < 40 else None, color=colour)
        if key == "val_mIoU":
            best = int(np.argmax(values))
            axis.annotate(
                f"best {values[best]:.2f} (epoch {epochs[best]})",
                (epochs[best], values[best]),
                textcoords="offset points",
                xytext=(0, -15),
                ha="center",
                fontsize=9,
            )
        if key == "lr":
            axis.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    last = records[-1]
    figure.suptitle(f"{run_dir.name}: {len(records)} epochs recorded, last epoch {last['epoch']}")
    figure.tight_layout()
    return _save(figure, output)


# --------------------------------------------------------------------------------------------
# Several models side by side
# --------------------------------------------------------------------------------------------

TITLE_HEIGHT = 28  # pixels of the caption bar above each picture of a comparison


def titled(picture: np.ndarray, title: str, height: int = TITLE_HEIGHT) -> np.ndarray:
    """``picture`` ``(H, W, 3)`` with a white caption bar of ``height`` pixels on top."""
    bar = Image.new("RGB", (picture.shape[1], height), "white")
    draw = ImageDraw.Draw(bar)
    font = render._font(max(10, height - 12))
    limit = picture.shape[1] - 8
    text = title
    if font.getlength(text) > limit:
        # Shorten with an ellipsis rather than let the caption run into the next picture.
        while text and font.getlength(text + "...") > limit:
            text = text[:-1]
        text += "..."
    top = (height - (draw.textbbox((0, 0), text, font=font)[3])) // 2
    draw.text((4, max(0, top)), text, fill="black", font=font)
    return np.concatenate([np.asarray(bar), picture], axis=0)


def compare_pictures(
    image: np.ndarray, models: Sequence[tuple[str, nn.Module]], alpha: float = 0.5
) -> np.ndarray:
    """The input and each model's prediction overlaid on it, captioned, left to right,
    with one legend of all classes any model predicted.

    The models must share their class names (one legend must be true for all of them).
    Returns ``(H + TITLE_HEIGHT, (len(models) + 1) * (W + gap) + legend, 3)`` uint8.
    """
    if not models:
        raise ValueError("compare needs at least one model")
    infos = [class_info(model) for _, model in models]
    for (title, _), info in zip(models[1:], infos[1:]):
        if info.names != infos[0].names:
            raise UsageError(
                f"{title} predicts classes {list(info.names)}, but {models[0][0]} predicts "
                f"{list(infos[0].names)}: one legend cannot describe both"
            )
    from ddrnet.engine.predictor import Predictor

    pictures = [titled(image, f"input {image.shape[1]}x{image.shape[0]}")]
    present: set[int] = set()
    for (title, model), info in zip(models, infos):
        labels = Predictor(model).predict(image)
        present.update(int(c) for c in np.unique(labels) if c < len(info.names))
        colours = render.colorize(labels, info.palette, len(info.names))
        pictures.append(titled(render.overlay(image, colours, alpha), title))
    height = pictures[0].shape[0]
    legend = render.legend_panel(infos[0].names, infos[0].palette, height, sorted(present))
    if legend.shape[0] < height:
        pad = np.full((height - legend.shape[0], legend.shape[1], 3), 255, np.uint8)
        legend = np.concatenate([legend, pad])
    return render.side_by_side(*pictures, legend)


def plot_compare(
    image: np.ndarray, models: Sequence[tuple[str, nn.Module]], output: str | Path
) -> Path:
    """Write ``compare_pictures`` as a PNG (RGB, exactly the array's size)."""
    output = _prepare(output)
    return _save_array(compare_pictures(image, models), output)


# --------------------------------------------------------------------------------------------


def _prepare(output: str | Path) -> Path:
    path = Path(output)
    if path.suffix.lower() != ".png":
        raise UsageError(f"{path}: the output must be a .png file")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _figure(size: tuple[int, int], rows: int, columns: int, **kwargs: Any) -> tuple[Any, Any]:
    """A matplotlib ``Figure`` of ``size`` = (width, height) pixels with a grid of axes.

    Built without pyplot: no global figure registry and no backend switch in the caller's
    process (a notebook keeps its backend); ``savefig`` renders with Agg by itself.
    """
    from matplotlib.figure import Figure

    figure = Figure(figsize=(size[0] / DPI, size[1] / DPI), dpi=DPI)
    return figure, figure.subplots(rows, columns, **kwargs)


def _save(figure: Any, output: str | Path) -> Path:
    path = _prepare(output)
    figure.savefig(path, dpi=DPI, facecolor="white")
    return path


def _save_array(picture: np.ndarray, output: str | Path) -> Path:
    path = _prepare(output)
    Image.fromarray(picture).save(path)
    return path


def load_models(
    checkpoints: Sequence[str | Path], model_names: Sequence[str]
) -> list[tuple[str, nn.Module]]:
    """Captioned models for a comparison from ``--checkpoint`` and ``--model`` options.

    Checkpoints alone: each file rebuilds itself from its metadata. One ``--model`` with
    several checkpoints applies to all of them, as many as checkpoints pair up in order
    (for files without metadata). Model names alone give untrained models (random weights),
    which is only useful to look at architectures.
    """
    import ddrnet

    if not checkpoints and not model_names:
        raise UsageError("give at least one --checkpoint FILE (or --model NAME)")
    if not checkpoints:
        logger.warning("no --checkpoint: the models have random weights")
        return [(f"{name} (untrained)", ddrnet.create_model(name)) for name in model_names]
    if len(model_names) not in (0, 1, len(checkpoints)):
        raise UsageError(
            f"{len(model_names)} --model names for {len(checkpoints)} --checkpoint files: give "
            "none, one for all, or one per checkpoint"
        )
    names: list[str | None] = [None] * len(checkpoints)
    if model_names:
        names = list(model_names) if len(model_names) > 1 else [model_names[0]] * len(names)
    models = []
    from ddrnet.assets import resolve_bundled_name

    for checkpoint, name in zip(checkpoints, names):
        path = resolve_bundled_name(checkpoint)  # a bundled model's name stands for its file
        if not path.is_file():
            raise MissingFileError(f"{path}: no such checkpoint file")
        model = ddrnet.create_model(name, checkpoint=path)
        metadata = model.metadata
        caption = f"{path.parent.name}/{path.name}" if path.parent.name else path.name
        caption += f": {metadata.architecture}"
        miou = (metadata.metrics or {}).get("mIoU")
        if isinstance(miou, (int, float)):
            caption += f", mIoU {miou:.1f}"
        models.append((caption, model))
    return models
