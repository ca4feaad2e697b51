"""One epoch of a run, as ``ddrnet.engine.train.train`` repeats it: draw the epoch's batches,
take the optimiser steps, validate, and commit the epoch's files."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, Sampler
from tqdm import tqdm

from ddrnet.config import to_dict
from ddrnet.data.sampling import WeightedFrameSampler
from ddrnet.engine.checkpointing import TrainingError
from ddrnet.engine.config import Config
from ddrnet.engine.device import autocast
from ddrnet.engine.distill import Distiller
from ddrnet.engine.distributed import DistributedContext
from ddrnet.engine.evaluate import evaluate
from ddrnet.engine.inference import normalize
from ddrnet.engine.losses import DeepSupervisionLoss
from ddrnet.engine.run_folder import LAST, write_epoch
from ddrnet.engine.steps import Progress, TrainingData, TrainingModels
from ddrnet.models import ModelMetadata

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

logger = logging.getLogger("ddrnet.engine.train")  # the run's log lines keep one source


@dataclass(frozen=True)
class Run:
    """What every epoch reads: the recipe, where the run computes and where it writes."""

    config: Config
    device: torch.device
    ctx: DistributedContext
    amp_dtype: torch.dtype | None  # autocast's dtype; None computes in float32
    output: Path  # train.output_dir
    writer: SummaryWriter | None  # tensorboard's, on the main process when installed


def epoch_loader(
    run: Run, data: TrainingData, epoch: int, frame_weights: np.ndarray | None
) -> DataLoader:
    """The epoch's batches of training pairs, this process's share of them.

    Every random stream is re-seeded from ``(seed, epoch, rank)`` first: an epoch's
    randomness does not depend on what ran before it, which is what makes resume exact.
    ``frame_weights`` (``data.rare_class_sampling``) draw frames with replacement.
    """
    seed, ctx = run.config.train.seed, run.ctx
    epoch_seed = seed + 1009 * epoch + ctx.rank
    torch.manual_seed(epoch_seed)
    generator = torch.Generator().manual_seed(epoch_seed)
    sampler: Sampler[int]
    if frame_weights is not None:  # drawn from (seed, epoch), split across processes
        sampler = WeightedFrameSampler(frame_weights, ctx.world_size, ctx.rank, seed)
        sampler.set_epoch(epoch)
    elif ctx.enabled:
        sampler = DistributedSampler(data.train_set, ctx.world_size, ctx.rank, seed=seed)
        sampler.set_epoch(epoch)
    else:
        sampler = RandomSampler(data.train_set, generator=generator)
    return DataLoader(
        data.train_set,
        batch_size=run.config.data.batch_size,
        sampler=sampler,
        num_workers=run.config.data.num_workers,
        drop_last=True,
        pin_memory=run.device.type == "cuda",
        generator=generator,
        collate_fn=data.collate,
    )


class TrainStep:
    """An optimiser step in two halves, so that a non-finite loss stops the run before it
    reaches the weights: ``loss`` (forward pass and losses), then ``update`` (backward pass,
    optimiser and loss-scaler step, weight average)."""

    def __init__(
        self,
        run: Run,
        data: TrainingData,
        models: TrainingModels,
        criterion: DeepSupervisionLoss,
        distiller: Distiller | None,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
    ) -> None:
        self.run, self.data, self.models = run, data, models
        self.criterion, self.distiller = criterion, distiller
        self.optimizer, self.scaler = optimizer, scaler

    def loss(
        self, images: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The training loss (scalar) of a batch and its terms by name (for tensorboard).

        ``images``: ``(N, 3, H, W)`` as the loader gives them (normalised here);
        ``targets``: ``(N, H, W)`` int64 class ids with the ignore index for void.
        """
        run = self.run
        images = normalize(images.to(run.device, non_blocking=True), self.data.mean, self.data.std)
        if run.config.train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        targets = targets.to(run.device, non_blocking=True)
        with autocast(run.device, run.amp_dtype):
            main, aux = self.models.forward(images)
        loss, parts = self.criterion(main.float(), None if aux is None else aux.float(), targets)
        if self.distiller is not None:  # the teacher's forward counts in the img/s shown
            loss, parts = self.distiller.add_to(loss, parts, images, main, targets)
        return loss, parts

    def update(self, loss: torch.Tensor, lr: float) -> None:
        """Back-propagate ``loss`` and step the optimiser at learning rate ``lr``."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.models.ema is not None:
            self.models.ema.update()


def run_epoch(
    step: TrainStep,
    loader: DataLoader,
    schedule: Callable[[int], float],
    progress: Progress,
    epoch: int,
) -> dict[str, Any]:
    """Train epoch ``epoch`` (0-based) on ``loader``'s first ``iterations_per_epoch``
    batches, the learning rate following ``schedule(iteration)``; advances
    ``progress.iteration``. Returns the epoch's metrics record (``metrics.jsonl``'s fields
    without the validation ones). A non-finite loss is a ``TrainingError``."""
    run, iterations = step.run, step.data.iterations_per_epoch
    cfg_train, ctx = run.config.train, run.ctx
    images_per_step = run.config.data.batch_size * ctx.world_size
    step.models.forward.train()
    started, losses = time.monotonic(), []
    bar = tqdm(
        total=iterations,
        desc=f"epoch {epoch + 1}/{cfg_train.epochs}",
        # On a terminal only (None: tqdm's test): a log file or a search worker's log
        # keeps the epoch's one line, not a line of carriage returns.
        disable=None if ctx.is_main else True,
        dynamic_ncols=True,
        mininterval=1.0,
    )
    for index, (images, targets) in enumerate(loader):
        if index >= iterations:
            break
        lr = schedule(progress.iteration)
        loss, parts = step.loss(images, targets)
        if not torch.isfinite(loss):
            kept = (
                f"The last checkpoint in {run.output} is intact."
                if (run.output / LAST).is_file()
                else "No checkpoint was written yet."
            )
            raise TrainingError(
                f"loss became {loss.item()} at epoch {epoch + 1}, iteration "
                f"{progress.iteration}; lower optim.lr or check the labels and the loss "
                f"settings. {kept}"
            )
        step.update(loss, lr)
        progress.iteration += 1
        losses.append(float(loss.detach()))
        if ctx.is_main and (index % cfg_train.log_every == 0 or index == iterations - 1):
            rate = (index + 1) * images_per_step / max(time.monotonic() - started, 1e-9)
            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2e}", img_s=f"{rate:.1f}")
            _log_step(run.writer, progress.iteration, loss.item(), lr, parts)
        bar.update(1)
    bar.close()
    seconds = time.monotonic() - started
    record = {
        "epoch": epoch + 1,
        "iteration": progress.iteration,
        "lr": lr,
        "train_loss": sum(losses) / max(1, len(losses)),
        "epoch_seconds": round(seconds, 2),
        "images_per_second": round(iterations * images_per_step / seconds, 2),
    }
    if step.distiller is not None:
        record.update(step.distiller.epoch_means())  # train_kd_loss, train_cwd_loss
    return record


def _log_step(
    writer: SummaryWriter | None, iteration: int, loss: float, lr: float, parts: dict[str, float]
) -> None:
    """The step's loss, its terms and the learning rate to tensorboard (when on)."""
    if writer:
        writer.add_scalar("train/loss", loss, iteration)
        writer.add_scalar("train/lr", lr, iteration)
        for name, value in parts.items():
            writer.add_scalar(f"train/{name}", value, iteration)


def validate(run: Run, data: TrainingData, models: TrainingModels, epoch: int) -> dict[str, Any]:
    """Evaluate after epoch ``epoch`` (1-based) on the validation set: the record's ``val_*``
    fields (mIoU and pixel accuracy in %, per-class IoU by class name); with EMA on, the
    average is evaluated and the raw weights' mIoU is added, so that one run measures what
    the average adds."""
    metrics = _evaluate(run, data, models.evaluated)
    fields = {
        "val_mIoU": round(metrics.miou, 3),
        "val_pixel_accuracy": round(metrics.pixel_accuracy, 3),
        "val_per_class_IoU": dict(zip(data.labels.class_names, (round(v, 2) for v in metrics.iou))),
    }
    if models.ema is not None:
        fields["val_mIoU_raw_weights"] = round(_evaluate(run, data, models.core).miou, 3)
    if run.writer:
        run.writer.add_scalar("val/mIoU", metrics.miou, epoch)
    return fields


def _evaluate(run: Run, data: TrainingData, model: nn.Module):
    """``evaluate`` with the recipe's ``eval`` settings, sharded across processes."""
    return evaluate(
        model,
        data.val_set,
        data.labels.num_classes,
        data.mean,
        data.std,
        device=run.device,
        scales=run.config.eval.scales,
        flip=run.config.eval.flip,
        batch_size=run.config.eval.batch_size,
        amp_dtype=run.amp_dtype,
        channels_last=run.config.train.channels_last,
        ignore_index=data.labels.ignore_index,
        context=run.ctx,
    )


def save_epoch(
    run: Run,
    data: TrainingData,
    models: TrainingModels,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    progress: Progress,
) -> None:
    """Commit the epoch whose record ends ``progress.history`` (main process only): update
    ``progress`` (epoch, best mIoU), write ``last.pt``, ``best.*`` when val mIoU improved
    and ``metrics.jsonl`` (``ddrnet.engine.run_folder.write_epoch``), log the epoch's line."""
    record = progress.history[-1]
    improved = "val_mIoU" in record and record["val_mIoU"] > progress.best_miou
    if improved:
        progress.best_miou = record["val_mIoU"]
    progress.epoch = record["epoch"]
    metadata = _metadata(run.config, models, data, record)
    state = {
        "model": models.core.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "epoch": progress.epoch,
        "iteration": progress.iteration,
        "best_miou": progress.best_miou,
        "history": progress.history,
        "config": to_dict(run.config),
        "metadata": metadata.to_json(),
    }
    if models.ema is not None:
        # timm's key; checkpoint readers prefer it to "model" (the raw weights).
        state["state_dict_ema"] = models.ema.state_dict()
    write_epoch(run.output, state, models.evaluated, improved)
    logger.info(
        "epoch %d: loss %.4f, %.1f img/s%s",
        progress.epoch,
        record["train_loss"],
        record["images_per_second"],
        f", val mIoU {record['val_mIoU']:.2f} (best {progress.best_miou:.2f})"
        if "val_mIoU" in record
        else "",
    )


def _metadata(
    config: Config, models: TrainingModels, data: TrainingData, record: dict[str, Any]
) -> ModelMetadata:
    """What the epoch's model files say about the model: classes, normalisation, the
    validation metrics of ``record`` and how it was trained."""
    labels = data.labels
    return ModelMetadata(
        architecture=config.model.name,
        num_classes=labels.num_classes,
        spec=models.evaluated.spec.to_dict(),
        aux_head=config.model.aux_head,
        class_names=list(labels.class_names),
        palette=[list(c) for c in labels.palette],
        mean=list(data.mean),
        std=list(data.std),
        ignore_index=labels.ignore_index,
        dataset=labels.name,
        input_size=None,
        metrics={k: v for k, v in record.items() if k.startswith("val_")},
        training={
            "epoch": record["epoch"],
            "epochs": config.train.epochs,
            "config": to_dict(config),
        },
        channel_widths=models.widths,  # a pruned model's file rebuilds it
    )


def open_tensorboard(output: Path) -> SummaryWriter | None:
    """A tensorboard ``SummaryWriter`` writing under ``<output>/tensorboard``; None (logged)
    when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        logger.info("tensorboard is not installed; metrics go to metrics.jsonl only")
        return None
    return SummaryWriter(str(output / "tensorboard"))
