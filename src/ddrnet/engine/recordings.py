"""Scores per recording: which street (CamVid sequence) or city (Cityscapes) a score comes
from (``ddrnet eval --by-recording``).

A data set's frames come from a few recordings (``data.datasets.Recording``); a model scores
very differently on a street it was trained on and on one it never saw (CamVid: 20+ mIoU
points, ``scripts/camvid_experiments.md``). One evaluation of a split that holds several
recordings then shows both at once, e.g. a model trained without sequence 0006R0 scored on
CamVid's train split.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset

from ddrnet.data.datasets import Sample
from ddrnet.engine.metrics import SegmentationMetrics, confusion_counts, format_cell
from ddrnet.errors import UsageError
from ddrnet.models.metadata import IGNORE_INDEX


def unwrap_subsets(dataset: Dataset) -> tuple[Dataset, list[int]]:
    """The data set under any ``Subset`` wrappers, and the indices of ``dataset``'s frames in it."""
    indices = list(range(len(dataset)))
    while isinstance(dataset, Subset):
        indices = [dataset.indices[i] for i in indices]
        dataset = dataset.dataset
    return dataset, indices


def frame_samples(dataset: Dataset) -> list[Sample | None]:
    """Each frame's files (``Sample``: image and label), through ``Subset`` wrappers; None
    for every frame of a data set that keeps no files."""
    base, indices = unwrap_subsets(dataset)
    samples = getattr(base, "samples", None)
    return [None if samples is None else samples[i] for i in indices]


def mixes_with_frames(folder: str | Path, dataset: Dataset) -> bool:
    """Whether files written in ``folder`` would mix with ``dataset``'s images or labels: it
    is, or lies inside, a folder of them, or holds some at any depth (a data set of
    recordings in sub-folders). A folder beside them (``runs/`` next to ``images/``) does not."""
    folder = Path(folder).resolve()
    samples = [sample for sample in frame_samples(dataset) if sample is not None]
    files = [path for s in samples for path in (s.image, s.label) if path is not None]
    inside = {folder, *folder.parents}
    return any(
        data in inside or folder in data.parents for data in {p.resolve().parent for p in files}
    )


def frame_images(dataset: Dataset) -> list[Path | None]:
    """Each frame's image file (``frame_samples``); None for a data set without files."""
    return [None if sample is None else sample.image for sample in frame_samples(dataset)]


def frame_recordings(dataset: Dataset) -> list[str | None]:
    """Each frame's recording (a CamVid sequence, a Cityscapes city; ``Recording``), through
    ``Subset`` wrappers; None for every frame of a data set without recordings (one video)."""
    base, indices = unwrap_subsets(dataset)
    recording = getattr(base, "recording", None)
    if recording is None:
        return [None] * len(indices)
    return [recording.of(base.samples[i].image) for i in indices]


class RecordingMetrics:
    """A ``(C, C)`` confusion matrix per recording of a data set's frames.

    ``update(index, prediction, label)`` takes frame ``index`` of the data set (its position,
    as ``evaluate_predictor`` numbers them) with its ``(H, W)`` predicted class ids and
    label; ``counts`` is ``(R, C, C)`` int64 (summed over processes like the other
    accumulators); ``compute()`` gives each recording's metrics. Frames of no recording
    count under ``"(none)"``.
    """

    def __init__(
        self, recordings: list[str | None], num_classes: int, ignore_index: int = IGNORE_INDEX
    ):
        names = [r if r is not None else "(none)" for r in recordings]
        self.names = sorted(set(names))
        position = {name: k for k, name in enumerate(self.names)}
        self.frame_recording = [position[name] for name in names]
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.counts = torch.zeros(len(self.names), num_classes, num_classes, dtype=torch.int64)

    @classmethod
    def of_dataset(cls, dataset: Dataset, num_classes: int, ignore_index: int = IGNORE_INDEX):
        """For the frames of ``dataset``; a ``UsageError`` when it records no recordings
        (a folder data set, COCO-Stuff): one column would only repeat the whole."""
        recordings = frame_recordings(dataset)
        if all(recording is None for recording in recordings):
            raise UsageError(
                "--by-recording: this data set does not say which recording its frames come "
                "from (CamVid sequences and Cityscapes cities do)"
            )
        return cls(recordings, num_classes, ignore_index)

    def update(self, index: int, prediction: torch.Tensor, label: torch.Tensor) -> None:
        counts = confusion_counts(prediction, label, self.num_classes, self.ignore_index)
        self.counts[self.frame_recording[index]] += counts

    def compute(self) -> dict[str, SegmentationMetrics]:
        return {
            name: SegmentationMetrics.from_matrix(self.counts[k])
            for k, name in enumerate(self.names)
        }

    def frames(self) -> dict[str, int]:
        """How many of the frames given at construction belong to each recording."""
        return {name: self.frame_recording.count(k) for k, name in enumerate(self.names)}

    def table(self, class_names: list[str]) -> str:
        """Per-class IoU, mIoU and pixel accuracy (%), one column per recording."""
        results = self.compute()
        width = max(12, *(len(n) for n in class_names)) + 2
        cell = max(10, *(len(n) + 2 for n in self.names))
        frames = self.frames()
        lines = [f"{'class':<{width}}" + "".join(f"{n:>{cell}}" for n in self.names)]
        lines.append(f"{'frames':<{width}}" + "".join(f"{frames[n]:>{cell}}" for n in self.names))
        lines.append("-" * (width + cell * len(self.names)))
        for index, name in enumerate(class_names):
            cells = (format_cell(results[n].iou[index]) for n in self.names)
            lines.append(f"{name:<{width}}" + "".join(f"{c:>{cell}}" for c in cells))
        lines.append("-" * (width + cell * len(self.names)))
        for title, key in (("mIoU", "miou"), ("pixel acc", "pixel_accuracy")):
            cells = (format_cell(getattr(results[n], key)) for n in self.names)
            lines.append(f"{title:<{width}}" + "".join(f"{c:>{cell}}" for c in cells))
        return "\n".join(lines)

    def to_dict(self, class_names: list[str]) -> dict[str, dict]:
        """Each recording's frames and metrics (as ``SegmentationMetrics.to_dict``)."""
        frames = self.frames()
        return {
            name: {"frames": frames[name], **metrics.to_dict(class_names)}
            for name, metrics in self.compute().items()
        }
