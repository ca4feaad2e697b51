"""A data set of your own: images and masks in two folders, classes in a YAML/JSON file.

Layout::

    <root>/images/<split>/<name>.{png,jpg,jpeg,...}  # any of ddrnet.data.io.IMAGE_SUFFIXES
    <root>/masks/<split>/<name>.png        # same name, PNG only (JPEG would alter values)

Frames may lie in sub-folders of ``images/<split>`` (a drive or a camera each), their masks
in the same sub-folders of ``masks/<split>``; the first sub-folder is then the frame's
recording (``ddrnet eval --by-recording``; ``ddrnet data`` warns when training and
validation share one).

Masks are either index PNGs (single-channel; each value a class id, ``ignore_index`` =
not labelled) or colour PNGs (RGB; each colour one class of the classes file, colours under
``ignore_colors`` not labelled). The classes file::

    classes:
      - {name: road, color: [128, 64, 128]}
      - {name: car, color: [0, 0, 142]}
    ignore_index: 255          # optional: the index-mask value meaning "not labelled"
    ignore_colors: [[0, 0, 0]] # optional: colour-mask colours meaning "not labelled"
    mean: [0.485, 0.456, 0.406]  # optional, RGB on the 0..1 scale; default ImageNet's
    std: [0.229, 0.224, 0.225]
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ddrnet.config import parse_yaml, read_text
from ddrnet.data.datasets import (
    ColourLabelDataset,
    DatasetError,
    MaskFormat,
    Recording,
    Sample,
    Transform,
    split_folder,
)
from ddrnet.data.io import IMAGE_SUFFIXES
from ddrnet.data.labels import IGNORE_INDEX, LabelSet, lookup_table
from ddrnet.errors import parse_error_summary
from ddrnet.models.metadata import IMAGENET_MEAN, IMAGENET_STD

_TOP_LEVEL_KEYS = ("classes", "ignore_index", "ignore_colors", "mean", "std")
_CLASS_KEYS = ("name", "color")


@dataclass(frozen=True)
class FolderClasses:
    """The parsed classes file: the label set a model is trained for, and how masks mark
    unlabelled pixels (a raw index value and/or colours)."""

    labels: LabelSet
    ignore_index: int
    ignore_colors: tuple[tuple[int, int, int], ...]
    source: Path


def _colour(value: Any, where: str, path: Path) -> tuple[int, int, int]:
    ok = (
        isinstance(value, (list, tuple))
        and len(value) == 3
        and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in value)
    )
    if not ok:
        raise DatasetError(f"{path}: {where} must be three integers 0..255, got {value!r}")
    return (int(value[0]), int(value[1]), int(value[2]))


def _statistics(value: Any, key: str, path: Path) -> tuple[float, float, float]:
    ok = (
        isinstance(value, (list, tuple))
        and len(value) == 3
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    )
    if not ok:
        raise DatasetError(f"{path}: {key} must be three numbers (R, G, B), got {value!r}")
    # Catch statistics on the 0..255 scale (as some frameworks write them): normalising
    # with them would silently squash every input to almost zero.
    low = 0.0 if key == "mean" else 1e-6
    if not all(low <= v <= 1.0 for v in value):
        raise DatasetError(
            f"{path}: {key} {list(value)} must be on the 0..1 scale (divide 0..255 values by 255)"
        )
    return (float(value[0]), float(value[1]), float(value[2]))


def load_classes_file(path: str | Path) -> FolderClasses:
    """Parse and validate a classes file (YAML, or JSON by its ``.json`` suffix).

    Every problem is a ``DatasetError`` naming the file and the entry: missing file, a
    folder, not UTF-8 text, unknown keys, a class without name or colour, a colour that is
    not three integers 0..255, duplicate names or colours, an ``ignore_index`` that is also
    a class id.
    """
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"classes file {path} does not exist")
    text = read_text(path, "classes file", DatasetError)
    try:
        values = json.loads(text) if path.suffix.lower() == ".json" else parse_yaml(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        summary = parse_error_summary(error)
        raise DatasetError(f"{path}: cannot parse the classes file ({summary})") from None
    if not isinstance(values, dict):
        raise DatasetError(f"{path}: the top level must be a mapping with a 'classes' list")
    unknown = sorted(set(values) - set(_TOP_LEVEL_KEYS))
    if unknown:
        raise DatasetError(f"{path}: unknown keys {unknown}; valid: {list(_TOP_LEVEL_KEYS)}")
    entries = values.get("classes")
    if not isinstance(entries, list) or not entries:
        raise DatasetError(f"{path}: 'classes' must be a non-empty list of {{name, color}}")
    # Train ids are uint8 with 255 kept for "ignore".
    if len(entries) > IGNORE_INDEX:
        raise DatasetError(f"{path}: {len(entries)} classes; at most {IGNORE_INDEX} fit")

    names, colours = _class_entries(entries, path)
    ignore_index, ignore_colours = _ignore_settings(values, names, colours, path)

    mean = _statistics(values.get("mean", IMAGENET_MEAN), "mean", path)
    std = _statistics(values.get("std", IMAGENET_STD), "std", path)
    labels = LabelSet(
        name=path.stem,
        class_names=tuple(names),
        palette=tuple(colours),
        mean=mean,
        std=std,
        extra={"classes_file": str(path)},
    )
    return FolderClasses(labels, ignore_index, tuple(dict.fromkeys(ignore_colours)), path)


def _class_entries(entries: list, path: Path) -> tuple[list[str], list[tuple[int, int, int]]]:
    """The names and colours of a classes file's ``classes`` list, each entry checked."""
    names: list[str] = []
    colours: list[tuple[int, int, int]] = []
    for index, entry in enumerate(entries):
        where = f"classes[{index}]"
        if not isinstance(entry, dict):
            raise DatasetError(f"{path}: {where} must be a mapping with name and color")
        extra = sorted(set(entry) - set(_CLASS_KEYS))
        missing = [key for key in _CLASS_KEYS if key not in entry]
        if extra or missing:
            raise DatasetError(
                f"{path}: {where} needs exactly the keys {list(_CLASS_KEYS)}; "
                f"missing {missing}, unknown {extra}"
            )
        name = entry["name"]
        if not isinstance(name, str) or not name.strip():
            raise DatasetError(f"{path}: {where}.name must be a non-empty string, got {name!r}")
        if name in names:
            raise DatasetError(f"{path}: {where}: class name {name!r} appears twice")
        colour = _colour(entry["color"], f"{where}.color", path)
        if colour in colours:
            other = names[colours.index(colour)]
            raise DatasetError(f"{path}: {where} ({name}) has the colour of {other}: {colour}")
        names.append(name)
        colours.append(colour)
    return names, colours


def _ignore_settings(
    values: dict, names: list[str], colours: list[tuple[int, int, int]], path: Path
) -> tuple[int, list[tuple[int, int, int]]]:
    """A classes file's ``ignore_index`` (default 255; above every class id) and
    ``ignore_colors`` (none of them a class colour), checked."""
    ignore_index = values.get("ignore_index", IGNORE_INDEX)
    if not isinstance(ignore_index, int) or isinstance(ignore_index, bool):
        raise DatasetError(f"{path}: ignore_index must be an integer, got {ignore_index!r}")
    if not len(names) <= ignore_index <= 255:
        raise DatasetError(
            f"{path}: ignore_index {ignore_index} must lie in {len(names)}..255: values "
            f"0..{len(names) - 1} are the class ids"
        )
    raw_ignore_colours = values.get("ignore_colors", [])
    if not isinstance(raw_ignore_colours, list):
        raise DatasetError(f"{path}: ignore_colors must be a list of [R, G, B]")
    ignore_colours = []
    for index, value in enumerate(raw_ignore_colours):
        colour = _colour(value, f"ignore_colors[{index}]", path)
        if colour in colours:
            raise DatasetError(
                f"{path}: ignore_colors[{index}] {colour} is the colour of class "
                f"{names[colours.index(colour)]}"
            )
        ignore_colours.append(colour)
    return ignore_index, ignore_colours


def folder_samples(root: str | Path, split: str) -> list[Sample]:
    """Pairs ``images/<split>/[<sub-folders>/]<name>.{png,jpg,...}`` (``IMAGE_SUFFIXES``, any
    case) with ``masks/<split>/[<sub-folders>/]<name>.png`` (``.PNG`` too), sorted by path;
    hidden files and folders are passed over.

    Raises naming the files: images without a mask, masks without an image, two images of
    the same name (``a.png`` and ``a.jpg``), links to nothing, no images at all.
    """
    root = Path(root)
    name = f"folder data set {root} split {split!r}"
    image_dir = split_folder(root, "images", split, name)
    mask_dir = split_folder(root, "masks", split, name)
    images = _files_by_stem(image_dir, IMAGE_SUFFIXES, name)
    if not images:
        raise DatasetError(f"{name}: no {'/'.join(IMAGE_SUFFIXES)} images in {image_dir}")
    masks = _files_by_stem(mask_dir, (".png",), name)
    without_mask = [str(images[stem]) for stem in images if stem not in masks]
    if without_mask:
        raise DatasetError(
            f"{name}: {len(without_mask)} images have no mask {mask_dir}/<name>.png: "
            + ", ".join(without_mask[:10])
        )
    without_image = [str(masks[stem]) for stem in masks if stem not in images]
    if without_image:
        raise DatasetError(
            f"{name}: {len(without_image)} masks have no image of the same name in "
            f"{image_dir}: " + ", ".join(without_image[:10])
        )
    return [Sample(images[stem], masks[stem]) for stem in sorted(images)]


def _files_by_stem(folder: Path, suffixes: Sequence[str], name: str) -> dict[str, Path]:
    """The files under ``folder`` (its sub-folders too) with one of ``suffixes`` in any case:
    their path relative to ``folder`` without the suffix -> path. A link to nothing, or two
    files of one stem, is a ``DatasetError``."""
    found: dict[str, Path] = {}
    for directory, folders, files in os.walk(folder, followlinks=True):
        folders[:] = sorted(f for f in folders if not f.startswith("."))
        for file_name in sorted(f for f in files if not f.startswith(".")):
            path = Path(directory) / file_name
            if path.suffix.lower() not in suffixes:
                continue
            if not path.exists():
                raise DatasetError(f"{name}: {path} is a link to a file that does not exist")
            stem = path.relative_to(folder).with_suffix("").as_posix()
            if stem in found:
                raise DatasetError(f"{name}: {found[stem]} and {path} share the name")
            found[stem] = path
    return found


@dataclass(frozen=True)
class _SubFolder:
    """A frame's recording in a folder data set: its first sub-folder under the split's
    images folder (``.`` for frames directly in it); picklable, for DataLoader workers."""

    images: Path

    def __call__(self, image: Path) -> str:
        parts = image.relative_to(self.images).parts
        return parts[0] if len(parts) > 1 else "."


def folder_dataset(
    root: str | Path,
    split: str,
    classes_file: str | Path | None = None,
    transform: Transform | None = None,
    cache: bool = False,
    mask_format: MaskFormat = "auto",
) -> ColourLabelDataset:
    """A folder data set (layout in the module docstring). ``classes_file`` defaults to
    ``<root>/classes.yaml``. ``mask_format="auto"`` reads single-channel masks as class ids
    and colour masks through the class colours; ``"index"`` or ``"colour"`` insist on one
    kind (``"colour"`` also reads palette PNGs through their palette)."""
    root = Path(root)
    classes = load_classes_file(root / "classes.yaml" if classes_file is None else classes_file)
    count = classes.labels.num_classes
    # Raw values are the index-mask values: 0..count-1 classes, ignore_index not labelled.
    # Colour masks are translated into the same values, so one table serves both kinds.
    lut = lookup_table({i: i for i in range(count)})
    valid = np.zeros(256, dtype=bool)
    valid[:count] = True
    valid[classes.ignore_index] = True
    colours = np.array(classes.labels.palette + classes.ignore_colors, dtype=np.uint8)
    values = np.array(
        list(range(count)) + [classes.ignore_index] * len(classes.ignore_colors), dtype=np.int32
    )
    samples = folder_samples(root, split)
    dataset = ColourLabelDataset(
        samples,
        classes.labels,
        lut,
        valid,
        colours,
        values,
        transform,
        cache,
        name=f"{root.name} {split}",
        mask_format=mask_format,
    )
    # Frames in sub-folders (a drive or a camera each): those are the data set's recordings.
    images = root / "images" / split
    if any(sample.image.parent != images for sample in samples):
        dataset.recording = Recording("recordings (sub-folders)", _SubFolder(images))
    return dataset
