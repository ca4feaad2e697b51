"""``ddrnet pick``: the frames of your own images or videos a model is least sure of, to label
next."""

from __future__ import annotations

import argparse

from ddrnet.choices import PICK_COUNT, PICK_EVERY, PICK_GAP
from ddrnet.cli.options import (
    NON_NEGATIVE_INT,
    PATH,
    POSITIVE_INT,
    add_amp_option,
    add_device_option,
    add_model_options,
    add_runtime_option,
    device_and_precision,
    load_model,
)
from ddrnet.errors import UsageError

SHOWN = 10  # picks listed on the terminal; picks.json lists all


# The command's line in ``ddrnet --help``.
HELP = "choose the frames to label next: those a model is least sure of"


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "pick",
        help=HELP,
        description="Score every image and every --every-th video frame by the model's "
        "uncertainty (the mean over its pixels of 1 minus the winning class's probability), "
        "pick the -n most uncertain, no two within --gap frames of one video or images of "
        "one folder, and copy them (video frames as PNG) into the output folder with "
        "picks.json, ready for a labelling tool; `ddrnet convert` brings its export back.",
        epilog="Example: ddrnet pick drive1.mp4 drive2.mp4 frames/ -n 100 -o to_label",
    )
    parser.add_argument("inputs", nargs="+", help="images, folders, glob patterns or video files")
    parser.add_argument("-o", "--output", type=PATH, required=True, help="the folder to fill")
    parser.add_argument(
        "-n",
        "--count",
        type=POSITIVE_INT,
        default=PICK_COUNT,
        help=f"frames to pick (default {PICK_COUNT})",
    )
    parser.add_argument(
        "--every",
        type=POSITIVE_INT,
        help=f"score every N-th frame of a video (default {PICK_EVERY})",
    )
    parser.add_argument(
        "--gap",
        type=NON_NEGATIVE_INT,
        default=PICK_GAP,
        help="no two picks closer than this many frames of one video or images of one folder "
        f"(in name order); 0 for unrelated photos (default {PICK_GAP})",
    )
    add_model_options(parser, "model file or bundled name (default: the bundled model)")
    add_runtime_option(parser)
    add_amp_option(parser)
    add_device_option(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ddrnet.engine.predictor import Predictor
    from ddrnet.pick import PICKS_FILE, pick_frames, spread
    from ddrnet.predict import expand_inputs

    if args.every is not None and not expand_inputs(args.inputs)[1]:
        raise UsageError("--every applies to videos, and none is among the inputs")
    model = load_model(args)
    device, amp = device_and_precision(args, model)
    predictor = Predictor(model, device, amp_dtype=amp)  # its fast copy: folded, channels-last
    candidates, chosen = pick_frames(
        predictor, args.inputs, args.output, args.count, args.every or PICK_EVERY, args.gap,
        progress=True,
    )  # fmt: skip
    low, median, high = spread(candidates)
    print(
        f"{len(candidates)} frames scored; uncertainty {low:.3f} (lowest), {median:.3f} "
        f"(median), {high:.3f} (highest)"
    )
    print(
        f"{len(chosen)} picked into {args.output} (listed in {PICKS_FILE}), most uncertain first:"
    )
    for rank, candidate in enumerate(chosen[:SHOWN], 1):
        where = candidate.source + ("" if candidate.frame is None else f" frame {candidate.frame}")
        print(f"{rank:>4}  {candidate.uncertainty:.3f}  {where}")
    if len(chosen) > SHOWN:
        print(f"   ... and {len(chosen) - SHOWN} more")
    if len(chosen) < min(args.count, len(candidates)):
        print(f"only {len(chosen)} frames lie --gap {args.gap} apart; lower it for more")
    elif len(chosen) < args.count:
        print(f"only {len(candidates)} frames were scored")
    return 0
