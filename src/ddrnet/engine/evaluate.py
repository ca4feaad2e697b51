"""Evaluation: confusion matrix over a data set at full label resolution."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from ddrnet.engine.distributed import DistributedContext, all_reduce_sum
from ddrnet.engine.inference import autocast, normalize, segment_class_ids
from ddrnet.engine.metrics import ConfusionMatrix, SegmentationMetrics


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
    ignore_index: int = 255,
    context: DistributedContext | None = None,
    progress: bool = True,
    num_workers: int = 0,
    prediction_callback=None,
) -> SegmentationMetrics:
    """mIoU, per-class IoU and accuracies of ``model`` on ``dataset`` (un-augmented pairs).

    Predictions are made at each image's full resolution (logits upsampled bilinearly), so
    the labels are never resized. Under ``torchrun`` each process takes a shard and the
    confusion matrices are summed. ``prediction_callback(index, labels)`` receives each
    ``(H, W)`` prediction (for writing result files).
    """
    context = context or DistributedContext()
    device = torch.device(device)
    indices = list(range(context.rank, len(dataset), context.world_size))
    loader = DataLoader(
        Subset(dataset, indices),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_collate,
    )
    confusion = ConfusionMatrix(num_classes, ignore_index)
    was_training = model.training
    model.eval()
    position = 0
    bar = tqdm(loader, desc="eval", disable=not (progress and context.is_main), leave=False)
    for images, labels in bar:
        groups = (
            [(images, labels)]
            if isinstance(images, torch.Tensor)
            else [(image[None], label[None]) for image, label in zip(images, labels)]
        )
        for image_batch, label_batch in groups:
            batch = normalize(image_batch.to(device), mean, std)
            if channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            with autocast(device, amp_dtype):
                ids = segment_class_ids(model, batch, scales=scales, flip=flip, window=window)
            prediction = ids.cpu()
            confusion.update(prediction, label_batch)
            if prediction_callback is not None:
                for item in prediction:
                    prediction_callback(indices[position], item.numpy())
                    position += 1
    model.train(was_training)
    matrix = all_reduce_sum(confusion.matrix.to(device), context).cpu()
    return SegmentationMetrics.from_matrix(matrix)
