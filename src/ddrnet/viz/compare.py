"""One image through several models, side by side with one legend (``ddrnet viz compare``),
and the captioned models such a comparison takes from ``--checkpoint`` / ``--model``."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from torch import nn

from ddrnet import render
from ddrnet.errors import MissingFileError, UsageError
from ddrnet.models.metadata import class_info
from ddrnet.viz.figure import prepare_output, save_array

logger = logging.getLogger(__name__)

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
    return render.side_by_side(*pictures, render.to_height(legend, height))


def plot_compare(
    image: np.ndarray, models: Sequence[tuple[str, nn.Module]], output: str | Path
) -> Path:
    """Write ``compare_pictures`` as a PNG (RGB, exactly the array's size)."""
    output = prepare_output(output)
    return save_array(compare_pictures(image, models), output)


def load_models(
    checkpoints: Sequence[str | Path], model_names: Sequence[str]
) -> list[tuple[str, nn.Module]]:
    """Captioned models for a comparison from ``--checkpoint`` and ``--model`` options.

    Checkpoints alone: each file rebuilds itself from its metadata. One ``--model`` with
    several checkpoints applies to all of them, as many as checkpoints pair up in order
    (for files without metadata). Model names alone give untrained models (random weights),
    which is only useful to look at architectures.
    """
    from ddrnet.models import create_model

    if not checkpoints and not model_names:
        raise UsageError("give at least one --checkpoint FILE (or --model NAME)")
    if not checkpoints:
        logger.warning("no --checkpoint: the models have random weights")
        return [
            (f"{name} (untrained)", _segmentation(create_model(name), f"--model {name}"))
            for name in model_names
        ]
    if len(model_names) not in (0, 1, len(checkpoints)):
        raise UsageError(
            f"{len(model_names)} --model names for {len(checkpoints)} --checkpoint files: give "
            "none, one for all, or one per checkpoint"
        )
    names: list[str | None] = [None] * len(checkpoints)
    if model_names:
        names = list(model_names) if len(model_names) > 1 else [model_names[0]] * len(names)
    models = []
    from ddrnet.models.weights import resolve_bundled_name

    for checkpoint, name in zip(checkpoints, names):
        path = resolve_bundled_name(checkpoint)  # a bundled model's name stands for its file
        if not path.is_file():
            raise MissingFileError(f"{path}: no such checkpoint file")
        model = _segmentation(create_model(name, checkpoint=path), str(path))
        metadata = model.metadata
        caption = f"{path.parent.name}/{path.name}" if path.parent.name else path.name
        caption += f": {metadata.architecture}"
        miou = (metadata.metrics or {}).get("mIoU")
        if isinstance(miou, (int, float)):
            caption += f", mIoU {miou:.1f}"
        models.append((caption, model))
    return models


def _segmentation(model: nn.Module, source: str) -> nn.Module:
    """``model``, or a ``UsageError`` naming ``source`` when it is DDRNet's ImageNet
    classifier, which has no label maps to compare."""
    from ddrnet.models import DDRNetClassifier

    if isinstance(model, DDRNetClassifier):
        raise UsageError(
            f"{source}: an ImageNet classifier (DDRNet's pre-training form), not a "
            "segmentation model; compare segmentation models"
        )
    return model
