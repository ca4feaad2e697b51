"""Which frames to label next (``ddrnet pick``): the ones a model is least sure of.

Labelling costs minutes a frame, and a drive's frames repeat each other. A model already
trained on other streets says where it is unsure: a frame's *uncertainty* is the mean over
its pixels of 1 minus the winning class's probability (for a calibrated model, the share of
its pixels expected wrong; ``ddrnet eval --confidence`` says how calibrated it is). The most
uncertain frames are picked, no two closer than ``gap`` frames of one video or images of one
folder, so a slow stretch of road is not labelled ten times. The picks are copied (video
frames written as PNG) into one folder with ``picks.json``, ready for a labelling tool;
``ddrnet convert`` brings its export back.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ddrnet.atomic import (
    STAGING_FOLDER,
    atomic_copy,
    atomic_write_json,
    set_listing,
    set_names,
    staged_files,
)
from ddrnet.choices import PICK_COUNT, PICK_EVERY, PICK_GAP
from ddrnet.data.io import read_rgb_within, write_png
from ddrnet.engine.predictor import Predictor
from ddrnet.errors import DDRNetError, UsageError, user_error_message
from ddrnet.limits import DEFAULT_MAX_PIXELS, check_pixels
from ddrnet.predict import check_output_folder, expand_inputs, unique_stems
from ddrnet.video_source import (
    VideoSource,
    is_camera_or_stream,
    source_stem,
    warn_if_frames_lost,
)

logger = logging.getLogger(__name__)

PICKS_FILE = "picks.json"
PICKS_SET = "picks"  # staged_files' set name: output/.ddrnet-picks lists a pick's files
MIN_SIDE = 64  # pixels: smaller images are no street frames to label (and score as unsure)


@dataclass(frozen=True)
class Candidate:
    """A frame that could be picked: ``source`` an image file or a video, ``frame`` its
    index in the video (None for an image), ``group``/``position`` what ``gap`` counts in
    (a video and its frame index; an image's folder and its place there in name order), and
    ``uncertainty`` (0..1; see the module text)."""

    source: str
    frame: int | None
    group: str
    position: int
    uncertainty: float


def uncertainty(confidence: torch.Tensor) -> float:
    """A frame's uncertainty from its ``(H, W)`` winning-class probabilities: their mean
    shortfall from 1."""
    return float(1.0 - confidence.double().mean())


def _image_positions(images: Sequence[Path]) -> list[tuple[str, int]]:
    """Each image's group (its folder) and place there, in name order."""
    folders: dict[Path, list[str]] = {}
    for path in images:
        folders.setdefault(path.parent, []).append(path.name)
    place = {
        folder / name: position
        for folder, names in folders.items()
        for position, name in enumerate(sorted(names))
    }
    return [(str(path.parent), place[path]) for path in images]


def _image_candidates(predictor: Predictor, images: Sequence[Path]) -> Iterator[Candidate]:
    """Each readable image scored; unreadable, oversized and tiny ones named in the log and
    left out (the size read from the file's header, before its pixels are decoded)."""
    for path, (group, position) in zip(images, _image_positions(images), strict=True):
        try:
            image = read_rgb_within(path)
            if min(image.shape[:2]) < MIN_SIDE:
                height, width = image.shape[:2]
                logger.warning("skipped %s: %dx%d, too small to label", path, width, height)
                continue
            pixels = torch.from_numpy(image).permute(2, 0, 1)[None]
            _, confidence = predictor.class_ids_and_confidence(pixels)
        except DDRNetError as error:
            logger.warning("skipped: %s", user_error_message(error))
            continue
        yield Candidate(str(path), None, group, position, uncertainty(confidence[0]))


def _video_candidates(predictor: Predictor, video: str, every: int) -> Iterator[Candidate]:
    """Every ``every``-th frame of a video file, scored."""
    with VideoSource(video, drop_frames="no") as source:
        check_pixels(video, source.width, source.height, DEFAULT_MAX_PIXELS)
        decoded = 0
        for index, frame in source.frames():
            decoded += 1
            if index % every:
                continue
            pixels = torch.from_numpy(frame).permute(2, 0, 1)[None]
            _, confidence = predictor.class_ids_and_confidence(pixels)
            yield Candidate(video, index, video, index, uncertainty(confidence[0]))
        warn_if_frames_lost(video, decoded, source.frame_count or 0)


def score_frames(
    predictor: Predictor,
    images: Sequence[Path],
    videos: Sequence[str],
    every: int = 1,
    progress: bool = False,
) -> list[Candidate]:
    """Every image and every ``every``-th frame of each video file, scored by ``predictor``;
    a video that cannot be read is named in the log and the others go on."""
    candidates: list[Candidate] = []
    with tqdm(desc="pick", unit="frame", disable=not progress) as bar:
        streams = [("images", _image_candidates(predictor, images))]
        streams += [(video, _video_candidates(predictor, video, every)) for video in videos]
        for source, stream in streams:
            try:
                for candidate in stream:
                    candidates.append(candidate)
                    bar.update()
            except DDRNetError as error:  # VideoSourceError, InputTooLargeError
                logger.warning("skipped %s: %s", source, user_error_message(error))
    return candidates


def choose(candidates: Sequence[Candidate], count: int, gap: int) -> list[Candidate]:
    """The ``count`` most uncertain candidates, most uncertain first, skipping any within
    ``gap`` (frames of one video, images of one folder) of one already chosen; ties in
    input order."""
    ordered = sorted(range(len(candidates)), key=lambda i: (-candidates[i].uncertainty, i))
    chosen: list[Candidate] = []
    taken: dict[str, list[int]] = {}
    for index in ordered:
        candidate = candidates[index]
        near = taken.setdefault(candidate.group, [])
        if any(abs(candidate.position - p) < gap for p in near):
            continue
        chosen.append(candidate)
        near.append(candidate.position)
        if len(chosen) == count:
            break
    return chosen


def _file_names(chosen: Sequence[Candidate]) -> list[str]:
    """Output names: an image's own stem, a video frame's ``<video stem>_f<index>``; a
    repeated name gets a suffix."""
    stems = [
        Path(c.source).stem if c.frame is None else f"{source_stem(c.source)}_f{c.frame:06d}"
        for c in chosen
    ]
    suffixes = [Path(c.source).suffix if c.frame is None else ".png" for c in chosen]
    return [stem + suffix for stem, suffix in zip(unique_stems(stems), suffixes, strict=True)]


def write_picks(
    chosen: Sequence[Candidate], output: Path, scored: Sequence[Candidate] = ()
) -> list[Path]:
    """The chosen frames in ``output`` (images copied byte for byte, video frames read again
    and written as PNG), then ``output/picks.json``: ``picked``, them by rank with their
    files, and ``scored``, every candidate; the paths of the frames. The frames are written
    into a staging folder (``ddrnet.atomic.staged_files``) and moved out once all are
    written, ``picks.json`` last: a pick stopped or failed midway leaves no half set of
    frames (a kill leaves the staging folder, and the next pick into ``output`` removes it
    with whatever of its files were moved out, as listed in ``output/.ddrnet-picks`` while
    they are moved)."""
    output.mkdir(parents=True, exist_ok=True)
    names = _file_names(chosen)
    listing = {
        "picked": [
            {"rank": rank, "file": name, **asdict(candidate)}
            for rank, (candidate, name) in enumerate(zip(chosen, names, strict=True), 1)
        ],
        "scored": [asdict(candidate) for candidate in scored],
    }
    with staged_files(output, PICKS_SET) as staging:
        _write_frames(chosen, names, staging)
        atomic_write_json(listing, staging / PICKS_FILE)  # moved out with the frames
    # Whole now: the list served a stopped pick's clean-up only (picks.json lists the frames).
    set_listing(output, PICKS_SET).unlink(missing_ok=True)
    return [output / name for name in names]


def _write_frames(chosen: Sequence[Candidate], names: Sequence[str], folder: Path) -> None:
    """Each chosen frame as ``folder/<its name>``: images copied, video frames decoded
    again (each video read once, up to its last chosen frame)."""
    wanted: dict[str, dict[int, Path]] = {}
    for candidate, name in zip(chosen, names, strict=True):
        if candidate.frame is None:
            atomic_copy(Path(candidate.source), folder / name)
        else:
            wanted.setdefault(candidate.source, {})[candidate.frame] = folder / name
    for video, frames in wanted.items():
        with VideoSource(video, drop_frames="no") as source:
            for index, frame in source.frames():
                if index in frames:
                    write_png(frames.pop(index), frame)
                if not frames:
                    break
        if frames:  # the file changed since it was scored
            raise UsageError(f"{video}: frames {sorted(frames)} could not be read again")


def _prepare_output(output: Path) -> None:
    """Check ``output`` (made when the picks are written), refusing one that holds files: a
    pick never overwrites, and a folder of earlier picks beside new ones would be labelled
    as one. What a pick killed before all its files were moved out left is removed first:
    its staging folder, and the files it had moved out (listed in ``.ddrnet-picks``; a pick
    starts in an empty folder, so the list names that pick's files alone). A staging folder
    left empty means the move had finished: that pick is whole and stays."""
    staging = output / STAGING_FOLDER
    if staging.is_dir() and not staging.is_symlink():
        if any(staging.iterdir()):
            for name in set_names(output, PICKS_SET):
                with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                    (output / name).unlink()
            set_listing(output, PICKS_SET).unlink(missing_ok=True)
        shutil.rmtree(staging)
        logger.info("removed what a stopped pick left in %s", output)
    if output.is_dir() and any(output.iterdir()):
        raise UsageError(f"-o {output} holds files already; pick into a new or empty folder")


def _distinct(items: Sequence[str | Path]) -> list:
    """``items`` (paths) without repeats of the same file (by resolved path), in order."""
    seen: set[Path] = set()
    kept = []
    for item in items:
        resolved = Path(item).resolve()
        if resolved not in seen:
            seen.add(resolved)
            kept.append(item)
    return kept


def pick_frames(
    predictor: Predictor,
    inputs: Sequence[str],
    output: str | Path,
    count: int = PICK_COUNT,
    every: int = PICK_EVERY,
    gap: int = PICK_GAP,
    progress: bool = False,
) -> tuple[list[Candidate], list[Candidate]]:
    """Score ``inputs`` (images, folders, globs, video files; as ``ddrnet predict`` takes
    them, without cameras and streams, which cannot be read twice; a file given twice counts
    once), choose ``count`` frames (``choose``) and write them to ``output``, a new or empty
    folder (``write_picks``); the defaults are ``ddrnet pick``'s. Returns every candidate
    and the chosen ones."""
    live = [item for item in inputs if is_camera_or_stream(item)]
    if live:
        raise UsageError(f"{live[0]}: pick reads files, a camera or stream cannot be read twice")
    images, videos = expand_inputs(inputs)
    images, videos = _distinct(images), _distinct(videos)
    check_output_folder(Path(output), inputs, images + [Path(v) for v in videos])
    _prepare_output(Path(output))  # before the scoring: refused now, not in an hour
    candidates = score_frames(predictor, images, videos, every, progress)
    if not candidates:
        raise UsageError("no input frame could be read")
    chosen = choose(candidates, count, gap)
    write_picks(chosen, Path(output), candidates)
    return candidates, chosen


def spread(candidates: Sequence[Candidate]) -> tuple[float, float, float]:
    """The lowest, median and highest uncertainty of ``candidates``."""
    values = np.array([c.uncertainty for c in candidates])
    return float(values.min()), float(np.median(values)), float(values.max())
