"""Pictures of a data set's own labels (``ddrnet data --show``): is the mask where the
object is, are the colours the classes meant, and what does training really see?

Each picture is one frame with its label's class colours blended over it and the legend of
the classes present with their shares (``ddrnet.render.labelled_overlay``, the picture of a
prediction too, so the two compare at a glance). With ``augmented`` a training set's frames
come through its augmentation (crop, scale, flip, photometric, ...) as one training step
would draw them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ddrnet.data.datasets import DatasetError, PairedSegmentationDataset
from ddrnet.data.io import ImageReadError, write_png
from ddrnet.errors import UsageError
from ddrnet.render import labelled_overlay


def spread_indices(length: int, count: int) -> list[int]:
    """``count`` indices spread evenly over ``range(length)``, first and last included
    (all of them when ``count >= length``)."""
    if count >= length:
        return list(range(length))
    if count == 1:
        return [0]
    return sorted({int(i) for i in np.linspace(0, length - 1, count).round()})


def label_picture(
    dataset: PairedSegmentationDataset, index: int, augmented: bool = False
) -> np.ndarray:
    """``(H, W', 3)`` uint8 RGB: frame ``index`` with its label's colours and a legend;
    with ``augmented``, the pair as the data set's transform draws it (torch's RNG)."""
    if augmented and dataset.transform is not None:
        image_tensor, label_tensor = dataset[index]
        image = image_tensor.permute(1, 2, 0).numpy()
        label = label_tensor.numpy().astype(np.uint8)
    else:
        image, label = dataset.load(index)
    labels = dataset.labels
    return labelled_overlay(image, label, labels.class_names, labels.palette)


def label_picture_paths(
    dataset: PairedSegmentationDataset, output: str | Path, count: int
) -> dict[int, Path]:
    """Which frames ``write_label_pictures`` draws (``count``, spread over the labelled
    ones) and where: frame index -> ``output/<image stem>.png``. A ``UsageError`` when one
    would replace a file of the data set itself (``output`` being, say, its ``train/``)."""
    folder = Path(output)
    indices = [i for i in spread_indices(len(dataset), count) if dataset.samples[i].label]
    targets = {i: folder / f"{dataset.samples[i].image.stem}.png" for i in indices}
    files = {p.resolve() for s in dataset.samples for p in (s.image, s.label) if p is not None}
    clash = next((t for t in targets.values() if t.resolve() in files), None)
    if clash is not None:
        raise UsageError(
            f"label pictures in {folder} would replace the data set's own {clash}; choose a "
            "folder outside the data set"
        )
    return targets


def write_label_pictures(
    dataset: PairedSegmentationDataset,
    output: str | Path,
    count: int,
    augmented: bool = False,
    seed: int = 0,
) -> list[Path]:
    """``label_picture`` of the frames ``label_picture_paths`` picks, each written whole or
    not at all; the paths written. Frames whose files cannot be used are skipped (the
    survey names them). ``seed`` fixes the augmentation's draws without touching the
    caller's torch RNG."""
    targets = label_picture_paths(dataset, output, count)
    Path(output).mkdir(parents=True, exist_ok=True)
    written = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for index, path in targets.items():
            try:
                picture = label_picture(dataset, index, augmented)
            except (DatasetError, ImageReadError):  # the survey names these files
                continue
            write_png(path, picture)
            written.append(path)
    return written
