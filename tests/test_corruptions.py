"""Camera corruptions (`data/corruptions.py`) against hand values and on a real frame, and
`ddrnet eval --corruptions` through the one evaluation loop."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ddrnet.data.corruptions import CORRUPTIONS, corrupt
from ddrnet.data.io import read_rgb
from ddrnet.engine.metrics import SegmentationMetrics
from ddrnet.engine.robustness import CorruptedDataset, evaluate_robustness

from helpers import run_ddrnet


def _flat(value: int, size: tuple[int, int] = (16, 24)) -> np.ndarray:
    return np.full((*size, 3), value, np.uint8)


def test_light_and_contrast_by_hand() -> None:
    # One stop darker in linear light: 128 * 0.5 ** (1 / 2.2) = 93.4; five stops: 26.3.
    assert np.all(corrupt(_flat(128), "dark", 1) == 93)
    assert np.all(corrupt(_flat(128), "dark", 5) == 26)
    # Contrast kept at 0.2 around the mean 0.5: 0 -> 0.4, 1 -> 0.6.
    halves = _flat(0)
    halves[:, 12:] = 255
    assert set(np.unique(corrupt(halves, "contrast", 3))) == {102, 153}
    # Brightness: HSV value + 0.2 (51 levels), hue and saturation kept; black turns grey.
    pixels = np.array([[[100, 40, 0], [0, 0, 0], [250, 0, 0]]], np.uint8)
    assert corrupt(pixels, "brightness", 2).tolist() == [[[151, 60, 0], [51, 51, 51], [255, 0, 0]]]


def test_digital_corruptions_keep_what_they_cannot_change() -> None:
    assert np.all(corrupt(_flat(128), "jpeg_compression", 5) == 128)  # a flat field is exact
    blocks = np.kron(np.arange(12, dtype=np.uint8).reshape(3, 4) * 20, np.ones((2, 2), np.uint8))
    image = np.repeat(blocks[..., None], 3, axis=2)
    assert np.array_equal(corrupt(image, "pixelate", 2), image)  # 2x2 blocks at half size
    for blur in ("defocus_blur", "motion_blur"):
        assert np.all(corrupt(_flat(77), blur, 5) == 77)  # kernels that sum to one


def test_noise_has_its_published_strength() -> None:
    grey = _flat(128, (200, 200))
    gaussian = corrupt(grey, "gaussian_noise", 1, seed=3).astype(np.float64)
    assert gaussian.mean() == pytest.approx(128, abs=0.5)
    assert gaussian.std() == pytest.approx(0.08 * 255, rel=0.03)
    shot = corrupt(grey, "shot_noise", 1, seed=3).astype(np.float64) / 255
    # Poisson with 60 photons at white: 128/255 * 60 = 30.1 photons, std sqrt(30.1) / 60.
    assert shot.std() == pytest.approx(np.sqrt(128 / 255 * 60) / 60, rel=0.05)
    impulse = corrupt(grey, "impulse_noise", 1, seed=3)
    changed = impulse != 128
    assert changed.mean() == pytest.approx(0.03, abs=0.003)
    assert set(np.unique(impulse[changed])) == {0, 255}


def test_every_corruption_on_a_real_frame(camvid_root) -> None:
    frame = read_rgb(next((camvid_root / "val").glob("*.png")))
    for name in CORRUPTIONS:
        outputs = [corrupt(frame, name, severity, seed=1) for severity in (1, 5)]
        assert all(out.shape == frame.shape and out.dtype == np.uint8 for out in outputs), name
        change = [np.abs(out.astype(np.int16) - frame).mean() for out in outputs]
        assert 0 < change[0] < change[1], (name, change)  # severity 5 alters more than 1
        assert np.array_equal(corrupt(frame, name, 5, seed=1), outputs[1]), name  # seeded
    # The random parts follow the seed: another angle of motion, another haze.
    for name in ("motion_blur", "fog", "gaussian_noise"):
        assert not np.array_equal(corrupt(frame, name, 3, seed=1), corrupt(frame, name, 3, seed=2))


def test_bad_names_and_severities_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown corruption 'rain'"):
        corrupt(_flat(0), "rain", 1)
    with pytest.raises(ValueError, match="severity must be 1 to 5"):
        corrupt(_flat(0), "fog", 6)


def test_corrupted_dataset_gives_every_model_the_same_frames(camvid_val) -> None:
    first = CorruptedDataset(camvid_val, "shot_noise", 2)
    second = CorruptedDataset(camvid_val, "shot_noise", 2)
    image, label = first[3]
    assert image.dtype == torch.uint8 and image.shape == camvid_val[3][0].shape
    assert torch.equal(image, second[3][0]) and torch.equal(label, camvid_val[3][1])
    assert not torch.equal(first[3][0], first[4][0][:, : image.shape[1], : image.shape[2]])
    assert not torch.equal(image, CorruptedDataset(camvid_val, "shot_noise", 2, seed=1)[3][0])


def test_robustness_table_by_hand(camvid_val) -> None:
    scores = iter([40.0, 20.0, 70.0, 50.0])  # fog 1, fog 5, dark 1, dark 5

    def score(dataset, description: str) -> SegmentationMetrics:
        assert isinstance(dataset, CorruptedDataset)
        assert description == f"{dataset.name} {dataset.severity}"
        return SegmentationMetrics([], next(scores), 0.0, 0.0, torch.zeros(1, 1))

    result = evaluate_robustness(score, camvid_val, 75.0, ["fog", "dark"], [1, 5])
    assert result.miou == {"fog": {1: 40.0, 5: 20.0}, "dark": {1: 70.0, 5: 50.0}}
    assert result.mean("fog") == 30.0 and result.mean_corrupted == 45.0
    assert result.relative == pytest.approx(0.6)
    assert "0.60 of the clean mIoU" in result.table()
    assert result.to_dict()["mIoU"]["dark"] == {"1": 70.0, "5": 50.0}


@pytest.mark.slow
def test_eval_corruptions_on_real_frames(camvid_root, tmp_path) -> None:
    result = run_ddrnet(
        "eval", "camvid_ddrnet23_slim_fast_train", "--root", str(camvid_root),
        "--max-images", "2", "--corruptions", "fog", "dark", "--severities", "5",
        "--confidence", "--json", str(tmp_path / "m.json"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    measured = json.loads((tmp_path / "m.json").read_text())
    robustness = measured["corruptions"]
    assert robustness["clean_mIoU"] == measured["mIoU"]
    assert list(robustness["mIoU"]) == ["fog", "dark"]  # the library's order
    assert robustness["mIoU"]["fog"]["5"] < measured["mIoU"] - 10  # thick fog hurts
    assert "mIoU (%) by severity" in result.stdout
    # With --confidence, the confidence of every corrupted evaluation too: thick fog costs
    # pixel accuracy, and the model's confidence falls with it.
    fog = robustness["confidence"]["fog"]["5"]
    assert fog["accuracy"] < measured["confidence"]["accuracy"] - 5
    assert fog["mean_confidence"] < measured["confidence"]["mean_confidence"]
    assert 0 <= fog["ECE"] <= 100 and 0 <= fog["errors_below_0.9"] <= 100
    assert "confidence under the corruptions" in result.stdout
    refused = run_ddrnet("eval", "camvid_ddrnet23_slim_fast_train", "--corruptions", "rain")
    assert refused.returncode == 2 and "--corruptions: unknown rain" in refused.stderr
    assert "Traceback" not in refused.stderr
