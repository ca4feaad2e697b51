"""Batch prediction: images, folders, globs, videos, cameras and streams in; label maps and
pictures out (video sources: ``ddrnet.video``).

A bad input (unreadable file, corrupt video, an image over the pixel cap) is reported by name
and skipped; the rest of the job goes on. ``run_prediction`` returns a summary that says what
failed. An output folder that is, holds or lies inside an input folder is refused: outputs
would overwrite inputs, and a rerun would take them as inputs.
"""

from __future__ import annotations

import functools
import glob
import itertools
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ddrnet.atomic import remove_stale_temporaries
from ddrnet.background import WritingThread
from ddrnet.choices import OUTPUT_KINDS
from ddrnet.data.io import IMAGE_SUFFIXES, image_files, read_rgb_within, write_png
from ddrnet.errors import DDRNetError, user_error_message
from ddrnet.limits import DEFAULT_MAX_PIXELS
from ddrnet.runner import SegmentationRunner
from ddrnet.video import segment_video, shown_picture
from ddrnet.video_source import (
    VideoSourceError,
    camera_index,
    check_drop_frames,
    is_camera,
    is_camera_or_stream,
    source_stem,
)

if TYPE_CHECKING:
    from ddrnet.preview import Preview

logger = logging.getLogger(__name__)

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"}
# What is written when no kinds are asked for: a label map per video frame is a folder of
# thousands of files a minute, so videos give only their overlay unless asked.
IMAGE_KINDS = ("labels", "overlay")
VIDEO_KINDS = ("overlay",)


class PredictionInputError(DDRNetError, ValueError):
    """An input argument names nothing usable."""


@dataclass
class PredictionSummary:
    processed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # input -> reason
    latencies_ms: list[float] = field(default_factory=list)  # warm-up pass excluded
    outputs: list[Path] = field(default_factory=list)
    # The untimed first pass (kernel creation, compilation), if the runner made it in this
    # job; None when it had been warmed up before.
    warmup_ms: float | None = None
    dropped: dict[str, tuple[int, int]] = field(default_factory=dict)  # source -> (dropped, read)
    seconds: float = 0.0  # the whole job: reading, segmenting, writing


def expand_inputs(inputs: Sequence[str]) -> tuple[list[Path], list[str]]:
    """Split command-line inputs into image files and video sources.

    Each input may be an image file, a folder (its images and videos, sorted, not
    recursive), a glob pattern, a video file, ``camera:N`` for camera N, or a stream's URL
    (``rtsp://...``, any of ``ddrnet.video_source.STREAM_SCHEMES``). Raises
    ``PredictionInputError`` for an input that matches nothing.
    """
    images: list[Path] = []
    videos: list[str] = []
    for item in inputs:
        path = Path(item)
        if is_camera_or_stream(item):
            if is_camera(item):
                try:
                    camera_index(item)
                except VideoSourceError as error:
                    raise PredictionInputError(f"input {error}") from None
            videos.append(item)
        elif path.is_dir():
            found = image_files(path)
            found_videos = sorted(str(p) for p in path.iterdir() if p.is_file() and _is_video(p))
            if not found and not found_videos:
                suffixes = ", ".join(sorted(IMAGE_SUFFIXES) + sorted(VIDEO_SUFFIXES))
                raise PredictionInputError(
                    f"folder {path} contains no images or videos ({suffixes})"
                )
            images += found
            videos += found_videos
        elif path.is_file():
            (videos.append(item) if _is_video(path) else images.append(path))
        elif any(char in item for char in "*?["):
            matches = sorted(Path(p) for p in glob.glob(item, recursive=True))
            matches = [p for p in matches if p.is_file()]
            if not matches:
                raise PredictionInputError(f"pattern {item!r} matches no files")
            images += [p for p in matches if not _is_video(p)]
            videos += [str(p) for p in matches if _is_video(p)]
        else:
            raise PredictionInputError(f"input {item!r}: no such file, folder or pattern")
    return images, videos


def _is_video(path: Path) -> bool:
    """Whether ``path`` names a video file by its suffix (``VIDEO_SUFFIXES``, any case)."""
    return path.suffix.lower() in VIDEO_SUFFIXES


def _input_folders(inputs: Sequence[str]) -> list[Path]:
    """The folders that inputs read from as a whole: folders given, and the fixed part of a
    glob pattern (``frames/**/*.png`` -> ``frames``), resolved."""
    folders = []
    for item in inputs:
        if is_camera_or_stream(item):
            continue
        if Path(item).is_dir():
            folders.append(Path(item).resolve())
        elif any(char in item for char in "*?["):
            fixed = []
            for part in Path(item).parts:
                if any(char in part for char in "*?["):
                    break
                fixed.append(part)
            folders.append(Path(*fixed).resolve() if fixed else Path.cwd())
    return folders


def check_output_folder(
    output_dir: Path, inputs: Sequence[str], files: Sequence[Path | str]
) -> None:
    """Raise ``PredictionInputError`` when ``output_dir`` is, lies inside or holds a folder
    that ``inputs`` read, or holds one of the input ``files``: outputs written there could
    overwrite inputs before they are read, and a rerun would take them as inputs."""
    output = output_dir.resolve()
    for folder in _input_folders(inputs):
        if output == folder or folder in output.parents or output in folder.parents:
            relation = (
                "is" if output == folder else "is inside" if folder in output.parents else "holds"
            )
            raise PredictionInputError(
                f"-o {output_dir} {relation} the input folder {folder}: outputs could overwrite "
                "inputs and a rerun would read them as inputs; choose another output folder"
            )
    for file in files:
        if Path(file).resolve().parent == output:
            raise PredictionInputError(
                f"-o {output_dir} holds the input {file}: outputs could overwrite inputs and a "
                "rerun would read them as inputs; choose another output folder"
            )


class _ImageFiles(Dataset):
    """Reads images in DataLoader workers; a failure travels as a message, not an exception.

    An image whose header says it has more than ``max_pixels`` pixels (at the largest
    test-time scale) is refused before its pixels are decoded."""

    def __init__(
        self,
        paths: Sequence[Path],
        max_pixels: int = DEFAULT_MAX_PIXELS,
        largest_scale: float = 1.0,
    ) -> None:
        self.paths = list(paths)
        self.max_pixels, self.largest_scale = max_pixels, largest_scale

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, np.ndarray | None, str | None]:
        try:
            return (
                index,
                read_rgb_within(self.paths[index], self.max_pixels, self.largest_scale),
                None,
            )
        except DDRNetError as error:  # ImageReadError, InputTooLargeError
            return index, None, str(error)


def _keep_as_list(batch):
    return batch


def run_prediction(
    runner: SegmentationRunner,
    inputs: Sequence[str],
    output_dir: Path,
    kinds: Sequence[str] | None = None,
    batch_size: int = 1,
    num_workers: int = 0,
    max_frames: int | None = None,
    progress: bool = True,
    report: Callable[[str], None] = tqdm.write,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    warn: Callable[[str], None] = logger.warning,
    drop_frames: str = "auto",
    preview: Preview | None = None,
) -> PredictionSummary:
    """Segment every input and write the requested ``kinds`` into ``output_dir`` (made with
    the first output: a job in which every input fails leaves no folder).

    Images: ``<stem>_labels.png`` (indexed PNG, palette = class colours), ``<stem>_overlay.png``
    and ``<stem>_side.png``. Videos: ``<stem>_overlay.mp4``, ``<stem>_side.mp4``, and for
    ``labels`` a folder ``<stem>_labels/`` of ``<frame number, 6 digits>.png``, one per frame
    segmented. ``kinds=None``: ``IMAGE_KINDS`` for images, ``VIDEO_KINDS`` for videos. ``report``
    receives one line per image with its latency (by default printed above the progress
    bar, not into its line); ``warn`` (by default a warning of this
    module's logger, which the command prints on stderr) one per skipped input. An image or
    video frame with more than ``max_pixels`` pixels at the largest of ``runner.scales``
    is skipped. ``drop_frames`` (``ddrnet.video_source.DROP_FRAMES``): whether video sources skip to
    their newest frame; ``"auto"``: live ones (cameras, RTSP...) do, and ``summary.dropped``
    counts what they skipped. Raises ``PredictionInputError`` before writing anything when
    ``output_dir`` is, holds or lies inside an input folder (``check_output_folder``); an
    unknown ``drop_frames``, or ``max_frames`` below 1, is a ``ValueError``. ``preview``
    (``ddrnet.preview.Preview``), if given, shows each picture as it is written.
    """
    _check_job_options(kinds, drop_frames, max_frames)
    images, videos = expand_inputs(inputs)
    files = [v for v in videos if not is_camera_or_stream(v)]
    check_output_folder(output_dir, inputs, [*images, *files])
    summary = PredictionSummary()
    warm_before = runner.warmup_ms
    start = time.perf_counter()
    if images:
        loader = DataLoader(
            _ImageFiles(images, max_pixels, max(runner.scales)),
            batch_size=batch_size,
            num_workers=num_workers,
            collate_fn=_keep_as_list,
        )
        image_kinds = kinds or IMAGE_KINDS
        _predict_images(
            runner,
            images,
            loader,
            output_dir,
            image_kinds,
            progress,
            summary,
            report=report,
            warn=warn,
            preview=preview,
        )
    for source, stem in zip(videos, unique_stems(map(source_stem, videos))):
        try:
            segment_video(
                runner,
                source,
                stem,
                output_dir,
                kinds or VIDEO_KINDS,
                max_frames,
                progress,
                summary,
                max_pixels,
                drop_frames,
                preview,
            )
        except (OSError, DDRNetError) as error:  # this input's fault: the others go on
            summary.failed[source] = user_error_message(error) or str(error)
            warn(f"skipped {source}: {summary.failed[source]}")
    summary.warmup_ms = runner.warmup_ms if warm_before is None else None
    summary.seconds = time.perf_counter() - start
    return summary


def _check_job_options(
    kinds: Sequence[str] | None, drop_frames: str, max_frames: int | None
) -> None:
    unknown = sorted(set(kinds or ()) - set(OUTPUT_KINDS))
    if unknown:
        raise PredictionInputError(
            f"unknown output kinds {unknown}; choose from {list(OUTPUT_KINDS)}"
        )
    check_drop_frames(drop_frames)
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be None or at least 1, got {max_frames}")


def _predict_images(
    runner, paths, loader, output_dir, kinds, progress, summary, *, report, warn, preview
):
    stems = unique_stems(path.stem for path in paths)
    # What a run over these images that was killed mid-write left (one scan of the folder).
    targets = {f"{stem}_{kind}.png" for stem in stems for kind in OUTPUT_KINDS}
    remove_stale_temporaries(output_dir, targets)
    smoother = runner.smoother()  # the images as one sequence, in the order given

    def groups() -> Iterator[list[tuple[int, np.ndarray]]]:
        """Batches as read, unreadable images reported; images of one size run as one
        batch. With a smoother, consecutive images of one size, so that it sees them in
        the order given."""
        for batch in tqdm(loader, desc="predict", unit="batch", disable=not progress, leave=False):
            readable = []
            for index, image, error in batch:
                if error is not None:
                    summary.failed[str(paths[index])] = error
                    warn(f"skipped: {error}")
                else:
                    readable.append((index, image))
            if smoother is not None:
                runs = itertools.groupby(readable, key=lambda item: item[1].shape[:2])
                yield from (list(run) for _, run in runs)
                continue
            by_size: dict[tuple[int, int], list[tuple[int, np.ndarray]]] = {}
            for index, image in readable:
                by_size.setdefault(image.shape[:2], []).append((index, image))
            yield from by_size.values()

    def segment(group: list[tuple[int, np.ndarray]]):
        images = [image for _, image in group]
        label_maps, confidences, milliseconds = runner.labels(
            images, "confidence" in kinds, smoother
        )
        pictures = [
            runner.pictures(image, labels, kinds, confidence=confidence)
            for image, labels, confidence in zip(
                images, label_maps, confidences or [None] * len(images)
            )
        ]
        return group, label_maps, pictures, milliseconds

    def write(group, label_maps, pictures) -> list[list[Path]]:
        """The files of each image of a group, written; the targets per image."""
        written = []
        for (index, _), labels, named in zip(group, label_maps, pictures):
            targets = []
            if "labels" in kinds:
                targets.append(output_dir / f"{stems[index]}_labels.png")
                # Indexed by the class colours (more than 256 classes: plain ids).
                write_png(targets[-1], labels, runner.palette)
            for kind, picture in named.items():
                targets.append(output_dir / f"{stems[index]}_{kind}.png")
                write_png(targets[-1], picture)
            if preview is not None and named:
                preview.publish(shown_picture(named))
            written.append(targets)
        return written

    def finish(group, milliseconds, written) -> None:
        per_image = milliseconds / len(group)
        for (index, image), targets in zip(group, written):
            summary.outputs += targets
            summary.processed.append(str(paths[index]))
            summary.latencies_ms.append(per_image)
            report(f"{paths[index]}: {image.shape[1]}x{image.shape[0]}, {per_image:.1f} ms")

    with WritingThread("ddrnet-writer") as writer:
        for group, label_maps, pictures, milliseconds in runner.map(segment, groups()):
            writer.submit(
                functools.partial(write, group, label_maps, pictures),
                functools.partial(finish, group, milliseconds),
            )


def unique_stems(stems: Iterable[str]) -> list[str]:
    """Output names from stems; a repeated stem (same name in two folders) gets the first
    suffix ``_1``, ``_2``, ... that is no other stem or name given (``a``, ``a``, ``a_1`` ->
    ``a``, ``a_2``, ``a_1``)."""
    stems = list(stems)
    given = set(stems)
    used: set[str] = set()
    unique = []
    for stem in stems:
        name, count = stem, 0
        while name in used or (count and name in given):
            count += 1
            name = f"{stem}_{count}"
        used.add(name)
        unique.append(name)
    return unique
