"""Joint image/label augmentation on numpy arrays (OpenCV underneath).

Images are ``(H, W, 3)`` uint8 RGB, labels ``(H, W)`` uint8 with 255 = ignore. Geometric
transforms apply the same parameters to both (bilinear for the image, nearest for the label);
photometric ones touch the image only. Normalisation happens later, on the batch, on the
training device.

Both stages are written for CPU training, where the data pipeline shares the cores with the
network: scale-and-crop is one affine warp that computes only the output crop (resizing the
whole image to 2x and then cutting out a crop wastes most of the work), and the photometric
changes are 256-entry lookup tables on uint8 data instead of float arithmetic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from ddrnet.data.labels import IGNORE_INDEX

# Crops drawn at most per image under cat_max_ratio (mmsegmentation's RandomCrop uses 10).
CAT_MAX_TRIES = 10


@dataclass
class TrainTransform:
    """Random scale (optionally with aspect change and rotation), crop (labels padded with
    ignore), horizontal flip, photometric distortion, optional gamma, blur and noise.

    Every option that is None (the default) draws nothing from the random generator, so a
    transform without them gives exactly the output it gave before they existed.

    Attributes:
        crop_size: ``(height, width)`` of the output in pixels.
        scale_range: the image is resized by a factor drawn uniformly from this range
            (relative to ``base_size`` when given, else to the image itself).
        base_size: optional ``(height, width)`` the scale factor is relative to.
        cat_max_ratio: re-draw the crop position (same scale, up to ``CAT_MAX_TRIES`` crops)
            while one class covers more than this fraction of the crop's labelled pixels;
            if no crop passes, the one with the smallest dominant fraction is kept.
        aspect_range: ``(low, high)`` width/height stretch ``a``, drawn log-uniformly: the
            width is scaled by ``factor * sqrt(a)``, the height by ``factor / sqrt(a)``.
        rotate_degrees: rotate by an angle drawn uniformly from ``[-d, d]`` degrees
            (counter-clockwise as displayed) about the centre of the crop's image area.
        gamma_range, blur_sigma, noise_std: see ``photometric_extras``.
    """

    crop_size: tuple[int, int]
    scale_range: tuple[float, float] = (0.5, 2.0)
    flip: bool = True
    photometric: bool = True
    base_size: tuple[int, int] | None = None
    ignore_index: int = IGNORE_INDEX
    cat_max_ratio: float | None = None
    aspect_range: tuple[float, float] | None = None
    rotate_degrees: float | None = None
    gamma_range: tuple[float, float] | None = None
    blur_sigma: float | None = None
    noise_std: float | None = None

    def __call__(
        self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        image, label = self.scale_crop_flip(image, label, rng)
        if self.photometric:
            image = photometric_distortion(image, rng)
        image = photometric_extras(image, rng, self.gamma_range, self.blur_sigma, self.noise_std)
        return image, label

    def scale_crop_flip(
        self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Equivalent to: resize by a random factor (as ``cv2.resize``), pad bottom/right to the
        crop size, take a random crop, flip with probability 0.5; done as one warp. Padding
        is ignore in the label (so it never enters the loss); the image repeats its edge
        there, which also makes the border rows identical to ``cv2.resize``'s. Aspect change
        and rotation, when on, enter the same matrix."""
        height, width = image.shape[:2]
        crop_h, crop_w = self.crop_size
        factor = rng.uniform(*self.scale_range)
        factor_y = factor_x = factor
        if self.aspect_range is not None:
            # Log-uniform, so that a and 1/a are equally likely; the area stays factor^2.
            stretch = math.sqrt(math.exp(rng.uniform(*np.log(self.aspect_range))))
            factor_x, factor_y = factor * stretch, factor / stretch
        base_h, base_w = self.base_size or (height, width)
        scaled_h = max(1, round(base_h * factor_y))
        scaled_w = max(1, round(base_w * factor_x))
        scale = (scaled_h / height, scaled_w / width)
        top = int(rng.integers(0, max(scaled_h - crop_h, 0) + 1))
        left = int(rng.integers(0, max(scaled_w - crop_w, 0) + 1))
        flip = self.flip and rng.random() < 0.5
        angle = (
            rng.uniform(-self.rotate_degrees, self.rotate_degrees) if self.rotate_degrees else 0.0
        )
        best: tuple[float, np.ndarray, np.ndarray] | None = None
        for attempt in range(CAT_MAX_TRIES if self.cat_max_ratio is not None else 1):
            if attempt:  # mmsegmentation's cat_max_ratio: a new position, same scale
                top = int(rng.integers(0, max(scaled_h - crop_h, 0) + 1))
                left = int(rng.integers(0, max(scaled_w - crop_w, 0) + 1))
            # Rotate about the middle of the area the image covers in the crop, so that small
            # scales (image smaller than the crop) do not swing the image out of the crop.
            pivot = ((min(crop_w, scaled_w - left) - 1) / 2, (min(crop_h, scaled_h - top) - 1) / 2)
            matrix = crop_matrix(scale, (top, left), crop_w, flip, angle, pivot)
            cropped = cv2.warpAffine(
                label, matrix, (crop_w, crop_h), flags=cv2.INTER_NEAREST,
                borderMode=cv2.BORDER_CONSTANT, borderValue=self.ignore_index,
            )  # fmt: skip
            if self.cat_max_ratio is None:
                best = (0.0, matrix, cropped)
                break
            fraction = dominant_fraction(cropped, self.ignore_index)
            if best is None or fraction < best[0]:
                best = (fraction, matrix, cropped)
            if fraction <= self.cat_max_ratio:
                break
        assert best is not None
        _, matrix, label = best
        image = cv2.warpAffine(
            image, matrix, (crop_w, crop_h), flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REPLICATE,
        )  # fmt: skip
        return image, label


def crop_matrix(
    scale: tuple[float, float],
    offset: tuple[int, int],
    crop_width: int,
    flip: bool,
    angle: float = 0.0,
    pivot: tuple[float, float] = (0.0, 0.0),
) -> np.ndarray:
    """The ``(2, 3)`` float64 affine matrix from input pixel ``(x, y)`` to crop pixel.

    ``scale``: ``(scale_y, scale_x)`` output pixels per input pixel; ``offset``: ``(top,
    left)`` of the crop in the scaled image; ``angle``: degrees counter-clockwise (as
    displayed, y down) about ``pivot`` ``(x, y)`` in crop pixels; ``flip`` mirrors the crop
    (after the rotation) about its vertical centre line.
    """
    scale_y, scale_x = scale
    top, left = offset
    # Pixel centres as in cv2.resize: x_out + 0.5 = (x_in + 0.5) * scale, then the crop
    # offset, then the rotation, then the mirror x -> crop_w - 1 - x.
    tx = 0.5 * scale_x - 0.5 - left
    ty = 0.5 * scale_y - 0.5 - top
    matrix = np.array([[scale_x, 0, tx], [0, scale_y, ty]], np.float64)
    if angle:
        rotation = cv2.getRotationMatrix2D(pivot, angle, 1.0)
        matrix = rotation[:, :2] @ matrix + np.array([[0, 0, 1], [0, 0, 1]]) * rotation[:, 2:]
    if flip:
        matrix[0] = [-matrix[0, 0], -matrix[0, 1], crop_width - 1 - matrix[0, 2]]
    return matrix


def dominant_fraction(label: np.ndarray, ignore_index: int = IGNORE_INDEX) -> float:
    """Share of the most frequent class among the labelled pixels of a uint8 ``label``
    (1.0 when nothing is labelled, so such a crop never counts as balanced)."""
    counts = np.bincount(label.ravel(), minlength=256)
    counts[ignore_index] = 0
    total = counts.sum()
    return float(counts.max() / total) if total else 1.0


def _affine_lut(gain: float, offset: float) -> np.ndarray:
    """uint8 table of ``clip(v * gain + offset, 0, 255)``."""
    values = np.arange(256, dtype=np.float32) * gain + offset
    return np.clip(np.round(values), 0, 255).astype(np.uint8)


def photometric_distortion(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random brightness (+-32), contrast (x0.5-1.5), saturation (x0.5-1.5) and hue (+-18
    degrees), each with probability 0.5; contrast comes before or after the colour changes
    with equal chance. This is mmsegmentation's PhotoMetricDistortion on uint8 tables."""
    brightness = rng.uniform(-32, 32) if rng.random() < 0.5 else 0.0
    contrast_first = rng.random() < 0.5
    contrast = rng.uniform(0.5, 1.5) if rng.random() < 0.5 else 1.0
    saturation = rng.uniform(0.5, 1.5) if rng.random() < 0.5 else 1.0
    hue_shift = int(rng.integers(-9, 10)) if rng.random() < 0.5 else 0  # OpenCV hue: 0..179
    if contrast_first:
        # Brightness then contrast, composed into one table: clip(clip(v + b) * c).
        table = _affine_lut(1.0, brightness)
        table = _affine_lut(contrast, 0.0)[table]
    else:
        table = _affine_lut(1.0, brightness)
    image = cv2.LUT(image, table)
    if saturation != 1.0 or hue_shift:
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
        if saturation != 1.0:
            hsv[..., 1] = cv2.LUT(hsv[..., 1], _affine_lut(saturation, 0.0))
        if hue_shift:
            hue_table = ((np.arange(256) + hue_shift) % 180).astype(np.uint8)
            hsv[..., 0] = cv2.LUT(hsv[..., 0], hue_table)
        image = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if not contrast_first and contrast != 1.0:
        image = cv2.LUT(image, _affine_lut(contrast, 0.0))
    return image


def photometric_extras(
    image: np.ndarray,
    rng: np.random.Generator,
    gamma_range: tuple[float, float] | None = None,
    blur_sigma: float | None = None,
    noise_std: float | None = None,
) -> np.ndarray:
    """Gamma, Gaussian blur and Gaussian noise on an ``(H, W, 3)`` uint8 image, each switched
    on by its argument and then applied with probability 0.5 (as the photometric distortion).

    ``gamma_range``: ``v -> 255 (v / 255) ** g`` with ``g`` drawn log-uniformly (g < 1
    brightens the shadows). ``blur_sigma``: Gaussian blur, sigma drawn uniformly from
    ``(0, blur_sigma]`` pixels (of the crop). ``noise_std``: per-pixel, per-channel Gaussian
    noise whose standard deviation, in grey levels, is drawn uniformly from ``(0, noise_std]``.
    An argument left None draws nothing from ``rng``.
    """
    if gamma_range is not None and rng.random() < 0.5:
        gamma = math.exp(rng.uniform(*np.log(gamma_range)))
        table = 255.0 * (np.arange(256, dtype=np.float64) / 255.0) ** gamma
        image = cv2.LUT(image, np.clip(np.round(table), 0, 255).astype(np.uint8))
    if blur_sigma is not None and rng.random() < 0.5:
        sigma = rng.uniform(0.0, blur_sigma)
        if sigma > 0:  # OpenCV derives the kernel size from sigma; 0 would be an error
            image = cv2.GaussianBlur(image, (0, 0), sigmaX=sigma, sigmaY=sigma)
    if noise_std is not None and rng.random() < 0.5:
        std = rng.uniform(0.0, noise_std)
        # OpenCV's generator, seeded from rng, is ~5x faster than numpy's normals here (2 ms
        # for a 352x480 crop), which matters where the data pipeline shares a 2-core CPU.
        cv2.setRNGSeed(int(rng.integers(0, 2**31)))
        noise = np.empty(image.shape, np.float32)
        cv2.randn(noise, (0.0,) * 3, (std,) * 3)  # a scalar would be the first channel's only
        image = cv2.add(image.astype(np.float32), noise, dtype=cv2.CV_8U)  # rounds, saturates
    return image
