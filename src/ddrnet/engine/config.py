"""The training recipe as typed dataclasses; YAML files under ``ddrnet/configs`` fill them."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import MISSING, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Literal

from ddrnet.config import ConfigError
from ddrnet.data.labels import LabelSet
from ddrnet.engine.losses import CLASS_WEIGHTING_METHODS
from ddrnet.limits import MAX_PLANES, check_scales
from ddrnet.models import list_models, variant_info
from ddrnet.models.fusion import FUSIONS
from ddrnet.models.spec import NORMS, TOPOLOGY_FIELDS, WIDTH_FIELDS


def _require(ok: bool, key: str, rule: str, value: object) -> None:
    """A range check for a config field: ``ValueError`` naming the key, the rule and the
    value (``ddrnet.config.from_dict`` adds the section, e.g. ``data: batch_size ...``)."""
    if not ok:
        raise ValueError(f"{key} must be {rule}, got {value!r}")


def _unused_unless(section: object, applies: bool, key: str, condition: str) -> None:
    """Refuse ``key`` of a config ``section`` set away from its default where it would do
    nothing (``applies`` False): a recipe that sets it expects an effect it does not get."""
    default = next(f.default for f in fields(section) if f.name == key)  # type: ignore[arg-type]
    value = getattr(section, key)
    _require(applies or value == default, key, f"left at {default!r} unless {condition}", value)


def _positive(value: float | None) -> bool:
    return value is None or (math.isfinite(value) and value > 0)


def _finite(value: float) -> bool:
    """Whether ``value`` is a finite number >= 0 (a weight, a count of epochs)."""
    return math.isfinite(value) and value >= 0


@dataclass
class ModelConfig:
    name: str = "ddrnet_23_slim"
    aux_head: bool = True
    # A local file: an ImageNet or segmentation checkpoint to start from (nothing is
    # downloaded). None trains from scratch.
    pretrained: str | None = None
    width_multiplier: float = 1.0
    # "group": GroupNorm (of gcd(channels, norm_groups) groups) in place of every BatchNorm,
    # for 1-4 images per device, where batch statistics are noise. "ibn": IBN-Net's
    # instance-batch mix in stages 1-3 (DDRNetSpec.norm). The model file records it.
    norm: Literal["batch", "group", "ibn"] = "batch"
    norm_groups: int = 32
    # How each branch takes in the other's features at a bilateral fusion: "add" (the
    # paper's), "cbam", "pixel" or "transformer" (attention; ddrnet.models.fusion). The model
    # file records it.
    fusion: Literal["add", "cbam", "pixel", "transformer"] = "add"
    # A custom topology (DDRNetSpec's fields; null: the variant's), as `ddrnet search` finds
    # them: stem width (the high branch has twice it), BasicBlocks in stages 1-4, the DAPPM
    # and head widths. planes and head_planes replace width_multiplier. The file records them.
    planes: int | None = None
    blocks: tuple[int, int, int, int] | None = None
    dappm_planes: int | None = None
    head_planes: int | None = None

    def __post_init__(self) -> None:
        names = list_models("segmentation")  # the classifiers are ImageNet backbones
        _require(self.name in names, "name", f"one of {names}", self.name)
        if self.pretrained is not None:  # an empty variable would train from scratch
            _require(
                bool(self.pretrained.strip()), "pretrained", "a file (or null)", self.pretrained
            )
        _require(_positive(self.width_multiplier), "width_multiplier", "> 0", self.width_multiplier)
        # Here, with the recipe's key, before the data is read; the rule is the spec's.
        widest = variant_info(self.name).spec.widest_multiplier
        _require(
            self.width_multiplier <= widest, "width_multiplier",
            f"at most {widest:g} for {self.name} (a first stage of {MAX_PLANES} channels)",
            self.width_multiplier,
        )  # fmt: skip
        _require(self.norm in NORMS, "norm", f"one of {NORMS}", self.norm)
        _require(self.norm_groups >= 1, "norm_groups", ">= 1", self.norm_groups)
        _require(self.fusion in FUSIONS, "fusion", f"one of {FUSIONS}", self.fusion)
        _unused_unless(self, self.norm == "group", "norm_groups", "norm is group")
        self._check_topology()

    def _check_topology(self) -> None:
        """The custom topology fields, each against the spec's own rule (named by its key
        here, before the data is read)."""
        base = variant_info(self.name).spec
        for key in TOPOLOGY_FIELDS:
            value = getattr(self, key)
            if value is None:
                continue
            dataclasses.replace(base, **{key: value})  # the spec's ValueError names the key
        for key in WIDTH_FIELDS:
            _require(
                getattr(self, key) is None or self.width_multiplier == 1.0, key,
                "null with width_multiplier (both set widths)", getattr(self, key),
            )  # fmt: skip


@dataclass
class DataConfig:
    dataset: Literal["camvid", "cityscapes", "coco_stuff", "folder"] = "camvid"
    root: str = "../shared/data/camvid"
    train_split: str = "train"
    val_split: str = "val"
    # CamVid only: keep frames of these sequences (e.g. hold 0006R0 out of training).
    train_sequences: list[str] | None = None
    val_sequences: list[str] | None = None
    crop_size: tuple[int, int] = (352, 480)  # (height, width) in pixels
    scale_range: tuple[float, float] = (0.5, 2.0)
    base_size: tuple[int, int] | None = None  # random scale is relative to this (h, w)
    flip: bool = True
    photometric: bool = True
    batch_size: int = 8
    num_workers: int = 2
    cache_images: bool = True  # decode every image once, keep it in memory
    check: bool = True  # read every file before training and report problems by name
    # Normalisation; None takes the data set's own statistics.
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    # Folder data sets: a YAML/JSON file naming the classes and their colours.
    classes_file: str | None = None
    # Recipe options for unseen streets (issue 20); each null = off, today's behaviour.
    # Re-draw the crop position (up to 10 tries, same scale) while one class covers more than
    # this fraction of the crop's labelled pixels (mmsegmentation's cat_max_ratio, e.g. 0.75).
    cat_max_ratio: float | None = None
    # Draw frames with replacement, weight = sum over classes of (the frame's pixel share) x
    # (training pixel frequency)^-power, this power (0: uniform; e.g. 0.5 or 1). DDP too.
    rare_class_sampling: float | None = None
    # Width/height stretch drawn log-uniformly from [low, high] (e.g. [0.8, 1.25]), area kept.
    aspect_range: tuple[float, float] | None = None
    rotate_degrees: float | None = None  # rotate by U(-d, d) degrees, labels padded with ignore
    # Each with probability 0.5: gamma drawn log-uniformly from [low, high] (e.g. [0.7, 1.5]),
    # Gaussian blur with sigma U(0, blur_sigma] pixels (e.g. 1.5), Gaussian noise with std
    # U(0, noise_std] grey levels (e.g. 8).
    gamma_range: tuple[float, float] | None = None
    blur_sigma: float | None = None
    noise_std: float | None = None
    # Mixing across frames (data/mixing.py): each crop of a batch receives, with this
    # probability, the pixels of some classes of the next crop in the batch (e.g. 0.5), with
    # their labels: ClassMix's random half of the classes present, or only the classes named
    # in class_mix_classes (copy-paste of those objects, e.g. [Pole, SignSymbol, Pedestrian]).
    class_mix: float | None = None
    class_mix_classes: list[str] | None = None

    def __post_init__(self) -> None:
        _require(min(self.crop_size) >= 8, "crop_size", "at least 8 x 8 pixels", self.crop_size)
        for key in ("train_sequences", "val_sequences"):  # only CamVid's names say them
            value = getattr(self, key)
            _require(
                value is None or self.dataset == "camvid",
                key,
                "null unless dataset is camvid",
                value,
            )
            # [] read as "no filter": an emptied list trained on every sequence
            _require(value is None or len(value) > 0, key, "a non-empty list (or null: all)", value)
        if self.class_mix is not None:  # it mixes two crops of one batch
            _require(
                self.batch_size >= 2, "class_mix", "null with batch_size 1 (it mixes two crops "
                "of a batch)", self.class_mix,
            )  # fmt: skip
        if self.classes_file is not None:  # the other data sets know their classes
            _require(
                self.dataset == "folder", "classes_file", "null unless dataset is folder",
                self.classes_file,
            )  # fmt: skip
        low, high = self.scale_range
        _require(0 < low <= high < math.inf, "scale_range", "0 < low <= high", self.scale_range)
        if self.base_size is not None:
            _require(min(self.base_size) >= 1, "base_size", "positive", self.base_size)
        _require(self.batch_size >= 1, "batch_size", ">= 1", self.batch_size)
        _require(self.num_workers >= 0, "num_workers", ">= 0", self.num_workers)
        if self.mean is not None:  # on the 0..1 scale of the images
            ok = all(math.isfinite(v) and 0 <= v <= 1 for v in self.mean)
            _require(ok, "mean", "in [0, 1] per channel", self.mean)
        if self.std is not None:
            _require(all(_positive(v) for v in self.std), "std", "> 0 per channel", self.std)
        self._check_augmentation_options()

    def normalisation(self, labels: LabelSet) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The RGB ``(mean, std)`` (0..1 scale) a run normalises its images with: the
        recipe's ``mean``/``std`` where given, else the data set's (``labels``: its
        ``LabelSet``)."""
        return tuple(self.mean or labels.mean), tuple(self.std or labels.std)

    def _check_augmentation_options(self) -> None:
        """The issue-20 options: null (off) or a value in range."""
        if self.cat_max_ratio is not None:
            _require(
                0 < self.cat_max_ratio < 1, "cat_max_ratio", "in (0, 1) (or null: off)",
                self.cat_max_ratio,
            )  # fmt: skip
        if self.rare_class_sampling is not None:
            _require(
                math.isfinite(self.rare_class_sampling) and self.rare_class_sampling >= 0,
                "rare_class_sampling", ">= 0 (or null: off)", self.rare_class_sampling,
            )  # fmt: skip
        for key in ("aspect_range", "gamma_range"):
            value = getattr(self, key)
            if value is not None:
                ok = 0 < value[0] <= value[1] < math.inf
                _require(ok, key, "0 < low <= high (or null: off)", value)
        if self.rotate_degrees is not None:
            _require(
                0 <= self.rotate_degrees <= 180, "rotate_degrees", "in [0, 180] (or null: off)",
                self.rotate_degrees,
            )  # fmt: skip
        for key in ("blur_sigma", "noise_std"):
            value = getattr(self, key)
            if value is not None:
                _require(_positive(value), key, "> 0 (or null: off)", value)
        if self.class_mix is not None:
            ok = 0 < self.class_mix <= 1
            _require(ok, "class_mix", "in (0, 1] (or null: off)", self.class_mix)
        if self.class_mix_classes is not None:
            _require(
                self.class_mix is not None and len(self.class_mix_classes) > 0,
                "class_mix_classes", "a non-empty list used with class_mix",
                self.class_mix_classes,
            )  # fmt: skip


@dataclass
class OptimConfig:
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    poly_power: float = 0.9
    warmup_epochs: float = 0.0
    warmup_ratio: float = 0.1
    min_lr: float = 0.0

    def __post_init__(self) -> None:
        _require(_positive(self.lr), "lr", "> 0", self.lr)
        _require(0 <= self.momentum < 1, "momentum", "in [0, 1)", self.momentum)
        _require(_finite(self.weight_decay), "weight_decay", ">= 0", self.weight_decay)
        _require(_finite(self.poly_power), "poly_power", ">= 0", self.poly_power)
        _require(_finite(self.warmup_epochs), "warmup_epochs", ">= 0", self.warmup_epochs)
        if self.nesterov:
            _require(
                self.optimizer == "sgd" and self.momentum > 0, "nesterov",
                "false unless optimizer is sgd with momentum > 0", self.nesterov,
            )  # fmt: skip
        _require(0 < self.warmup_ratio <= 1, "warmup_ratio", "in (0, 1]", self.warmup_ratio)
        _require(0 <= self.min_lr <= self.lr, "min_lr", "in [0, lr]", self.min_lr)
        _unused_unless(self, self.optimizer == "sgd", "momentum", "optimizer is sgd")
        _unused_unless(self, self.warmup_epochs > 0, "warmup_ratio", "warmup_epochs > 0")


@dataclass
class LossConfig:
    ohem: bool = True
    ohem_threshold: float = 0.9
    # Pixels always kept by OHEM, counted at full label resolution (scaled down with
    # label_stride so that the kept fraction stays the same).
    ohem_min_kept: int = 131072
    # The auxiliary head's share of the loss (deep supervision); only with model.aux_head.
    aux_weight: float = 0.4
    # 1: the official loss at full label resolution. s > 1: labels subsampled by s and logits
    # resized to that grid; s = 8 matches the logits' own 1/8 grid. Cheaper on CPUs.
    label_stride: int = 1
    # None, "enet" (1/ln(1.02+p)), "median_frequency" (both scaled to mean 1), or explicit
    # per-class weights, used as given: with OHEM, whose mean is over the kept pixels as in
    # the official code, their scale multiplies the loss (and so the learning rate); plain
    # cross-entropy divides by the weights' sum, so there only their ratios count.
    class_weights: str | list[float] | None = None
    # Boundary-aware term for thin structures: pixels within boundary_width pixels (of the
    # full-resolution labels) of another class weigh 1 + boundary_weight (e.g. 1.0); null: off.
    boundary_weight: float | None = None
    boundary_width: int = 3

    def __post_init__(self) -> None:
        if self.boundary_weight is not None:
            _require(
                _positive(self.boundary_weight), "boundary_weight", "> 0 (or null: off)",
                self.boundary_weight,
            )  # fmt: skip
        _require(self.boundary_width >= 1, "boundary_width", ">= 1 pixel", self.boundary_width)
        _require(0 < self.ohem_threshold <= 1, "ohem_threshold", "in (0, 1]", self.ohem_threshold)
        _require(self.ohem_min_kept >= 0, "ohem_min_kept", ">= 0", self.ohem_min_kept)
        _require(_finite(self.aux_weight), "aux_weight", ">= 0", self.aux_weight)
        _require(self.label_stride >= 1, "label_stride", ">= 1", self.label_stride)
        for key in ("ohem_threshold", "ohem_min_kept"):
            _unused_unless(self, self.ohem, key, "ohem is true")
        _unused_unless(
            self, self.boundary_weight is not None, "boundary_width", "boundary_weight is set"
        )
        weights = self.class_weights
        if isinstance(weights, str):
            methods = list(CLASS_WEIGHTING_METHODS)
            _require(weights in methods, "class_weights", f"one of {methods} or a list", weights)
        elif weights is not None:
            _require(all(_positive(w) for w in weights), "class_weights", "> 0 per class", weights)


@dataclass
class EvalConfig:
    every_epochs: int = 1
    scales: list[float] = field(default_factory=lambda: [1.0])
    flip: bool = False
    batch_size: int = 4
    # Evaluate on the first N validation images only (quick experiments); None = all.
    max_images: int | None = None

    def __post_init__(self) -> None:
        _require(self.every_epochs >= 1, "every_epochs", ">= 1", self.every_epochs)
        check_scales(self.scales, "scales")  # a UsageError, so a ValueError naming the key
        _require(self.batch_size >= 1, "batch_size", ">= 1", self.batch_size)
        if self.max_images is not None:
            _require(self.max_images >= 1, "max_images", ">= 1 (or null: all)", self.max_images)


@dataclass
class TrainConfig:
    epochs: int = 200
    # auto: bf16 where the CPU computes it natively (AVX512-BF16/AMX) or the GPU supports it,
    # fp16 on older GPUs, float32 on other CPUs (emulated bf16 is ~10x slower there).
    amp: Literal["auto", "none", "bf16", "fp16"] = "auto"
    channels_last: bool = True
    compile: bool = False
    # Keep an exponential moving average of the weights with this decay per optimiser step
    # (e.g. 0.999); it is what gets evaluated, kept as best and exported. None = off.
    ema_decay: float | None = None
    seed: int = 0
    output_dir: str = "runs/camvid_slim"
    # Stop cleanly (checkpoint written) once this many minutes have passed; resume later.
    max_minutes: float | None = None
    # Limit iterations per epoch (smoke tests, quick experiments); None = the whole set.
    max_iterations_per_epoch: int | None = None
    log_every: int = 10
    device: str = "auto"
    threads: int | None = None  # torch CPU threads; None = PyTorch's default
    # On CPU (Linux, glibc): keep freed memory in malloc's heap for the next step instead of
    # returning it to the kernel, which saves 9 000-26 000 page faults per step
    # (ddrnet.engine.allocator). false: glibc's defaults, memory returned as it is freed.
    retain_freed_memory: bool = True

    def __post_init__(self) -> None:
        _require(self.epochs >= 1, "epochs", ">= 1", self.epochs)
        _require(0 <= self.seed < 2**63, "seed", "in [0, 2**63)", self.seed)
        # Empty would write the run into the current folder (`train.output_dir=` left blank).
        _require(bool(str(self.output_dir).strip()), "output_dir", "a folder path", self.output_dir)
        if self.ema_decay is not None:
            _require(
                0 < self.ema_decay < 1, "ema_decay", "in (0, 1) (or null: off)", self.ema_decay
            )
        _require(
            self.max_minutes is None or self.max_minutes >= 0,
            "max_minutes",
            ">= 0 (0: stop after the first epoch; null: no limit)",
            self.max_minutes,
        )
        if self.max_iterations_per_epoch is not None:
            _require(
                self.max_iterations_per_epoch >= 1,
                "max_iterations_per_epoch",
                ">= 1 (or null: all)",
                self.max_iterations_per_epoch,
            )
        _require(self.log_every >= 1, "log_every", ">= 1", self.log_every)
        if self.threads is not None:
            _require(
                self.threads >= 1, "threads", ">= 1 (or null: PyTorch's default)", self.threads
            )


@dataclass
class DistillConfig:
    """Knowledge distillation (issue 21): a frozen teacher's logits guide the student.

    The teacher runs in eval mode without gradients on the same (normalised) crops; its
    1/8-resolution logits are compared with the student's main-head logits on that grid
    (``ddrnet.engine.distill``). The total loss is the recipe's loss plus
    ``kd_weight * KD + cwd_weight * CWD``.
    """

    # A model file (.safetensors, or a .pt training checkpoint) or a bundled model's name
    # (camvid_ddrnet23_slim); it must predict the run's classes. None = no distillation.
    teacher: str | None = None
    # Hinton KD: T^2 * KL(softmax(teacher/T) || softmax(student/T)) over the classes of each
    # pixel, averaged over labelled pixels. 1.0 at T = 1..4 is the usual range.
    kd_weight: float = 1.0
    temperature: float = 1.0
    # Channel-wise distillation (Shu et al., ICCV 2021): per class channel, a softmax over the
    # spatial positions of logits/tau, KL teacher -> student, x tau^2, averaged over batch and
    # channels. 0 = off. Published logit settings: weight 5 at tau 1 (mmrazor, PSPNet
    # R101 -> R18, Cityscapes), weight 6 at tau 3 (super-gradients, DDRNet-39 -> 23-slim).
    cwd_weight: float = 0.0
    cwd_temperature: float = 4.0
    # A stronger teacher at no training cost: its softmax averaged over these input scales
    # (and their mirror images with teacher_flip), as `ddrnet eval --scales --flip` scores;
    # the log of the average stands for its logits. Each pass is one more teacher forward.
    teacher_scales: list[float] = field(default_factory=lambda: [1.0])
    teacher_flip: bool = False

    @property
    def teacher_ensemble(self) -> bool:
        """Whether the teacher is averaged over several passes (scales or flip)."""
        return tuple(self.teacher_scales) != (1.0,) or self.teacher_flip

    def __post_init__(self) -> None:
        check_scales(self.teacher_scales, "teacher_scales")
        if self.teacher is not None:
            _require(
                bool(self.teacher.strip()), "teacher",
                "a model file or a bundled model's name (or null: off)", self.teacher,
            )  # fmt: skip
        for key in ("kd_weight", "cwd_weight"):
            value = getattr(self, key)
            _require(math.isfinite(value) and value >= 0, key, ">= 0", value)
        for key in ("temperature", "cwd_temperature"):
            value = getattr(self, key)
            _require(_positive(value), key, "> 0", value)
        if self.teacher is not None:
            _require(
                self.kd_weight > 0 or self.cwd_weight > 0, "kd_weight or cwd_weight",
                "> 0 when a teacher is set", (self.kd_weight, self.cwd_weight),
            )  # fmt: skip
            return
        for option in fields(self):  # without a teacher, its settings would do nothing
            default = option.default_factory() if option.default is MISSING else option.default
            value = getattr(self, option.name)
            _require(value == default, option.name, f"{default!r} without a teacher", value)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)


def resolve_recipe(name_or_path: str) -> Path:
    """The YAML file of a recipe: a bundled recipe's name (``camvid_ddrnet23_slim``, a file
    under ``ddrnet/configs``) or a path that exists (``load_yaml`` reads and checks it); a
    ``ConfigError`` naming the bundled recipes otherwise."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist")
        return path  # load_yaml says what else is wrong with it: a folder, not YAML, ...
    folder = resources.files("ddrnet") / "configs"
    bundled = folder / f"{name_or_path}.yaml"
    if not bundled.is_file():
        names = sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))
        raise ConfigError(f"no recipe {name_or_path!r}; bundled recipes: {', '.join(names)}")
    return Path(str(bundled))
