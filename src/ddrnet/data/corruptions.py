"""Common camera corruptions at five severities, for measuring robustness.

A model that scores well on clean val frames may fail in rain on the lens, at dusk, behind a
cheap JPEG encoder or with motion blur. These are the corruptions of ImageNet-C (Hendrycks &
Dietterich, ICLR 2019) that a vehicle camera meets, with their published parameters in pixels
(as Kamann & Rother, CVPR 2020, applied them to Cityscapes), and one of ours, ``dark``:

* noise: ``gaussian_noise``, ``shot_noise`` (photon noise, as at high gain in low light),
  ``impulse_noise`` (salt and pepper: dead or hot pixels, transmission errors);
* blur: ``defocus_blur``, ``motion_blur`` (one-sided trail at a random angle in [-45, 45]);
* weather and light: ``fog`` (a plasma-fractal haze), ``brightness`` (over-exposure),
  ``contrast`` (low contrast), ``dark`` (the scene 1-5 stops darker, in linear light:
  dusk for a camera without auto-exposure; not in ImageNet-C);
* digital: ``jpeg_compression``, ``pixelate``.

Each function takes an ``(H, W, 3)`` uint8 RGB image, a severity 1-5 and a NumPy random
generator, and returns an ``(H, W, 3)`` uint8 image. ``engine.robustness.CorruptedDataset``
applies one to an evaluation set with noise seeded per image, so every model sees the same
corrupted frames; this module imports no PyTorch (the command line reads its names).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import cv2
import numpy as np

from ddrnet.errors import UsageError

Corruption = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]
SEVERITIES = (1, 2, 3, 4, 5)


def _to_unit(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float32) / 255.0


def _to_uint8(unit: np.ndarray) -> np.ndarray:
    return (np.clip(unit, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def gaussian_noise(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    scale = (0.08, 0.12, 0.18, 0.26, 0.38)[severity - 1]
    return _to_uint8(_to_unit(image) + rng.normal(0.0, scale, image.shape).astype(np.float32))


def shot_noise(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    photons = (60, 25, 12, 5, 3)[severity - 1]  # at full white
    return _to_uint8(rng.poisson(_to_unit(image) * photons) / photons)


def impulse_noise(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    amount = (0.03, 0.06, 0.09, 0.17, 0.27)[severity - 1]
    out = image.copy()
    hit = rng.random(image.shape) < amount  # each channel value on its own, as scikit-image
    out[hit] = np.where(rng.random(int(hit.sum())) < 0.5, 0, 255).astype(np.uint8)
    return out


def _disk(radius: int, alias_blur: float) -> np.ndarray:
    """ImageNet-C's defocus kernel: a disk, slightly blurred against aliasing, normalised
    after the blur too (ImageNet-C's is not: at radius 10 the blur reflects part of the disk
    back in at the kernel's edge, and the image came out about 1% brighter)."""
    half = max(8, radius)
    grid = np.arange(-half, half + 1)
    x, y = np.meshgrid(grid, grid)
    disk = (x**2 + y**2 <= radius**2).astype(np.float32)
    disk /= disk.sum()
    size = 3 if radius <= 8 else 5
    blurred = cv2.GaussianBlur(disk, (size, size), sigmaX=alias_blur)
    return blurred / blurred.sum()


def defocus_blur(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    radius, alias_blur = ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5))[severity - 1]
    kernel = _disk(radius, alias_blur)
    return _to_uint8(cv2.filter2D(_to_unit(image), -1, kernel, borderType=cv2.BORDER_REFLECT_101))


def motion_blur(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """ImageMagick's motion blur as ImageNet-C called it: the image plus copies shifted back
    along the motion, weighted by a one-sided Gaussian of ``sigma`` over ``2 * radius + 1``
    steps; edges replicated."""
    radius, sigma = ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15))[severity - 1]
    angle = math.radians(rng.uniform(-45.0, 45.0))
    steps = np.arange(2 * radius + 1)
    weights = np.exp(-(steps**2) / (2.0 * sigma**2))
    weights /= weights.sum()
    height, width = image.shape[:2]
    unit = _to_unit(image)
    blurred, total = np.zeros_like(unit), 0.0
    for step, weight in zip(steps, weights):
        dy = -math.ceil(step * math.sin(angle) - 0.5)
        dx = -math.ceil(step * math.cos(angle) - 0.5)
        if abs(dy) >= height or abs(dx) >= width:
            break  # a trail longer than the image: the weights used so far, renormalised
        shift = np.float32([[1, 0, dx], [0, 1, dy]])
        blurred += weight * cv2.warpAffine(
            unit, shift, (width, height), borderMode=cv2.BORDER_REPLICATE
        )
        total += weight
    return _to_uint8(blurred / total)


def _plasma_fractal(size: int, decay: float, rng: np.random.Generator) -> np.ndarray:
    """A ``(size, size)`` diamond-square fractal in [0, 1] (``size`` a power of two), as
    ImageNet-C's fog draws it."""
    grid = np.zeros((size, size), np.float64)
    step, wibble = size, 100.0

    def wibbled_mean(total: np.ndarray) -> np.ndarray:
        return total / 4 + wibble * rng.uniform(-wibble, wibble, total.shape)

    while step >= 2:
        half = step // 2
        corners = grid[0:size:step, 0:size:step]
        squares = corners + np.roll(corners, -1, axis=0)
        squares += np.roll(squares, -1, axis=1)
        grid[half:size:step, half:size:step] = wibbled_mean(squares)
        centres = grid[half:size:step, half:size:step]
        corners = grid[0:size:step, 0:size:step]
        across = centres + np.roll(centres, 1, axis=0) + corners + np.roll(corners, -1, axis=1)
        grid[0:size:step, half:size:step] = wibbled_mean(across)
        down = centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=0)
        grid[half:size:step, 0:size:step] = wibbled_mean(down)
        step //= 2
        wibble /= decay
    grid -= grid.min()
    return grid / grid.max()


def fog(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    strength, decay = ((1.5, 2.0), (2.0, 2.0), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4))[severity - 1]
    height, width = image.shape[:2]
    size = 1 << (max(height, width, 2) - 1).bit_length()  # the next power of two
    haze = _plasma_fractal(size, decay, rng)[:height, :width, None].astype(np.float32)
    unit = _to_unit(image)
    peak = float(unit.max())
    return _to_uint8((unit + strength * haze) * peak / (peak + strength))


def brightness(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """HSV value + ``c``, hue and saturation kept: each pixel's RGB scaled by V'/V."""
    offset = (0.1, 0.2, 0.3, 0.4, 0.5)[severity - 1]
    unit = _to_unit(image)
    value = unit.max(axis=2, keepdims=True)
    brighter = np.minimum(value + offset, 1.0)
    scale = np.divide(brighter, value, out=np.ones_like(value), where=value > 0)
    return _to_uint8(np.where(value > 0, unit * scale, brighter))


def contrast(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    keep = (0.4, 0.3, 0.2, 0.1, 0.05)[severity - 1]
    unit = _to_unit(image)
    mean = unit.mean(axis=(0, 1), keepdims=True)
    return _to_uint8((unit - mean) * keep + mean)


def dark(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """The scene ``severity`` stops darker: linear light (sRGB as gamma 2.2) halved per stop."""
    linear = _to_unit(image) ** 2.2
    return _to_uint8((linear * 0.5**severity) ** (1 / 2.2))


def jpeg_compression(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    quality = (25, 18, 15, 10, 7)[severity - 1]
    bgr = np.ascontiguousarray(image[..., ::-1])
    _, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return np.ascontiguousarray(cv2.imdecode(encoded, cv2.IMREAD_COLOR)[..., ::-1])


def pixelate(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    factor = (0.6, 0.5, 0.4, 0.3, 0.25)[severity - 1]
    height, width = image.shape[:2]
    small = (max(1, int(width * factor)), max(1, int(height * factor)))
    # INTER_AREA is a box filter going down; going up, the box of a magnification is a copy.
    reduced = cv2.resize(image, small, interpolation=cv2.INTER_AREA)
    return cv2.resize(reduced, (width, height), interpolation=cv2.INTER_NEAREST)


CORRUPTIONS: dict[str, Corruption] = {
    "gaussian_noise": gaussian_noise,
    "shot_noise": shot_noise,
    "impulse_noise": impulse_noise,
    "defocus_blur": defocus_blur,
    "motion_blur": motion_blur,
    "fog": fog,
    "brightness": brightness,
    "contrast": contrast,
    "dark": dark,
    "jpeg_compression": jpeg_compression,
    "pixelate": pixelate,
}


def check_corruption(name: str, severity: int) -> None:
    """``UsageError`` (a ``ValueError``) unless ``name`` is in ``CORRUPTIONS`` and
    ``severity`` in ``SEVERITIES``."""
    if name not in CORRUPTIONS:
        raise UsageError(f"unknown corruption {name!r}; known: {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise UsageError(f"severity must be 1 to 5, got {severity}")


def select_corruptions(names: Sequence[str] | None) -> list[str]:
    """The corruptions asked for by ``--corruptions`` (``"all"`` stands for every one), in
    ``CORRUPTIONS``' order; none for none. An unknown name is a ``UsageError``."""
    if not names:
        return []
    unknown = [name for name in names if name != "all" and name not in CORRUPTIONS]
    if unknown:
        raise UsageError(
            f"--corruptions: unknown {', '.join(unknown)}; known: {', '.join(CORRUPTIONS)}, all"
        )
    return [name for name in CORRUPTIONS if "all" in names or name in names]


def corrupt(image: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """``image`` (``(H, W, 3)`` uint8 RGB) with corruption ``name`` at ``severity`` (1-5);
    the random parts drawn from ``seed``."""
    check_corruption(name, severity)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.dtype} {image.shape}")
    return CORRUPTIONS[name](image, severity, np.random.default_rng(seed))
