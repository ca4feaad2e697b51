"""Evaluation: confusion matrix over a data set at full label resolution, for every kind of
model (PyTorch, ONNX Runtime, OpenVINO, ncnn) through the one ``Predictor``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from ddrnet.engine.confidence import ConfidenceMetrics
from ddrnet.engine.distributed import DistributedContext, all_reduce_sum
from ddrnet.engine.metrics import ConfusionMatrix, SegmentationMetrics
from ddrnet.engine.predictor import Predictor
from ddrnet.engine.recordings import frame_recordings
from ddrnet.engine.temporal import Flicker, TemporalSmoother
from ddrnet.models.metadata import IGNORE_INDEX

PredictionCallback = Callable[[int, np.ndarray], object]


class FrameAccumulator(Protocol):
    """What an evaluation gathers frame by frame besides the confusion matrix: boundary IoU
    and objects by size (``DetailMetrics``), a matrix per recording (``RecordingMetrics``),
    each frame's counts (``FrameScores``)."""

    # One int64 tensor: a distributed evaluation sums it over the processes after the pass.
    counts: torch.Tensor

    def update(self, index: int, prediction: torch.Tensor, label: torch.Tensor) -> None:
        """Frame ``index`` (its position in the data set): ``(H, W)`` int64 class ids and
        label."""


def _collate(batch: list[tuple[torch.Tensor, torch.Tensor]]):
    """Stack when every image has the same size, else keep a list (evaluated one by one)."""
    if len({tuple(image.shape) for image, _ in batch}) == 1:
        return torch.stack([b[0] for b in batch]), torch.stack([b[1] for b in batch])
    return [b[0] for b in batch], [b[1] for b in batch]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    num_classes: int,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device | str = "cpu",
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    window: tuple[int, int] | None = None,
    batch_size: int = 1,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    ignore_index: int = IGNORE_INDEX,
    context: DistributedContext | None = None,
    progress: bool = True,
    num_workers: int = 0,
    prediction_callback: PredictionCallback | None = None,
    frame_accumulators: Sequence[FrameAccumulator] = (),
    confidence: ConfidenceMetrics | None = None,
    flicker: Flicker | None = None,
    smoother: TemporalSmoother | None = None,
    description: str = "eval",
) -> SegmentationMetrics:
    """mIoU, per-class IoU and accuracies of ``model`` on ``dataset`` (un-augmented pairs).

    ``model`` runs as given (in eval mode for the duration, its inputs channels-last with
    ``channels_last``): the training loop evaluates its live model, ``ddrnet eval`` the fast
    form it made with ``to_fast_layout``. ``dataset[i]`` gives ``(image, label)``: a
    ``(3, H, W)`` uint8 RGB tensor and an ``(H, W)`` int64 label map with ``ignore_index``
    for void. See ``evaluate_predictor`` for the rest.
    """
    was_training = model.training
    model.eval()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    predictor = Predictor(
        model, device, mean, std, scales, flip, amp_dtype, window, prepared=memory_format
    )
    try:
        return evaluate_predictor(
            predictor,
            dataset,
            num_classes,
            batch_size=batch_size,
            ignore_index=ignore_index,
            context=context,
            progress=progress,
            num_workers=num_workers,
            prediction_callback=prediction_callback,
            frame_accumulators=frame_accumulators,
            confidence=confidence,
            flicker=flicker,
            smoother=smoother,
            description=description,
        )
    finally:
        model.train(was_training)


@torch.no_grad()
def evaluate_predictor(
    predictor: Predictor,
    dataset: Dataset,
    num_classes: int,
    *,
    batch_size: int = 1,
    ignore_index: int = IGNORE_INDEX,
    context: DistributedContext | None = None,
    progress: bool = True,
    num_workers: int = 0,
    prediction_callback: PredictionCallback | None = None,
    frame_accumulators: Sequence[FrameAccumulator] = (),
    confidence: ConfidenceMetrics | None = None,
    flicker: Flicker | None = None,
    smoother: TemporalSmoother | None = None,
    description: str = "eval",
) -> SegmentationMetrics:
    """The evaluation loop: ``predictor``'s class ids for every image of ``dataset``
    against its labels.

    Predictions are made at each image's full resolution (logits upsampled bilinearly), so
    the labels are never resized. Under ``torchrun`` each process takes a shard and the
    confusion matrices are summed. ``prediction_callback(index, labels)`` receives each
    ``(H, W)`` int64 prediction with its index in ``dataset`` (for writing result files).
    Each of ``frame_accumulators`` takes every frame too (its ``counts`` summed over
    processes as the matrix is). ``confidence`` gathers the confidence statistics of the
    class probabilities, whose arg-max is then the prediction scored (the general path; a
    plain pass otherwise takes its class ids the fast way). ``flicker`` counts the
    flickering pixels and ``smoother`` smooths the predictions over time
    (``ddrnet.engine.temporal``): both take the frames in order as videos, one per
    recording (``frame_recordings``), one process only. ``description`` names the
    progress bar.
    """
    context = context or DistributedContext()
    in_order = flicker is not None or smoother is not None
    if in_order and context.world_size > 1:
        raise ValueError("flicker and smoothing take the frames in order: one process only")
    recordings = frame_recordings(dataset) if in_order else []
    indices = list(range(context.rank, len(dataset), context.world_size))
    loader = DataLoader(
        Subset(dataset, indices),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_collate,
    )
    confusion = ConfusionMatrix(num_classes, ignore_index)
    position = 0
    shown = progress and context.is_main
    bar = tqdm(loader, desc=description, disable=None if shown else True, leave=False)  # None: tty
    for images, labels in bar:
        groups = (
            [(images, labels)]
            if isinstance(images, torch.Tensor) and not in_order
            else [(image[None], label[None]) for image, label in zip(images, labels)]
        )
        for image_batch, label_batch in groups:
            if in_order:
                _next_frame(recordings, position, flicker, smoother)
            if confidence is None:
                prediction = predictor.class_ids(image_batch, smoother).cpu()
            else:
                probabilities = predictor.probabilities(image_batch, smoother)
                prediction = confidence.update(probabilities, label_batch).cpu()
            if flicker is not None:
                flicker.update(prediction[0], label_batch[0])
            confusion.update(prediction, label_batch)
            for item, label in zip(prediction, label_batch):
                for accumulator in frame_accumulators:
                    accumulator.update(indices[position], item, label)
                if prediction_callback is not None:
                    prediction_callback(indices[position], item.numpy())
                position += 1
    matrix = all_reduce_sum(confusion.matrix.to(predictor.device), context).cpu()
    for accumulator in [*frame_accumulators, *([confidence] if confidence else [])]:
        counts = accumulator.counts.to(predictor.device)
        accumulator.counts = all_reduce_sum(counts, context).cpu()
    return SegmentationMetrics.from_matrix(matrix)


def _next_frame(
    recordings: list[str | None],
    position: int,
    flicker: Flicker | None,
    smoother: TemporalSmoother | None,
) -> None:
    """Start a new video at the first frame and wherever the recording changes."""
    if position == 0 or recordings[position] != recordings[position - 1]:
        if flicker is not None:
            flicker.start()
        if smoother is not None:
            smoother.reset()
