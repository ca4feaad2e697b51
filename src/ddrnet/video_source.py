"""Video sources for ``ddrnet predict`` and ``ddrnet pick``: files, cameras and network
streams (``VideoSource``), read and decoded in a thread of their own, beside the network.

A file gives every frame, decoded a few frames ahead (``READ_AHEAD``). A live source (a camera,
an RTSP/RTMP/UDP/TCP/SRT stream) does not wait for the reader: it delivers frames at its own
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

import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from ddrnet.errors import DDRNetError

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


def warn_if_frames_lost(source: str, decoded: int, expected: int) -> None:
    """Log that a video file gave fewer frames than its header counts (``expected``; 0 when
    it says nothing), as a damaged or cut-off file does: the job goes on with those read."""
    if decoded < expected:
        logger.warning(
            "%s: %d of its %d frames could be decoded (a damaged or cut-off file?)",
            source, decoded, expected,
        )  # fmt: skip


def quiet_ffmpeg() -> None:
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
    quiet_ffmpeg()
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
