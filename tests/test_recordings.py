"""Scores per recording (``ddrnet eval --by-recording``): matrices worked out by hand, and on
real CamVid frames the recordings' matrices summing to the whole evaluation's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ddrnet.cli import main
from ddrnet.engine.recordings import RecordingMetrics


def test_each_frame_counts_under_its_recording() -> None:
    metrics = RecordingMetrics(["b", "a", None, "b"], num_classes=2, ignore_index=255)
    assert metrics.names == ["(none)", "a", "b"]
    truth = torch.tensor([[0, 1], [1, 255]])
    metrics.update(0, torch.tensor([[0, 1], [0, 0]]), truth)  # b: 0->0, 1->1, 1->0
    metrics.update(1, torch.tensor([[1, 1], [1, 1]]), truth)  # a: 0->1, 1->1, 1->1
    metrics.update(3, torch.tensor([[0, 0], [1, 1]]), truth)  # b: 0->0, 1->0, 1->1
    assert metrics.counts[1].tolist() == [[0, 1], [0, 2]]
    assert metrics.counts[2].tolist() == [[2, 0], [2, 2]]  # rows: truth, columns: prediction
    assert metrics.counts[0].sum() == 0
    assert metrics.frames() == {"(none)": 1, "a": 1, "b": 2}
    results = metrics.compute()
    assert results["a"].iou == pytest.approx([0.0, 200 / 3])  # class 1: 2 / (2 + 1)
    assert np.isnan(results["(none)"].miou)


def test_real_frames_of_two_sequences_sum_to_the_whole(tmp_path: Path, capsys) -> None:
    """CamVid's train split starts with 0001TP's 62 frames, then 0006R0's."""
    report = tmp_path / "e.json"
    argv = ["eval", "camvid_ddrnet23_slim_train", "--split", "train", "--max-images", "66",
            "--by-recording", "--json", str(report)]  # fmt: skip
    assert main(argv) == 0
    assert "0001TP    0006R0" in capsys.readouterr().out
    document = json.loads(report.read_text())
    parts = document["by_recording"]
    assert {name: part["frames"] for name, part in parts.items()} == {"0001TP": 62, "0006R0": 4}
    summed = sum(np.array(part["confusion_matrix"]) for part in parts.values())
    assert np.array_equal(summed, np.array(document["confusion_matrix"]))


def test_a_data_set_without_recordings_is_refused(tmp_path: Path, capsys) -> None:
    from helpers import folder_tree, one_line_cli_error, save_image

    root = folder_tree(tmp_path)
    save_image(root / "images/val/v.png", np.full((2, 3, 3), 20, np.uint8))
    save_image(root / "masks/val/v.png", np.zeros((2, 3), np.uint8))
    model = tmp_path / "m.safetensors"
    import ddrnet

    net = ddrnet.create_model("ddrnet_23_slim", num_classes=3)
    ddrnet.save_model(net, model, net.metadata)
    error = one_line_cli_error(capsys, ["eval", str(model), "--dataset", "folder", "--root",
                                        str(root), "--by-recording"])  # fmt: skip
    assert "--by-recording: this data set does not say which recording" in error
