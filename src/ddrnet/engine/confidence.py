"""Whether the model's confidence can be trusted: calibration of its per-pixel probabilities
(``ddrnet eval --confidence``; not the INT8 calibration images of ``deploy/calibration.py``).

A robot that acts on a segmentation needs to know which pixels to doubt. The confidence of a
pixel is its largest class probability (softmax of the logits; the averaged probabilities of a
test-time-augmented pass). Accumulated over a data set like the confusion matrix:

* **ECE**, expected calibration error (Guo et al., ICML 2017, arXiv 1706.04599): pixels binned
  by confidence into ``ECE_BINS`` equal bins ``((m-1)/M, m/M]``; the mean over the bins, each
  weighted by its share of the pixels, of |accuracy - mean confidence|. 0 for a model whose
  90%-confident pixels are right 90% of the time, at every level. The bins themselves are the
  reliability diagram (``ddrnet viz confidence``).
* **NLL**: the mean negative log-likelihood of the labelled class, in nats (probabilities
  floored at ``PROBABILITY_FLOOR``, which float32 softmax rounds to 0 far out).
* **Selective accuracy**: for each threshold ``t`` of ``CONFIDENCE_THRESHOLDS``, the share of
  the pixels with confidence >= ``t``, their accuracy, and the share of all wrong pixels that
  fall below ``t``: what flagging the pixels under ``t`` as unknown (``ddrnet predict
  --min-confidence t``) keeps and catches.
* **Per predicted class**: the mean confidence of the pixels predicted as a class beside the
  share of them that are right (its pixel precision): which classes it over- or under-trusts.

Pixels labelled ``ignore_index`` (or outside the classes) count for nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ddrnet.engine.metrics import format_cell, percent_or_nan
from ddrnet.models.metadata import IGNORE_INDEX

ECE_BINS = 15
CONFIDENCE_THRESHOLDS = (0.5, 0.7, 0.9, 0.95, 0.99)
PROBABILITY_FLOOR = 1e-12


class ConfidenceMetrics:
    """Accumulates confidence statistics over ``(N, C, H, W)`` class probabilities.

    ``counts`` is one float64 ``(rows, 3)`` tensor, so that processes of a distributed
    evaluation can sum it. Columns: pixels, sum of their confidence, pixels predicted right.
    Rows: the ``ECE_BINS`` confidence bins, then one per ``CONFIDENCE_THRESHOLDS`` (pixels at
    or above it), then one per predicted class, then the total, whose middle column holds the
    summed negative log-likelihood instead of the confidence.
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        rows = ECE_BINS + len(CONFIDENCE_THRESHOLDS) + num_classes + 1
        self.counts = torch.zeros(rows, 3, dtype=torch.float64)

    def update(self, probabilities: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Add a batch: ``probabilities`` ``(N, C, H, W)`` (each pixel's sum 1), ``target``
        ``(N, H, W)`` integer labels on the same device. Returns the ``(N, H, W)`` int64
        arg-max class ids that were scored, for the caller's confusion matrix."""
        if probabilities.ndim != 4 or probabilities.shape[1] != self.num_classes:
            raise ValueError(
                f"expected (N, {self.num_classes}, H, W) probabilities, got "
                f"{tuple(probabilities.shape)}"
            )
        if target.shape != probabilities.shape[:1] + probabilities.shape[2:]:
            raise ValueError(f"labels {tuple(target.shape)} do not match {probabilities.shape}")
        confidence, prediction = probabilities.max(dim=1)
        target = target.to(probabilities.device).long()
        valid = (target >= 0) & (target < self.num_classes) & (target != self.ignore_index)
        truth = target.clamp(0, self.num_classes - 1).unsqueeze(1)
        true_probability = probabilities.gather(1, truth).squeeze(1)[valid].double()
        # Compared in the probabilities' own precision, as ``--min-confidence`` compares them.
        confidence_as_computed = confidence[valid].cpu()
        confidence = confidence_as_computed.double()
        predicted = prediction[valid].cpu()
        right = (predicted == target[valid].cpu()).double()
        nll = -true_probability.clamp(min=PROBABILITY_FLOOR).log().sum().cpu()
        rows = torch.zeros_like(self.counts)
        bins = (confidence_as_computed * ECE_BINS).ceil().long().clamp(1, ECE_BINS) - 1
        rows[:ECE_BINS] = _grouped(bins, ECE_BINS, confidence, right)
        start = ECE_BINS
        for offset, threshold in enumerate(CONFIDENCE_THRESHOLDS):
            kept = confidence_as_computed >= threshold
            rows[start + offset] = torch.stack(
                [kept.sum().double(), confidence[kept].sum(), right[kept].sum()]
            )
        start += len(CONFIDENCE_THRESHOLDS)
        rows[start : start + self.num_classes] = _grouped(
            predicted, self.num_classes, confidence, right
        )
        rows[-1] = torch.stack(
            [torch.tensor(float(right.numel()), dtype=torch.float64), nll, right.sum()]
        )
        self.counts += rows
        return prediction

    def compute(self) -> ConfidenceResult:
        return ConfidenceResult.from_counts(self.counts)


def _grouped(
    groups: torch.Tensor, count: int, confidence: torch.Tensor, right: torch.Tensor
) -> torch.Tensor:
    """``(count, 3)``: pixels, confidence sum and right pixels of each group id."""
    return torch.stack(
        [
            torch.bincount(groups, minlength=count).double(),
            torch.bincount(groups, weights=confidence, minlength=count),
            torch.bincount(groups, weights=right, minlength=count),
        ],
        dim=1,
    )


@dataclass
class ConfidenceResult:
    """Percentages (``nan`` where nothing was scored) and the NLL in nats.

    ``bins``: per confidence bin ``(low, high, share of pixels, mean confidence, accuracy)``.
    ``selective``: per threshold ``(threshold, share of pixels kept, their accuracy, share of
    the errors below the threshold)``. ``class_confidence`` / ``class_precision``: per
    predicted class, the mean confidence and the share right of its pixels.
    """

    pixels: int
    accuracy: float
    mean_confidence: float
    ece: float
    nll: float
    bins: list[tuple[float, float, float, float, float]]
    selective: list[tuple[float, float, float, float]]
    class_confidence: list[float]
    class_precision: list[float]

    @classmethod
    def from_counts(cls, counts: torch.Tensor) -> ConfidenceResult:
        """The result of ``ConfidenceMetrics.counts`` (see there for its layout)."""
        counts = counts.double()
        bins = counts[:ECE_BINS]
        kept = counts[ECE_BINS : ECE_BINS + len(CONFIDENCE_THRESHOLDS)]
        per_class = counts[ECE_BINS + len(CONFIDENCE_THRESHOLDS) : -1]
        pixels, nll_sum, right = counts[-1]
        wrong = pixels - right
        share = percent_or_nan(bins[:, 0], pixels)
        confidence = percent_or_nan(bins[:, 1], bins[:, 0])
        accuracy = percent_or_nan(bins[:, 2], bins[:, 0])
        gaps = [s / 100 * abs(a - c) for s, a, c in zip(share, accuracy, confidence) if s > 0]
        edges = [(m / ECE_BINS, (m + 1) / ECE_BINS) for m in range(ECE_BINS)]
        (overall,) = percent_or_nan(right, pixels)
        (mean_confidence,) = percent_or_nan(bins[:, 1].sum(), pixels)
        return cls(
            pixels=int(pixels),
            accuracy=overall,
            mean_confidence=mean_confidence,
            ece=sum(gaps) if pixels > 0 else float("nan"),
            nll=float(nll_sum / pixels) if pixels > 0 else float("nan"),
            bins=[(*edge, *values) for edge, *values in zip(edges, share, confidence, accuracy)],
            selective=list(
                zip(
                    CONFIDENCE_THRESHOLDS,
                    percent_or_nan(kept[:, 0], pixels),
                    percent_or_nan(kept[:, 2], kept[:, 0]),
                    percent_or_nan(wrong - (kept[:, 0] - kept[:, 2]), wrong),
                )
            ),
            class_confidence=percent_or_nan(per_class[:, 1], per_class[:, 0]),
            class_precision=percent_or_nan(per_class[:, 2], per_class[:, 0]),
        )

    def to_dict(self, class_names: list[str]) -> dict:
        return {
            "pixels": self.pixels,
            "accuracy": self.accuracy,
            "mean_confidence": self.mean_confidence,
            "ECE": self.ece,
            "ECE_bins": ECE_BINS,
            "NLL": self.nll,
            "reliability": [
                {"low": low, "high": high, "pixels": share, "confidence": conf, "accuracy": acc}
                for low, high, share, conf, acc in self.bins
            ],
            "selective": [
                {"min_confidence": t, "pixels": kept, "accuracy": acc, "errors_below": caught}
                for t, kept, acc, caught in self.selective
            ],
            "predicted_class": {
                name: {"confidence": conf, "precision": precision}
                for name, conf, precision in zip(
                    class_names, self.class_confidence, self.class_precision
                )
            },
        }

    def table(self, class_names: list[str]) -> str:
        """The summary line, the selective-accuracy table and the per-class one."""
        cell = format_cell
        lines = [
            f"calibration over {self.pixels:,} pixels: accuracy {cell(self.accuracy)}%, "
            f"mean confidence {cell(self.mean_confidence)}%, ECE {cell(self.ece)}% "
            f"({ECE_BINS} bins), NLL {self.nll:.4f} nats",
            "",
            f"{'confidence':<14}{'pixels':>10}{'accuracy':>10}{'errors below':>14}",
        ]
        for threshold, kept, accuracy, caught in self.selective:
            at_least = f">= {threshold:g}"
            lines.append(f"{at_least:<14}{cell(kept):>10}{cell(accuracy):>10}{cell(caught):>14}")
        width = max(14, *(len(n) for n in class_names)) + 2
        header = f"{'predicted as':<{width}}{'confidence':>12}{'precision':>11}{'gap':>8}"
        lines += ["", header, "-" * len(header)]
        for name, conf, right in zip(class_names, self.class_confidence, self.class_precision):
            gap = cell(conf - right, "+.2f")
            lines.append(f"{name:<{width}}{cell(conf):>12}{cell(right):>11}{gap:>8}")
        lines.append("(%; gap > 0: more confident than right, < 0: less)")
        return "\n".join(lines)
