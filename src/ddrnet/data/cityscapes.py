"""Cityscapes, 19 classes, from the official folder layout (fine annotations), and the
files its evaluation server expects."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ddrnet.data.datasets import (
    DatasetError,
    PairedSegmentationDataset,
    Recording,
    Sample,
    Transform,
    require_labels,
    split_folder,
)
from ddrnet.data.io import image_size, write_png
from ddrnet.data.labels import (
    CITYSCAPES,
    CITYSCAPES_LUT,
    CITYSCAPES_NUM_LABEL_IDS,
    CITYSCAPES_TRAIN_TO_LABEL_ID,
)

CITYSCAPES_IMAGE_SUFFIX = "_leftImg8bit.png"
CITYSCAPES_LABEL_SUFFIX = "_gtFine_labelIds.png"
_CITYSCAPES_FRAME = re.compile(r"[a-z_]+_\d{6}_\d{6}")


def cityscapes_city(image: Path) -> str:
    """The city a Cityscapes frame was recorded in: its folder (``.../val/frankfurt/...``)."""
    return image.parent.name


CITYSCAPES_RECORDING = Recording("cities", cityscapes_city)


def cityscapes_samples(root: str | Path, split: str) -> list[Sample]:
    """Pairs ``leftImg8bit/<split>/<city>/<frame>_leftImg8bit.png`` with
    ``gtFine/<split>/<city>/<frame>_gtFine_labelIds.png``; an image without its label is an
    error naming the image."""
    root = Path(root)
    image_dir = split_folder(root, "leftImg8bit", split, "Cityscapes")
    images = sorted(image_dir.glob(f"*/*{CITYSCAPES_IMAGE_SUFFIX}"))
    if not images:
        raise DatasetError(
            f"Cityscapes {split!r}: no <city>/*{CITYSCAPES_IMAGE_SUFFIX} files in {image_dir}"
        )
    label_dir = root / "gtFine" / split
    frames = [image.name.removesuffix(CITYSCAPES_IMAGE_SUFFIX) for image in images]
    samples = [
        Sample(image, label_dir / image.parent.name / f"{frame}{CITYSCAPES_LABEL_SUFFIX}")
        for image, frame in zip(images, frames)
    ]
    require_labels(samples, f"Cityscapes {split!r}")
    return samples


def cityscapes(
    root: str | Path, split: str, transform: Transform | None = None, cache: bool = False
) -> PairedSegmentationDataset:
    """Cityscapes, 19 classes: the labelIds of the fine annotations become trainIds through
    the official table (``labels.CITYSCAPES_LUT``; 255 = ignore)."""
    valid = np.zeros(256, dtype=bool)
    valid[:CITYSCAPES_NUM_LABEL_IDS] = True
    dataset = PairedSegmentationDataset(
        cityscapes_samples(root, split),
        CITYSCAPES,
        CITYSCAPES_LUT,
        valid,
        transform,
        cache,
        name=f"Cityscapes {split}",
    )
    dataset.recording = CITYSCAPES_RECORDING
    return dataset


def write_cityscapes_submission(
    prediction_train_ids: np.ndarray, image_path: str | Path, out_dir: str | Path
) -> Path:
    """Write one prediction the way the Cityscapes evaluation server expects it.

    ``prediction_train_ids`` is ``(H, W)`` integer trainIds (0..18; 255, no decision, is
    written as labelId 0 "unlabeled"). The server scores labelIds, so they are mapped back
    (``labels.CITYSCAPES_TRAIN_TO_LABEL_ID``) and written as an 8-bit PNG named
    ``<city>_<seq>_<frame>_leftImg8bit.png`` in ``out_dir``: the server finds each result by
    its ``<city>_<seq>_<frame>`` prefix. When ``image_path`` exists, the prediction must have
    its size (the server compares at full resolution, 2048x1024). Returns the written path.
    """
    prediction = np.asarray(prediction_train_ids)
    if prediction.ndim != 2 or not np.issubdtype(prediction.dtype, np.integer):
        raise ValueError(
            f"prediction must be an (H, W) integer array of trainIds, got {prediction.dtype} "
            f"{prediction.shape}"
        )
    out_of_range = (prediction < 0) | ((prediction >= CITYSCAPES.num_classes) & (prediction != 255))
    if out_of_range.any():
        raise ValueError(
            f"prediction for {image_path} holds values {np.unique(prediction[out_of_range])[:10]}"
            f" that are no Cityscapes trainIds (0..{CITYSCAPES.num_classes - 1}, 255)"
        )
    frame = Path(image_path).name.removesuffix(".png").removesuffix("_leftImg8bit")
    if not _CITYSCAPES_FRAME.fullmatch(frame):
        raise DatasetError(
            f"{image_path}: the server matches results by <city>_<seq>_<frame> "
            "(e.g. berlin_000000_000019_leftImg8bit.png); this name does not have that form"
        )
    image_path = Path(image_path)
    if image_path.is_file():
        width, height = image_size(image_path)
        if prediction.shape != (height, width):
            raise DatasetError(
                f"prediction is {prediction.shape[1]}x{prediction.shape[0]} but {image_path} is "
                f"{width}x{height} (WxH); the server needs full-resolution results"
            )
    path = Path(out_dir) / f"{frame}{CITYSCAPES_IMAGE_SUFFIX}"
    if path.exists() and image_path.exists() and path.samefile(image_path):
        raise DatasetError(
            f"{out_dir}: holds the image {image_path.name}, which its result would replace "
            "(results take the images' names); write them into another folder"
        )
    write_png(path, CITYSCAPES_TRAIN_TO_LABEL_ID[prediction.astype(np.intp)])
    return path
