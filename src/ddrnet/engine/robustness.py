"""mIoU under camera corruptions (``data/corruptions.py``): how a model degrades with noise,
blur, fog, darkness and compression, through the one evaluation loop."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from torch.utils.data import Dataset

from ddrnet.data.corruptions import CORRUPTIONS, SEVERITIES, CorruptedDataset
from ddrnet.engine.metrics import SegmentationMetrics


@dataclass
class RobustnessResult:
    """mIoU in percent per corruption and severity, beside the clean mIoU.

    ``relative`` is the mean corrupted mIoU over the clean one (1.0: no loss), the
    robustness measure of Kamann & Rother (CVPR 2020) averaged over what was run.
    """

    clean_miou: float
    miou: dict[str, dict[int, float]] = field(default_factory=dict)

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
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "clean_mIoU": self.clean_miou,
            "mIoU": {name: {str(s): v for s, v in row.items()} for name, row in self.miou.items()},
            "mean_per_corruption": {name: self.mean(name) for name in self.miou},
            "mean_corrupted_mIoU": self.mean_corrupted,
            "relative_to_clean": self.relative,
        }


def evaluate_robustness(
    score: Callable[..., SegmentationMetrics],
    dataset: Dataset,
    clean_miou: float,
    names: Sequence[str] = tuple(CORRUPTIONS),
    severities: Sequence[int] = SEVERITIES,
    seed: int = 0,
) -> RobustnessResult:
    """``dataset`` under each corruption in ``names`` at each severity, scored by
    ``score(corrupted_dataset, description=...)`` (an evaluation, e.g. ``evaluate`` with the
    model's settings bound; the description names its progress bar). Every model given the
    same ``seed`` sees the same corrupted frames."""
    result = RobustnessResult(clean_miou)
    for name in names:
        result.miou[name] = {
            severity: score(
                CorruptedDataset(dataset, name, severity, seed), description=f"{name} {severity}"
            ).miou
            for severity in severities
        }
    return result
