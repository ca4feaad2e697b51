"""Typed metadata stored with every ``ddrnet`` model file (torchvision's weights-meta idea).

A model file is one ``.safetensors`` file: the weights, plus this metadata as JSON in the
safetensors header, so that a checkpoint rebuilds its model and its pre-processing by itself.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

FORMAT_NAME = "ddrnet"
FORMAT_VERSION = 1

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
    ignore_index: int = 255
    dataset: str | None = None
    input_size: list[int] | None = None  # recommended (height, width) in pixels
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ValueError(
                f"{len(self.class_names)} class names given for {self.num_classes} classes"
            )
        if self.palette and len(self.palette) != self.num_classes:
            raise ValueError(f"{len(self.palette)} palette colours for {self.num_classes} classes")

    def to_json(self) -> str:
        return json.dumps(
            {"format": FORMAT_NAME, "version": FORMAT_VERSION, **dataclasses.asdict(self)}
        )

    @classmethod
    def from_json(cls, text: str, source: str = "<metadata>") -> ModelMetadata:
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{source}: metadata is not valid JSON ({error})") from None
        if values.pop("format", None) != FORMAT_NAME:
            raise ValueError(f"{source}: not a ddrnet model file (no 'format: ddrnet' metadata)")
        version = values.pop("version", None)
        if version != FORMAT_VERSION:
            raise ValueError(
                f"{source}: model file format version {version} is not supported "
                f"(this ddrnet reads version {FORMAT_VERSION})"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{source}: unknown metadata fields {unknown}")
        return cls(**values)
