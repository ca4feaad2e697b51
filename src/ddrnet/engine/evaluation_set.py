"""The data set to score a model on: the one its metadata records, with the user's changes.

A model file written by ``ddrnet train`` records its run's ``data`` section, so
``ddrnet eval model.safetensors`` finds the data set, root, classes file and validation
sequences by itself; any of them can be given instead.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ddrnet.config import from_dict
from ddrnet.data.build import build_dataset
from ddrnet.data.datasets import DatasetError, PairedSegmentationDataset
from ddrnet.engine.config import DataConfig
from ddrnet.errors import UsageError
from ddrnet.models.metadata import ModelMetadata

logger = logging.getLogger(__name__)


def recorded_data_section(metadata: ModelMetadata) -> dict[str, Any]:
    """A copy of the ``data`` section of the training run that wrote the model; empty for
    files that record none (official checkpoints, exports of foreign models)."""
    training = metadata.training if isinstance(metadata.training, dict) else {}
    config = training.get("config")
    data = config.get("data") if isinstance(config, dict) else None
    return dict(data) if isinstance(data, dict) else {}


def evaluation_dataset(
    metadata: ModelMetadata,
    split: str = "val",
    *,
    dataset: str | None = None,
    root: str | None = None,
    classes_file: str | None = None,
    sequences: list[str] | None = None,
) -> tuple[PairedSegmentationDataset, DataConfig]:
    """The un-augmented ``split`` of the data set that ``metadata`` records, with any of
    ``dataset``, ``root``, ``classes_file`` and (CamVid) ``sequences`` given instead, and the
    ``DataConfig`` it was built from. Images are read when used (no cache, no check pass).

    The recorded sequence filter describes the run's own validation split: another split,
    or ``sequences``, replaces it. Errors a user can fix (no recorded data set and none
    given, a recorded root that does not exist from here, a data set of other classes than
    the model's) are ``UsageError``; the data set's own are ``DatasetError`` naming
    ``--split``.
    """
    values = recorded_data_section(metadata)
    given = {"dataset": dataset, "root": root, "classes_file": classes_file}
    values.update({key: value for key, value in given.items() if value is not None})
    if values.get("dataset") != "camvid":  # a CamVid run's filters, another data set given
        values.pop("train_sequences", None)
        values.pop("val_sequences", None)
    missing = [f"--{key}" for key in ("dataset", "root") if key not in values]
    if missing:
        raise UsageError(
            f"this checkpoint does not record its data set: give {' and '.join(missing)}"
        )
    if root is None and not Path(values["root"]).is_dir():
        raise UsageError(
            f"the model records its data at {values['root']}, which is not a folder from "
            f"here ({Path.cwd()}); give --root"
        )
    kind = values["dataset"]
    if sequences is not None and kind != "camvid":
        raise UsageError(f"--sequences picks CamVid sequences; the data set is {kind}")
    if classes_file is not None and kind != "folder":
        raise UsageError(f"--classes-file is for folder data sets; the data set is {kind}")
    values["cache_images"] = False
    values["check"] = False
    if sequences is not None or split != values.get("val_split", split):
        values["val_sequences"] = sequences
    config = from_dict(DataConfig, values)
    try:
        data = build_dataset(config, split, train=False)
    except DatasetError as error:
        raise DatasetError(f"evaluation set (--split {split}): {error}") from None
    if data.labels.num_classes != metadata.num_classes:
        raise UsageError(
            f"the model predicts {metadata.num_classes} classes but {config.dataset} has "
            f"{data.labels.num_classes}"
        )
    _check_class_names(metadata.class_names, list(data.labels.class_names), config.dataset)
    return data, config


def _check_class_names(model: list[str] | None, data: list[str], dataset: str) -> None:
    """The model's classes against the data set's, by name (case, spaces and underscores
    aside): the same names in another order number the classes differently, so every score
    would be another class's (an error); other names are said in a warning."""

    def plain(name: str) -> str:
        return "".join(character for character in name.lower() if character.isalnum())

    if not model or [plain(n) for n in model] == [plain(n) for n in data]:
        return
    first = next((i, a, b) for i, (a, b) in enumerate(zip(model, data)) if plain(a) != plain(b))
    where = f"class {first[0]} is {first[1]!r} for the model, {first[2]!r} for {dataset}"
    if sorted(map(plain, model)) == sorted(map(plain, data)):
        raise UsageError(
            f"the model and the data set number the same classes differently ({where}): "
            "every score would be another class's; give the classes file the model was "
            "trained with"
        )
    logger.warning("the model's classes are not the data set's (%s): scores go by number", where)
