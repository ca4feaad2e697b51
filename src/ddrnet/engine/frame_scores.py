"""Scores per frame: which frames a model gets most wrong (``ddrnet eval --worst N``).

A data set's mIoU hides where the errors are: a few frames (a dark tunnel, a street unlike the
training ones, a label drawn wrong) can hold most of them. Each frame gets its own IoU per
class, its mIoU (over the classes in its label or its prediction) and its pixel accuracy;
the worst frames are the ones to look at, and their pictures (``ddrnet.viz.errors``) show
whether the model or the label is wrong.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ddrnet.config import read_json
from ddrnet.engine.metrics import class_iou, confusion_counts, format_cell, mean_iou
from ddrnet.engine.recordings import frame_images
from ddrnet.errors import UsageError
from ddrnet.models.metadata import IGNORE_INDEX


@dataclass(frozen=True)
class FrameScore:
    """One frame's scores, in percent: ``iou[c]`` is NaN for a class neither in its label
    nor its prediction; ``miou`` and ``pixel_accuracy`` NaN for a frame without a labelled
    pixel. ``mistake`` is its largest confusion: (true class, predicted class, percent of
    the labelled pixels), None when every pixel is right. ``image`` is its file (None for
    data sets without files)."""

    index: int
    image: Path | None
    miou: float
    pixel_accuracy: float
    iou: tuple[float, ...]
    labelled: tuple[bool, ...]  # which classes its label holds
    mistake: tuple[int, int, float] | None

    def weakest(self, class_names: list[str], count: int = 2) -> list[tuple[str, float]]:
        """The ``count`` classes of its label of lowest IoU."""
        scored = [(v, n) for n, v, held in zip(class_names, self.iou, self.labelled) if held]
        return [(name, value) for value, name in sorted(scored)[:count]]

    def describe_mistake(self, class_names: list[str]) -> str:
        """``Building as Tree 35.2%``, or ``-``."""
        if self.mistake is None:
            return "-"
        true, predicted, share = self.mistake
        return f"{class_names[true]} as {class_names[predicted]} {share:.1f}%"


# Columns of FrameScores.counts, per frame and class.
TRUE, LABELLED, PREDICTED, MISTAKEN, MISTAKEN_AS = range(5)


def _frame_score(index: int, image: Path | None, counts: torch.Tensor) -> FrameScore:
    """The scores of a frame from its ``(C, 5)`` counts (see ``FrameScores``)."""
    true, labelled, predicted = (counts[:, k] for k in (TRUE, LABELLED, PREDICTED))
    iou = 100 * class_iou(true, labelled, predicted)
    miou = float(mean_iou(iou))  # nan without a labelled pixel: predictions count on those
    total = float(labelled.sum())
    accuracy = 100 * float(true.sum()) / total if total else math.nan
    worst = int(counts[:, MISTAKEN].argmax())
    mistake = None
    if counts[worst, MISTAKEN] > 0:
        share = 100 * float(counts[worst, MISTAKEN]) / total
        mistake = (worst, int(counts[worst, MISTAKEN_AS]), share)
    held = tuple(bool(v) for v in labelled > 0)
    return FrameScore(index, image, miou, accuracy, tuple(float(v) for v in iou), held, mistake)


class FrameScores:
    """Per-frame counts of a data set's frames, and the predictions of the worst ones.

    ``counts`` is ``(F, C, 5)`` int64: per frame and class, the pixels predicted right, the
    labelled pixels, the predicted pixels among the labelled ones, and the class most often
    predicted in its place with its pixels (columns ``TRUE`` ... ``MISTAKEN_AS``; summed over
    processes like the other accumulators of ``evaluate_predictor``: each process fills its
    own frames, the others' rows stay zero).
    ``keep`` > 0 keeps the ``(H, W)`` predictions of that many frames of lowest mIoU seen by
    this process (``kept()``), for pictures, without holding every prediction in memory.
    """

    def __init__(
        self, dataset: Dataset, num_classes: int, ignore_index: int = IGNORE_INDEX, keep: int = 0
    ):
        self.images = frame_images(dataset)
        self.num_classes, self.ignore_index, self.keep = num_classes, ignore_index, keep
        self.counts = torch.zeros(len(self.images), num_classes, 5, dtype=torch.int64)
        self._kept: list[tuple[float, int, np.ndarray]] = []  # a heap: the best on top

    def update(self, index: int, prediction: torch.Tensor, label: torch.Tensor) -> None:
        """Frame ``index`` (its position in the data set) with its ``(H, W)`` predicted
        class ids and label."""
        matrix = confusion_counts(prediction, label, self.num_classes, self.ignore_index)
        wrong = matrix - torch.diag(matrix.diagonal())
        mistaken, mistaken_as = wrong.max(dim=1)
        columns = [matrix.diagonal(), matrix.sum(1), matrix.sum(0), mistaken, mistaken_as]
        self.counts[index] = torch.stack(columns, 1)
        if self.keep:
            miou = _frame_score(index, None, self.counts[index]).miou
            small = prediction.to(torch.uint8 if self.num_classes <= 256 else torch.int32)
            # Ordered as ``worst`` orders: lower mIoU, then lower index, is worse; the heap's
            # top is the least bad kept, the one a worse frame replaces.
            badness = (-(miou if not math.isnan(miou) else math.inf), -index)
            entry = (*badness, small.numpy())
            if len(self._kept) < self.keep:
                heapq.heappush(self._kept, entry)
            elif badness > self._kept[0][:2]:
                heapq.heapreplace(self._kept, entry)

    def class_counts(self) -> torch.Tensor:
        """``(F, C, 3)``: per frame and class the pixels predicted right, the labelled ones
        and the predicted ones (what the bootstrap and ``eval --compare`` draw from)."""
        return self.counts[:, :, : PREDICTED + 1]

    def compute(self) -> list[FrameScore]:
        """Every frame's scores, in data set order."""
        return [_frame_score(i, self.images[i], self.counts[i]) for i in range(len(self.images))]

    def worst(self, count: int) -> list[FrameScore]:
        """The ``count`` frames of lowest mIoU (frames without a labelled pixel last)."""
        return sorted(self.compute(), key=lambda s: (math.isnan(s.miou), s.miou, s.index))[:count]

    def kept(self) -> dict[int, np.ndarray]:
        """The predictions kept (``keep``), by frame index."""
        return {-negative: prediction for _, negative, prediction in self._kept}

    def table(self, class_names: list[str], count: int) -> str:
        """The ``count`` worst frames: rank, mIoU, pixel accuracy, the largest confusion,
        the two classes of the label scored worst, and the file."""
        count = min(count, len(self.images))
        lines = [f"the {count} frames of lowest mIoU (of {len(self.images)}):"]
        header = f"{'mIoU':>6} {'acc':>6}  {'largest mistake':<30} {'weakest (IoU)':<30}"
        lines.append(f"{'':>4} {header} image")
        for rank, score in enumerate(self.worst(count), 1):
            weakest = ", ".join(f"{n} {v:.1f}" for n, v in score.weakest(class_names))
            mistake = score.describe_mistake(class_names)
            name = score.image.name if score.image is not None else f"#{score.index}"
            miou, accuracy = (
                format_cell(score.miou, ".1f"),
                format_cell(score.pixel_accuracy, ".1f"),
            )
            lines.append(f"{rank:>4} {miou:>6} {accuracy:>6}  {mistake:<30} {weakest:<30} {name}")
        return "\n".join(lines)

    def to_dict(self, class_names: list[str]) -> list[dict]:
        """Every frame: its image, mIoU, pixel accuracy, per-class IoU (None: not scored),
        largest mistake, and its counts per class (right, labelled, predicted pixels: what
        ``read_frame_counts`` reads back for ``eval --compare``)."""
        return [
            {
                "index": s.index,
                "image": None if s.image is None else str(s.image),
                "miou": None if math.isnan(s.miou) else s.miou,
                "pixel_accuracy": None if math.isnan(s.pixel_accuracy) else s.pixel_accuracy,
                "iou": {n: None if math.isnan(v) else v for n, v in zip(class_names, s.iou)},
                "counts": self.class_counts()[s.index].tolist(),
                "largest_mistake": None
                if s.mistake is None
                else {
                    "true": class_names[s.mistake[0]],
                    "predicted": class_names[s.mistake[1]],
                    "percent": s.mistake[2],
                },
            }
            for s in self.compute()
        ]


def read_frame_counts(
    path: str | Path, class_names: list[str], images: list[Path | None]
) -> np.ndarray:
    """The ``(F, C, 3)`` per-frame counts in ``ddrnet eval --json`` file ``path``, checked to
    be of the same classes and frames (by file name, in order) as ``class_names`` and
    ``images``; a ``UsageError`` naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--compare: {path} is not a file")
    document = read_json(path, "--compare: evaluation report", UsageError)
    frames = document.get("frames") if isinstance(document, dict) else None
    if not isinstance(frames, list) or not all(
        isinstance(f, dict) and "counts" in f for f in frames
    ):
        raise UsageError(
            f"--compare: {path} holds no counts per frame; write it with ddrnet eval --ci --json"
        )
    theirs = document.get("per_class_IoU")
    theirs = list(theirs) if isinstance(theirs, dict) else None
    if theirs != list(class_names):
        raise UsageError(f"--compare: {path} scores the classes {theirs}, not {list(class_names)}")
    names = [None if image is None else image.name for image in images]
    other = [Path(f["image"]).name if isinstance(f.get("image"), str) else None for f in frames]
    if other != names:
        first = next((i for i, pair in enumerate(zip(other, names)) if pair[0] != pair[1]), None)
        which = (
            f"{len(other)} frames, not {len(names)}"
            if first is None
            else f"frame {first + 1} is {other[first]}, here {names[first]}"
        )
        raise UsageError(
            f"--compare: {path} scores other frames than these ({which}); evaluate both "
            "models on the same split and frames"
        )
    return _checked_counts(frames, len(class_names), path)


def _checked_counts(frames: list[dict], num_classes: int, path: Path) -> np.ndarray:
    """``(F, C, 3)`` int64 from each frame's ``counts``: per class, non-negative integers
    with the right pixels at most the labelled and the predicted ones."""
    for index, frame in enumerate(frames):
        counts = frame["counts"]
        valid = isinstance(counts, list) and len(counts) == num_classes
        valid = valid and all(
            isinstance(row, list)
            and len(row) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**62 for v in row)
            and row[0] <= min(row[1], row[2])
            for row in counts
        )
        if not valid:
            raise UsageError(
                f"--compare: {path}: frames[{index}].counts must hold, per class, [right, "
                "labelled, predicted] pixel counts"
            )
    return np.asarray([frame["counts"] for frame in frames], dtype=np.int64).reshape(
        len(frames), num_classes, 3
    )
