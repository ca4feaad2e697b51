"""Scores per frame (``ddrnet eval --worst N [--show FOLDER]``): counts worked out by hand, on
real CamVid frames the frames' counts summing to the whole evaluation's, and the pictures."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ddrnet.cli import main
from ddrnet.data.labels import LabelSet
from ddrnet.engine.frame_scores import FrameScores
from ddrnet.viz.compare import TITLE_HEIGHT
from ddrnet.viz.errors import ERROR_COLOUR, error_picture

from helpers import one_line_cli_error


def test_a_frames_scores_by_hand() -> None:
    scores = FrameScores([None, None], num_classes=3, ignore_index=255, keep=1)
    truth = torch.tensor([[0, 0], [1, 255]])
    scores.update(0, torch.tensor([[0, 1], [1, 2]]), truth)  # one 0 taken for 1; 2 on void
    scores.update(1, truth.clamp(max=2), truth)  # every labelled pixel right
    first, second = scores.compute()
    # Class 0: 1 right of 2 labelled, predicted once: IoU 1 / 2. Class 1: 1 right, labelled
    # once, predicted twice: 1 / 2. Class 2 only on the void pixel: not scored.
    assert first.iou[:2] == pytest.approx((50.0, 50.0)) and math.isnan(first.iou[2])
    assert first.miou == pytest.approx(50.0)
    assert first.pixel_accuracy == pytest.approx(200 / 3)
    assert first.mistake == pytest.approx((0, 1, 100 / 3))  # 0 taken for 1: 1 of 3 pixels
    assert first.describe_mistake(["road", "car", "sky"]) == "road as car 33.3%"
    assert first.weakest(["road", "car", "sky"]) == [("car", 50.0), ("road", 50.0)]
    assert second.miou == 100.0 and second.mistake is None
    assert [s.index for s in scores.worst(2)] == [0, 1]
    assert list(scores.kept()) == [0]  # keep=1: only the worst frame's prediction


def test_real_frames_counts_sum_to_the_whole_and_pictures_show_them(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    report, pictures = tmp_path / "e.json", tmp_path / "worst"
    argv = ["eval", "camvid_ddrnet23_slim_train", "--max-images", "4", "--worst", "2",
            "--show", str(pictures), "--json", str(report)]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "the 2 frames of lowest mIoU (of 4):" in out
    document = json.loads(report.read_text())
    frames = document["frames"]
    assert [frame["index"] for frame in frames] == [0, 1, 2, 3]
    worst = sorted(frames, key=lambda frame: frame["miou"])[:2]
    names = sorted(p.name for p in pictures.glob("*.png"))
    assert names == [f"{rank:03d}_{Path(f['image']).stem}.png" for rank, f in enumerate(worst, 1)]
    for frame in frames:
        assert frame["miou"] == pytest.approx(
            np.mean([v for v in frame["iou"].values() if v is not None])
        )
    # A rerun replaces the earlier run's pictures whole (no two frames under one rank) and
    # leaves other files alone.
    (pictures / "notes.txt").write_text("mine")
    (pictures / "009_mine.png").write_bytes(b"a picture of the user's, named like ours")
    assert main([*argv[:5], "1", *argv[6:]]) == 0  # --worst 1
    kept = sorted(p.name for p in pictures.iterdir() if not p.name.startswith("."))
    assert kept == [names[0], "009_mine.png", "notes.txt"]


def test_the_frames_counts_sum_to_the_evaluations_matrix(camvid_val) -> None:
    import ddrnet
    from ddrnet.engine.evaluate import evaluate
    from ddrnet.engine.frame_scores import LABELLED, PREDICTED, TRUE

    model = ddrnet.create_model(checkpoint="camvid_ddrnet23_slim_train")
    frames = torch.utils.data.Subset(camvid_val, [7, 40, 90])
    scores = FrameScores(frames, 11)
    labels = camvid_val.labels
    metrics = evaluate(model, frames, 11, labels.mean, labels.std, frame_accumulators=[scores])
    matrix = torch.as_tensor(metrics.matrix)
    total = scores.counts.sum(0)
    assert total[:, TRUE].tolist() == matrix.diagonal().tolist()
    assert total[:, LABELLED].tolist() == matrix.sum(1).tolist()
    assert total[:, PREDICTED].tolist() == matrix.sum(0).tolist()
    names = [s.image.name for s in scores.compute()]
    assert names == [camvid_val.samples[i].image.name for i in (7, 40, 90)]


def test_the_error_panel_marks_exactly_the_wrong_labelled_pixels() -> None:
    labels = LabelSet("t", ("road", "car"), ((128, 64, 128), (0, 0, 142)))
    image = np.full((40, 60, 3), 100, np.uint8)
    label = np.zeros((40, 60), np.uint8)
    label[:, 30:] = 1
    label[:5] = 255  # void: never an error
    prediction = np.zeros((40, 60), np.int64)  # the car half is wrong, the void rows too
    picture = error_picture(image, label, prediction, labels, "prediction")
    panel = picture[TITLE_HEIGHT:, 2 * (60 + 4) : 2 * (60 + 4) + 60]
    red = (panel[..., 0] > 150) & (panel[..., 1] < 100)
    assert red.sum() == 35 * 30 and red[5:, 30:].all()
    assert tuple(ERROR_COLOUR) == (255, 0, 0)


def test_show_needs_worst_and_another_folder_than_the_frames(
    camvid_root: Path, capsys: pytest.CaptureFixture
) -> None:
    error = one_line_cli_error(capsys, ["eval", "camvid_ddrnet23_slim_train", "--show", "x"])
    assert "--show draws the frames of --worst N" in error
    argv = ["eval", "camvid_ddrnet23_slim_train", "--root", str(camvid_root), "--max-images",
            "1", "--worst", "1", "--show", str(camvid_root / "val")]  # fmt: skip
    error = one_line_cli_error(capsys, argv)
    assert "the data set's own folder; choose another" in error


def test_bootstrap_by_hand() -> None:
    from ddrnet.engine.bootstrap import bootstrap_miou, miou_of_counts, paired_difference

    # Class 0: 3 right of 4 labelled, predicted 4 times: IoU 3 / 5; class 1: 1 / 1; class 2
    # neither labelled nor predicted: not averaged. mIoU = (60 + 100) / 2.
    frame = np.array([[3, 4, 4], [1, 1, 1], [0, 0, 0]])
    assert miou_of_counts(frame) == pytest.approx(80.0)
    same = np.stack([frame, frame, frame])  # every draw of identical frames scores alike
    interval = bootstrap_miou(same, resamples=50)
    assert (interval.value, interval.low, interval.high) == pytest.approx((80.0, 80.0, 80.0))
    assert not paired_difference(same, same, resamples=50).excludes_zero()
    # A model right on every pixel of frames where the other misses one: better on any draw.
    worse = np.stack([frame, frame + [[0, 0, 1], [0, 0, 0], [0, 0, 0]], frame])
    better = np.stack([np.array([[4, 4, 4], [1, 1, 1], [0, 0, 0]])] * 3)
    difference = paired_difference(better, worse, resamples=200)
    assert difference.value == pytest.approx(100.0 - miou_of_counts(worse.sum(0)))
    assert difference.excludes_zero() and difference.low > 0


def test_a_real_interval_and_a_comparison_through_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from ddrnet.engine.bootstrap import miou_of_counts, paired_difference

    first, second = tmp_path / "a.json", tmp_path / "b.json"
    argv = ["eval", "camvid_ddrnet23_slim_train", "--max-images", "6", "--ci"]
    assert main([*argv, "--json", str(first)]) == 0
    document = json.loads(first.read_text())
    counts = np.array([frame["counts"] for frame in document["frames"]])
    assert miou_of_counts(counts.sum(0)) == pytest.approx(document["mIoU"])  # the same mIoU
    interval = document["interval"]
    assert interval["low"] <= document["mIoU"] <= interval["high"] and interval["frames"] == 6
    capsys.readouterr()
    assert main([*argv, "--compare", str(first), "--json", str(second)]) == 0
    assert "+0.00 mIoU, 95% interval +0.00 to +0.00: no difference" in capsys.readouterr().out
    assert json.loads(second.read_text())["comparison"]["value"] == 0.0
    fewer = ["eval", "camvid_ddrnet23_slim_train", "--max-images", "5", "--compare", str(first)]
    assert "scores other frames than these (6 frames, not 5)" in one_line_cli_error(capsys, fewer)
    # The same frames with their labels at twice the size (every count x4): refused, once the
    # evaluation shows it, and the evaluation's own report is still written.
    document["frames"] = [
        {**frame, "counts": [[4 * n for n in row] for row in frame["counts"]]}
        for frame in document["frames"]
    ]
    resized = tmp_path / "resized.json"
    resized.write_text(json.dumps(document))
    third = tmp_path / "c.json"
    assert main([*argv, "--compare", str(resized), "--json", str(third)]) == 2
    message = capsys.readouterr().err.splitlines()[-1]  # after the evaluation's progress
    assert "6 of its 6 frames have other labels than these (the first: " in message
    assert "comparison" not in json.loads(third.read_text())
    with pytest.raises(ValueError, match="other labels"):
        paired_difference(counts, 4 * counts)
    plain = tmp_path / "plain.json"
    assert (
        main(["eval", "camvid_ddrnet23_slim_train", "--max-images", "2", "--json", str(plain)]) == 0
    )
    capsys.readouterr()
    no_counts = ["eval", "camvid_ddrnet23_slim_train", "--max-images", "2", "--compare", str(plain)]
    assert "holds no counts per frame" in one_line_cli_error(capsys, no_counts)


def test_tied_frames_keep_the_prediction_of_the_one_listed() -> None:
    scores = FrameScores([None, None, None], num_classes=2, keep=1)
    truth = torch.tensor([[0, 1]])
    for index in range(3):  # three frames of one score: worst() lists the first
        scores.update(index, torch.tensor([[0, 0]]), truth)
    assert [s.index for s in scores.worst(1)] == [0] and list(scores.kept()) == [0]
    assert "the 3 frames of lowest mIoU (of 3)" in scores.table(["a", "b"], 5)


def test_malformed_reports_and_outputs_are_refused_before_evaluating(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    report = tmp_path / "a.json"
    base = ["eval", "camvid_ddrnet23_slim_train", "--max-images", "2"]
    assert main([*base, "--ci", "--json", str(report)]) == 0
    capsys.readouterr()
    document = json.loads(report.read_text())
    broken = {
        "negative": lambda d: d["frames"][0]["counts"][0].__setitem__(0, -5),
        "right_over_labelled": lambda d: d["frames"][0]["counts"][0].__setitem__(1, 0),
        "short": lambda d: d["frames"][1].__setitem__("counts", d["frames"][1]["counts"][:5]),
        "text": lambda d: d["frames"][1].__setitem__("counts", "abc"),
    }
    for name, damage in broken.items():
        copy = json.loads(json.dumps(document))
        damage(copy)
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(copy))
        error = one_line_cli_error(capsys, [*base, "--compare", str(path)])
        assert f"{name}.json: frames[" in error and "[right, labelled, predicted]" in error, name
    (tmp_path / "file.png").write_bytes(b"")
    error = one_line_cli_error(
        capsys, [*base, "--worst", "1", "--show", str(tmp_path / "file.png")]
    )
    assert "--show " in error and "file.png: is a file, but a folder is to be written" in error
