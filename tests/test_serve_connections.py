"""`ddrnet serve`'s connection handling (loopback only, bounded in count and time): stalled
clients hold no thread each, idle connections are closed after the timeout, a body declared
far over the upload limit is refused before it is read, and a request still gets served."""

from __future__ import annotations

import http.client
import io
import json
import socket
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image

from ddrnet.serve import create_app

from helpers import camvid_model, serving

IDLE_CONNECTIONS = 50
TIMEOUT_S = 2


@pytest.fixture(scope="module")
def app():
    return create_app(camvid_model(), max_upload_mb=1.0)


@pytest.fixture
def default_server(app) -> Iterator[int]:
    """A server with the default settings; yields its port."""
    with serving(app) as server:
        yield server.server_port


def small_png() -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def predict(port: int) -> tuple[int, dict]:
    """A normal raw-body POST /predict?format=json; its status and JSON answer."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(
            "POST", "/predict?format=json", small_png(), {"Content-Type": "image/png"}
        )
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def stalled_connections(port: int, count: int) -> list[socket.socket]:
    """``count`` connections that send half a request's headers and then nothing."""
    sockets = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le")
        sockets.append(sock)
    return sockets


def test_stalled_connections_hold_no_thread_each(default_server) -> None:
    assert predict(default_server)[0] == 200  # every worker thread has started
    threads_before = threading.active_count()
    sockets = stalled_connections(default_server, IDLE_CONNECTIONS)
    try:
        # Served after the stalled ones were accepted: the server is not blocked by them.
        status, answer = predict(default_server)
        assert status == 200 and (answer["width"], answer["height"]) == (64, 48)
        threads = threading.active_count()
    finally:
        for sock in sockets:
            sock.close()
    # Flask's development server had one thread per connection: 50 more here.
    assert threads <= threads_before + 2, (threads_before, threads)


def test_idle_connections_are_closed_after_the_timeout(app) -> None:
    with serving(app, threads=2, timeout=TIMEOUT_S) as server:
        sockets = stalled_connections(server.server_port, 10)
        sockets.append(socket.create_connection(("127.0.0.1", server.server_port), timeout=10))
        started = time.monotonic()
        try:
            assert predict(server.server_port)[0] == 200
            for sock in sockets:
                assert sock.recv(1024) == b""  # closed by the server (bounded by the 10 s)
            elapsed = time.monotonic() - started
        finally:
            for sock in sockets:
                sock.close()
        # Not closed before the timeout; closed within the cleanup period after it.
        assert TIMEOUT_S - 0.5 <= elapsed <= TIMEOUT_S + 4, elapsed
        assert predict(server.server_port)[0] == 200


def test_a_body_declared_far_over_the_limit_is_refused_before_it_is_sent(
    default_server,
) -> None:
    # 100 MB announced and never sent: under waitress's own default cap of 1 GB, which would
    # wait for (and spool to disk) the whole body before Flask could refuse it.
    connection = http.client.HTTPConnection("127.0.0.1", default_server, timeout=10)
    try:
        connection.putrequest("POST", "/predict")
        connection.putheader("Content-Type", "image/png")
        connection.putheader("Content-Length", str(100 * 1024 * 1024))
        connection.endheaders()
        assert connection.getresponse().status == 413
    finally:
        connection.close()
