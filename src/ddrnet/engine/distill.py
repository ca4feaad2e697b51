"""Knowledge distillation in training: a frozen teacher's logits guide the student.

Two losses on the 1/8-resolution logits of the main head (``recipe: distill``):

* ``kd_loss``: Hinton et al.'s pixel-wise KD, ``T^2 * KL(softmax(t/T) || softmax(s/T))``
  over the classes of each pixel, averaged over labelled (non-ignore) pixels;
* ``cwd_loss``: channel-wise distillation (Shu et al., ICCV 2021): for each class channel,
  a softmax over its spatial positions of ``logits / tau``, KL teacher -> student summed
  over positions and channels, ``* tau^2``, divided by ``N * C`` (as mmrazor's
  ``ChannelWiseDivergence`` and super-gradients' ``ChannelWiseKnowledgeDistillationLoss``).

With ``distill.teacher_scales``/``teacher_flip`` the teacher is an ensemble of itself over
input scales and mirror images (``segment_logits``, the evaluation's multi-scale + flip): its
averaged softmax ``p`` enters both losses as the logits ``log p``.

The teacher is loaded once per process (so also under torchrun) with ``create_model``, kept
in eval mode with ``requires_grad`` off, and run under ``torch.no_grad`` and the run's
autocast. It is not part of the training checkpoint: ``--resume`` loads it again from
``distill.teacher``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ddrnet.data.labels import LabelSet
from ddrnet.engine.checkpointing import TrainingError
from ddrnet.engine.config import DistillConfig
from ddrnet.engine.device import autocast
from ddrnet.engine.inference import segment_logits
from ddrnet.engine.losses import resize_logits
from ddrnet.models.metadata import IGNORE_INDEX

logger = logging.getLogger(__name__)

__all__ = ["Distiller", "build_distiller", "cwd_loss", "kd_loss", "labels_on_grid", "load_teacher"]


def kd_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    temperature: float = 1.0,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pixel-wise KD: ``T^2 * KL(softmax(teacher/T) || softmax(student/T))`` per pixel (over
    the class axis, in nats), averaged over the pixels where ``valid`` is true (all if None).

    Shapes: logits ``(N, C, h, w)`` (computed in float32), ``valid`` ``(N, h, w)`` bool.
    Returns a scalar; 0 when no pixel is valid.
    """
    log_student = F.log_softmax(student.float() / temperature, dim=1)
    log_teacher = F.log_softmax(teacher.float() / temperature, dim=1)
    per_pixel = (log_teacher.exp() * (log_teacher - log_student)).sum(dim=1)  # (N, h, w)
    if valid is None:
        mean = per_pixel.mean()
    else:
        mean = (per_pixel * valid).sum() / valid.sum().clamp(min=1)
    return mean * temperature**2


def cwd_loss(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float = 4.0
) -> torch.Tensor:
    """Channel-wise distillation: per sample and class channel, ``KL(softmax_hw(teacher/tau)
    || softmax_hw(student/tau))`` over the ``h * w`` positions, summed, ``* tau^2 / (N * C)``.

    Shapes: logits ``(N, C, h, w)`` (computed in float32). Returns a scalar.
    """
    n, c = student.shape[:2]
    log_student = F.log_softmax(student.float().flatten(2) / temperature, dim=2)
    log_teacher = F.log_softmax(teacher.float().flatten(2) / temperature, dim=2)
    divergence = (log_teacher.exp() * (log_teacher - log_student)).sum()
    return divergence * temperature**2 / (n * c)


def labels_on_grid(target: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The label at the centre of each cell of an ``size = (h, w)`` grid over ``(N, H, W)``
    labels: ``(N, h, w)``; row ``i`` reads label row ``floor((i + 0.5) * H / h)``."""
    height, width = target.shape[-2:]
    if (height, width) == tuple(size):
        return target
    rows = ((torch.arange(size[0]) + 0.5) * height / size[0]).long().clamp(max=height - 1)
    cols = ((torch.arange(size[1]) + 0.5) * width / size[1]).long().clamp(max=width - 1)
    rows, cols = rows.to(target.device), cols.to(target.device)
    return target[:, rows][:, :, cols]


def load_teacher(source: str, labels: LabelSet) -> nn.Module:
    """The teacher named by ``distill.teacher`` (a model file or a bundled name), frozen, on
    the CPU. A file that is no model, a classifier, or a model of other classes than
    ``labels`` is a one-line ``TrainingError`` naming ``distill.teacher``."""
    from ddrnet.models import create_model

    key = f"distill.teacher={source}"
    try:
        teacher = create_model(checkpoint=source)
    except (ValueError, KeyError, OSError) as error:  # CheckpointError is a ValueError
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise TrainingError(f"{key}: not a usable model file ({reason})") from None
    metadata = teacher.metadata
    if metadata.task != "segmentation":
        raise TrainingError(f"{key}: a {metadata.task} model, not a segmentation model")
    if metadata.num_classes != labels.num_classes:
        raise TrainingError(
            f"{key}: the teacher predicts {metadata.num_classes} classes, this run's data "
            f"({labels.name}) has {labels.num_classes}; distil from a model of the same classes"
        )
    names = list(labels.class_names)
    if metadata.class_names and metadata.class_names != names:
        differ = next(
            f"{i}: {a!r} vs {b!r}"
            for i, (a, b) in enumerate(zip(metadata.class_names, names))
            if a != b
        )
        raise TrainingError(
            f"{key}: the teacher's classes differ from this run's ({labels.name}), first at "
            f"class {differ}; distil from a model of the same classes"
        )
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    return teacher.eval()


class Distiller:
    """Adds the distillation terms to the training loss, and keeps their epoch means.

    ``images`` are the student's normalised inputs; when the teacher was trained with other
    normalisation statistics (its metadata's mean/std), they are re-normalised for it.
    """

    def __init__(
        self,
        teacher: nn.Module,
        config: DistillConfig,
        mean: Sequence[float],
        std: Sequence[float],
        ignore_index: int = IGNORE_INDEX,
        device: torch.device | None = None,
        amp_dtype: torch.dtype | None = None,
        channels_last: bool = False,
    ) -> None:
        device = device or torch.device("cpu")
        self.teacher = teacher.to(device).eval()
        if channels_last:
            self.teacher = self.teacher.to(memory_format=torch.channels_last)
        self.config = config
        self.ignore_index = ignore_index
        self.device = device
        self.amp_dtype = amp_dtype
        self._renormalise = _renormalisation(mean, std, teacher.metadata, device)
        self._sums: dict[str, float] = {}
        self._steps = 0

    @torch.no_grad()
    def teacher_logits(self, images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """The teacher's logits ``(N, C, *size)`` float32 for normalised ``(N, 3, H, W)``
        images, without gradients, under the run's autocast: its main head resized to
        ``size`` (the student's grid), or with ``teacher_scales``/``teacher_flip`` the log
        of its softmax averaged over the passes."""
        if self._renormalise is not None:
            scale, shift = self._renormalise
            images = images * scale + shift
        cfg = self.config
        if not cfg.teacher_ensemble:
            with autocast(self.device, self.amp_dtype):
                logits = self.teacher(images)
            return resize_logits(logits, size)
        with autocast(self.device, self.amp_dtype):
            probabilities = segment_logits(
                self.teacher, images, cfg.teacher_scales, cfg.teacher_flip, size=size
            )
        # The floor keeps log finite where a class's averaged probability underflows.
        return probabilities.float().clamp_min(torch.finfo(torch.float32).tiny).log()

    def __call__(
        self, images: torch.Tensor, student: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The weighted distillation loss (scalar) and its unweighted terms by name
        (``loss_kd``, ``loss_cwd``). ``student``: main logits ``(N, C, h, w)``; ``target``:
        labels ``(N, H, W)`` with ``ignore_index`` for void (only KD uses them)."""
        student = student.float()
        teacher = self.teacher_logits(images, tuple(student.shape[-2:]))
        cfg = self.config
        total = student.new_zeros(())
        parts: dict[str, float] = {}
        if cfg.kd_weight > 0:
            valid = labels_on_grid(target, tuple(student.shape[-2:])) != self.ignore_index
            term = kd_loss(student, teacher, cfg.temperature, valid)
            total = total + cfg.kd_weight * term
            parts["loss_kd"] = float(term.detach())
        if cfg.cwd_weight > 0:
            term = cwd_loss(student, teacher, cfg.cwd_temperature)
            total = total + cfg.cwd_weight * term
            parts["loss_cwd"] = float(term.detach())
        for name, value in parts.items():
            self._sums[name] = self._sums.get(name, 0.0) + value
        self._steps += 1
        return total, parts

    def add_to(
        self,
        loss: torch.Tensor,
        parts: dict[str, float],
        images: torch.Tensor,
        student: torch.Tensor,
        target: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """``loss + distillation loss`` and ``parts`` with the distillation terms added."""
        extra, extra_parts = self(images, student, target)
        return loss + extra, {**parts, **extra_parts}

    def epoch_means(self) -> dict[str, float]:
        """The unweighted terms' means since the last call, as metrics.jsonl fields
        (``train_kd_loss``, ``train_cwd_loss``); the sums start again from zero."""
        means = {
            f"train_{name.removeprefix('loss_')}_loss": total / max(1, self._steps)
            for name, total in self._sums.items()
        }
        self._sums, self._steps = {}, 0
        return means


def _renormalisation(
    mean: Sequence[float], std: Sequence[float], metadata, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(scale, shift)``, each ``(1, 3, 1, 1)``, that turn inputs normalised with the run's
    ``mean``/``std`` into inputs normalised with the teacher's; None when they agree."""
    run_mean, run_std, own_mean, own_std = (
        torch.tensor(values, dtype=torch.float64)
        for values in (mean, std, metadata.mean, metadata.std)
    )
    if torch.allclose(run_mean, own_mean, atol=1e-6) and torch.allclose(
        run_std, own_std, atol=1e-6
    ):
        return None
    # x_run = (x - m_run) / s_run  ->  x_own = (x_run * s_run + m_run - m_own) / s_own
    scale = (run_std / own_std).float().view(1, 3, 1, 1).to(device)
    shift = ((run_mean - own_mean) / own_std).float().view(1, 3, 1, 1).to(device)
    return scale, shift


def build_distiller(
    config: DistillConfig,
    labels: LabelSet,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device,
    amp_dtype: torch.dtype | None,
    channels_last: bool,
) -> Distiller | None:
    """The run's ``Distiller``, or None when ``distill.teacher`` is null."""
    if config.teacher is None:
        return None
    teacher = load_teacher(config.teacher, labels)
    terms = [f"KD x {config.kd_weight} (T={config.temperature})"] if config.kd_weight else []
    if config.cwd_weight:
        terms.append(f"CWD x {config.cwd_weight} (tau={config.cwd_temperature})")
    if config.teacher_ensemble:
        passes = ", ".join(f"{s:g}" for s in config.teacher_scales)
        terms.append(
            f"teacher averaged over scales {passes}" + (" + flip" if config.teacher_flip else "")
        )
    logger.info(
        "distilling from %s (%s, %.2fM parameters): %s",
        config.teacher,
        teacher.metadata.architecture,
        sum(p.numel() for p in teacher.parameters()) / 1e6,
        ", ".join(terms),
    )
    return Distiller(
        teacher, config, mean, std, labels.ignore_index, device, amp_dtype, channels_last
    )
