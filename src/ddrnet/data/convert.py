"""Annotations from a labelling tool (COCO or LabelMe JSON) as a folder data set.

``convert_annotations`` writes one split of the layout ``ddrnet.data.folder`` reads::

    <root>/images/<split>/<name>   # the images, copied byte for byte
    <root>/masks/<split>/<stem>.png  # class ids with the class colours as palette
    <root>/classes.yaml            # names and colours; written by the first split

Each image's regions are painted in order (later on top; ``ddrnet.data.annotations`` says
which order each format has). Pixels no region covers are the class ``background`` (id 0), or,
with ``background=False``, not labelled (255, ignored in training and scoring). A second split
(``val`` after ``train``) is converted against the ``classes.yaml`` already there, so both
splits number the classes alike; a class it lacks is an error, never a silent renumbering.

A split is written into ``<root>/.convert-<split>.partial`` and moved into place at the end: a
run that is killed or fails leaves no half split, and nothing already in ``<root>`` is
overwritten (a split folder holding files is refused).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ddrnet.atomic import atomic_copy, atomic_write, atomic_write_text
from ddrnet.config import read_json
from ddrnet.data.annotations import (
    LABELME_BACKGROUND,
    AnnotatedImage,
    coco_images,
    labelme_image,
    labelme_labels,
    read_labelme_folder,
)
from ddrnet.data.datasets import DatasetError
from ddrnet.data.folder import load_classes_file
from ddrnet.data.io import IMAGE_SUFFIXES, image_size, write_png
from ddrnet.data.labels import IGNORE_INDEX
from ddrnet.errors import MissingFileError, UsageError
from ddrnet.models.metadata import distinct_palette

BACKGROUND = "background"  # the class of the pixels no region covers
CLASSES_FILE = "classes.yaml"  # the name ddrnet.data.folder looks for under the root


@dataclass(frozen=True)
class Conversion:
    """What ``convert_annotations`` wrote: ``class_pixels[i]`` pixels of class i over all
    masks, ``unlabelled_pixels`` of 255; ``skipped`` names the images left out (no region,
    with no background class), ``unannotated`` those written all background (no region:
    frames a labelling tool exports though nobody labelled them)."""

    root: Path
    split: str
    images: int
    class_names: tuple[str, ...]
    class_pixels: tuple[int, ...]
    unlabelled_pixels: int
    skipped: tuple[str, ...]
    classes_file: Path
    wrote_classes_file: bool
    unannotated: tuple[str, ...] = ()


def read_annotations(
    source: Path, image_folder: Path | None = None
) -> tuple[str, list[str], list[AnnotatedImage]]:
    """The format (``"coco"`` or ``"labelme"``), class names and annotated images of a COCO
    file, a LabelMe file or a folder of LabelMe files (told apart by their content).
    ``image_folder`` (COCO only) is where the images are; default: the COCO file's folder."""
    if not source.exists():
        raise MissingFileError(f"{source} does not exist")
    document = None if source.is_dir() else read_json(source, "annotation file", DatasetError)
    labelme_file = isinstance(document, dict) and "shapes" in document
    if image_folder is not None and (document is None or labelme_file):
        raise UsageError("--images is for COCO files; LabelMe files name their own image")
    if document is None:
        return ("labelme", *read_labelme_folder(source))
    if labelme_file:
        image = labelme_image(document, source)
        return "labelme", labelme_labels([image]), [image]
    if isinstance(document, dict) and "images" in document:
        if image_folder is not None and not image_folder.is_dir():
            raise MissingFileError(f"--images: {image_folder} is not a folder")
        return ("coco", *coco_images(document, source, image_folder or source.parent))
    raise DatasetError(
        f"{source}: neither a COCO file (images, annotations, categories) nor a LabelMe file "
        "(shapes)"
    )


def class_list(
    found: Sequence[str],
    images: Sequence[AnnotatedImage],
    existing: Sequence[str] | None,
    wanted: Sequence[str] | None,
    background: bool,
) -> list[str]:
    """The classes in id order: an existing classes file's, else ``wanted`` (the user's
    order), else the ones found; ``background`` first when pixels without a region are a
    class. Every region's label must be one of them (the first image using another is named).
    """
    # "background" (with a background class) and LabelMe's "_background_" name no class of
    # their own: their regions are painted as background.
    implied = {BACKGROUND, LABELME_BACKGROUND} if background else {LABELME_BACKGROUND}
    chosen = [name for name in (wanted if wanted is not None else found) if name not in implied]
    if len(set(chosen)) != len(chosen):
        raise UsageError(f"--classes names a class twice: {list(wanted or [])}")
    names = ([BACKGROUND] if background else []) + chosen
    if existing is not None:
        if wanted is not None and names != list(existing):
            raise UsageError(
                f"--classes {list(wanted)} differ from the classes file's {list(existing)}"
            )
        names = list(existing)
        if background and BACKGROUND not in names:
            raise UsageError(
                f"the classes file has no class {BACKGROUND!r}: convert with --no-background"
            )
    if len(names) > IGNORE_INDEX:
        raise DatasetError(f"{len(names)} classes; at most {IGNORE_INDEX} fit in a mask")
    known = set(names) | {LABELME_BACKGROUND}
    for image in images:
        for region in image.regions:
            if region.label not in known:
                raise DatasetError(
                    f"{image.source}: {region.where}: class {region.label!r} is not one of {names}"
                )
    return names


def output_names(images: Sequence[AnnotatedImage]) -> list[str]:
    """The file names the images get: their own, or their folders and name joined by ``_``
    when two images share a name (``seq1/0001.png`` -> ``seq1_0001.png``); names must keep
    an image suffix and stay distinct by stem (masks are ``<stem>.png``)."""
    names = [Path(image.name).name for image in images]
    if len({Path(name).stem for name in names}) != len(names):
        names = [
            "_".join(part for part in Path(image.name).parts if part not in ("", ".", "..", "/"))
            for image in images
        ]
    seen: dict[str, AnnotatedImage] = {}
    for name, image in zip(names, images, strict=True):
        if Path(name).suffix.lower() not in IMAGE_SUFFIXES:
            raise DatasetError(f"{image.source}: image {image.name!r} has no image suffix")
        if name.startswith("."):  # a hidden file, which the folder data set passes over
            raise DatasetError(f"{image.source}: image {image.name!r}: a name starting with '.'")
        stem = Path(name).stem
        if stem in seen:
            where = {str(seen[stem].source): None, str(image.source): None}  # each file once
            raise DatasetError(f"{' and '.join(where)}: two images named {image.name!r}")
        seen[stem] = image
    return names


def paint(image: AnnotatedImage, ids: dict[str, int], fill: int) -> np.ndarray:
    """The ``(H, W)`` uint8 class-id mask of an image: ``fill`` where no region lies, each
    region's id where it does, later regions over earlier ones."""
    label = np.full((image.height, image.width), fill, dtype=np.uint8)
    for region in image.regions:
        label[region.mask(image.height, image.width)] = ids[region.label]
    return label


def _check_image(image: AnnotatedImage) -> None:
    """An image file must be of the annotated size (labels drawn for another size would lie
    about every pixel); an embedded one was checked when it was read."""
    if image.image is None:
        return
    width, height = image_size(image.image)
    if (height, width) != (image.height, image.width):
        raise DatasetError(
            f"{image.image}: the image is {width}x{height} but annotated as "
            f"{image.width}x{image.height}"
        )


def _missing_images(images: Sequence[AnnotatedImage], coco: bool) -> None:
    missing = [image for image in images if image.image is None and image.image_bytes is None]
    if missing:
        listed = ", ".join(image.name for image in missing[:5])
        hint = (
            "point --images at their folder"
            if coco
            else "imagePath is read relative to the .json file, and there is no imageData"
        )
        raise DatasetError(
            f"{missing[0].source}: {len(missing)} of {len(images)} images not found ({listed}"
            f"{', ...' if len(missing) > 5 else ''}); {hint}"
        )


def _empty_split(root: Path, split: str) -> None:
    """Refuse a split name that is no plain folder name, and split folders that hold files
    or where a file is in the way."""
    if not re.fullmatch(r"[\w.-]+", split) or split in (".", ".."):
        raise UsageError(
            f"--split must be a plain folder name (letters, digits, . _ -), got {split!r}"
        )
    for folder in (
        root,
        root / "images",
        root / "masks",
        root / "images" / split,
        root / "masks" / split,
    ):
        if folder.exists() and not folder.is_dir():
            raise UsageError(f"{folder} is a file, where the data set needs a folder")
    for kind in ("images", "masks"):
        folder = root / kind / split
        if folder.is_dir() and any(folder.iterdir()):
            raise UsageError(
                f"{folder} already holds files; convert into another --split or root "
                "(nothing is overwritten)"
            )


def classes_yaml(names: Sequence[str], palette: Sequence[tuple[int, int, int]]) -> str:
    """A classes file (``ddrnet.data.folder``'s format) in class-id order."""
    import json  # a JSON string is a valid YAML scalar, quoted where a name needs it

    lines = [
        "# Written by `ddrnet convert`: class ids in this order (the masks' values), each with",
        "# its colour (the masks' palette). 255 in a mask = not labelled. Add mean/std (RGB, 0..1;",
        "# `ddrnet data` prints the data's own) to normalise with them instead of ImageNet's.",
        "classes:",
    ]
    lines += [
        f"  - {{name: {json.dumps(name)}, color: [{r}, {g}, {b}]}}"
        for name, (r, g, b) in zip(names, palette, strict=True)
    ]
    lines.append(f"ignore_index: {IGNORE_INDEX}")
    return "\n".join(lines) + "\n"


def _write_split(
    staging: Path,
    images: Sequence[AnnotatedImage],
    file_names: Sequence[str],
    ids: dict[str, int],
    palette: Sequence[tuple[int, int, int]],
    background: bool,
    progress: bool,
) -> tuple[np.ndarray, list[str]]:
    """Each image copied to ``staging/images`` and its mask painted to ``staging/masks``;
    the pixel count of each mask value (256) and the names of the images left out."""
    counts = np.zeros(256, dtype=np.int64)
    skipped = []
    pairs = list(zip(images, file_names, strict=True))
    # Pixels no region covers: the background class's id (0 in the files convert writes,
    # anywhere in a classes file written by hand), or not labelled.
    fill = ids[BACKGROUND] if background else IGNORE_INDEX
    for image, name in tqdm(pairs, desc="convert", unit="img", disable=not progress):
        if not background and not image.regions:
            skipped.append(image.name)
            continue
        label = paint(image, ids, fill)
        counts += np.bincount(label.ravel(), minlength=256)
        write_png(staging / "masks" / f"{Path(name).stem}.png", label, palette)
        if image.image is not None:
            atomic_copy(image.image, staging / "images" / name)
        else:
            data = image.image_bytes or b""
            atomic_write(staging / "images" / name, lambda stream, data=data: stream.write(data))
    return counts, skipped


def convert_annotations(
    source: str | Path,
    root: str | Path,
    split: str = "train",
    image_folder: str | Path | None = None,
    background: bool = True,
    classes: Sequence[str] | None = None,
    progress: bool = False,
) -> Conversion:
    """Convert the annotations at ``source`` (see ``read_annotations``) into split ``split``
    of the folder data set at ``root`` (module docstring). ``classes`` fixes the class order
    of a new data set; ``background=False`` leaves pixels without a region unlabelled."""
    source, root = Path(source), Path(root)
    _empty_split(root, split)
    kind, found, images = read_annotations(
        source, None if image_folder is None else Path(image_folder)
    )
    classes_path = root / CLASSES_FILE
    existing = load_classes_file(classes_path) if classes_path.exists() else None
    names = class_list(
        found, images, None if existing is None else existing.labels.class_names, classes,
        background,
    )  # fmt: skip
    if existing is not None:
        palette = list(existing.labels.palette)
    else:
        palette = ([(0, 0, 0)] if background else []) + list(
            distinct_palette(len(names) - int(background))
        )
    ids = {name: index for index, name in enumerate(names)}
    ids[LABELME_BACKGROUND] = ids[BACKGROUND] if background else IGNORE_INDEX
    _missing_images(images, coco=kind == "coco")
    for image in images:  # every image checked (headers only) before anything is written
        _check_image(image)
    file_names = output_names(images)
    staging = root / f".convert-{split}.partial"
    if staging.exists():  # what a killed run of ours left
        shutil.rmtree(staging)
    (staging / "images").mkdir(parents=True)
    (staging / "masks").mkdir()
    try:
        counts, skipped = _write_split(
            staging, images, file_names, ids, palette, background, progress
        )
        if len(skipped) == len(images):
            raise DatasetError(f"{source}: no image has a region (without background none is kept)")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if (
        existing is None
    ):  # before the split moves in: a kill in between leaves no classes-less split
        atomic_write_text(classes_yaml(names, palette), classes_path)
    for kind in ("images", "masks"):
        target = root / kind / split
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_dir():
            target.rmdir()  # empty (checked above); rename needs the name free
        os.replace(staging / kind, target)
    staging.rmdir()
    return Conversion(
        root=root,
        split=split,
        images=len(images) - len(skipped),
        class_names=tuple(names),
        class_pixels=tuple(int(counts[i]) for i in range(len(names))),
        unlabelled_pixels=int(counts[IGNORE_INDEX]),
        skipped=tuple(skipped),
        unannotated=tuple(image.name for image in images if background and not image.regions),
        classes_file=classes_path,
        wrote_classes_file=existing is None,
    )


def split_names(root: Path) -> list[str]:
    """The splits a folder data set at ``root`` holds (``images/<split>`` folders)."""
    folder = root / "images"
    return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
