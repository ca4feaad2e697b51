"""How much one input may make ddrnet allocate: pixels per image, test-time scales.

A small file can ask for a lot of memory: a 746 KB PNG of 16000x16000 pixels needs ~20 GB to
segment, a scale of 20 multiplies a frame's pixels by 400. These caps turn such inputs into
a one-line refusal that names the input, before anything is allocated.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

# 50 megapixels: an 8K frame (7680x4320, 33 MP) passes; segmenting one at the cap takes
# several GB with DDRNet-23-slim on a CPU. `ddrnet predict --max-pixels` raises it.
DEFAULT_MAX_PIXELS = 50_000_000
# Test-time scales are (0, MAX_SCALE]: the usual protocols use 0.5-2.
MAX_SCALE = 4.0


class InputTooLargeError(ValueError):
    """An input would make us allocate more than the caps allow; the message names it."""


def check_scales(scales: Sequence[float], option: str = "scales") -> tuple[float, ...]:
    """``scales`` as a tuple, or a ``ValueError`` naming ``option`` and the scale that is not
    a finite number in ``(0, MAX_SCALE]``."""
    scales = tuple(float(scale) for scale in scales)
    if not scales:
        raise ValueError(f"{option}: give at least one scale")
    for scale in scales:
        if not math.isfinite(scale) or not 0 < scale <= MAX_SCALE:
            raise ValueError(f"{option}: scale {scale:g} is outside (0, {MAX_SCALE:g}]")
    return scales


def megapixels(pixels: float) -> str:
    """``12_345_678`` -> ``"12.3 megapixels"``."""
    return f"{pixels / 1e6:.1f} megapixels"


def check_pixels(
    source: str,
    width: int,
    height: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    largest_scale: float = 1.0,
) -> None:
    """Raise ``InputTooLargeError`` naming ``source`` when a ``width`` x ``height`` image,
    resized by ``largest_scale`` (test-time scales above 1 enlarge it), has more than
    ``max_pixels`` pixels."""
    factor = max(1.0, largest_scale) ** 2
    pixels = width * height * factor
    if pixels <= max_pixels:
        return
    at_scale = f", {megapixels(pixels)} at scale {largest_scale:g}" if factor > 1 else ""
    raise InputTooLargeError(
        f"{source}: {width}x{height} is {megapixels(width * height)}{at_scale}, over the "
        f"limit of {megapixels(max_pixels)} (ddrnet predict --max-pixels raises it)"
    )
