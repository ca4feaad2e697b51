"""The ``ddrnet`` command line: one module per command, each with ``add_parser`` (its
options) and a handler that parses, calls the library and prints. The heaviest imports
happen inside the handlers; importing ``ddrnet.cli`` imports no command (``build_parser``
does), so that a Ctrl-C while PyTorch loads is the command's, one line.

Errors: a ``ddrnet.errors.DDRNetError`` (input the user can fix) is printed as one line,
``ddrnet COMMAND: error: MESSAGE``, with exit status 2, as argparse does for bad options.
So is an ``OSError`` that names a file (``error.filename``): the operating system refused a
path the user gave (not found, permission denied, disk full, read-only folder); and a full
disk under standard output (``> out.txt``), which names none. Anything
else is a bug and shows its traceback (exit status 1); ``-v`` shows tracebacks for all.
Ctrl-C prints ``interrupted`` (exit status 130), SIGTERM ``terminated (SIGTERM)`` (143),
each after the job's own clean-up (see ``ddrnet.errors.Terminated``). Output into a pipe
whose reader went away (``ddrnet models | head``) ends the command quietly with 141, the
status of a shell tool killed by SIGPIPE.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import select
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import NoReturn

from tqdm.contrib.logging import logging_redirect_tqdm

from ddrnet.errors import DDRNetError, Terminated, user_error_message

# The commands' modules, in the order of ``ddrnet --help``.
COMMANDS = (
    "models", "convert", "data", "train", "search", "eval", "predict", "pick", "bench", "export",
    "prune", "viz", "serve",
)  # fmt: skip


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line. Its modules are imported here, not when ``ddrnet.cli`` is,
    so that a Ctrl-C during that is ``main``'s. With ``command`` (a name, or ``""`` for
    none), only that command's options are built, the others by name and help line."""
    parser = argparse.ArgumentParser(
        prog="ddrnet",
        description="Real-time semantic segmentation with Deep Dual-Resolution Networks.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"ddrnet.cli.{name}")
        if command is None or command == name:
            module.add_parser(commands)
        else:
            commands.add_parser(name, help=module.HELP)
    return parser


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line; ``section.key=value`` overrides may follow other options.

    argparse takes a command's positional overrides in one run, so in ``ddrnet train RECIPE
    --resume a=1 b=2`` the ones after the option come back unrecognised; they join the others
    (``args.late_overrides``) for the commands that take overrides. Inputs after an option
    (``ddrnet predict a.png -o out b.png``) join the others the same way.
    """
    from ddrnet.cli.options import is_override

    # The command is the first word that is no option (``ddrnet`` itself has only flags).
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(next((a for a in arguments if not a.startswith("-")), ""))
    args, extras = parser.parse_known_args(argv)
    takes_overrides = hasattr(args, "overrides")
    if isinstance(getattr(args, "inputs", None), list):
        # `ddrnet predict a.png -o out b.png`: b.png is an input too; after `--`, every word is
        split = extras.index("--") if "--" in extras else len(extras)
        before, after = extras[:split], extras[split + 1 :]
        if not any(extra.startswith("-") for extra in before):
            args.inputs, extras = [*args.inputs, *before, *after], []
    if extras and not (takes_overrides and all(is_override(extra) for extra in extras)):
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    if takes_overrides:
        args.late_overrides = extras
    return args


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parse(argv)
    except KeyboardInterrupt:  # during the imports: a second or so
        print("interrupted", file=sys.stderr)
        return 130
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        # Log lines (a skipped input, a fallback) printed while a progress bar is drawn would
        # land inside the bar's line; tqdm writes them above it instead.
        with logging_redirect_tqdm(), _sigterm_raises_terminated():
            status = int(args.handler(args) or 0)
            if sys.stdout is not None:  # a reader gone away shows here, not in Python's exit
                sys.stdout.flush()
            return status
    except BrokenPipeError:
        if not _reader_went_away():
            raise
        # ``ddrnet models | head``: the rest of the output has no reader. Stop quietly, as
        # a shell tool dies of SIGPIPE (status 141); Python's exit must not write again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except (DDRNetError, OSError, RuntimeError) as error:
        message = user_error_message(error)
        if message is None or args.verbose:
            raise
        print(f"ddrnet {args.command}: error: {message}", file=sys.stderr)
        return 2
    except Terminated:
        print("terminated (SIGTERM)", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def run() -> NoReturn:
    """The ``ddrnet`` program: ``main``, then exit with its status. What only a program
    may do happens here, not in ``main`` (which Python callers and tests use): closed
    standard streams get the null device, a deleted current folder is refused, and once
    the job is over a Ctrl-C (PyTorch's exit handlers take a moment) ends the process as a
    shell expects, not with Python's "Exception ignored in atexit callback" lines."""
    _open_closed_standard_streams()
    try:
        os.getcwd()
    except FileNotFoundError:  # PyTorch's own import would fail with a misleading MKL error
        print("ddrnet: error: the current folder no longer exists; cd to one", file=sys.stderr)
        sys.exit(2)
    status = main()
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    sys.exit(status)


def _open_closed_standard_streams() -> None:
    """Give a standard stream that was closed (``2>&-``) the null device. Python makes it
    None, and the first progress bar or line printed failed, so a job ended without its
    output and without a word; and a closed descriptor 2 is the one the next file opened
    gets, where native libraries would write their messages."""
    for descriptor, name in enumerate(("stdin", "stdout", "stderr")):
        if getattr(sys, name) is not None:
            continue
        stream = open(os.devnull, "r" if descriptor == 0 else "w")  # for the whole run
        try:
            os.fstat(descriptor)
        except OSError:  # still closed (the null device took another number)
            os.dup2(stream.fileno(), descriptor)
        setattr(sys, name, stream)


def _reader_went_away() -> bool:
    """Whether standard output is a pipe whose reading end was closed (a ``BrokenPipeError``
    from writing to it, not from a socket or a child process's pipe)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(event & select.POLLERR for _, event in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows), no descriptor
        return False


@contextlib.contextmanager
def _sigterm_raises_terminated() -> Iterator[None]:
    """Within: SIGTERM raises ``Terminated`` in the main thread (Python's default kills the
    process at once: a video being written was lost, temporaries stayed). A second SIGTERM
    while the first one's clean-up runs is ignored (SIGKILL still ends it). Nothing is
    changed outside the main thread, where Python cannot set handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
