"""Turning label maps into pictures people can read: colours, overlays, legends."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ddrnet.models.metadata import distinct_palette

IGNORE_COLOUR = (0, 0, 0)


def palette_array(palette: Sequence[Sequence[int]] | None, num_classes: int) -> np.ndarray:
    """``(max(256, C + 1), 3)`` uint8 lookup: the C class colours, then black (ignore and
    unknown ids; the last entry is always black)."""
    colours = list(palette) if palette else list(distinct_palette(num_classes))
    table = np.zeros((max(256, len(colours) + 1), 3), dtype=np.uint8)
    table[: len(colours)] = np.asarray(colours, dtype=np.uint8)
    return table


def colorize(
    labels: np.ndarray, palette: Sequence[Sequence[int]] | None, num_classes: int
) -> np.ndarray:
    """``(H, W)`` class ids -> ``(H, W, 3)`` uint8 RGB with the data set's palette; ids past
    the palette (ignore, unknown) are black."""
    table = palette_array(palette, num_classes)
    if labels.dtype != np.uint8:  # wider ids (more than 256 classes): unknown ones clipped
        labels = np.clip(labels, 0, len(table) - 1)
    return np.take(table, labels, axis=0)


def confidence_picture(confidence: np.ndarray) -> np.ndarray:
    """``(H, W)`` float confidence (0..1) -> ``(H, W)`` uint8 grey, 255 for certain:
    ``round(255 * confidence)``, so that a pixel's value / 255 reads back its confidence
    to within 0.002."""
    return np.rint(np.clip(confidence, 0.0, 1.0) * 255.0).astype(np.uint8)


def to_bgr(picture: np.ndarray) -> np.ndarray:
    """A picture as OpenCV writes it: ``(H, W, 3)`` RGB or ``(H, W)`` grey uint8 -> ``(H,
    W, 3)`` BGR."""
    code = cv2.COLOR_GRAY2BGR if picture.ndim == 2 else cv2.COLOR_RGB2BGR
    return cv2.cvtColor(picture, code)


def overlay(image: np.ndarray, colours: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend ``(H, W, 3)`` colours over an ``(H, W, 3)`` uint8 image; ``alpha`` = colour weight."""
    if image.shape != colours.shape:
        raise ValueError(f"image {image.shape} and colour map {colours.shape} differ in size")
    # One pass in OpenCV: image * (1 - alpha) + colours * alpha in float32, rounded.
    image, colours = np.ascontiguousarray(image), np.ascontiguousarray(colours)
    return cv2.addWeighted(image, 1.0 - alpha, colours, alpha, 0.0)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def legend_panel(
    class_names: Sequence[str],
    palette: Sequence[Sequence[int]] | None,
    height: int,
    classes: Sequence[int] | None = None,
    shares: dict[int, float] | None = None,
) -> np.ndarray:
    """A white ``(height, w, 3)`` panel listing colour swatches and class names.

    ``classes`` limits the list (e.g. to the classes present in a prediction); ``shares``
    adds each class's pixel share in percent. Each piece of text is drawn once per string and
    size (``_text_strip``) and laid on the panel with numpy: a legend comes with every
    predicted picture, and drawing its text every time cost more than the overlay.
    """
    table = palette_array(palette, len(class_names))
    chosen = list(classes) if classes is not None else list(range(len(class_names)))
    row = max(14, min(24, height // max(1, len(chosen))))
    size = max(10, row - 6)
    # A line is the class name and its share, drawn apart: names repeat on every picture,
    # and the shares (one of 1001 texts) soon do too.
    lines = [
        [_text_strip(class_names[c], size, row)]
        + ([_text_strip(f" {shares[c]:.1f}%", size, row)] if shares and c in shares else [])
        for c in chosen
    ]
    text_width = max((sum(strip.shape[1] for strip in line) for line in lines), default=40)
    width = int(row + 12 + text_width + 8)
    panel = np.full((max(height, row * len(chosen) + 8), width, 3), 255, dtype=np.uint8)
    for position, (class_id, line) in enumerate(zip(chosen, lines)):
        top = 4 + position * row
        swatch = panel[top + 2 : top + row - 1, 4 : row + 1]  # a black outline around the colour
        swatch[...] = 0
        swatch[1:-1, 1:-1] = table[class_id]
        left = row + 8
        for strip in line:
            # Black text on white: the darker of panel and strip is the text drawn on the panel.
            area = panel[top : top + row, left : left + strip.shape[1]]
            np.minimum(area, strip[: area.shape[0], : area.shape[1], None], out=area)
            left += strip.shape[1]
    return panel[:height] if panel.shape[0] > height else panel


@functools.lru_cache(maxsize=1024)  # a few MB at most: lines of ~20 x 150 pixels
def _text_strip(text: str, size: int, height: int) -> np.ndarray:
    """``(height, w)`` uint8: ``text`` in black on white at font ``size``, 2 pixels from the
    top (read-only: it is shared)."""
    font = _font(size)
    strip = Image.new("L", (max(1, math.ceil(font.getlength(text))), height), 255)
    ImageDraw.Draw(strip).text((0, 2), text, fill=0, font=font)
    pixels = np.array(strip)
    pixels.flags.writeable = False
    return pixels


@functools.lru_cache(maxsize=4)
def _every_class_panel(
    class_names: tuple[str, ...], palette: tuple[tuple[int, ...], ...] | None, height: int
) -> np.ndarray:
    """``legend_panel`` of every class, drawn once per video (read-only: it is shared)."""
    panel = legend_panel(class_names, palette, height)
    panel.flags.writeable = False
    return panel


def with_legend(
    picture: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    palette: Sequence[Sequence[int]] | None,
    every_class: bool = False,
) -> np.ndarray:
    """``picture`` with a legend of the classes present in ``labels`` and their pixel shares
    on its right; with ``every_class``, a fixed legend of all classes instead, whose width
    does not change from frame to frame (a video writer needs one frame size)."""
    if every_class:
        colours = None if palette is None else tuple(tuple(int(v) for v in c) for c in palette)
        panel = _every_class_panel(tuple(class_names), colours, picture.shape[0])
    else:
        counts = np.bincount(labels.ravel(), minlength=len(class_names))[: len(class_names)]
        present = np.flatnonzero(counts)
        total = max(1, int(counts.sum()))
        shares = {int(c): 100.0 * int(counts[c]) / total for c in present}
        panel = legend_panel(
            class_names, palette, picture.shape[0], [int(c) for c in present], shares
        )
    return np.concatenate([picture, to_height(panel, picture.shape[0])], axis=1)


def to_height(panel: np.ndarray, height: int) -> np.ndarray:
    """An ``(h, w, 3)`` panel (a legend) cut or padded with white to ``height`` rows."""
    if panel.shape[0] < height:
        pad = np.full((height - panel.shape[0], panel.shape[1], 3), 255, np.uint8)
        panel = np.concatenate([panel, pad])
    return panel[:height]


def labelled_overlay(
    image: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    palette: Sequence[Sequence[int]] | None,
    alpha: float = 0.5,
    every_class: bool = False,
) -> np.ndarray:
    """The picture every command shows of a prediction: the class colours of ``(H, W)``
    ``labels`` blended over the ``(H, W, 3)`` uint8 ``image`` (``alpha`` = colour weight),
    with the legend of ``with_legend`` on its right."""
    colours = colorize(labels, palette, len(class_names))
    return with_legend(overlay(image, colours, alpha), labels, class_names, palette, every_class)


def side_by_side(*pictures: np.ndarray, gap: int = 4) -> np.ndarray:
    """Pictures of the same height placed left to right with white gaps."""
    height = pictures[0].shape[0]
    spacer = np.full((height, gap, 3), 255, np.uint8)
    parts: list[np.ndarray] = []
    for index, picture in enumerate(pictures):
        if picture.shape[0] != height:
            raise ValueError("side_by_side needs pictures of equal height")
        parts += ([spacer] if index else []) + [picture]
    return np.concatenate(parts, axis=1)
