"""``ddrnet train``: train from a bundled recipe or a YAML file, with overrides."""

from __future__ import annotations

import argparse
from pathlib import Path

from ddrnet.cli.options import add_recipe_arguments

# The command's line in ``ddrnet --help``.
HELP = "train from a YAML recipe"


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "train",
        help=HELP,
        description="Train from a recipe; any key can be overridden as section.key=value "
        "(train.output_dir=runs/x, train.epochs=50, data.root=/data/camvid).",
        epilog="A short run, to try a recipe or a machine in minutes: "
        "train.epochs=2 train.max_iterations_per_epoch=20 (optimiser steps per epoch) "
        "eval.max_images=20 (validation images) train.output_dir=runs/try. "
        "train.max_minutes=N stops cleanly after the epoch that crosses N minutes; "
        "--resume continues.",
    )
    add_recipe_arguments(parser, "train.epochs=10")
    parser.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default=False,
        help="resume from OUTPUT_DIR/last.pt, or from the checkpoint or run folder given",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ddrnet.cli.options import is_override
    from ddrnet.config import load_config
    from ddrnet.engine.config import Config, resolve_recipe
    from ddrnet.engine.train import train

    overrides, resume = list(args.overrides), args.resume
    # `--resume train.epochs=400` means resume the run with that override, not from a file
    # of that name.
    if isinstance(resume, str) and is_override(resume) and not Path(resume).exists():
        overrides, resume = [*overrides, resume], "auto"
    overrides += getattr(args, "late_overrides", [])
    config = load_config(Config, resolve_recipe(args.config), overrides)
    output = train(config, resume=resume if resume != "auto" else True)
    print(f"run written to {output}")
    return 0
