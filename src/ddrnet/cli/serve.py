"""``ddrnet serve``: an HTTP server with a web demo page around one loaded model."""

from __future__ import annotations

import argparse
import logging

from ddrnet.choices import (
    SERVE_HOST,
    SERVE_MAX_PIXELS,
    SERVE_MAX_UPLOAD_MB,
    SERVE_PORT,
    SERVE_THREADS,
    SERVE_TIMEOUT_S,
)
from ddrnet.cli.options import (
    PORT,
    POSITIVE_FLOAT,
    POSITIVE_INT,
    add_amp_option,
    add_device_option,
    add_model_options,
    add_runtime_option,
    device_and_precision,
    load_model,
    parse_pixel_count,
)
from ddrnet.errors import UsageError

logger = logging.getLogger("ddrnet")


# The command's line in ``ddrnet --help``.
HELP = "HTTP server with a web demo page: /, /health, /predict, /demo"


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "serve",
        help=HELP,
        # The formats are serve.FORMATS, written out: the help must not import torch.
        description="Load the model once and serve predictions "
        "(POST /predict?format=png|overlay|json|confidence). "
        "Without --checkpoint the bundled model is used.",
    )
    add_model_options(parser, "model file, or an exported .onnx file (default: the bundled model)")
    parser.add_argument("--host", default=SERVE_HOST, help=f"address (default {SERVE_HOST})")
    parser.add_argument(
        "--port", type=PORT, default=SERVE_PORT, help=f"0 picks a free port (default {SERVE_PORT})"
    )
    parser.add_argument(
        "--max-upload-mb",
        type=POSITIVE_FLOAT,
        default=SERVE_MAX_UPLOAD_MB,
        help=f"larger bodies get 413 (default {SERVE_MAX_UPLOAD_MB:g})",
    )
    parser.add_argument(
        "--max-pixels",
        type=parse_pixel_count,
        default=SERVE_MAX_PIXELS,
        help=f"larger images get 413 (default {SERVE_MAX_PIXELS:,}, 4096x2048)",
    )
    parser.add_argument(
        "--threads",
        type=POSITIVE_INT,
        default=SERVE_THREADS,
        help=f"worker threads (default {SERVE_THREADS})",
    )
    parser.add_argument(
        "--timeout",
        type=POSITIVE_INT,
        default=SERVE_TIMEOUT_S,
        help=f"close a connection after this many seconds without a byte (default "
        f"{SERVE_TIMEOUT_S})",
    )
    add_amp_option(parser)
    add_device_option(parser)
    add_runtime_option(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import socket

    from ddrnet.serve import create_app, make_server

    try:  # before loading anything: a mistyped host fails in a second, not after the warm-up
        socket.getaddrinfo(args.host, args.port)
    except socket.gaierror as error:
        raise UsageError(f"--host {args.host}: {error.strerror}") from None
    model = load_model(args)
    device, amp = device_and_precision(args, model)
    app = create_app(
        model,
        max_upload_mb=args.max_upload_mb,
        max_pixels=args.max_pixels,
        device=device,
        amp_dtype=amp,
    )
    _warm_up(app.extensions["ddrnet_service"])
    try:
        server = make_server(app, args.host, args.port, threads=args.threads, timeout=args.timeout)
    except OSError as error:
        raise UsageError(f"cannot listen on {args.host}:{args.port} ({error})") from None
    # Flushed: whoever started the server (a script, a test) reads the port from this line.
    address = f"http://{args.host}:{server.server_port}/"
    print(f"serving {model.metadata.architecture} on {address}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


def _warm_up(service) -> None:
    """One prediction on the first demo frame before the first request: oneDNN creates its
    kernels and OpenVINO compiles for that size (about a second for an ONNX file), so the
    first user of the usual frame size does not wait for it."""
    from ddrnet.data.io import ImageReadError, demo_frames, read_rgb

    frames = demo_frames()
    if frames:
        try:
            service.predict(read_rgb(frames[0]))
        except ImageReadError:
            logger.warning("could not warm up on %s", frames[0])
