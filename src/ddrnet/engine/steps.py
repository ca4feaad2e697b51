"""The steps ``ddrnet.engine.train.train`` takes before its first epoch: the data, the model,
the loss, and the state a ``--resume`` restores. Each refuses in one line what it cannot use,
and none writes a file (the run's folder is written only once they all passed)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from ddrnet.config import ConfigError, to_dict
from ddrnet.data.build import build_split
from ddrnet.data.datasets import PairedSegmentationDataset
from ddrnet.data.labels import LabelSet
from ddrnet.data.mixing import ClassMix, class_ids
from ddrnet.data.sampling import frame_class_pixels, logged_frame_weights
from ddrnet.data.survey import LISTED_PROBLEMS, survey_dataset, survey_warnings
from ddrnet.engine.checkpointing import TrainingError, check_resumable, restore
from ddrnet.engine.config import Config, DataConfig, LossConfig, ModelConfig, TrainConfig
from ddrnet.engine.distributed import DistributedContext
from ddrnet.engine.ema import ModelEma
from ddrnet.engine.losses import (
    CrossEntropy,
    DeepSupervisionLoss,
    OhemCrossEntropy,
    class_balance_weights,
)
from ddrnet.errors import DDRNetError
from ddrnet.limits import check_training_crop
from ddrnet.models import create_model, load_weights
from ddrnet.models.checkpoint_file import RawCheckpoint, read_checkpoint
from ddrnet.models.ddrnet import MainAndAuxiliary
from ddrnet.models.metadata import ModelMetadata
from ddrnet.models.spec import TOPOLOGY_FIELDS, DDRNetSpec
from ddrnet.models.widths import apply_channel_widths

logger = logging.getLogger("ddrnet.engine.train")  # the run's log lines keep one source


@dataclass
class TrainingData:
    """The training and validation sets, their classes and normalisation statistics."""

    train_set: PairedSegmentationDataset
    val_set: Dataset  # a Subset of the validation set with eval.max_images
    labels: LabelSet
    mean: tuple[float, ...]  # per RGB channel, of images scaled to [0, 1]
    std: tuple[float, ...]
    iterations_per_epoch: int  # optimiser steps per epoch, on every process
    collate: ClassMix | None = None  # the training loader's collate_fn (data.class_mix)
    # (len(train_set), C) labelled pixels per frame and class: read at most once per run
    # (by ``check_data``'s survey, else by the first step that needs them).
    _frame_class_pixels: np.ndarray | None = field(default=None, repr=False)

    def frame_class_pixels(self) -> np.ndarray:
        """Pixels of each class in each un-augmented training label, ``(N, C)`` int64."""
        if self._frame_class_pixels is None:
            self._frame_class_pixels = frame_class_pixels(self.train_set, self.labels.num_classes)
        return self._frame_class_pixels


def build_data(config: Config, ctx: DistributedContext) -> TrainingData:
    """The data sets of ``config.data``; refuses a batch (times the processes) larger than
    the training set. Files are not read yet (``check_data`` does)."""
    cfg_data = config.data
    train_set = build_split(cfg_data, "train_split", train=True)
    val_set: Dataset = build_split(cfg_data, "val_split", train=False)
    if config.eval.max_images:
        val_set = Subset(val_set, range(min(config.eval.max_images, len(val_set))))
    labels = train_set.labels
    images_per_step = cfg_data.batch_size * ctx.world_size
    if len(train_set) < images_per_step:
        raise ConfigError(
            f"data.batch_size={cfg_data.batch_size} x {ctx.world_size} processes exceeds the "
            f"{len(train_set)} training images"
        )
    iterations = len(train_set) // images_per_step
    if config.train.max_iterations_per_epoch:
        iterations = min(iterations, config.train.max_iterations_per_epoch)
    return TrainingData(
        train_set,
        val_set,
        labels,
        *cfg_data.normalisation(labels),
        iterations,
        _class_mix(cfg_data, labels),
    )


def _class_mix(cfg_data: DataConfig, labels: LabelSet) -> ClassMix | None:
    """The batch mixing of ``data.class_mix`` (None when off); refuses class names that are
    not the data set's."""
    if cfg_data.class_mix is None:
        return None
    classes = None
    if cfg_data.class_mix_classes is not None:
        try:
            classes = class_ids(
                cfg_data.class_mix_classes, labels.class_names, "data.class_mix_classes"
            )
        except ValueError as error:
            raise ConfigError(str(error)) from None
    return ClassMix(cfg_data.class_mix, classes, labels.ignore_index)


def check_data(data: TrainingData) -> None:
    """Read every file of both sets, reporting problems by name (``data.check``; slow, so
    it comes after the quick refusals), and log what misleads (``survey.survey_warnings``:
    validation frames or recordings also in training, classes without a training pixel)."""
    logger.info(
        "checking %d training and %d validation pairs", len(data.train_set), len(data.val_set)
    )
    surveys = []
    for dataset in (data.train_set, getattr(data.val_set, "dataset", data.val_set)):
        surveys.append(survey_dataset(dataset, stop_after=LISTED_PROBLEMS))
        surveys[-1].raise_problems()
    warnings = survey_warnings(*surveys)
    if surveys[0].labelled_pixels == 0:  # every loss would be 0: nothing to learn
        raise TrainingError(f"the training set has no labelled pixel: {warnings[-1]}")
    for warning in warnings:
        logger.warning(warning)
    # The survey read every training label: class weights and frame sampling need not again.
    data._frame_class_pixels = surveys[0].frame_class_pixels()


def rare_class_frame_weights(data: TrainingData, cfg_data: DataConfig) -> np.ndarray | None:
    """Each training frame's sampling weight, ``(len(train_set),)`` with mean 1, for
    ``data.rare_class_sampling``; None when off."""
    if cfg_data.rare_class_sampling is None:
        return None
    return logged_frame_weights(data.frame_class_pixels(), cfg_data.rare_class_sampling)


def build_model(
    config: Config,
    labels: LabelSet,
    device: torch.device,
    amp: bool,
    resumed: dict[str, Any] | None = None,
) -> tuple[nn.Module, dict[str, list[int]]]:
    """The DDRNet of ``config.model`` for ``labels``, on the CPU, with the weights of
    ``model.pretrained`` when set; and its channel widths (``{}`` unless that file is a
    channel-pruned model of the same architecture, whose narrower layers it then takes).
    ``resumed``, the state of a run to resume: the widths its model file records instead,
    and no ``model.pretrained`` read (the state's weights replace them).
    Refuses a ``data.crop_size`` x ``data.batch_size`` step larger than ``device``'s memory."""
    model = create_model(
        config.model.name,
        num_classes=labels.num_classes,
        aux_head=config.model.aux_head,
        width_multiplier=config.model.width_multiplier,
        norm=config.model.norm,
        norm_groups=config.model.norm_groups,
        fusion=config.model.fusion,
        planes=config.model.planes,
        blocks=config.model.blocks,
        dappm_planes=config.model.dappm_planes,
        head_planes=config.model.head_planes,
    )
    cfg_data = config.data
    check_training_crop(cfg_data.crop_size, cfg_data.batch_size, model.spec.planes, device, amp)
    widths: dict[str, list[int]] = {}
    if resumed is not None:
        if "metadata" in resumed:
            widths = ModelMetadata.from_json(resumed["metadata"]).channel_widths
        apply_channel_widths(model, widths)
    elif config.model.pretrained:
        try:
            raw = read_checkpoint(config.model.pretrained)
        except DDRNetError as error:  # name the setting, as distill.teacher's errors do
            raise ConfigError(f"model.pretrained={config.model.pretrained}: {error}") from None
        _check_pretrained_layers(raw, config.model)
        if raw.metadata is not None and raw.metadata.architecture == config.model.name:
            # A channel-pruned file (`ddrnet prune`): fine-tune its narrower layers.
            widths = raw.metadata.channel_widths
            if widths:
                _check_pruned_topology(config, raw.metadata.spec, model.spec)
            apply_channel_widths(model, widths)
        report = load_weights(model, raw)
        logger.info(report.summary())
    return model, widths


def _check_pruned_topology(config: Config, recorded: dict[str, Any], built: DDRNetSpec) -> None:
    """A channel-pruned ``model.pretrained`` narrows the layers of its own topology: a recipe
    that builds another (wider, deeper) cannot take its widths."""
    file_spec = DDRNetSpec.from_dict(recorded)
    differ = [key for key in TOPOLOGY_FIELDS if getattr(file_spec, key) != getattr(built, key)]
    if differ:
        asked = _set_in(config)
        raise ConfigError(
            f"model.pretrained={config.model.pretrained} is a channel-pruned model of another "
            f"{'/'.join(differ)} than this recipe builds: its widths are the file's"
            + (f" (drop {', '.join(asked)})" if asked else "")
        )


def _set_in(config: Config) -> list[str]:
    """The ``model.*`` topology settings ``config`` sets away from the variant's."""
    cfg = config.model
    chosen = [f"model.{key}" for key in TOPOLOGY_FIELDS if getattr(cfg, key) is not None]
    return (["model.width_multiplier"] if cfg.width_multiplier != 1.0 else []) + chosen


def _check_pretrained_layers(raw: RawCheckpoint, cfg_model: ModelConfig) -> None:
    """Refuse a ``model.pretrained`` file whose norm layers or fusions are not the recipe's:
    BatchNorm statistics do not load into GroupNorm, GroupNorm of other group counts computes
    something else, and attention weights have no place in the paper's sum. The other way
    round is allowed: attention added to a paper-form file starts from its initial values.
    A file without metadata (an official checkpoint) has BatchNorm and the paper's fusion."""
    # The spec's own defaults where the file predates the norm and fusion fields.
    recorded = raw.metadata.spec if raw.metadata is not None else {}
    trained = _norm_name(
        recorded.get("norm", DDRNetSpec.norm),
        recorded.get("norm_groups", DDRNetSpec.norm_groups),
    )
    asked = _norm_name(cfg_model.norm, cfg_model.norm_groups)
    if trained != asked:
        raise ConfigError(
            f"model.pretrained {raw.source} was trained with model.norm={trained}; "
            f"the recipe asks for model.norm={asked}"
        )
    fusion = recorded.get("fusion", DDRNetSpec.fusion)
    if fusion not in (DDRNetSpec.fusion, cfg_model.fusion):
        raise ConfigError(
            f"model.pretrained {raw.source} was trained with model.fusion={fusion}; "
            f"the recipe asks for model.fusion={cfg_model.fusion}"
        )


def _norm_name(norm: str, groups: int) -> str:
    return f"group (norm_groups={groups})" if norm == "group" else norm


@dataclass
class TrainingModels:
    """The model in its three roles: ``core`` holds the trained weights (what a checkpoint's
    ``model`` is), ``forward`` runs the training pass (``MainAndAuxiliary`` under DDP and
    ``torch.compile`` when on), ``ema`` averages ``core``'s weights (``train.ema_decay``)."""

    core: nn.Module
    forward: nn.Module
    ema: ModelEma | None
    widths: dict[str, list[int]]  # channel widths of a pruned model, {} otherwise

    @property
    def evaluated(self) -> nn.Module:
        """With EMA on, the average is the model: evaluated, kept as best, exported."""
        return self.ema.module if self.ema else self.core


def prepare_models(
    model: nn.Module,
    widths: dict[str, list[int]],
    cfg_train: TrainConfig,
    device: torch.device,
    ctx: DistributedContext,
) -> TrainingModels:
    """``model`` on ``device`` in training mode, in channels-last memory and with synchronised
    batch norm (DDP on CUDA) when asked, wrapped for the training pass, with its average."""
    model.train().to(device)
    if cfg_train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if ctx.enabled and device.type == "cuda":
        # Converts BatchNorms only: GroupNorm (model.norm=group) needs no batch statistics.
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    forward: nn.Module = MainAndAuxiliary(model)
    if ctx.enabled:
        forward = torch.nn.parallel.DistributedDataParallel(
            forward, device_ids=[ctx.local_rank] if device.type == "cuda" else None
        )
    if cfg_train.compile:
        forward = torch.compile(forward)
    ema = ModelEma(model, cfg_train.ema_decay) if cfg_train.ema_decay else None
    return TrainingModels(model, forward, ema, widths)


def build_criterion(
    cfg_loss: LossConfig, data: TrainingData, device: torch.device
) -> DeepSupervisionLoss:
    """Cross-entropy (OHEM with ``loss.ohem``) on the main and auxiliary logits, with the
    class weights of ``loss.class_weights``: a method's name (computed from the training
    labels) or one value per class; and the boundary term of ``loss.boundary_weight``."""
    labels = data.labels
    weights = None
    if isinstance(cfg_loss.class_weights, str):
        counts = torch.from_numpy(data.frame_class_pixels().sum(0))
        weights = class_balance_weights(counts, cfg_loss.class_weights)
    elif cfg_loss.class_weights is not None:
        if len(cfg_loss.class_weights) != labels.num_classes:
            raise ConfigError(
                f"loss.class_weights has {len(cfg_loss.class_weights)} values for "
                f"{labels.num_classes} classes"
            )
        weights = torch.tensor(cfg_loss.class_weights, dtype=torch.float32)
    if weights is not None:
        logger.info("class weights: %s", [round(float(w), 3) for w in weights])
    # ohem_min_kept counts full-resolution pixels; the loss sees 1/label_stride^2 of them.
    min_kept = max(1, cfg_loss.ohem_min_kept // cfg_loss.label_stride**2)
    # boundary_width counts full-resolution pixels too; the loss's label grid is coarser.
    boundary = (
        cfg_loss.boundary_weight or 0.0,
        max(1, round(cfg_loss.boundary_width / cfg_loss.label_stride)),
    )
    per_head = (
        OhemCrossEntropy(cfg_loss.ohem_threshold, min_kept, labels.ignore_index, weights, *boundary)
        if cfg_loss.ohem
        else CrossEntropy(labels.ignore_index, weights, *boundary)
    )
    return DeepSupervisionLoss(per_head, 1.0, cfg_loss.aux_weight, cfg_loss.label_stride).to(device)


@dataclass
class Progress:
    """Where a run stands; ``last.pt`` records it beside the weights and optimiser."""

    epoch: int = 0  # epochs finished
    iteration: int = 0  # optimiser steps taken
    best_miou: float = -1.0  # the best val mIoU so far; -1 before any evaluation
    history: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl's records


def restore_run(
    state: dict[str, Any],
    path: Path,
    config: Config,
    models: TrainingModels,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
) -> Progress:
    """Load the training ``state`` read from ``path`` into the model, its average, the
    optimiser and the loss scaler; refuses (changing nothing on disk) a state written with
    another model or optimiser, with or without the average unlike this run, or that has
    trained more than ``train.epochs``. The optimiser's settings are this run's."""
    check_resumable(state, to_dict(config), path)
    if state["epoch"] > config.train.epochs:  # equal: nothing to train, the folder repaired
        raise TrainingError(
            f"{path} has trained {state['epoch']} epochs already, more than train.epochs="
            f"{config.train.epochs}: give train.epochs of at least {state['epoch']} "
            "(nothing was changed)"
        )
    if (models.ema is None) != ("state_dict_ema" not in state):
        had = "without" if models.ema is not None else "with"
        raise TrainingError(
            f"{path} was written {had} train.ema_decay; resume it with the same setting, or "
            "start a new run (nothing was changed)"
        )
    restore(models.core, state["model"], "model", path)
    # The checkpoint brings the optimiser's buffers (momentum, Adam's moments); its
    # settings (momentum, weight decay, nesterov, the fused kernels) are this run's.
    settings = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    restore(optimizer, state["optimizer"], "optimiser state", path)
    for group, own in zip(optimizer.param_groups, settings, strict=True):
        group.update(own)
    if state["scaler"]:  # empty when the run it was written by scaled no loss (not fp16)
        scaler.load_state_dict(state["scaler"])
    progress = Progress(
        state["epoch"], state["iteration"], state["best_miou"], state.get("history", [])
    )
    if models.ema is not None:
        # The ramp of the decay depends on the number of updates: one per iteration.
        models.ema.load_state_dict(state["state_dict_ema"], updates=progress.iteration)
    logger.info(
        "resumed from %s at epoch %d (iteration %d)", path, progress.epoch, progress.iteration
    )
    changed = _changed_settings(state.get("config"), to_dict(config))
    if changed:  # config.yaml will say only the new values
        logger.info("settings changed on resume: %s", ", ".join(changed))
    return progress


def _changed_settings(saved: Any, current: dict[str, Any]) -> list[str]:
    """``section.key: old -> new`` for each setting of ``current`` that differs from the
    ``saved`` config (a plain dict; anything else: none)."""
    if not isinstance(saved, dict):
        return []
    return [
        f"{section}.{key}: {saved[section][key]} -> {value}"
        for section, values in current.items()
        if isinstance(values, dict) and isinstance(saved.get(section), dict)
        for key, value in values.items()
        if key in saved[section] and saved[section][key] != value
    ]
