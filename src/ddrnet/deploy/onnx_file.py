"""What an exported ONNX file says about itself: the metadata ``export_onnx`` and
``quantize_onnx_int8`` store in it (the model's classes and normalisation, the export
options, OpenVINO's fixed-size mark), its output, and whether it is quantised.

The middle of the deployment flow: ``export`` and ``quantize`` write these properties,
``runtime`` and ``verify`` read them, and nothing here imports either side. onnx (the
``deploy`` extra) is imported inside the functions that need it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ddrnet.errors import DDRNetError, MissingFileError

METADATA_KEY = "ddrnet"  # ONNX metadata_props key holding the model's ModelMetadata as JSON
# metadata_props key holding export_onnx's options (argmax, upsample_to_input, dynamic) as JSON.
EXPORT_OPTIONS_KEY = "ddrnet.export"
# metadata_props key of an INT8 file that OpenVINO can compile for a fixed input size.
OPENVINO_FIXED_SIZE_KEY = "ddrnet.openvino_fixed_size"


class ExportError(DDRNetError, RuntimeError):
    """An export produced a graph that would not work as asked, or an exported file cannot
    be run as asked; the message says why."""


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
    input_name: str = ""  # the image input's name
    # The image input's dimensions, None where symbolic (a dynamic export's batch, H, W).
    input_dims: tuple[int | None, ...] = ()

    @property
    def fixed_input_size(self) -> tuple[int, int] | None:
        """``(height, width)`` when the file takes images of that size only (exported
        without dynamic sizes), else None."""
        if len(self.input_dims) == 4 and None not in self.input_dims[2:]:
            return self.input_dims[2], self.input_dims[3]
        return None

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
    def outputs_logits(self) -> bool:
        """Whether the file outputs float logits (not class ids: exported with argmax)."""
        return self.output_type in ("FLOAT", "FLOAT16")

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
    weights = {tensor.name for tensor in model.graph.initializer}  # inputs in old IR versions
    image = next((i for i in model.graph.input if i.name not in weights), None)
    input_dims = tuple(
        int(d.dim_value) if d.HasField("dim_value") else None
        for d in (image.type.tensor_type.shape.dim if image is not None else ())
    )
    return OnnxFileProperties(
        metadata_props={prop.key: prop.value for prop in model.metadata_props},
        channels=int(dims[1].dim_value) if len(dims) == 4 else 0,
        output_type=onnx.TensorProto.DataType.Name(output.elem_type),
        quantized=any(node.op_type == "QuantizeLinear" for node in model.graph.node),
        full_range_int8_weights=_largest_int8_weight(model) > 64,
        input_name=image.name if image is not None else "",
        input_dims=input_dims,
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


def read_onnx_metadata(path: str | Path) -> dict[str, object]:
    """The ``ModelMetadata`` dict ``export_onnx`` stored in the file (empty if none)."""
    return onnx_file_properties(path).model_metadata


def openvino_fixed_size_ok(path: str | Path) -> bool:
    """Whether OpenVINO may compile ``path`` for a fixed input size
    (``OnnxFileProperties.openvino_fixed_size``)."""
    return onnx_file_properties(path).openvino_fixed_size


def file_normalisation(
    path: Path,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    metadata: dict[str, object] | None = None,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``mean``/``std`` as given, else the ones ``export_onnx`` stored in the file (read from
    it unless the caller passes its ``metadata``); a ``ValueError`` for a file without them
    (a foreign file, whose normalisation nobody knows)."""
    if mean is not None and std is not None:
        return tuple(mean), tuple(std)
    if metadata is None:
        metadata = read_onnx_metadata(path)
    if "mean" not in metadata or "std" not in metadata:
        raise ValueError(
            f"{path} carries no normalisation metadata; pass mean and std (RGB, 0..1 scale)"
        )
    return (
        tuple(mean if mean is not None else metadata["mean"]),  # type: ignore[arg-type]
        tuple(std if std is not None else metadata["std"]),  # type: ignore[arg-type]
    )
