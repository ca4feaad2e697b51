"""Files that are only of use together (an ncnn export's ``.param``, ``.bin`` and sidecar; an
ExecuTorch export's ``.pte`` and sidecar), replaced as one: a kill at any moment leaves the
whole earlier set or the whole new one, never a mix that the digests would refuse.

``replaced_together`` stages the new set beside the first path, moves the earlier set aside,
then the new one into place. A swap that a kill interrupted is undone by the next writer or
reader of the set (``restore_interrupted_set``), but only once the writing process has ended:
a load beside a running export leaves it alone.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

from ddrnet.atomic import process_ended, process_tag


def _set_folders(paths: Sequence[Path], writer: str) -> tuple[Path, Path]:
    """The staging folder of a new set of ``paths`` written by the process ``writer``
    (``process_tag``) and the folder that holds the earlier set's files while they are
    swapped, both beside the first path."""
    first = paths[0]
    return (
        first.parent / f".{first.name}.ddrnet-new.{writer}",
        first.parent / f".{first.name}.ddrnet-old.{writer}",
    )


@contextlib.contextmanager
def replaced_together(paths: Sequence[Path]) -> Iterator[dict[Path, Path]]:
    """Replace files that are only of use together (an ncnn export's ``.param``, ``.bin`` and
    sidecar) so that a kill at any moment leaves the whole earlier set or the whole new one.

    Yields ``{path: where to write its new version}`` (in a staging folder beside the first
    path); each must be written, completely, before the block ends. Then the earlier files
    are moved aside, the new ones into place, and the staging folder is removed: that is the
    moment the new set counts as written. ``restore_interrupted_set`` (run here first, and by
    the readers of such sets) puts an interrupted swap's earlier files back. An error in the
    block leaves the earlier set as it was."""
    restore_interrupted_set(paths)
    new, old = _set_folders(paths, process_tag(os.getpid()))
    paths[0].parent.mkdir(parents=True, exist_ok=True)
    new.mkdir()
    try:
        yield {path: new / path.name for path in paths}
        missing = [path.name for path in paths if not (new / path.name).is_file()]
        if missing:
            raise RuntimeError(f"the block did not write {', '.join(missing)}")
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    old.mkdir()
    for path in paths:
        if path.is_file():
            os.replace(path, old / path.name)
    for path in paths:
        os.replace(new / path.name, path)
    new.rmdir()  # the new set is complete from here on
    shutil.rmtree(old, ignore_errors=True)


def restored_before_reading(paths: Sequence[Path]) -> bool:
    """``restore_interrupted_set`` for a reader of the set: where the folder cannot be
    written it changes nothing (False), and the reader's own checks then see the mix."""
    try:
        return restore_interrupted_set(paths)
    except OSError:
        return False


def restore_interrupted_set(paths: Sequence[Path]) -> bool:
    """Finish what a killed ``replaced_together`` of ``paths`` left (one of a process that
    still runs is its own business: an export under way): while its staging folder is there
    the swap was not complete, so the earlier files go back in place (and a file that had no
    earlier version goes); after it, only the earlier files' folder is removed. True when
    earlier files were put back."""
    first = paths[0]
    pattern = re.compile(rf"\.{re.escape(first.name)}\.ddrnet-(new|old)\.(?P<tag>\d+-\d+)")
    try:
        names = [entry.name for entry in os.scandir(first.parent)]
    except (FileNotFoundError, NotADirectoryError):
        return False
    writers = {match["tag"] for name in names if (match := pattern.fullmatch(name))}
    restored = False
    for writer in sorted(writers):
        # Ours (a swap this process was stopped in), or of a process that has ended.
        if writer == process_tag(os.getpid()) or process_ended(writer):
            restored |= _undo_swap(paths, *_set_folders(paths, writer))
    return restored


def _undo_swap(paths: Sequence[Path], new: Path, old: Path) -> bool:
    """``restore_interrupted_set`` for one killed swap's folders ``new`` and ``old``."""
    if not new.exists():
        shutil.rmtree(old, ignore_errors=True)
        return False
    restored = False
    if old.is_dir():
        for path in paths:
            if (old / path.name).is_file():
                os.replace(old / path.name, path)
                restored = True
            elif not (new / path.name).exists():  # moved into place, with nothing before it
                path.unlink(missing_ok=True)
    shutil.rmtree(new, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    return restored
