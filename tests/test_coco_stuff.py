"""COCO-Stuff-164k: its 171 classes, raw stuffthingmaps ids and converted train-id maps, and
``check()`` on damaged files. Expected values are written out by hand (mmsegmentation's
converter table), never derived from the code under test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ddrnet.data.coco_stuff import coco_stuff
from ddrnet.data.datasets import DatasetError
from ddrnet.data.labels import COCO_STUFF, COCO_STUFF_LUT, IMAGENET_MEAN, IMAGENET_STD

from helpers import check_problems, coco_stuff_tree, save_image

# raw stuffthingmaps id -> 0..170, from mmsegmentation's coco_stuff164k.py converter table.
COCO_RAW_TO_TRAIN = {
    0: 0, 10: 10, 12: 11, 24: 23, 26: 24, 27: 25, 30: 26, 43: 39, 45: 40, 64: 59, 66: 60,
    69: 61, 71: 62, 81: 72, 83: 73, 89: 79, 91: 80, 92: 81, 150: 139, 181: 170, 255: 255,
}  # fmt: skip
COCO_UNUSED = [11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90]


def test_coco_stuff_classes_and_lookup_table() -> None:
    assert COCO_STUFF.num_classes == 171 and len(set(COCO_STUFF.class_names)) == 171
    names = COCO_STUFF.class_names
    assert (names[0], names[79], names[80], names[170]) == (
        "person",
        "toothbrush",
        "banner",
        "wood",
    )
    # Stuff: COCO-Stuff id (1-based) 92 + k is class 80 + k; sky-other is 157, road 149.
    assert (names[13], names[40], names[145], names[137]) == (
        "bench",
        "wine glass",
        "sky-other",
        "road",
    )
    assert len(set(COCO_STUFF.palette)) == 171
    for raw, train in COCO_RAW_TO_TRAIN.items():
        assert COCO_STUFF_LUT[raw] == train, raw
    for raw in COCO_UNUSED + [182, 200, 254]:
        assert COCO_STUFF_LUT[raw] == 255, raw
    used = COCO_STUFF_LUT[COCO_STUFF_LUT != 255]
    np.testing.assert_array_equal(used, np.arange(171))  # a bijection, in raw-id order
    assert (COCO_STUFF.mean, COCO_STUFF.std) == (IMAGENET_MEAN, IMAGENET_STD)


def test_coco_stuff_raw_maps(tmp_path: Path) -> None:
    raw = np.array([[0, 12, 26, 91, 181, 255, 89, 66], [10, 45, 69, 71, 83, 92, 150, 24]])
    expected = np.array([[0, 11, 24, 80, 170, 255, 79, 60], [10, 40, 61, 62, 73, 81, 139, 23]])
    root = coco_stuff_tree(tmp_path, {"000000000139": raw})
    dataset = coco_stuff(root, "val2017")
    assert "raw stuffthingmaps" in dataset.name
    dataset.check()
    image, label = dataset.load(0)
    assert image.shape == (2, 8, 3)
    np.testing.assert_array_equal(label, expected)


def test_coco_stuff_prefers_converted_train_id_maps(tmp_path: Path) -> None:
    train_ids = np.array([[0, 11, 24, 80, 170, 255, 79, 60]])
    root = coco_stuff_tree(tmp_path, {"000000000139": train_ids}, suffix="_labelTrainIds.png")
    # A raw map beside it (as mmsegmentation's converter leaves it) is not used.
    save_image(root / "annotations/val2017/000000000139.png", np.full((1, 8), 5, np.uint8))
    dataset = coco_stuff(root, "val2017")
    assert "labelTrainIds" in dataset.name
    dataset.check()
    np.testing.assert_array_equal(dataset.load(0)[1], train_ids)
    converted = root / "annotations/val2017/000000000139_labelTrainIds.png"
    save_image(converted, np.array([[0, 171, 200, 1, 2, 3, 4, 5]], dtype=np.uint8))
    report = check_problems(dataset)
    assert f"{converted}: label values [171, 200]" in report and "valid: 0..170, 255" in report


def test_coco_stuff_check_reports_unused_ids_and_missing_maps(tmp_path: Path) -> None:
    root = coco_stuff_tree(tmp_path, {"000000000139": np.array([[0, 11, 90, 1]])})
    report = check_problems(coco_stuff(root, "val2017"))
    assert "000000000139.png: label values [11, 90] are not classes" in report
    assert "valid: 0..10, 12..24, 26..27, 30..43" in report
    save_image(root / "images/val2017/000000000285.jpg", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(DatasetError, match="1 images have no label file") as error:
        coco_stuff(root, "val2017")
    assert "000000000285.jpg (expected" in str(error.value)
