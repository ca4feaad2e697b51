"""mIoU under camera corruptions (``data/corruptions.py``): how a model degrades with noise,
blur, fog, darkness and compression, through the one evaluation loop; and, if asked, whether
its confidence still warns of its errors there (``engine/confidence.py``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ddrnet.data.corruptions import CORRUPTIONS, SEVERITIES, check_corruption, corrupt
from ddrnet.engine.confidence import ConfidenceMetrics, ConfidenceResult
from ddrnet.engine.metrics import SegmentationMetrics, format_cell, nanmean


class CorruptedDataset(Dataset):
    """An evaluation set whose images are corrupted: ``dataset[i]`` gives ``(image, label)``
    with ``image`` a ``(3, H, W)`` uint8 tensor; image ``i`` draws its noise from the seed
    ``(seed, i, severity, name)``, the same for every model and run."""

    def __init__(self, dataset: Dataset, name: str, severity: int, seed: int = 0) -> None:
        check_corruption(name, severity)  # before any frame is read
        self.dataset, self.name, self.severity, self.seed = dataset, name, severity, seed
        self._name_key = sum(ord(ch) * 31**k for k, ch in enumerate(name)) % 2**31

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Any]:
        image, label = self.dataset[index]
        seed = np.random.SeedSequence([self.seed, index, self.severity, self._name_key])
        pixels = image.permute(1, 2, 0).contiguous().numpy()
        corrupted = corrupt(pixels, self.name, self.severity, int(seed.generate_state(1)[0]))
        return torch.from_numpy(corrupted).permute(2, 0, 1).contiguous(), label


@dataclass
class RobustnessResult:
    """mIoU in percent per corruption and severity, beside the clean mIoU.

    ``relative`` is the mean corrupted mIoU over the clean one (1.0: no loss), the
    robustness measure of Kamann & Rother (CVPR 2020) averaged over what was run.
    ``confidence``, when measured, holds the confidence statistics of each corruption and
    severity alike.
    """

    clean_miou: float
    miou: dict[str, dict[int, float]] = field(default_factory=dict)
    confidence: dict[str, dict[int, ConfidenceResult]] = field(default_factory=dict)

    def mean(self, name: str) -> float:
        values = list(self.miou[name].values())
        return sum(values) / len(values)

    @property
    def mean_corrupted(self) -> float:
        means = [self.mean(name) for name in self.miou]
        return sum(means) / len(means)

    @property
    def relative(self) -> float:
        return self.mean_corrupted / self.clean_miou if self.clean_miou > 0 else float("nan")

    def table(self) -> str:
        severities = sorted({s for row in self.miou.values() for s in row})
        width = max(14, *(len(name) for name in self.miou)) + 2
        header = f"{'corruption':<{width}}" + "".join(f"{s:>8}" for s in severities)
        header += f"{'mean':>8}"
        lines = [f"mIoU (%) by severity (1 mild, 5 severe); clean {self.clean_miou:.2f}"]
        lines += [header, "-" * len(header)]
        for name, row in self.miou.items():
            cells = "".join(f"{row[s]:>8.2f}" if s in row else f"{'':>8}" for s in severities)
            lines.append(f"{name:<{width}}{cells}{self.mean(name):>8.2f}")
        lines.append("-" * len(header))
        lines.append(
            f"mean of the corruptions {self.mean_corrupted:.2f}: "
            f"{self.relative:.2f} of the clean mIoU"
        )
        if self.confidence:
            lines += ["", *self._confidence_table()]
        return "\n".join(lines)

    def _confidence_table(self) -> list[str]:
        """Per corruption, means over its severities of ``SUMMARY_KEYS``."""
        width = max(14, *(len(name) for name in self.confidence)) + 2
        columns = ("accuracy", "confidence", "ECE", f">= {SURE:g}", "right", "errors below")
        widths = [max(len(c) + 2, 9) for c in columns]
        header = f"{'corruption':<{width}}" + "".join(f"{c:>{w}}" for c, w in zip(columns, widths))
        lines = [
            f"confidence under the corruptions (%, means over the severities; >= {SURE:g}: the "
            f"pixels that sure, right: their accuracy, errors below: the errors under {SURE:g})",
            header,
            "-" * len(header),
        ]
        for name, row in self.confidence.items():
            means = [nanmean(list(values)) for values in zip(*map(_summary, row.values()))]
            cells = "".join(f"{format_cell(m):>{w}}" for m, w in zip(means, widths))
            lines.append(f"{name:<{width}}{cells}")
        return lines

    def to_dict(self) -> dict:
        document = {
            "clean_mIoU": self.clean_miou,
            "mIoU": {name: {str(s): v for s, v in row.items()} for name, row in self.miou.items()},
            "mean_per_corruption": {name: self.mean(name) for name in self.miou},
            "mean_corrupted_mIoU": self.mean_corrupted,
            "relative_to_clean": self.relative,
        }
        if self.confidence:
            document["confidence"] = {
                name: {str(s): dict(zip(SUMMARY_KEYS, _summary(r))) for s, r in row.items()}
                for name, row in self.confidence.items()
            }
        return document


# The confidence a planner would trust a pixel at, in the summary of each corruption (one of
# ``confidence.CONFIDENCE_THRESHOLDS``, whose counts it reads).
SURE = 0.9
SUMMARY_KEYS = (
    "accuracy",
    "mean_confidence",
    "ECE",
    f"pixels_{SURE:g}",
    f"accuracy_{SURE:g}",
    f"errors_below_{SURE:g}",
)


def _summary(result: ConfidenceResult) -> tuple[float, ...]:
    """What ``SUMMARY_KEYS`` name, of one corrupted evaluation: the share of the pixels at
    ``SURE`` confidence or more, their accuracy and the share of the errors below them too."""
    (kept,) = [row[1:] for row in result.selective if row[0] == SURE]
    return (result.accuracy, result.mean_confidence, result.ece, *kept)


def evaluate_robustness(
    score: Callable[..., SegmentationMetrics],
    dataset: Dataset,
    clean_miou: float,
    names: Sequence[str] = tuple(CORRUPTIONS),
    severities: Sequence[int] = SEVERITIES,
    seed: int = 0,
    confidence: Callable[[], ConfidenceMetrics] | None = None,
) -> RobustnessResult:
    """``dataset`` under each corruption in ``names`` at each severity, scored by
    ``score(corrupted_dataset, description=..., confidence=...)`` (an evaluation, e.g.
    ``evaluate`` with the model's settings bound; the description names its progress bar).
    Every model given the same ``seed`` sees the same corrupted frames. ``confidence``: a
    factory of empty ``ConfidenceMetrics``, one per evaluation, to measure the confidence
    too (None: not measured, nor passed to ``score``)."""
    result = RobustnessResult(clean_miou)
    for name in names:
        result.miou[name] = {}
        for severity in severities:
            corrupted = CorruptedDataset(dataset, name, severity, seed)
            options = {"description": f"{name} {severity}"}
            if confidence is not None:
                options["confidence"] = metrics = confidence()
            result.miou[name][severity] = score(corrupted, **options).miou
            if confidence is not None:
                result.confidence.setdefault(name, {})[severity] = metrics.compute()
    return result
