"""``ddrnet convert``: COCO and LabelMe annotations painted into a folder data set.

Real data: CamVid's ground truth, written as COCO run-length masks, comes back pixel for
pixel. Hand-computed: polygons (COCO's half-open pixel rule), LabelMe's shapes (drawn
inclusive, as LabelMe draws them), the painting order, the class numbering across splits.
Refusals: one line naming the file or option, and nothing half written."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ddrnet.cli import main
from ddrnet.data import convert as convert_module
from ddrnet.data.convert import convert_annotations
from ddrnet.data.folder import folder_dataset, load_classes_file

from helpers import one_line_cli_error, save_image

CAMVID_NAMES = [
    "Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
    "Pedestrian", "Bicyclist",
]  # fmt: skip


def _camvid_as_coco(camvid_root: Path, count: int, path: Path) -> list[str]:
    """The first ``count`` CamVid val labels as a COCO file of compressed RLE masks, one per
    class present (CamVid's void, 11, left out); returns the frame names."""
    from pycocotools import mask as mask_utils

    document: dict = {"images": [], "annotations": []}
    document["categories"] = [{"id": i + 1, "name": n} for i, n in enumerate(CAMVID_NAMES)]
    frames = sorted((camvid_root / "val").glob("*.png"))[:count]
    for key, frame in enumerate(frames):
        label = np.array(Image.open(camvid_root / "valannot" / frame.name))
        height, width = label.shape
        document["images"].append(
            {"id": key, "file_name": frame.name, "height": height, "width": width}
        )
        for class_id in np.unique(label):
            if class_id == 11:
                continue
            region = np.asfortranarray((label == class_id).astype(np.uint8))
            rle = mask_utils.encode(region)
            rle["counts"] = rle["counts"].decode()
            document["annotations"].append(
                {
                    "id": len(document["annotations"]),
                    "image_id": key,
                    "category_id": int(class_id) + 1,
                    "segmentation": rle,
                    "area": int(region.sum()),
                    "iscrowd": 1,
                }
            )
    path.write_text(json.dumps(document))
    return [frame.name for frame in frames]


def test_camvid_ground_truth_comes_back_pixel_for_pixel(camvid_root: Path, tmp_path: Path) -> None:
    source = tmp_path / "instances.json"
    names = _camvid_as_coco(camvid_root, 3, source)
    root = tmp_path / "mine"
    result = convert_annotations(
        source, root, "val", image_folder=camvid_root / "val", background=False
    )
    assert result.images == 3 and result.class_names == tuple(CAMVID_NAMES)
    dataset = folder_dataset(root, "val")
    assert dataset.labels.class_names == tuple(CAMVID_NAMES)
    for index, name in enumerate(names):
        truth = np.array(Image.open(camvid_root / "valannot" / name))
        expected = np.where(truth == 11, 255, truth)
        image, label = dataset.load(index)
        assert np.array_equal(label, expected), name
        assert (root / "images/val" / name).read_bytes() == (
            camvid_root / "val" / name
        ).read_bytes()
    void = sum(int((np.array(Image.open(camvid_root / "valannot" / n)) == 11).sum()) for n in names)
    assert result.unlabelled_pixels == void
    assert sum(result.class_pixels) + void == 3 * 480 * 360


def _coco_file(tmp_path: Path, annotations: list, size: tuple[int, int] = (6, 8)) -> Path:
    """A COCO file of one image ``a.png`` (``size`` = height, width; the image written grey
    beside it) with categories 7 "car" and 3 "road" (listed out of id order)."""
    height, width = size
    save_image(tmp_path / "a.png", np.full((height, width, 3), 90, np.uint8))
    document = {
        "images": [{"id": 1, "file_name": "a.png", "height": height, "width": width}],
        "categories": [{"id": 7, "name": "car"}, {"id": 3, "name": "road"}],
        "annotations": [
            {"id": i, "image_id": 1, "category_id": c, "segmentation": s, "area": a}
            for i, (c, s, a) in enumerate(annotations)
        ],
    }
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(document))
    return path


def test_coco_polygons_follow_cocos_pixel_rule_and_small_regions_stay_on_top(
    tmp_path: Path,
) -> None:
    # A car (12 px: x 2..5, y 1..3, the half-open rule) listed before the road under it;
    # the road (area 48) is painted first because it is larger.
    car = [[2, 1, 6, 1, 6, 4, 2, 4]]
    road = [[0, 0, 8, 0, 8, 6, 0, 6]]
    source = _coco_file(tmp_path, [(7, car, 12), (3, road, 48)])
    result = convert_annotations(source, tmp_path / "out", "train")
    assert result.class_names == ("background", "road", "car")  # background, then id order
    mask = np.array(Image.open(tmp_path / "out/masks/train/a.png"))
    expected = np.ones((6, 8), np.uint8)
    expected[1:4, 2:6] = 2
    assert np.array_equal(mask, expected)
    assert result.class_pixels == (0, 36, 12)
    classes = load_classes_file(tmp_path / "out/classes.yaml")
    assert classes.labels.palette[0] == (0, 0, 0)  # background is black


def _labelme_file(
    folder: Path, name: str, shapes: list, embed: bool = False, size: tuple[int, int] = (6, 8)
) -> Path:
    """A LabelMe file for a grey image ``<name>.png`` of ``size`` (height, width) in
    ``folder`` (written unless ``embed``: then the image travels in imageData only)."""
    height, width = size
    pixels = np.full((height, width, 3), 40, np.uint8)
    document = {
        "shapes": shapes,
        "imagePath": f"{name}.png",
        "imageHeight": height,
        "imageWidth": width,
    }
    if embed:
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        document["imageData"] = base64.b64encode(buffer.getvalue()).decode()
    else:
        save_image(folder / f"{name}.png", pixels)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(document))
    return path


def _shape(label: str, kind: str, points: list, **extra) -> dict:
    return {"label": label, "shape_type": kind, "points": points, **extra}


def test_labelme_shapes_are_drawn_as_labelme_draws_them(tmp_path: Path) -> None:
    patch = io.BytesIO()
    Image.fromarray(np.array([[255, 0], [255, 255]], np.uint8)).save(patch, format="PNG")
    shapes = [
        _shape("wall", "polygon", [[2, 1], [6, 1], [6, 4], [2, 4]]),  # inclusive: x 2..6, y 1..4
        _shape("car", "rectangle", [[3, 2], [1, 1]]),  # corners in any order: x 1..3, y 1..2
        _shape("_background_", "rectangle", [[5, 3], [6, 4]]),  # carved back to background
        _shape("car", "mask", [[6, 0], [7, 1]], mask=base64.b64encode(patch.getvalue()).decode()),
    ]
    folder = tmp_path / "labelme"
    folder.mkdir()
    _labelme_file(folder, "f", shapes, embed=True)  # the image from imageData
    result = convert_annotations(folder, tmp_path / "out", "train")
    assert result.class_names == ("background", "car", "wall")  # labels sorted
    mask = np.array(Image.open(tmp_path / "out/masks/train/f.png"))
    expected = np.zeros((6, 8), np.uint8)
    expected[1:5, 2:7] = 2
    expected[1:3, 1:4] = 1
    expected[3:5, 5:7] = 0
    expected[0:2, 6:8] = [[1, 0], [1, 1]]
    assert np.array_equal(mask, expected)
    image = np.array(Image.open(tmp_path / "out/images/train/f.png"))
    assert image.shape == (6, 8, 3) and (image == 40).all()


def test_a_second_split_is_numbered_by_the_first_ones_classes(tmp_path: Path) -> None:
    train, val = tmp_path / "train", tmp_path / "val"
    train.mkdir()
    val.mkdir()
    point, line = _shape("tree", "point", [[15, 15]]), _shape("car", "line", [[0, 2], [29, 2]])
    _labelme_file(train, "t", [point, line], size=(30, 30))
    _labelme_file(val, "v", [_shape("tree", "rectangle", [[0, 0], [1, 1]])])
    root = tmp_path / "out"
    convert_annotations(train, root, "train", classes=["tree", "car"])
    result = convert_annotations(val, root, "val")  # only "tree": sorted alone it would be 1
    assert result.class_names == ("background", "tree", "car") and not result.wrote_classes_file
    assert np.array(Image.open(root / "masks/val/v.png"))[0, 0] == 1
    drawn = np.array(Image.open(root / "masks/train/t.png"))
    assert drawn[15, 15] == drawn[15, 19] == 1 and drawn[15, 21] == 0  # a disc of radius 5
    assert (drawn[0] == 2).all() and drawn[12, 0] == 0  # a line 10 px wide about y = 2
    _labelme_file(val, "w", [_shape("bus", "rectangle", [[0, 0], [1, 1]])])
    with pytest.raises(ValueError, match=r"w\.json: shapes\[0\]: class 'bus' is not one of"):
        convert_annotations(val, root, "test")
    assert not (root / "images/test").exists()


def test_cli_refusals_name_the_file_or_option_and_write_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    square = [[0, 0, 4, 0, 4, 4, 0, 4]]
    source = _coco_file(tmp_path, [(3, square, 16)])
    out = str(tmp_path / "out")
    assert main(["convert", str(source), "-o", out]) == 0
    capsys.readouterr()
    error = one_line_cli_error(capsys, ["convert", str(source), "-o", out])
    assert "images/train already holds files" in error
    error = one_line_cli_error(capsys, ["convert", str(source), "-o", out, "--split", "../x"])
    assert "--split must be a plain folder name" in error
    save_image(tmp_path / "a.png", np.zeros((5, 8, 3), np.uint8))
    error = one_line_cli_error(capsys, ["convert", str(source), "-o", out, "--split", "b"])
    assert "a.png: the image is 8x5 but annotated as 8x6" in error
    (tmp_path / "a.png").unlink()
    error = one_line_cli_error(capsys, ["convert", str(source), "-o", out, "--split", "b"])
    assert "coco.json: 1 of 1 images not found (a.png); point --images" in error
    (tmp_path / "other.json").write_text(json.dumps({"type": "instances"}))
    error = one_line_cli_error(
        capsys, ["convert", str(tmp_path / "other.json"), "-o", out, "--split", "c"]
    )
    assert "neither a COCO file" in error
    (tmp_path / "bad.json").write_text("{")
    error = one_line_cli_error(
        capsys, ["convert", str(tmp_path / "bad.json"), "-o", out, "--split", "c"]
    )
    assert "bad.json: not JSON (line 1, column 2" in error
    (tmp_path / "afile").write_text("x")
    error = one_line_cli_error(capsys, ["convert", str(source), "-o", f"{tmp_path}/afile/sub"])
    assert error.endswith(f"-o {tmp_path}/afile/sub: cannot create its folder ({tmp_path}/afile "
                          "is a file)")  # fmt: skip
    twice = json.loads(source.read_text())
    twice["images"].append({**twice["images"][0], "id": 99})
    (tmp_path / "twice.json").write_text(json.dumps(twice))
    save_image(tmp_path / "a.png", np.zeros((6, 8, 3), np.uint8))
    error = one_line_cli_error(
        capsys, ["convert", str(tmp_path / "twice.json"), "-o", out, "--split", "d"]
    )
    assert error.endswith("twice.json: two images named 'a.png'")  # the file named once
    assert sorted(p.name for p in (tmp_path / "out/images").iterdir()) == ["train"]


def test_a_conversion_that_fails_midway_leaves_no_half_split(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "labelme"
    folder.mkdir()
    for name in ("a", "b", "c"):
        _labelme_file(folder, name, [_shape("car", "rectangle", [[0, 0], [2, 2]])])
    written = []

    def write_then_fail(path, array, palette=None):  # the disk fills up at the second mask
        if written:
            raise OSError(28, "No space left on device", str(path))
        written.append(path)
        Path(path).write_bytes(b"")

    monkeypatch.setattr(convert_module, "write_png", write_then_fail)
    root = tmp_path / "out"
    with pytest.raises(OSError, match="No space left"):
        convert_annotations(folder, root, "train")
    assert list(root.iterdir()) == []  # no split, no classes file, no staging folder
    monkeypatch.undo()
    result = convert_annotations(folder, root, "train")
    assert result.images == 3 and len(list((root / "masks/train").iterdir())) == 3


def test_images_of_one_name_in_two_folders_keep_their_folder_in_the_name(tmp_path: Path) -> None:
    for recording in ("seq1", "seq2"):
        folder = tmp_path / "labelme" / recording
        folder.mkdir(parents=True)
        _labelme_file(folder, "0001", [_shape("car", "rectangle", [[0, 0], [2, 2]])])
    convert_annotations(tmp_path / "labelme", tmp_path / "out", "train")
    assert sorted(p.name for p in (tmp_path / "out/images/train").iterdir()) == [
        "seq1_0001.png",
        "seq2_0001.png",
    ]
    assert len(folder_dataset(tmp_path / "out", "train")) == 2


@pytest.mark.parametrize(
    ("segmentation", "message"),
    [
        ([[10, 10, float("nan"), 10, 30, 30]], "coordinates must be finite numbers"),
        ([[10, 10, 1e10, 10, 30, 30]], "coordinates must be finite numbers"),
        ({"size": [6, 8], "counts": [10, 20]}, "adding up to 6 x 8 pixels"),  # too short
        ({"size": [6, 8], "counts": [50, -2]}, "adding up to 6 x 8 pixels"),
        ({"size": [6, 8], "counts": [47.5, 0.5]}, "adding up to 6 x 8 pixels"),
        ({"size": [6, 8], "counts": "zzzzzzzz"}, "adding up to 6 x 8 pixels"),
        ({"size": [6, 8], "counts": "!!garbage~~"}, "adding up to 6 x 8 pixels"),
        ({"size": [6, True], "counts": [48]}, "an RLE needs size [height, width]"),
    ],
)
def test_malformed_coco_regions_are_refused_by_name(
    tmp_path: Path, segmentation: object, message: str
) -> None:
    source = _coco_file(tmp_path, [(3, segmentation, 1)])
    with pytest.raises(ValueError, match=rf"coco\.json: annotations\[0\]: .*{re.escape(message)}"):
        convert_annotations(source, tmp_path / "out")
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_compressed_rle_strings_decode_as_pycocotools_encodes() -> None:
    from pycocotools import mask as mask_utils

    from ddrnet.data.annotations import decode_rle_string

    generator = np.random.default_rng(0)
    for _ in range(50):
        height, width = (int(v) for v in generator.integers(1, 30, 2))
        mask = (generator.random((height, width)) < generator.random()).astype(np.uint8)
        encoded = mask_utils.encode(np.asfortranarray(mask))["counts"].decode()
        counts = decode_rle_string(encoded)
        runs = np.repeat(np.arange(len(counts)) % 2, counts).reshape(width, height).T
        assert np.array_equal(runs, mask)  # column-major runs, background first
    assert decode_rle_string("0") == [0] and decode_rle_string("\x7f") is None


def test_what_the_audit_found_is_refused_or_right(tmp_path: Path) -> None:
    def coco(images: list, annotations: list) -> Path:
        document = {"images": images, "annotations": annotations}
        document["categories"] = [{"id": 1, "name": "car"}, {"id": 2, "name": "_background_"}]
        path = tmp_path / "c.json"
        path.write_text(json.dumps(document))
        return path

    save_image(tmp_path / "a.png", np.zeros((6, 8, 3), np.uint8))
    image = {"id": 1, "file_name": "a.png", "height": 6, "width": 8}
    region = {"image_id": 1, "category_id": 1, "segmentation": [[0, 0, 4, 0, 4, 4]]}
    with pytest.raises(ValueError, match=r"images\[1\]: image id 1 appears twice"):
        convert_annotations(coco([image, image], []), tmp_path / "o")
    with pytest.raises(ValueError, match=r"annotations\[0\]: no image with id \[1\]"):
        convert_annotations(coco([image], [{**region, "image_id": [1]}]), tmp_path / "o")
    # COCO's "_background_" names no class: its regions are background.
    result = convert_annotations(coco([image], [region]), tmp_path / "o")
    assert result.class_names == ("background", "car")
    # The first split's --classes, repeated for the second, are the same classes.
    again = convert_annotations(coco([image], [region]), tmp_path / "o", "val", classes=["car"])
    assert again.class_names == ("background", "car")
    (tmp_path / "p" / "masks").mkdir(parents=True)
    (tmp_path / "p" / "masks" / "train").write_text("notes")
    with pytest.raises(ValueError, match=r"masks/train is a file, where the data set needs"):
        convert_annotations(coco([image], [region]), tmp_path / "p")
    assert sorted(p.name for p in (tmp_path / "p").rglob("*")) == ["masks", "train"]


def test_what_the_audit_found_in_labelme_files(tmp_path: Path) -> None:
    folder = tmp_path / "lm"
    folder.mkdir()
    bad = {
        "shape_type": (_shape("car", "circle", [[0, 0], [1, 1]]) | {"shape_type": {"a": 1}},
                       "unknown shape_type"),
        "nan": (_shape("car", "polygon", [[0, 0], [float("nan"), 1], [2, 2]]), "finite numbers"),
        "empty": (_shape(" ", "rectangle", [[0, 0], [1, 1]]), "non-empty label"),
    }  # fmt: skip
    for name, (shape, message) in bad.items():
        path = _labelme_file(folder, name, [shape])
        with pytest.raises(ValueError, match=message):
            convert_annotations(path, tmp_path / "out")
        path.unlink()
    # A PNG carried in imageData is written as .png, whatever imagePath's suffix says.
    path = _labelme_file(folder, "x", [_shape("car", "rectangle", [[0, 0], [1, 1]])], embed=True)
    document = json.loads(path.read_text())
    path.write_text(json.dumps({**document, "imagePath": "x.jpg"}))
    convert_annotations(path, tmp_path / "out")
    assert [p.name for p in (tmp_path / "out/images/train").iterdir()] == ["x.png"]


def test_pixels_no_region_covers_get_the_background_class_wherever_its_id_is(
    tmp_path: Path,
) -> None:
    """A classes file written by hand with background last: the uncovered pixels are
    background (id 2), not id 0 (road). An image without any region is written all
    background and named in the result, as frames a tool exports unlabelled."""
    root = tmp_path / "out"
    root.mkdir()
    (root / "classes.yaml").write_text(
        "classes:\n  - {name: road, color: [128, 64, 128]}\n  - {name: car, color: [0, 0, 142]}\n"
        "  - {name: background, color: [0, 0, 0]}\n"
    )
    source = _coco_file(tmp_path, [(7, [[2, 1, 6, 1, 6, 4, 2, 4]], 12)])
    document = json.loads(source.read_text())
    document["images"].append({"id": 2, "file_name": "b.png", "height": 6, "width": 8})
    save_image(tmp_path / "b.png", np.full((6, 8, 3), 90, np.uint8))
    source.write_text(json.dumps(document))
    result = convert_annotations(source, root, "train")
    mask = np.array(Image.open(root / "masks/train/a.png"))
    assert sorted(np.unique(mask).tolist()) == [1, 2] and (mask == 1).sum() == 12
    assert (np.array(Image.open(root / "masks/train/b.png")) == 2).all()
    assert result.unannotated == ("b.png",)


def test_a_no_background_split_beside_a_black_background_class_reads_as_not_labelled(
    tmp_path: Path,
) -> None:
    """Its masks' value 255 (not labelled) has the palette padding's black, which is the
    background class's colour: the loader must not read the mask through its palette."""
    root = tmp_path / "out"
    (tmp_path / "t").mkdir()
    (tmp_path / "v").mkdir()
    _labelme_file(tmp_path / "t", "t", [_shape("car", "rectangle", [[0, 0], [1, 1]])])
    _labelme_file(tmp_path / "v", "v", [_shape("car", "rectangle", [[0, 0], [1, 1]])])
    convert_annotations(tmp_path / "t", root, "train")
    convert_annotations(tmp_path / "v", root, "val", background=False)
    label = folder_dataset(root, "val").load(0)[1]
    assert (label[:2, :2] == 1).all() and (label[2:] == 255).all()


def test_regions_without_area_are_painted_by_their_drawn_size_and_paths_by_any_slash(
    tmp_path: Path,
) -> None:
    """COCO's area is optional: a small car listed before the road under it stays on top
    when neither gives one. Exports made on Windows write backslashes in their paths."""
    car = [[2, 1, 6, 1, 6, 4, 2, 4]]
    road = [[0, 0, 8, 0, 8, 6, 0, 6]]
    source = _coco_file(tmp_path, [(7, car, None), (3, road, None)])
    document = json.loads(source.read_text())
    for annotation in document["annotations"]:
        del annotation["area"]
    (tmp_path / "seq").mkdir()
    (tmp_path / "a.png").rename(tmp_path / "seq/a.png")
    document["images"][0]["file_name"] = "seq\\a.png"
    source.write_text(json.dumps(document))
    result = convert_annotations(source, tmp_path / "out", "train")
    assert result.class_pixels == (0, 36, 12)
    labelme = tmp_path / "labelme" / "ann"
    labelme.mkdir(parents=True)
    path = _labelme_file(labelme, "f", [_shape("car", "rectangle", [[0, 0], [1, 1]])])
    (labelme / "f.png").rename(tmp_path / "labelme/f.png")
    document = json.loads(path.read_text())
    document["imagePath"] = "..\\f.png"
    path.write_text(json.dumps(document))
    convert_annotations(labelme, tmp_path / "out2", "train")
    assert [p.name for p in (tmp_path / "out2/images/train").iterdir()] == ["f.png"]


def test_two_coco_images_found_as_one_file_are_refused(tmp_path: Path) -> None:
    """seq1/0001.png and seq2/0001.png with --images pointing into seq1: both were found by
    their bare name as the same file, and seq2's regions painted on seq1's frame."""
    folder = tmp_path / "images" / "seq1"
    save_image(folder / "0001.png", np.full((6, 8, 3), 90, np.uint8))
    document = {
        "images": [
            {"id": 1, "file_name": "seq1/0001.png", "height": 6, "width": 8},
            {"id": 2, "file_name": "seq2/0001.png", "height": 6, "width": 8},
        ],
        "categories": [{"id": 1, "name": "car"}],
        "annotations": [],
    }
    source = tmp_path / "coco.json"
    source.write_text(json.dumps(document))
    with pytest.raises(ValueError, match=r"'seq1/0001.png' and 'seq2/0001.png' are both found"):
        convert_annotations(source, tmp_path / "out", "train", image_folder=folder)


def test_roboflows_project_category_is_no_class(tmp_path: Path) -> None:
    """Roboflow's COCO export lists its project as category 0, the supercategory of the
    others, which no annotation uses: it became a class without a pixel."""
    source = _coco_file(tmp_path, [(7, [[2, 1, 6, 1, 6, 4, 2, 4]], 12)])
    document = json.loads(source.read_text())
    document["categories"] = [
        {"id": 0, "name": "streets-aB3d", "supercategory": "none"},
        {"id": 3, "name": "road", "supercategory": "streets-aB3d"},
        {"id": 7, "name": "car", "supercategory": "streets-aB3d"},
    ]
    source.write_text(json.dumps(document))
    result = convert_annotations(source, tmp_path / "out", "train")
    assert result.class_names == ("background", "road", "car")
