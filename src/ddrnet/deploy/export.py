"""Deployable forms of a DDRNet: ONNX (dynamic batch, height and width), TorchScript, and a
BatchNorm-folded eager model.

Every resize in DDRNet takes its target size from a tensor (``F.interpolate(size=t.shape[-2:])``),
so a traced graph computes its Resize sizes from ``Shape`` ops and works at any input size,
including odd ones such as 361x479; ``export_onnx`` checks that no Resize was frozen to the
export size. ``verify_onnx`` runs the exported file in ONNX Runtime against the PyTorch model.

onnx and onnxruntime (the ``deploy`` extra) are imported inside the functions that need them.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ddrnet.errors import DDRNetError, MissingFileError
from ddrnet.limits import check_pixels
from ddrnet.models.fusion import unwrapped_copy

DEFAULT_VERIFY_SIZES: tuple[tuple[int, int], ...] = ((360, 480), (361, 479), (64, 64))
METADATA_KEY = "ddrnet"  # ONNX metadata_props key holding the model's ModelMetadata as JSON
# metadata_props key holding export_onnx's options (argmax, upsample_to_input, dynamic) as JSON.
EXPORT_OPTIONS_KEY = "ddrnet.export"
# metadata_props key of an INT8 file that OpenVINO can compile for a fixed input size.
OPENVINO_FIXED_SIZE_KEY = "ddrnet.openvino_fixed_size"


class ExportError(DDRNetError, RuntimeError):
    """An export produced a graph that would not work as asked; the message says why."""


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


def _check_size(name: str, size: Sequence[int]) -> tuple[int, int]:
    """``(height, width)``, both >= 1 and no more than ``ddrnet.limits.DEFAULT_MAX_PIXELS``
    in all: tracing allocates activations for the example input."""
    if len(size) != 2 or any(int(side) < 1 for side in size):
        raise ValueError(f"{name} must be (height, width) in pixels, both >= 1; got {size}")
    check_pixels(name, int(size[1]), int(size[0]), hint="")
    return int(size[0]), int(size[1])


def _example_input(batch_size: int, height: int, width: int) -> torch.Tensor:
    """A tracing input ``(N, 3, H, W)`` from a private generator: exporting must not move the
    caller's random stream."""
    return torch.randn(batch_size, 3, height, width, generator=torch.Generator().manual_seed(0))


def float_cpu_copy(model: nn.Module) -> nn.Module:
    """An eval-mode float32 CPU copy: exported graphs take float32 input."""
    return unwrapped_copy(model).float().cpu()


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
    input_size: tuple[int, int] = (360, 480),
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
    import onnx

    height, width = _check_size("input_size", input_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = SegmentationExportWrapper(float_cpu_copy(model), argmax, upsample_to_input).eval()
    example = _example_input(batch_size, height, width)
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
    else:
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
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript-based exporter is chosen deliberately (see ``dynamo``); its
        # deprecation notices say nothing about this export.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=".*will be removed.*")
        torch.onnx.export(wrapper, (example,), str(path), **export_kwargs)

    onnx_model = onnx.load(str(path))
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
    metadata = getattr(model, "metadata", None)
    props = {
        EXPORT_OPTIONS_KEY: json.dumps(
            {"argmax": argmax, "upsample_to_input": upsample_to_input, "dynamic": dynamic}
        )
    }
    if metadata is not None and hasattr(metadata, "to_json"):
        props[METADATA_KEY] = metadata.to_json()
    onnx.helper.set_model_props(onnx_model, props)
    onnx.save(onnx_model, str(path))
    return path


def read_onnx_metadata(path: str | Path) -> dict[str, object]:
    """The ``ModelMetadata`` dict ``export_onnx`` stored in the file (empty if none)."""
    return onnx_file_properties(path).model_metadata


@dataclass(frozen=True)
class OnnxFileProperties:
    """What the runtimes need to know of an ONNX file, read in one parse
    (``onnx_file_properties``)."""

    metadata_props: dict[str, str]  # the file's metadata_props, key -> value
    channels: int  # the output's channel count; 0 if symbolic
    output_type: str  # the output's element type name: "FLOAT", "INT64"...
    quantized: bool  # holds QuantizeLinear nodes (an INT8 QDQ file)
    # Some int8 weight lies outside [-64, 64], the 7-bit range: 8-bit weights, which
    # saturate on x86 CPUs without VNNI (ddrnet.hardware). False for float files.
    full_range_int8_weights: bool = False

    @property
    def model_metadata(self) -> dict[str, object]:
        """The ``ModelMetadata`` dict ``export_onnx`` stored (empty if none)."""
        stored = self.metadata_props.get(METADATA_KEY)
        return json.loads(stored) if stored else {}

    @property
    def export_options(self) -> dict[str, object]:
        """The options ``export_onnx`` wrote the file with (empty if none)."""
        stored = self.metadata_props.get(EXPORT_OPTIONS_KEY)
        return json.loads(stored) if stored else {}

    @property
    def openvino_fixed_size(self) -> bool:
        """Whether OpenVINO may compile the file for a fixed input size: any float file, and a
        quantised one written by ``quantize_onnx_int8(openvino_fixed_size=True)`` (others stay
        dynamic: OpenVINO 2026.4 segfaults on some quantised graphs compiled at a fixed size).
        """
        return not self.quantized or OPENVINO_FIXED_SIZE_KEY in self.metadata_props


def onnx_file_properties(path: str | Path) -> OnnxFileProperties:
    """Metadata, output channels and type, and quantisation of the ONNX file ``path``; errors
    name the file when it is missing or not an ONNX model."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: no such ONNX file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # onnx raises DecodeError, OSError, ... for bad files
        raise ExportError(f"{path}: not a readable ONNX file ({error})") from None
    if not model.graph.output or not model.graph.input:
        raise ExportError(f"{path}: not an ONNX model (no graph inputs or outputs; empty file?)")
    output = model.graph.output[0].type.tensor_type
    dims = output.shape.dim
    return OnnxFileProperties(
        metadata_props={prop.key: prop.value for prop in model.metadata_props},
        channels=int(dims[1].dim_value) if len(dims) == 4 else 0,
        output_type=onnx.TensorProto.DataType.Name(output.elem_type),
        quantized=any(node.op_type == "QuantizeLinear" for node in model.graph.node),
        full_range_int8_weights=_largest_int8_weight(model) > 64,
    )


def _largest_int8_weight(model: object) -> int:
    """The largest magnitude among the int8 initializers (quantised weights); 0 if none.
    Read from the weights themselves, so it holds for files from any quantiser."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    largest = 0
    for tensor in model.graph.initializer:
        if tensor.data_type == onnx.TensorProto.INT8 and tensor.dims:
            values = numpy_helper.to_array(tensor)
            largest = max(largest, int(np.abs(values.astype(np.int16)).max(initial=0)))
    return largest


def onnx_session(
    path: str | Path, threads: int | None = None, optimize: bool = True, spin_wait: bool = True
) -> object:
    """An ONNX Runtime CPU session for ``path``.

    ``threads``: intra-op threads, by default ``torch.get_num_threads()`` so that ORT and
    PyTorch are compared with the same parallelism. ``optimize``: all graph optimisations
    (constant folding, Conv+Add/Relu fusion, layout transforms) versus none. ``spin_wait``:
    ORT's default, its threads spin after a run waiting for the next one; that is fastest
    for back-to-back runs, but steals the cores from whatever runs in between (PyTorch's
    resize and argmax in ``ddrnet predict``: +11 ms per CamVid frame for INT8 here).
    """
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: no such ONNX file")
    options = ort.SessionOptions()
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if optimize
        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    options.intra_op_num_threads = threads or torch.get_num_threads()
    # One model, one request at a time: parallelism belongs inside the ops.
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if not spin_wait:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _onnx_and_pytorch_outputs(
    model: nn.Module,
    path: str | Path,
    sizes: Sequence[tuple[int, int]],
    inputs: Sequence[torch.Tensor] | None,
    batch_size: int,
    seed: int,
    labels: bool,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """For each input: the file's output (ONNX Runtime, CPU) and PyTorch's logits, resized to
    the input when the file's output is at input size. ``labels``: whether the caller
    compares class labels (a graph ending in argmax) or logits; the other kind of file is a
    ``ValueError``."""
    session = onnx_session(path)
    outputs_labels = "float" not in session.get_outputs()[0].type
    if outputs_labels and not labels:
        raise ValueError(
            f"{path}: its output is class labels, not logits; verify_onnx compares logits "
            "(verify_onnx_labels compares labels)"
        )
    if labels and not outputs_labels:
        raise ValueError(f"{path}: its output is logits; use verify_onnx")
    reference_model = float_cpu_copy(model)
    input_name = session.get_inputs()[0].name
    if inputs is None:
        generator = torch.Generator().manual_seed(seed)
        inputs = [
            torch.randn(batch_size, 3, *_check_size("sizes entry", size), generator=generator)
            for size in sizes
        ]
    for image in inputs:
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"inputs must be (N, 3, H, W) tensors, got {tuple(image.shape)}")
        image = image.float().cpu()
        height, width = image.shape[-2:]
        expected = reference_model(image)
        (actual,) = session.run(None, {input_name: image.numpy()})
        if actual.shape[-2:] == (height, width) and expected.shape[-2:] != (height, width):
            expected = F.interpolate(
                expected, size=(height, width), mode="bilinear", align_corners=False
            )
        yield torch.from_numpy(actual), expected


@torch.no_grad()
def verify_onnx(
    model: nn.Module,
    path: str | Path,
    sizes: Sequence[tuple[int, int]] = DEFAULT_VERIFY_SIZES,
    *,
    inputs: Sequence[torch.Tensor] | None = None,
    batch_size: int = 1,
    seed: int = 0,
) -> float:
    """Largest absolute difference between ONNX Runtime (CPU) and PyTorch logits.

    Compares on ``inputs`` (normalised ``(N, 3, H, W)`` float tensors) when given, otherwise
    on random normal inputs ``(batch_size, 3, H, W)`` for every ``(H, W)`` in ``sizes``
    (include sizes other than the export size, and odd ones, to prove the graph is dynamic).
    Logits exported with ``upsample_to_input`` are compared with the model's logits resized
    the same way. Returns the max abs difference in logit units over all inputs.

    The difference scales with the logits: a trained model gives logits of order 10 on real
    images and float32 differences around 1e-4, but random noise is far from the data its
    BatchNorm statistics describe and can drive logits into the thousands (and the
    difference with them), so pass real images for a tolerance that means something.

    Raises ``ValueError`` for a graph that ends in argmax (``verify_onnx_labels`` checks
    those) and ``ExportError`` when an output has the wrong shape.
    """
    worst = 0.0
    pairs = _onnx_and_pytorch_outputs(model, path, sizes, inputs, batch_size, seed, labels=False)
    for actual, expected in pairs:
        if tuple(actual.shape) != tuple(expected.shape):
            raise ExportError(
                f"{path}: ONNX gives {tuple(actual.shape)}, PyTorch {tuple(expected.shape)}"
            )
        worst = max(worst, float((actual - expected).abs().max()))
    return worst


@torch.no_grad()
def verify_onnx_labels(
    model: nn.Module,
    path: str | Path,
    sizes: Sequence[tuple[int, int]] = DEFAULT_VERIFY_SIZES,
    *,
    inputs: Sequence[torch.Tensor] | None = None,
    batch_size: int = 1,
    seed: int = 0,
) -> float:
    """Fraction of pixels (0..1) where a graph that ends in argmax gives PyTorch's class,
    on the same inputs as ``verify_onnx``. Pixels whose top two logits tie within float32
    rounding may differ; anything well below 1 means a broken graph."""
    agree, total = 0, 0
    pairs = _onnx_and_pytorch_outputs(model, path, sizes, inputs, batch_size, seed, labels=True)
    for actual, expected in pairs:
        labels = expected.max(dim=1).indices  # argmax; see ddrnet.engine.inference
        if tuple(actual.shape) != tuple(labels.shape):
            raise ExportError(
                f"{path}: ONNX gives labels {tuple(actual.shape)}, PyTorch {tuple(labels.shape)}"
            )
        agree += int((actual.long() == labels).sum())
        total += labels.numel()
    return agree / total


def export_torchscript(
    model: nn.Module,
    path: str | Path,
    input_size: tuple[int, int] = (360, 480),
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
    height, width = _check_size("input_size", input_size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = SegmentationExportWrapper(float_cpu_copy(model), argmax, upsample_to_input).eval()
    example = _example_input(1, height, width)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is deprecated.*")
        traced = torch.jit.trace(wrapper, example)
        if freeze:
            traced = torch.jit.freeze(traced)
    # Through a Python file object: a folder we may not write to gives an OSError naming
    # the file (torch's own writer raises a bare RuntimeError).
    with path.open("wb") as stream:
        torch.jit.save(traced, stream)
    return path
