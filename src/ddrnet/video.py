"""Videos for ``ddrnet predict``: the results written (``VideoOutputs``), and one video
segmented from its source (``ddrnet.video_source.VideoSource``: files, cameras, streams) to
them (``segment_video``).
"""

from __future__ import annotations

import errno
import glob
import itertools
import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from ddrnet.atomic import (
    commit,
    commit_folder,
    remove_stale_temporaries,
    temporary_beside,
    temporary_folder_beside,
)
from ddrnet.background import WritingThread
from ddrnet.data.io import write_png
from ddrnet.errors import Terminated, UsageError
from ddrnet.limits import check_pixels
from ddrnet.video_source import VideoSource, VideoSourceError, quiet_ffmpeg, warn_if_frames_lost

if TYPE_CHECKING:
    from ddrnet.predict import PredictionSummary
    from ddrnet.preview import Preview
    from ddrnet.runner import SegmentationRunner

logger = logging.getLogger(__name__)


def shown_picture(pictures: dict[str, np.ndarray]) -> np.ndarray:
    """The picture a preview shows of a frame's ``pictures``: the overlay, else the first."""
    return pictures.get("overlay", next(iter(pictures.values())))


class VideoOutputs:
    """``<stem>_<kind>.mp4`` files in ``folder``, one per kind of picture, at ``fps``; each
    is created at its first frame, which fixes its size. With ``labels``, label maps go to
    ``<stem>_labels/<frame number, 6 digits>.png`` (indexed PNGs in ``palette``'s colours).
    ``paths`` lists the files and folders created, ``frames`` how many frames each video
    holds once closed. Close it (or use it as a context manager) to finish the files: a video
    that is not closed cannot be played. Videos and the label folder are filled under
    temporary names and take their names when closed, replacing an earlier run's whole (a
    label folder holding anything else than label maps is an error, not replaced).

    ``add`` hands a source frame's pictures to a thread of its own, which encodes them while
    the next frame is segmented (a few frames wait at most); ``write`` encodes at once."""

    def __init__(
        self,
        folder: Path,
        stem: str,
        fps: float,
        palette: Sequence[Sequence[int]] | None = None,
        preview: Preview | None = None,
        labels: bool = False,
    ) -> None:
        self.folder, self.stem, self.fps, self.palette = Path(folder), stem, fps, palette
        self.preview, self.keeps_labels = preview, labels
        if labels:  # before any video is started: a refusal leaves nothing behind
            _check_label_folder(self.folder / f"{stem}_labels")
        self.paths: list[Path] = []
        self.frames = 0
        self._writers: dict[str, object] = {}
        self._temporaries: dict[str, Path] = {}  # kind -> the file its writer fills
        self._label_folder: Path | None = None  # the folder label maps fill, until closed
        self._cleared = False  # the temporaries of a killed run removed
        self._sizes: dict[str, tuple[int, int]] = {}
        self._encoder = WritingThread("ddrnet-video-writer")
        self._last: tuple[int, dict[str, np.ndarray] | None] = (-1, None)
        self._closed = False

    def add(
        self, index: int, pictures: dict[str, np.ndarray], labels: np.ndarray | None = None
    ) -> None:
        """The pictures of the source's frame ``index`` (kind -> ``(H, W, 3)`` uint8 RGB or
        ``(H, W)`` grey), and its ``(H, W)`` label map if it is to be kept, to be written in
        the writing thread. The frames since the last one added, which the source dropped,
        get the last one's pictures (not its labels), and those before the first one added
        get the first one's: the videos keep the source's timing. An
        error of an earlier frame's writing is raised here (or by ``close``)."""
        if labels is not None and not self.keeps_labels:
            raise ValueError("label maps given to VideoOutputs made without labels=True")
        last_index, last = self._last
        self._last = (index, pictures)

        def encode() -> None:
            if last is not None and index > last_index + 1:
                self.write(last, times=index - last_index - 1)
            # Frames dropped before the first one segmented have no result of their own:
            # they get the first, so that the video starts when the source did.
            self.write(pictures, times=index + 1 if last is None else 1)
            if labels is not None:
                self._write_labels(index, labels)
            if self.preview is not None and pictures:
                self.preview.publish(shown_picture(pictures))

        self._encoder.submit(encode)

    def write(self, pictures: dict[str, np.ndarray], times: int = 1) -> None:
        """Append ``pictures`` (kind -> ``(H, W, 3)`` uint8 RGB or ``(H, W)`` grey) to the
        kinds' videos, ``times`` times over, now. A picture of another size than its video's
        first is a ``VideoSourceError`` (a video's frames all have one size)."""
        from ddrnet.render import to_bgr

        for kind, picture in pictures.items():
            if kind not in self._writers:
                self._open(kind, picture.shape[:2])
            height, width = self._sizes[kind]
            if picture.shape[:2] != (height, width):  # a frame of another size mid-video
                raise VideoSourceError(
                    f"frame {self.frames} is {picture.shape[1]}x{picture.shape[0]}, the video "
                    f"{width}x{height}"
                )
            bgr = to_bgr(picture)
            for _ in range(times):
                self._writers[kind].write(bgr)
        self.frames += times

    def _write_labels(self, index: int, labels: np.ndarray) -> None:
        if self._label_folder is None:
            target = self.folder / f"{self.stem}_labels"
            self._clear_stale()
            self._label_folder = temporary_folder_beside(target)
            self.paths.append(target)
        write_png(self._label_folder / f"{index:06d}.png", labels, self.palette)

    def _clear_stale(self) -> None:
        """Remove what a killed run over this video left: the temporaries of its videos, of
        every kind (not only those this run writes), and of its label folder."""
        if self._cleared:
            return
        self._cleared = True
        # ``.<stem>_<kind>.mp4.<random>.tmp.mp4``: kinds are single words, so that another
        # video's stem that starts with this one (``drive_clip`` beside ``drive``) is not ours.
        ours = re.compile(rf"\.({re.escape(self.stem)}_[a-z]+\.mp4)\..+\.tmp\.mp4")
        found = self.folder.glob(f".{glob.escape(self.stem)}_*.tmp.mp4")
        videos = sorted({match[1] for path in found if (match := ours.fullmatch(path.name))})
        labels = f"{self.stem}_labels"
        remove_stale_temporaries(self.folder, (*videos, labels, f"{labels}.partial"))

    def _open(self, kind: str, size: tuple[int, int]) -> None:
        import cv2

        quiet_ffmpeg()
        target = self.folder / f"{self.stem}_{kind}.mp4"
        if target.is_dir():
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(target))
        # Written under a temporary name and renamed when closed: a kill mid-video leaves an
        # earlier run's video whole instead of an unplayable one (an MP4's index comes last).
        self._clear_stale()
        temporary = temporary_beside(target, ".mp4")
        height, width = self._sizes[kind] = size
        writer = cv2.VideoWriter(
            str(temporary), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (width, height)
        )
        if not writer.isOpened():
            temporary.unlink(missing_ok=True)
            raise OSError(f"cannot write {target} (no mp4v encoder)")
        self._writers[kind] = writer
        self._temporaries[kind] = temporary
        self.paths.append(target)

    def close(self, stopped: bool = False) -> None:
        """Encode what waits, then finish the files (playable, under their names, also after
        an error or Ctrl-C); raises the first writing error. ``stopped``: the video ended
        early (an error, Ctrl-C): a file of the same name, a finished run's, is kept, and
        the frames so far go to ``<stem>_<kind>.partial.mp4``; a writing error stops it
        too. A video that cannot be read back whole (a full disk) replaces nothing."""
        if self._closed:
            return
        self._closed = True
        failure: BaseException | None = None
        try:
            self._encoder.close()
        except BaseException as error:  # re-raised once what was written is safe
            failure, stopped = error, True
        for writer in self._writers.values():
            writer.release()
        self._writers.clear()
        temporaries, self._temporaries = self._temporaries, {}
        for kind, temporary in temporaries.items():
            target = self.folder / f"{self.stem}_{kind}.mp4"
            if not self._complete(temporary):
                temporary.unlink(missing_ok=True)
                kept = "the earlier one is kept" if target.exists() else "nothing written"
                failure = failure or OSError(
                    errno.EIO, f"the video could not be written whole (a full disk?); {kept}",
                    str(target),
                )  # fmt: skip
                continue
            partial = target.with_suffix(".partial.mp4")
            _commit(commit, temporary, target, partial if stopped else None)
        folder, self._label_folder = self._label_folder, None
        if folder is not None:
            target = self.folder / f"{self.stem}_labels"
            partial = target.with_name(f"{target.name}.partial")
            _commit(commit_folder, folder, target, partial if stopped else None)
        if failure is not None:
            raise failure

    def _complete(self, video: Path) -> bool:
        """Whether the closed ``video`` opens and holds every frame written: OpenCV's writer
        reports no error (a full disk leaves a file cut short, without the index an MP4
        keeps at its end), so the file is read back before it replaces anything."""
        import cv2

        capture = cv2.VideoCapture(str(video))
        try:
            return capture.isOpened() and int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == self.frames
        finally:
            capture.release()

    def __enter__(self) -> VideoOutputs:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        self.close(stopped=exc_type is not None)


def _commit(
    move: Callable[[Path, Path], None], temporary: Path, target: Path, partial: Path | None
) -> None:
    """``move`` the finished ``temporary`` (a file or folder) to ``target``; with ``partial``
    (the video ended early), to ``partial`` instead when ``target`` holds a finished run's."""
    if partial is not None and target.exists():
        logger.warning("stopped early: %s kept, the frames so far in %s", target, partial)
        target = partial
    move(temporary, target)


def _check_label_folder(folder: Path) -> None:
    """Refuse to replace ``folder`` (``<stem>_labels``) unless it holds only what an earlier
    run wrote there, ``NNNNNN.png`` label maps: anything else may be a user's work."""
    if not folder.exists():
        return
    if not folder.is_dir() or folder.is_symlink():
        raise NotADirectoryError(errno.ENOTDIR, "in the way of a label folder", str(folder))
    foreign = [p.name for p in folder.iterdir() if not re.fullmatch(r"\d{6}\.png", p.name)]
    if foreign:
        raise UsageError(
            f"{folder} holds {foreign[0]!r}, which an earlier run did not write: move it, or "
            "choose another --output (the folder is replaced by this run's label maps)"
        )


def segment_video(
    runner: SegmentationRunner,
    source: str,
    stem: str,
    output_dir: Path,
    kinds: Sequence[str],
    max_frames: int | None,
    progress: bool,
    summary: PredictionSummary,
    max_pixels: int,
    drops: str,
    preview: Preview | None = None,
) -> None:
    """Segment one video file, camera or stream into ``<stem>_<kind>.mp4`` files (and
    ``<stem>_labels/NNNNNN.png`` for ``labels``) in ``output_dir``, for ``run_prediction``:
    its ``summary`` gets the latencies, outputs and dropped frames. ``drops``: one of
    ``DROP_FRAMES``. ``preview``, if given, shows each frame's pictures as they are written.

    A live source that drops frames (``ddrnet.video_source``) fills each dropped frame's place with
    the pictures of the newest frame segmented before it, so that the video keeps the
    source's length and timing. Ctrl-C ends a live source as the end of a file does: its
    videos are closed and kept, and the job goes on; during a file it stops the job."""
    keep_labels = "labels" in kinds
    smoother = runner.smoother()

    def segment(item: tuple[int, np.ndarray]):
        index, frame = item
        (labels,), confidences, milliseconds = runner.labels(
            [frame], "confidence" in kinds, smoother
        )
        # One legend for the whole video: the per-frame legend's width follows the classes
        # present, and a video's frames must all have one size.
        confidence = confidences[0] if confidences else None
        pictures = runner.pictures(
            frame, labels, kinds, every_class_legend=True, confidence=confidence
        )
        return index, pictures, labels if keep_labels else None, milliseconds

    with (
        VideoSource(source, drops) as video,
        VideoOutputs(output_dir, stem, video.fps, runner.palette, preview, keep_labels) as out,
    ):
        check_pixels("its frames", video.width, video.height, max_pixels, max(runner.scales))
        total = max_frames or video.frame_count
        bar = tqdm(total=total, desc=stem, unit="frame", disable=not progress, leave=False)
        results = runner.map(segment, itertools.islice(video.frames(), max_frames))
        segmented = 0
        try:
            for index, pictures, labels, milliseconds in results:
                segmented += 1
                summary.latencies_ms.append(milliseconds)
                out.add(index, pictures, labels)
                bar.update(1)
                if video.drops:
                    bar.set_postfix(dropped=video.dropped, refresh=False)
        except KeyboardInterrupt as stop:
            # A camera or stream ends on Ctrl-C as a file ends; a file (replayed at its rate
            # or not) stops the job, its outputs .partial beside a finished run's.
            if isinstance(stop, Terminated) or not video.live:
                raise
            logger.info("%s: stopped (Ctrl-C) after %d frames segmented", source, segmented)
        finally:
            results.close()
            bar.close()
        if video.drops:
            summary.dropped[source] = (video.dropped, video.frames_read)
        expected = min(video.frame_count or 0, max_frames or video.frame_count or 0)
        cut = not (video.live or video.drops) and 0 < segmented < expected
        out.close(stopped=cut)  # a file cut short did not give all of itself
    if segmented == 0:
        raise VideoSourceError("no frames could be decoded (corrupt or empty video)")
    summary.outputs += out.paths
    if cut:
        warn_if_frames_lost(source, segmented, expected)
        summary.failed[source] = f"{segmented} of its {expected} frames could be decoded"
    else:
        summary.processed.append(source)
