"""Joint image/label augmentation on numpy arrays (OpenCV underneath).

Images are ``(H, W, 3)`` uint8 RGB, labels ``(H, W)`` uint8 with 255 = ignore. Geometric
transforms apply the same parameters to both (bilinear for the image, nearest for the label);
photometric ones touch the image only. Normalisation happens later, on the batch, on the
training device.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ddrnet.data.labels import IGNORE_INDEX


@dataclass
class TrainTransform:
    """Random scale, pad-and-crop, horizontal flip and photometric distortion.

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
        image, label = self.random_scale(image, label, rng)
        image, label = self.pad_and_crop(image, label, rng)
        if self.flip and rng.random() < 0.5:
            image, label = image[:, ::-1], label[:, ::-1]
        if self.photometric:
            image = photometric_distortion(image, rng)
        return np.ascontiguousarray(image), np.ascontiguousarray(label)

    def random_scale(
        self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        factor = rng.uniform(*self.scale_range)
        base_h, base_w = self.base_size or image.shape[:2]
        size = (max(1, round(base_w * factor)), max(1, round(base_h * factor)))  # cv2: (w, h)
        if size == (image.shape[1], image.shape[0]):
            return image, label
        image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
        label = cv2.resize(label, size, interpolation=cv2.INTER_NEAREST)
        return image, label

    def pad_and_crop(
        self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        crop_h, crop_w = self.crop_size
        pad_h, pad_w = max(crop_h - image.shape[0], 0), max(crop_w - image.shape[1], 0)
        if pad_h or pad_w:
            # Images are padded with black (0 before normalisation), labels with ignore,
            # so padding never contributes to the loss.
            image = cv2.copyMakeBorder(image, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=0)
            label = cv2.copyMakeBorder(
                label, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=self.ignore_index
            )
        top = int(rng.integers(0, image.shape[0] - crop_h + 1))
        left = int(rng.integers(0, image.shape[1] - crop_w + 1))
        return (
            image[top : top + crop_h, left : left + crop_w],
            label[top : top + crop_h, left : left + crop_w],
        )


def photometric_distortion(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random brightness (+-32), contrast (0.5-1.5), saturation (0.5-1.5) and hue (+-18 deg),
    each applied with probability 0.5, as in mmsegmentation's PhotoMetricDistortion."""
    image = image.astype(np.float32)
    if rng.random() < 0.5:
        image += rng.uniform(-32, 32)
    contrast_first = rng.random() < 0.5
    if contrast_first and rng.random() < 0.5:
        image *= rng.uniform(0.5, 1.5)
    image = np.clip(image, 0, 255)
    if rng.random() < 0.5 or rng.random() < 0.5:
        hsv = cv2.cvtColor(image.astype(np.uint8), cv2.COLOR_RGB2HSV).astype(np.float32)
        if rng.random() < 0.5:
            hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.5, 1.5), 0, 255)
        if rng.random() < 0.5:
            hsv[..., 0] = (hsv[..., 0] + rng.integers(-9, 10)) % 180  # OpenCV hue is 0..179
        image = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32)
    if not contrast_first and rng.random() < 0.5:
        image *= rng.uniform(0.5, 1.5)
    return np.clip(image, 0, 255).astype(np.uint8)
