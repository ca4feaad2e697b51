"""mIoU under camera corruptions (``data/corruptions.py``): how a model degrades with noise,
blur, fog, darkness and compression, through the one evaluation loop; and, if asked, whether
its confidence still warns of its errors there (``engine/calibration.py``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from torch.utils.data import Dataset

from ddrnet.data.corruptions import CORRUPTIONS, SEVERITIES, CorruptedDataset
from ddrnet.engine.calibration import CalibrationMetrics, CalibrationResult
from ddrnet.engine.metrics import SegmentationMetrics


@dataclass
class RobustnessResult:
    """mIoU in percent per corruption and severity, beside the clean mIoU.

    ``relative`` is the mean corrupted mIoU over the clean one (1.0: no loss), the
    robustness measure of Kamann & Rother (CVPR 2020) averaged over what was run.
    ``calibration``, when measured, holds the confidence statistics of each corruption and
    severity alike.
    """

    clean_miou: float
    miou: dict[str, dict[int, float]] = field(default_factory=dict)
    calibration: dict[str, dict[int, CalibrationResult]] = field(default_factory=dict)

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
        if self.calibration:
            lines += ["", *self._calibration_table()]
        return "\n".join(lines)

    def _calibration_table(self) -> list[str]:
        """Per corruption, means over its severities of the pixel accuracy, the mean
        confidence, the ECE and the share of the errors under 0.9 confidence."""
        width = max(14, *(len(name) for name in self.calibration)) + 2
        header = f"{'corruption':<{width}}{'accuracy':>10}{'confidence':>12}{'ECE':>8}"
        header += f"{'errors < 0.9':>14}"
        lines = ["confidence under the corruptions (%, means over the severities)", header]
        lines.append("-" * len(header))
        for name, row in self.calibration.items():
            means = [sum(values) / len(values) for values in zip(*map(_summary, row.values()))]
            accuracy, confidence, ece, flagged = means
            lines.append(
                f"{name:<{width}}{accuracy:>10.2f}{confidence:>12.2f}{ece:>8.2f}{flagged:>14.2f}"
            )
        return lines

    def to_dict(self) -> dict:
        return {
            "clean_mIoU": self.clean_miou,
            "mIoU": {name: {str(s): v for s, v in row.items()} for name, row in self.miou.items()},
            "mean_per_corruption": {name: self.mean(name) for name in self.miou},
            "mean_corrupted_mIoU": self.mean_corrupted,
            "relative_to_clean": self.relative,
            **(
                {
                    "calibration": {
                        name: {str(s): dict(zip(SUMMARY_KEYS, _summary(r))) for s, r in row.items()}
                        for name, row in self.calibration.items()
                    }
                }
                if self.calibration
                else {}
            ),
        }


SUMMARY_KEYS = ("accuracy", "mean_confidence", "ECE", "errors_below_0.9")


def _summary(result: CalibrationResult) -> tuple[float, float, float, float]:
    """What ``SUMMARY_KEYS`` name, of one corrupted evaluation."""
    below = {threshold: caught for threshold, _, _, caught in result.selective}
    return result.accuracy, result.mean_confidence, result.ece, below[0.9]


def evaluate_robustness(
    score: Callable[..., SegmentationMetrics],
    dataset: Dataset,
    clean_miou: float,
    names: Sequence[str] = tuple(CORRUPTIONS),
    severities: Sequence[int] = SEVERITIES,
    seed: int = 0,
    calibration: Callable[[], CalibrationMetrics] | None = None,
) -> RobustnessResult:
    """``dataset`` under each corruption in ``names`` at each severity, scored by
    ``score(corrupted_dataset, description=..., calibration=...)`` (an evaluation, e.g.
    ``evaluate`` with the model's settings bound; the description names its progress bar).
    Every model given the same ``seed`` sees the same corrupted frames. ``calibration``: a
    factory of empty ``CalibrationMetrics``, one per evaluation, to measure the confidence
    too (None: not measured, nor passed to ``score``)."""
    result = RobustnessResult(clean_miou)
    for name in names:
        result.miou[name] = {}
        for severity in severities:
            corrupted = CorruptedDataset(dataset, name, severity, seed)
            options = {"description": f"{name} {severity}"}
            if calibration is not None:
                options["calibration"] = metrics = calibration()
            result.miou[name][severity] = score(corrupted, **options).miou
            if calibration is not None:
                result.calibration.setdefault(name, {})[severity] = metrics.compute()
    return result
