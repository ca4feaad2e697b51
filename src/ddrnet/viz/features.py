"""The feature figure (``ddrnet viz features``): what a DDRNet sees in one image.

The prediction with its legend, an entropy map and the probability maps of the top classes,
then the high- and low-resolution branches before and after every bilateral fusion, the
DAPPM scales and the final branches, each ``(C, h, w)`` map summarised as one 0..1 picture.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ddrnet import render
from ddrnet.engine.inference import normalize
from ddrnet.errors import UsageError
from ddrnet.models.metadata import ClassInfo, class_info, normalisation
from ddrnet.viz.figure import DPI, new_figure, prepare_output, save_figure

FEATURE_COLUMNS = 4
PANEL_INCHES = (4.0, 3.4)  # width, height of one panel of the feature grid, title included
TITLE_INCHES = 0.5  # room for the feature figure's own title
REDUCTIONS = ("mean-abs", "pca")
# Scales 1-4 pool the 1/64 map, upsample it back and add the previous scale (hierarchical).
DAPPM_SCALES = (
    "1x1 conv, no pooling",
    "avg pool k5 s2 (1/128) + scale 0",
    "avg pool k9 s4 (1/256) + scale 1",
    "avg pool k17 s8 (1/512) + scale 2",
    "global pool + scale 3",
)


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


@dataclass
class Panel:
    """One picture of a grid: a 2-D map drawn with a colour map, or an RGB image."""

    title: str
    data: np.ndarray  # (h, w) float for maps, (H, W, 3) uint8 for pictures
    cmap: str | None = None
    vmin: float | None = None
    vmax: float | None = None
    colorbar: str | None = None  # colour-bar label; None draws no bar


def _to_row_end(panels: list[Panel]) -> list[Panel]:
    """``panels`` filled with blanks to the end of their last row, so that the next section
    starts on a new row (none are added to an empty list)."""
    blanks = -len(panels) % FEATURE_COLUMNS
    return panels + [Panel("", np.zeros((1, 1))) for _ in range(blanks)]


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
    if not hasattr(model, "forward_features"):  # DDRNet's ImageNet classifier, for one
        raise UsageError(
            f"{type(model).__name__} is not a segmentation DDRNet: it has no feature maps "
            "to show; give a segmentation model"
        )
    mean, std = normalisation(model)
    device = next(model.parameters()).device
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].to(device)
    model.eval()
    features = model.forward_features(normalize(tensor, mean, std))
    return {name: value.float().cpu() for name, value in features.items()}


def _output_panels(
    image: np.ndarray, logits: torch.Tensor, info: ClassInfo, top_k: int
) -> list[Panel]:
    """Input, prediction with legend, entropy in bits and the top-``top_k`` class
    probabilities, all at the ``(H, W)`` of ``image``; ``logits`` is ``(1, C, h, w)``.
    Padded with blank panels to whole rows, so that the next section starts on a new row."""
    height, width = image.shape[:2]
    logits = torch.nn.functional.interpolate(
        logits, size=(height, width), mode="bilinear", align_corners=False
    )
    probabilities = logits.softmax(dim=1)[0]  # (C, H, W)
    labels = probabilities.argmax(dim=0).numpy().astype(np.uint8)
    num_classes = probabilities.shape[0]

    panels = [
        Panel(f"input ({width}x{height})", image),
        Panel(
            "prediction (legend: pixel share)",
            render.labelled_overlay(image, labels, info.names, info.palette),
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
    return _to_row_end(panels)


def _network_panels(
    features: dict[str, torch.Tensor], image_height: int, reduction: str
) -> list[Panel]:
    """One row per bilateral stage (high branch before and after fusion, low branch before
    and after), then the low-branch input of DAPPM, its five scales, its output and the
    final high branch; each ``(1, C, h, w)`` map summarised by ``reduction``."""

    def feature_panel(key: str, title: str) -> Panel:
        feature = features[key]
        return Panel(
            f"{title}\n{_resolution(feature, image_height)}",
            summarize_channels(feature[0], reduction),
            cmap="viridis",
            vmin=0.0,
            vmax=1.0,
        )

    panels = []
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
        panels += _message_weight_panels(features, index, name, image_height)
    panels.append(feature_panel("low_final", "low-res branch after Bottleneck (DAPPM input)"))
    for index, description in enumerate(DAPPM_SCALES):
        panels.append(feature_panel(f"dappm.scale{index}", f"DAPPM scale {index}: {description}"))
    panels.append(feature_panel("dappm.output", "DAPPM output (context)"))
    panels.append(feature_panel("high_final", "high-res branch after Bottleneck"))
    return panels


def _message_weight_panels(
    features: dict[str, torch.Tensor], index: int, name: str, image_height: int
) -> list[Panel]:
    """With attention fusions (``model.fusion``), a row after the stage's: where each branch
    let the other's message in, ``(1, 1, h, w)`` weights in (0, 1) drawn as they are."""
    panels = []
    for branch, other in (("high", "low"), ("low", "high")):
        weight = features.get(f"stage{index}.{branch}_message_weight")
        if weight is not None:
            title = f"stage {name}: attention, {other}-res to {branch}-res"
            panels.append(
                Panel(
                    f"{title}\n{_resolution(weight, image_height)}",
                    weight[0, 0].float().cpu().numpy(),
                    cmap="magma",
                    vmin=0.0,
                    vmax=1.0,
                    colorbar="attention",
                )
            )
    return _to_row_end(panels)


def feature_panels(
    model: nn.Module, image: np.ndarray, top_k: int = 5, reduction: str = "mean-abs"
) -> list[Panel]:
    """All panels of the feature figure of an ``(H, W, 3)`` uint8 RGB image, in reading
    order (rows of ``FEATURE_COLUMNS``).

    Output first (input, prediction with legend, entropy in bits, top-``top_k`` class
    probabilities at input resolution), then one row per bilateral stage (high branch before
    and after fusion, low branch before and after), then the low-branch input of DAPPM, its
    five scales, its output and the final high branch.
    """
    features = compute_features(model, image)
    panels = _output_panels(image, features["logits"], class_info(model), top_k)
    return panels + _network_panels(features, image.shape[0], reduction)


def draw_panels(panels: Sequence[Panel], output: str | Path, suptitle: str) -> Path:
    """Panels in a grid of ``FEATURE_COLUMNS`` columns, saved as a PNG of exactly
    ``feature_figure_size(len(panels))`` pixels."""
    rows = math.ceil(len(panels) / FEATURE_COLUMNS)
    size = feature_figure_size(len(panels))
    figure, axes = new_figure(size, rows, FEATURE_COLUMNS, squeeze=False)
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
    return save_figure(figure, output)


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
    output = prepare_output(output)  # a bad output path fails before the forward pass
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
