"""``ddrnet predict``: segment images, folders, globs, videos, cameras or streams."""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
from pathlib import Path

from ddrnet.choices import OUTPUT_KINDS
from ddrnet.cli.options import (
    FRACTION,
    NON_NEGATIVE_INT,
    OPEN_FRACTION,
    PATH,
    POSITIVE_INT,
    add_amp_option,
    add_device_option,
    add_model_options,
    add_runtime_option,
    add_scales_option,
    device_and_precision,
    load_model,
    parse_pixel_count,
    writable_folder,
)
from ddrnet.errors import UsageError
from ddrnet.limits import DEFAULT_MAX_PIXELS
from ddrnet.preview import Preview, parse_address
from ddrnet.video_source import DROP_FRAMES

# The command's line in ``ddrnet --help``.
HELP = "segment images, folders, globs, videos, cameras or streams"


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "predict",
        help=HELP,
        description="Without --checkpoint the bundled CamVid model is used; without inputs, the "
        "bundled demo frames.",
    )
    parser.add_argument(
        "inputs",
        nargs="*",
        help="image, folder, glob, video file, camera:N, or a stream's URL (rtsp://, http://...)",
    )
    add_model_options(
        parser, "model file, or an exported .onnx file (default: the bundled CamVid model)"
    )
    parser.add_argument("-o", "--output", type=PATH, default="predictions", help="output folder")
    parser.add_argument(
        "--save",
        nargs="+",
        choices=OUTPUT_KINDS,
        help="label PNGs, overlays with a legend, side-by-side pictures, confidence maps "
        "(grey PNGs: value / 255 = the winning class's probability; videos: STEM_confidence.mp4) "
        "(default: labels and overlay for images, overlay for videos; labels of a video: a "
        "folder STEM_labels/ of one PNG per frame segmented, named by frame number)",
    )
    parser.add_argument(
        "--min-confidence",
        type=OPEN_FRACTION,
        help="mark pixels whose winning class probability is below this (in (0, 1)) as "
        "unknown: 255 in the label PNGs, dark in the overlays ('ddrnet eval --confidence' "
        "shows what a threshold keeps and catches)",
    )
    parser.add_argument("--batch-size", type=POSITIVE_INT, help="images: segmented at once (1)")
    parser.add_argument(
        "--workers", type=NON_NEGATIVE_INT, help="images: DataLoader workers for reading (0)"
    )
    add_scales_option(parser)
    parser.add_argument(
        "--max-pixels",
        type=parse_pixel_count,
        default=DEFAULT_MAX_PIXELS,
        help="skip (with a warning) images with more pixels than this at the largest scale "
        f"(default {DEFAULT_MAX_PIXELS:,}); the exit status is then 1",
    )
    parser.add_argument("--flip", action="store_true")
    parser.add_argument("--alpha", type=FRACTION, default=0.5, help="overlay colour weight, 0-1")
    add_amp_option(parser)
    add_device_option(parser)
    add_runtime_option(parser)
    _add_video_options(parser)
    parser.set_defaults(handler=run)


def _add_video_options(parser: argparse.ArgumentParser) -> None:
    """What applies to videos, cameras and streams (and image sequences for --smooth)."""
    parser.add_argument(
        "--smooth",
        type=OPEN_FRACTION,
        metavar="WEIGHT",
        help="steadier video: blend each frame's class scores with the frames' before it, "
        "moved along the optical flow, where the frame is unsure; WEIGHT in (0, 1) is the "
        "past's largest share (0.8: a quarter to a third fewer flickering pixels on CamVid at "
        "the same mIoU; 'ddrnet eval --smooth' measures it). Videos, cameras, streams, and "
        "images taken as one sequence in the order given; --streams 1",
    )
    parser.add_argument(
        "--max-frames",
        type=POSITIVE_INT,
        help="videos, cameras and streams: stop after N frames segmented",
    )
    parser.add_argument(
        "--drop-frames",
        choices=DROP_FRAMES,
        help="skip to the newest frame when the network is slower than the source, so that "
        "results do not fall behind (default auto: cameras and rtsp/rtmp/udp/tcp/srt streams, not "
        "files or http URLs); the videos written keep the source's timing",
    )
    parser.add_argument(
        "--streams",
        type=POSITIVE_INT,
        default=1,
        help="segment N frames at once, each on its share of the CPU cores: more frames per "
        "second on folders and videos, each frame no sooner (PyTorch models and .onnx files; "
        "default 1, the least latency)",
    )
    parser.add_argument(
        "--preview",
        metavar="[HOST:]PORT",
        type=_address,
        help="show the pictures as they are written, live, in a browser at http://HOST:PORT/ "
        "(an MJPEG stream; HOST defaults to 127.0.0.1, 0.0.0.0 shows it to the network): "
        "for machines without a screen",
    )


def _given(**options: object) -> dict[str, object]:
    """The options the user gave: the others keep ``run_prediction``'s defaults."""
    return {name: value for name, value in options.items() if value is not None}


def _address(value: str) -> tuple[str, int]:
    try:
        return parse_address(value)
    except UsageError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _check_options_apply(args: argparse.Namespace, images: list, videos: list) -> None:
    """Refuse options that these inputs would accept and ignore."""
    per_kind = {
        "videos, cameras and streams": (videos, ("--max-frames", "--drop-frames")),
        "images": (images, ("--batch-size", "--workers")),
    }
    for kind, (inputs, options) in per_kind.items():
        for option in options:
            if not inputs and getattr(args, option[2:].replace("-", "_")) is not None:
                raise UsageError(f"{option} applies to {kind}, and none is among the inputs")
    if args.preview and args.save and not {"overlay", "side"} & set(args.save):
        raise UsageError(
            f"--preview shows overlays or side-by-side pictures, and --save {' '.join(args.save)}"
            " makes neither: add overlay or side"
        )


def run(args: argparse.Namespace) -> int:
    from ddrnet.data.io import demo_frames
    from ddrnet.predict import expand_inputs, run_prediction
    from ddrnet.runner import SegmentationRunner

    inputs = args.inputs or [str(p) for p in demo_frames()]
    if not inputs:
        raise UsageError("no inputs given and no demo frames are installed")
    _check_options_apply(args, *expand_inputs(inputs))
    writable_folder("--output", args.output, {"--checkpoint": args.checkpoint})
    model = load_model(args, streams=args.streams)
    device, amp = device_and_precision(args, model)
    runner = SegmentationRunner(
        model,
        device,
        amp,
        args.scales,
        args.flip,
        args.alpha,
        streams=args.streams,
        min_confidence=args.min_confidence,
        smooth=args.smooth,
    )
    with Preview(*args.preview) if args.preview else contextlib.nullcontext() as preview:
        if preview is not None:
            print(f"live preview: {preview.url}", flush=True)
        summary = run_prediction(
            runner,
            inputs,
            Path(args.output),
            kinds=args.save,
            max_frames=args.max_frames,
            max_pixels=args.max_pixels,
            preview=preview,
            **_given(
                batch_size=args.batch_size, num_workers=args.workers, drop_frames=args.drop_frames
            ),
        )
    done, failed = len(summary.processed), len(summary.failed)
    if summary.latencies_ms:
        latencies = summary.latencies_ms
        # Frames of an input that failed midway (a damaged video) count in the figures.
        what = f"{done} input{'s' if done != 1 else ''}" if done else "no input whole"
        print(
            f"{what} segmented into {args.output}; "
            "latency per image: "
            f"mean {sum(latencies) / len(latencies):.1f} ms, "
            f"median {statistics.median(latencies):.1f} ms (not counted: a first, untimed "
            f"pass of {summary.warmup_ms:.0f} ms that created the kernels or compiled the model)"
        )
        frames = len(summary.latencies_ms)
        seconds = max(summary.seconds - (summary.warmup_ms or 0) / 1000, 1e-9)
        print(
            f"throughput: {frames / seconds:.1f} frames per second with reading and writing, "
            f"the first pass aside ({args.streams} stream{'s' if args.streams != 1 else ''})"
        )
    for source, (dropped, read) in summary.dropped.items():
        if dropped:
            print(
                f"{source}: {dropped} of {read} frames skipped for newer ones (the network is "
                "slower than the source; the videos repeat the last result in their place)"
            )
        else:
            print(f"{source}: all {read} frames segmented (the network kept up with the source)")
    if failed:
        print(f"{failed} of {done + failed} inputs failed (listed above)", file=sys.stderr)
        return 1
    return 0
