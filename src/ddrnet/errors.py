"""The errors ddrnet raises for input the user can fix, under one base class.

Every error of this package that means "what you gave cannot work" (an option or setting,
a file, a data set, a model file) is a ``DDRNetError``; the ``ddrnet`` command prints it as
one line, ``ddrnet COMMAND: error: MESSAGE``, and exits with status 2 (``user_error_message``
makes that line, also of an ``OSError`` on a path the user named, and for the inputs a job
skips). Anything else that escapes a command is a bug and keeps its traceback.

Each class keeps the built-in base it always had (``ValueError``, ``RuntimeError``,
``KeyError``, ``FileNotFoundError``), so that ``except ValueError`` in callers still works:

================================  ======================================================
``DDRNetError`` subclass          where
================================  ======================================================
``UsageError`` (ValueError)       here: an option or setting value that cannot work
``MissingFileError``              here: a file or folder the user named does not exist
``ConfigError`` (ValueError)      ``ddrnet.config``: a recipe key or value
``CheckpointError`` (ValueError)  ``ddrnet.models.checkpoint_file``: an unreadable model file
``MetadataError`` (ValueError)    ``ddrnet.models.metadata``: a model file's metadata
``UnknownModelError`` (KeyError)  ``ddrnet.models.registry``: no such architecture
``PruningError`` (ValueError)     ``ddrnet.models.prune``
``DatasetError`` (ValueError)     ``ddrnet.data.datasets``: a data set on disk
``ImageReadError`` (ValueError)   ``ddrnet.data.io``: an image file
``InputTooLargeError``            ``ddrnet.limits``: an input over the memory limits
``TrainingError`` (RuntimeError)  ``ddrnet.engine.checkpointing``: training cannot go on
``ExportError`` (RuntimeError)    ``ddrnet.deploy.export``; ``NcnnFileError`` under it
``PredictionInputError``          ``ddrnet.predict``: prediction inputs and output folder
``VideoSourceError`` (ValueError) ``ddrnet.video_source``: a video, camera or stream to read
================================  ======================================================

``ddrnet.models.bn_folding.FusionError`` is no user error: it says that BN folding could not
trace a network, which callers handle (they run it unfolded) or is a bug to report.
"""

from __future__ import annotations

import errno
import os


class DDRNetError(Exception):
    """Base of the errors that input the user can fix causes; the message says what and how."""


class UsageError(DDRNetError, ValueError):
    """An option or setting value that cannot work (here, or with the other options given);
    the message names it."""


class MissingFileError(DDRNetError, FileNotFoundError):
    """A file or folder that the user named does not exist; the message names it.

    Raised with a message only (no errno), so ``str(error)`` is that message."""


def parse_error_summary(error: Exception) -> str:
    """One line for a YAML or JSON parse error: ``line L, column C: what is wrong``.

    PyYAML's messages span several lines (context, the offending line, a caret), which the
    one-line error of a command cannot show; their marks and problem say the same in one.
    """
    mark = getattr(error, "problem_mark", None)  # yaml.MarkedYAMLError
    problem = getattr(error, "problem", None)
    if mark is not None and problem:
        return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    if hasattr(error, "lineno") and hasattr(error, "msg"):  # json.JSONDecodeError
        return f"line {error.lineno}, column {error.colno}: {error.msg}"
    return " ".join(str(error).split())


_LINK_LOOP = "Symlink loop from "  # pathlib's message, before Python 3.13


def user_error_message(error: BaseException) -> str | None:
    """The one-line message for an error caused by the user's input, or None for a bug."""
    if isinstance(error, DDRNetError):
        return _without_worker_traceback(str(error))
    if isinstance(error, OSError) and error.filename is not None:
        return f"{error.filename}: {_os_error_reason(error)}"
    if isinstance(error, RuntimeError) and str(error).startswith(_LINK_LOOP):
        # Path.resolve() before Python 3.13 (later ones raise OSError ELOOP, with the path).
        looped = str(error).removeprefix(_LINK_LOOP).strip("'")
        return f"{looped}: a loop of symbolic links"
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        # A full disk names no file when the output is standard output (``> out.txt``).
        return str(error.strerror)
    return None


def _os_error_reason(error: OSError) -> str:
    """What an OS error on an output path means for the user (e.g. ``-o`` naming a file);
    ours, raised with a reason of their own, say it."""
    if error.errno is not None and error.strerror not in (None, os.strerror(error.errno)):
        return str(error.strerror)
    if isinstance(error, (FileExistsError, NotADirectoryError)):
        return "a file is in the way where an output folder is needed"
    if isinstance(error, IsADirectoryError):
        return "is a folder, but a file is to be written there"
    return str(error.strerror or error)


class Terminated(KeyboardInterrupt):
    """SIGTERM (systemd, ``docker stop``, ``timeout``, ``kill``), which the ``ddrnet``
    command raises in its main thread as Python raises Ctrl-C's ``KeyboardInterrupt``: no user
    error, a stop. Being a ``KeyboardInterrupt``, it stops every job as cleanly as Ctrl-C does
    (videos closed and playable, temporaries removed, a run folder whole); unlike Ctrl-C,
    which ends a live source as the end of a file does, it also stops the rest of the job."""


def _without_worker_traceback(message: str) -> str:
    """An error raised in a DataLoader worker comes back as the same class with the worker's
    traceback for its message ("Caught DatasetError in DataLoader worker process 0.
    Original Traceback ..."): its own message is the last line, after the class name."""
    if "Original Traceback (most recent call last):" not in message:
        return message
    last = [line for line in message.splitlines() if line.strip()][-1]
    return last.split(": ", 1)[1] if ": " in last else last
