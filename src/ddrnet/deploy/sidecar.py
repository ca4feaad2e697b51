"""The JSON sidecar beside an ncnn or ExecuTorch export (``NAME.json``): the model's metadata
and export options under the ONNX file's keys (``ddrnet.deploy.onnx_file``), and its format's
own section (blob names, the digests of the files it was written with).

``m.param`` and ``m.pte`` share ``m.json``, and the files of one export are only of use
together: here is what tells whose sidecar a file is, refuses to replace or read another's,
and puts back an earlier export that a kill left half replaced (``ddrnet.atomic``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

from ddrnet.atomic import atomic_write_text
from ddrnet.deploy.onnx_file import METADATA_KEY, ExportError
from ddrnet.file_sets import restored_before_reading

logger = logging.getLogger(__name__)

# Each format's own section of its sidecar: its key -> the format's name. ncnn's holds
# {"input": blob name, "output": blob name, "param_blake2b", "bin_blake2b": the digests of
# the two files it was written with}; ExecuTorch's {"pte_blake2b": the program's digest}.
NCNN_KEY = "ncnn"
EXECUTORCH_KEY = "executorch"
SIDECAR_FORMATS = {NCNN_KEY: "ncnn", EXECUTORCH_KEY: "ExecuTorch"}


def write_sidecar(values: dict[str, object], path: Path) -> None:
    """Write the sidecar ``values`` to ``path`` whole (a reader never sees half of it)."""
    atomic_write_text(json.dumps(values, indent=1) + "\n", path)


def read_sidecar_values(path: Path, own_key: str, error: type[Exception]) -> dict[str, object]:
    """The sidecar at ``path`` as a JSON object; ``error`` naming the file (and the format
    of ``own_key``) when it is not one."""
    what = f"not a ddrnet {SIDECAR_FORMATS[own_key]} sidecar"
    try:
        values = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as problem:
        raise error(f"{path}: {what} ({problem})") from None
    if not isinstance(values, dict):
        raise error(f"{path}: {what} (not a JSON object)")
    return values


def sidecar_writer(values: object) -> str | None:
    """The format (``SIDECAR_FORMATS``'s names) whose export wrote the sidecar ``values``
    (its parsed JSON), or None when no format's key says so."""
    if isinstance(values, dict):
        for key, name in SIDECAR_FORMATS.items():
            if key in values:
                return name
    return None


def check_sidecar_replaceable(sidecar: Path, own_key: str) -> None:
    """Refuse an export whose ``sidecar`` (``NAME.json``) would replace a file that is not an
    earlier sidecar of its own format (``own_key``): a user's own JSON, or the sidecar of
    another format's export of the same name (``m.param`` and ``m.pte`` share ``m.json``)."""
    if not sidecar.is_file():
        return
    try:
        values = json.loads(sidecar.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        values = None
    writer = sidecar_writer(values)
    ours = (
        isinstance(values, dict)
        and METADATA_KEY in values
        and writer in (None, SIDECAR_FORMATS[own_key])
    )
    if not ours:
        what = f"the sidecar of an {writer} export" if writer else "not a ddrnet sidecar"
        raise ExportError(
            f"{sidecar}: the export writes its sidecar there, and the file there is {what}; "
            "move it, or export under another name"
        )


def check_sidecar_is_own(
    values: dict[str, object], own_key: str, program: Path, sidecar: Path, error: type[Exception]
) -> None:
    """Refuse, as ``error``, to run ``program`` with the sidecar ``values`` that another
    format's export of the same name wrote."""
    writer = sidecar_writer(values)
    if writer not in (None, SIDECAR_FORMATS[own_key]):
        raise error(
            f"{program}: {sidecar.name} beside it is the sidecar of an {writer} export of the "
            "same name, not this file's; export it again under another name"
        )


def restore_interrupted_export(paths: Sequence[Path]) -> None:
    """Before an export's files (``paths``, the program first) are read: put back the
    earlier export that a kill left half replaced, and say so."""
    if restored_before_reading(paths):
        logger.warning(
            "%s: an export to it was stopped midway; the earlier export's files are back",
            paths[0],
        )
