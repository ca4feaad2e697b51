"""Confidence metrics (``ddrnet eval --confidence``: calibration, thresholds) and their figure."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from PIL import Image
from torch.utils.data import Subset

import ddrnet
from ddrnet.engine.confidence import ECE_BINS, ConfidenceMetrics
from ddrnet.engine.evaluate import evaluate_predictor
from ddrnet.engine.predictor import Predictor
from ddrnet.viz import CONFIDENCE_SIZE

from helpers import run_ddrnet, sharded_counts


def _hand_scene() -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes, a 2x3 image; class 0's probability per pixel, exact in binary:

    0.875 | 0.875 | 0.5     labels   0 | 1 | void
    0.625 | 0.25  | 0.5              0 | 1 | void

    Confidences: 0.875 (class 0, right), 0.875 (class 0, wrong), 0.625 (class 0, right),
    0.75 (class 1, right); the void column counts for nothing."""
    first = torch.tensor([[0.875, 0.875, 0.5], [0.625, 0.25, 0.5]])
    probabilities = torch.stack([first, 1 - first])[None]
    labels = torch.tensor([[[0, 1, 255], [0, 1, 255]]])
    return probabilities, labels


def test_calibration_by_hand() -> None:
    metrics = ConfidenceMetrics(2)
    probabilities, labels = _hand_scene()
    ids = metrics.update(probabilities, labels)
    assert ids.tolist() == [[[0, 0, 0], [0, 1, 0]]]
    result = metrics.compute()
    assert result.pixels == 4
    assert result.accuracy == 75.0
    assert result.mean_confidence == pytest.approx(100 * (0.875 * 2 + 0.625 + 0.75) / 4)
    # Bins of 1/15: 0.875 in (13/15, 14/15] (half the pixels, half right), 0.625 in
    # (9/15, 10/15] and 0.75 in (11/15, 12/15] (a quarter each, right):
    # 0.5 * |0.5 - 0.875| + 0.25 * |1 - 0.625| + 0.25 * |1 - 0.75| = 0.34375.
    assert result.ece == pytest.approx(34.375)
    shares = {index: b[2] for index, b in enumerate(result.bins) if b[2] > 0}
    assert shares == {13: 50.0, 9: 25.0, 11: 25.0}
    expected_nll = -(math.log(0.875) + math.log(0.125) + math.log(0.625) + math.log(0.75)) / 4
    assert result.nll == pytest.approx(expected_nll)
    # >= 0.5: all, one error, none below; >= 0.7: the 0.625 pixel (right) drops out;
    # >= 0.9: nothing kept, the one error below.
    kept = {t: (round(p, 4), acc, caught) for t, p, acc, caught in result.selective}
    assert kept[0.5] == (100.0, 75.0, 0.0)
    assert kept[0.7] == (75.0, pytest.approx(200 / 3), 0.0)
    assert kept[0.9][0] == 0.0 and math.isnan(kept[0.9][1]) and kept[0.9][2] == 100.0
    assert result.class_confidence == pytest.approx([100 * (0.875 * 2 + 0.625) / 3, 75.0])
    assert result.class_precision == pytest.approx([200 / 3, 100.0])


def test_a_threshold_keeps_what_min_confidence_keeps() -> None:
    """A float32 probability equal to a threshold's float32 value counts as kept, as
    ``--min-confidence`` compares them."""
    metrics = ConfidenceMetrics(2)
    first = torch.full((1, 1), 0.9, dtype=torch.float32)
    metrics.update(torch.stack([first, 1 - first])[None], torch.zeros(1, 1, 1, dtype=torch.long))
    kept = {t: p for t, p, _, _ in metrics.compute().selective}
    assert kept[0.9] == 100.0 and kept[0.95] == 0.0


def test_nothing_scored_is_nan_not_an_error() -> None:
    metrics = ConfidenceMetrics(2)
    probabilities, labels = _hand_scene()
    metrics.update(probabilities, torch.full_like(labels, 255))
    result = metrics.compute()
    assert result.pixels == 0 and math.isnan(result.ece) and math.isnan(result.accuracy)
    with pytest.raises(ValueError, match="probabilities"):
        metrics.update(probabilities[:, :1], labels)


def test_sharded_confidence_counts_sum_to_the_whole(camvid_val) -> None:
    """Each process of a distributed evaluation takes every second image; the summed
    counts equal one process's over all of them, and scoring the probabilities leaves the
    mIoU as the fast class-id path gives it."""
    model = ddrnet.load("camvid_ddrnet23_slim_fast_train")
    predictor = Predictor(model, "cpu", model.metadata.mean, model.metadata.std)
    images = Subset(camvid_val, range(4))
    whole = ConfidenceMetrics(11)
    scored = evaluate_predictor(predictor, images, 11, progress=False, confidence=whole)
    plain = evaluate_predictor(predictor, images, 11, progress=False)
    assert scored.miou == pytest.approx(plain.miou, abs=0.01)
    shards = sharded_counts(predictor, images, 11, lambda: ConfidenceMetrics(11), "confidence")
    assert torch.allclose(shards[0] + shards[1], whole.counts)
    assert whole.counts[-1, 0] == sum(int((label != 255).sum()) for _, label in images)


@pytest.mark.slow
def test_eval_confidence_and_its_figure(camvid_root, tmp_path) -> None:
    metrics = tmp_path / "m.json"
    result = run_ddrnet(
        "eval", "camvid_ddrnet23_slim_train", "--root", str(camvid_root), "--max-images", "3",
        "--confidence", "--json", str(metrics),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ECE" in result.stdout and "errors below" in result.stdout
    section = json.loads(metrics.read_text())["confidence"]
    assert len(section["reliability"]) == ECE_BINS
    assert sum(b["pixels"] for b in section["reliability"]) == pytest.approx(100.0)
    kept = [row["pixels"] for row in section["selective"]]
    assert kept == sorted(kept, reverse=True)
    # A trained model's confidence: well above chance, and close to its accuracy.
    assert section["accuracy"] > 80 and 0 < section["ECE"] < 10
    figure = tmp_path / "c.png"
    drawn = run_ddrnet("viz", "confidence", str(metrics), str(metrics), "-o", str(figure))
    assert drawn.returncode == 0, drawn.stderr[-2000:]
    assert Image.open(figure).size == CONFIDENCE_SIZE
    document = json.loads(metrics.read_text())
    del document["confidence"]
    (tmp_path / "plain.json").write_text(json.dumps(document))
    refused = run_ddrnet("viz", "confidence", str(tmp_path / "plain.json"), "-o", str(figure))
    assert refused.returncode == 2 and "--confidence" in refused.stderr
    assert "Traceback" not in refused.stderr
    # A report edited or cut by hand: one line naming the field (each was a traceback).
    from ddrnet.errors import UsageError
    from ddrnet.viz import plot_confidence

    edits = {
        "confidence.ECE: expected a number": lambda c: c.update(ECE="x"),
        "confidence: missing selective": lambda c: c.pop("selective"),
        "confidence.reliability[0]: expected an object": lambda c: c.update(reliability=[1, 2]),
        "predicted_class.Sky: expected an object": lambda c: c["predicted_class"].update(Sky=1),
    }  # fmt: skip
    for message, edit in edits.items():
        document = json.loads(metrics.read_text())
        edit(document["confidence"])
        (tmp_path / "edited.json").write_text(json.dumps(document))
        with pytest.raises(UsageError, match=re.escape(message)):
            plot_confidence([tmp_path / "edited.json"], figure)
