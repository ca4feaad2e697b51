"""A small HTTP server for a segmentation model, with a web page to try it.

Endpoints (``create_app``):

- ``GET /``: the demo page (``ddrnet/static/index.html`` + ``app.js``; no external resources):
  an image file, a demo frame, or the browser's camera, frame after frame.
- ``GET /health``: ``{"status": "ok", "architecture", "num_classes", "classes": [...]}``.
- ``POST /predict?format=png|overlay|json|confidence[&min_confidence=P]``: the image as a
  multipart file (any field name) or as the raw request body. ``png``: the label map as an
  indexed PNG with the data set's palette, one class id per pixel; ``overlay``: the
  prediction over the image with a legend (RGB PNG, the image's height, wider by the
  legend); ``json``: per-class pixel shares in percent, ``latency_ms`` and the image size;
  ``confidence``: the winning class's probability per pixel as a grey PNG (value / 255).
  ``min_confidence`` (in (0, 1)) labels the pixels below it unknown (255, black in the
  overlay; the JSON adds their share as ``unknown`` and the ``mean_confidence``). Image
  responses carry the same timings in ``X-Latency-Ms`` / ``X-Total-Ms`` headers.
- ``GET /demo``: the demo frames shipped under ``ddrnet/assets/demo/`` (empty list if none);
  ``GET /demo/NAME``: one of them.

Errors are JSON ``{"error": message}``: 400 for a missing, non-image or truncated upload,
413 for a body over the upload limit or an image over the pixel limit (decompression bombs
are refused from the header, before any pixel is decoded).

The model is loaded once. ``make_server`` runs the app under waitress: one thread watches every
connection (an idle or stalled client holds no thread), a fixed pool of worker threads runs the
requests, and a connection idle for ``timeout`` seconds is closed. Image decoding and encoding
run in parallel in the workers; inference is serialised by a lock (one model, and PyTorch
already uses every core for one image).
"""

from __future__ import annotations

import io
import logging
import threading
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import nn

from ddrnet.choices import (
    SERVE_HOST,
    SERVE_MAX_PIXELS,
    SERVE_MAX_UPLOAD_MB,
    SERVE_PORT,
    SERVE_THREADS,
    SERVE_TIMEOUT_S,
)
from ddrnet.data.io import demo_frames, png_bytes
from ddrnet.engine.predictor import mark_unknown, unknown_label
from ddrnet.render import confidence_picture
from ddrnet.runner import SegmentationRunner

logger = logging.getLogger(__name__)

# Open connections beyond this wait in the listen backlog until others close.
CONNECTION_LIMIT = 500
FORMATS = ("png", "overlay", "json", "confidence")
# Formats Pillow may open: the common photo formats, nothing exotic (smaller attack surface).
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF", "PPM")


class RequestError(Exception):
    """A request the server refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def decode_image(data: bytes, max_pixels: int = SERVE_MAX_PIXELS) -> np.ndarray:
    """Uploaded bytes -> ``(H, W, 3)`` uint8 RGB, or ``RequestError`` (400 / 413).

    The pixel count is checked from the header before decoding, so a small file that declares
    a huge image (a decompression bomb) costs nothing. Pillow's own bomb check (which raises
    above twice ``Image.MAX_IMAGE_PIXELS``) is mapped to 413 as well.
    """
    from ddrnet.data.io import ImageReadError, to_rgb_array, upright, upright_size

    if not data:
        raise RequestError(400, "no image in the request: send a file field or a raw body")
    try:
        image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except Image.DecompressionBombError as error:
        raise RequestError(413, f"image refused as a decompression bomb ({error})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise RequestError(
            400, f"the upload is not an image in a supported format ({', '.join(IMAGE_FORMATS)})"
        ) from None
    width, height = upright_size(image)
    if width * height > max_pixels:
        raise RequestError(
            413,
            f"image is {width}x{height} = {width * height} pixels, over this server's limit of "
            f"{max_pixels} pixels; resize it first",
        )
    if width == 0 or height == 0:
        raise RequestError(400, "image has zero size")
    try:
        image.load()
        return to_rgb_array(upright(image), "upload")
    except Image.DecompressionBombError as error:
        raise RequestError(413, f"image refused as a decompression bomb ({error})") from None
    except (OSError, SyntaxError, ValueError, ImageReadError) as error:
        # Truncated or corrupt data: Pillow raises OSError ("image file is truncated") etc.
        raise RequestError(400, f"the image cannot be decoded: {error}") from None


@dataclass
class Prediction:
    """One segmented image: ``labels`` ``(H, W)`` class ids (uint8 for <= 256 classes),
    their ``(H, W)`` float32 ``confidence`` if asked for (else None), ``latency_ms`` of the
    model alone."""

    image: np.ndarray
    labels: np.ndarray
    latency_ms: float
    confidence: np.ndarray | None = None


class SegmentationService:
    """The loaded model in a ``SegmentationRunner`` (the predictor, classes and pictures
    ``ddrnet predict`` uses), with thread-safe prediction and a per-request
    ``min_confidence``."""

    def __init__(
        self,
        model: nn.Module,
        device: str | torch.device = "cpu",
        amp_dtype: torch.dtype | None = None,
    ) -> None:
        # decode_image refuses uploads over the server's max_pixels before decoding them.
        self.runner = SegmentationRunner(model.eval(), torch.device(device), amp_dtype)
        self.class_names = self.runner.class_names
        self.palette = [list(colour) for colour in self.runner.palette]
        metadata = getattr(model, "metadata", None)
        self.architecture = metadata.architecture if metadata else type(model).__name__
        # One forward pass at a time: the modules are shared, and on a CPU PyTorch already
        # spreads one pass over all cores, so parallel passes would only compete.
        self._lock = threading.Lock()

    def predict(
        self, image: np.ndarray, min_confidence: float | None = None, confidence: bool = False
    ) -> Prediction:
        """Label map of an ``(H, W, 3)`` uint8 RGB image at its own resolution; with
        ``confidence`` or ``min_confidence``, its confidence map too, and the pixels below
        ``min_confidence`` labelled ``unknown_label`` (255). The first call also warms the
        kernels up (``SegmentationRunner.labels``), untimed."""
        confidence = confidence or min_confidence is not None
        with self._lock:
            (labels,), confidences, latency = self.runner.labels([image], confidence)
        confidences = confidences[0] if confidences else None
        if min_confidence is not None:
            unknown = unknown_label(len(self.class_names))
            mark_unknown(labels, confidences, min_confidence, unknown)
        return Prediction(image, labels, latency, confidences)

    def shares(self, labels: np.ndarray) -> dict[str, float]:
        """Percent of the image's pixels per class (every class listed), and ``unknown``
        for pixels of no class (``min_confidence``) if there are any: they sum to 100."""
        classes = len(self.class_names)
        counts = np.bincount(labels.ravel(), minlength=classes)
        total = max(1, labels.size)
        shares = {
            name: round(100.0 * int(count) / total, 4)
            for name, count in zip(self.class_names, counts)
        }
        if len(counts) > classes:
            shares["unknown"] = round(100.0 * int(counts[classes:].sum()) / total, 4)
        return shares

    def overlay_png(self, prediction: Prediction) -> bytes:
        pictures = self.runner.pictures(prediction.image, prediction.labels, ["overlay"])
        return png_bytes(pictures["overlay"])

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "architecture": self.architecture,
            "num_classes": len(self.class_names),
            "classes": [
                {"id": index, "name": name, "colour": colour}
                for index, (name, colour) in enumerate(zip(self.class_names, self.palette))
            ],
        }


def static_folder() -> Path:
    return Path(str(resources.files("ddrnet") / "static"))


def create_app(
    model: nn.Module,
    *,
    max_upload_mb: float = SERVE_MAX_UPLOAD_MB,
    max_pixels: int = SERVE_MAX_PIXELS,
    demo_folder: Path | None = None,
    device: str | torch.device = "cpu",
    amp_dtype: torch.dtype | None = None,
):
    """The Flask application serving ``model`` (on ``device``, under autocast to
    ``amp_dtype`` when given).

    ``demo_folder`` defaults to the package's ``assets/demo`` (``ddrnet.data.io.demo_frames``;
    absent: ``/demo`` lists nothing). Returns a ``flask.Flask``; run it with ``make_server``
    (waitress).
    """
    from flask import Flask, Response, jsonify, send_file

    if max_upload_mb <= 0 or max_pixels <= 0:
        raise ValueError("max_upload_mb and max_pixels must be positive")
    service = SegmentationService(model, device=device, amp_dtype=amp_dtype)
    app = Flask(__name__, static_folder=str(static_folder()), static_url_path="/static")
    # Werkzeug answers 413 itself once a body exceeds this, before reading it into memory.
    app.config["MAX_CONTENT_LENGTH"] = int(max_upload_mb * 1024 * 1024)
    app.extensions["ddrnet_service"] = service
    app.json.sort_keys = False  # keep class order (Flask sorts JSON keys by default)
    _add_error_handlers(app, max_upload_mb)

    @app.get("/")
    def index() -> Response:
        return send_file(static_folder() / "index.html", mimetype="text/html")

    @app.get("/health")
    def health() -> Response:
        return jsonify(
            {**service.health(), "max_upload_mb": max_upload_mb, "max_pixels": max_pixels}
        )

    @app.post("/predict")
    def predict() -> Response:
        return _predict(service, max_pixels)

    @app.get("/demo")
    def demo_list() -> Response:
        names = [path.name for path in demo_frames(demo_folder)]
        return jsonify([{"name": name, "url": f"/demo/{name}"} for name in names])

    @app.get("/demo/<name>")
    def demo_frame(name: str) -> Response:
        # Only names from the listing: no path from the client ever reaches the file system.
        frames = {path.name: path for path in demo_frames(demo_folder)}
        if name not in frames:
            raise RequestError(404, f"no demo frame {name!r}; GET /demo lists them")
        return send_file(frames[name])

    return app


def _add_error_handlers(app: Any, max_upload_mb: float) -> None:
    """Every error as JSON ``{"error": message}`` with its status; an unexpected exception
    as a 500 whose traceback goes to the operator's log, not to the client."""
    from flask import Response, jsonify, request
    from werkzeug.exceptions import HTTPException

    def error(status: int, message: str) -> Response:
        response = jsonify({"error": message})
        response.status_code = status
        return response

    @app.errorhandler(HTTPException)
    def http_error(exception: HTTPException) -> Response:
        if exception.code == 413:
            return error(413, f"upload larger than this server's limit of {max_upload_mb:g} MB")
        return error(exception.code or 500, exception.description or exception.name)

    @app.errorhandler(RequestError)
    def refused(exception: RequestError) -> Response:
        return error(exception.status, exception.message)

    @app.errorhandler(Exception)
    def unexpected(exception: Exception) -> Response:
        # The server keeps serving.
        logger.exception("error while handling %s %s", request.method, request.path)
        return error(500, f"internal error ({type(exception).__name__}); see the server log")


def _uploaded_image() -> tuple[bytes, dict[str, str]]:
    """The current request's image bytes and the other fields of its form (if any)."""
    from flask import request

    if request.mimetype == "multipart/form-data":
        # A form's optional file input left empty sends a part without a file name: no file.
        files = [f for uploads in request.files.listvalues() for f in uploads if f.filename]
        if not files:
            raise RequestError(400, "the multipart request has no file field")
        if len(files) > 1:  # the others would go unanswered without a word
            raise RequestError(
                400, f"the multipart request has {len(files)} files: send one image per request"
            )
        return files[0].read(), request.form.to_dict()
    # The raw body whatever its Content-Type says (never parsed as a form: `curl
    # --data-binary @f.png` labels it x-www-form-urlencoded); decode_image tells an image
    # from its bytes.
    return request.get_data(cache=False), {}


# What ``POST /predict`` takes, from the query string or the form's fields.
PREDICT_OPTIONS = ("format", "min_confidence")


def _check_options(form: dict[str, str]) -> None:
    """Refuse an option ``/predict`` does not take (it would be ignored), one given twice
    (which would win?) or given empty."""
    from flask import request

    unknown = sorted((set(request.args) | set(form)) - set(PREDICT_OPTIONS))
    if unknown:
        raise RequestError(
            400, f"unknown option {unknown[0]!r}: /predict takes {', '.join(PREDICT_OPTIONS)}"
        )
    for name in PREDICT_OPTIONS:
        values = request.args.getlist(name) + ([form[name]] if name in form else [])
        if len(values) > 1:
            raise RequestError(400, f"{name} is given {len(values)} times; give it once")
        if values and not values[0]:
            raise RequestError(400, f"{name} is empty")


def _option(name: str, form: dict[str, str]) -> str | None:
    """A request option: from the query string, else from the form's fields."""
    from flask import request

    return request.args.get(name) or form.get(name)


def _min_confidence(form: dict[str, str]) -> float | None:
    """The request's ``min_confidence``, a number in (0, 1), or None."""
    text = _option("min_confidence", form)
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < 1:  # nan too
        raise RequestError(400, f"min_confidence must be a number in (0, 1), got {text!r}")
    return value


def _predict(service: SegmentationService, max_pixels: int) -> Any:
    """``POST /predict``: the uploaded image segmented, answered in the asked format."""
    from flask import Response, jsonify

    received = time.perf_counter()
    data, form = _uploaded_image()
    _check_options(form)
    output = _option("format", form) or "json"
    if output not in FORMATS:
        raise RequestError(400, f"format must be one of {', '.join(FORMATS)}, got {output!r}")
    min_confidence = _min_confidence(form)
    image = decode_image(data, max_pixels)
    prediction = service.predict(image, min_confidence, confidence=output == "confidence")
    height, width = prediction.labels.shape
    if output == "json":
        answer = {
            "architecture": service.architecture,
            "width": width,
            "height": height,
            "latency_ms": round(prediction.latency_ms, 2),
            "total_ms": round((time.perf_counter() - received) * 1000, 2),
            "shares": service.shares(prediction.labels),
        }
        if prediction.confidence is not None:
            answer["mean_confidence"] = round(100.0 * float(prediction.confidence.mean()), 4)
        return jsonify(answer)
    if output == "confidence":
        body = png_bytes(confidence_picture(prediction.confidence))
    elif output == "png":
        body = png_bytes(prediction.labels, service.palette)
    else:
        body = service.overlay_png(prediction)
    response = Response(body, mimetype="image/png")
    response.headers["X-Latency-Ms"] = f"{prediction.latency_ms:.2f}"
    response.headers["X-Total-Ms"] = f"{(time.perf_counter() - received) * 1000:.2f}"
    response.headers["X-Image-Size"] = f"{width}x{height}"
    return response


class Server:
    """waitress serving a WSGI app, driven like ``socketserver``: ``server_port``,
    ``serve_forever()`` (blocks), ``shutdown()`` (from another thread), ``server_close()``."""

    def __init__(self, app: Any, host: str, port: int, **adjustments: Any) -> None:
        from waitress.server import create_server

        self._map: dict = {}  # waitress's socket map: the listening sockets and connections
        self._server = create_server(app, map=self._map, host=host, port=port, **adjustments)
        if hasattr(self._server, "effective_port"):
            self.server_port: int = self._server.effective_port
        else:  # a host name with several addresses: one socket each
            self.server_port = self._server.effective_listen[0][1]
        self._stop = threading.Event()
        self._stopped = threading.Event()

    def serve_forever(self) -> None:
        """Serve until ``shutdown()`` (or an exception, e.g. ``KeyboardInterrupt``)."""
        from waitress import wasyncore

        adjustments = self._server.adj
        self._stopped.clear()
        try:
            while not self._stop.is_set() and self._map:
                wasyncore.loop(
                    timeout=adjustments.asyncore_loop_timeout,
                    map=self._map,
                    use_poll=adjustments.asyncore_use_poll,
                    count=1,
                )
        finally:
            self._stopped.set()

    def shutdown(self) -> None:
        """Stop ``serve_forever()`` (within a second) and wait until it has returned."""
        self._stop.set()
        if hasattr(self._server, "pull_trigger"):
            self._server.pull_trigger()  # wakes the loop now
        self._stopped.wait(timeout=10)

    def server_close(self) -> None:
        """Stop the worker threads and close every socket."""
        from waitress import wasyncore

        self._server.task_dispatcher.shutdown()
        wasyncore.close_all(self._map)


def make_server(
    app: Any,
    host: str = SERVE_HOST,
    port: int = SERVE_PORT,
    *,
    threads: int = SERVE_THREADS,
    timeout: int = SERVE_TIMEOUT_S,
) -> Server:
    """A production WSGI server (waitress) for ``app``: ``threads`` workers, connections
    closed after ``timeout`` seconds without a byte, at most ``CONNECTION_LIMIT`` open at
    once. ``port=0`` picks a free port, read it back from ``server.server_port``.

    A body declared over twice the app's ``MAX_CONTENT_LENGTH`` is refused by waitress (413,
    plain text) before it is read; up to that, the app refuses it with its JSON message.
    Raises ``OSError`` when the address cannot be bound.
    """
    if threads < 1 or timeout < 1:
        raise ValueError(f"threads and timeout must be at least 1, got {threads}, {timeout}")
    limit = getattr(app, "config", {}).get("MAX_CONTENT_LENGTH")
    body_cap = {"max_request_body_size": 2 * limit + 2**20} if limit else {}
    return Server(
        app,
        host,
        port,
        threads=threads,
        channel_timeout=timeout,
        cleanup_interval=1,  # look for idle connections every second
        connection_limit=CONNECTION_LIMIT,
        asyncore_use_poll=True,  # select() stops at 1024 descriptors
        **body_cap,
    )
