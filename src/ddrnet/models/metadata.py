"""Typed metadata stored with every ``ddrnet`` model file (torchvision's weights-meta idea).

A model file is one ``.safetensors`` file: the weights, plus this metadata as JSON in the
safetensors header, so that a checkpoint rebuilds its model and its pre-processing by itself.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ddrnet.errors import DDRNetError
from ddrnet.models.widths import check_widths_format

FORMAT_NAME = "ddrnet"
FORMAT_VERSION = 1

# ImageNet RGB statistics on the 0..1 scale: the normalisation of ImageNet-pretrained
# backbones, the default of every data set and model that records none of its own.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The label value of pixels that are not scored (void, unlabelled): the usual 255.
IGNORE_INDEX = 255
# The (height, width) in pixels a model is measured, pruned and exported at when it records
# none (``input_size``): its data set's usual size, else DEFAULT_INPUT_SIZE.
DATASET_INPUT_SIZES = {"camvid": (360, 480), "cityscapes": (1024, 2048), "coco_stuff": (640, 640)}
DEFAULT_INPUT_SIZE = (512, 512)


class MetadataError(DDRNetError, ValueError):
    """A model file's metadata is unreadable or invalid; the message names the file."""


@dataclass
class ModelMetadata:
    """Everything needed to rebuild a model and use it correctly.

    ``mean``/``std`` are per-channel RGB statistics on the 0..1 scale; ``palette`` holds one
    ``[r, g, b]`` (0..255) per class; ``metrics`` maps names such as ``"mIoU"`` to numbers in
    percent; ``training`` is a free-form summary (recipe, epochs, command, duration).
    """

    architecture: str
    num_classes: int
    spec: dict[str, Any]
    task: str = "segmentation"
    aux_head: bool = False
    class_names: list[str] = field(default_factory=list)
    palette: list[list[int]] = field(default_factory=list)
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    ignore_index: int = IGNORE_INDEX
    dataset: str | None = None
    input_size: list[int] | None = None  # recommended (height, width) in pixels
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    # Channel-pruned models: {layer name: [in, out] or [features]} of the layers narrower
    # than the spec's (``ddrnet.models.widths``); empty for unpruned models.
    channel_widths: dict[str, list[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Refuse values that would fail later with a traceback (a palette entry of 300, a
        class name that is a number) or silently give wrong results (``std`` 0 makes every
        normalised pixel infinite, and every prediction one class)."""
        if not _is_int(self.num_classes) or self.num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {self.num_classes!r}")
        if not isinstance(self.spec, dict):
            raise ValueError(f"spec must be a mapping, got {self.spec!r:.80}")
        if not isinstance(self.class_names, list) or not all(
            isinstance(name, str) for name in self.class_names
        ):
            raise ValueError(f"class_names must be a list of strings, got {self.class_names!r:.80}")
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ValueError(
                f"{len(self.class_names)} class names given for {self.num_classes} classes"
            )
        bad_colours = (
            [c for c in self.palette if not _is_rgb(c)]
            if isinstance(self.palette, list)
            else [self.palette]
        )
        if bad_colours:
            raise ValueError(
                f"palette colours must be [r, g, b] integers in 0..255, got {bad_colours[0]!r:.80}"
            )
        if self.palette and len(self.palette) != self.num_classes:
            raise ValueError(f"{len(self.palette)} palette colours for {self.num_classes} classes")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if (
                not isinstance(values, (list, tuple))
                or len(values) != 3
                or not all(_is_number(v) and math.isfinite(v) for v in values)
            ):
                raise ValueError(f"{name} must be three finite numbers (RGB), got {values!r:.80}")
        if any(v <= 0 for v in self.std):
            raise ValueError(f"std must be positive (it divides every pixel), got {self.std}")
        if not _is_int(self.ignore_index):
            raise ValueError(f"ignore_index must be an integer, got {self.ignore_index!r:.80}")
        check_widths_format(self.channel_widths)

    def trained_on(self, dataset: str, split: str) -> bool:
        """Whether the training run recorded in ``training`` saw ``split`` of ``dataset``:
        its score there measures memory, not accuracy (the bundled ``camvid_ddrnet23_slim``
        was trained on CamVid train + val)."""
        config = self.training.get("config") if isinstance(self.training, dict) else None
        data = config.get("data") if isinstance(config, dict) else None
        if not isinstance(data, dict) or data.get("dataset", self.dataset) != dataset:
            return False
        trained = str(data.get("train_split", ""))
        if split == data.get("val_split") and self.training.get("val_in_training_data"):
            return True
        return split == trained or (trained == "trainval" and split in ("train", "val"))

    def class_info(self) -> ClassInfo:
        """The classes' names and colours; numbered names (``"class 3"``) and
        ``distinct_palette`` colours where this metadata records none."""
        return ClassInfo.of(self.num_classes, self.class_names, self.palette)

    def to_json(self) -> str:
        return json.dumps(
            {"format": FORMAT_NAME, "version": FORMAT_VERSION, **dataclasses.asdict(self)}
        )

    @classmethod
    def from_json(cls, text: str, source: str = "<metadata>") -> ModelMetadata:
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise MetadataError(f"{source}: metadata is not valid JSON ({error})") from None
        if values.pop("format", None) != FORMAT_NAME:
            raise MetadataError(f"{source}: not a ddrnet model file (no 'format: ddrnet' metadata)")
        version = values.pop("version", None)
        if version != FORMAT_VERSION:
            raise MetadataError(
                f"{source}: model file format version {version} is not supported "
                f"(this ddrnet reads version {FORMAT_VERSION})"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise MetadataError(f"{source}: unknown metadata fields {unknown}")
        try:
            return cls(**values)
        except (TypeError, ValueError) as error:  # TypeError: a required field is missing
            raise MetadataError(f"{source}: metadata: {error}") from None


@dataclass(frozen=True)
class ClassInfo:
    """Names and ``[r, g, b]`` colours (0..255) of a model's or a metrics file's classes."""

    names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]

    @classmethod
    def of(
        cls, count: int, names: Sequence[str] = (), palette: Sequence[Sequence[int]] = ()
    ) -> ClassInfo:
        """``count`` classes named ``names`` and coloured ``palette``; either one empty:
        numbered names (``"class 0"``...) or ``distinct_palette`` colours."""
        return cls(
            names=tuple(names) or tuple(f"class {index}" for index in range(count)),
            palette=tuple(tuple(colour) for colour in palette) or distinct_palette(count),
        )


def class_info(model: object) -> ClassInfo:
    """The classes of ``model`` from its ``metadata`` (``ModelMetadata.class_info``); a
    model without metadata (any ``nn.Module`` with ``num_classes``) gets numbered classes."""
    metadata = getattr(model, "metadata", None)
    if metadata is None:
        return ClassInfo.of(int(getattr(model, "num_classes", 0)))
    return metadata.class_info()


def default_input_size(model: object) -> tuple[int, int]:
    """``(height, width)`` to measure, prune or export ``model`` at when none is given: its
    metadata's ``input_size``, else its data set's usual size (CamVid 360x480, Cityscapes
    1024x2048), else ``DEFAULT_INPUT_SIZE`` (a model without metadata)."""
    metadata = getattr(model, "metadata", None)
    if metadata is not None and metadata.input_size:
        height, width = metadata.input_size
        return int(height), int(width)
    dataset = metadata.dataset if metadata is not None else None
    return DATASET_INPUT_SIZES.get(str(dataset), DEFAULT_INPUT_SIZE)


def normalisation(model: object) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The RGB ``(mean, std)`` on the 0..1 scale that ``model``'s inputs are normalised
    with: its metadata's, or ImageNet's for a model without metadata."""
    metadata = getattr(model, "metadata", None)
    if metadata is None:
        return IMAGENET_MEAN, IMAGENET_STD
    return tuple(metadata.mean), tuple(metadata.std)


def distinct_palette(count: int) -> tuple[tuple[int, int, int], ...]:
    """``count`` distinct colours from the PASCAL VOC bit-interleaving scheme, starting at
    its second entry so that no class is drawn black (black reads as "nothing here")."""
    palette = []
    for index in range(1, count + 1):
        red = green = blue = 0
        code = index
        for bit in range(8):
            red |= ((code >> 0) & 1) << (7 - bit)
            green |= ((code >> 1) & 1) << (7 - bit)
            blue |= ((code >> 2) & 1) << (7 - bit)
            code >>= 3
        palette.append((red, green, blue))
    return tuple(palette)


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_rgb(colour: object) -> bool:
    return (
        isinstance(colour, (list, tuple))
        and len(colour) == 3
        and all(_is_int(c) and 0 <= c <= 255 for c in colour)
    )
