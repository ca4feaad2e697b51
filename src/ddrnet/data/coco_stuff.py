"""COCO-Stuff-164k, 171 classes (80 things, 91 stuff), from raw stuffthingmaps or
mmsegmentation's converted ``_labelTrainIds.png`` maps."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from ddrnet.data.datasets import (
    DatasetError,
    PairedSegmentationDataset,
    Sample,
    Transform,
    require_labels,
    split_folder,
)
from ddrnet.data.labels import (
    COCO_STUFF,
    COCO_STUFF_LUT,
    COCO_STUFF_RAW_IDS,
    IGNORE_INDEX,
    lookup_table,
)

COCO_STUFF_TRAIN_ID_SUFFIX = "_labelTrainIds.png"


def coco_stuff_samples(
    root: str | Path, split: str, label_format: Literal["auto", "raw", "train_ids"] = "auto"
) -> tuple[list[Sample], bool]:
    """Pairs ``images/<split>/<id>.jpg`` with ``annotations/<split>/<id>_labelTrainIds.png``
    (mmsegmentation's converted maps, values 0..170) or the raw stuffthingmaps
    ``annotations/<split>/<id>.png`` (COCO ids minus one). ``label_format="auto"`` takes the
    converted maps when the annotation folder holds any. Returns the pairs and whether they
    are converted maps."""
    if label_format not in ("auto", "raw", "train_ids"):
        raise ValueError(f"label_format must be auto, raw or train_ids; got {label_format!r}")
    root = Path(root)
    name = f"COCO-Stuff {split!r}"
    image_dir = split_folder(root, "images", split, "COCO-Stuff")
    label_dir = split_folder(root, "annotations", split, "COCO-Stuff")
    images = sorted(image_dir.glob("*.jpg"))
    if not images:
        raise DatasetError(f"{name}: no *.jpg images in {image_dir}")
    converted = label_format == "train_ids" or (
        label_format == "auto"
        and any(p.name.endswith(COCO_STUFF_TRAIN_ID_SUFFIX) for p in label_dir.iterdir())
    )
    suffix = COCO_STUFF_TRAIN_ID_SUFFIX if converted else ".png"
    samples = [Sample(image, label_dir / f"{image.stem}{suffix}") for image in images]
    require_labels(samples, name)
    return samples, converted


def coco_stuff(
    root: str | Path,
    split: str,
    transform: Transform | None = None,
    cache: bool = False,
    label_format: Literal["auto", "raw", "train_ids"] = "auto",
) -> PairedSegmentationDataset:
    """COCO-Stuff-164k, 171 classes (80 things, 91 stuff); ``split`` is the folder name
    (``train2017``, ``val2017``). Raw maps go through ``labels.COCO_STUFF_LUT``, whose 11
    unused thing ids are no class (``check()`` reports them); 255 is unlabelled."""
    samples, converted = coco_stuff_samples(root, split, label_format)
    valid = np.zeros(256, dtype=bool)
    if converted:
        lut = lookup_table({i: i for i in range(COCO_STUFF.num_classes)})
        valid[: COCO_STUFF.num_classes] = True
    else:
        lut = COCO_STUFF_LUT
        valid[list(COCO_STUFF_RAW_IDS)] = True
    valid[IGNORE_INDEX] = True
    kind = "labelTrainIds" if converted else "raw stuffthingmaps"
    return PairedSegmentationDataset(
        samples, COCO_STUFF, lut, valid, transform, cache, name=f"COCO-Stuff {split} ({kind})"
    )
