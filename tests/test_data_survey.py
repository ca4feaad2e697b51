"""``ddrnet data`` and the survey under it: figures of a small folder data set worked out by
hand, problems named by file without stopping, the leak warnings on real CamVid splits, the
label pictures, and the check before training that logs the warnings."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from ddrnet.cli import main
from ddrnet.data.camvid import camvid
from ddrnet.data.datasets import DatasetError
from ddrnet.data.folder import folder_dataset
from ddrnet.data.survey import survey_dataset, survey_warnings
from ddrnet.viz.labels import spread_indices, write_label_pictures

from helpers import folder_tree, one_line_cli_error, save_image


def _broken_tree(tmp_path: Path) -> Path:
    """``folder_tree``'s two frames (a: grey 50, b: grey 90 as JPEG), plus c (grey 70) whose
    mask holds 7, no class; d, not an image; e, a copy of a's pixels under another name."""
    root = folder_tree(tmp_path)
    save_image(root / "images/train/c.png", np.full((2, 3, 3), 70, np.uint8))
    save_image(root / "masks/train/c.png", np.array([[0, 7, 0], [0, 0, 0]], np.uint8))
    (root / "images/train/d.png").write_bytes(b"not a picture")
    save_image(root / "masks/train/d.png", np.zeros((2, 3), np.uint8))
    save_image(root / "images/train/e.png", np.full((2, 3, 3), 50, np.uint8))
    save_image(root / "masks/train/e.png", np.full((2, 3), 1, np.uint8))
    return root


def test_survey_counts_a_small_data_set_exactly(tmp_path: Path) -> None:
    survey = survey_dataset(folder_dataset(_broken_tree(tmp_path), "train"), workers=2)
    assert survey.frames == 5
    assert survey.sizes == {(3, 2): 4}  # d could not be read
    # Labels read without a problem: a [[road, car, person], [ignore, car, road]], b [[road,
    # car, ignore], [person, person, road]], e all car; c's and d's are problems.
    assert survey.class_pixels.tolist() == [4, 3 + 6, 3]
    assert survey.class_frames.tolist() == [2, 3, 2]
    assert survey.ignored_pixels == 2
    # Images counted: a 50, b 90 (a flat JPEG decodes exactly), c 70, e 50; 6 pixels each.
    mean = (50 + 90 + 70 + 50) / 4
    std = np.sqrt(((50 - mean) ** 2 * 2 + (90 - mean) ** 2 + (70 - mean) ** 2) / 4)
    assert survey.mean == pytest.approx((mean / 255,) * 3, abs=1e-12)
    assert survey.std == pytest.approx((std / 255,) * 3, abs=1e-12)
    assert [(Path(a).name, Path(b).name) for a, b in survey.duplicates] == [("e.png", "a.png")]
    assert len(survey.problems) == 2
    assert "masks/train/c.png: label values [7]" in survey.problems[0]
    assert "images/train/d.png: not a readable image" in survey.problems[1]
    assert not survey.stopped_early
    assert survey.to_dict()["classes"]["car"] == {
        "pixels": 9, "pixel_share": 50.0, "frames": 3, "frame_share": 60.0,
    }  # fmt: skip


def test_survey_stops_after_the_problems_asked_and_check_lists_them(tmp_path: Path) -> None:
    dataset = folder_dataset(_broken_tree(tmp_path), "train")
    survey = survey_dataset(dataset, stop_after=1, workers=1)
    assert (len(survey.problems), survey.stopped_early) == (1, True)
    assert survey.frames == 3  # a, b, then c's problem
    with pytest.raises(DatasetError, match=r"2 problems found:\n  .*c\.png.*\n  .*d\.png"):
        dataset.check()


def test_warnings_name_leaks_between_real_camvid_splits(camvid_root: Path) -> None:
    val = survey_dataset(camvid(camvid_root, "val"))
    trainval = survey_dataset(camvid(camvid_root, "trainval"))
    first, second = survey_warnings(trainval, val)
    assert first.startswith(
        "validation frames that are also training frames (the same pixels): 101 of 101 (e.g. "
    )
    assert "sequences with the training set: 0016E5 (305 training frames)" in second
    train = survey_dataset(camvid(camvid_root, "train"))
    assert survey_warnings(train, val) == [
        "the validation set shares sequences with the training set: 0016E5 (204 training "
        "frames); validation scores flatter sequences never seen (hold one out to measure those)"
    ]
    held_out = survey_dataset(camvid(camvid_root, "train", sequences=["0006R0"]))
    rest = survey_dataset(camvid(camvid_root, "train", sequences=["0001TP", "0016E5"]))
    assert survey_warnings(rest, held_out) == []
    # The data README's figures of the train split: Road 31.7% of the label pixels, mean.
    assert train.class_pixels[3] / (train.labelled_pixels + train.ignored_pixels) == (
        pytest.approx(0.317, abs=5e-4)
    )
    assert train.mean == pytest.approx((0.412, 0.425, 0.433), abs=5e-4)
    assert train.recordings == {"0001TP": 62, "0006R0": 101, "0016E5": 204}


def test_warning_for_a_class_without_training_pixels(tmp_path: Path) -> None:
    root = folder_tree(tmp_path)
    save_image(root / "images/val/v.png", np.full((2, 3, 3), 20, np.uint8))
    save_image(root / "masks/val/v.png", np.full((2, 3), 2, np.uint8))
    for stem in ("a", "b"):  # no person in training any more
        save_image(root / f"masks/train/{stem}.png", np.zeros((2, 3), np.uint8))
    train = survey_dataset(folder_dataset(root, "train"))
    val = survey_dataset(folder_dataset(root, "val"))
    assert survey_warnings(train, val) == [
        "classes without a training pixel: car, person (person labelled in validation): "
        "the model cannot learn them"
    ]


def test_spread_indices() -> None:
    assert spread_indices(10, 3) == [0, 4, 9]  # 4.5 rounds to even
    assert spread_indices(3, 8) == [0, 1, 2]
    assert spread_indices(5, 1) == [0]


def test_label_pictures_of_real_frames(camvid_root: Path, tmp_path: Path) -> None:
    dataset = camvid(camvid_root, "val")
    written = write_label_pictures(dataset, tmp_path / "val", 2)
    assert [p.name for p in written] == ["001_0016E5_07959.png", "002_0016E5_08159.png"]
    from PIL import Image

    picture = np.asarray(Image.open(written[0]))
    assert picture.shape[0] == 360 and picture.shape[1] > 480  # the frame and a legend
    image, label = dataset.load(0)
    road = label == 3
    # Road pixels: half the frame, half the Road colour (128, 64, 128), to rounding.
    expected = (image[road].astype(float) + np.array([128, 64, 128])) / 2
    assert np.abs(picture[:, :480][road] - expected).max() <= 1.0


def test_cli_reports_problems_and_figures(tmp_path: Path, capsys) -> None:
    root = _broken_tree(tmp_path)
    save_image(root / "images/val/a.png", np.full((2, 3, 3), 50, np.uint8))  # a's pixels
    save_image(root / "masks/val/a.png", np.zeros((2, 3), np.uint8))
    report = tmp_path / "out/report.json"
    status = main(
        ["data", "custom_folder_example", f"data.root={root}", "--json", str(report),
         "--show", str(tmp_path / "pictures"), "--count", "2", "--augmented"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert status == 1  # problems found
    assert "problems: 2" in out and "c.png: label values [7]" in out
    assert "are also training frames (the same pixels): 1 of 1 (e.g." in out
    assert "warning: mine train: frames that repeat the pixels of another one: 1 (e.g." in out
    car = next(line for line in out.splitlines() if line.startswith("car "))
    assert car.split() == ["car", "50.00%", "60.00%", "0.00%", "0.00%"]  # 9 of 18 label pixels
    document = json.loads(report.read_text())
    assert document["sets"]["train"]["classes"]["car"]["pixels"] == 9
    assert len(document["sets"]["train"]["problems"]) == 2
    assert len(document["warnings"]) == 2
    pictures = sorted((tmp_path / "pictures/train").glob("*.png"))  # frames 0 and 4 of 5
    assert [p.name for p in pictures] == ["001_a.png", "002_e.png"]
    assert len(list((tmp_path / "pictures/val").glob("*.png"))) == 1
    # A rerun with fewer pictures replaces the earlier set whole (they are named by rank
    # and frame: a leftover would pass for one of this run's), and only that set: the
    # user's files stay, even one named as a ranked picture.
    for name in ("notes.png", "003_holiday.png"):
        (tmp_path / "pictures/train" / name).write_bytes(b"the user's")
    argv = ["data", "custom_folder_example", f"data.root={root}", "--count", "1"]
    assert main([*argv, "--show", str(tmp_path / "pictures")]) == 1
    pictures = sorted((tmp_path / "pictures/train").glob("*.png"))
    assert [p.name for p in pictures] == ["001_a.png", "003_holiday.png", "notes.png"]


def test_cli_refuses_bad_options_in_one_line(tmp_path: Path, capsys) -> None:
    root = folder_tree(tmp_path)
    error = one_line_cli_error(capsys, ["data", "custom_folder_example", f"data.root={root}"])
    assert "validation set (data.val_split=val)" in error
    error = one_line_cli_error(capsys, ["data", "custom_folder_example", "data.rot=x"])
    assert "data.rot" in error
    (tmp_path / "taken").write_text("a file")
    error = one_line_cli_error(
        capsys, ["data", "custom_folder_example", f"data.root={root}", "--json", str(tmp_path)]
    )
    assert "is a folder" in error


def test_a_class_stored_under_the_ignore_value_is_suspected_and_nothing_labelled_refused(
    tmp_path: Path,
) -> None:
    """Masks of 0 and 200 (this classes file's ignore value) where 200 was meant as a class:
    the warning on the absent classes says how much is not labelled and why that may be.
    A training set with no labelled pixel at all stops training before it starts."""
    from ddrnet.engine.checkpointing import TrainingError
    from ddrnet.engine.steps import TrainingData, check_data

    root = folder_tree(tmp_path)
    for stem in ("a", "b"):
        save_image(
            root / f"masks/train/{stem}.png", np.array([[0, 0, 0], [200, 200, 200]], np.uint8)
        )
    train = survey_dataset(folder_dataset(root, "train"))
    (warning,) = survey_warnings(train)
    assert warning == (
        "classes without a training pixel: car, person: the model cannot learn them; 50.0% "
        "of the training label pixels are not labelled (the ignore value, or an ignore "
        "colour): if a class is stored under that value (a 0/255 mask), give it its class "
        "id, or set ignore_index in the classes file"
    )
    for stem in ("a", "b"):
        save_image(root / f"masks/train/{stem}.png", np.full((2, 3), 200, np.uint8))
    dataset = folder_dataset(root, "train")
    data = TrainingData(dataset, dataset, dataset.labels, (0.5,) * 3, (0.5,) * 3, 1)
    with pytest.raises(TrainingError, match="the training set has no labelled pixel: classes "):
        check_data(data)


def test_training_check_logs_the_warnings(camvid_root: Path, caplog) -> None:
    from ddrnet.engine.steps import TrainingData, check_data

    train = camvid(camvid_root, "train", sequences=["0016E5"])
    val = camvid(camvid_root, "val")
    data = TrainingData(train, val, train.labels, (0.5,) * 3, (0.5,) * 3, 1)
    with caplog.at_level(logging.WARNING, logger="ddrnet.engine.train"):
        check_data(data)
    assert "shares sequences with the training set: 0016E5 (204 training frames)" in caplog.text


def test_training_reads_the_labels_once(camvid_root: Path, monkeypatch) -> None:
    """With the check, class weights and rare-class sampling all on, the check's survey is the
    one read of the training labels; its per-frame counts are those a plain read gives."""
    from ddrnet.data.sampling import frame_class_pixels
    from ddrnet.engine.config import DataConfig, LossConfig
    from ddrnet.engine.steps import (
        TrainingData,
        build_criterion,
        check_data,
        rare_class_frame_weights,
    )

    train = camvid(camvid_root, "train", sequences=["0001TP"])
    expected = frame_class_pixels(train, 11)
    reads = []
    original = train.load
    monkeypatch.setattr(train, "load", lambda index: reads.append(index) or original(index))
    data = TrainingData(train, camvid(camvid_root, "val"), train.labels, (0.5,) * 3, (0.5,) * 3, 1)
    check_data(data)
    assert sorted(reads) == list(range(len(train)))
    criterion = build_criterion(LossConfig(class_weights="enet"), data, torch.device("cpu"))
    weights = rare_class_frame_weights(data, DataConfig(rare_class_sampling=1.0))
    assert sorted(reads) == list(range(len(train)))  # no second read
    np.testing.assert_array_equal(data.frame_class_pixels(), expected)
    assert expected.sum() > 0 and weights.shape == (len(train),)
    assert criterion.criterion.class_weights.shape == (11,)


def test_cityscapes_frames_are_recorded_by_city(cityscapes_root: Path) -> None:
    from ddrnet.data.cityscapes import cityscapes

    survey = survey_dataset(cityscapes(cityscapes_root, "val"))
    assert (survey.recording_kind, dict(survey.recordings)) == ("cities", {"frankfurt": 1})
    assert survey.problems == [] and survey.sizes == {(256, 128): 1}


def test_show_never_replaces_the_data_sets_own_files(tmp_path: Path, capsys) -> None:
    """``--show`` at a root whose ``train/`` holds the frames would draw over them."""
    root = folder_tree(tmp_path)
    before = (root / "images/train/a.png").read_bytes()
    error = one_line_cli_error(
        capsys, ["data", "custom_folder_example", f"data.root={root}", "data.val_split=train",
                 "--show", str(root / "images")]
    )  # fmt: skip
    assert error.endswith(
        f"--show {root / 'images' / 'train'}: the data set's own folder; choose another"
    )
    assert (root / "images/train/a.png").read_bytes() == before


def test_every_validation_frame_seen_in_training_is_counted(tmp_path: Path) -> None:
    """Two validation frames with the pixels of one training frame: both count."""
    root = folder_tree(tmp_path)
    for stem in ("v1", "v2"):
        save_image(root / f"images/val/{stem}.png", np.full((2, 3, 3), 50, np.uint8))  # a's
        save_image(root / f"masks/val/{stem}.png", np.zeros((2, 3), np.uint8))
    train = survey_dataset(folder_dataset(root, "train"))
    val = survey_dataset(folder_dataset(root, "val"))
    leak = [w for w in survey_warnings(train, val) if "also training frames" in w]
    assert len(leak) == 1 and "(the same pixels): 2 of 2" in leak[0]


def test_validation_frames_that_nearly_repeat_training_frames_are_named(
    camvid_root: Path, tmp_path: Path
) -> None:
    """A frame split off a video at random: the next moment of a training frame (here the
    training frame itself, moved 3 pixels and a little brighter) is flagged; a frame of
    another street is not, and neither are featureless (flat) frames."""
    from ddrnet.data.survey import difference_hash

    root = folder_tree(tmp_path)  # two flat training frames
    street = camvid(camvid_root, "train", sequences=["0001TP"]).load(0)[0]
    other = camvid(camvid_root, "train", sequences=["0006R0"]).load(0)[0]
    save_image(root / "images/train/street.png", street)
    save_image(root / "masks/train/street.png", np.zeros(street.shape[:2], np.uint8))
    moved = np.clip(np.roll(street, 3, axis=1).astype(np.int16) + 12, 0, 255).astype(np.uint8)
    for stem, picture in (("moved", moved), ("other", other)):
        save_image(root / f"images/val/{stem}.png", picture)
        save_image(root / f"masks/val/{stem}.png", np.zeros(picture.shape[:2], np.uint8))
    bits = int(np.bitwise_count(difference_hash(moved) ^ difference_hash(street)).sum())
    assert bits <= 32
    train = survey_dataset(folder_dataset(root, "train"))
    val = survey_dataset(folder_dataset(root, "val"))
    near = [w for w in survey_warnings(train, val) if "nearly repeat" in w]
    assert len(near) == 1 and ": 1 of 2 (e.g. " in near[0]
    assert f"moved.png ~ {root / 'images/train/street.png'}, {bits} bits" in near[0]


def test_the_report_and_pictures_never_replace_a_users_files(tmp_path: Path, capsys) -> None:
    """--json onto the classes file (or a JSON recipe) replaced it with the report; --show
    into the images' tree of a data set of recordings in sub-folders drew among its frames;
    a user's file under the name of a new picture was replaced."""
    import shutil

    import yaml

    root = folder_tree(tmp_path)
    classes = root / "classes.json"
    classes.write_text(json.dumps(yaml.safe_load((root / "classes.yaml").read_text())))
    before = classes.read_text()
    argv = ["data", "custom_folder_example", f"data.root={root}", "data.val_split=train",
            f"data.classes_file={classes}"]  # fmt: skip
    error = one_line_cli_error(capsys, [*argv, "--json", str(classes)])
    assert "is the file data.classes_file reads; writing it would replace it" in error
    assert classes.read_text() == before
    for kind in ("images", "masks"):  # frames of one recording in a folder of their own
        drive = root / kind / "train" / "drive1"
        drive.mkdir()
        for path in sorted((root / kind / "train").glob("*.*")):
            shutil.move(path, drive / path.name)
    error = one_line_cli_error(capsys, [*argv, "--show", str(root / "images")])
    assert error.endswith("the data set's own folder; choose another")
    assert sorted(p.name for p in (root / "images/train").iterdir()) == ["drive1"]
    mine = tmp_path / "pictures/train/001_a.png"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"the user's")
    error = one_line_cli_error(capsys, [*argv, "--show", str(tmp_path / "pictures")])
    assert f"{mine}: not written by an earlier run, and this one would replace it" in error
    assert mine.read_bytes() == b"the user's"
    assert sorted(p.name for p in mine.parent.iterdir()) == ["001_a.png"]


def test_a_folder_mixes_with_frames_only_among_them(tmp_path: Path) -> None:
    """`runs/` beside images/ and masks/ was refused as train.output_dir (a common layout);
    a folder among the frames, or holding them, is what must be refused."""
    from ddrnet.engine.recordings import mixes_with_frames

    root = folder_tree(tmp_path)
    dataset = folder_dataset(root, "train")
    assert not mixes_with_frames(root / "runs" / "a", dataset)
    for folder in (root / "images/train", root / "masks/train/x", root / "images", root):
        assert mixes_with_frames(folder, dataset), folder
