"""The training loop, readable top to bottom (in the spirit of nanoGPT).

``train(config)`` builds data, model, loss and optimiser from a ``Config``, then runs epochs of
SGD/AdamW with poly decay; after each epoch it evaluates (when due) and writes ``last.pt``
atomically, plus ``best.pt`` and ``best.safetensors`` when mIoU improves. Resuming restores
model, optimiser, scaler, epoch and iteration; the random streams are re-seeded from
``(seed, epoch, rank)`` at the start of every epoch, so a resumed run continues exactly as an
uninterrupted one would. The order of the epoch's writes, and the repair of what a kill left
half done, are in ``ddrnet.engine.run_folder``.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch
import yaml
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, Subset
from tqdm import tqdm

from ddrnet.config import ConfigError, to_dict
from ddrnet.data.build import build_dataset
from ddrnet.data.datasets import DatasetError, PairedSegmentationDataset
from ddrnet.data.sampling import (
    WeightedFrameSampler,
    dataset_frame_weights,
    frame_class_pixels,
)
from ddrnet.engine.allocator import retain_freed_memory
from ddrnet.engine.checkpointing import (
    TrainingError,
    atomic_write_text,
    check_resumable,
    load_training_checkpoint,
    restore,
)
from ddrnet.engine.config import Config, DataConfig
from ddrnet.engine.distill import build_distiller
from ddrnet.engine.distributed import (
    DistributedContext,
    any_process,
    barrier,
    cleanup_distributed,
    setup_distributed,
)
from ddrnet.engine.ema import ModelEma
from ddrnet.engine.evaluate import evaluate
from ddrnet.engine.inference import autocast, normalize, pick_device, resolve_precision
from ddrnet.engine.losses import (
    CrossEntropy,
    DeepSupervisionLoss,
    OhemCrossEntropy,
    class_balance_weights,
)
from ddrnet.engine.run_folder import checked_output, repair_run, write_epoch
from ddrnet.engine.schedules import build_optimizer, poly_lr
from ddrnet.hardware import describe_cpu
from ddrnet.limits import check_training_crop
from ddrnet.models import ModelMetadata, create_model, load_weights
from ddrnet.models.checkpoint import read_checkpoint
from ddrnet.models.widths import apply_channel_widths

logger = logging.getLogger(__name__)

__all__ = ["TrainingError", "label_pixel_counts", "train"]


def label_pixel_counts(dataset, num_classes: int) -> torch.Tensor:
    """Pixels per class over the un-augmented training labels, ``(num_classes,)`` int64."""
    return torch.from_numpy(frame_class_pixels(dataset, num_classes).sum(0))


def train(config: Config, resume: bool | str = False) -> Path:
    """Run the recipe; returns the output folder. ``resume``: True = ``<output>/last.pt``."""
    device = _checked_device(config.train.device)
    context = setup_distributed(device.type)
    try:
        return _train(config, resume, device, context)
    finally:
        cleanup_distributed(context)


def _checked_device(name: str) -> torch.device:
    try:
        return pick_device(name)
    except ValueError as error:
        raise TrainingError(f"train.device={name}: {error}") from None


def _dataset(cfg_data: DataConfig, split_key: str, train: bool) -> PairedSegmentationDataset:
    """The data set of ``data.<split_key>``; its errors say which set they concern."""
    split = getattr(cfg_data, split_key)
    try:
        return build_dataset(cfg_data, split, train=train)
    except DatasetError as error:
        kind = "training" if train else "validation"
        raise DatasetError(f"{kind} set (data.{split_key}={split}): {error}") from None


def _train(
    config: Config, resume: bool | str, device: torch.device, ctx: DistributedContext
) -> Path:
    cfg_train, cfg_data, cfg_optim, cfg_loss = config.train, config.data, config.optim, config.loss
    if cfg_train.threads:
        torch.set_num_threads(cfg_train.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if device.type == "cpu" and cfg_train.retain_freed_memory:
        retain_freed_memory()
    output = Path(cfg_train.output_dir)
    resume_path = checked_output(output, resume)
    if cfg_data.batch_size < 2:
        raise TrainingError(
            f"data.batch_size={cfg_data.batch_size}: training needs at least 2 images per "
            "batch (batch norm estimates its statistics from the batch)"
        )
    autocast_dtype = resolve_precision(cfg_train.amp, device, option="train.amp")
    if ctx.is_main:
        logger.info(
            "training on %s in %s (train.amp=%s)",
            describe_cpu() if device.type == "cpu" else device,
            str(autocast_dtype or torch.float32).removeprefix("torch."),
            cfg_train.amp,
        )
    torch.manual_seed(cfg_train.seed)

    # ---- data -------------------------------------------------------------------------
    train_set = _dataset(cfg_data, "train_split", train=True)
    val_set = _dataset(cfg_data, "val_split", train=False)
    if config.eval.max_images:
        val_set = Subset(val_set, range(min(config.eval.max_images, len(val_set))))
    labels = train_set.labels
    mean = tuple(cfg_data.mean or labels.mean)
    std = tuple(cfg_data.std or labels.std)
    if len(train_set) < cfg_data.batch_size * ctx.world_size:
        raise ConfigError(
            f"data.batch_size={cfg_data.batch_size} x {ctx.world_size} processes exceeds the "
            f"{len(train_set)} training images"
        )
    iterations_per_epoch = len(train_set) // (cfg_data.batch_size * ctx.world_size)
    if cfg_train.max_iterations_per_epoch:
        iterations_per_epoch = min(iterations_per_epoch, cfg_train.max_iterations_per_epoch)
    total_iterations = iterations_per_epoch * cfg_train.epochs

    # ---- model ------------------------------------------------------------------------
    model = create_model(
        config.model.name,
        num_classes=labels.num_classes,
        aux_head=config.model.aux_head,
        width_multiplier=config.model.width_multiplier,
    )
    check_training_crop(
        cfg_data.crop_size, cfg_data.batch_size, model.spec.planes, device, bool(autocast_dtype)
    )
    widths: dict[str, list[int]] = {}
    if config.model.pretrained:
        raw = read_checkpoint(config.model.pretrained)
        if raw.metadata is not None and raw.metadata.architecture == config.model.name:
            # A channel-pruned file (`ddrnet prune`): fine-tune its narrower layers.
            widths = raw.metadata.channel_widths
            apply_channel_widths(model, widths)
        report = load_weights(model, raw)
        logger.info(report.summary())
    # distill.teacher: loaded (or refused) here, before the slow data check; None when off.
    distiller = build_distiller(
        config.distill, labels, mean, std, device, autocast_dtype, cfg_train.channels_last
    )
    # Reading every file takes a while, so it comes after the quick refusals above.
    if cfg_data.check and ctx.is_main:
        logger.info("checking %d training and %d validation pairs", len(train_set), len(val_set))
        train_set.check()
        getattr(val_set, "dataset", val_set).check()
    model.train().to(device)
    if cfg_train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if ctx.enabled and device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    core_model = model
    # DDP and torch.compile wrap a module whose forward returns both heads.
    forward: torch.nn.Module = MainAndAuxiliary(core_model)
    if ctx.enabled:
        forward = torch.nn.parallel.DistributedDataParallel(
            forward, device_ids=[ctx.local_rank] if device.type == "cuda" else None
        )
    if cfg_train.compile:
        forward = torch.compile(forward)
    # With EMA on, the average is the model: evaluated, kept as best, exported.
    ema = ModelEma(core_model, cfg_train.ema_decay) if cfg_train.ema_decay else None
    eval_model = ema.module if ema else core_model

    # ---- loss -------------------------------------------------------------------------
    weights = None
    if cfg_loss.class_weights is not None:
        if isinstance(cfg_loss.class_weights, str):
            counts = label_pixel_counts(train_set, labels.num_classes)
            weights = class_balance_weights(counts, cfg_loss.class_weights)
        else:
            if len(cfg_loss.class_weights) != labels.num_classes:
                raise ConfigError(
                    f"loss.class_weights has {len(cfg_loss.class_weights)} values for "
                    f"{labels.num_classes} classes"
                )
            weights = torch.tensor(cfg_loss.class_weights, dtype=torch.float32)
        logger.info("class weights: %s", [round(float(w), 3) for w in weights])
    min_kept = max(1, cfg_loss.ohem_min_kept // cfg_loss.label_stride**2)
    criterion_cls = (
        OhemCrossEntropy(cfg_loss.ohem_threshold, min_kept, labels.ignore_index, weights)
        if cfg_loss.ohem
        else CrossEntropy(labels.ignore_index, weights)
    )
    criterion = DeepSupervisionLoss(
        criterion_cls, 1.0, cfg_loss.aux_weight, cfg_loss.label_stride
    ).to(device)

    # ---- optimiser --------------------------------------------------------------------
    scaler = torch.amp.GradScaler(device.type, enabled=autocast_dtype == torch.float16)
    optimizer = build_optimizer(cfg_optim, core_model.parameters(), device, scaler.is_enabled())
    warmup_iterations = int(cfg_optim.warmup_epochs * iterations_per_epoch)

    # ---- resume -----------------------------------------------------------------------
    start_epoch, iteration, best_miou, history, state = 0, 0, -1.0, [], None
    if resume_path is not None:
        state = load_training_checkpoint(resume_path)
        check_resumable(state, to_dict(config), resume_path)
        restore(core_model, state["model"], "model", resume_path)
        restore(optimizer, state["optimizer"], "optimiser state", resume_path)
        scaler.load_state_dict(state["scaler"])
        start_epoch, iteration = state["epoch"], state["iteration"]
        if ema is not None:
            if "state_dict_ema" not in state:
                raise TrainingError(
                    f"{resume_path} was written without train.ema_decay; resume it with the "
                    "same setting, or start a new run"
                )
            ema.load_state_dict(state["state_dict_ema"], updates=iteration)
        best_miou, history = state["best_miou"], state.get("history", [])
        logger.info(
            "resumed from %s at epoch %d (iteration %d)", resume_path, start_epoch, iteration
        )
    if ctx.is_main:  # written once the data passed its checks and the checkpoint fitted:
        # a refused run leaves nothing, a refused resume leaves the run as it was
        if state is not None:
            repair_run(output, state, eval_model)
        atomic_write_text(yaml.safe_dump(to_dict(config), sort_keys=False), output / "config.yaml")

    def validate(model: torch.nn.Module):
        return evaluate(
            model,
            val_set,
            labels.num_classes,
            mean,
            std,
            device=device,
            scales=config.eval.scales,
            flip=config.eval.flip,
            batch_size=config.eval.batch_size,
            amp_dtype=autocast_dtype,
            channels_last=cfg_train.channels_last,
            ignore_index=labels.ignore_index,
            context=ctx,
        )

    frame_weights = None  # data.rare_class_sampling; class frequencies read once per run
    if cfg_data.rare_class_sampling is not None:
        frame_weights = dataset_frame_weights(train_set, cfg_data.rare_class_sampling)

    writer = _tensorboard(output) if ctx.is_main else None
    started = time.monotonic()
    seen_images = 0
    for epoch in range(start_epoch, cfg_train.epochs):
        # Re-seed every stream from (seed, epoch, rank): an epoch's randomness does not depend
        # on what ran before it, which is what makes resume exact.
        epoch_seed = cfg_train.seed + 1009 * epoch + ctx.rank
        torch.manual_seed(epoch_seed)
        generator = torch.Generator().manual_seed(epoch_seed)
        if frame_weights is not None:  # drawn from (seed, epoch), split across processes
            sampler = WeightedFrameSampler(frame_weights, ctx.world_size, ctx.rank, cfg_train.seed)
            sampler.set_epoch(epoch)
        elif ctx.enabled:
            sampler = DistributedSampler(train_set, ctx.world_size, ctx.rank, seed=cfg_train.seed)
            sampler.set_epoch(epoch)
        else:
            sampler = RandomSampler(train_set, generator=generator)
        loader = DataLoader(
            train_set,
            batch_size=cfg_data.batch_size,
            sampler=sampler,
            num_workers=cfg_data.num_workers,
            drop_last=True,
            pin_memory=device.type == "cuda",
            generator=generator,
        )
        forward.train()
        epoch_start, epoch_losses = time.monotonic(), []
        bar = tqdm(
            total=iterations_per_epoch,
            desc=f"epoch {epoch + 1}/{cfg_train.epochs}",
            disable=not ctx.is_main,
            dynamic_ncols=True,
            mininterval=1.0,
        )
        for step, (images, targets) in enumerate(loader):
            if step >= iterations_per_epoch:
                break
            lr = poly_lr(
                iteration,
                total_iterations,
                cfg_optim.lr,
                cfg_optim.poly_power,
                warmup_iterations,
                cfg_optim.warmup_ratio,
                cfg_optim.min_lr,
            )
            for group in optimizer.param_groups:
                group["lr"] = lr
            images = normalize(images.to(device, non_blocking=True), mean, std)
            if cfg_train.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            targets = targets.to(device, non_blocking=True)
            with autocast(device, autocast_dtype):
                main, aux = forward(images)
            loss, parts = criterion(main.float(), None if aux is None else aux.float(), targets)
            if distiller is not None:  # the teacher's forward counts in the img/s shown
                loss, parts = distiller.add_to(loss, parts, images, main, targets)
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"loss became {loss.item()} at epoch {epoch + 1}, iteration {iteration}; "
                    "lower optim.lr or check the labels. "
                    f"The last checkpoint in {output} is intact."
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            if ema is not None:
                ema.update()
            iteration += 1
            seen_images += images.shape[0] * ctx.world_size
            epoch_losses.append(float(loss.detach()))
            if ctx.is_main and (
                step % cfg_train.log_every == 0 or step == iterations_per_epoch - 1
            ):
                elapsed = time.monotonic() - epoch_start
                rate = (step + 1) * cfg_data.batch_size * ctx.world_size / max(elapsed, 1e-9)
                remaining = (
                    (total_iterations - iteration)
                    * cfg_data.batch_size
                    * ctx.world_size
                    / max(rate, 1e-9)
                )
                bar.set_postfix(
                    loss=f"{loss.item():.3f}",
                    lr=f"{lr:.2e}",
                    img_s=f"{rate:.1f}",
                    eta=_hms(remaining),
                )
                if writer:
                    writer.add_scalar("train/loss", loss.item(), iteration)
                    writer.add_scalar("train/lr", lr, iteration)
                    for name, value in parts.items():
                        writer.add_scalar(f"train/{name}", value, iteration)
            bar.update(1)
        bar.close()
        epoch_time = time.monotonic() - epoch_start
        record = {
            "epoch": epoch + 1,
            "iteration": iteration,
            "lr": lr,
            "train_loss": sum(epoch_losses) / max(1, len(epoch_losses)),
            "epoch_seconds": round(epoch_time, 2),
            "images_per_second": round(
                iterations_per_epoch * cfg_data.batch_size * ctx.world_size / epoch_time, 2
            ),
        }
        if distiller is not None:
            record.update(distiller.epoch_means())  # train_kd_loss, train_cwd_loss

        # ---- evaluate ---------------------------------------------------------------------
        is_last_epoch = epoch + 1 == cfg_train.epochs
        out_of_time = any_process(
            cfg_train.max_minutes is not None
            and (time.monotonic() - started) / 60 >= cfg_train.max_minutes,
            ctx,
        )
        if (epoch + 1) % config.eval.every_epochs == 0 or is_last_epoch or out_of_time:
            metrics = validate(eval_model)
            record["val_mIoU"] = round(metrics.miou, 3)
            record["val_pixel_accuracy"] = round(metrics.pixel_accuracy, 3)
            record["val_per_class_IoU"] = dict(
                zip(labels.class_names, (round(v, 2) for v in metrics.iou))
            )
            if ema is not None:
                # The raw weights too, so that one run measures what the average adds.
                record["val_mIoU_raw_weights"] = round(validate(core_model).miou, 3)
            if writer:
                writer.add_scalar("val/mIoU", metrics.miou, epoch + 1)
        history.append(record)

        # ---- checkpoint -------------------------------------------------------------------
        if ctx.is_main:
            improved = "val_mIoU" in record and record["val_mIoU"] > best_miou
            if improved:
                best_miou = record["val_mIoU"]
            metadata = _metadata(config, eval_model, labels, mean, std, record, epoch + 1)
            metadata.channel_widths = widths  # a pruned model's file rebuilds it
            state = {
                "model": core_model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "epoch": epoch + 1,
                "iteration": iteration,
                "best_miou": best_miou,
                "history": history,
                "config": to_dict(config),
                "metadata": metadata.to_json(),
            }
            if ema is not None:
                # timm's key; checkpoint readers prefer it to "model" (the raw weights).
                state["state_dict_ema"] = ema.state_dict()
            write_epoch(output, state, eval_model, improved)
            logger.info(
                "epoch %d: loss %.4f, %.1f img/s%s",
                epoch + 1,
                record["train_loss"],
                record["images_per_second"],
                f", val mIoU {record['val_mIoU']:.2f} (best {best_miou:.2f})"
                if "val_mIoU" in record
                else "",
            )
        barrier(ctx)
        if out_of_time and not is_last_epoch:
            logger.info("train.max_minutes=%s reached; resume with --resume", cfg_train.max_minutes)
            break
    if writer:
        writer.close()
    return output


class MainAndAuxiliary(torch.nn.Module):
    """Training view of a DDRNet: ``forward`` returns ``(main_logits, aux_logits | None)``."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor):
        return self.model.forward_with_aux(images)


def _metadata(config: Config, model, labels, mean, std, record: dict, epoch: int) -> ModelMetadata:
    return ModelMetadata(
        architecture=config.model.name,
        num_classes=labels.num_classes,
        spec=model.spec.to_dict(),
        aux_head=config.model.aux_head,
        class_names=list(labels.class_names),
        palette=[list(c) for c in labels.palette],
        mean=list(mean),
        std=list(std),
        ignore_index=labels.ignore_index,
        dataset=labels.name,
        input_size=None,
        metrics={k: v for k, v in record.items() if k.startswith("val_")},
        training={"epoch": epoch, "epochs": config.train.epochs, "config": to_dict(config)},
    )


def _tensorboard(output: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        logger.info("tensorboard is not installed; metrics go to metrics.jsonl only")
        return None
    return SummaryWriter(str(output / "tensorboard"))


def _hms(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
