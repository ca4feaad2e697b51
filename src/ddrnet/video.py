"""Videos for ``ddrnet predict``: reading files, cameras and network streams
(``VideoSource``), writing the results (``VideoOutputs``), and one video segmented from one
to the other (``segment_video``).

Frames are read and decoded in a thread of their own, beside the network. A file gives every
frame, decoded a few frames ahead (``READ_AHEAD``). A live source (a camera, an
RTSP/RTMP/UDP/TCP/SRT stream) does not wait for the reader: it delivers frames at its own
rate, and one read sequentially by a slower network falls behind, more every second, until
the camera's or the stream's buffer overflows. ``VideoSource`` therefore hands out only a
live source's newest frame, counting the frames it skipped (``dropped``), as Ultralytics'
stream loader and GStreamer's ``appsink drop=true`` do; the segmented frame is then at most
one frame old. ``drop_frames`` chooses: ``"auto"`` (live sources drop, files and HTTP(S)
URLs, which are usually files, do not), ``"yes"`` or ``"no"``. A file (or HTTP URL) that
drops frames is read at its frame rate, as a camera would deliver it: a recorded drive
replayed in real time, the video written showing what the network kept up with.

FFmpeg's own log is silenced (``OPENCV_FFMPEG_LOGLEVEL=-8`` unless set): a source that cannot
be opened is reported in one line that names it. Set ``OPENCV_FFMPEG_LOGLEVEL=24`` to see
FFmpeg's warnings.
"""

from __future__ import annotations

import errno
import glob
import itertools
import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

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
from ddrnet.errors import DDRNetError, Terminated, UsageError
from ddrnet.limits import check_pixels

if TYPE_CHECKING:
    from ddrnet.predict import PredictionSummary
    from ddrnet.preview import Preview
    from ddrnet.runner import SegmentationRunner

logger = logging.getLogger(__name__)

# Live network streams: they run at the sender's rate whether or not anybody reads.
LIVE_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "udp", "tcp", "srt")
# Every URL scheme ``ddrnet predict`` reads through OpenCV's FFmpeg backend.
STREAM_SCHEMES = (*LIVE_SCHEMES, "http", "https")
DROP_FRAMES = ("auto", "yes", "no")
# Frames a source that does not drop frames decodes ahead of the network.
READ_AHEAD = 2
# How long opening a network stream, or waiting for its next frame, may take before the
# source is reported dead (FFmpeg's own default waits for ever on a silent RTSP server).
STREAM_TIMEOUT_MS = 10_000


class VideoSourceError(DDRNetError, ValueError):
    """A video file, camera or stream that cannot be opened or read; the message says why."""


def is_camera(source: str) -> bool:
    """``camera:N``, OpenCV's camera N."""
    return source.startswith("camera:")


def is_stream_url(source: str) -> bool:
    """A URL with one of ``STREAM_SCHEMES`` (``rtsp://host/path``, ``http://...``)."""
    return urlsplit(source).scheme.lower() in STREAM_SCHEMES and "://" in source


def is_camera_or_stream(source: str) -> bool:
    """A camera or a stream's URL: a source that names no file on this machine."""
    return is_camera(source) or is_stream_url(source)


def check_drop_frames(drop_frames: str) -> None:
    """``ValueError`` unless ``drop_frames`` is one of ``DROP_FRAMES``."""
    if drop_frames not in DROP_FRAMES:
        raise ValueError(f"drop_frames must be one of {DROP_FRAMES}, got {drop_frames!r}")


def is_live(source: str) -> bool:
    """A camera or a live network stream (``LIVE_SCHEMES``): frames come at the source's
    rate, not the reader's."""
    return is_camera(source) or (is_stream_url(source) and urlsplit(source).scheme in LIVE_SCHEMES)


def source_stem(source: str) -> str:
    """The stem of a source's output files: a file's stem (as an image's), ``camera0`` for
    ``camera:0``, and for a URL the last part of its path (``rtsp://cam/live/ch1.sdp`` ->
    ``ch1``) or, without a path, its host, with characters that are not safe in file names
    made ``_``."""
    if not is_camera_or_stream(source):
        return Path(source).stem
    if is_camera(source):
        stem = "camera" + source.split(":", 1)[1]
    else:
        parts = urlsplit(source)
        stem = Path(parts.path).stem or parts.hostname or parts.scheme
    return re.sub(r"[^A-Za-z0-9._-]", "_", stem) or "video"


def _quiet_ffmpeg() -> None:
    """Silence FFmpeg's own log lines ("[tcp @ 0x...] Connection refused", decoder
    complaints), which would come beside the one line that names the source, unless the user
    set ``OPENCV_FFMPEG_LOGLEVEL``. OpenCV reads it when it first uses FFmpeg, so this runs
    before each capture and writer this module opens."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")


def _open_capture(source: str):
    """An opened ``cv2.VideoCapture`` for ``source``, or ``VideoSourceError``. OpenCV's own
    warnings while it tries its backends ("can't open camera by index", one line per
    backend) are silenced, unless the user set ``OPENCV_LOG_LEVEL``: the error says it."""
    import cv2

    if not is_camera_or_stream(source):  # a file, or a device such as /dev/video0
        path = Path(source)
        if not path.exists() or path.is_dir():
            what = "a folder" if path.is_dir() else "no such file"
            raise VideoSourceError(f"cannot open the video: {what}")
    _quiet_ffmpeg()
    opencv_log = cv2.utils.logging
    level = opencv_log.getLogLevel()
    if "OPENCV_LOG_LEVEL" not in os.environ:
        opencv_log.setLogLevel(opencv_log.LOG_LEVEL_ERROR)
    try:
        capture, why = _capture(source)
    finally:
        opencv_log.setLogLevel(level)
    if not capture.isOpened():
        capture.release()
        raise VideoSourceError(f"cannot open the video: {why}")
    return capture


def camera_index(source: str) -> int:
    """N of ``camera:N``; a ``VideoSourceError`` when N is not a camera number."""
    index = source.split(":", 1)[1]
    if not index.isdigit():
        raise VideoSourceError(f"{source}: give a camera number, e.g. camera:0")
    return int(index)


def _capture(source: str):
    """``cv2.VideoCapture`` of ``source``, opened or not, and what a failure would mean."""
    import cv2

    if is_camera(source):
        return cv2.VideoCapture(camera_index(source)), "no such camera, or it is in use"
    if is_stream_url(source):
        timeouts = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, STREAM_TIMEOUT_MS]
        timeouts += [cv2.CAP_PROP_READ_TIMEOUT_MSEC, STREAM_TIMEOUT_MS]
        why = (
            "unreachable or refused, no stream at that address, or not a video (waited "
            f"{STREAM_TIMEOUT_MS / 1000:g} s at most)"
        )
        return cv2.VideoCapture(source, cv2.CAP_ANY, timeouts), why
    return cv2.VideoCapture(source), "missing codec, or a corrupt file"


class VideoSource:
    """An opened video file, camera or network stream; ``frames()`` reads it once.

    ``width``, ``height`` (pixels) and ``fps`` are what the source reports (``fps`` 25 where
    it reports none); ``frame_count`` is None for live sources and files that do not say.
    ``drops`` says whether ``frames()`` skips to the newest frame (see the module's text).
    Use it as a context manager, or call ``close()``: it stops the reading thread and
    releases the capture.
    """

    def __init__(self, source: str | Path | int, drop_frames: str = "auto") -> None:
        import cv2

        check_drop_frames(drop_frames)
        if isinstance(source, int) and not isinstance(source, bool):
            source = f"camera:{source}"  # OpenCV's camera numbers
        if not isinstance(source, (str, Path)):
            raise TypeError(f"source takes a path, camera:N or a URL, got {source!r}")
        source = str(source)
        self.source = source
        self.live = is_live(source)
        self.drops = self.live if drop_frames == "auto" else drop_frames == "yes"
        self._capture = _open_capture(source)
        self.width = int(self._capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        self.height = int(self._capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        self.fps = self._capture.get(cv2.CAP_PROP_FPS) or 25.0
        count = int(self._capture.get(cv2.CAP_PROP_FRAME_COUNT))
        self.frame_count = count if count > 0 and not self.live else None
        self.frames_read = 0  # by the capture, handed out or not
        self.dropped = 0  # read, then replaced by a newer frame before anybody took it
        self._stop = threading.Event()
        self._ready = threading.Condition()  # guards the frames read and not yet handed out
        self._thread: threading.Thread | None = None

    def frames(self) -> Iterator[tuple[int, np.ndarray]]:
        """``(index, frame)`` pairs: ``index`` counts the source's frames from 0 (it jumps
        past dropped frames), ``frame`` is ``(height, width, 3)`` uint8 RGB.

        Frames are read and decoded by a thread of their own, which starts now (OpenCV
        decodes without the GIL, beside the network): a source that drops frames keeps only
        the newest one waiting, replacing it as each new frame comes; any other source reads
        up to ``READ_AHEAD`` frames ahead."""
        import cv2

        if self._thread is not None:
            raise RuntimeError(f"{self.source}: frames() reads a source once; open it again")
        ready = self._ready
        waiting: deque[tuple[int, np.ndarray]] = deque()  # read, not yet handed out
        finished = threading.Event()
        failure: list[BaseException] = []  # what stopped the reader, raised to the taker
        # A file (or an HTTP URL) that drops frames is read at its frame rate, as if it were
        # live: a replay of a recorded drive shows what the network would have kept up with.
        paced = self.drops and not self.live
        start = time.perf_counter()

        def read() -> None:
            try:
                while not self._stop.is_set():
                    if paced:
                        time.sleep(
                            max(0.0, start + self.frames_read / self.fps - time.perf_counter())
                        )
                    ok, frame = self._capture.read()
                    if not ok:
                        return
                    with ready:
                        if self.drops:
                            self.dropped += len(waiting)
                            waiting.clear()
                        else:
                            ready.wait_for(lambda: len(waiting) < READ_AHEAD or self._stop.is_set())
                        waiting.append((self.frames_read, frame))
                        self.frames_read += 1
                        ready.notify_all()
            except BaseException as error:  # noqa: BLE001 (raised again in the taking thread)
                failure.append(error)
            finally:
                with ready:
                    finished.set()
                    ready.notify_all()

        def take() -> Iterator[tuple[int, np.ndarray]]:
            while True:
                with ready:
                    ready.wait_for(lambda: waiting or finished.is_set())
                    if not waiting:
                        if failure:
                            raise failure[0]
                        return
                    index, frame = waiting.popleft()
                    ready.notify_all()
                yield index, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)

        self._thread = threading.Thread(target=read, name="ddrnet-video-reader", daemon=True)
        self._thread.start()
        return take()

    def close(self) -> None:
        """Stop reading and release the capture. A reading thread still blocked in a read
        (a silent stream) is left to time out on its own, and the capture with it: releasing
        it under that read would crash OpenCV."""
        with self._ready:
            self._stop.set()
            self._ready.notify_all()  # a reader waiting for room
        if self._thread is not None:
            self._thread.join(timeout=STREAM_TIMEOUT_MS / 1000 + 1)
            if self._thread.is_alive():
                return
        self._capture.release()

    def __enter__(self) -> VideoSource:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


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

        _quiet_ffmpeg()
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
        the frames so far go to ``<stem>_<kind>.partial.mp4``."""
        try:
            self._encoder.close()
        finally:
            for writer in self._writers.values():
                writer.release()
            self._writers.clear()
            temporaries, self._temporaries = self._temporaries, {}
            for kind, temporary in temporaries.items():
                target = self.folder / f"{self.stem}_{kind}.mp4"
                if stopped and target.exists():
                    kept, target = target, target.with_suffix(".partial.mp4")
                    logger.warning("stopped early: %s kept, the frames so far in %s", kept, target)
                commit(temporary, target)
            folder, self._label_folder = self._label_folder, None
            if folder is not None:
                target = self.folder / f"{self.stem}_labels"
                if stopped and target.exists():
                    kept, target = target, target.with_name(f"{target.name}.partial")
                    logger.warning("stopped early: %s kept, the frames so far in %s", kept, target)
                commit_folder(folder, target)

    def __enter__(self) -> VideoOutputs:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        self.close(stopped=exc_type is not None)


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

    A live source that drops frames (``ddrnet.video``) fills each dropped frame's place with
    the pictures of the newest frame segmented before it, so that the video keeps the
    source's length and timing. Ctrl-C ends a live source as the end of a file does: its
    videos are closed and kept, and the job goes on."""
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
            if isinstance(stop, Terminated) or not (video.live or video.drops):
                raise
            logger.info("%s: stopped (Ctrl-C) after %d frames segmented", source, segmented)
        finally:
            results.close()
            bar.close()
        if video.drops:
            summary.dropped[source] = (video.dropped, video.frames_read)
    if segmented == 0:
        raise VideoSourceError("no frames could be decoded (corrupt or empty video)")
    expected = min(video.frame_count or 0, max_frames or video.frame_count or 0)
    if not (video.live or video.drops) and segmented < expected:
        logger.warning(
            "%s: %d of its %d frames could be decoded (a damaged or cut-off file?)",
            source, segmented, expected,
        )  # fmt: skip
    summary.outputs += out.paths
    summary.processed.append(source)
