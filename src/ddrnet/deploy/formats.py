"""The exported model files that ``ddrnet.load`` runs, told apart by their suffix: one table
of each format's suffix, the runtimes that run it, and how messages name it and say how to
make one. Nothing here reads a file or imports a runtime."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ExportedFormat:
    """One exported format. ``runtimes``: those that run it, the default first (the only one
    for the formats of a single runtime)."""

    label: str  # as users call it: "ONNX", "ncnn"
    suffix: str  # the file that names the model (ncnn's weights lie beside it)
    runtimes: tuple[str, ...]
    file_kind: str  # what its file is, for messages
    export_hint: str  # how to make one

    def names(self, path: str | Path | None) -> bool:
        """Whether ``path`` names a file of this format (by its suffix, any case; the file
        need not exist)."""
        return path is not None and Path(path).suffix.lower() == self.suffix


# fmt: off
ONNX = ExportedFormat(
    "ONNX", ".onnx", ("onnxruntime", "openvino"), "ONNX file",
    "`ddrnet export -o NAME.onnx` (or `--format onnx-int8`)",
)
NCNN = ExportedFormat(
    "ncnn", ".param", ("ncnn",), "ncnn .param file",
    "`ddrnet export --format ncnn -o NAME.param` (writes NAME.param, NAME.bin, NAME.json)",
)
EXECUTORCH = ExportedFormat(
    "ExecuTorch", ".pte", ("executorch",), "ExecuTorch .pte file",
    "`ddrnet export --format executorch -o NAME.pte` (writes NAME.pte and NAME.json)",
)
AOTI = ExportedFormat(
    "AOTInductor", ".pt2", ("aoti",), "AOTInductor .pt2 package",
    "`ddrnet export --format aoti -o NAME.pt2`",
)
# fmt: on
EXPORTED_FORMATS = (ONNX, NCNN, EXECUTORCH, AOTI)


def exported_format(path: str | Path | None) -> ExportedFormat | None:
    """The exported format ``path`` names by its suffix, or None (a PyTorch model file, a
    bundled model's name, or nothing)."""
    return next((fmt for fmt in EXPORTED_FORMATS if fmt.names(path)), None)


def format_of_runtime(runtime: str) -> ExportedFormat | None:
    """The format that only ``runtime`` runs (``"ncnn"`` -> ``NCNN``), or None for the
    runtimes of ONNX files and names that are no runtime."""
    return next((fmt for fmt in EXPORTED_FORMATS if fmt.runtimes == (runtime,)), None)


def is_onnx_file(path: str | Path | None) -> bool:
    """Whether ``path`` names an ONNX file (by its suffix; the file need not exist)."""
    return ONNX.names(path)


def is_ncnn_file(path: str | Path | None) -> bool:
    """Whether ``path`` names an ncnn graph (by its ``.param`` suffix; need not exist)."""
    return NCNN.names(path)


def is_executorch_file(path: str | Path | None) -> bool:
    """Whether ``path`` names an ExecuTorch program (by its ``.pte`` suffix; need not exist)."""
    return EXECUTORCH.names(path)


def is_aoti_file(path: str | Path | None) -> bool:
    """Whether ``path`` names an AOTInductor package (by its ``.pt2`` suffix)."""
    return AOTI.names(path)
