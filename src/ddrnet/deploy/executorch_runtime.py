"""ExecuTorch programs (from ``export_executorch``) behind the PyTorch model interface, so
that ``ddrnet predict``, ``ddrnet eval``, ``ddrnet serve`` and ``ddrnet.Predictor`` run the
deployed form itself, as ``NcnnSegmentationModel`` does for ncnn files.

An export is two files side by side: ``NAME.pte`` (the ExecuTorch program: the graph lowered
to XNNPACK, weights inside, float32 or INT8) and ``NAME.json`` (our sidecar: the model's
``ModelMetadata`` under ``"ddrnet"``, the export options under ``"ddrnet.export"``: input
size, INT8, upsampling; the keys of the ONNX file's metadata and of the ncnn sidecar).

A ``.pte`` holds one fixed input size: ``ExecutorchSegmentationModel`` resizes any other
input to it and the logits back (``ddrnet.deploy.fixed_size``).

ExecuTorch (``pip install executorch``, the ``edge`` extra) is imported when a file is
loaded, so importing this module needs only PyTorch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ddrnet.atomic import file_digest
from ddrnet.deploy.fixed_size import FixedSizeSegmentationModel
from ddrnet.deploy.formats import is_executorch_file
from ddrnet.deploy.onnx_file import EXPORT_OPTIONS_KEY, METADATA_KEY, ExportError
from ddrnet.deploy.sidecar import (
    EXECUTORCH_KEY,
    check_sidecar_is_own,
    read_sidecar_values,
    restore_interrupted_export,
)
from ddrnet.models.metadata import ModelMetadata

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install executorch (or pip install 'ddrnet[edge]')"
# A .pte is a FlatBuffer whose file identifier (bytes 4..8) is "ET" and a 2-digit version.
PTE_IDENTIFIER = b"ET"
# Loggers that announce, at import, things irrelevant to a CPU run (torchao's CUDA kernels
# it cannot load, a pytree deprecation it triggers in torch); errors still come through.
_NOISY_IMPORT_LOGGERS = ("torchao", "torch.utils._pytree")


class ExecutorchFileError(ExportError):
    """An ExecuTorch file that cannot be run as asked; the message names the file and the fix."""


@dataclass(frozen=True)
class ExecutorchFiles:
    """The two files of one ExecuTorch export, named from its ``.pte`` file."""

    program: Path
    sidecar: Path  # NAME.json

    @classmethod
    def of(cls, program: str | Path) -> ExecutorchFiles:
        program = Path(program)
        return cls(program, program.with_suffix(".json"))

    @property
    def paths(self) -> tuple[Path, Path]:
        """The two, in the order ``ddrnet.file_sets.replaced_together`` takes them."""
        return self.program, self.sidecar


@contextlib.contextmanager
def quiet_executorch_import() -> Iterator[None]:
    """Import (or run the export passes of) ExecuTorch and torchao without their notices:
    torchao's about CUDA kernels it cannot load here, ExecuTorch's "experimental API", and
    deprecations inside their own code that the user can do nothing about."""
    saved = {name: logging.getLogger(name).level for name in _NOISY_IMPORT_LOGGERS}
    try:
        for name in saved:
            logging.getLogger(name).setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*experimental.*")
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning, module="executorch")
            yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def executorch_runtime(path: str | Path) -> Any:
    """ExecuTorch's ``Runtime`` singleton, or an ``ExecutorchFileError`` saying what to
    install to run ``path``."""
    try:
        with quiet_executorch_import():
            from executorch.runtime import Runtime
    except ImportError as error:
        raise ExecutorchFileError(
            f"running {path} needs the executorch package ({error}): {INSTALL_HINT}"
        ) from None
    return Runtime.get()


def check_executorch_files(path: str | Path) -> ExecutorchFiles:
    """The files of the export ``path`` (a ``.pte``), or an ``ExecutorchFileError`` naming
    what is wrong: another format, a missing file, a ``.pte`` without its sidecar."""
    files = ExecutorchFiles.of(path)
    if not is_executorch_file(files.program):
        raise ExecutorchFileError(
            f"{files.program}: not an ExecuTorch .pte file; --runtime executorch runs the "
            "NAME.pte (with NAME.json beside it) written by "
            "`ddrnet export --format executorch -o NAME.pte`"
        )
    restore_interrupted_export(files.paths)
    if not files.program.is_file():
        raise ExecutorchFileError(f"{files.program}: no such ExecuTorch .pte file")
    with files.program.open("rb") as stream:
        header = stream.read(8)
    if len(header) < 8 or header[4:6] != PTE_IDENTIFIER or not header[6:8].isdigit():
        raise ExecutorchFileError(
            f"{files.program}: not an ExecuTorch program (no ET file identifier in its "
            "header); export one with `ddrnet export --format executorch`"
        )
    if not files.sidecar.is_file():
        raise ExecutorchFileError(
            f"{files.program}: its metadata {files.sidecar} is missing (classes, palette, "
            "normalisation); give the .json written beside it by "
            "`ddrnet export --format executorch` (same name, .json)"
        )
    return files


def check_program_belongs(files: ExecutorchFiles, sidecar: dict[str, Any]) -> None:
    """Refuse a ``.pte`` other than the one its sidecar was written with (an export killed
    between its two writes leaves a new program beside the old sidecar: it would load with
    another model's classes and options). Sidecars without the digest predate it."""
    check_sidecar_is_own(sidecar, EXECUTORCH_KEY, files.program, files.sidecar, ExecutorchFileError)
    recorded = (sidecar.get(EXECUTORCH_KEY) or {}).get("pte_blake2b")
    if recorded is not None and file_digest(files.program) != recorded:
        raise ExecutorchFileError(
            f"{files.program}: it is not the program {files.sidecar.name} was written with "
            "(an export interrupted while writing?); export it again"
        )


def read_sidecar(files: ExecutorchFiles) -> dict[str, Any]:
    """The sidecar JSON of an export: a dict with the model's metadata under ``"ddrnet"``;
    an ``ExecutorchFileError`` naming the file when it is not one."""
    values = read_sidecar_values(files.sidecar, EXECUTORCH_KEY, ExecutorchFileError)
    if not isinstance(values.get(METADATA_KEY), dict):
        raise ExecutorchFileError(
            f"{files.sidecar}: not a ddrnet ExecuTorch sidecar (no {METADATA_KEY!r} metadata "
            f"object); export {files.program} again with `ddrnet export --format executorch`"
        )
    return values


@contextlib.contextmanager
def _native_stderr_captured() -> Iterator[list[str]]:
    """Collect what native code writes to file descriptor 2 into the yielded list (filled
    on exit): XNNPACK's CPU probe prints five lines on every method load on x86, which
    are noise on success and the explanation on failure."""
    lines: list[str] = []
    try:
        saved = os.dup(2)
    except OSError:  # no file descriptor 2 (an embedded interpreter): nothing to capture
        yield lines
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines.extend(sink.read().decode(errors="replace").splitlines())


def _set_thread_pool(threads: int) -> None:
    """Size ExecuTorch's thread pool (process-wide, and unsafe to change while a method runs,
    so only ever at load time; creating it is what prints XNNPACK's CPU probe)."""
    from executorch.extension.pybindings import portable_lib

    if portable_lib._threadpool_get_thread_count() != threads:
        portable_lib._unsafe_reset_threadpool(threads)


def load_method(files: ExecutorchFiles, threads: int | None = None) -> Any:
    """The program's ``forward`` method, ready to run; ``threads``: the size of ExecuTorch's
    process-wide thread pool (left as it is, one thread per core, when None)."""
    runtime = executorch_runtime(files.program)
    with _native_stderr_captured() as native:
        try:
            if threads is not None:
                _set_thread_pool(threads)
            program = runtime.load_program(files.program)
            method = program.load_method("forward")
        except (RuntimeError, ValueError) as error:
            method, failure = None, error
    if method is None:
        detail = native[-1] if native else failure
        raise ExecutorchFileError(
            f"{files.program}: ExecuTorch cannot load this program ({detail}); export it "
            "again with `ddrnet export --format executorch` and the same executorch version"
        )
    return method


class ExecutorchSegmentationModel(FixedSizeSegmentationModel):
    """An ExecuTorch logits program (``export_executorch``) run on the CPU (XNNPACK), one
    image at a time, at its fixed size (other sizes: ``FixedSizeSegmentationModel``).

    Args:
        path: the ``.pte`` file; ``NAME.json`` (classes, palette, mean/std) must lie beside it.
        threads: ExecuTorch's thread pool size; by default its own (one per core).
        resize: resize inputs of another size (True) or refuse them (False).
    """

    runtime_name = "executorch"
    runtime_label = "ExecuTorch"
    file_error = ExecutorchFileError

    def __init__(self, path: str | Path, threads: int | None = None, resize: bool = True) -> None:
        super().__init__()
        files = check_executorch_files(path)
        sidecar = read_sidecar(files)
        check_program_belongs(files, sidecar)
        metadata = ModelMetadata.from_json(
            json.dumps(sidecar[METADATA_KEY]), source=str(files.sidecar)
        )
        self.method = load_method(files, threads)
        meta = self.method.metadata
        in_sizes = tuple(meta.input_tensor_meta(0).sizes())
        out_sizes = tuple(meta.output_tensor_meta(0).sizes())
        if len(in_sizes) != 4 or len(out_sizes) != 4 or in_sizes[:2] != (1, 3):
            raise ExecutorchFileError(
                f"{files.program}: takes {list(in_sizes)} and gives {list(out_sizes)}, not a "
                "(1, 3, H, W) image to (1, C, h, w) logits; not a ddrnet segmentation export"
            )
        self._set_program(
            files.program,
            metadata,
            sidecar.get(EXPORT_OPTIONS_KEY) or {},
            (int(in_sizes[2]), int(in_sizes[3])),
            (int(out_sizes[2]), int(out_sizes[3])),
            resize,
        )
        self.files, self.threads = files, threads

    def _run(self, batch: torch.Tensor) -> torch.Tensor:
        # The program takes one image; execute returns a copy of its output.
        return torch.cat([self.method.execute([image[None].contiguous()])[0] for image in batch])


def load_executorch_model(
    path: str | Path, threads: int | None = None, resize: bool = True
) -> ExecutorchSegmentationModel:
    """``ExecutorchSegmentationModel(path, threads, resize)``, in eval mode.

    >>> import ddrnet
    >>> model = load_executorch_model("camvid.pte")
    >>> labels = ddrnet.Predictor(model).predict("street.png")
    """
    return ExecutorchSegmentationModel(path, threads, resize).eval()
