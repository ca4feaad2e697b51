"""A live preview of ``ddrnet predict`` in a browser: the newest picture as an MJPEG stream.

A robot or a server has no screen to show the segmented frames on, and the headless OpenCV
this package uses has no window either. ``Preview`` serves them over HTTP instead, as ROS's
``web_video_server`` and IP cameras do: ``GET /`` is a page showing ``/stream``, a
``multipart/x-mixed-replace`` stream of JPEG pictures that every browser plays as video.
Each viewer is sent the newest picture whenever it is ready for one: a slow viewer or link
skips pictures, and never slows the prediction. Python's own threading HTTP server is
enough for a few viewers, and needs nothing installed.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from ddrnet.errors import UsageError

JPEG_QUALITY = 80
BOUNDARY = "ddrnet-frame"
PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ddrnet predict: live preview</title>
<style>body{margin:0;background:#111;color:#ddd;font-family:system-ui,sans-serif}
p{margin:.5rem}img{max-width:100%}</style></head>
<body><p>ddrnet predict: the newest picture, as it is segmented</p>
<img src="stream" alt="the newest segmented picture"></body></html>
"""


# The largest TCP port number; port 0 asks the system for a free one.
MAX_PORT = 65535


def parse_address(value: str) -> tuple[str, int]:
    """``"PORT"`` or ``"HOST:PORT"`` to ``(host, port)``; the host defaults to 127.0.0.1 (this
    machine only; ``0.0.0.0:PORT`` shows it to the network). ``UsageError`` otherwise."""
    host, _, port = value.rpartition(":")
    if not port.isdigit() or not 0 <= int(port) <= MAX_PORT:
        raise UsageError(f"{value!r}: give PORT or HOST:PORT, e.g. 8080 or 0.0.0.0:8080")
    return host.strip("[]") or "127.0.0.1", int(port)


class Preview:
    """Serves the pictures given to ``publish`` at ``url`` (``port=0``: a free port) until
    ``close()``. ``UsageError`` when the address cannot be listened on."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._ready = threading.Condition()
        self._jpeg: bytes | None = None
        self._count = 0  # pictures published so far
        self._closed = False
        self.viewers = 0  # streams open now
        try:
            self._server = ThreadingHTTPServer((host, port), functools.partial(_Viewer, self))
        except OSError as error:
            raise UsageError(
                f"--preview {host}:{port}: cannot listen there ({error.strerror or error})"
            ) from None
        self._server.daemon_threads = True
        self.host, self.port = host, self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="ddrnet-preview", daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def publish(self, picture: np.ndarray) -> None:
        """Show ``picture``, ``(H, W, 3)`` uint8 RGB or ``(H, W)`` grey, to every viewer
        (encoded here, once; not at all while nobody watches: a viewer who comes gets the
        next picture)."""
        import cv2

        from ddrnet.render import to_bgr

        if self.viewers == 0:
            return
        ok, data = cv2.imencode(".jpg", to_bgr(picture), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise RuntimeError(f"JPEG encoding failed for a {picture.shape} picture")
        with self._ready:
            self._jpeg, self._count = data.tobytes(), self._count + 1
            self._ready.notify_all()

    def newer_than(self, seen: int, timeout: float = 1.0) -> tuple[int, bytes] | None:
        """The newest picture's number and JPEG once there is one after number ``seen``;
        None after ``timeout`` seconds without one, or when closed."""
        with self._ready:
            self._ready.wait_for(lambda: self._count > seen or self._closed, timeout)
            if self._closed or self._count <= seen or self._jpeg is None:
                return None
            return self._count, self._jpeg

    @property
    def closed(self) -> bool:
        return self._closed

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        """Counts one more viewer while the block runs (``publish`` encodes for viewers)."""
        with self._ready:
            self.viewers += 1
        try:
            yield
        finally:
            with self._ready:
                self.viewers -= 1

    def close(self) -> None:
        """End every viewer's stream and stop serving."""
        with self._ready:
            self._closed = True
            self._ready.notify_all()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Preview:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _Viewer(BaseHTTPRequestHandler):
    """One browser connection: the page, or the stream of pictures."""

    def __init__(self, preview: Preview, *args, **kwargs) -> None:
        self.preview = preview
        super().__init__(*args, **kwargs)

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path in ("/", "/index.html"):
            body = PAGE.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path == "/stream":
            self._stream()
        else:
            self.send_error(404)

    def _stream(self) -> None:
        # Counted before the answer starts: a client that has the headers is a viewer; one
        # who goes away (a broken pipe) just ends its stream.
        with self.preview.watching(), contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.send_response(200)
            self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            seen = 0
            while not self.preview.closed:
                newest = self.preview.newer_than(seen)
                if newest is None:
                    continue
                seen, jpeg = newest
                head = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                head += f"Content-Length: {len(jpeg)}\r\n\r\n"
                self.wfile.write(head.encode() + jpeg + b"\r\n")
                self.wfile.flush()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass  # a request line per picture would flood the prediction's output
