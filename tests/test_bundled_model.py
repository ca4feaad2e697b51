"""The bundled CamVid model: its card's figures are reproduced by `ddrnet eval`."""

from __future__ import annotations

import json

import pytest

import ddrnet
from ddrnet.assets import bundled_model_path, demo_frames

from cli_runner import run_ddrnet


def test_bundled_model_reproduces_its_model_card(camvid_root, tmp_path) -> None:
    path = bundled_model_path()
    model = ddrnet.create_model(checkpoint=path)
    assert model.metadata.architecture == "ddrnet_23_slim" and model.num_classes == 11
    claimed = model.metadata.metrics["camvid_val_mIoU"]
    card = (path.parent / "MODEL_CARD.md").read_text()
    assert f"**{claimed:.2f}**" in card
    result = run_ddrnet(
        "eval",
        str(path),
        "--root",
        str(camvid_root),
        "--batch-size",
        "4",
        "--json",
        str(tmp_path / "metrics.json"),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    measured = json.loads((tmp_path / "metrics.json").read_text())
    assert measured["images"] == 101
    assert measured["mIoU"] == pytest.approx(claimed, abs=0.01)


def test_predict_with_no_arguments_segments_the_demo_frames(tmp_path) -> None:
    result = run_ddrnet("predict", "-o", str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    frames = demo_frames()
    assert len(frames) == 3
    for frame in frames:
        assert (tmp_path / f"{frame.stem}_overlay.png").is_file()
        assert f"{frame.name}: 480x360" in result.stdout and " ms" in result.stdout
