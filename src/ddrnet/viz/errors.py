"""Pictures of the frames a model gets most wrong (``ddrnet eval --worst N --show FOLDER``):
the label, the prediction and where they differ, side by side, so that one look tells a
model's mistake (a car called building) from a label's (a car nobody outlined)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from ddrnet import render
from ddrnet.atomic import staged_files
from ddrnet.data.io import write_png
from ddrnet.data.labels import LabelSet
from ddrnet.engine.frame_scores import FrameScore
from ddrnet.engine.recordings import unwrap_subsets
from ddrnet.viz.compare import titled
from ddrnet.viz.figure import WORST_FRAMES, check_pictures_folder, ranked_name

ERROR_COLOUR = (255, 0, 0)  # the pixels predicted wrong, over the greyed frame


def error_picture(
    image: np.ndarray, label: np.ndarray, prediction: np.ndarray, labels: LabelSet, title: str
) -> np.ndarray:
    """``(H + caption, 3 W + gaps + legend, 3)`` uint8 RGB: the ``(H, W, 3)`` frame with its
    ``(H, W)`` label's colours, with the prediction's, and greyed with the wrong pixels
    (labelled, predicted another class) in red; one legend of the classes in either.
    ``title`` captions the prediction."""
    count = labels.num_classes
    names, palette = labels.class_names, labels.palette
    labelled = label != labels.ignore_index
    wrong = labelled & (prediction != label)
    grey = np.repeat(image.mean(axis=2, keepdims=True), 3, axis=2).astype(np.uint8)
    errors = np.where(wrong[..., None], np.array(ERROR_COLOUR, np.uint8), grey)
    share = 100.0 * wrong.sum() / max(1, labelled.sum())
    pictures = [
        titled(render.overlay(image, render.colorize(label, palette, count)), "label"),
        titled(render.overlay(image, render.colorize(prediction, palette, count)), title),
        titled(render.overlay(grey, errors, 0.7), f"wrong: {share:.1f}% of the labelled pixels"),
    ]
    present = np.union1d(np.unique(label[labelled]), np.unique(prediction))
    classes = [int(c) for c in present if c < count]
    height = pictures[0].shape[0]
    legend = render.legend_panel(names, palette, height, classes)
    return render.side_by_side(*pictures, render.to_height(legend, height))


def write_worst_pictures(
    dataset: Dataset,
    scores: list[FrameScore],
    predictions: dict[int, np.ndarray],
    output: str | Path,
    labels: LabelSet,
) -> list[Path]:
    """``error_picture`` of each frame of ``scores`` (worst first) whose prediction was kept,
    written to ``output/<rank>_<image stem>.png`` (``check_pictures_folder``); the paths
    written. They replace an earlier run's pictures there whole (``staged_files``): a
    rerun never leaves two frames under one rank, and one stopped midway leaves the earlier
    set. ``dataset`` is the evaluated one (a ``PairedSegmentationDataset``, maybe under
    ``Subset`` wrappers: its ``load`` gives a frame's image and label as arrays)."""
    folder = check_pictures_folder(dataset, output)
    base, indices = unwrap_subsets(dataset)
    names = []
    with staged_files(folder, WORST_FRAMES) as staging:
        for rank, score in enumerate(scores, 1):
            if score.index not in predictions:
                continue
            image, label = base.load(indices[score.index])
            stem = score.image.stem if score.image is not None else f"frame{score.index}"
            title = f"prediction: mIoU {score.miou:.1f}, rank {rank}"
            picture = error_picture(image, label, predictions[score.index], labels, title)
            names.append(ranked_name(rank, stem))
            write_png(staging / names[-1], picture)
    return [folder / name for name in names]
