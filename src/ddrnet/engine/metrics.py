"""Confusion-matrix metrics: IoU per class, mIoU, pixel and mean accuracy."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ddrnet.models.metadata import IGNORE_INDEX


def ratio_or_nan(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """``numerator / denominator`` elementwise (float tensors of counts), ``nan`` where the
    denominator is 0: a class with nothing to score, left out of the means."""
    return torch.where(denominator > 0, numerator / denominator.clamp(min=1), torch.nan)


def class_iou(true: torch.Tensor, labelled: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
    """IoU per class (a ratio) from ``(..., C)`` counts of the pixels predicted right, the
    labelled pixels and the predicted ones (among the labelled): ``nan`` for a class neither
    labelled nor predicted. The one definition behind the whole set's, each frame's
    (``frame_scores``) and each bootstrap draw's (``bootstrap``) IoU."""
    true, labelled, predicted = true.double(), labelled.double(), predicted.double()
    return ratio_or_nan(true, labelled + predicted - true)


def mean_iou(iou: torch.Tensor) -> torch.Tensor:
    """``(..., C)`` IoU per class -> ``(...)`` their mean over the classes scored (not
    ``nan``); ``nan`` where none is (the usual convention)."""
    return iou.nanmean(dim=-1)


def percent_or_nan(numerator: torch.Tensor, denominator: torch.Tensor) -> list[float]:
    """``ratio_or_nan`` in percent, as a list of floats (one for 0-d tensors)."""
    return [float(v) * 100 for v in ratio_or_nan(numerator, denominator).reshape(-1)]


def nanmean(values: list[float]) -> float:
    """The mean of the values that are not ``nan`` (``nan`` if there are none)."""
    present = [v for v in values if not math.isnan(v)]
    return sum(present) / len(present) if present else float("nan")


def format_cell(value: float, spec: str = ".2f") -> str:
    """A table cell: ``value`` formatted by ``spec``, ``-`` for ``nan`` (nothing scored)."""
    return "-" if math.isnan(value) else format(value, spec)


def confusion_counts(
    prediction: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """The ``(C, C)`` int64 CPU matrix of one prediction, rows = ground truth, columns =
    prediction, of integer tensors of one shape; pixels whose label is ``ignore_index`` (or
    otherwise outside ``0..C-1``) are skipped."""
    if prediction.shape != target.shape:
        raise ValueError(
            f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ"
        )
    target = target.flatten().long()
    prediction = prediction.flatten().long()
    valid = (target >= 0) & (target < num_classes) & (target != ignore_index)
    index = target[valid] * num_classes + prediction[valid]
    counts = torch.bincount(index, minlength=num_classes**2)
    return counts.reshape(num_classes, num_classes).cpu()


class ConfusionMatrix:
    """Accumulates a ``(C, C)`` matrix, rows = ground truth, columns = prediction.

    Pixels whose label is ``ignore_index`` (or otherwise outside ``0..C-1``) are skipped.
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """``prediction`` and ``target``: integer tensors of the same shape."""
        self.matrix += confusion_counts(prediction, target, self.num_classes, self.ignore_index)

    def merge(self, other: torch.Tensor) -> None:
        self.matrix += other.cpu()

    def compute(self) -> SegmentationMetrics:
        return SegmentationMetrics.from_matrix(self.matrix)


@dataclass
class SegmentationMetrics:
    """Metrics in percent. ``iou[k]`` is ``nan`` for a class absent from both ground truth
    and predictions; ``miou`` averages the others (the usual convention)."""

    iou: list[float]
    miou: float
    pixel_accuracy: float
    mean_accuracy: float
    matrix: torch.Tensor

    @classmethod
    def from_matrix(cls, matrix: torch.Tensor) -> SegmentationMetrics:
        matrix = matrix.double()
        true_positive = matrix.diag()
        ground_truth = matrix.sum(dim=1)
        iou = class_iou(true_positive, ground_truth, matrix.sum(dim=0))
        accuracy = ratio_or_nan(true_positive, ground_truth)
        total = matrix.sum()
        return cls(
            iou=[float(v) * 100 for v in iou],
            miou=float(mean_iou(iou)) * 100,
            pixel_accuracy=float(true_positive.sum() / total) * 100 if total > 0 else float("nan"),
            mean_accuracy=float(accuracy.nanmean()) * 100
            if (ground_truth > 0).any()
            else float("nan"),
            matrix=matrix.long(),
        )

    def to_dict(self, class_names: list[str] | None = None) -> dict:
        names = class_names or [str(i) for i in range(len(self.iou))]
        return {
            "mIoU": self.miou,
            "pixel_accuracy": self.pixel_accuracy,
            "mean_accuracy": self.mean_accuracy,
            "per_class_IoU": {name: value for name, value in zip(names, self.iou)},
            "confusion_matrix": self.matrix.tolist(),
        }

    def table(self, class_names: list[str] | None = None) -> str:
        names = class_names or [str(i) for i in range(len(self.iou))]
        width = max(12, *(len(n) for n in names)) + 2
        lines = [f"{'class':<{width}}{'IoU (%)':>9}", "-" * (width + 9)]
        lines += [f"{name:<{width}}{format_cell(value):>9}" for name, value in zip(names, self.iou)]
        lines += [
            "-" * (width + 9),
            f"{'mIoU':<{width}}{format_cell(self.miou):>9}",
            f"{'pixel acc':<{width}}{format_cell(self.pixel_accuracy):>9}",
            f"{'mean acc':<{width}}{format_cell(self.mean_accuracy):>9}",
        ]
        return "\n".join(lines)
