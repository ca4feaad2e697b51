"""`ddrnet serve` over real HTTP: predictions in three formats, parallel requests, refused
uploads (too large, not an image, truncated, decompression bomb), demo frames, the CLI, and
the web page driven by a headless Chromium."""

from __future__ import annotations

import io
import json
import re
import shutil
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import ddrnet
from ddrnet.cli import main
from ddrnet.data.labels import CAMVID
from ddrnet.serve import create_app

from helpers import camvid_model, headless_chromium, needs_chromium, serving

MAX_UPLOAD_MB = 1.0
MAX_PIXELS = 1000 * 1000


@pytest.fixture(scope="module")
def base_url(camvid_frame, tmp_path_factory) -> Iterator[str]:
    demo = tmp_path_factory.mktemp("demo")
    shutil.copy(camvid_frame, demo / "street.png")
    (demo / "notes.txt").write_text("not an image: must not be listed")
    app = create_app(
        camvid_model(), max_upload_mb=MAX_UPLOAD_MB, max_pixels=MAX_PIXELS, demo_folder=demo
    )
    with serving(app) as server:
        yield f"http://127.0.0.1:{server.server_port}"


def request(
    url: str, data: bytes | None = None, content_type: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of a GET (no data) or POST; HTTP errors are returned too."""
    headers = {"Content-Type": content_type} if content_type else {}
    req = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def multipart(data: bytes, filename: str | None, field: str = "file") -> tuple[bytes, str]:
    """A multipart/form-data body with one field (a file when ``filename`` is given) and its
    Content-Type."""
    boundary = uuid.uuid4().hex
    disposition = f'form-data; name="{field}"' + (f'; filename="{filename}"' if filename else "")
    body = (
        (
            f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def post_file(base_url: str, data: bytes, fmt: str, raw: bool = False):
    if raw:
        return request(f"{base_url}/predict?format={fmt}", data, "application/octet-stream")
    body, content_type = multipart(data, "frame.png")
    return request(f"{base_url}/predict?format={fmt}", body, content_type)


def bomb_png(width: int, height: int, rows: int | None = None) -> bytes:
    """A 1-bit PNG of ``width x height`` black pixels: megapixels in a few kB. With ``rows``
    only that many rows are stored (the header still declares the full size)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    count = height if rows is None else rows
    data = b"".join(compressor.compress(row) for _ in range(count)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )


def test_health_names_model_and_classes(base_url) -> None:
    status, headers, body = request(f"{base_url}/health")
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    health = json.loads(body)
    assert health["status"] == "ok" and health["architecture"] == "ddrnet_23_slim"
    assert [c["name"] for c in health["classes"]] == list(CAMVID.class_names)
    assert health["classes"][3]["colour"] == list(CAMVID.palette[3])


def test_predict_in_three_formats(base_url, camvid_frame) -> None:
    data = camvid_frame.read_bytes()
    width, height = Image.open(camvid_frame).size

    status, headers, body = post_file(base_url, data, "png")
    assert status == 200 and headers["Content-Type"] == "image/png"
    labels = Image.open(io.BytesIO(body))
    assert labels.mode == "P" and labels.size == (width, height)
    assert labels.getpalette()[: 3 * 11] == [v for colour in CAMVID.palette for v in colour]
    ids = np.asarray(labels)
    assert ids.max() < 11 and len(np.unique(ids)) > 1
    assert float(headers["X-Latency-Ms"]) > 0 and headers["X-Image-Size"] == f"{width}x{height}"

    # The same image as a raw body, overlay format: the image's height, wider by the legend.
    status, headers, body = post_file(base_url, data, "overlay", raw=True)
    assert status == 200
    picture = Image.open(io.BytesIO(body))
    assert picture.mode == "RGB" and picture.height == height and picture.width > width + 40

    status, _, body = post_file(base_url, data, "json")
    assert status == 200
    result = json.loads(body)
    assert (result["width"], result["height"]) == (width, height)
    assert result["latency_ms"] > 0 and result["total_ms"] >= result["latency_ms"]
    assert list(result["shares"]) == list(CAMVID.class_names)
    assert sum(result["shares"].values()) == pytest.approx(100.0, abs=0.01)
    # The shares are those of the label map returned by format=png.
    counts = np.bincount(ids.ravel(), minlength=11)
    expected = 100 * counts / ids.size
    assert np.allclose(list(result["shares"].values()), expected, atol=1e-3)


def test_predict_confidence_and_unknown_pixels(base_url, camvid_frame) -> None:
    data = camvid_frame.read_bytes()
    status, _, body = post_file(base_url, data, "confidence", raw=True)
    assert status == 200
    grey = Image.open(io.BytesIO(body))
    assert grey.mode == "L" and grey.size == Image.open(camvid_frame).size
    confidence = np.asarray(grey) / 255
    status, _, body = post_file(base_url, data, "png&min_confidence=0.9")
    assert status == 200
    labels = np.asarray(Image.open(io.BytesIO(body)))
    clear = np.abs(confidence - 0.9) > 1 / 255  # the grey map's rounding aside
    assert np.array_equal((labels == 255)[clear], (confidence < 0.9)[clear])
    status, _, body = post_file(base_url, data, "json&min_confidence=0.9")
    result = json.loads(body)
    assert result["shares"]["unknown"] == pytest.approx(100 * np.mean(labels == 255), abs=1e-3)
    assert sum(result["shares"].values()) == pytest.approx(100.0, abs=0.01)
    assert result["mean_confidence"] == pytest.approx(100 * confidence.mean(), abs=0.2)
    # The threshold as a form field beside the file, as the format can be.
    body, content_type = multipart(data, "frame.png")
    boundary = content_type.split("=", 1)[1]
    field = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="min_confidence"\r\n\r\n0.9\r\n'
    ).encode()
    status, _, answer = request(f"{base_url}/predict?format=png", field + body, content_type)
    assert status == 200 and np.array_equal(np.asarray(Image.open(io.BytesIO(answer))), labels)
    for bad in ("0", "1", "abc", "nan"):
        status, _, body = post_file(base_url, data, f"png&min_confidence={bad}")
        assert status == 400 and "min_confidence" in json.loads(body)["error"]


def test_a_raw_image_body_is_accepted_whatever_its_content_type(base_url, camvid_frame) -> None:
    """`curl --data-binary @f.png` sends application/x-www-form-urlencoded; other clients
    send no Content-Type at all. The body is an image either way."""
    import http.client
    from urllib.parse import urlsplit

    data = camvid_frame.read_bytes()
    # urllib, like curl, labels a body without a Content-Type as a urlencoded form.
    status, _, body = request(f"{base_url}/predict?format=json", data)
    assert status == 200, body
    assert json.loads(body)["width"] == Image.open(camvid_frame).width
    address = urlsplit(base_url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=60)
    try:
        connection.putrequest("POST", "/predict?format=json")
        connection.putheader("Content-Length", str(len(data)))
        connection.endheaders(data)
        response = connection.getresponse()
        assert response.status == 200 and json.loads(response.read())["height"] == 360
    finally:
        connection.close()
    # A real urlencoded form carries no image: the answer says what is wrong.
    status, _, body = request(f"{base_url}/predict", b"format=png")
    assert status == 400 and "not an image" in json.loads(body)["error"]


def test_parallel_requests_get_identical_answers(base_url, camvid_frame) -> None:
    data = camvid_frame.read_bytes()
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda _: post_file(base_url, data, "png"), range(8)))
    assert [status for status, _, _ in answers] == [200] * 8
    first = np.asarray(Image.open(io.BytesIO(answers[0][2])))
    for _, _, body in answers[1:]:
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(body))), first)


# Pillow warns about the 20000 x 20000 upload before the server refuses it.
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_refused_uploads_get_clear_errors_and_the_server_lives_on(base_url, camvid_frame) -> None:
    def refused(status_and_body, expected_status: int, words: str) -> None:
        status, headers, body = status_and_body
        assert status == expected_status, body
        assert headers["Content-Type"].startswith("application/json")
        assert words in json.loads(body)["error"]

    oversized = np.random.default_rng(0).bytes(int(1.5 * MAX_UPLOAD_MB * 1024 * 1024))
    refused(post_file(base_url, oversized, "png"), 413, "limit of 1 MB")
    refused(post_file(base_url, oversized, "png", raw=True), 413, "limit of 1 MB")
    refused(post_file(base_url, b"just some text\n", "png"), 400, "not an image")
    truncated = camvid_frame.read_bytes()[: camvid_frame.stat().st_size // 2]
    refused(post_file(base_url, truncated, "json"), 400, "cannot be decoded")
    refused(post_file(base_url, b"", "json", raw=True), 400, "no image")
    refused(post_file(base_url, camvid_frame.read_bytes(), "jpeg"), 400, "format must be one of")
    frame = camvid_frame.read_bytes()
    refused(post_file(base_url, frame, "json&scales=9"), 400, "unknown option 'scales'")
    refused(post_file(base_url, frame, ""), 400, "format is empty")
    refused(post_file(base_url, frame, "json&format=png"), 400, "format is given 2 times")
    body, content_type = multipart(b"png", None, field="format")
    refused(request(f"{base_url}/predict", body, content_type), 400, "no file field")
    one, content_type = multipart(frame, "a.png")  # and a second file: it went unanswered
    end = f"--{content_type.split('boundary=')[1]}--\r\n".encode()
    two = one.removesuffix(end) + one.replace(b'"a.png"', b'"b.png"')
    refused(request(f"{base_url}/predict", two, content_type), 400, "has 2 files")
    empty_input = one.removesuffix(end) + one.replace(b'"a.png"', b'""').replace(frame, b"")
    status, _, body = request(f"{base_url}/predict?format=json", empty_input, content_type)
    assert status == 200, body  # an HTML form's optional file input, left empty
    # 2000 x 2000 is over this server's limit; 20000 x 20000 (a ~50 kB file) also over
    # Pillow's MAX_IMAGE_PIXELS. Both are refused from the header, without decoding.
    refused(post_file(base_url, bomb_png(2000, 2000), "png"), 413, "over this server's limit")
    huge = bomb_png(20000, 20000)
    assert len(huge) < 200_000 and 20000 * 20000 > Image.MAX_IMAGE_PIXELS
    started = time.perf_counter()
    refused(post_file(base_url, huge, "png", raw=True), 413, "20000x20000")
    assert time.perf_counter() - started < 5  # refused from the header, not decoded
    # Beyond twice MAX_IMAGE_PIXELS Pillow's own check raises at open: a 413 as well.
    refused(post_file(base_url, bomb_png(40000, 40000, rows=1), "png"), 413, "decompression bomb")
    status, _, _ = request(f"{base_url}/health")
    assert status == 200
    assert post_file(base_url, camvid_frame.read_bytes(), "json")[0] == 200


def test_demo_frames_are_listed_and_served(base_url, camvid_frame) -> None:
    status, _, body = request(f"{base_url}/demo")
    assert status == 200 and json.loads(body) == [{"name": "street.png", "url": "/demo/street.png"}]
    status, headers, body = request(f"{base_url}/demo/street.png")
    assert status == 200 and body == camvid_frame.read_bytes()
    for name in ("notes.txt", "..%2Fdemo%2Fstreet.png", "missing.png"):
        status, _, body = request(f"{base_url}/demo/{name}")
        assert status == 404 and "error" in json.loads(body)


def test_page_is_served_without_external_resources(base_url) -> None:
    status, headers, body = request(f"{base_url}/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    page = body.decode()
    assert 'id="file"' in page and "static/app.js" in page and "://" not in page
    status, _, script = request(f"{base_url}/static/app.js")
    assert status == 200 and b"predict?format=overlay" in script and b"://" not in script


def test_cli_serves_a_checkpoint_and_refuses_bad_options(
    camvid_model_file, camvid_frame, capsys
) -> None:
    checkpoint = camvid_model_file
    for option in ("--max-upload-mb", "--max-pixels", "--threads", "--timeout"):
        with pytest.raises(SystemExit) as refused:  # argparse refuses it, before any loading
            main(["serve", "--checkpoint", str(checkpoint), option, "0"])
        assert refused.value.code == 2
        assert f"argument {option}: must be" in capsys.readouterr().err
    assert main(["serve", "--checkpoint", str(checkpoint), "--runtime", "openvino"]) == 2
    assert "--runtime applies to exported .onnx files" in capsys.readouterr().err
    assert main(["serve", "--checkpoint", str(checkpoint), "--host", "no-such-host.invalid"]) == 2
    assert "--host no-such-host.invalid" in capsys.readouterr().err
    process = subprocess.Popen(
        [sys.executable, "-m", "ddrnet.cli", "serve", "--checkpoint", str(checkpoint),
         "--port", "0", "--threads", "2", "--timeout", "5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        line = process.stdout.readline()
        assert "serving ddrnet_23_slim on http://127.0.0.1:" in line, process.stderr.read()
        url = line.split(" on ")[1].strip().rstrip("/")
        status, _, body = request(f"{url}/health")
        assert status == 200 and json.loads(body)["num_classes"] == 11
        status, _, body = post_file(url, camvid_frame.read_bytes(), "json")
        assert status == 200 and json.loads(body)["width"] == 480
        process.terminate()  # SIGTERM, as systemd or docker stop send it: a clean stop
        assert process.wait(timeout=10) == 143
        errors = process.stderr.read()
        assert errors.strip().splitlines()[-1] == "terminated (SIGTERM)", errors
        assert "Traceback" not in errors
    finally:
        process.kill()
        process.wait(timeout=10)


def test_an_exported_onnx_file_is_served_like_its_model(tmp_path, camvid_frame) -> None:
    from ddrnet.deploy import export_onnx, load_onnx_model

    model = camvid_model()
    onnx_path = export_onnx(model, tmp_path / "camvid.onnx")
    client = create_app(load_onnx_model(onnx_path, "openvino", precision="bf16")).test_client()
    health = client.get("/health").get_json()
    assert health["architecture"] == "ddrnet_23_slim" and health["num_classes"] == 11
    response = client.post(
        "/predict?format=png",
        data=camvid_frame.read_bytes(),
        content_type="application/octet-stream",
    )
    assert response.status_code == 200, response.data[:500]
    labels = np.asarray(Image.open(io.BytesIO(response.data)))
    expected = ddrnet.Predictor(model).predict(camvid_frame)
    # bf16 float layers flip some near-ties of this untrained model (measured 98.8% agree)
    assert labels.shape == expected.shape and (labels == expected).mean() > 0.97


def test_serving_without_checkpoint_needs_a_bundled_model(monkeypatch, capsys) -> None:
    import ddrnet.models.weights
    from ddrnet.loading import default_checkpoint as default_serving_checkpoint

    def missing():
        raise FileNotFoundError("no bundled model")

    monkeypatch.setattr(ddrnet.models.weights, "bundled_model_path", missing)
    monkeypatch.delattr(ddrnet, "bundled_model_path", raising=False)
    assert main(["serve"]) == 2
    assert "no --checkpoint given" in capsys.readouterr().err
    monkeypatch.setattr(
        ddrnet.models.weights, "bundled_model_path", lambda: Path("/x/bundled.safetensors")
    )
    assert default_serving_checkpoint() == "/x/bundled.safetensors"


@needs_chromium
def test_web_page_in_headless_chromium(base_url, camvid_frame, tmp_path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select, WebDriverWait

    with headless_chromium(tmp_path / "profile") as driver:
        driver.get(f"{base_url}/")
        wait = WebDriverWait(driver, 30)
        wait.until(lambda d: "ddrnet_23_slim" in d.find_element(By.ID, "model").text)
        # The demo section lists the frames of GET /demo.
        assert driver.find_element(By.ID, "demo-list").text == "street.png"
        driver.find_element(By.ID, "file").send_keys(str(camvid_frame))
        wait.until(lambda d: d.find_element(By.ID, "latency").text.startswith("latency"))
        result = driver.find_element(By.ID, "result")
        natural = driver.execute_script(
            "return [arguments[0].naturalWidth, arguments[0].naturalHeight]", result
        )
        driver.save_screenshot(str(tmp_path / "page.png"))
        errors = driver.find_element(By.ID, "error").text
        # A demo frame goes the same way: fetched from /demo/NAME, then segmented.
        driver.find_element(By.CSS_SELECTOR, "#demo-list button").click()
        wait.until(lambda d: d.find_element(By.ID, "status").text.startswith("street.png"))
        wait.until(lambda d: d.find_element(By.ID, "latency").text.startswith("latency"))
        # The confidence map, chosen on the page: the image's own size, no legend.
        Select(driver.find_element(By.ID, "show")).select_by_value("confidence")
        driver.find_element(By.ID, "threshold").send_keys(Keys.BACKSPACE, "0.9")
        driver.find_element(By.CSS_SELECTOR, "#demo-list button").click()
        wait.until(lambda d: d.execute_script("return arguments[0].naturalWidth", result) == 480)
        confidence_errors = driver.find_element(By.ID, "error").text
    assert errors == "" and confidence_errors == ""
    _, _, overlay = post_file(base_url, camvid_frame.read_bytes(), "overlay")
    assert tuple(natural) == Image.open(io.BytesIO(overlay)).size
    assert natural[1] == Image.open(camvid_frame).height
    screenshot = Image.open(tmp_path / "page.png")
    assert screenshot.width >= 1000 and np.asarray(screenshot).std() > 10  # not a blank page


@needs_chromium
def test_web_page_segments_the_browsers_camera_frame_after_frame(base_url, tmp_path) -> None:
    """Chromium's fake camera (640x480, a moving test pattern) stands in for a webcam."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    fake_camera = ("--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream")
    with headless_chromium(tmp_path / "profile", *fake_camera) as driver:
        driver.get(f"{base_url}/")
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: "ddrnet_23_slim" in d.find_element(By.ID, "model").text)
        driver.find_element(By.ID, "camera").click()

        def frames_shown(d) -> int:
            said = re.match(
                r"camera: (\d+) frames, [\d.]+ per second", d.find_element(By.ID, "status").text
            )
            return int(said[1]) if said else 0

        wait.until(lambda d: frames_shown(d) >= 3)
        result = driver.find_element(By.ID, "result")
        height = driver.execute_script("return arguments[0].naturalHeight", result)
        driver.find_element(By.ID, "camera").click()
        wait.until(lambda d: d.find_element(By.ID, "camera").text == "use the camera")
        errors = driver.find_element(By.ID, "error").text
        latency = driver.find_element(By.ID, "latency").text
    assert errors == "" and latency.startswith("latency: model")
    assert height == 480  # the overlay of the camera's 640x480 frame, legend beside it


def test_a_failing_model_gives_500_and_the_app_goes_on(camvid_frame, caplog) -> None:
    model = camvid_model()
    calls = []

    def broken_forward(images):
        calls.append(images.shape)
        raise RuntimeError("out of memory (simulated)")

    model.forward = broken_forward
    client = create_app(model).test_client()
    response = client.post("/predict?format=json", data=camvid_frame.read_bytes())
    assert response.status_code == 500 and calls
    assert "see the server log" in response.get_json()["error"]
    assert "simulated" in caplog.text  # the traceback is logged for the operator
    assert client.get("/health").status_code == 200
