"""How much one input may make ddrnet allocate: pixels per image, test-time scales, classes.

A small file can ask for a lot of memory: a 746 KB PNG of 16000x16000 pixels needs ~20 GB to
segment, a scale of 20 multiplies a frame's pixels by 400. These caps turn such inputs into
a one-line refusal that names the input, before anything is allocated. Training checks its
crop size and batch against the memory of the device it runs on.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ddrnet.errors import DDRNetError, UsageError

if TYPE_CHECKING:  # the CLI imports this module: torch only where it is used
    import torch

# 50 megapixels: an 8K frame (7680x4320, 33 MP) passes; segmenting one at the cap takes
# several GB with DDRNet-23-slim on a CPU. `ddrnet predict --max-pixels` raises it.
DEFAULT_MAX_PIXELS = 50_000_000
# Test-time scales are (0, MAX_SCALE]: the usual protocols use 0.5-2.
MAX_SCALE = 4.0
# Classes of a model: label maps of more than 256 classes are written as 16-bit grey PNGs
# (``ddrnet.data.io``), so no more ids than 16 bits hold can be written; 65535 keeps the top
# value free, as ``unknown_label`` (``ddrnet.engine.predictor``) wants one. Without a cap
# `--num-classes 100000000` asks for a 25 GB final layer; at the cap a segmentation head's is
# 17-67 MB, an ImageNet classifier's (2048 features) 0.5 GB.
MAX_NUM_CLASSES = 65535
# Sliding windows of fewer pixels a side than DDRNet's coarsest branch (1/64) reduces to one
# cell are no view of a scene, and their count grows with the inverse square of the side
# (a 7x3 window took 52 s for one 480x360 frame).
MIN_WINDOW = 64
# The widest first stage a widened model may have (``DDRNetSpec.planes``): parameters grow
# with the square of the width. 256 is 8x DDRNet-23-slim (~300 M parameters) or 4x DDRNet-23
# or -39; `model.width_multiplier=100` asked for tens of GB of weights, gradients and
# moments, and the kernel killed the run.
MAX_PLANES = 256
# The most BasicBlocks a stage may have (DDRNet-39 has 6 in stage 3): the same guard for depth.
MAX_BLOCKS = 16


class InputTooLargeError(DDRNetError, ValueError):
    """An input would make us allocate more than the caps allow; the message names it."""


def check_scales(scales: Sequence[float], option: str = "scales") -> tuple[float, ...]:
    """``scales`` as a tuple, or a ``ValueError`` naming ``option`` and the scale that is not
    a finite number in ``(0, MAX_SCALE]``."""
    scales = tuple(float(scale) for scale in scales)
    if not scales:
        raise UsageError(f"{option}: give at least one scale")
    for scale in scales:
        if not math.isfinite(scale) or not 0 < scale <= MAX_SCALE:
            raise UsageError(f"{option}: scale {scale:g} is outside (0, {MAX_SCALE:g}]")
    return scales


def check_min_side(size: tuple[int, int] | None, option: str, what: str) -> None:
    """A ``UsageError`` naming ``option`` when ``size`` (``(height, width)`` pixels) is under
    ``MIN_WINDOW`` a side; ``what`` says what runs at that size ("a sliding window",
    "INT8 calibration"). None (no size given) passes. The one check of every input size the
    network sees at a fixed size: windows, one-size programs, calibration images."""
    if size is not None and min(size) < MIN_WINDOW:
        raise UsageError(
            f"{option} {size[0]}x{size[1]}: under {MIN_WINDOW} pixels a side, too small for "
            f"{what} (the network's coarsest branch is 1/64 of its input)"
        )


def check_window(window: tuple[int, int] | None, option: str = "window") -> None:
    """A ``UsageError`` naming ``option`` for a sliding window (``(height, width)`` pixels)
    under ``MIN_WINDOW`` a side; None (no window) passes."""
    check_min_side(window, option, "a sliding window")


def check_num_classes(num_classes: int, option: str = "num_classes") -> int:
    """``num_classes``, or an error naming ``option`` when it is not in
    ``[1, MAX_NUM_CLASSES]``, before a model of that many outputs is allocated."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral):
        raise UsageError(f"{option}={num_classes!r}: a whole number of classes is needed")
    if num_classes < 1:
        raise UsageError(f"{option}={num_classes}: a model needs at least 1 class")
    if num_classes > MAX_NUM_CLASSES:
        raise InputTooLargeError(
            f"{option}={num_classes}: over the limit of {MAX_NUM_CLASSES} classes (the most "
            "a 16-bit label map holds)"
        )
    return num_classes


def megapixels(pixels: float) -> str:
    """``12_345_678`` -> ``"12.3 megapixels"``."""
    return f"{pixels / 1e6:.1f} megapixels"


def check_pixels(
    source: str,
    width: int,
    height: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    largest_scale: float = 1.0,
    hint: str = "ddrnet predict --max-pixels raises it",
) -> None:
    """Raise ``InputTooLargeError`` naming ``source`` (if not empty) when a ``width`` x
    ``height`` image, resized by ``largest_scale`` (test-time scales above 1 enlarge it), has
    more than ``max_pixels`` pixels; ``hint`` (in parentheses) says how to raise the cap."""
    factor = max(1.0, largest_scale) ** 2
    pixels = width * height * factor
    if pixels <= max_pixels:
        return
    at_scale = f", {megapixels(pixels)} at scale {largest_scale:g}" if factor > 1 else ""
    named = f"{source}: " if source else ""
    how = f" ({hint})" if hint else ""
    raise InputTooLargeError(
        f"{named}{width}x{height} is {megapixels(width * height)}{at_scale}, over the limit of "
        f"{megapixels(max_pixels)}{how}"
    )


# A DDRNet-23-slim training step (forward with the auxiliary head, backward, float32) holds
# ~550 bytes per input pixel beyond the model: peak RSS grew 207 MB from 256x256 to 512x512
# crops, batch 2, on a CPU (DDRNet-23, planes 64: ~1100). Per 32 planes of the model it is a
# lower bound for the other variants (deeper ones hold more), halved for bf16/fp16 autocast.
TRAIN_BYTES_PER_PIXEL_PER_32_PLANES = 550


def device_memory(device: torch.device) -> int | None:
    """Bytes of memory of ``device`` (physical RAM for the CPU); None where unknown."""
    import torch

    try:
        if device.type == "cuda":
            return torch.cuda.get_device_properties(device).total_memory
        if device.type == "cpu":
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, RuntimeError, AttributeError):
        pass
    return None


def check_training_crop(
    crop_size: tuple[int, int],
    batch_size: int,
    planes: int,
    device: torch.device,
    half_precision: bool = False,
) -> None:
    """Refuse, before anything is allocated, a ``data.crop_size`` and ``data.batch_size``
    whose training step needs more memory than ``device`` has (estimated from
    ``TRAIN_BYTES_PER_PIXEL_PER_32_PLANES`` for a model of ``planes``): it would die in an
    allocation error or the kernel's OOM killer at the first step."""
    memory = device_memory(device)
    height, width = crop_size
    per_pixel = TRAIN_BYTES_PER_PIXEL_PER_32_PLANES * planes / 32 / (2 if half_precision else 1)
    needed = per_pixel * batch_size * height * width
    if memory is None or needed <= memory:
        return
    raise InputTooLargeError(
        f"data.crop_size=[{height}, {width}] with data.batch_size={batch_size}: a training "
        f"step needs about {needed / 2**30:,.0f} GiB ({per_pixel:.0f} bytes per pixel for "
        f"this model), more than the {memory / 2**30:,.0f} GiB of memory of {device}; use a "
        "smaller crop or batch (the recipes crop 352x480 to 1024x1024)"
    )
