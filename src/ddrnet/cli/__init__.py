"""The ``ddrnet`` command line: one module per command, each with ``add_parser`` (its
options) and a handler that parses, calls the library and prints. Heavy imports happen
inside the handlers, so that ``ddrnet --help`` stays fast.

Errors: a ``ddrnet.errors.DDRNetError`` (input the user can fix) is printed as one line,
``ddrnet COMMAND: error: MESSAGE``, with exit status 2, as argparse does for bad options.
So is an ``OSError`` that names a file (``error.filename``): the operating system refused a
path the user gave (not found, permission denied, disk full, read-only folder). Anything
else is a bug and shows its traceback (exit status 1); ``-v`` shows tracebacks for all.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from tqdm.contrib.logging import logging_redirect_tqdm

from ddrnet.cli import bench, convert, data, export, models, pick, predict, prune, serve, train, viz
from ddrnet.cli import eval as evaluate  # the module of `ddrnet eval`, not the builtin
from ddrnet.cli.options import is_override
from ddrnet.errors import DDRNetError, user_error_message

# The order of ``ddrnet --help``.
COMMANDS = (models, convert, data, train, evaluate, predict, pick, bench, export, prune, viz, serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ddrnet",
        description="Real-time semantic segmentation with Deep Dual-Resolution Networks.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.add_parser(commands)
    return parser


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line; ``section.key=value`` overrides may follow other options.

    argparse takes a command's positional overrides in one run, so in ``ddrnet train RECIPE
    --resume a=1 b=2`` the ones after the option come back unrecognised; they join the others
    (``args.late_overrides``) for the commands that take overrides.
    """
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    takes_overrides = hasattr(args, "overrides")
    if extras and not (takes_overrides and all(is_override(extra) for extra in extras)):
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    if takes_overrides:
        args.late_overrides = extras
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        # Log lines (a skipped input, a fallback) printed while a progress bar is drawn would
        # land inside the bar's line; tqdm writes them above it instead.
        with logging_redirect_tqdm():
            return int(args.handler(args) or 0)
    except (DDRNetError, OSError) as error:
        message = user_error_message(error)
        if message is None or args.verbose:
            raise
        print(f"ddrnet {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
