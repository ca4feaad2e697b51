"""Typed weights for the bundled models, in the manner of torchvision's ``*_Weights`` enums.

One enum per architecture; each entry names a ``.safetensors`` file shipped in
``ddrnet/assets`` (its card: ``MODEL_CARD.md`` there) and carries what that file's metadata
records, read from its header on first use (no weights loaded):

>>> from ddrnet import DDRNet23Slim_Weights, create_model
>>> weights = DDRNet23Slim_Weights.CAMVID_TRAIN
>>> weights.class_names[:2], weights.val_miou  # (['Sky', 'Building'], 72.1)
>>> model = create_model(weights=weights)  # as checkpoint="camvid_ddrnet23_slim_train"

Every entry keeps its string name (``weights.bundled_name``, ``camvid_ddrnet23_slim_train``),
which stands for its file wherever a checkpoint path is accepted; ``get_weights`` turns the
name back into the entry.
"""

from __future__ import annotations

from enum import Enum
from functools import cached_property
from pathlib import Path
from typing import Any

from ddrnet.errors import MissingFileError, UsageError
from ddrnet.models.metadata import ModelMetadata

# The bundled models' data set, CamVid, and so their weights (MODEL_CARD.md, "Data and
# licence").
CAMVID_LICENCE = "Creative Commons BY-NC 4.0"


class WeightsEnum(Enum):
    """Base of the per-architecture enums: an entry is ``(bundled_name, description,
    licence)``; the rest is read from the file's metadata.

    The enum's own ``name`` is the entry's (``CAMVID``); ``bundled_name`` is the file's stem.
    """

    def __init__(self, bundled_name: str, description: str, licence: str) -> None:
        self.bundled_name = bundled_name
        self.description = description  # what it was trained on, for ``ddrnet models``
        self.licence = licence

    def __repr__(self) -> str:
        return f"{type(self).__name__}.{self.name}"  # torchvision's: the tuple says little

    @property
    def file(self) -> Path:
        """Where the file lies in this installation, which may lack it (a slim wheel)."""
        from ddrnet.assets import assets_dir

        return assets_dir() / f"{self.bundled_name}.safetensors"

    @property
    def path(self) -> Path:
        """``file``, checked: ``MissingFileError`` (a ``FileNotFoundError``) when this
        installation lacks it."""
        if not self.file.is_file():
            raise MissingFileError(
                f"the bundled model {self.file} is missing from this installation; pass "
                "--checkpoint"
            )
        return self.file

    @cached_property
    def metadata(self) -> ModelMetadata:
        """The file's ``ModelMetadata``, read from its header once."""
        from ddrnet.models.checkpoint_file import CheckpointError, read_metadata

        metadata = read_metadata(self.path)
        if metadata is None:
            raise CheckpointError(f"{self.path}: a bundled model without ddrnet metadata")
        return metadata

    @property
    def architecture(self) -> str:
        return self.metadata.architecture

    @property
    def num_classes(self) -> int:
        return self.metadata.num_classes

    @property
    def class_names(self) -> list[str]:
        return self.metadata.class_names

    @property
    def palette(self) -> list[list[int]]:
        """One ``[r, g, b]`` (0..255) per class."""
        return self.metadata.palette

    @property
    def mean(self) -> list[float]:
        """Per-channel RGB mean on the 0..1 scale, to normalise inputs with."""
        return self.metadata.mean

    @property
    def std(self) -> list[float]:
        """Per-channel RGB standard deviation on the 0..1 scale."""
        return self.metadata.std

    @property
    def metrics(self) -> dict[str, Any]:
        """Evaluation figures in percent (``camvid_val_mIoU``, per-class IoU, with TTA)."""
        return self.metadata.metrics

    @property
    def val_miou(self) -> float | None:
        """CamVid val mIoU (%), single scale at 480x360."""
        return self.metadata.metrics.get("camvid_val_mIoU")

    @property
    def val_held_out(self) -> bool:
        """Whether val was kept out of training, so that ``val_miou`` measures accuracy."""
        return not self.metadata.trained_on("camvid", "val")


class DDRNet23Slim_Weights(WeightsEnum):  # noqa: N801 - torchvision's naming
    """The bundled DDRNet-23-slim models, CamVid's 11 classes (MODEL_CARD.md)."""

    CAMVID = (
        "camvid_ddrnet23_slim",
        "CamVid train+val (468 frames), the final model",
        CAMVID_LICENCE,
    )
    CAMVID_TRAIN = (
        "camvid_ddrnet23_slim_train",
        "CamVid train only (367 frames): val mIoU is held out",
        CAMVID_LICENCE,
    )
    CAMVID_FAST = (
        "camvid_ddrnet23_slim_fast",
        "camvid_ddrnet23_slim pruned to 41% of the MACs, distilled",
        CAMVID_LICENCE,
    )
    CAMVID_FAST_TRAIN = (
        "camvid_ddrnet23_slim_fast_train",
        "camvid_ddrnet23_slim_train pruned to 41% of the MACs, distilled on train only: val "
        "mIoU is held out",
        CAMVID_LICENCE,
    )
    # The default of predict, bench, export and serve: an alias, not a fifth entry.
    DEFAULT = CAMVID


# Every architecture's enum, in the order ``ddrnet models`` lists them.
WEIGHTS_ENUMS: tuple[type[WeightsEnum], ...] = (DDRNet23Slim_Weights,)


def bundled_weights() -> list[WeightsEnum]:
    """Every bundled entry (aliases such as ``DEFAULT`` not repeated), shipped or not."""
    return [weights for enum in WEIGHTS_ENUMS for weights in enum]


def bundled_names() -> list[str]:
    """The string names of the bundled models, ``camvid_ddrnet23_slim`` first."""
    return [weights.bundled_name for weights in bundled_weights()]


def get_weights(name: str) -> WeightsEnum:
    """The entry whose string name is ``name`` (``camvid_ddrnet23_slim_train``); a
    ``UsageError`` (a ``ValueError``) lists the bundled names otherwise."""
    for weights in bundled_weights():
        if weights.bundled_name == name:
            return weights
    raise UsageError(f"no bundled model {name!r}; bundled: {', '.join(bundled_names())}")


def bundled_model_path(name: str | None = None) -> Path:
    """The file of a bundled model, by its string name (``camvid_ddrnet23_slim_train``; the
    default model when ``None``); ``UsageError`` for an unknown name, ``MissingFileError``
    when this installation lacks the file."""
    weights = DDRNet23Slim_Weights.DEFAULT if name is None else get_weights(name)
    return weights.path


def resolve_bundled_name(checkpoint: str | Path) -> Path:
    """``checkpoint`` itself, unless it is no existing file but the name of a bundled model
    (``camvid_ddrnet23_slim_train``), which becomes that model's file."""
    path = Path(checkpoint)
    if not path.exists() and str(checkpoint) in bundled_names():
        return bundled_model_path(str(checkpoint))
    return path
