"""Deployable forms of a DDRNet: ONNX (dynamic batch, height and width), TorchScript, and a
BatchNorm-folded eager model.

Every resize in DDRNet takes its target size from a tensor (``F.interpolate(size=t.shape[-2:])``),
so a traced graph computes its Resize sizes from ``Shape`` ops and works at any input size,
including odd ones such as 361x479; ``export_onnx`` checks that no Resize was frozen to the
export size. ``ddrnet.deploy.verify`` checks the exported file against the PyTorch model.

onnx and onnxruntime (the ``deploy`` extra) are imported inside the functions that need them.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ddrnet.atomic import atomic_copy, atomic_write, remove_stale_temporaries, scratch_folder
from ddrnet.deploy.onnx_file import EXPORT_OPTIONS_KEY, METADATA_KEY, ExportError
from ddrnet.errors import UsageError
from ddrnet.limits import check_pixels
from ddrnet.models.bn_folding import FusionError, fuse_conv_bn, unwrapped_copy
from ddrnet.models.metadata import default_input_size

logger = logging.getLogger(__name__)


class SegmentationExportWrapper(nn.Module):
    """What gets exported: ``model.forward`` (never the auxiliary head), optionally followed by
    a bilinear resize of the logits to the input size and an argmax.

    Shapes: ``(N, 3, H, W)`` normalised float32 ->
    logits ``(N, C, ceil(H/8), ceil(W/8))`` float32 (default),
    logits ``(N, C, H, W)`` with ``upsample_to_input``,
    labels ``(N, h, w)`` with ``argmax`` (``h, w`` = 1/8 or, with ``upsample_to_input``, the
    input size), uint8 for up to 256 classes, else int64.
    """

    def __init__(self, model: nn.Module, argmax: bool = False, upsample_to_input: bool = False):
        super().__init__()
        self.model = model
        self.argmax = argmax
        self.upsample_to_input = upsample_to_input
        num_classes = int(getattr(model, "num_classes", 256))
        self.label_dtype = torch.uint8 if num_classes <= 256 else torch.int64

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        logits = self.model(image)
        if self.upsample_to_input:
            # Same resize as ddrnet.engine.inference, so labels match Predictor's.
            logits = F.interpolate(
                logits, size=image.shape[-2:], mode="bilinear", align_corners=False
            )
        if not self.argmax:
            return logits
        return logits.argmax(dim=1).to(self.label_dtype)


def check_size(name: str, size: Sequence[int]) -> tuple[int, int]:
    """``(height, width)``, both >= 1 and no more than ``ddrnet.limits.DEFAULT_MAX_PIXELS``
    in all: tracing allocates activations for the example input."""
    if len(size) != 2 or any(int(side) < 1 for side in size):
        raise ValueError(f"{name} must be (height, width) in pixels, both >= 1; got {size}")
    check_pixels(name, int(size[1]), int(size[0]), hint="")
    return int(size[0]), int(size[1])


def example_input(batch_size: int, height: int, width: int) -> torch.Tensor:
    """A tracing input ``(N, 3, H, W)`` from a private generator: exporting must not move the
    caller's random stream."""
    return torch.randn(batch_size, 3, height, width, generator=torch.Generator().manual_seed(0))


def float_cpu_copy(model: nn.Module) -> nn.Module:
    """An eval-mode float32 CPU copy: exported graphs take float32 input."""
    return unwrapped_copy(model).float().cpu()


def folded_export_wrapper(model: nn.Module, upsample_to_input: bool) -> nn.Module:
    """What ncnn and ExecuTorch export: a float32 CPU copy with BN folded into the
    convolutions where it can be (their converters fold what is left the same way),
    auxiliary head off, optionally resized to the input."""
    copy = float_cpu_copy(model)
    try:
        copy = fuse_conv_bn(copy)
    except FusionError as error:
        logger.debug("batch norm left to pnnx to fold: %s", error)
    return SegmentationExportWrapper(copy, upsample_to_input=upsample_to_input).eval()


def static_resize_nodes(onnx_model: object) -> list[str]:
    """Names of Resize nodes whose output height and width are fixed numbers even though the
    graph's input size is symbolic.

    Found by ONNX shape inference with data propagation, which evaluates the little
    ``Shape -> Slice -> Concat`` programs that compute Resize sizes: a size taken from a
    tensor stays unknown, a size frozen at export time (``F.interpolate(size=(64, 128))``,
    or ``H // 8`` computed in Python) comes out as a number. Such a node breaks, or silently
    mis-sizes, at other input sizes; an exported DDRNet should have none.
    """
    import onnx

    inferred = onnx.shape_inference.infer_shapes(onnx_model, data_prop=True)
    graph = inferred.graph
    shapes = {
        value.name: [dim.dim_value for dim in value.type.tensor_type.shape.dim]
        for value in [*graph.value_info, *graph.output]
    }
    frozen = []
    for node in graph.node:
        if node.op_type != "Resize":
            continue
        dims = shapes.get(node.output[0], [])
        if len(dims) == 4 and dims[2] > 0 and dims[3] > 0:
            frozen.append(node.name or node.output[0])
    return frozen


def export_onnx(
    model: nn.Module,
    path: str | Path,
    input_size: tuple[int, int] | None = None,
    *,
    dynamic: bool = True,
    argmax: bool = False,
    upsample_to_input: bool = False,
    opset: int | None = None,
    batch_size: int = 1,
    dynamo: bool = False,
) -> Path:
    """Export ``model.forward`` to an ONNX file and check it.

    Args:
        model: a ``DDRNet`` (the auxiliary head, if any, is not exported).
        path: output ``.onnx`` file; parent folders are created.
        input_size: ``(height, width)`` in pixels of the example input used for tracing. With
            ``dynamic=True`` the file accepts other sizes too.
        dynamic: make batch, height and width symbolic (``batch``, ``height``, ``width``).
        argmax: end the graph with an argmax: output ``labels`` ``(N, h, w)`` uint8 (int64 for
            more than 256 classes) instead of ``logits`` ``(N, C, h, w)`` float32.
        upsample_to_input: resize logits bilinearly (``align_corners=False``) to ``(H, W)``
            before the optional argmax; otherwise outputs are at 1/8 (``ceil(H/8)``).
        opset: ONNX opset; by default 17 (every op here exists in it, and runtimes from
            2022 on accept it), or 18 with ``dynamo``, whose exporter has nothing older.
        batch_size: batch of the example input.
        dynamo: use the ``torch.export``-based exporter (needs onnxscript, slower to export)
            instead of the TorchScript-based one, which is the default because it handles
            this model's data-dependent resizes at every size and exports in about a second.

    Returns the path written. The file's metadata (``metadata_props["ddrnet"]``) holds the
    model's ``ModelMetadata`` as JSON (classes, palette, mean/std) when the model has one.

    Raises ``ExportError`` if the checker rejects the graph or, with ``dynamic=True``, a
    Resize node kept a constant size.
    """
    height, width = check_size("input_size", input_size or default_input_size(model))
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    path = Path(path)
    if path.suffix.lower() != ".onnx":  # e.g. an image's path: it would be replaced
        raise UsageError(f"{path}: an ONNX export is written to a NAME.onnx file")
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = SegmentationExportWrapper(float_cpu_copy(model), argmax, upsample_to_input).eval()
    example = example_input(batch_size, height, width)
    export_kwargs = _exporter_options(dynamic, argmax, opset, dynamo)
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript-based exporter is chosen deliberately (see ``dynamo``); its
        # deprecation notices say nothing about this export.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=".*will be removed.*")
        # GroupNorm's training-only batch-size check (model.norm=group) is traced as a
        # constant; it adds nothing to the graph.
        warnings.filterwarnings(
            "ignore", category=torch.jit.TracerWarning, module="torch.nn.functional"
        )
        # Exported, checked and described in a scratch folder, then copied into place whole:
        # a graph the checks refuse, or a kill, never leaves a file under the user's name.
        with scratch_folder("onnx") as scratch:
            draft = Path(scratch) / "model.onnx"
            torch.onnx.export(wrapper, (example,), str(draft), **export_kwargs)
            options = {"argmax": argmax, "upsample_to_input": upsample_to_input, "dynamic": dynamic}
            _check_and_describe(draft, path, dynamic, options, getattr(model, "metadata", None))
            remove_stale_temporaries(path.parent, (path.name,))  # of an export killed before
            atomic_copy(draft, path)
    return path


def _exporter_options(
    dynamic: bool, argmax: bool, opset: int | None, dynamo: bool
) -> dict[str, object]:
    """``torch.onnx.export`` keyword arguments: names, opset, symbolic sizes for either
    exporter (``export_onnx`` documents the arguments)."""
    output_name = "labels" if argmax else "logits"
    export_kwargs: dict[str, object] = {
        "input_names": ["image"],
        "output_names": [output_name],
        "opset_version": opset or (18 if dynamo else 17),
    }
    if dynamo:
        if dynamic:
            dims = {
                0: torch.export.Dim("batch"),
                2: torch.export.Dim("height", min=1),
                3: torch.export.Dim("width", min=1),
            }
            export_kwargs["dynamic_shapes"] = {"image": dims}
        export_kwargs["dynamo"] = True
        return export_kwargs
    if dynamic:
        output_axes = {0: "batch", 1: "out_height", 2: "out_width"}
        if not argmax:
            output_axes = {0: "batch", 2: "out_height", 3: "out_width"}
        export_kwargs["dynamic_axes"] = {
            "image": {0: "batch", 2: "height", 3: "width"},
            output_name: output_axes,
        }
    export_kwargs["dynamo"] = False
    export_kwargs["do_constant_folding"] = True
    return export_kwargs


def _check_and_describe(
    draft: Path, path: Path, dynamic: bool, options: dict[str, bool], metadata: object | None
) -> None:
    """Check the file ``draft`` that ``torch.onnx.export`` wrote (the ONNX checker; no frozen
    Resize sizes when ``dynamic``), then store the export ``options`` and the model's
    ``ModelMetadata`` in its ``metadata_props`` (``ddrnet.deploy.onnx_file``). Errors name
    ``path``, where the file is meant to go."""
    import onnx

    onnx_model = onnx.load(str(draft))
    try:
        onnx.checker.check_model(onnx_model)
    except onnx.checker.ValidationError as error:
        raise ExportError(f"{path}: the ONNX checker rejects the exported graph: {error}") from None
    if dynamic:
        frozen = static_resize_nodes(onnx_model)
        if frozen:
            raise ExportError(
                f"{path}: Resize nodes {frozen} have constant output sizes, so the graph would "
                "only work at the export size; every resize in the model must take its size "
                "from a tensor (F.interpolate(size=reference.shape[-2:]))"
            )
    props = {EXPORT_OPTIONS_KEY: json.dumps(options)}
    if metadata is not None and hasattr(metadata, "to_json"):
        props[METADATA_KEY] = metadata.to_json()
    onnx.helper.set_model_props(onnx_model, props)
    onnx.save(onnx_model, str(draft))


def export_torchscript(
    model: nn.Module,
    path: str | Path,
    input_size: tuple[int, int] | None = None,
    *,
    argmax: bool = False,
    upsample_to_input: bool = False,
    freeze: bool = True,
) -> Path:
    """Trace ``model.forward`` with ``torch.jit.trace`` and save it (load with
    ``torch.jit.load``, also from C++ libtorch).

    The trace records ``shape`` reads as graph ops, so the file runs at any batch and input
    size, not only ``input_size`` ``(height, width)``. ``argmax`` and ``upsample_to_input``
    are as in ``export_onnx``. ``freeze`` inlines weights and folds Conv+BN for inference.

    Chosen over ``torch.export``: exporting this model with dynamic height and width makes
    ``torch.export`` specialise the batch to 1 and bound the sizes (the 1/512 DAPPM pool
    produces guards), while the trace stays general. TorchScript is deprecated upstream but
    still works in PyTorch 2.x; ``export_onnx`` is the preferred deployment format.
    """
    height, width = check_size("input_size", input_size or default_input_size(model))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = SegmentationExportWrapper(float_cpu_copy(model), argmax, upsample_to_input).eval()
    example = example_input(1, height, width)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is deprecated.*")
        traced = torch.jit.trace(wrapper, example)
        if freeze:
            traced = torch.jit.freeze(traced)
    # Through a Python file object (ddrnet.atomic's): a folder we may not write to gives an
    # OSError naming the file (torch's own writer raises a bare RuntimeError).
    remove_stale_temporaries(path.parent, (path.name,))  # of an export killed before
    atomic_write(path, lambda stream: torch.jit.save(traced, stream))
    return path
