"""Files written whole or not at all: a temporary beside the target, fsync, then a rename.

Training checkpoints, run metrics and model files all go through ``atomic_write``, so a crash
(even SIGKILL) or a full disk mid-write leaves the previous file intact. It sits below every
layer (models write model files, the engine writes run folders) and needs nothing but the
standard library.

Callers that need a simulated kill in tests to reach every write call it as
``atomic.atomic_write`` (through the module), so that one ``monkeypatch`` intercepts them all.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import IO, Any


def _process_umask() -> int:
    """The process's umask (read once, at import: setting the umask is the only way to read
    it, and another thread creating a file in between would get the wrong mode)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


_UMASK = _process_umask()
# ``mkstemp`` creates its file readable by its owner only, and ``mkdtemp`` its folder; the
# renamed results get the modes ``open`` and ``mkdir`` give, so that model files and
# predictions can be shared as usual.
NEW_FILE_MODE = 0o666 & ~_UMASK
NEW_FOLDER_MODE = 0o777 & ~_UMASK


def _mode_for(path: Path) -> int:
    """The mode a plain write to ``path`` leaves: the file's own when it exists (rewriting
    keeps it), else ``NEW_FILE_MODE``."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:  # no such file (or not ours to inspect): a new file's mode
        return NEW_FILE_MODE


def atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Call ``write`` on a temporary file in ``path``'s folder, fsync, then rename it over
    ``path``: a crash (even SIGKILL) or a full disk mid-write leaves the previous file intact.
    The temporary is named ``.<name>.<random>.tmp``; ``remove_stale_temporaries`` finds the
    ones a kill left behind. An ``OSError`` names ``path``."""
    handle, temporary = _open_temporary(path, "")
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        _name_target(error, path, temporary)
        stop = _stop_behind(error)
        if stop is not None:
            raise stop from None
        raise


def _stop_behind(error: BaseException) -> BaseException | None:
    """The Ctrl-C or SIGTERM (a ``KeyboardInterrupt``) that ``error`` was raised in the
    handling of, if any: ``torch.save`` stopped by one mid-write raises its own error while
    closing its zip writer ("unexpected pos ..."), which would hide the stop behind a
    traceback. None when ``error`` is itself the stop, or none is behind it."""
    if isinstance(error, KeyboardInterrupt):
        return None
    cause = error.__context__
    while cause is not None:
        if isinstance(cause, KeyboardInterrupt):
            return cause
        cause = cause.__context__
    return None


def _name_target(error: BaseException, path: Path, temporary: str | Path) -> None:
    """Let an ``OSError`` name the file asked for, not our temporary's random name
    ("[Errno 28] No space left on device: 'last.pt'"; a folder in the way of the rename)."""
    if isinstance(error, OSError) and error.errno is not None:
        if error.filename is None or str(error.filename) == str(temporary):
            error.filename, error.filename2 = str(path), None


def _open_temporary(path: Path, suffix: str) -> tuple[int, str]:
    """A new file ``.<name>.<random>.tmp<suffix>`` in ``path``'s folder (made if missing),
    open, with the mode a plain write to ``path`` would leave: its descriptor and name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        handle, temporary = tempfile.mkstemp(
            prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent
        )
    except OSError as error:  # it names the random temporary it could not create
        error.filename, error.filename2 = str(path), None
        raise
    if hasattr(os, "fchmod"):  # POSIX
        try:
            os.fchmod(handle, _mode_for(path))
        except OSError as error:
            os.close(handle)
            Path(temporary).unlink(missing_ok=True)
            _name_target(error, path, temporary)
            raise
    return handle, temporary


def temporary_beside(path: Path, suffix: str = "") -> Path:
    """A new empty file in ``path``'s folder, ``.<name>.<random>.tmp<suffix>``, for a writer
    that must be given a path (OpenCV's video writer picks its container by the suffix);
    ``commit`` renames it over ``path`` when it is complete."""
    handle, temporary = _open_temporary(path, suffix)
    os.close(handle)
    return Path(temporary)


def commit(temporary: Path, path: Path) -> None:
    """Make a complete ``temporary_beside`` file ``path``: fsync, then rename it over it."""
    try:
        with open(temporary, "rb+") as stream:
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except OSError as error:
        _name_target(error, path, temporary)
        raise


def temporary_folder_beside(path: Path, suffix: str = "") -> Path:
    """A new empty folder ``.<name>.<random>.tmp<suffix>`` in ``path``'s folder (made if
    missing), with the mode ``mkdir`` would give it, to fill and then make ``path`` with
    ``commit_folder``: a kill mid-way leaves an earlier ``path`` as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        folder = Path(
            tempfile.mkdtemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
        )
    except OSError as error:  # it names the random folder it could not create
        error.filename, error.filename2 = str(path), None
        raise
    folder.chmod(NEW_FOLDER_MODE)
    return folder


# The suffix of a folder renamed aside while its replacement takes its name.
ASIDE = ".aside"


def commit_folder(temporary: Path, path: Path) -> None:
    """Make a complete ``temporary_folder_beside`` folder ``path``. A folder already there is
    first renamed aside (``.<name>.<random>.tmp.aside``) and deleted once the new one is in
    place: between the two renames a kill leaves it whole under that name, and
    ``remove_stale_temporaries`` puts it back while ``path`` is missing. An ``OSError`` (a
    file in the way) names ``path``."""
    aside = None
    if path.is_dir() and not path.is_symlink():
        aside = temporary_folder_beside(path, ASIDE)
        os.replace(path, aside)  # onto the new empty folder: rename(2) allows it
    try:
        os.replace(temporary, path)
    except OSError as error:
        if aside is not None:
            os.replace(aside, path)
        _name_target(error, path, temporary)
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


# Inside a folder: the files of a set written by ``staged_files``, until all are written.
STAGING_FOLDER = ".partial"


@contextlib.contextmanager
def staged_files(folder: Path, set_name: str | None = None) -> Iterator[Path]:
    """A staging folder inside ``folder`` to write a set of files into; when the block ends
    without an error they are moved into ``folder`` (renames, one after another). With
    ``set_name``, the set replaces the one written before under that name: the files it
    listed in ``folder/.ddrnet-<set_name>`` are deleted, and the list becomes this set's.
    Only listed files go: a user's own files beside them stay, whatever their names (one
    under the name of a new file is a ``FileExistsError``, and nothing is moved). A set
    stopped or failed midway is removed, and the earlier set stays whole; a staging folder
    a kill left is removed first. Unlike ``commit_folder``, ``folder`` itself is never
    renamed: it may be the current folder, or hold other files."""
    staging = folder / STAGING_FOLDER
    if staging.is_dir() and not staging.is_symlink():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    names = sorted(path.name for path in staging.iterdir())
    if set_name is not None:
        listing = set_listing(folder, set_name)
        earlier = _listed_names(listing)
        try:  # a user's file under the name of one of ours: it stays, ours are not kept
            _check_names_free(folder, earlier, names)
        except FileExistsError:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        # Every file of both sets listed while they are swapped: a kill in between leaves
        # nothing of ours that the next run would not replace.
        atomic_write_text("".join(f"{name}\n" for name in sorted({*earlier, *names})), listing)
        for name in set(earlier) - set(names):
            with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                (folder / name).unlink()
    for name in names:
        os.replace(staging / name, folder / name)
    staging.rmdir()
    if set_name is not None:
        atomic_write_text("".join(f"{name}\n" for name in names), listing)


def check_set_names_free(folder: Path, set_name: str, names: Collection[str]) -> None:
    """A ``FileExistsError`` naming the first of ``names`` that is a file in ``folder`` which
    the earlier ``staged_files`` set ``set_name`` did not write: a user's file, which the
    set would replace. Callers that know the names before the work check them first."""
    _check_names_free(folder, set_names(folder, set_name), names)


def _check_names_free(folder: Path, earlier: Collection[str], names: Collection[str]) -> None:
    """``check_set_names_free`` with the earlier set's names already read."""
    earlier = set(earlier)
    for name in names:
        if name not in earlier and os.path.lexists(folder / name):
            raise FileExistsError(
                errno.EEXIST,
                "not written by an earlier run, and this one would replace it: move it, or "
                "choose another folder",
                str(folder / name),
            )


def set_listing(folder: Path, set_name: str) -> Path:
    """The file in ``folder`` that lists the ``staged_files(folder, set_name)`` set."""
    return folder / f".ddrnet-{set_name}"


def set_names(folder: Path, set_name: str) -> list[str]:
    """The file names the ``staged_files(folder, set_name)`` list holds (while a set is
    moved out: both sets'); none when there is no list."""
    return _listed_names(set_listing(folder, set_name))


def _listed_names(listing: Path) -> list[str]:
    """The file names a set's list holds (none when there is no list): plain names only, so
    a list edited by hand cannot reach outside its folder."""
    try:
        lines = listing.read_text(encoding="utf-8", errors="replace").splitlines()
    except (FileNotFoundError, IsADirectoryError):
        return []
    return [name for name in lines if name and name == Path(name).name and name not in (".", "..")]


def atomic_write_text(text: str, path: Path) -> None:
    """Write a text file (UTF-8) through ``atomic_write``."""
    data = text.encode()
    atomic_write(path, lambda stream: stream.write(data))


def why_not_writable(folder: Path) -> str | None:
    """Why files cannot be written in ``folder`` (None: they can): it exists and takes new
    files, or the nearest existing folder above it does, where the writer will make it once
    there is something to write (a refused command leaves no empty folders). Checked before
    minutes of work, not after."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        if existing.is_symlink():  # exists() is False through a link to nothing, or a loop
            return f"{existing} is a link to nothing (or a loop)"
        existing = existing.parent
    if not existing.is_dir():
        return f"cannot create its folder ({existing} is a file)"
    try:  # a read-only folder, or /proc
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        return f"cannot write in its folder ({error.strerror or error})"
    return None


# ``ddrnet-<kind>-<process tag>-<random>``: a scratch folder in the temporary folder.
_SCRATCH = re.compile(r"ddrnet-[a-z-]+?-(?P<tag>\d+-\d+)-[a-z0-9_]+")


def scratch_folder(kind: str) -> tempfile.TemporaryDirectory:
    """A ``TemporaryDirectory`` for an export's or a benchmark's files (``kind``: what for,
    lower-case words joined by ``-``). Such folders can be large (a model's ONNX graphs,
    pnnx's files), and one whose process was killed (SIGKILL, a full machine) is never
    removed by it: those of processes that have ended are removed first."""
    root = Path(tempfile.gettempdir())
    with contextlib.suppress(OSError):
        for entry in os.scandir(root):
            match = _SCRATCH.fullmatch(entry.name)
            if match and entry.is_dir(follow_symlinks=False) and process_ended(match["tag"]):
                shutil.rmtree(entry.path, ignore_errors=True)
    tag = process_tag(os.getpid())
    return tempfile.TemporaryDirectory(prefix=f"ddrnet-{kind}-{tag}-", dir=root)


def process_tag(pid: int) -> str:
    """``<pid>-<start>``: a process id with its start time (clock ticks since boot, field 22
    of ``/proc/PID/stat``; 0 where there is none), which names one process where an id
    alone may since have been given to another."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        start = stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        start = "0"
    return f"{pid}-{start}"


def process_ended(tag: str) -> bool:
    """Whether the process that ``tag`` (``process_tag``) names has ended: no process has
    its id, or the one that has it started at another time (the id was given again). A
    process of another user counts as running: what it left is not ours to clean."""
    pid = int(tag.split("-")[0])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OverflowError:
        return True  # no process can have such an id
    except PermissionError:
        pass
    return process_tag(pid) != tag


def file_digest(path: Path) -> str:
    """BLAKE2b (16 bytes, hex) of a file's content: an export's sidecar, written last,
    records those of the files written before it, so that files of two exports that a kill
    left side by side are told apart."""
    digest = hashlib.blake2b(digest_size=16)
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _map_leaves(value: Any, leaf: Callable[[Any], Any]) -> Any:
    """``value`` (dicts, lists, tuples of numbers, strings, None) with ``leaf`` applied to
    everything that is not a dict or a list; tuples come back as lists, as JSON has them."""
    if isinstance(value, dict):
        return {key: _map_leaves(item, leaf) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_map_leaves(item, leaf) for item in value]
    return leaf(value)


def json_values(value: Any) -> Any:
    """``value`` with every ``nan`` and infinity as None: Python writes them as
    ``NaN``/``Infinity``, which is not JSON (JavaScript's and most other parsers refuse the
    file). A score nothing was scored for becomes ``null``; ``nan_for_null`` reads it back."""
    return _map_leaves(
        value, lambda x: None if isinstance(x, float) and not math.isfinite(x) else x
    )


def nan_for_null(value: Any) -> Any:
    """A report's numbers as they were scored: every None (``null``) as ``nan``, the
    inverse of ``json_values`` for a score nothing was scored for."""
    return _map_leaves(value, lambda x: math.nan if x is None else x)


def atomic_write_json(document: Any, path: Path, default: Callable | None = None) -> None:
    """Write ``document`` as an indented JSON report through ``atomic_write``, ``nan`` as
    ``null`` (``json_values``); ``default`` as ``json.dumps`` takes it."""
    text = json.dumps(json_values(document), indent=2, allow_nan=False, default=default)
    atomic_write_text(text + "\n", path)


def atomic_copy(source: Path, path: Path) -> None:
    """Copy the file ``source`` to ``path`` through ``atomic_write`` (a tool's output from a
    scratch folder, e.g. pnnx's: ``shutil.move`` across file systems copies in place, so a
    kill mid-copy would leave half a file under the final name)."""
    with open(source, "rb") as stream:
        atomic_write(path, lambda target: shutil.copyfileobj(stream, target))


# ``.<name>.<random>.tmp[<suffix>]``: how ``tempfile`` names the temporaries of ``name``
# here (its random part is of ``[a-z0-9_]``).
_TEMPORARY = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]+\.tmp(\.[^.]*)?")


def remove_stale_temporaries(folder: Path, names: Collection[str]) -> list[Path]:
    """Delete the temporaries of the files or folders ``names`` that a killed
    ``atomic_write``, an uncommitted ``temporary_beside`` or ``temporary_folder_beside`` or a
    killed ``commit_folder`` left in ``folder`` (and ``<name>.tmp``, what ``save_model`` wrote
    before it used ``atomic_write``); the paths deleted. A folder that ``commit_folder`` had
    renamed aside when it was killed goes back to its name instead, if that is free. One scan
    of the folder, however many names."""
    wanted = set(names)
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []
    stale = []
    for entry in entries:
        match = _TEMPORARY.fullmatch(entry.name)
        if match and match["name"] in wanted:
            original = Path(folder) / match["name"]
            if entry.name.endswith(ASIDE) and entry.is_dir() and not os.path.lexists(original):
                os.replace(entry.path, original)  # the earlier folder, whole
                continue
            stale.append(Path(entry.path))
        elif entry.name.endswith(".tmp") and entry.name[:-4] in wanted and entry.is_file():
            stale.append(Path(entry.path))
    for path in stale:
        if path.is_dir() and not path.is_symlink():  # a ``temporary_folder_beside``
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return stale
