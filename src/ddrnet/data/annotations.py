"""Annotations drawn in a labelling tool, read as regions of named classes per image.

Two formats cover most tools:

- **COCO JSON** (one file: ``images``, ``annotations``, ``categories``): what CVAT, Label
  Studio, Roboflow and makesense.ai export, polygons or run-length masks (RLE, also for
  ``iscrowd``). Rasterised by pycocotools, COCO's own code (``pip install 'ddrnet[convert]'``).
- **LabelMe JSON** (one file per image, ``shapes``): polygons, rectangles, circles, lines,
  line strips, points and masks, drawn as LabelMe's own ``shape_to_mask`` draws them (lines 10
  pixels wide, points as discs of radius 5) so that the labels are the ones the tool showed.

``ddrnet.data.convert`` paints these regions into class-id masks. Every problem is a
``DatasetError`` naming the file and the entry.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, UnidentifiedImageError

from ddrnet.config import read_json
from ddrnet.data.datasets import DatasetError
from ddrnet.data.io import upright_size

# LabelMe's own defaults in ``shape_to_mask`` (pixels).
LABELME_LINE_WIDTH = 10
LABELME_POINT_RADIUS = 5
# LabelMe's name for shapes that mark background (its labelme_json_to_dataset maps it to 0).
LABELME_BACKGROUND = "_background_"

Mask = Callable[[int, int], np.ndarray]  # (height, width) -> (H, W) bool


@dataclass(frozen=True)
class Region:
    """One annotated region: its class name, how to draw it (``mask(height, width)`` gives
    an ``(H, W)`` bool array) and where it came from (for error messages)."""

    label: str
    mask: Mask
    where: str


@dataclass(frozen=True)
class AnnotatedImage:
    """An image and its regions, in the order they are painted (later ones on top).

    ``image`` is the image file; ``image_bytes`` the encoded image when the annotation file
    carries it (LabelMe's ``imageData``) and the file is missing. ``name`` is the file name
    the converted data set gives the image."""

    name: str
    image: Path | None
    image_bytes: bytes | None
    height: int
    width: int
    regions: tuple[Region, ...]
    source: Path


def _mask_utils() -> Any:
    try:
        from pycocotools import mask as mask_utils
    except ImportError as error:
        raise DatasetError(
            f"reading COCO annotations needs pycocotools ({error}): pip install 'ddrnet[convert]'"
        ) from None
    return mask_utils


# --- COCO -----------------------------------------------------------------------------


def coco_categories(document: dict, path: Path) -> dict[int, str]:
    """``categories`` as ``{id: name}`` in id order; names must be distinct. Roboflow's
    project category (id 0, the supercategory of every other, used by no annotation) is left
    out."""
    categories = document.get("categories")
    if not isinstance(categories, list) or not categories:
        raise DatasetError(f"{path}: 'categories' must be a non-empty list of {{id, name}}")
    names: dict[int, str] = {}
    for index, category in enumerate(categories):
        ok = isinstance(category, dict) and _is_int(category.get("id"))
        if not ok or not isinstance(category.get("name"), str) or not category["name"].strip():
            raise DatasetError(f"{path}: categories[{index}] needs an integer id and a name")
        if category["id"] in names:
            raise DatasetError(f"{path}: category id {category['id']} appears twice")
        if category["name"] in names.values():
            raise DatasetError(f"{path}: category name {category['name']!r} appears twice")
        names[category["id"]] = category["name"]
    # Roboflow lists its project as category 0, the supercategory of all the others, which
    # no annotation uses: a class that would never have a pixel.
    used = {a.get("category_id") for a in document.get("annotations") or [] if isinstance(a, dict)}
    parents = {c.get("supercategory") for c in categories if c.get("id") != 0}
    if 0 in names and 0 not in used and len(names) > 1 and parents == {names[0]}:
        del names[0]
    return dict(sorted(names.items()))


# Coordinates, in pixels, that no image reaches: pycocotools runs out of memory or crashes on
# larger and non-finite ones.
MAX_COORDINATE = 1e6


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_coordinate(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and abs(value) <= MAX_COORDINATE
    )


def _coco_polygons(segmentation: list, where: str, path: Path) -> list[list[float]]:
    """COCO polygons (flat ``[x0, y0, x1, y1, ...]`` lists), checked."""
    valid = bool(segmentation) and all(
        isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 for p in segmentation
    )
    if not valid:
        raise DatasetError(
            f"{path}: {where}: a polygon segmentation must be lists of at least three x, y pairs"
        )
    if not all(_is_coordinate(v) for polygon in segmentation for v in polygon):
        raise DatasetError(
            f"{path}: {where}: polygon coordinates must be finite numbers within "
            f"+-{MAX_COORDINATE:g}"
        )
    return segmentation


def decode_rle_string(text: str) -> list[int] | None:
    """The run lengths of COCO's compressed RLE string (pycocotools' ``rleFrString``: each
    count in 5-bit groups offset by 48, from the third on as a difference to the count two
    before); None for a string that is not one."""
    counts: list[int] = []
    position = 0
    while position < len(text):
        value, shift, more = 0, 0, True
        while more:
            if position == len(text) or not 48 <= ord(text[position]) < 48 + 64:
                return None
            code = ord(text[position]) - 48
            value |= (code & 0x1F) << shift
            more = bool(code & 0x20)
            position, shift = position + 1, shift + 5
            if not more and code & 0x10:
                value |= -1 << shift
        counts.append(value + (counts[-2] if len(counts) > 2 else 0))
    return counts


def _rle_counts(segmentation: dict, where: str, path: Path) -> tuple[list[int], list[int]]:
    """An RLE's ``size`` ([height, width]) and run lengths, checked: non-negative integers
    that cover the mask exactly (pycocotools decodes others into memory it never set)."""
    size, counts = segmentation.get("size"), segmentation.get("counts")
    if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) and v > 0 for v in size)):
        raise DatasetError(f"{path}: {where}: an RLE needs size [height, width], got {size!r}")
    if isinstance(counts, str):
        counts = decode_rle_string(counts)
    valid = isinstance(counts, list) and all(_is_int(v) and v >= 0 for v in counts)
    if not valid or sum(counts) != size[0] * size[1]:
        raise DatasetError(
            f"{path}: {where}: RLE counts must be run lengths (non-negative integers) adding up "
            f"to {size[0]} x {size[1]} pixels"
        )
    return size, counts


def _coco_mask(segmentation: Any, where: str, path: Path) -> Mask:
    """A drawing function for a COCO ``segmentation``: polygons, uncompressed RLE
    (``counts`` a list) or compressed RLE (``counts`` a string), checked before any drawing."""
    if isinstance(segmentation, list):
        polygons = _coco_polygons(segmentation, where, path)
        size, counts = None, None
    elif isinstance(segmentation, dict):
        size, counts = _rle_counts(segmentation, where, path)
    else:
        raise DatasetError(
            f"{path}: {where}: segmentation must be polygons or an RLE {{size, counts}}"
        )

    def draw(height: int, width: int) -> np.ndarray:
        mask_utils = _mask_utils()
        if size is not None and size != [height, width]:
            raise DatasetError(
                f"{path}: {where}: RLE size {size} is not the image's [{height}, {width}]"
            )
        if size is None:
            rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
        else:
            rle = mask_utils.frPyObjects({"size": size, "counts": counts}, height, width)
        with warnings.catch_warnings():  # pycocotools' own array protocol, under NumPy 2
            warnings.simplefilter("ignore", DeprecationWarning)
            return mask_utils.decode(rle).astype(bool)

    return draw


def coco_images(
    document: Any, path: Path, image_folder: Path
) -> tuple[list[str], list[AnnotatedImage]]:
    """The category names (id order) and the images of a COCO file, each image's regions
    ordered by decreasing area (its ``area``, or the pixels it covers where the export gives
    none), so a small object drawn over a larger one stays visible; ties in file order.
    Images are looked up under ``image_folder`` by their ``file_name``,
    then by its last part (exports often name the tool's own upload folder)."""
    if not isinstance(document, dict) or not isinstance(document.get("images"), list):
        raise DatasetError(f"{path}: not a COCO file (no 'images' list)")
    categories = coco_categories(document, path)
    annotations = document.get("annotations", [])
    if not isinstance(annotations, list):
        raise DatasetError(f"{path}: 'annotations' must be a list")
    images: dict[int, dict] = {}
    for index, entry in enumerate(document["images"]):
        ok = isinstance(entry, dict) and _is_int(entry.get("id"))
        ok = ok and isinstance(entry.get("file_name"), str)
        ok = ok and all(_is_int(entry.get(k)) and entry[k] > 0 for k in ("height", "width"))
        if not ok:
            raise DatasetError(
                f"{path}: images[{index}] needs an integer id, a file_name, height and width"
            )
        if entry["id"] in images:
            raise DatasetError(f"{path}: images[{index}]: image id {entry['id']} appears twice")
        # Exports made on Windows write backslashes (images\\0001.png).
        images[entry["id"]] = {**entry, "file_name": entry["file_name"].replace("\\", "/")}
    regions: dict[int, list[tuple[float, Region]]] = {key: [] for key in images}
    for index, annotation in enumerate(annotations):
        where = f"annotations[{index}]"
        if not isinstance(annotation, dict):
            raise DatasetError(f"{path}: {where} must be a mapping")
        if not _is_int(annotation.get("image_id")) or annotation["image_id"] not in images:
            raise DatasetError(f"{path}: {where}: no image with id {annotation.get('image_id')!r}")
        if (
            not _is_int(annotation.get("category_id"))
            or annotation["category_id"] not in categories
        ):
            raise DatasetError(
                f"{path}: {where}: no category with id {annotation.get('category_id')!r}"
            )
        if not annotation.get("segmentation"):  # CVAT exports its rectangles so
            raise DatasetError(f"{path}: {where} has no segmentation (boxes alone are no labels)")
        mask = _coco_mask(annotation["segmentation"], where, path)
        area = annotation.get("area")
        if not isinstance(area, (int, float)):  # optional in exports: the drawn pixels
            image = images[annotation["image_id"]]
            area = mask(image["height"], image["width"]).sum()
        area = float(area)
        label = categories[annotation["category_id"]]
        regions[annotation["image_id"]].append((area, Region(label, mask, where)))
    result = []
    found: dict[Path, str] = {}
    for key, entry in images.items():
        image = _find_image(image_folder, entry["file_name"])
        first = found.setdefault(image.resolve(), entry["file_name"]) if image else None
        if first not in (None, entry["file_name"]):
            raise DatasetError(
                f"{path}: images {first!r} and {entry['file_name']!r} are both "
                f"found as {image} (by its name alone): point --images at the folder their "
                "file_name paths start from"
            )
        ordered = sorted(regions[key], key=lambda item: -item[0])  # stable: ties in file order
        result.append(
            AnnotatedImage(
                name=entry["file_name"],
                image=image,
                image_bytes=None,
                height=entry["height"],
                width=entry["width"],
                regions=tuple(region for _, region in ordered),
                source=path,
            )
        )
    return list(categories.values()), result


def _find_image(folder: Path, file_name: str) -> Path | None:
    for candidate in (folder / file_name, folder / Path(file_name).name):
        if candidate.is_file():
            return candidate
    return None


# --- LabelMe --------------------------------------------------------------------------


def _points(shape: dict, where: str, path: Path) -> list[tuple[float, float]]:
    points = shape.get("points")
    ok = isinstance(points, list) and all(
        isinstance(p, list) and len(p) == 2 and all(_is_coordinate(v) for v in p) for p in points
    )
    if not ok:
        raise DatasetError(
            f"{path}: {where}: points must be a list of [x, y], finite numbers within "
            f"+-{MAX_COORDINATE:g}"
        )
    return [(float(x), float(y)) for x, y in points]


_POINT_COUNTS = {"circle": 2, "rectangle": 2, "line": 2, "point": 1, "mask": 2}


def _labelme_mask(shape: dict, where: str, path: Path) -> Mask:
    """A drawing function for a LabelMe shape, as LabelMe's ``shape_to_mask`` draws it."""
    kind = shape.get("shape_type") or "polygon"
    if not isinstance(kind, str) or kind not in (*_POINT_COUNTS, "polygon", "linestrip"):
        raise DatasetError(f"{path}: {where}: unknown shape_type {kind!r}")
    points = _points(shape, where, path)
    wanted = _POINT_COUNTS.get(kind)
    if (wanted is not None and len(points) != wanted) or (kind == "polygon" and len(points) < 3):
        needed = wanted if wanted is not None else "at least 3"
        raise DatasetError(f"{path}: {where}: a {kind} needs {needed} points, got {len(points)}")
    if kind == "linestrip" and len(points) < 2:
        raise DatasetError(f"{path}: {where}: a linestrip needs at least 2 points")
    patch = _decode_mask(shape.get("mask"), where, path) if kind == "mask" else None

    def draw(height: int, width: int) -> np.ndarray:
        canvas = Image.new("L", (width, height), 0)
        pen = ImageDraw.Draw(canvas)
        if kind == "circle":
            (cx, cy), (px, py) = points
            radius = math.hypot(cx - px, cy - py)
            pen.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], outline=1, fill=1)
        elif kind == "rectangle":
            (x0, y0), (x1, y1) = points
            box = [min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)]
            pen.rectangle(box, outline=1, fill=1)
        elif kind in ("line", "linestrip"):
            pen.line(points, fill=1, width=LABELME_LINE_WIDTH)
        elif kind == "point":
            (cx, cy), r = points[0], LABELME_POINT_RADIUS
            pen.ellipse([cx - r, cy - r, cx + r, cy + r], outline=1, fill=1)
        elif kind == "polygon":
            pen.polygon(points, outline=1, fill=1)
        mask = np.array(canvas, dtype=bool)
        if patch is not None:
            _place(mask, patch, points)
        return mask

    return draw


def _place(mask: np.ndarray, patch: np.ndarray, points: list[tuple[float, float]]) -> None:
    """Set ``mask`` where the ``(h, w)`` bool ``patch`` is set, its top-left corner at the
    box's, the part outside the image cut off."""
    left, top = (int(round(min(values))) for values in zip(*points, strict=True))
    row0, row1 = max(top, 0), min(top + patch.shape[0], mask.shape[0])
    col0, col1 = max(left, 0), min(left + patch.shape[1], mask.shape[1])
    if row0 < row1 and col0 < col1:
        mask[row0:row1, col0:col1] |= patch[row0 - top : row1 - top, col0 - left : col1 - left]


def _decode_mask(data: Any, where: str, path: Path) -> np.ndarray:
    """A LabelMe mask shape's ``mask``: a base64 PNG of its box, as ``(h, w)`` bool."""
    if not isinstance(data, str):
        raise DatasetError(f"{path}: {where}: a mask shape needs its 'mask' (base64 PNG)")
    try:
        with Image.open(io.BytesIO(base64.b64decode(data, validate=True))) as image:
            return np.array(image.convert("L")) > 0
    except (binascii.Error, UnidentifiedImageError, OSError, Image.DecompressionBombError):
        raise DatasetError(f"{path}: {where}: 'mask' is not a base64 PNG of a box") from None


# The suffix an embedded image is written under, by the format Pillow reads in it.
_SUFFIXES = {"PNG": ".png", "JPEG": ".jpg", "BMP": ".bmp", "TIFF": ".tif", "WEBP": ".webp"}


def _embedded_image(data: str, path: Path, height: int, width: int) -> tuple[bytes, str]:
    """A LabelMe file's ``imageData``: the encoded image and the suffix of its format,
    checked to be of the annotated size (as ``convert`` checks image files)."""
    try:
        encoded = base64.b64decode(data, validate=True)
        with Image.open(io.BytesIO(encoded)) as image:
            kind, size = image.format, upright_size(image)
    except (binascii.Error, UnidentifiedImageError, OSError, Image.DecompressionBombError):
        raise DatasetError(f"{path}: imageData is not a base64 image") from None
    if kind not in _SUFFIXES:
        raise DatasetError(f"{path}: imageData holds a {kind} image; {sorted(_SUFFIXES)} are read")
    if size != (width, height):
        raise DatasetError(
            f"{path} (imageData): the image is {size[0]}x{size[1]} but annotated as "
            f"{width}x{height}"
        )
    return encoded, _SUFFIXES[kind]


def read_labelme(path: Path) -> AnnotatedImage:
    """``labelme_image`` of the LabelMe file ``path``."""
    return labelme_image(read_json(path, "annotation file", DatasetError), path)


def labelme_labels(images: list[AnnotatedImage]) -> list[str]:
    """The labels LabelMe images use, sorted (``_background_`` left out: it is the
    background)."""
    return sorted({r.label for image in images for r in image.regions} - {LABELME_BACKGROUND})


def labelme_image(document: Any, path: Path) -> AnnotatedImage:
    """The parsed LabelMe file ``path``: its image (``imagePath`` relative to the file;
    ``imageData`` when the file is missing) and its shapes in file order (LabelMe paints
    later shapes over earlier ones)."""
    if not isinstance(document, dict) or not isinstance(document.get("shapes"), list):
        raise DatasetError(f"{path}: not a LabelMe file (no 'shapes' list)")
    size = (document.get("imageHeight"), document.get("imageWidth"))
    if not all(_is_int(v) and v > 0 for v in size):
        raise DatasetError(f"{path}: imageHeight and imageWidth must be positive integers")
    image_path = document.get("imagePath")
    if not isinstance(image_path, str) or not image_path:
        raise DatasetError(f"{path}: imagePath must name the image")
    image_path = image_path.replace("\\", "/")  # LabelMe on Windows: ..\\images\\0001.png
    image: Path | None = path.parent / image_path
    name, image_bytes = Path(image_path).name, None
    if not image.is_file():
        image = None
        if isinstance(document.get("imageData"), str) and document["imageData"]:
            image_bytes, suffix = _embedded_image(document["imageData"], path, *size)
            name = Path(name).stem + suffix
    regions = []
    for index, shape in enumerate(document["shapes"]):
        where = f"shapes[{index}]"
        label = shape.get("label") if isinstance(shape, dict) else None
        if not isinstance(label, str) or not label.strip():
            raise DatasetError(f"{path}: {where} must be a mapping with a non-empty label")
        regions.append(Region(label, _labelme_mask(shape, where, path), where))
    return AnnotatedImage(
        name=name,
        image=image,
        image_bytes=image_bytes,
        height=size[0],
        width=size[1],
        regions=tuple(regions),
        source=path,
    )


def read_labelme_folder(folder: Path) -> tuple[list[str], list[AnnotatedImage]]:
    """Every LabelMe file under ``folder`` (sub-folders too, by path), and the labels they
    use, sorted (``_background_`` left out: it is the background)."""
    files = sorted(p for p in folder.rglob("*.json") if p.is_file())
    if not files:
        raise DatasetError(f"{folder}: no LabelMe .json files in this folder")
    # Named by their place under the folder, so that output_names can tell apart images of
    # the same name in two sub-folders (two recordings, say).
    images = [read_labelme(p) for p in files]
    images = [
        replace(image, name=str(p.parent.relative_to(folder) / image.name))
        for p, image in zip(files, images, strict=True)
    ]
    return labelme_labels(images), images
