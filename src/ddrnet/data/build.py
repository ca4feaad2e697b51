"""Build the training and validation data sets a ``DataConfig`` describes."""

from __future__ import annotations

from pathlib import Path

from ddrnet.data.camvid import camvid
from ddrnet.data.cityscapes import cityscapes
from ddrnet.data.coco_stuff import coco_stuff
from ddrnet.data.datasets import DatasetError, PairedSegmentationDataset
from ddrnet.data.folder import folder_dataset
from ddrnet.data.transforms import TrainTransform


def build_dataset(
    config, split: str, train: bool, cache: bool | None = None
) -> PairedSegmentationDataset:
    """The data set for ``split``; with ``train`` the augmentation of ``config`` is applied.

    ``config`` is a ``ddrnet.engine.config.DataConfig``.
    """
    transform = (
        TrainTransform(
            crop_size=tuple(config.crop_size),
            scale_range=tuple(config.scale_range),
            flip=config.flip,
            photometric=config.photometric,
            base_size=tuple(config.base_size) if config.base_size else None,
            cat_max_ratio=config.cat_max_ratio,
            aspect_range=tuple(config.aspect_range) if config.aspect_range else None,
            rotate_degrees=config.rotate_degrees,
            gamma_range=tuple(config.gamma_range) if config.gamma_range else None,
            blur_sigma=config.blur_sigma,
            noise_std=config.noise_std,
        )
        if train
        else None
    )
    cache = config.cache_images if cache is None else cache
    root = Path(config.root)
    sequences = config.train_sequences if train else config.val_sequences
    if config.dataset == "camvid":
        return camvid(root, split, transform, cache=cache, sequences=sequences)
    elif config.dataset == "cityscapes":
        return cityscapes(root, split, transform, cache=cache)
    elif config.dataset == "coco_stuff":
        return coco_stuff(root, split, transform, cache=cache)
    elif config.dataset == "folder":
        return folder_dataset(root, split, config.classes_file, transform, cache=cache)
    raise DatasetError(f"data set {config.dataset!r} is not available in this build")


def build_split(
    config, split_key: str, train: bool, cache: bool | None = None
) -> PairedSegmentationDataset:
    """The data set of ``config.<split_key>`` (``"train_split"`` or ``"val_split"``); its
    errors say which set they concern. ``cache``: as ``build_dataset``."""
    split = getattr(config, split_key)
    try:
        return build_dataset(config, split, train=train, cache=cache)
    except DatasetError as error:
        kind = "training" if train else "validation"
        raise DatasetError(f"{kind} set (data.{split_key}={split}): {error}") from None
