"""ExecuTorch export for phones and ARM boards: the model lowered to XNNPACK, float32 or INT8,
its check against PyTorch, and its ``ddrnet bench`` runner.

``export_executorch`` exports the BN-folded eval model (the ``SegmentationExportWrapper`` that
``export_ncnn`` traces: normalised ``(1, 3, H, W)`` float32 in, logits out; normalisation stays
outside the graph, its mean and std travel in the sidecar) with ``torch.export`` at one fixed
input size, and lowers it with ``to_edge_transform_and_lower`` and the XNNPACK partitioner
into ``NAME.pte``, with ``NAME.json`` beside it (``executorch_runtime``). INT8 goes through
PT2E post-training quantisation first: ``XNNPACKQuantizer`` (int8 weights, symmetric, one
scale per output channel; int8 activations, one affine scale per tensor from histograms),
``prepare_pt2e``, calibration on real images, ``convert_pt2e``.

The size is fixed because ``torch.export`` with symbolic height and width failed on DDRNet
(the DAPPM pools and the resizes between branches give it guards it cannot prove), and a
fixed size is what XNNPACK plans best anyway. Batch 1: the runtime runs a batch image by
image. Exporting DDRNet-23-slim took 25-90 s on a 2-core CPU, INT8 55-200 s (calibration
and the larger quantised graph), idle to loaded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ddrnet.atomic import (
    atomic_write,
    file_digest,
    remove_stale_temporaries,
)
from ddrnet.deploy.executorch_runtime import (
    INSTALL_HINT,
    ExecutorchFiles,
    ExecutorchSegmentationModel,
    is_executorch_file,
    quiet_executorch_import,
)
from ddrnet.deploy.export import example_input, folded_export_wrapper
from ddrnet.deploy.fixed_size import check_fixed_size_export, export_record, program_size
from ddrnet.deploy.onnx_file import ExportError
from ddrnet.deploy.quantize import ImageSource, preprocess_image
from ddrnet.deploy.sidecar import EXECUTORCH_KEY, check_sidecar_replaceable, write_sidecar
from ddrnet.errors import UsageError
from ddrnet.file_sets import replaced_together


def _lowering() -> tuple[Any, Any]:
    """ExecuTorch's ``XnnpackPartitioner`` and ``to_edge_transform_and_lower``, or an
    ``ExportError`` saying what to install."""
    try:
        with quiet_executorch_import():
            from executorch.backends.xnnpack.partition.xnnpack_partitioner import (
                XnnpackPartitioner,
            )
            from executorch.exir import to_edge_transform_and_lower
    except ImportError as error:
        raise ExportError(
            f"--format executorch needs executorch ({error}): {INSTALL_HINT}"
        ) from None
    return XnnpackPartitioner, to_edge_transform_and_lower


def calibration_batches(
    model: nn.Module, images: Sequence[ImageSource], size: tuple[int, int]
) -> list[torch.Tensor]:
    """Real ``(H, W, 3)`` uint8 RGB images (or their paths) -> ``(1, 3, *size)`` float32
    batches normalised with the model's mean and std, resized bilinearly to ``size``: the
    same pre-processing as ``quantize_onnx_int8``'s calibration. ``model`` has metadata
    (``export_executorch`` checks it first)."""
    if not images:
        raise UsageError("INT8 export needs calibration images; give at least one")
    mean, std = model.metadata.mean, model.metadata.std
    return [torch.from_numpy(preprocess_image(image, mean, std, size)) for image in images]


def _quantized(program: torch.export.ExportedProgram, batches: Sequence[torch.Tensor]) -> nn.Module:
    """``program`` quantised for XNNPACK by PT2E: observers placed by ``XNNPACKQuantizer``,
    calibrated on ``batches``, converted to quantise/dequantise pairs XNNPACK fuses."""
    with quiet_executorch_import():
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer()
    quantizer.set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(program.module(), quantizer)
    with torch.no_grad():
        for batch in batches:
            prepared(batch)
    return convert_pt2e(prepared)


def export_executorch(
    model: nn.Module,
    path: str | Path,
    size: tuple[int, int] | None = None,
    int8: bool = False,
    calibration: Sequence[ImageSource] | None = None,
    *,
    upsample_to_input: bool = False,
) -> Path:
    """Export ``model.forward`` to ExecuTorch (XNNPACK): ``path`` (``NAME.pte``), ``NAME.json``.

    Args:
        model: a ``DDRNet`` with ``metadata`` (the auxiliary head, if any, is not exported).
        path: the ``.pte`` file to write; parent folders are created. An existing file of
            the same name is replaced only once the export has succeeded.
        size: ``(height, width)`` in pixels of the program's fixed input; by default
            ``default_input_size(model)`` (360x480 for CamVid models).
        int8: quantise (PT2E, ``XNNPACKQuantizer``, per-channel weights) before lowering.
        calibration: INT8 only: real ``(H, W, 3)`` uint8 RGB images or their paths (e.g.
            ``load_calibration_images(folder, 32)``), resized to ``size``; activation
            ranges come from them, so they must look like the deployment data.
        upsample_to_input: resize the logits bilinearly to the input size inside the graph.

    Returns the ``.pte`` path. The sidecar holds the model's ``ModelMetadata`` (its
    ``input_size`` set to ``size``) and the export options (``input_size``, ``int8``,
    ``upsample_to_input``). Raises ``ExportError`` when executorch is missing or the
    lowering fails, ``ValueError`` for a bad path, size or calibration.
    """
    files = ExecutorchFiles.of(path)
    if not is_executorch_file(files.program):
        raise UsageError(f"{files.program}: an ExecuTorch export is written to a NAME.pte file")
    if getattr(model, "metadata", None) is None:
        raise UsageError("the model has no metadata (classes, normalisation) to export with it")
    height, width = program_size(model, size)
    if int8 and calibration is None:
        raise UsageError("INT8 export needs calibration images (real frames)")
    check_sidecar_replaceable(files.sidecar, EXECUTORCH_KEY)
    partitioner, lower = _lowering()  # before the slow steps: a missing package fails at once
    batches = calibration_batches(model, calibration, (height, width)) if int8 else []
    wrapper = folded_export_wrapper(model, upsample_to_input)
    example = (example_input(1, height, width),)
    try:
        with torch.no_grad(), quiet_executorch_import():
            program = torch.export.export(wrapper, example)
            if int8:
                program = torch.export.export(_quantized(program, batches), example)
            lowered = lower(program, partitioner=[partitioner()]).to_executorch()
    except (RuntimeError, ValueError, AssertionError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise ExportError(
            f"{files.program}: ExecuTorch could not export the model: {first_line}"
        ) from None
    names = (files.program.name, files.sidecar.name)
    remove_stale_temporaries(files.program.parent, names)  # of an export killed before
    sidecar = export_record(model, (height, width), int8, upsample_to_input)
    # The two replace an earlier export's together (a kill leaves one whole set); the
    # program's digest still tells a mix of two exports apart (``check_program_belongs``).
    with replaced_together(files.paths) as staged:
        atomic_write(staged[files.program], lambda stream: stream.write(lowered.buffer))
        sidecar[EXECUTORCH_KEY] = {"pte_blake2b": file_digest(staged[files.program])}
        write_sidecar(sidecar, staged[files.sidecar])
    return files.program


def export_executorch_checked(
    model: nn.Module,
    path: str | Path,
    size: tuple[int, int] | None = None,
    *,
    int8: bool = False,
    calibration: Sequence[ImageSource] | None = None,
    upsample_to_input: bool = False,
    evaluate_root: str | Path | None = None,
    evaluate_images: int | None = None,
    report: Callable[[str], Any] = print,
) -> Path:
    """``ddrnet export --format executorch``: ``export_executorch``, then the comparison with
    PyTorch on real frames (float32: the logit difference; INT8: the label agreement too),
    and with ``evaluate_root`` (a CamVid folder) the val mIoU of PyTorch fp32 and of the file
    (first ``evaluate_images`` frames), each line passed to ``report``."""
    size = program_size(model, size)
    path = export_executorch(
        model, path, size, int8, calibration, upsample_to_input=upsample_to_input
    )
    files = ExecutorchFiles.of(path)
    precision = "INT8 (PT2E, per-channel weights)" if int8 else "float32"
    report(
        f"ExecuTorch written to {files.program} (XNNPACK, {precision}, fixed {size[0]}x{size[1]} "
        f"input) with {files.sidecar.name} (classes, palette, normalisation)"
    )
    check_fixed_size_export(
        model,
        ExecutorchSegmentationModel(path, resize=False),
        evaluate_root=evaluate_root,
        evaluate_images=evaluate_images,
        report=report,
    )
    return path
