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

from ddrnet.atomic import staged_files
from ddrnet.data.datasets import DatasetError, PairedSegmentationDataset
from ddrnet.data.io import ImageReadError, write_png
from ddrnet.render import labelled_overlay
from ddrnet.viz.figure import LABEL_PICTURES, check_pictures_folder, ranked_name


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


def picked_frames(dataset: PairedSegmentationDataset, count: int) -> list[int]:
    """The frames ``write_label_pictures`` draws: ``count`` spread over the labelled ones."""
    return [i for i in spread_indices(len(dataset), count) if dataset.samples[i].label]


def label_picture_names(dataset: PairedSegmentationDataset, count: int) -> list[str]:
    """The file names ``write_label_pictures`` gives the ``count`` frames it picks (fewer
    where a frame's files cannot be used)."""
    return [name for _, name in _named_frames(dataset, count)]


def _named_frames(dataset: PairedSegmentationDataset, count: int) -> list[tuple[int, str]]:
    """The frames ``picked_frames`` picks, each with its picture's file name."""
    frames = picked_frames(dataset, count)
    return [
        (i, ranked_name(rank, dataset.samples[i].image.stem)) for rank, i in enumerate(frames, 1)
    ]


def write_label_pictures(
    dataset: PairedSegmentationDataset,
    output: str | Path,
    count: int,
    augmented: bool = False,
    seed: int = 0,
) -> list[Path]:
    """``label_picture`` of the frames ``picked_frames`` picks, written to
    ``output/<rank>_<image stem>.png`` (``check_pictures_folder``); the paths written.
    They replace an earlier run's pictures there whole (``staged_files``): a rerun with a
    smaller ``count`` leaves none of the earlier ones, one stopped midway the earlier set.
    Frames whose files cannot be used are skipped (the survey names them). ``seed`` fixes
    the augmentation's draws without touching the caller's torch RNG."""
    folder = check_pictures_folder(dataset, output)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    with torch.random.fork_rng(devices=[]), staged_files(folder, LABEL_PICTURES) as staging:
        torch.manual_seed(seed)
        for index, name in _named_frames(dataset, count):
            try:
                picture = label_picture(dataset, index, augmented)
            except (DatasetError, ImageReadError):  # the survey names these files
                continue
            names.append(name)
            write_png(staging / name, picture)
    return [folder / name for name in names]
