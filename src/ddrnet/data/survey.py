"""What a data set holds, read file by file: the check before training and ``ddrnet data``.

``survey_dataset`` reads every image and label of a ``PairedSegmentationDataset`` once and
gathers what a user checks before a long run: the problems, by file (unreadable files,
image/label size mismatches, label values or colours outside the classes), the image sizes,
each class's share of the labelled pixels and of the frames, the ignored share, the RGB
mean and standard deviation (exact: from per-channel histograms), the recordings (CamVid's
sequences, Cityscapes' cities) and a digest of every image's pixels.

``survey_warnings`` compares a training and a validation survey for what makes validation
scores lie or training silently miss something: validation frames whose pixels are also in
the training set or that nearly repeat a training frame (``difference_hash``), recordings in
both (a street seen in training flatters the score: on
CamVid by 20+ mIoU points, ``scripts/camvid_experiments.md``), classes without a training
pixel.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from ddrnet.data.datasets import DatasetError, PairedSegmentationDataset
from ddrnet.data.io import ImageReadError, read_rgb

# Problems listed by ``raise_problems`` (the survey keeps all of them).
LISTED_PROBLEMS = 20
# A frame's difference hash: a 16 x 16 grid of "brighter than its left neighbour" bits.
HASH_SIDE = 16
# Frames whose hashes differ in at most this many of their 256 bits (an eighth) look alike:
# on CamVid, a car standing at lights two seconds apart differs in 13, a cyclist riding into
# the same view in 26, a frame from 3 pixels further right and a little brighter in 28, while
# no validation frame comes within 72 of a training frame, nor 0006R0's within 83 of 0001TP's.
NEAR_REPEAT_BITS = 32
# Hashes with fewer bits set are of nearly featureless pictures (a flat colour, a black
# frame), which all look alike to the hash: they are not compared.
FEATURELESS_BITS = 32
# A share (percent) of not-labelled training pixels large enough, beside a class without a
# training pixel, to suggest that the class is stored under the ignore value (CamVid's void
# is 4% of its pixels; a 0/255 road mask's 255 is the road itself, a third of them).
IGNORED_SHARE_HINT = 20.0


def difference_hash(image: np.ndarray) -> np.ndarray:
    """``(4,)`` uint64: the 256-bit difference hash of an ``(H, W, 3)`` uint8 RGB image (its
    grey picture shrunk to 17 x 16, each bit whether a cell is brighter than the one on its
    left); alike pictures differ in few bits, whatever their size and compression."""
    import cv2

    grey = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
    small = cv2.resize(grey, (HASH_SIDE + 1, HASH_SIDE), interpolation=cv2.INTER_AREA)
    bits = small[:, 1:].astype(np.int16) > small[:, :-1]
    return np.packbits(bits.ravel()).view(np.uint64)


def near_repeats(
    frames: list[tuple[str, np.ndarray]], others: list[tuple[str, np.ndarray]], bits: int
) -> list[tuple[str, str, int]]:
    """``(frame, its nearest other, bits apart)`` for each of ``frames`` whose difference
    hash lies within ``bits`` of one of ``others``' (named hashes, as ``frame_hashes``);
    featureless pictures (``FEATURELESS_BITS``) are left out."""

    def featured(named: list[tuple[str, np.ndarray]]) -> list[tuple[str, np.ndarray]]:
        return [(n, h) for n, h in named if np.bitwise_count(h).sum() >= FEATURELESS_BITS]

    frames, others = featured(frames), featured(others)
    if not frames or not others:
        return []
    table = np.stack([hashed for _, hashed in others])  # (N, 4)
    found = []
    for name, hashed in frames:
        distances = np.bitwise_count(table ^ hashed).sum(axis=1)
        nearest = int(distances.argmin())
        if distances[nearest] <= bits:
            found.append((name, others[nearest][0], int(distances[nearest])))
    return found


@dataclass
class DatasetSurvey:
    """The figures of one data set; pixel counts are at the files' own resolution."""

    name: str
    class_names: tuple[str, ...]
    recording_kind: str | None  # "sequences", "cities"; None when the data set has none
    frames: int = 0  # samples read, problem frames included
    sizes: Counter = field(default_factory=Counter)  # (width, height) -> frames
    # Pixels per value of each RGB channel, (3, 256) int64, over every readable image.
    channel_histogram: np.ndarray = field(default_factory=lambda: np.zeros((3, 256), np.int64))
    class_pixels: np.ndarray | None = None  # (C,) int64 labelled pixels per class
    class_frames: np.ndarray | None = None  # (C,) int64 frames with at least one pixel
    # (C,) int32 labelled pixels per class of each readable frame, in order (zeros: no label).
    frame_rows: list[np.ndarray] = field(default_factory=list, repr=False)
    ignored_pixels: int = 0  # label pixels of no class (void), frames without problems
    recordings: Counter = field(default_factory=Counter)  # recording -> frames
    # (image, digest of its pixels) and (image, difference_hash) of every readable frame.
    frame_digests: list[tuple[str, str]] = field(default_factory=list)
    frame_hashes: list[tuple[str, np.ndarray]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    stopped_early: bool = False  # stopped after ``stop_after`` problems

    def __post_init__(self) -> None:
        count = len(self.class_names)
        if self.class_pixels is None:
            self.class_pixels = np.zeros(count, np.int64)
        if self.class_frames is None:
            self.class_frames = np.zeros(count, np.int64)

    @property
    def labelled_pixels(self) -> int:
        return int(self.class_pixels.sum())

    @property
    def label_pixels(self) -> int:
        """Every pixel of the labels read, ignored ones included: what the shares divide."""
        return self.labelled_pixels + self.ignored_pixels

    @property
    def first_frames(self) -> dict[str, str]:
        """Pixel digest -> the first image with those pixels."""
        first: dict[str, str] = {}
        for name, key in self.frame_digests:
            first.setdefault(key, name)
        return first

    @property
    def duplicates(self) -> list[tuple[str, str]]:
        """``(image, the earlier image with the same pixels)`` for every repeated frame."""
        first: dict[str, str] = {}
        repeats = []
        for name, key in self.frame_digests:
            if key in first:
                repeats.append((name, first[key]))
            else:
                first[key] = name
        return repeats

    @property
    def mean(self) -> tuple[float, float, float]:
        """Per RGB channel, of images scaled to [0, 1] (as ``data.mean``); nan without images."""
        return tuple(float(m) for m in self._moments()[0])

    @property
    def std(self) -> tuple[float, float, float]:
        """Per RGB channel, population standard deviation on the [0, 1] scale."""
        return tuple(float(s) for s in self._moments()[1])

    def _moments(self) -> tuple[np.ndarray, np.ndarray]:
        values = np.arange(256) / 255.0
        pixels = self.channel_histogram.sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = self.channel_histogram @ values / pixels
            square = self.channel_histogram @ values**2 / pixels
        return mean, np.sqrt(np.maximum(square - mean**2, 0.0))

    def add_frame(self, image: np.ndarray, label: np.ndarray | None, name: str, group: str | None):
        """Count one ``(H, W, 3)`` uint8 image and its ``(H, W)`` uint8 training-id label
        (None: unlabelled, or its label had a problem)."""
        self.sizes[(image.shape[1], image.shape[0])] += 1
        offsets = np.arange(3, dtype=np.intp) * 256
        self.channel_histogram += np.bincount(
            (image.reshape(-1, 3) + offsets).ravel(), minlength=768
        ).reshape(3, 256)
        digest = hashlib.blake2b(image.tobytes(), digest_size=16)
        digest.update(repr(image.shape).encode())
        self.frame_digests.append((name, digest.hexdigest()))
        self.frame_hashes.append((name, difference_hash(image)))
        if group is not None:
            self.recordings[group] += 1
        classes = len(self.class_names)
        if label is None:
            self.frame_rows.append(np.zeros(classes, np.int32))
            return
        counts = np.bincount(label.ravel(), minlength=256)
        self.frame_rows.append(counts[:classes].astype(np.int32))
        self.class_pixels += counts[:classes]
        self.class_frames += counts[:classes] > 0
        self.ignored_pixels += int(counts[classes:].sum())

    def frame_class_pixels(self) -> np.ndarray:
        """Labelled pixels of each class in each frame, ``(frames, C)`` int64, as
        ``sampling.frame_class_pixels`` reads them; only for a survey that read every frame."""
        if len(self.frame_rows) != self.frames:
            raise ValueError(f"{self.name}: the survey did not read every frame")
        classes = len(self.class_names)
        return np.stack(self.frame_rows).astype(np.int64).reshape(-1, classes)

    def raise_problems(self, limit: int = LISTED_PROBLEMS) -> None:
        """``DatasetError`` listing the first ``limit`` problems, if there are any."""
        if not self.problems:
            return
        listed = "\n  ".join(self.problems[:limit])
        more = len(self.problems) - limit
        tail = f"\n  ... and {more} more" if more > 0 else ""
        early = " (stopped after the first ones)" if self.stopped_early else ""
        raise DatasetError(
            f"{self.name}: {len(self.problems)} problems found{early}:\n  {listed}{tail}"
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types: the figures; shares in percent of the label pixels (ignored ones
        included, so the classes and ``ignored_share`` sum to 100) and of the frames."""
        label_pixels = max(self.label_pixels, 1)
        frames = max(self.frames, 1)
        return {
            "name": self.name,
            "frames": self.frames,
            "sizes": {f"{w}x{h}": n for (w, h), n in self.sizes.most_common()},
            "classes": {
                name: {
                    "pixels": int(pixels),
                    "pixel_share": 100.0 * int(pixels) / label_pixels,
                    "frames": int(count),
                    "frame_share": 100.0 * int(count) / frames,
                }
                for name, pixels, count in zip(
                    self.class_names, self.class_pixels, self.class_frames
                )
            },
            "ignored_pixels": self.ignored_pixels,
            "ignored_share": 100.0 * self.ignored_pixels / label_pixels,
            "mean": _finite_or_none(self.mean),  # None without a readable image
            "std": _finite_or_none(self.std),
            "recording_kind": self.recording_kind,
            "recordings": dict(sorted(self.recordings.items())),
            "duplicates": [list(pair) for pair in self.duplicates],
            "problems": list(self.problems),
            "stopped_early": self.stopped_early,
        }


def _finite_or_none(values: tuple[float, ...]) -> list[float | None]:
    """Plain JSON has no nan: figures that were not measured become null."""
    return [v if math.isfinite(v) else None for v in values]


def _read_frame(dataset: PairedSegmentationDataset, index: int):
    """``(image, label or None, problem or None)`` of one sample; ``image`` None when even
    the image could not be read."""
    sample = dataset.samples[index]
    try:
        if sample.label is None:
            return read_rgb(sample.image), None, None
        image, label = dataset.load(index)
        return image, label, None
    except (ImageReadError, DatasetError) as error:
        try:  # the image still counts when only its label is wrong
            return read_rgb(sample.image), None, str(error)
        except ImageReadError:
            return None, None, str(error)


def survey_dataset(
    dataset: PairedSegmentationDataset,
    stop_after: int | None = None,
    workers: int = 2,
    progress: bool = False,
) -> DatasetSurvey:
    """Read every sample of ``dataset`` once (``workers`` threads: decoding releases the
    GIL) and count it; a file that cannot be used becomes a problem naming it, not an
    exception. ``stop_after``: stop reading after that many problems (a data set broken
    throughout is reported without reading all of it)."""
    recording = dataset.recording
    survey = DatasetSurvey(
        dataset.name, tuple(dataset.labels.class_names), recording.kind if recording else None
    )
    with ThreadPoolExecutor(max(1, workers)) as pool:
        frames = pool.map(lambda index: _read_frame(dataset, index), range(len(dataset)))
        bar = tqdm(frames, total=len(dataset), desc=dataset.name, disable=not progress)
        for index, (image, label, problem) in enumerate(bar):
            survey.frames += 1
            if problem is not None:
                survey.problems.append(problem)
            if image is not None:
                path = dataset.samples[index].image
                group = recording.of(path) if recording else None
                survey.add_frame(image, label, str(path), group)
            if stop_after is not None and len(survey.problems) >= stop_after:
                survey.stopped_early = index + 1 < len(dataset)
                pool.shutdown(wait=False, cancel_futures=True)
                break
        bar.close()
    return survey


def survey_warnings(train: DatasetSurvey, val: DatasetSurvey | None = None) -> list[str]:
    """What makes scores on ``val`` mislead about new data, or training miss or over-weight
    something: one sentence each, naming the frames, recordings or classes."""
    repeated = [(s.name, s.duplicates) for s in (train, val) if s is not None]
    warnings = [
        f"{name}: frames that repeat the pixels of another one: {len(pairs)} (e.g. "
        f"{pairs[0][0]} = {pairs[0][1]})"
        for name, pairs in repeated
        if pairs
    ]
    if val is not None:
        warnings += _leak_warnings(train, val)
    names = train.class_names
    absent = [n for n, pixels in zip(names, train.class_pixels) if pixels == 0]
    if absent:
        in_val = [] if val is None else [n for n in absent if val.class_pixels[names.index(n)]]
        also = f" ({', '.join(in_val)} labelled in validation)" if in_val else ""
        warnings.append(
            f"classes without a training pixel: {', '.join(absent)}{also}: the model "
            f"cannot learn them{_ignored_hint(train)}"
        )
    return warnings


def _ignored_hint(survey: DatasetSurvey) -> str:
    """For a warning on absent classes: a large share of pixels not labelled may be a class
    stored under the ignore value (a 0/255 mask of two classes, 255 being the default)."""
    total = survey.label_pixels
    share = 100.0 * survey.ignored_pixels / total if total else 0.0
    if share < IGNORED_SHARE_HINT:
        return ""
    return (
        f"; {share:.1f}% of the training label pixels are not labelled (the ignore value, or "
        "an ignore colour): if a class is stored under that value (a 0/255 mask), give it "
        "its class id, or set ignore_index in the classes file"
    )


def _leak_warnings(train: DatasetSurvey, val: DatasetSurvey) -> list[str]:
    """Validation frames or recordings that are also in the training set."""
    warnings = []
    seen = train.first_frames
    shared = [(name, seen[key]) for name, key in val.frame_digests if key in seen]
    if shared:
        name, twin = shared[0]
        example = name if name == twin else f"{name} = {twin}"
        warnings.append(
            f"validation frames that are also training frames (the same pixels): "
            f"{len(shared)} of {val.frames} (e.g. {example}); scores on them measure what "
            "the model remembers, not how it does on new images"
        )
    exact = {name for name, _ in shared}
    fresh = [(name, hashed) for name, hashed in val.frame_hashes if name not in exact]
    alike = near_repeats(fresh, train.frame_hashes, NEAR_REPEAT_BITS)
    if alike:
        name, twin, bits = alike[0]
        warnings.append(
            f"validation frames that nearly repeat a training frame (the same view a moment "
            f"apart: difference hashes within {NEAR_REPEAT_BITS} of 256 bits): {len(alike)} of "
            f"{val.frames} (e.g. {name} ~ {twin}, {bits} bits); frames split at random from "
            "one video flatter validation scores: split by video or place"
        )
    common = sorted(set(train.recordings) & set(val.recordings))
    if common and val.recording_kind:
        listed = ", ".join(f"{r} ({train.recordings[r]} training frames)" for r in common)
        kind = val.recording_kind
        warnings.append(
            f"the validation set shares {kind} with the training set: {listed}; validation "
            f"scores flatter {kind} never seen (hold one out to measure those)"
        )
    return warnings
