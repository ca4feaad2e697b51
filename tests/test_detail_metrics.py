"""Boundary IoU and objects found by size: hand-computed cases, real labels, `ddrnet eval`."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch.utils.data import Subset

import ddrnet
from ddrnet.engine.detail_metrics import (
    MIN_OBJECT_AREA,
    SIZE_BUCKETS,
    DetailMetrics,
    boundary_region,
    boundary_width,
)
from ddrnet.engine.evaluate import evaluate_predictor
from ddrnet.engine.predictor import Predictor

from helpers import run_ddrnet, sharded_counts


def test_boundary_width_is_two_percent_of_the_diagonal() -> None:
    assert boundary_width(360, 480) == 12  # diagonal 600
    assert boundary_width(1024, 2048) == 46  # diagonal 2289.7
    assert boundary_width(10, 10) == 1  # 0.28 rounds to 0; never less than one pixel


def test_boundary_region_by_hand() -> None:
    square = np.zeros((7, 7), bool)
    square[1:6, 1:6] = True  # 5x5: its ring of 16 is within 1 pixel of the outside
    ring = boundary_region(square, 1)
    assert ring.sum() == 16 and not ring[2:5, 2:5].any() and ring[1, 1:6].all()
    assert boundary_region(square, 2).sum() == 24  # all but the centre
    # The frame's border is no contour: a full frame has no boundary, and a region that
    # leaves the frame on the left has its boundary on the right only.
    assert not boundary_region(np.ones((5, 5), bool), 1).any()
    left = np.zeros((5, 5), bool)
    left[:, :3] = True
    assert boundary_region(left, 1).nonzero()[1].tolist() == [2] * 5


def _two_class_scene() -> tuple[np.ndarray, np.ndarray]:
    """40x40 (boundary width 1): class 1 on a 4x4 block (an object) and a 3x3 one (under
    16 pixels: no object); the prediction has the 4x4 block's left half only."""
    target = np.zeros((40, 40), np.int64)
    target[10:14, 10:14] = 1
    target[30:33, 30:33] = 1
    prediction = np.zeros_like(target)
    prediction[10:14, 10:12] = 1
    return prediction, target


def test_detail_metrics_by_hand() -> None:
    prediction, target = _two_class_scene()
    metrics = DetailMetrics(2)
    metrics.update(0, prediction, target)
    result = metrics.compute()
    # Class 1: ground-truth edges 12 (4x4 ring) + 8 (3x3 ring); predicted edge: all 8 pixels of
    # the 4x2 block; shared: its left column (4) and the top and bottom of its right (2).
    # Class 0: edges around the blocks 20 + 16 against 16 around the predicted block; shared:
    # the top, bottom and left sides of that ring (4 + 4 + 4).
    assert result.boundary_iou == pytest.approx([12 / 40 * 100, 6 / 22 * 100])
    assert result.mean_boundary_iou == pytest.approx((30 + 600 / 22) / 2)
    # The 4x4 object is found (8 of 16 pixels right); the 3x3 one is too small to count.
    assert result.objects == {"small": [0, 1], "medium": [1, 0], "large": [0, 0]}
    assert result.found["small"][1] == 100.0 and math.isnan(result.found["small"][0])
    assert result.pixel_recall["small"][1] == 50.0 and result.found["medium"][0] == 100.0
    assert result.mean_found["small"] == result.mean_found["medium"] == 100.0
    assert math.isnan(result.mean_found["large"])
    # One pixel fewer right, and the object is lost.
    prediction[13, 11] = 0
    metrics = DetailMetrics(2)
    metrics.update(0, prediction, target)
    assert metrics.compute().found["small"][1] == 0.0


def test_ignored_pixels_count_for_neither() -> None:
    prediction, target = _two_class_scene()
    ignored = target.copy()
    ignored[:, 20:] = 255  # the 3x3 block and part of the background become void
    plain, masked = DetailMetrics(2), DetailMetrics(2)
    plain.update(0, prediction[:, :20], target[:, :20])
    masked.update(0, prediction, ignored)
    # Cut at column 20 or voided there: the same class 1 scores; class 0's edge at the cut
    # is one more contour in the cut frame, not in the voided one, and no void pixel counts.
    assert masked.counts[1].tolist() == plain.counts[1].tolist()
    assert masked.compute().objects["small"][1] == 1


def test_real_labels_against_themselves_and_shifted(camvid_val) -> None:
    perfect, shifted = DetailMetrics(11), DetailMetrics(11)
    for index in (0, 50, 100):
        _, label = camvid_val[index]
        label = label.numpy()
        perfect.update(0, label, label)
        moved = np.roll(label, 4, axis=1)
        shifted.update(0, np.where(moved == 255, 0, moved), label)
    exact, off = perfect.compute(), shifted.compute()
    assert all(v == 100.0 for v in exact.boundary_iou if not math.isnan(v))
    for bucket in SIZE_BUCKETS:
        assert all(v == 100.0 for v in exact.found[bucket] if not math.isnan(v))
    assert sum(exact.objects["small"]) > 0 and exact.objects == off.objects
    assert off.mean_boundary_iou < exact.mean_boundary_iou - 10
    assert off.mean_found["small"] < 100.0


def test_sharded_evaluation_sums_to_the_whole(camvid_val) -> None:
    """Each process of a distributed evaluation takes every second image; the summed
    counts equal one process's over all of them."""
    model = ddrnet.load("camvid_ddrnet23_slim_fast_train")
    predictor = Predictor(model, "cpu", model.metadata.mean, model.metadata.std)
    images = Subset(camvid_val, range(4))
    whole = DetailMetrics(11)
    evaluate_predictor(predictor, images, 11, progress=False, frame_accumulators=[whole])
    shards = sharded_counts(predictor, images, 11, lambda: DetailMetrics(11), "frame_accumulators")
    assert torch.equal(shards[0] + shards[1], whole.counts)
    assert whole.counts[:, 1].sum() > 0


@pytest.mark.slow
def test_eval_details_on_real_frames(camvid_root, camvid_val, tmp_path) -> None:
    result = run_ddrnet(
        "eval", "camvid_ddrnet23_slim_train", "--root", str(camvid_root), "--max-images", "3",
        "--details", "--json", str(tmp_path / "m.json"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "boundary IoU" in result.stdout and "found small" in result.stdout
    measured = json.loads((tmp_path / "m.json").read_text())
    # The objects are the labels' own: counted from them alone, they are the same.
    truth = DetailMetrics(11)
    for index in range(3):
        label = camvid_val[index][1].numpy()
        truth.update(0, label, label)
    expected = truth.compute()
    names = list(measured["per_class_IoU"])
    for bucket in SIZE_BUCKETS:
        counted = measured["objects_found"][bucket]["objects"]
        assert [counted[name] for name in names] == expected.objects[bucket]
    assert measured["min_object_area_px"] == MIN_OBJECT_AREA
    # A trained model is far from perfect on edges, and far from useless.
    assert 30 < measured["mean_boundary_IoU"] < 90
    assert measured["objects_found"]["large"]["mean"] > 90
