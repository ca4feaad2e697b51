"""The bundled CamVid models: their card's figures are reproduced by `ddrnet eval`."""

from __future__ import annotations

import json

import pytest
import torch

import ddrnet
from ddrnet.data.io import demo_frames
from ddrnet.models import CheckpointError
from ddrnet.models.weights import bundled_model_path, bundled_names

from helpers import run_ddrnet


@pytest.mark.slow
@pytest.mark.parametrize("name", bundled_names())
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


@pytest.mark.parametrize("weights", ddrnet.models.bundled_weights(), ids=repr)
def test_weights_entries_carry_their_files_metadata(weights) -> None:
    from ddrnet.models import read_checkpoint

    metadata = read_checkpoint(weights.path).metadata  # the file itself, weights and all
    assert weights.architecture == metadata.architecture == "ddrnet_23_slim"
    assert (weights.num_classes, weights.class_names) == (11, metadata.class_names)
    assert (weights.palette, weights.mean, weights.std) == (
        metadata.palette,
        metadata.mean,
        metadata.std,
    )
    assert weights.metrics == metadata.metrics
    assert weights.val_miou == metadata.metrics["camvid_val_mIoU"]
    assert weights.val_held_out == weights.bundled_name.endswith("_train")
    card = (weights.path.parent / "MODEL_CARD.md").read_text()
    assert weights.licence in card.split("## Data and licence")[1]
    assert f"## `{weights.bundled_name}`: {weights.description}" in card


def test_string_names_and_typed_weights_are_one_file() -> None:
    from ddrnet.models import get_weights
    from ddrnet.models.weights import resolve_bundled_name

    weights = ddrnet.DDRNet23Slim_Weights
    assert weights.DEFAULT is weights.CAMVID and len(weights) == 4  # an alias, not an entry
    assert bundled_model_path() == weights.DEFAULT.path
    for entry in weights:
        name = entry.bundled_name
        assert get_weights(name) is entry
        assert resolve_bundled_name(name) == bundled_model_path(name) == entry.path
    by_name = ddrnet.create_model(checkpoint="camvid_ddrnet23_slim_train")
    by_entry = ddrnet.create_model(weights=weights.CAMVID_TRAIN)
    assert by_name.metadata == by_entry.metadata
    assert all(
        torch.equal(a, b)
        for a, b in zip(by_name.state_dict().values(), by_entry.state_dict().values())
    )
    with pytest.raises(ValueError, match="no bundled model 'camvid'; bundled: camvid_ddrnet23"):
        get_weights("camvid")
    with pytest.raises(ValueError, match="not both"):
        ddrnet.create_model(checkpoint="camvid_ddrnet23_slim", weights=weights.CAMVID)
