"""How far an mIoU can be trusted: bootstrap intervals over frames (``ddrnet eval --ci``),
for one model and for the difference of two on the same frames (``--compare``).

A validation set is a sample of the streets a model will meet. Drawing its frames again with
replacement, as many as it has, and scoring each draw gives the spread an mIoU would have on
another sample of the same kind (Efron's percentile bootstrap). For two models the same draws
score both, so what the frames share (hard frames are hard for both) cancels out: a
difference of 0.3 mIoU on 101 frames is often inside that spread.

Frames of one video are not independent draws (CamVid's validation set is one 15 Hz clip),
so these intervals are the least uncertainty there is, not all of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ddrnet.engine.metrics import class_iou, mean_iou

RESAMPLES = 2000  # enough for the 2.5% and 97.5% percentiles to settle to about 0.1 mIoU
LEVEL = 0.95


def miou_of_counts(counts: np.ndarray) -> np.ndarray:
    """``(..., C, 3)`` counts (right, labelled, predicted pixels per class, as
    ``FrameScores.class_counts()``) summed over frames -> ``(...)`` mIoU in percent, as
    ``SegmentationMetrics`` computes it (``metrics.class_iou``, ``metrics.mean_iou``)."""
    counts = torch.from_numpy(np.asarray(counts, dtype=np.float64))
    iou = class_iou(counts[..., 0], counts[..., 1], counts[..., 2])
    return (100 * mean_iou(iou)).numpy()


def resample_weights(frames: int, resamples: int, seed: int) -> np.ndarray:
    """``(resamples, frames)`` int64: how often each frame is drawn in each resample (each
    row sums to ``frames``)."""
    generator = np.random.default_rng(seed)
    return generator.multinomial(frames, np.full(frames, 1.0 / frames), size=resamples)


@dataclass(frozen=True)
class Interval:
    """``value`` (the mIoU, or a difference of two, in points) and its bootstrap interval
    [``low``, ``high``] at ``level``."""

    value: float
    low: float
    high: float
    level: float
    frames: int
    resamples: int

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict:
        return {
            "value": self.value,
            "low": self.low,
            "high": self.high,
            "level": self.level,
            "frames": self.frames,
            "resamples": self.resamples,
        }


def _interval(value: float, draws: np.ndarray, level: float, frames: int) -> Interval:
    draws = draws[~np.isnan(draws)]
    tail = 100 * (1 - level) / 2
    if draws.size == 0 or math.isnan(value):
        low = high = math.nan
    else:
        low, high = (float(v) for v in np.percentile(draws, [tail, 100 - tail]))
    return Interval(value, low, high, level, frames, int(draws.size))


def _drawn_miou(weights: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``(R,)`` mIoU of each draw: ``(R, F)`` frame weights over ``(F, C, 3)`` counts."""
    return miou_of_counts(np.einsum("rf,fck->rck", weights, counts))


def frames_labelled_otherwise(counts: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Indices of the frames whose labelled pixels per class differ between two ``(F, C,
    3)`` counts of the same frames: labels changed or resized between the two evaluations,
    so their scores do not measure the same thing."""
    return np.flatnonzero((np.asarray(counts)[..., 1] != np.asarray(other)[..., 1]).any(axis=1))


def _checked(counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(counts)
    if counts.ndim != 3 or counts.shape[2] < 3 or counts.shape[0] < 2:
        raise ValueError(f"counts must be (frames >= 2, classes, 3), got {counts.shape}")
    return counts[..., :3].astype(np.float64)


def bootstrap_miou(
    counts: np.ndarray, resamples: int = RESAMPLES, level: float = LEVEL, seed: int = 0
) -> Interval:
    """The mIoU of ``(F, C, 3)`` per-frame counts and its percentile interval over
    ``resamples`` draws of the frames."""
    counts = _checked(counts)
    weights = resample_weights(counts.shape[0], resamples, seed).astype(np.float64)
    draws = _drawn_miou(weights, counts)
    return _interval(float(miou_of_counts(counts.sum(0))), draws, level, counts.shape[0])


def paired_difference(
    counts: np.ndarray,
    other: np.ndarray,
    resamples: int = RESAMPLES,
    level: float = LEVEL,
    seed: int = 0,
) -> Interval:
    """mIoU of ``counts`` minus mIoU of ``other`` (two models' ``(F, C, 3)`` counts on the
    same frames, in the same order), and its interval, each draw scoring both models on
    the same frames."""
    counts, other = _checked(counts), _checked(other)
    if counts.shape != other.shape:
        raise ValueError(f"counts {counts.shape} and {other.shape} are not of the same frames")
    relabelled = frames_labelled_otherwise(counts, other)
    if relabelled.size:
        raise ValueError(f"frames {relabelled[:10].tolist()} have other labels in the two counts")
    weights = resample_weights(counts.shape[0], resamples, seed).astype(np.float64)
    draws = _drawn_miou(weights, counts) - _drawn_miou(weights, other)
    value = float(miou_of_counts(counts.sum(0)) - miou_of_counts(other.sum(0)))
    return _interval(value, draws, level, counts.shape[0])
