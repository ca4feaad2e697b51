"""The training loop, readable top to bottom (in the spirit of nanoGPT).

``train(config)`` builds data, model, loss and optimiser from a ``Config``
(``ddrnet.engine.steps``), then runs epochs of SGD/AdamW with poly decay
(``ddrnet.engine.epoch``); after each epoch it evaluates (when due) and writes ``last.pt``
atomically, plus ``best.pt`` and ``best.safetensors`` when mIoU improves. Resuming restores
model, optimiser, scaler, epoch and iteration; the random streams are re-seeded from
``(seed, epoch, rank)`` at the start of every epoch, so a resumed run continues exactly as an
uninterrupted one would. The order of the epoch's writes, and the repair of what a kill left
half done, are in ``ddrnet.engine.run_folder``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from ddrnet.atomic import atomic_write_text, remove_stale_temporaries
from ddrnet.config import to_dict
from ddrnet.engine.allocator import retain_freed_memory
from ddrnet.engine.checkpointing import TrainingError, load_training_checkpoint
from ddrnet.engine.config import Config, LossConfig
from ddrnet.engine.device import pick_device, resolve_precision
from ddrnet.engine.distill import build_distiller
from ddrnet.engine.distributed import (
    DistributedContext,
    any_process,
    barrier,
    cleanup_distributed,
    setup_distributed,
)
from ddrnet.engine.epoch import (
    Run,
    TrainStep,
    epoch_loader,
    open_tensorboard,
    run_epoch,
    save_epoch,
    validate,
)
from ddrnet.engine.recordings import mixes_with_frames
from ddrnet.engine.run_folder import (
    CONFIG,
    CONFIG_HEADER,
    WRITTEN_FILES,
    checked_output,
    repair_run,
)
from ddrnet.engine.schedules import build_optimizer, lr_schedule
from ddrnet.engine.steps import (
    Progress,
    TrainingData,
    build_criterion,
    build_data,
    build_model,
    check_data,
    prepare_models,
    rare_class_frame_weights,
    restore_run,
)
from ddrnet.hardware import describe_cpu

logger = logging.getLogger(__name__)

__all__ = ["TrainingError", "train"]


def train(config: Config, resume: bool | str = False) -> Path:
    """Run the recipe ``config``; returns the output folder (``train.output_dir``).

    ``resume``: False starts a new run, True continues ``<output>/last.pt``, a path continues
    that checkpoint (a run folder: its ``last.pt``). Under ``torchrun`` every process calls
    it; the main one writes the files.
    """
    cfg_train = config.train
    device = _checked_device(cfg_train.device)
    ctx = setup_distributed(device.type)
    try:
        output = Path(cfg_train.output_dir)
        resume_path = checked_output(output, resume, _config_text(config))
        amp_dtype = _set_up_process(config, device, ctx)

        # Read first: a resumed run's widths are its checkpoint's (model.pretrained, which
        # a pruned student started from, is not read again: it may have moved since).
        state = load_training_checkpoint(resume_path) if resume_path is not None else None
        data = build_data(config, ctx)
        _check_outside_data(output, data)
        model, widths = build_model(config, data.labels, device, bool(amp_dtype), state)
        # distill.teacher: loaded (or refused) here, before the slow data check; None when off.
        distiller = build_distiller(
            config.distill, data.labels, data.mean, data.std, device, amp_dtype,
            cfg_train.channels_last,
        )  # fmt: skip
        if config.data.check and ctx.is_main:
            check_data(data)
        models = prepare_models(model, widths, cfg_train, device, ctx)
        criterion = build_criterion(config.loss, data, device)
        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        optimizer = build_optimizer(
            config.optim, models.core.parameters(), device, scaler.is_enabled()
        )

        progress = Progress()
        if state is not None:
            progress = restore_run(state, resume_path, config, models, optimizer, scaler)
        if ctx.is_main:
            _open_run_folder(output, config, state, models.evaluated)

        frame_weights = rare_class_frame_weights(data, config.data)
        writer = open_tensorboard(output) if ctx.is_main else None
        run = Run(config, device, ctx, amp_dtype, output, writer)
        step = TrainStep(run, data, models, criterion, distiller, optimizer, scaler)
        schedule = lr_schedule(config.optim, data.iterations_per_epoch, cfg_train.epochs)
        started = time.monotonic()
        for epoch in range(progress.epoch, cfg_train.epochs):
            loader = epoch_loader(run, data, epoch, frame_weights)
            record = run_epoch(step, loader, schedule, progress, epoch)
            is_last_epoch = epoch + 1 == cfg_train.epochs
            out_of_time = _out_of_time(started, cfg_train.max_minutes, ctx)
            if (epoch + 1) % config.eval.every_epochs == 0 or is_last_epoch or out_of_time:
                record.update(validate(run, data, models, epoch + 1))
            progress.history.append(record)
            if ctx.is_main:
                save_epoch(run, data, models, optimizer, scaler, progress)
            barrier(ctx)
            if out_of_time and not is_last_epoch:
                logger.info(
                    "train.max_minutes=%s reached; resume with --resume", cfg_train.max_minutes
                )
                break
        if writer:
            writer.close()
        return output
    finally:
        cleanup_distributed(ctx)


def _checked_device(name: str) -> torch.device:
    try:
        return pick_device(name)
    except ValueError as error:
        raise TrainingError(f"train.device={name}: {error}") from None


def _check_outside_data(output: Path, data: TrainingData) -> None:
    """Refuse a run folder among the data set's frames (``mixes_with_frames``)."""
    for dataset in (data.train_set, data.val_set):
        if mixes_with_frames(output, dataset):
            raise TrainingError(
                f"train.output_dir={output} lies among the data set's frames: the run's files "
                "would mix with them (a folder beside images/ and masks/ is fine)"
            )


def _set_up_process(
    config: Config, device: torch.device, ctx: DistributedContext
) -> torch.dtype | None:
    """Refuse a batch too small for batch norm (GroupNorm takes any) and an auxiliary loss
    weight without the auxiliary head; set the process-wide
    settings of the run (CPU threads, cuDNN's autotuner, the allocator, the seed of the
    initial weights) and return autocast's dtype for ``train.amp`` (None: float32), which is
    logged."""
    cfg_train = config.train
    if cfg_train.threads:
        torch.set_num_threads(cfg_train.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if device.type == "cpu" and cfg_train.retain_freed_memory:
        retain_freed_memory()
    if config.data.batch_size < 2 and config.model.norm != "group":
        raise TrainingError(
            f"data.batch_size={config.data.batch_size}: training needs at least 2 images per "
            "batch (batch norm estimates its statistics from the batch; model.norm=group "
            "trains on single images)"
        )
    if not config.model.aux_head and config.loss.aux_weight not in (0.0, LossConfig.aux_weight):
        raise TrainingError(
            f"loss.aux_weight={config.loss.aux_weight:g} does nothing with model.aux_head=false "
            "(there is no auxiliary head to supervise)"
        )
    if config.loss.label_stride > min(config.data.crop_size):
        raise TrainingError(
            f"loss.label_stride={config.loss.label_stride} is larger than the data.crop_size "
            f"{list(config.data.crop_size)}: the subsampled labels would have no pixel left"
        )
    amp_dtype = resolve_precision(cfg_train.amp, device, option="train.amp")
    if ctx.is_main:
        logger.info(
            "training on %s in %s (train.amp=%s)",
            describe_cpu() if device.type == "cpu" else device,
            str(amp_dtype or torch.float32).removeprefix("torch."),
            cfg_train.amp,
        )
        if config.optim.warmup_epochs >= cfg_train.epochs:  # a short trial run of a recipe
            logger.warning(
                "optim.warmup_epochs=%g covers all %d epochs: the learning rate never "
                "reaches optim.lr=%g",
                config.optim.warmup_epochs, cfg_train.epochs, config.optim.lr,
            )  # fmt: skip
    torch.manual_seed(cfg_train.seed)
    return amp_dtype


def _open_run_folder(
    output: Path, config: Config, state: dict[str, Any] | None, model: torch.nn.Module
) -> None:
    """Write ``config.yaml``, after repairing what a kill left half done in a resumed run
    (``state``: its ``last.pt``; ``model`` holds its evaluated weights). Called once the data
    passed its checks and the checkpoint fitted: a refused run leaves nothing, a refused
    resume leaves the run as it was."""
    if state is not None:
        repair_run(output, state, model)
    else:  # what a run killed before its first checkpoint left half written
        remove_stale_temporaries(output, WRITTEN_FILES)
    atomic_write_text(_config_text(config), output / CONFIG)


def _config_text(config: Config) -> str:
    """``config.yaml``'s content: the resolved recipe, after ``CONFIG_HEADER``."""
    return CONFIG_HEADER + yaml.safe_dump(to_dict(config), sort_keys=False)


def _out_of_time(started: float, max_minutes: float | None, ctx: DistributedContext) -> bool:
    """Whether ``train.max_minutes`` have passed since ``started`` (``time.monotonic()``), on
    any process: every process then stops after the same epoch."""
    minutes = (time.monotonic() - started) / 60
    return any_process(max_minutes is not None and minutes >= max_minutes, ctx)
