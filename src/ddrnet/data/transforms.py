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

from dataclasses import dataclass

import cv2
import numpy as np

from ddrnet.data.labels import IGNORE_INDEX


@dataclass
class TrainTransform:
    """Random scale, crop (labels padded with ignore), horizontal flip, photometric distortion.

    Attributes:
        crop_size: ``(height, width)`` of the output in pixels.
        scale_range: the image is resized by a factor drawn uniformly from this range
            (relative to ``base_size`` when given, else to the image itself).
        base_size: optional ``(height, width)`` the scale factor is relative to.
    """

    crop_size: tuple[int, int]
    scale_range: tuple[float, float] = (0.5, 2.0)
    flip: bool = True
    photometric: bool = True
    base_size: tuple[int, int] | None = None
    ignore_index: int = IGNORE_INDEX

    def __call__(
        self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        image, label = self.scale_crop_flip(image, label, rng)
        if self.photometric:
            image = photometric_distortion(image, rng)
        return image, label

    def scale_crop_flip(
        self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Equivalent to: resize by a random factor (as ``cv2.resize``), pad bottom/right to the
        crop size, take a random crop, flip with probability 0.5; done as one warp. Padding
        is ignore in the label (so it never enters the loss); the image repeats its edge
        there, which also makes the border rows identical to ``cv2.resize``'s."""
        height, width = image.shape[:2]
        crop_h, crop_w = self.crop_size
        factor = rng.uniform(*self.scale_range)
        base_h, base_w = self.base_size or (height, width)
        scaled_h = max(1, round(base_h * factor))
        scaled_w = max(1, round(base_w * factor))
        scale_y, scale_x = scaled_h / height, scaled_w / width
        top = int(rng.integers(0, max(scaled_h - crop_h, 0) + 1))
        left = int(rng.integers(0, max(scaled_w - crop_w, 0) + 1))
        flip = self.flip and rng.random() < 0.5
        # Pixel centres as in cv2.resize: x_out + 0.5 = (x_in + 0.5) * scale, then the crop
        # offset, then the mirror x -> crop_w - 1 - x.
        tx = 0.5 * scale_x - 0.5 - left
        ty = 0.5 * scale_y - 0.5 - top
        if flip:
            matrix = np.array([[-scale_x, 0, crop_w - 1 - tx], [0, scale_y, ty]], np.float64)
        else:
            matrix = np.array([[scale_x, 0, tx], [0, scale_y, ty]], np.float64)
        image = cv2.warpAffine(
            image, matrix, (crop_w, crop_h), flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REPLICATE,
        )  # fmt: skip
        label = cv2.warpAffine(
            label, matrix, (crop_w, crop_h), flags=cv2.INTER_NEAREST,
            borderMode=cv2.BORDER_CONSTANT, borderValue=self.ignore_index,
        )  # fmt: skip
        return image, label


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
