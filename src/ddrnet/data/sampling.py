"""Frame sampling that favours frames rich in rare classes (``data.rare_class_sampling``).

Each frame's weight is the mean rarity of its labelled pixels,

    w_i = sum_c s_ic * f_c ** -power,      normalised to mean 1 over the frames,

where ``s_ic`` is the share of frame ``i``'s labelled pixels in class ``c`` and ``f_c`` the
share of class ``c`` among all labelled training pixels (void excluded). ``power = 0`` is
uniform; ``1`` weights a frame by how rare its average pixel is. The share, not the mere
presence, of a class counts because on street scenes nearly every frame holds a few pixels of
every class (on CamVid 0001TP + 0016E5: Pole in all frames, Bicyclist in 70%), so weights
by presence (LVIS repeat factors) hardly differ between frames.

Frames are drawn with replacement, ``len(dataset)`` per epoch in all, from one stream seeded
by ``(seed, epoch)`` and shared by every process; under DDP process ``r`` takes draws
``r, r + world_size, ...``, so the processes split one weighted sample as
``DistributedSampler`` splits one permutation.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

from ddrnet.data.datasets import DatasetError

logger = logging.getLogger(__name__)


def frame_class_pixels(dataset, num_classes: int) -> np.ndarray:
    """Pixels of each class in each un-augmented label, ``(len(dataset), num_classes)`` int64.

    ``dataset`` has ``load(index) -> (image, label)`` with ``(H, W)`` uint8 training ids
    (``PairedSegmentationDataset``); values >= ``num_classes`` (ignore) are not counted.
    With ``cache_images`` the labels are in memory already; else every file is read once.
    """
    counts = np.zeros((len(dataset), num_classes), dtype=np.int64)
    for index in range(len(dataset)):
        _, label = dataset.load(index)
        counts[index] = np.bincount(label.ravel(), minlength=256)[:num_classes]
    return counts


def rare_class_weights(counts: np.ndarray, power: float) -> np.ndarray:
    """Per-frame sampling weights ``(N,)`` float64, mean 1, from ``(N, C)`` pixel counts (see
    the module docstring). A frame without labelled pixels gets weight 0: it teaches nothing."""
    if power < 0 or not math.isfinite(power):
        raise ValueError(f"rare_class_sampling must be >= 0, got {power!r}")
    counts = np.asarray(counts, dtype=np.float64)
    frequency = counts.sum(0) / max(counts.sum(), 1.0)
    # Classes absent from the training labels have no pixels to weight; 0 keeps them out.
    rarity = np.zeros_like(frequency)
    present = frequency > 0
    # Relative to the rarest class (rarity 1): the same proportions as frequency ** -power,
    # which overflows for large powers.
    rarity[present] = (frequency[present] / frequency[present].min()) ** -power
    per_frame = counts.sum(1, keepdims=True)
    shares = np.divide(counts, per_frame, out=np.zeros_like(counts), where=per_frame > 0)
    weights = shares @ rarity
    if not weights.any():
        raise DatasetError("rare_class_sampling: the training labels hold no labelled pixels")
    return weights / weights.mean()


def logged_frame_weights(counts: np.ndarray, power: float) -> np.ndarray:
    """``rare_class_weights`` of ``(N, C)`` pixel counts (``frame_class_pixels``), logged."""
    weights = rare_class_weights(counts, power)
    logger.info(
        "rare-class sampling (power %g): %d frame weights %.2f-%.2f (mean 1)",
        power, len(weights), weights.min(), weights.max(),
    )  # fmt: skip
    return weights


class WeightedFrameSampler(Sampler[int]):
    """Frame indices drawn with replacement in proportion to ``weights``; DDP-aware.

    Every process draws the same ``num_replicas * ceil(N / num_replicas)`` indices from a
    generator seeded with ``seed + epoch`` (``set_epoch`` as with ``DistributedSampler``) and
    keeps every ``num_replicas``-th, starting at ``rank``.
    """

    def __init__(
        self, weights: np.ndarray, num_replicas: int = 1, rank: int = 0, seed: int = 0
    ) -> None:
        self.weights = torch.as_tensor(np.asarray(weights), dtype=torch.float64)
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, {num_replicas})")
        self.num_replicas, self.rank, self.seed, self.epoch = num_replicas, rank, seed, 0
        self.num_samples = math.ceil(len(self.weights) / num_replicas)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        total = self.num_samples * self.num_replicas
        drawn = torch.multinomial(self.weights, total, replacement=True, generator=generator)
        return iter(drawn[self.rank :: self.num_replicas].tolist())
