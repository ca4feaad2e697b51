"""ncnn export through pnnx, and ``ddrnet export --format ncnn`` (the export, then its check
against PyTorch: ``ddrnet.deploy.verify``).

``export_ncnn`` traces the BN-folded eval model (the ``SegmentationExportWrapper`` that
``export_onnx`` exports), hands the TorchScript file to pnnx (``pip install pnnx``), and keeps
pnnx's ncnn output: ``NAME.param`` + ``NAME.bin`` (float32 weights), plus our sidecar
``NAME.json`` with the model's classes, palette and normalisation (``ncnn_runtime``). pnnx
turns every ``F.interpolate(size=t.shape[-2:])`` into an ncnn ``Interp`` that takes its size
from a blob, so the file runs at any input size; the export traces two sizes to make sure.

pnnx's intermediate files (TorchScript, pnnx graph, Python) stay in a temporary folder.
"""

from __future__ import annotations

import json
import subprocess
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ddrnet.atomic import (
    atomic_copy,
    file_digest,
    remove_stale_temporaries,
    scratch_folder,
)
from ddrnet.deploy.export import check_size, example_input, folded_export_wrapper
from ddrnet.deploy.ncnn_runtime import NcnnFiles, is_ncnn_file
from ddrnet.deploy.onnx_file import EXPORT_OPTIONS_KEY, METADATA_KEY, ExportError
from ddrnet.deploy.sidecar import NCNN_KEY, check_sidecar_replaceable, write_sidecar
from ddrnet.deploy.verify import evaluate_on_camvid, real_frames, verify_ncnn
from ddrnet.errors import UsageError
from ddrnet.file_sets import replaced_together
from ddrnet.models.metadata import default_input_size

PNNX_INSTALL_HINT = "pip install pnnx ncnn (or pip install 'ddrnet[edge]')"
PNNX_TIMEOUT_SECONDS = 900


def _pnnx_executable() -> str:
    """The pnnx converter's path, or an ``ExportError`` saying what to install."""
    try:
        import pnnx
    except ImportError as error:
        raise ExportError(f"--format ncnn needs pnnx ({error}): {PNNX_INSTALL_HINT}") from None
    return str(pnnx.EXEC_PATH)


def _second_size(height: int, width: int) -> tuple[int, int]:
    """Another input size for pnnx's second trace (``inputshape2``), which is how pnnx tells
    the dynamic height and width from constants: 128 pixels more each way, so that every
    feature map down to DAPPM's 1/64 (and its 1/128 pool) differs in both sides between the
    traces. (A second size of 49x67 for 96x128 left the 1/64 map 2 wide in both, and pnnx
    froze DAPPM's resizes to that width: wrong logits at every other size.)"""
    return height + 128, width + 128


def frozen_interps(param: str | Path) -> list[str]:
    """Names of the ``Interp`` layers of an ncnn ``.param`` whose output size is a number
    rather than an expression over a blob's size (``9="1w,1h"``): such a resize only works
    at the export size; an exported DDRNet should have none."""
    frozen = []
    for line in Path(param).read_text().splitlines():
        fields = line.split()
        if len(fields) < 2 or fields[0] != "Interp":
            continue
        sizes = [field.split("=", 1)[1].strip('"') for field in fields if field.startswith("9=")]
        if not sizes or any(part.strip().isdigit() for part in sizes[0].split(",")):
            frozen.append(fields[1])
    return frozen


def _run_pnnx(traced: Path, param: Path, weights: Path, sizes: Sequence[tuple[int, int]]) -> None:
    """Convert ``traced`` with pnnx into ``param`` and ``weights`` (float32), side files in
    the traced file's folder; an ``ExportError`` with pnnx's last words when it fails."""
    scratch = traced.parent
    shapes = [f"[1,3,{height},{width}]f32" for height, width in sizes]
    command = [
        _pnnx_executable(),
        str(traced),
        f"inputshape={shapes[0]}",
        f"inputshape2={shapes[1]}",
        "device=cpu",
        "fp16=0",  # float32 weights in the .bin (pnnx's default is float16)
        f"ncnnparam={param}",
        f"ncnnbin={weights}",
        f"ncnnpy={scratch / 'model_ncnn.py'}",
        f"pnnxparam={scratch / 'model.pnnx.param'}",
        f"pnnxbin={scratch / 'model.pnnx.bin'}",
        f"pnnxpy={scratch / 'model_pnnx.py'}",
        f"pnnxonnx={scratch / 'model.pnnx.onnx'}",
    ]
    try:
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            cwd=scratch,
            timeout=PNNX_TIMEOUT_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ExportError(f"pnnx did not finish in {PNNX_TIMEOUT_SECONDS} s") from None
    if result.returncode != 0 or not param.is_file() or not weights.is_file():
        tail = " | ".join((result.stderr or result.stdout).strip().splitlines()[-3:])
        raise ExportError(f"pnnx could not convert the model (exit {result.returncode}): {tail}")


def export_ncnn(
    model: nn.Module,
    path: str | Path,
    input_size: tuple[int, int] | None = None,
    *,
    upsample_to_input: bool = False,
) -> Path:
    """Export ``model.forward`` to ncnn: ``path`` (``NAME.param``), ``NAME.bin``, ``NAME.json``.

    Args:
        model: a ``DDRNet`` (the auxiliary head, if any, is not exported).
        path: the ``.param`` file to write; parent folders are created. Existing files of
            the same name are replaced only once the conversion has succeeded.
        input_size: ``(height, width)`` of the example input traced (a second, smaller size
            is traced too); the file runs at any size.
        upsample_to_input: resize the logits bilinearly to the input size inside the graph.

    Returns the ``.param`` path. Raises ``ExportError`` when pnnx is missing or fails.
    There is no ``argmax`` form: pnnx has no ncnn layer for ``torch.argmax`` over channels.
    """
    files = NcnnFiles.of(path)
    if not is_ncnn_file(files.param):
        raise UsageError(f"{files.param}: an ncnn export is written to a NAME.param file")
    sizes = [check_size("input_size", input_size or default_input_size(model))]
    sizes.append(_second_size(*sizes[0]))
    _pnnx_executable()  # before tracing: a missing pnnx fails at once
    check_sidecar_replaceable(files.sidecar, NCNN_KEY)
    if files.weights.exists() and not files.param.exists():  # no ncnn model's weights
        raise ExportError(
            f"{files.weights}: the export writes its weights there, and the file there is no "
            f"ncnn export's (no {files.param.name} beside it); move it, or export under another "
            "name"
        )
    files.param.parent.mkdir(parents=True, exist_ok=True)
    wrapper = folded_export_wrapper(model, upsample_to_input)
    with scratch_folder("pnnx") as folder:
        scratch = Path(folder)
        traced_path = scratch / "model.pt"
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is deprecated.*")
            traced = torch.jit.trace(wrapper, example_input(1, *sizes[0]))
            traced.save(str(traced_path))
        _run_pnnx(traced_path, scratch / "out.param", scratch / "out.bin", sizes)
        frozen = frozen_interps(scratch / "out.param")
        if frozen:
            raise ExportError(
                f"{files.param}: pnnx fixed the output size of the resizes {frozen}, so the "
                "graph would only work at the export size; export at another --size"
            )
        sidecar = _sidecar(model, scratch / "out.param", upsample_to_input)
        sidecar[NCNN_KEY]["param_blake2b"] = file_digest(scratch / "out.param")
        sidecar[NCNN_KEY]["bin_blake2b"] = file_digest(scratch / "out.bin")
        # The three replace an earlier export's together: a kill leaves one whole set.
        names = (files.weights.name, files.param.name, files.sidecar.name)
        remove_stale_temporaries(files.param.parent, names)  # of an export killed before
        with replaced_together(files.paths) as staged:
            atomic_copy(scratch / "out.bin", staged[files.weights])
            atomic_copy(scratch / "out.param", staged[files.param])
            write_sidecar(sidecar, staged[files.sidecar])
    return files.param


def _sidecar(model: nn.Module, param: Path, upsample_to_input: bool) -> dict[str, Any]:
    """What ``NcnnSegmentationModel`` reads beside the file: metadata, options, blob names."""
    import ncnn

    net = ncnn.Net()
    if net.load_param(str(param)) != 0:
        raise ExportError(f"pnnx wrote a .param file that ncnn cannot parse ({param})")
    values: dict[str, Any] = {
        NCNN_KEY: {"input": net.input_names()[0], "output": net.output_names()[0]},
        EXPORT_OPTIONS_KEY: {"argmax": False, "upsample_to_input": upsample_to_input},
    }
    metadata = getattr(model, "metadata", None)
    if metadata is not None and hasattr(metadata, "to_json"):
        values[METADATA_KEY] = json.loads(metadata.to_json())
    return values


def export_ncnn_checked(
    model: nn.Module,
    path: str | Path,
    input_size: tuple[int, int] | None = None,
    *,
    upsample_to_input: bool = False,
    evaluate_root: str | Path | None = None,
    evaluate_images: int | None = None,
    report: Any = print,
) -> Path:
    """``ddrnet export --format ncnn``: ``export_ncnn``, then the logit difference to PyTorch
    on real frames, and with ``evaluate_root`` (a CamVid folder) the val mIoU of PyTorch fp32
    and of the ncnn file (first ``evaluate_images`` frames), each line passed to ``report``."""
    path = export_ncnn(model, path, input_size, upsample_to_input=upsample_to_input)
    files = NcnnFiles.of(path)
    report(
        f"ncnn written to {files.param} with {files.weights.name} (float32 weights) and "
        f"{files.sidecar.name} (classes, palette, normalisation); any input size"
    )
    inputs = real_frames(model)
    if inputs:
        difference = verify_ncnn(model, path, inputs)
        sizes = sorted({f"{int(x.shape[-2])}x{int(x.shape[-1])}" for x in inputs})
        report(
            f"ncnn vs PyTorch on {len(inputs)} real frames ({', '.join(sizes)}): "
            f"max abs logit difference {difference:.2e}"
        )
    if evaluate_root is not None:
        reference, deployed, count = evaluate_on_camvid(
            model, path, evaluate_root, limit=evaluate_images
        )
        report(f"CamVid val, {count} images: PyTorch fp32 mIoU {reference:.2f}")
        change = deployed - reference
        report(f"CamVid val, {count} images: ncnn mIoU {deployed:.2f} ({change:+.2f})")
    return path
