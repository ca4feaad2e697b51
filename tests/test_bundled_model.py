"""The bundled CamVid models: their card's figures are reproduced by `ddrnet eval`."""

from __future__ import annotations

import json

import pytest

import ddrnet
from ddrnet.assets import BUNDLED_MODELS, bundled_model_path, demo_frames
from ddrnet.models import CheckpointError

from helpers import run_ddrnet


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BUNDLED_MODELS))
def test_bundled_model_reproduces_its_model_card(name, camvid_root, tmp_path) -> None:
    path = bundled_model_path(name)
    model = ddrnet.create_model(checkpoint=path)
    assert model.metadata.architecture == "ddrnet_23_slim" and model.num_classes == 11
    claimed = model.metadata.metrics["camvid_val_mIoU"]
    card = (path.parent / "MODEL_CARD.md").read_text()
    section = card.split(f"## `{name}`")[1].split("\n## ")[0]
    assert f"**{claimed:.2f}**" in section
    seen = model.metadata.training["val_in_training_data"]
    assert seen == (not name.endswith("_train"))  # the final models trained on train + val
    result = run_ddrnet(
        "eval",
        name,  # a bundled model's name stands for its file
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


def test_unknown_checkpoint_error_lists_the_bundled_names(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="camvid_ddrnet23_slim_train"):
        ddrnet.create_model(checkpoint=tmp_path / "camvid_ddrnet23_slim_tran")
