"""The live preview: an MJPEG stream of the newest picture, read as a browser reads it."""

from __future__ import annotations

import http.client
import threading

import cv2
import numpy as np
import pytest
import torch

import ddrnet
import ddrnet.video_source
from ddrnet.errors import UsageError
from ddrnet.models.weights import bundled_model_path
from ddrnet.predict import run_prediction
from ddrnet.preview import BOUNDARY, Preview, parse_address
from ddrnet.runner import SegmentationRunner

from helpers import FakeCamera, headless_chromium, needs_chromium, run_ddrnet


def _next_picture(response: http.client.HTTPResponse) -> np.ndarray | None:
    """The next JPEG part of a ``multipart/x-mixed-replace`` stream, decoded (BGR); None at
    the stream's end."""
    line = response.readline()
    while line and line.strip() != f"--{BOUNDARY}".encode():
        line = response.readline()
    if not line:
        return None
    headers = {}
    while (line := response.readline().strip()) != b"":
        name, _, value = line.decode().partition(":")
        headers[name.lower()] = value.strip()
    assert headers["content-type"] == "image/jpeg"
    data = response.read(int(headers["content-length"]))
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


def _get(preview: Preview, path: str) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection("127.0.0.1", preview.port, timeout=10)
    connection.request("GET", path)
    return connection.getresponse()


def test_addresses_are_a_port_or_host_and_port() -> None:
    assert parse_address("8080") == ("127.0.0.1", 8080)
    assert parse_address("0.0.0.0:9000") == ("0.0.0.0", 9000)
    for bad in ("abc", "70000", "host:", ":x"):
        with pytest.raises(UsageError, match="give PORT or HOST:PORT"):
            parse_address(bad)


def test_a_viewer_gets_the_page_then_each_newest_picture_until_closed() -> None:
    red = np.zeros((32, 48, 3), np.uint8)
    red[..., 0] = 255  # RGB
    with Preview() as preview:
        preview.publish(red)  # nobody watches: not even encoded
        assert preview.viewers == 0 and preview.newer_than(0, timeout=0) is None
        page = _get(preview, "/")
        assert page.status == 200 and b'<img src="stream"' in page.read()
        assert _get(preview, "/nothing").status == 404
        stream = _get(preview, "/stream")
        assert stream.getheader("Content-Type") == f"multipart/x-mixed-replace; boundary={BOUNDARY}"
        preview.publish(red)
        first = _next_picture(stream)
        assert first.shape == (32, 48, 3) and first[..., 2].min() > 240  # red, in BGR
        preview.publish(255 - red)  # cyan
        second = _next_picture(stream)
        assert second[..., 2].max() < 15 and second[..., :2].min() > 240
        preview.close()
        assert _next_picture(stream) is None  # the stream ends with the preview


def test_the_preview_shows_a_cameras_overlays_while_they_are_written(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(
        ddrnet.video_source, "_open_capture", lambda s: FakeCamera(100, period=0.02)
    )
    model = ddrnet.create_model(checkpoint=bundled_model_path("camvid_ddrnet23_slim_fast_train"))
    runner = SegmentationRunner(model, torch.device("cpu"))
    seen: list[np.ndarray] = []
    with Preview() as preview:
        stream = _get(preview, "/stream")

        def watch() -> None:
            while len(seen) < 3 and (picture := _next_picture(stream)) is not None:
                seen.append(picture)

        viewer = threading.Thread(target=watch)
        viewer.start()
        summary = run_prediction(runner, ["camera:0"], tmp_path, progress=False, preview=preview)
        viewer.join(10)
    assert summary.processed == ["camera:0"] and len(seen) == 3
    written = cv2.VideoCapture(str(tmp_path / "camera0_overlay.mp4"))
    width = int(written.get(cv2.CAP_PROP_FRAME_WIDTH))
    assert all(picture.shape == (48, width, 3) for picture in seen)  # the overlay, legend too


def test_a_preview_address_that_cannot_work_is_one_line(tmp_path) -> None:
    result = run_ddrnet("predict", "--preview", "256.1.1.1:8080", "-o", str(tmp_path / "out"))
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()  # the system's words in the parentheses
    assert line.startswith("ddrnet predict: error: --preview 256.1.1.1:8080: cannot listen there (")


@needs_chromium
def test_a_browser_plays_the_stream(tmp_path) -> None:
    """Chromium shows ``/stream`` in the page's picture, and follows it as pictures change."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    publishing = threading.Event()

    def publish(preview: Preview) -> None:
        width = 16
        while not publishing.wait(0.05):
            width = width + 8 if width < 400 else 16  # each picture wider than the last
            preview.publish(np.full((32, width, 3), 200, np.uint8))

    with Preview() as preview, headless_chromium(tmp_path / "profile") as driver:
        publisher = threading.Thread(target=publish, args=(preview,))
        publisher.start()
        try:
            driver.get(preview.url)
            picture = driver.find_element(By.TAG_NAME, "img")
            widths = set()

            def widths_seen(d) -> int:
                widths.add(d.execute_script("return arguments[0].naturalWidth", picture))
                return len(widths - {0})

            # Sampled at any rate, a picture that follows the stream shows several widths.
            try:
                WebDriverWait(driver, 30, poll_frequency=0.1).until(lambda d: widths_seen(d) >= 3)
            except TimeoutException:
                pytest.fail(f"in 30 s the page's picture had the widths {sorted(widths)}")
        finally:
            publishing.set()
            publisher.join()
