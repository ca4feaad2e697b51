"""Per-pixel confidence in prediction: confidence maps and pixels left unknown
(``Predictor(min_confidence=...)``, ``ddrnet predict --save confidence --min-confidence``)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import ddrnet
from ddrnet.engine.predictor import unknown_label
from ddrnet.models.weights import bundled_model_path
from ddrnet.predict import run_prediction
from ddrnet.render import confidence_picture
from ddrnet.runner import SegmentationRunner

from helpers import run_ddrnet


def test_unknown_label_leaves_every_class_its_value() -> None:
    assert unknown_label(11) == 255 and unknown_label(255) == 255
    assert unknown_label(257) == 65535
    with pytest.raises(ValueError, match="no label value"):
        unknown_label(256)


def test_confidence_picture_reads_back_the_confidence() -> None:
    confidence = np.array([[0.0, 0.5, 0.9], [0.999, 1.0, 1.2]], np.float32)
    picture = confidence_picture(confidence)
    assert picture.dtype == np.uint8 and picture.tolist() == [[0, 128, 230], [255, 255, 255]]
    assert np.abs(picture / 255 - np.clip(confidence, 0, 1)).max() <= 0.5 / 255 + 1e-6


def test_confidence_is_the_winning_probability_and_low_pixels_are_unknown(camvid_frames) -> None:
    model = ddrnet.create_model(checkpoint=bundled_model_path("camvid_ddrnet23_slim_fast_train"))
    plain = ddrnet.Predictor(model)
    probabilities = plain.predict_proba(camvid_frames[0])
    (labels,), (confidence,) = plain.predict_with_confidence([camvid_frames[0]])
    assert confidence.shape == (360, 480) and confidence.dtype == np.float32
    assert np.allclose(confidence, probabilities.max(axis=0), atol=1e-5)
    assert np.array_equal(labels, probabilities.argmax(axis=0))
    # The fast class-id path and the probabilities' arg-max agree but for float near-ties.
    assert np.mean(labels == plain.predict(camvid_frames[0])) > 0.999
    doubtful = confidence < 0.9
    assert 0.01 < doubtful.mean() < 0.5  # a trained model doubts some pixels, not most
    flagged = ddrnet.Predictor(model, min_confidence=0.9).predict(camvid_frames[0])
    assert np.array_equal(flagged, np.where(doubtful, 255, labels))
    with pytest.raises(ValueError, match="min_confidence"):
        ddrnet.Predictor(model, min_confidence=1.0)


def test_predict_writes_confidence_maps_and_unknown_pixels(camvid_frames, tmp_path) -> None:
    frame = str(camvid_frames[0])
    out = tmp_path / "out"
    result = run_ddrnet(
        "predict", frame, "--checkpoint", "camvid_ddrnet23_slim_fast_train", "-o", str(out),
        "--save", "labels", "overlay", "confidence", "--min-confidence", "0.9",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    stem = camvid_frames[0].stem
    grey = Image.open(out / f"{stem}_confidence.png")
    assert grey.mode == "L" and grey.size == (480, 360)
    confidence = np.asarray(grey) / 255
    labels = np.asarray(Image.open(out / f"{stem}_labels.png"))
    unknown = labels == 255
    # Unknown exactly where the confidence is under 0.9, up to the map's 1/255 rounding.
    clear = np.abs(confidence - 0.9) > 1 / 255
    assert unknown.any() and np.array_equal(unknown[clear], (confidence < 0.9)[clear])
    overlay = np.asarray(Image.open(out / f"{stem}_overlay.png").convert("RGB"))[:, :480]
    image = np.asarray(Image.open(frame).convert("RGB"))
    # Unknown pixels are blended with black: darker than the photograph there.
    assert (overlay[unknown].astype(int) - image[unknown] // 2).__abs__().max() <= 1
    for bad in ("0", "1", "1.5", "x"):
        refused = run_ddrnet("predict", frame, "--min-confidence", bad, "-o", str(out))
        assert refused.returncode == 2 and "--min-confidence" in refused.stderr
        assert "Traceback" not in refused.stderr


def test_a_video_gets_a_confidence_video(camvid_frames, tmp_path) -> None:
    video = tmp_path / "drive.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (480, 360))
    for frame in camvid_frames:
        writer.write(cv2.imread(str(frame)))
    writer.release()
    model = ddrnet.create_model(checkpoint=bundled_model_path("camvid_ddrnet23_slim_fast_train"))
    runner = SegmentationRunner(model, torch.device("cpu"))
    summary = run_prediction(
        runner, [str(video)], tmp_path / "out", kinds=["confidence"], progress=False
    )
    target = tmp_path / "out" / "drive_confidence.mp4"
    assert summary.outputs == [target]
    capture = cv2.VideoCapture(str(target))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == len(camvid_frames)
    ok, picture = capture.read()
    # Grey: the three channels alike (up to the codec), bright where the model is sure.
    assert ok and np.abs(picture[..., 0].astype(int) - picture[..., 2]).mean() < 3
    assert picture.mean() > 128
