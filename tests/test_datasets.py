"""Data sets: Cityscapes on its real sample frame, CamVid's 32-class colour labels, ``check()``
on damaged copies of real CamVid files, every data set through ``build_dataset``, and the
bundled recipes. COCO-Stuff and folder data sets have their own files.

Expected values are written out by hand here (from the official tables), never derived from
the code under test.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddrnet.config import load_config
from ddrnet.data.build import build_dataset
from ddrnet.data.camvid import camvid
from ddrnet.data.cityscapes import cityscapes, write_cityscapes_submission
from ddrnet.data.datasets import ColourLabelDataset, DatasetError
from ddrnet.data.folder import load_classes_file
from ddrnet.data.io import read_label, read_rgb
from ddrnet.data.labels import (
    CAMVID,
    CAMVID32_CLASSES,
    CITYSCAPES,
    CITYSCAPES_LABELS,
    CITYSCAPES_LUT,
    CITYSCAPES_TRAIN_TO_LABEL_ID,
    COCO_STUFF,
    camvid32_colour_to_train_ids,
)
from ddrnet.engine.config import Config, DataConfig

from helpers import (
    check_problems,
    coco_stuff_tree,
    folder_tree,
    labelled_model,
    one_line_cli_error,
    save_image,
)

CONFIGS = Path(__file__).resolve().parents[1] / "src" / "ddrnet" / "configs"
FRAME = "frankfurt_000000_000294"

# cityscapesScripts helpers/labels.py: labelId -> trainId of the 19 evaluated classes.
CITYSCAPES_EVALUATED = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
    23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip


# --------------------------------------------------------------------------------------------
# Cityscapes
# --------------------------------------------------------------------------------------------


def _cityscapes_paths(root: Path) -> tuple[Path, Path, Path]:
    image = root / "leftImg8bit" / "val" / "frankfurt" / f"{FRAME}_leftImg8bit.png"
    gt = root / "gtFine" / "val" / "frankfurt"
    return image, gt / f"{FRAME}_gtFine_labelIds.png", gt / f"{FRAME}_gtFine_labelTrainIds.png"


def _interior(label: np.ndarray, radius: int) -> np.ndarray:
    """Pixels whose ``(2r+1)^2`` neighbourhood holds a single value (away from boundaries)."""
    padded = np.pad(label, radius, mode="edge")
    height, width = label.shape
    same = np.ones(label.shape, dtype=bool)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            same &= padded[dy : dy + height, dx : dx + width] == label
    return same


def test_cityscapes_label_table_is_the_official_one() -> None:
    assert len(CITYSCAPES_LABELS) == 35
    assert [label.id for label in CITYSCAPES_LABELS] == list(range(34)) + [-1]
    by_id = {label.id: label for label in CITYSCAPES_LABELS}
    for label_id, label in by_id.items():
        expected = CITYSCAPES_EVALUATED.get(label_id, -1 if label_id == -1 else 255)
        assert label.train_id == expected, label.name
        assert label.ignore_in_eval == (label_id not in CITYSCAPES_EVALUATED), label.name
    assert (by_id[0].name, by_id[0].color) == ("unlabeled", (0, 0, 0))
    assert (by_id[7].name, by_id[7].color) == ("road", (128, 64, 128))
    assert (by_id[9].name, by_id[9].color) == ("parking", (250, 170, 160))
    assert (by_id[23].name, by_id[23].color) == ("sky", (70, 130, 180))
    assert (by_id[33].name, by_id[33].color) == ("bicycle", (119, 11, 32))
    assert (by_id[-1].name, by_id[-1].color) == ("license plate", (0, 0, 142))
    assert CITYSCAPES.class_names == (
        "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
        "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car", "truck",
        "bus", "train", "motorcycle", "bicycle",
    )  # fmt: skip
    assert CITYSCAPES.palette[0] == (128, 64, 128) and CITYSCAPES.palette[13] == (0, 0, 142)
    assert CITYSCAPES.palette[18] == (119, 11, 32)
    assert (CITYSCAPES.mean, CITYSCAPES.std) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert (CITYSCAPES.ignore_index, CITYSCAPES.num_classes) == (255, 19)


def test_cityscapes_lookup_tables_hand_values() -> None:
    expected = np.full(256, 255, dtype=np.uint8)
    for label_id, train_id in CITYSCAPES_EVALUATED.items():
        expected[label_id] = train_id
    np.testing.assert_array_equal(CITYSCAPES_LUT, expected)
    inverse = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]
    np.testing.assert_array_equal(CITYSCAPES_TRAIN_TO_LABEL_ID[:19], inverse)
    assert CITYSCAPES_TRAIN_TO_LABEL_ID[255] == 0  # no decision -> "unlabeled"
    np.testing.assert_array_equal(CITYSCAPES_LUT[CITYSCAPES_TRAIN_TO_LABEL_ID[:19]], range(19))


def test_cityscapes_loader_maps_the_real_frame_to_the_shipped_train_ids(
    cityscapes_root: Path,
) -> None:
    image_path, label_ids_path, train_ids_path = _cityscapes_paths(cityscapes_root)
    dataset = cityscapes(cityscapes_root, "val")
    assert len(dataset) == 1
    assert dataset.samples[0].image == image_path and dataset.samples[0].label == label_ids_path
    dataset.check()  # every value of a real labelIds image is legal
    image, train_ids = dataset.load(0)
    np.testing.assert_array_equal(image, read_rgb(image_path))
    label_ids = read_label(label_ids_path)
    shipped = read_label(train_ids_path)
    assert train_ids.shape == shipped.shape == (128, 256)
    # The sample's labelTrainIds image was downscaled apart from its labelIds image (its
    # instanceIds agree with labelIds everywhere, labelTrainIds differs on 77 boundary
    # pixels). So: exact equality on every pixel 2+ pixels away from a labelId boundary...
    interior = _interior(label_ids, 2)
    assert interior.sum() > 20000
    np.testing.assert_array_equal(train_ids[interior], shipped[interior])
    # ...and for each of the 14 labelIds in the frame, the table's trainId is the shipped
    # trainId of the majority of its pixels.
    present = np.unique(label_ids)
    assert present.tolist() == [1, 2, 3, 4, 7, 8, 11, 13, 17, 20, 21, 23, 24, 26]
    for label_id in present:
        values, counts = np.unique(shipped[label_ids == label_id], return_counts=True)
        assert CITYSCAPES_LUT[label_id] == values[np.argmax(counts)], label_id
    assert (train_ids != shipped).mean() < 0.005
    image_t, label_t = dataset[0]
    assert image_t.shape == (3, 128, 256) and image_t.dtype == torch.uint8
    assert label_t.dtype == torch.int64
    np.testing.assert_array_equal(label_t.numpy(), train_ids)


def test_cityscapes_submission_round_trips_the_real_frame(
    cityscapes_root: Path, tmp_path: Path
) -> None:
    image_path, label_ids_path, train_ids_path = _cityscapes_paths(cityscapes_root)
    label_ids = read_label(label_ids_path)
    train_ids = CITYSCAPES_LUT[label_ids]
    written = write_cityscapes_submission(train_ids, image_path, tmp_path / "results")
    assert written == tmp_path / "results" / f"{FRAME}_leftImg8bit.png"
    with Image.open(written) as result:
        assert result.mode == "L" and result.size == (256, 128)
        submitted = np.asarray(result)
    evaluated = train_ids != 255
    # Evaluated pixels get back their own labelId exactly; the rest become 0 ("unlabeled").
    np.testing.assert_array_equal(submitted[evaluated], label_ids[evaluated])
    assert (submitted[~evaluated] == 0).all()
    np.testing.assert_array_equal(CITYSCAPES_LUT[submitted], train_ids)
    shipped = read_label(train_ids_path)
    np.testing.assert_array_equal(CITYSCAPES_LUT[CITYSCAPES_TRAIN_TO_LABEL_ID[shipped]], shipped)


def test_cityscapes_submission_rejects_unusable_predictions(
    cityscapes_root: Path, tmp_path: Path
) -> None:
    image_path = _cityscapes_paths(cityscapes_root)[0]
    good = np.zeros((128, 256), dtype=np.int64)
    with pytest.raises(ValueError, match="prediction is 128x64 but .* is 256x128"):
        write_cityscapes_submission(np.zeros((64, 128), np.uint8), image_path, tmp_path)
    bad_value = good.copy()
    bad_value[5, 5] = 19
    with pytest.raises(ValueError, match=r"values \[19\]"):
        write_cityscapes_submission(bad_value, image_path, tmp_path)
    with pytest.raises(ValueError, match="integer array"):
        write_cityscapes_submission(good.astype(np.float32), image_path, tmp_path)
    with pytest.raises(ValueError, match="<city>_<seq>_<frame>"):
        write_cityscapes_submission(good, tmp_path / "picture.png", tmp_path)
    assert not list(tmp_path.glob("*.png"))
    # Results take the images' names: written into the images' own folder, one would
    # replace its photo (a copy here: the check must hold before anything is written).
    copy = _cityscapes_copy(cityscapes_root, tmp_path, [FRAME])
    own = copy / "leftImg8bit/val/frankfurt" / f"{FRAME}_leftImg8bit.png"
    photo = own.read_bytes()
    with pytest.raises(ValueError, match="which its result would replace"):
        write_cityscapes_submission(good, own, own.parent)
    assert own.read_bytes() == photo


def test_eval_refuses_a_submission_into_the_images_folder(
    cityscapes_root: Path, tmp_path: Path, capsys
) -> None:
    from ddrnet.models import save_model

    copy = _cityscapes_copy(cityscapes_root, tmp_path, [FRAME])
    own = copy / "leftImg8bit/val/frankfurt"
    photo = (own / f"{FRAME}_leftImg8bit.png").read_bytes()
    model = labelled_model(CITYSCAPES)
    path = save_model(model, tmp_path / "city.safetensors", model.metadata)
    argv = ["eval", str(path), "--dataset", "cityscapes", "--root", str(copy)]
    error = one_line_cli_error(capsys, [*argv, "--submission", str(own)])
    assert error.endswith(f"--submission {own}: the data set's own folder; choose another")
    assert (own / f"{FRAME}_leftImg8bit.png").read_bytes() == photo


def _cityscapes_copy(cityscapes_root: Path, tmp_path: Path, frames: list[str]) -> Path:
    image, label_ids, _ = _cityscapes_paths(cityscapes_root)
    root = tmp_path / "cityscapes"
    for frame in frames:
        city_image = root / "leftImg8bit" / "val" / "frankfurt" / f"{frame}_leftImg8bit.png"
        city_label = root / "gtFine" / "val" / "frankfurt" / f"{frame}_gtFine_labelIds.png"
        city_image.parent.mkdir(parents=True, exist_ok=True)
        city_label.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(image, city_image)
        shutil.copy(label_ids, city_label)
    return root


def test_cityscapes_missing_label_names_the_image(cityscapes_root: Path, tmp_path: Path) -> None:
    root = _cityscapes_copy(cityscapes_root, tmp_path, [FRAME, "frankfurt_000000_000576"])
    (root / "gtFine/val/frankfurt/frankfurt_000000_000576_gtFine_labelIds.png").unlink()
    with pytest.raises(DatasetError, match="1 images have no label file") as error:
        cityscapes(root, "val")
    assert "frankfurt_000000_000576_leftImg8bit.png" in str(error.value)
    with pytest.raises(DatasetError, match=r"split 'train' not found.*splits there: \['val'\]"):
        cityscapes(root, "train")


def test_cityscapes_check_reports_bad_labels(cityscapes_root: Path, tmp_path: Path) -> None:
    root = _cityscapes_copy(cityscapes_root, tmp_path, [FRAME, "frankfurt_000000_000576"])
    gt = root / "gtFine" / "val" / "frankfurt"
    value_label = gt / f"{FRAME}_gtFine_labelIds.png"
    array = read_label(value_label).copy()
    array[10:12, 10:12] = 40  # labelIds stop at 33
    save_image(value_label, array)
    small_label = gt / "frankfurt_000000_000576_gtFine_labelIds.png"
    with Image.open(small_label) as label:
        label.resize((128, 64), Image.NEAREST).save(small_label)
    report = check_problems(cityscapes(root, "val"))
    assert "2 problems found" in report
    assert f"{value_label}: label values [40] are not classes of Cityscapes val" in report
    assert "(valid: 0..33)" in report
    assert f"{small_label}: label is 128x64 but image" in report and "256x128 (WxH)" in report


# --------------------------------------------------------------------------------------------
# CamVid, 32 original colour-coded classes
# --------------------------------------------------------------------------------------------

# The SegNet grouping, written by 11-class name.
CAMVID_GROUPS = {
    "Sky": ["Sky"],
    "Building": ["Archway", "Bridge", "Building", "Tunnel", "Wall"],
    "Pole": ["Column_Pole", "TrafficCone"],
    "Road": ["Road", "LaneMkgsDriv", "LaneMkgsNonDriv"],
    "Pavement": ["Sidewalk", "ParkingBlock", "RoadShoulder"],
    "Tree": ["Tree", "VegetationMisc"],
    "SignSymbol": ["SignSymbol", "Misc_Text", "TrafficLight"],
    "Fence": ["Fence"],
    "Car": ["Car", "SUVPickupTruck", "Truck_Bus", "Train", "OtherMoving"],
    "Pedestrian": ["Pedestrian", "Child", "CartLuggagePram", "Animal"],
    "Bicyclist": ["Bicyclist", "MotorcycleScooter"],
}
# Pixels of known colour (label_colors.txt of the CamVid release) and their 11-class id.
CAMVID_PIXELS = [
    ((128, 128, 128), 0),  # Sky
    ((192, 0, 128), 1),  # Archway
    ((64, 192, 0), 1),  # Wall
    ((0, 0, 64), 2),  # TrafficCone
    ((192, 0, 64), 3),  # LaneMkgsNonDriv
    ((128, 128, 192), 4),  # RoadShoulder
    ((192, 192, 0), 5),  # VegetationMisc
    ((0, 64, 64), 6),  # TrafficLight
    ((64, 64, 128), 7),  # Fence
    ((128, 64, 64), 8),  # OtherMoving
    ((64, 128, 64), 9),  # Animal
    ((192, 0, 192), 10),  # MotorcycleScooter
    ((0, 0, 0), 255),  # Void
    ((1, 2, 3), 255),  # not a CamVid colour
    ((128, 64, 129), 255),  # one off Road's colour
]


def test_camvid32_table_and_grouping() -> None:
    assert len(CAMVID32_CLASSES) == 32
    assert len({c.color for c in CAMVID32_CLASSES}) == 32
    grouped = {c.name: c.train_id for c in CAMVID32_CLASSES}
    expected = {"Void": 255}
    for target, members in CAMVID_GROUPS.items():
        expected.update({member: CAMVID.class_names.index(target) for member in members})
    assert grouped == expected
    colours = {c.name: c.color for c in CAMVID32_CLASSES}
    assert colours["Road"] == (128, 64, 128) and colours["Sidewalk"] == (0, 0, 192)
    assert colours["SUVPickupTruck"] == (64, 128, 192) and colours["Void"] == (0, 0, 0)


def test_camvid32_colour_to_train_ids_exact() -> None:
    rgb = np.array([[colour for colour, _ in CAMVID_PIXELS]] * 2, dtype=np.uint8)  # (2, 15, 3)
    expected = np.array([[train_id for _, train_id in CAMVID_PIXELS]] * 2, dtype=np.uint8)
    result = camvid32_colour_to_train_ids(rgb)
    assert result.dtype == np.uint8 and result.shape == (2, 15)
    np.testing.assert_array_equal(result, expected)
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        camvid32_colour_to_train_ids(rgb[..., 0])
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        camvid32_colour_to_train_ids(rgb.astype(np.int32))


def _camvid_frames(camvid_root: Path, count: int) -> list[str]:
    lines = (camvid_root / "train.txt").read_text().split("\n")
    return [Path(line.split()[0]).stem for line in lines[:count]]


def _camvid_original(camvid_root: Path, tmp_path: Path, frames: list[str]) -> Path:
    """Original-release layout: real CamVid images, synthetic colour labels of 12 vertical
    bands (40 pixels wide) in the first 12 colours of CAMVID_PIXELS."""
    root = tmp_path / "camvid_original"
    band_colours = np.array([colour for colour, _ in CAMVID_PIXELS[:12]], dtype=np.uint8)
    label = np.repeat(band_colours, 40, axis=0)[None].repeat(360, axis=0)  # (360, 480, 3)
    for frame in frames:
        (root / "701_StillsRaw_full").mkdir(parents=True, exist_ok=True)
        shutil.copy(camvid_root / "train" / f"{frame}.png", root / "701_StillsRaw_full")
        save_image(root / "LabeledApproved_full" / f"{frame}_L.png", label)
    return root


def test_camvid_original_layout_loads_colour_labels(camvid_root: Path, tmp_path: Path) -> None:
    frames = _camvid_frames(camvid_root, 2)
    root = _camvid_original(camvid_root, tmp_path, frames)
    # SegNet's own list line works as a split list: only the frame name is used.
    (root / "train.txt").write_text(
        f"/SegNet/CamVid/train/{frames[1]}.png /SegNet/CamVid/trainannot/{frames[1]}.png\n"
    )
    everything = camvid(root, "all")
    assert isinstance(everything, ColourLabelDataset)  # layout detected from the folders
    assert [s.image.stem for s in everything.samples] == frames
    train = camvid(root, "train")
    assert [s.label.name for s in train.samples] == [f"{frames[1]}_L.png"]
    train.check()
    image, label = train.load(0)
    np.testing.assert_array_equal(image, read_rgb(camvid_root / "train" / f"{frames[1]}.png"))
    expected_row = np.repeat([train_id for _, train_id in CAMVID_PIXELS[:12]], 40)
    assert label.shape == (360, 480)
    np.testing.assert_array_equal(label, np.broadcast_to(expected_row, (360, 480)))
    assert train.labels is CAMVID
    with pytest.raises(DatasetError, match="no list file .*val.txt"):
        camvid(root, "val")


def test_camvid_original_check_names_unknown_colours(camvid_root: Path, tmp_path: Path) -> None:
    frames = _camvid_frames(camvid_root, 2)
    root = _camvid_original(camvid_root, tmp_path, frames)
    broken = root / "LabeledApproved_full" / f"{frames[0]}_L.png"
    label = np.asarray(Image.open(broken)).copy()
    label[0:3, 0:2] = (1, 2, 3)  # 6 pixels
    label[100, 100] = (128, 64, 129)
    save_image(broken, label)
    dataset = camvid(root, "all")
    report = check_problems(dataset)
    assert "1 problems found" in report
    assert f"{broken}: 7 pixels have colours that are no class of" in report
    assert "(1, 2, 3), (128, 64, 129)" in report
    with pytest.raises(DatasetError, match="7 pixels have colours"):
        dataset.load(0)


# --------------------------------------------------------------------------------------------
# check() on damaged copies of real CamVid files
# --------------------------------------------------------------------------------------------


def _camvid_copy(camvid_root: Path, tmp_path: Path, count: int) -> tuple[Path, list[str]]:
    root = tmp_path / "camvid"
    (root / "train").mkdir(parents=True)
    (root / "trainannot").mkdir()
    frames = _camvid_frames(camvid_root, count)
    for frame in frames:
        shutil.copy(camvid_root / "train" / f"{frame}.png", root / "train")
        shutil.copy(camvid_root / "trainannot" / f"{frame}.png", root / "trainannot")
    return root, frames


def test_check_reports_every_damaged_camvid_file_by_name(camvid_root: Path, tmp_path: Path) -> None:
    root, frames = _camvid_copy(camvid_root, tmp_path, 6)
    camvid(root, "train").check()  # the untouched copies are clean
    label = {frame: root / "trainannot" / f"{frame}.png" for frame in frames}
    image = {frame: root / "train" / f"{frame}.png" for frame in frames}
    truncated, resized, value77, text, deleted, clean = frames
    data = label[truncated].read_bytes()
    label[truncated].write_bytes(data[: len(data) // 2])
    with Image.open(label[resized]) as original:
        original.resize((240, 180), Image.NEAREST).save(label[resized])
    values = read_label(label[value77]).copy()
    values[100:110, 200:210] = 77
    save_image(label[value77], values)
    image[text].write_text("not an image, just text\n")
    dataset = camvid(root, "train")  # every file exists at this point
    label[deleted].unlink()
    report = check_problems(dataset)
    assert "CamVid train: 5 problems found" in report
    assert f"{label[truncated]}: not a readable image" in report
    assert f"{label[resized]}: label is 240x180 but image {resized}.png is 480x360" in report
    assert f"{label[value77]}: label values [77] are not classes of CamVid train" in report
    assert "(valid: 0..11)" in report
    assert f"{image[text]}: not a readable image" in report
    assert f"{label[deleted]}: no such file" in report
    assert clean not in report
    with pytest.raises(DatasetError, match="1 listed files are missing") as error:
        camvid(root, "train")
    assert str(label[deleted]) in str(error.value)


# --------------------------------------------------------------------------------------------
# build_dataset and the bundled recipes
# --------------------------------------------------------------------------------------------


def test_build_dataset_knows_every_data_set(
    cityscapes_root: Path, camvid_root: Path, tmp_path: Path
) -> None:
    cases = {
        "cityscapes": (str(cityscapes_root), "val", CITYSCAPES),
        "coco_stuff": (str(coco_stuff_tree(tmp_path, {"1": np.zeros((4, 4))})), "val2017",
                       COCO_STUFF),
        "folder": (str(folder_tree(tmp_path)), "train", None),
        "camvid": (str(_camvid_original(camvid_root, tmp_path, _camvid_frames(camvid_root, 1))),
                   "all", CAMVID),
    }  # fmt: skip
    for name, (root, split, labels) in cases.items():
        config = DataConfig(dataset=name, root=root, cache_images=False)
        dataset = build_dataset(config, split, train=False)
        if labels is not None:
            assert dataset.labels is labels, name
        else:
            assert dataset.labels.class_names == ("road", "car", "person")
        dataset.check()
    config = DataConfig(
        dataset="cityscapes", root=str(cityscapes_root), crop_size=(64, 96), cache_images=True
    )
    image, label = build_dataset(config, "val", train=True)[0]
    assert image.shape == (3, 64, 96) and label.shape == (64, 96)


def test_every_bundled_recipe_loads() -> None:
    recipes = sorted(CONFIGS.glob("*.yaml"))
    assert {p.stem for p in recipes} >= {
        "camvid_ddrnet23_slim",
        "cityscapes_ddrnet23_slim",
        "cityscapes_ddrnet23",
        "cityscapes_ddrnet39",
        "coco_stuff_ddrnet23",
        "custom_folder_example",
    }
    configs = {p.stem: load_config(Config, p) for p in recipes}
    paper = configs["cityscapes_ddrnet39"]
    assert paper.model.name == "ddrnet_39" and paper.data.dataset == "cityscapes"
    assert paper.data.crop_size == (1024, 1024) and paper.data.base_size == (1024, 2048)
    assert paper.data.scale_range == (0.5, 2.0) and paper.data.batch_size * 4 == 12
    assert (paper.train.epochs, paper.train.amp, paper.eval.every_epochs) == (484, "auto", 10)
    assert (paper.optim.optimizer, paper.optim.lr, paper.optim.momentum) == ("sgd", 0.01, 0.9)
    assert (paper.optim.weight_decay, paper.optim.poly_power) == (0.0005, 0.9)
    assert (paper.loss.ohem, paper.loss.ohem_threshold, paper.loss.ohem_min_kept) == (
        True,
        0.9,
        131072,
    )
    assert paper.loss.aux_weight == 0.4
    for name in ("cityscapes_ddrnet23_slim", "cityscapes_ddrnet23"):
        assert configs[name].data == paper.data and configs[name].optim == paper.optim
    camvid = configs["camvid_ddrnet23_slim"]  # the final model's recipe: train + val, 300 epochs
    assert (camvid.data.train_split, camvid.train.epochs, camvid.loss.label_stride) == (
        "trainval",
        300,
        2,
    )
    assert camvid.train.ema_decay == 0.999
    coco = configs["coco_stuff_ddrnet23"]
    assert (coco.data.dataset, coco.data.crop_size) == ("coco_stuff", (640, 640))
    assert configs["custom_folder_example"].data.dataset == "folder"


def test_example_classes_file_is_valid() -> None:
    classes = load_classes_file(CONFIGS / "classes" / "custom_example.yaml")
    assert classes.labels.class_names[0] == "road" and classes.labels.num_classes == 7
    assert classes.ignore_colors == ((0, 0, 0),) and classes.ignore_index == 255


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_a_photo_stored_sideways_with_exif_orientation_is_read_upright(
    camvid_frames, tmp_path, suffix
) -> None:
    """A phone's portrait photo is stored turned, with EXIF Orientation 6 ("turn a quarter
    clockwise to view"): it is read, sized and served as viewers and labelling tools show it,
    so that labels drawn on that view fit it."""
    from ddrnet.data.io import image_size
    from ddrnet.serve import decode_image

    frame = read_rgb(camvid_frames[0])  # (360, 480, 3), upright
    path = tmp_path / f"phone{suffix}"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.rot90(frame)).save(path, exif=exif, quality=100)  # stored 480 high
    assert Image.open(path).size == (360, 480)
    assert image_size(path) == (480, 360)
    read = read_rgb(path)
    assert read.shape == (360, 480, 3)
    tolerance = 0 if suffix == ".png" else 8  # JPEG's rounding, at quality 100
    assert np.abs(read.astype(int) - frame).mean() <= tolerance
    assert np.array_equal(decode_image(path.read_bytes()), read)
