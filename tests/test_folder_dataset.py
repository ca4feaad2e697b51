"""Folder data sets (the user's own data): the classes file in YAML and JSON, index and colour
masks, and the errors that name the file and entry at fault."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ddrnet.data.datasets import DatasetError
from ddrnet.data.folder import folder_dataset, load_classes_file
from ddrnet.data.labels import IMAGENET_MEAN, IMAGENET_STD

from helpers import CLASSES_YAML, PERSON, ROAD, check_problems, folder_tree, save_image


def test_classes_file_yaml_and_json_agree(tmp_path: Path) -> None:
    yaml_file = tmp_path / "classes.yaml"
    yaml_file.write_text(CLASSES_YAML)
    json_file = tmp_path / "classes.json"
    json_file.write_text(
        json.dumps(
            {
                "classes": [
                    {"name": "road", "color": [128, 64, 128]},
                    {"name": "car", "color": [0, 0, 142]},
                    {"name": "person", "color": [220, 20, 60]},
                ],
                "ignore_index": 200,
                "ignore_colors": [[0, 0, 0]],
                "mean": [0.5, 0.4, 0.3],
                "std": [0.2, 0.25, 0.3],
            }
        )
    )
    for path in (yaml_file, json_file):
        classes = load_classes_file(path)
        assert classes.labels.class_names == ("road", "car", "person")
        assert classes.labels.palette == ((128, 64, 128), (0, 0, 142), (220, 20, 60))
        assert classes.labels.ignore_index == 255  # training ignore value stays 255
        assert (classes.ignore_index, classes.ignore_colors) == (200, ((0, 0, 0),))
        assert classes.labels.mean == (0.5, 0.4, 0.3) and classes.labels.std == (0.2, 0.25, 0.3)
    minimal = tmp_path / "minimal.yaml"
    minimal.write_text("classes:\n  - {name: a, color: [1, 2, 3]}\n")
    classes = load_classes_file(minimal)
    assert (classes.ignore_index, classes.ignore_colors) == (255, ())
    assert (classes.labels.mean, classes.labels.std) == (IMAGENET_MEAN, IMAGENET_STD)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[1, 2]", "top level must be a mapping"),
        ("classes: []", "'classes' must be a non-empty list"),
        ("classes: [{name: a, color: [1, 2, 3]}]\ncolours: 1", r"unknown keys \['colours'\]"),
        ("classes: [road]", r"classes\[0\] must be a mapping"),
        ("classes: [{name: a}]", r"classes\[0\] needs exactly .* missing \['color'\]"),
        ("classes: [{name: a, colour: [1, 2, 3]}]", r"unknown \['colour'\]"),
        ("classes: [{name: a, color: [256, 0, 0]}]", r"classes\[0\]\.color must be three"),
        ("classes: [{name: a, color: [1, 2]}]", r"classes\[0\]\.color must be three"),
        ("classes: [{name: '', color: [1, 2, 3]}]", r"classes\[0\]\.name must be a non-empty"),
        (
            "classes: [{name: a, color: [1, 2, 3]}, {name: a, color: [4, 5, 6]}]",
            "class name 'a' appears twice",
        ),
        (
            "classes: [{name: a, color: [1, 2, 3]}, {name: b, color: [1, 2, 3]}]",
            r"classes\[1\] \(b\) has the colour of a",
        ),
        (
            "classes: [{name: a, color: [1, 2, 3]}, {name: b, color: [4, 5, 6]}]\nignore_index: 1",
            "ignore_index 1 must lie in 2..255",
        ),
        (
            "classes: [{name: a, color: [1, 2, 3]}]\nignore_colors: [[1, 2, 3]]",
            r"ignore_colors\[0\] \(1, 2, 3\) is the colour of class a",
        ),
        (
            "classes: [{name: a, color: [1, 2, 3]}]\nmean: [123.7, 116.3, 103.5]",
            "must be on the 0..1 scale",
        ),
        (
            "classes: [{name: a, color: [1, 2, 3]]",
            r"cannot parse the classes file \(line 1, column 37: expected ',' or '}', "
            r"but got ']'\)",
        ),
    ],
)
def test_classes_file_errors_name_the_file_and_entry(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "bad_classes.yaml"
    path.write_text(text)
    with pytest.raises(DatasetError, match=message) as error:
        load_classes_file(path)
    assert str(error.value).startswith(f"{path}: ")


def test_classes_file_missing(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=f"classes file {tmp_path / 'nope.yaml'} does not"):
        load_classes_file(tmp_path / "nope.yaml")


def test_folder_dataset_reads_index_and_colour_masks(tmp_path: Path) -> None:
    root = folder_tree(tmp_path)
    dataset = folder_dataset(root, "train")
    assert [s.image.name for s in dataset.samples] == ["a.png", "b.jpg"]
    assert dataset.labels.class_names == ("road", "car", "person")
    dataset.check()
    np.testing.assert_array_equal(dataset.load(0)[1], [[0, 1, 2], [255, 1, 0]])
    np.testing.assert_array_equal(dataset.load(1)[1], [[0, 1, 255], [2, 2, 0]])
    index_only = folder_dataset(root, "train", root / "classes.yaml", mask_format="index")
    assert "single-channel class indices, got mode RGB" in check_problems(index_only)


def test_a_palette_mask_of_class_colours_in_its_own_order_is_read_by_colour(
    tmp_path: Path,
) -> None:
    """b's colour mask saved as a palette PNG whose entries are the class colours in another
    order (as PNG optimisers and Pillow's quantize store them): read through its palette, as
    the RGB mask was. A palette mask whose entries are the class colours in class order, or
    that uses a colour outside the table (a grey ramp), stores class ids."""
    from PIL import Image

    root = folder_tree(tmp_path)
    expected = folder_dataset(root, "train").load(1)[1]  # from the RGB mask
    indices = np.array([[3, 2, 0], [1, 1, 3]], np.uint8)  # black, car, person, road
    shuffled = Image.fromarray(indices, "P")
    shuffled.putpalette([0, 0, 0, *PERSON, 0, 0, 142, *ROAD] + [0] * (768 - 12))
    shuffled.save(root / "masks/train/b.png")
    dataset = folder_dataset(root, "train")
    dataset.check()
    np.testing.assert_array_equal(dataset.load(1)[1], expected)
    in_order = Image.fromarray(np.array([[0, 1, 2], [200, 1, 0]], np.uint8), "P")
    in_order.putpalette([*ROAD, 0, 0, 142, *PERSON] + [0] * (768 - 9))
    in_order.save(root / "masks/train/b.png")
    np.testing.assert_array_equal(
        folder_dataset(root, "train").load(1)[1], [[0, 1, 2], [255, 1, 0]]
    )
    grey = Image.fromarray(np.array([[0, 1, 2], [200, 1, 0]], np.uint8), "P")
    grey.putpalette([value for i in range(256) for value in (i, i, i)])
    grey.save(root / "masks/train/b.png")
    np.testing.assert_array_equal(
        folder_dataset(root, "train").load(1)[1], [[0, 1, 2], [255, 1, 0]]
    )


def test_frames_in_sub_folders_pair_by_path_and_are_recordings(tmp_path: Path) -> None:
    """Frames one folder down (a drive each) pair with masks of the same relative path, in
    any suffix case; the sub-folder is the frame's recording. A link to nothing is named."""
    import pickle

    from ddrnet.engine.recordings import frame_recordings

    root = folder_tree(tmp_path)
    assert folder_dataset(root, "train").recording is None  # flat: one recording, unnamed
    frame = np.full((2, 3, 3), 70, np.uint8)
    save_image(root / "images/train/drive1/a.JPG", frame)
    save_image(root / "masks/train/drive1/a.PNG", np.array([[2, 2, 2], [1, 1, 1]], np.uint8))
    save_image(root / "images/train/.thumbs/x.png", frame)  # hidden: passed over
    dataset = folder_dataset(root, "train")
    names = [s.image.relative_to(root / "images/train").as_posix() for s in dataset.samples]
    assert names == ["a.png", "b.jpg", "drive1/a.JPG"]
    np.testing.assert_array_equal(dataset.load(2)[1], [[2, 2, 2], [1, 1, 1]])
    assert frame_recordings(dataset) == [".", ".", "drive1"]
    assert pickle.loads(pickle.dumps(dataset)).recording.of(dataset.samples[2].image) == "drive1"
    (root / "images/train/drive1/gone.png").symlink_to(tmp_path / "nowhere.png")
    with pytest.raises(DatasetError, match="drive1/gone.png is a link to a file that does not"):
        folder_dataset(root, "train")


def test_folder_dataset_pairing_errors_name_the_files(tmp_path: Path) -> None:
    root = folder_tree(tmp_path)
    save_image(root / "images/train/c.jpeg", np.zeros((2, 3, 3), np.uint8))
    with pytest.raises(DatasetError, match="1 images have no mask") as error:
        folder_dataset(root, "train")
    assert str(root / "images/train/c.jpeg") in str(error.value)
    (root / "images/train/c.jpeg").unlink()
    save_image(root / "masks/train/d.png", np.zeros((2, 3), np.uint8))
    with pytest.raises(DatasetError, match="1 masks have no image") as error:
        folder_dataset(root, "train")
    assert str(root / "masks/train/d.png") in str(error.value)
    (root / "masks/train/d.png").unlink()
    save_image(root / "images/train/a.jpg", np.zeros((2, 3, 3), np.uint8))
    with pytest.raises(DatasetError, match="a.jpg and .*a.png share the name|a.png and .*a.jpg"):
        folder_dataset(root, "train")
    with pytest.raises(DatasetError, match=f"classes file {tmp_path / 'none.yaml'} does not"):
        folder_dataset(root, "train", tmp_path / "none.yaml")


def test_folder_check_reports_unknown_colours_and_values(tmp_path: Path) -> None:
    root = folder_tree(tmp_path)
    save_image(root / "masks/train/a.png", np.array([[0, 1, 2], [7, 1, 0]], np.uint8))
    colour = np.array([[ROAD, (2, 2, 2), ROAD], [(2, 2, 2), PERSON, (1, 1, 1)]], np.uint8)
    save_image(root / "masks/train/b.png", colour)
    report = check_problems(folder_dataset(root, "train"))
    assert "2 problems found" in report
    assert f"{root / 'masks/train/a.png'}: label values [7]" in report
    assert "(valid: 0..2, 200)" in report
    assert f"{root / 'masks/train/b.png'}: 3 pixels have colours" in report
    assert "(1, 1, 1), (2, 2, 2); grey colours: if this mask stores class ids" in report
    # Greys that are no class id (a wrong class colour, black void without ignore_colors)
    # are wrong colours, not ids: no hint.
    colour[0, 1] = (128, 128, 128)
    save_image(root / "masks/train/b.png", colour)
    report = check_problems(folder_dataset(root, "train"))
    assert "(1, 1, 1), (2, 2, 2), (128, 128, 128)" in report and "grey colours" not in report


def test_evaluation_checks_the_models_class_names_against_the_data_sets(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The same names in another order number the classes differently: refused. Other
    names (a renamed class) are said in a warning; case and separators do not count."""
    from ddrnet.engine.evaluation_set import evaluation_dataset
    from ddrnet.errors import UsageError
    from ddrnet.models.metadata import ModelMetadata

    root = folder_tree(tmp_path)

    def metadata(*names: str) -> ModelMetadata:
        return ModelMetadata("ddrnet_23_slim", 3, spec={}, class_names=list(names))

    def evaluate_with(*names: str) -> None:
        evaluation_dataset(metadata(*names), "train", dataset="folder", root=str(root))

    evaluate_with("Road", "car", "PERSON")
    with pytest.raises(UsageError, match="class 0 is 'car' for the model, 'road' for folder"):
        evaluate_with("car", "road", "person")
    with caplog.at_level("WARNING"):
        evaluate_with("road", "car", "pedestrian")
    assert "class 2 is 'pedestrian' for the model, 'person' for folder" in caplog.text
