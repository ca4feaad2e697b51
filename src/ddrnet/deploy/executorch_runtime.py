"""ExecuTorch programs (from ``export_executorch``) behind the PyTorch model interface, so
that ``ddrnet predict``, ``ddrnet eval``, ``ddrnet serve`` and ``ddrnet.Predictor`` run the
deployed form itself, as ``NcnnSegmentationModel`` does for ncnn files.

An export is two files side by side: ``NAME.pte`` (the ExecuTorch program: the graph lowered
to XNNPACK, weights inside, float32 or INT8) and ``NAME.json`` (our sidecar: the model's
``ModelMetadata`` under ``"ddrnet"``, the export options under ``"ddrnet.export"``: input
size, INT8, upsampling; the keys of the ONNX file's metadata and of the ncnn sidecar).

A ``.pte`` holds one fixed input size (``torch.export`` of DDRNet with symbolic height and
width failed), so ``ExecutorchSegmentationModel`` resizes any other input to that size and
the logits back to the size the input would have given (see there).

ExecuTorch (``pip install executorch``, the ``edge`` extra) is imported when a file is
loaded, so importing this module needs only PyTorch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ddrnet.deploy.onnx_file import EXPORT_OPTIONS_KEY, METADATA_KEY, ExportError
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


def is_executorch_file(path: str | Path | None) -> bool:
    """Whether ``path`` names an ExecuTorch program (by its ``.pte`` suffix; need not exist)."""
    return path is not None and Path(path).suffix.lower() == ".pte"


@dataclass(frozen=True)
class ExecutorchFiles:
    """The two files of one ExecuTorch export, named from its ``.pte`` file."""

    program: Path
    sidecar: Path  # NAME.json

    @classmethod
    def of(cls, program: str | Path) -> ExecutorchFiles:
        program = Path(program)
        return cls(program, program.with_suffix(".json"))


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


def read_sidecar(files: ExecutorchFiles) -> dict[str, Any]:
    """The sidecar JSON of an export: a dict with the model's metadata under ``"ddrnet"``;
    an ``ExecutorchFileError`` naming the file when it is not one."""
    try:
        values = json.loads(files.sidecar.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ExecutorchFileError(
            f"{files.sidecar}: not a ddrnet ExecuTorch sidecar ({error})"
        ) from None
    if not isinstance(values, dict) or not isinstance(values.get(METADATA_KEY), dict):
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


class ExecutorchSegmentationModel(nn.Module):
    """An ExecuTorch logits program (``export_executorch``) run on the CPU (XNNPACK).

    ``forward``: ``(N, 3, H, W)`` normalised float images -> ``(N, num_classes, h, w)``
    float32 logits on the input's device, ``h, w`` = ``ceil(H/8), ceil(W/8)`` (``H, W`` for
    files exported with ``upsample_to_input``). The program runs one image at a time at its
    fixed size ``input_size``; an image of another size is resized bilinearly
    (``align_corners=False``) to ``input_size`` and its logits back to ``h, w`` the same way,
    so the result is exactly PyTorch's logits for the resized image, resized: close to, but
    not the same as, a pass at the image's own size (a warning says so, once). With
    ``resize=False`` such an input is an ``ExecutorchFileError`` naming the file's size.

    Args:
        path: the ``.pte`` file; ``NAME.json`` (classes, palette, mean/std) must lie beside it.
        threads: ExecuTorch's thread pool size; by default its own (one per core).
        resize: resize inputs of another size (True) or refuse them (False).
    """

    def __init__(self, path: str | Path, threads: int | None = None, resize: bool = True) -> None:
        super().__init__()
        files = check_executorch_files(path)
        sidecar = read_sidecar(files)
        self.metadata = ModelMetadata.from_json(
            json.dumps(sidecar[METADATA_KEY]), source=str(files.sidecar)
        )
        options = sidecar.get(EXPORT_OPTIONS_KEY) or {}
        self.upsampled = bool(options.get("upsample_to_input", False))
        self.int8 = bool(options.get("int8", False))
        self.method = load_method(files, threads)
        meta = self.method.metadata
        in_sizes = tuple(meta.input_tensor_meta(0).sizes())
        out_sizes = tuple(meta.output_tensor_meta(0).sizes())
        if len(in_sizes) != 4 or len(out_sizes) != 4 or in_sizes[:2] != (1, 3):
            raise ExecutorchFileError(
                f"{files.program}: takes {list(in_sizes)} and gives {list(out_sizes)}, not a "
                "(1, 3, H, W) image to (1, C, h, w) logits; not a ddrnet segmentation export"
            )
        self.input_size = (int(in_sizes[2]), int(in_sizes[3]))  # (height, width), pixels
        self._output_size = (int(out_sizes[2]), int(out_sizes[3]))
        self.num_classes = self.metadata.num_classes
        self.path, self.files, self.threads, self.resize = files.program, files, threads, resize
        self._warned_resize = False

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """``(h, w)`` of the logits for an ``height x width`` input: the program's own
        output/input ratio (1/8 for DDRNet, 1 with ``upsample_to_input``), rounded up."""
        in_height, in_width = self.input_size
        out_height, out_width = self._output_size
        return math.ceil(height * out_height / in_height), math.ceil(width * out_width / in_width)

    def _run(self, image: torch.Tensor) -> torch.Tensor:
        """One ``(1, 3, H, W)`` float32 CPU image at ``input_size`` -> ``(1, C, h, w)`` logits."""
        (logits,) = self.method.execute([image.contiguous()])  # a copy of the output
        return logits

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected (N, 3, H, W) images, got shape {tuple(images.shape)}")
        height, width = int(images.shape[-2]), int(images.shape[-1])
        batch = images.detach().float().cpu()
        resized = (height, width) != self.input_size
        if resized:
            self._check_resize(height, width)
            batch = F.interpolate(batch, self.input_size, mode="bilinear", align_corners=False)
        logits = torch.cat([self._run(image[None]) for image in batch])
        if resized:
            size = self.output_size(height, width)
            logits = F.interpolate(logits, size, mode="bilinear", align_corners=False)
        return logits.to(images.device)

    def _check_resize(self, height: int, width: int) -> None:
        file_size = f"{self.input_size[0]}x{self.input_size[1]}"
        if not self.resize:
            raise ExecutorchFileError(
                f"{self.path}: exported for {file_size} inputs, got {height}x{width}; resize "
                f"the image or export again with --size {height}x{width}"
            )
        if not self._warned_resize:
            self._warned_resize = True
            logger.warning(
                "%s runs at its export size %s: %dx%d inputs are resized to it and the logits "
                "back (export with --size %dx%d for passes at this size)",
                self.path,
                file_size,
                height,
                width,
                height,
                width,
            )

    def extra_repr(self) -> str:
        precision = "int8" if self.int8 else "float32"
        size = f"{self.input_size[0]}x{self.input_size[1]}"
        return f"path={str(self.path)!r}, runtime=executorch, {precision}, size={size}"


def load_executorch_model(
    path: str | Path, threads: int | None = None, resize: bool = True
) -> ExecutorchSegmentationModel:
    """``ExecutorchSegmentationModel(path, threads, resize)``, in eval mode.

    >>> import ddrnet
    >>> model = load_executorch_model("camvid.pte")
    >>> labels = ddrnet.Predictor(model).predict("street.png")
    """
    return ExecutorchSegmentationModel(path, threads, resize).eval()
