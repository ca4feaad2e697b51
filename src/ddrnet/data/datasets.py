"""Segmentation data sets as lists of (image, label) file pairs with a label mapping.

Every data set is a ``PairedSegmentationDataset``: it knows its file pairs, how raw label
values map to training ids (a 256-entry lookup table; 255 = ignore) and which raw values are
legal. ``check()`` reads every pair once and reports, by file, what is wrong.
``ColourLabelDataset`` reads colour-coded labels through a colour table. The data sets
themselves are built beside this module: ``camvid.py``, ``cityscapes.py``,
``coco_stuff.py`` and ``folder.py`` (any folder with a classes file).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from ddrnet.data.io import read_color_label, read_label, read_palette_mask, read_rgb
from ddrnet.data.labels import LabelSet, colour_indices, pack_rgb
from ddrnet.errors import DDRNetError

Transform = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]


class DatasetError(DDRNetError, ValueError):
    """The data set on disk is unusable; the message lists the offending files."""


@dataclass(frozen=True)
class Recording:
    """How a data set's frames group into recordings (a drive, a city): ``of(image path)``
    names a frame's recording. Frames of one recording in both training and validation make
    validation scores flatter places never seen (``survey.survey_warnings``)."""

    kind: str  # what the recordings are called, plural: "sequences", "cities"
    of: Callable[[Path], str]


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

    recording: Recording | None = None  # set by data sets whose frames come from recordings

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
        """Read every pair and raise ``DatasetError`` listing the problems (stopping after
        ``limit``): missing or unreadable files, image/label size mismatches, label values
        outside the classes. ``survey.survey_dataset`` gives the whole report."""
        from ddrnet.data.survey import survey_dataset  # it builds on this module

        survey_dataset(self, stop_after=limit).raise_problems(limit)


def _describe_valid(valid: np.ndarray) -> str:
    """The valid raw values as runs, e.g. ``0..10, 12..24, 255``."""
    values = np.flatnonzero(valid)
    # A run starts wherever a value does not follow its predecessor directly.
    starts = np.flatnonzero(np.diff(values, prepend=-2) != 1)
    ends = np.append(starts[1:], len(values)) - 1
    runs = [str(values[a]) if a == b else f"{values[a]}..{values[b]}" for a, b in zip(starts, ends)]
    return ", ".join(runs[:30]) + (", ..." if len(runs) > 30 else "")


def require_labels(samples: Sequence[Sample], name: str) -> None:
    """Raise ``DatasetError`` naming the images (the first ten) whose label file does not exist."""
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
    may hold both kinds. A palette PNG is read through its palette in ``"auto"`` too when
    every colour it uses is in the table and some index is not the raw value of its colour:
    a colour mask that a PNG optimiser, GIMP's indexed mode or Pillow's ``quantize`` stored
    with a palette of its own order (its indices read as class ids would be noise).
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
        if self.mask_format == "colour":
            return self.colours_to_raw(read_color_label(path), path)
        mask, palette = read_palette_mask(path)
        if palette is not None and self._palette_holds_colours(mask, palette):
            return self.colours_to_raw(palette[mask], path)
        return mask if mask.ndim == 2 else self.colours_to_raw(mask, path)

    def _palette_holds_colours(self, indices: np.ndarray, palette: np.ndarray) -> bool:
        """Whether a palette mask's ``indices`` mean its ``palette``'s colours: every colour
        used is in the table, and some index is not the raw value its colour stands for.
        The void value (``ignore_index``) says nothing either way: writers leave its palette
        entry at the padding's black, which may well be a class colour (``background``)."""
        used = np.flatnonzero(np.bincount(indices.ravel(), minlength=256))
        void = self.valid_raw[used] & (self.lut[used] == self.labels.ignore_index)
        used = used[~void]
        if used.size == 0:
            return False
        rows = colour_indices(palette[used][None], self.colours)[0]
        if (rows == len(self.colours)).any():  # a colour outside the table: ids, as stored
            return False
        return bool((self.colour_values[rows] != used).any())

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
            # Grey colours that are all raw values: class ids (and void) saved as RGB.
            if all(
                r == g == b and r < len(self.valid_raw) and self.valid_raw[r] for r, g, b in triples
            ):
                hint = (
                    "; grey colours: if this mask stores class ids, save it as a "
                    "single-channel (greyscale or palette) PNG"
                )
            raise DatasetError(
                f"{path}: {int(unknown.sum())} pixels have colours that are no class of "
                f"{self.name}: {listed}{more}{hint}"
            )
        return self.colour_values[rows]
