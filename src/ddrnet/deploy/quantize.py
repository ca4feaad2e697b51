"""INT8 post-training quantisation for CPU with ONNX Runtime (and OpenVINO).

``quantize_onnx_int8`` calibrates activation ranges on real images and writes a QDQ model
(int8 per-channel weights, uint8 activations), the layout ONNX Runtime's CPU kernels fuse
into integer convolutions, after the graph rewrites that keep it accurate in OpenVINO too
(``average_pools_as_depthwise_convs``, ``concat_convolution_blocks``).
``ddrnet.deploy.verify.evaluate_onnx`` scores the result on a data set.

bfloat16: ONNX Runtime's CPU provider has no bfloat16 convolution kernels, so a bf16 ONNX
graph would run as casts around float32 ops (slower, not faster). bf16 on CPU is served by
PyTorch autocast instead (``torch.autocast("cpu", dtype=torch.bfloat16)``, oneDNN uses AMX or
AVX512-BF16 where the CPU has them); ``ddrnet.deploy.bench`` times it as ``eager_bf16``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from ddrnet.atomic import atomic_copy, remove_stale_temporaries, scratch_folder
from ddrnet.deploy.calibration import calibration_files
from ddrnet.deploy.onnx_file import (
    OPENVINO_FIXED_SIZE_KEY,
    file_normalisation,
    onnx_file_properties,
)
from ddrnet.engine.inference import normalize
from ddrnet.errors import MissingFileError
from ddrnet.limits import check_min_side

if TYPE_CHECKING:
    import onnx

ImageSource = np.ndarray | str | Path
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


def load_calibration_images(source: str | Path | object, count: int = 16) -> list[np.ndarray]:
    """Up to ``count`` ``(H, W, 3)`` uint8 RGB images, evenly spaced over ``source``.

    ``source``: a folder of images (``ddrnet.data.io.image_files``), or a data set with
    ``load(index) -> (image, label)`` such as ``ddrnet.data.camvid.camvid(root, "train")``.
    Even spacing covers every sequence of a video data set rather than its first frames.
    """
    from ddrnet.data.io import read_rgb

    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    if isinstance(source, (str, Path)):
        files = calibration_files(Path(source))
        picks = np.linspace(0, len(files) - 1, min(count, len(files))).round().astype(int)
        return [read_rgb(files[index]) for index in picks]
    if not hasattr(source, "load") or not hasattr(source, "__len__"):
        raise TypeError(
            f"calibration source must be a folder or a data set with load(index), "
            f"got {type(source).__name__}"
        )
    picks = np.linspace(0, len(source) - 1, min(count, len(source))).round().astype(int)
    return [source.load(int(index))[0] for index in picks]


def preprocess_image(
    image: ImageSource,
    mean: Sequence[float],
    std: Sequence[float],
    size: tuple[int, int] | None = None,
) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 RGB image (or its path) -> ``(1, 3, h, w)`` float32 normalised.

    ``size`` ``(h, w)`` in pixels resizes bilinearly first (``align_corners=False``, as the
    evaluation code does); ``None`` keeps the image's size.
    """
    if isinstance(image, (str, Path)):
        from ddrnet.data.io import read_rgb

        image = read_rgb(image)
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(
            f"calibration images must be (H, W, 3) uint8 RGB, got {array.shape} {array.dtype}"
        )
    tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)[None]
    batch = normalize(tensor, mean, std)
    if size is not None and tuple(batch.shape[-2:]) != tuple(size):
        batch = F.interpolate(batch, size=tuple(size), mode="bilinear", align_corners=False)
    return batch.numpy()


class ImageCalibrationReader:
    """ONNX Runtime calibration data: one normalised image ``(1, 3, H, W)`` per ``get_next``.

    Implements ``onnxruntime.quantization.CalibrationDataReader`` (which recognises any class
    with ``get_next``, so onnxruntime is not needed to import this module). Images are
    pre-processed lazily, one at a time, so a long list costs little memory.
    """

    def __init__(
        self,
        images: Sequence[ImageSource],
        input_name: str,
        mean: Sequence[float],
        std: Sequence[float],
        size: tuple[int, int] | None,
    ) -> None:
        if not images:
            raise ValueError("calibration_images is empty; give at least one image")
        self.images = list(images)
        self.input_name = input_name
        self.mean, self.std, self.size = tuple(mean), tuple(std), size
        self._iterator: Iterator[dict[str, np.ndarray]] = self._batches()

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        for image in self.images:
            yield {self.input_name: preprocess_image(image, self.mean, self.std, self.size)}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iterator, None)

    def rewind(self) -> None:
        self._iterator = self._batches()

    # Iteration as in CalibrationDataReader, for ORT tools that loop over a reader.
    def __iter__(self) -> ImageCalibrationReader:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = self.get_next()
        if batch is None:
            raise StopIteration
        return batch

    def __len__(self) -> int:
        return len(self.images)


def check_calibration_size(size: tuple[int, int] | None) -> None:
    """Refuse a calibration ``size`` under ``MIN_WINDOW`` pixels a side: at 1x1 or 8x8 the
    coarse branches see one pixel, and the activation ranges measured there are not those of
    real frames (such a file labelled a quarter of a 360x480 frame otherwise than PyTorch)."""
    check_min_side(size, "--size", "INT8 calibration at the deployment size")


def quantize_onnx_int8(
    fp32_path: str | Path,
    out_path: str | Path,
    calibration_images: Sequence[ImageSource],
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    size: tuple[int, int] | None = (360, 480),
    *,
    per_channel: bool = True,
    method: str = "minmax",
    reduce_range: bool = True,
    preprocess: bool = True,
    keep_float: Sequence[str] = (),
    pools_as_convs: bool = True,
    openvino_fixed_size: bool = True,
) -> Path:
    """Static INT8 quantisation (QDQ) of an FP32 ONNX model for ONNX Runtime and OpenVINO
    on CPU.

    Args:
        fp32_path: a logits model from ``export_onnx`` (dynamic sizes are kept).
        out_path: where to write the INT8 model.
        calibration_images: real ``(H, W, 3)`` uint8 RGB images or their paths, e.g. from
            ``load_calibration_images``; 16-64 from the training set are typical. Activation
            ranges come from these, so they must look like the deployment data.
        mean, std: RGB normalisation on the 0..1 scale; default: the model's, stored in the
            file by ``export_onnx``.
        size: ``(height, width)`` the images are resized to, the deployment size; ``None``
            keeps each image's own size.
        per_channel: one weight scale per output channel (accuracy; ~free on CPU).
        method: activation range estimate, ``"minmax"`` (fast, robust for ReLU nets),
            ``"entropy"`` or ``"percentile"`` (slower, need more memory).
        reduce_range: 7-bit weights (in [-64, 64]), so that the file is accurate on every
            CPU. x86 CPUs without VNNI (AVX2 laptops, AMD Zen 2) add uint8 x int8 products
            pairwise in int16, which saturates with 8-bit weights: on a Zen 2 CPU the bundled
            CamVid model lost 0.8-1.0 mIoU that way (71.29 ONNX Runtime, 71.13 OpenVINO,
            against 72.10 in fp32) and a model calibrated on two frames lost 11.5, while
            7-bit weights scored 71.93 in both. False: 8-bit weights, for files that only
            ever run on VNNI/AMX CPUs or ARM (a little finer; ``OnnxSegmentationModel``
            warns when such a file is loaded on a CPU without VNNI).
        preprocess: run ``quant_pre_process`` first (ORT's basic graph optimisations and
            ONNX shape inference), so ranges are measured on the graph that will run. Its
            symbolic shape inference is skipped: it adds nothing to this all-convolutional
            graph and takes ~7 s in pure Python.
        keep_float: ONNX node names, or name prefixes ending in ``/``, left in float32.
            With ``export_onnx``'s default exporter node names follow module paths, so
            ``("/model/dappm/",)`` keeps DAPPM in float (a small share of the MACs: it runs
            at 1/64 resolution). With ``pools_as_convs`` it is not needed for accuracy.
        pools_as_convs: rewrite zero-padded average pools (DAPPM's 5/9/17 pools) as
            depthwise convolutions first (``average_pools_as_depthwise_convs``): the same
            numbers in float, and the form OpenVINO quantises correctly. Off only to show why.
        openvino_fixed_size: keep the convolution block that reads each feature-map
            ``Concat`` in float (in DDRNet, DAPPM's compression: batch norm, ReLU and a 1x1
            convolution at 1/64 of the input resolution) and mark the file
            (``metadata_props["ddrnet.openvino_fixed_size"]``) as safe for OpenVINO to compile
            for a fixed input size. OpenVINO 2026.4 crashes (segfault) compiling a fixed-size
            graph in which a quantised concat feeds a quantised convolution, and its
            fixed-size plan runs the INT8 model 1.1-1.4x faster than the dynamic one
            (``openvino_logits_function``). Off: every convolution quantised, and OpenVINO
            keeps the file's dynamic sizes.

    Activations are uint8 (asymmetric, suits post-ReLU maps) and weights int8 symmetric, the
    combination ONNX Runtime recommends for x86 CPUs. Returns ``out_path``.
    """
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    fp32_path, out_path = Path(fp32_path), Path(out_path)
    if not fp32_path.is_file():
        raise MissingFileError(f"fp32_path {fp32_path}: no such ONNX file")
    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    if method not in methods:
        raise ValueError(f"method must be one of {CALIBRATION_METHODS}, got {method!r}")
    check_calibration_size(size)
    reader = _calibration_reader(fp32_path, calibration_images, mean, std, size)
    with scratch_folder("quant") as scratch:
        # Written and marked in the scratch folder, then copied into place whole.
        draft = Path(scratch) / "int8.onnx"
        model_input = _graph_to_quantise(fp32_path, Path(scratch), preprocess, pools_as_convs)
        # Matched on the graph being quantised: pre-processing may merge or drop nodes.
        excluded = _matching_nodes(model_input, keep_float)
        if openvino_fixed_size:
            excluded += concat_convolution_blocks(model_input)
        with _without_per_channel_axis_warnings():
            quantize_static(
                str(model_input),
                str(draft),
                reader,
                quant_format=QuantFormat.QDQ,
                per_channel=per_channel,
                reduce_range=reduce_range,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=methods[method],
                nodes_to_exclude=excluded or None,
            )
        if openvino_fixed_size:
            _mark_openvino_fixed_size(draft)
        remove_stale_temporaries(out_path.parent, (out_path.name,))  # of a run killed before
        atomic_copy(draft, out_path)
    return out_path


def _calibration_reader(
    fp32_path: Path,
    images: Sequence[ImageSource],
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    size: tuple[int, int] | None,
) -> ImageCalibrationReader:
    """The calibration images of ``quantize_onnx_int8`` as ORT reads them, normalised with
    ``mean``/``std`` or the file's own; a ``ValueError`` for a file that is not a logits
    model."""
    properties = onnx_file_properties(fp32_path)
    if not properties.outputs_logits:
        raise ValueError(
            f"fp32_path {fp32_path}: output is {properties.output_type}; quantise a logits "
            "model (export_onnx with argmax=False)"
        )
    mean, std = file_normalisation(fp32_path, mean, std, properties.model_metadata)
    return ImageCalibrationReader(images, properties.input_name, mean, std, size)


def _graph_to_quantise(
    fp32_path: Path, scratch: Path, preprocess: bool, pools_as_convs: bool
) -> Path:
    """The graph ``quantize_static`` calibrates and quantises, written into ``scratch``:
    ``fp32_path`` after ORT's pre-processing and with padded average pools as depthwise
    convolutions (each step optional; see ``quantize_onnx_int8``)."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model_input = fp32_path
    if preprocess:
        model_input = scratch / "preprocessed.onnx"
        quant_pre_process(str(fp32_path), str(model_input), skip_symbolic_shape=True)
    if pools_as_convs:
        rewritten = scratch / "pools_as_convs.onnx"
        onnx.save(average_pools_as_depthwise_convs(onnx.load(str(model_input))), rewritten)
        model_input = rewritten
    return model_input


def _mark_openvino_fixed_size(path: Path) -> None:
    """Add ``OPENVINO_FIXED_SIZE_KEY`` to the file's metadata (keeping the rest): OpenVINO
    may compile it for a fixed input size (``OnnxFileProperties.openvino_fixed_size``)."""
    import onnx

    quantized = onnx.load(str(path))
    props = {prop.key: prop.value for prop in quantized.metadata_props}
    onnx.helper.set_model_props(quantized, {**props, OPENVINO_FIXED_SIZE_KEY: "1"})
    onnx.save(quantized, str(path))


def concat_convolution_blocks(path: str | Path) -> list[str]:
    """Names of the nodes from each feature-map ``Concat`` up to and including the first
    ``Conv`` it feeds, through single-consumer ``BatchNormalization``/``Relu`` nodes (the
    ``Concat`` itself excluded); in DDRNet, DAPPM's compression block. Shape-arithmetic
    concats (which feed ``Resize`` sizes, not convolutions) give nothing."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    blocks: list[str] = []
    for concat in (node for node in graph.node if node.op_type == "Concat"):
        chain: list[str] = []
        tensor = concat.output[0]
        while len(consumers.get(tensor, [])) == 1:
            (node,) = consumers[tensor]
            if node.op_type not in ("BatchNormalization", "Relu", "Conv"):
                break
            chain.append(node.name)
            if node.op_type == "Conv":
                blocks += chain
                break
            tensor = node.output[0]
    return blocks


class _PerChannelAxisFilter(logging.Filter):
    """Drops ONNX Runtime's "Axis 1 is out-of-range for weight ... with rank 1" lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "is out-of-range for weight" not in record.getMessage()


@contextlib.contextmanager
def _without_per_channel_axis_warnings() -> Iterator[None]:
    """Silence one harmless warning of ``quantize_static`` while it runs.

    With ``per_channel`` ORT asks for a per-channel scale along axis 1 of every weight;
    the 1-D scales of the batch norms that precede a ReLU (DAPPM's and the head's
    pre-activation BNs, which cannot fold into a convolution) have no axis 1, so ORT
    quantises them per tensor, as it should, and logs a root-logger warning for each: a
    screenful of noise on every INT8 export.
    """
    quiet, root = _PerChannelAxisFilter(), logging.getLogger()
    root.addFilter(quiet)  # ORT logs through the root logger itself (logging.warning)
    try:
        yield
    finally:
        root.removeFilter(quiet)


def average_pools_as_depthwise_convs(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace every ``AveragePool`` that pads with zeros (``count_include_pad=1``) by the
    equivalent depthwise ``Conv`` (one ``1/(kh*kw)`` filter per channel, same kernel, strides
    and pads); returns ``model``, changed in place.

    Why: OpenVINO's low-precision pipeline runs an average pool that follows a
    ``DequantizeLinear`` in the uint8 domain and pads it with 0 instead of the tensor's zero
    point, i.e. with ``-zero_point * scale`` rather than 0.0. DAPPM pools a signed tensor (the
    low branch's last residual sum, not ReLU'd) with pads of 2/4/8 on a map of 1/64 of the
    input, where most of each window is padding: its pooled features came out wrong by
    6-180x their magnitude and the INT8 model lost 1.6 mIoU (4.5 on a less trained model)
    under OpenVINO (logits' SQNR 14.5 dB against 31 dB). ONNX Runtime's quantised pool is
    also less exact than a quantised depthwise convolution (29.5 against 30.8 dB on the
    bundled model; 6.7 against 11.2 dB on a random-weight one). A quantised convolution pads
    with the zero point, so in this form both runtimes agree with float. The cost is nil: the pools
    run at 1/64 of the input resolution. Pools without padding, or with
    ``count_include_pad=0`` (a different divisor per position), are left alone.

    Node names are kept, so name-based selections (``keep_float``) still apply.
    """
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    pools = [node for node in graph.node if node.op_type == "AveragePool"]
    if not pools:
        return model
    inferred = onnx.shape_inference.infer_shapes(model)
    channels: dict[str, int] = {}
    for info in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        dims = info.type.tensor_type.shape.dim
        if len(dims) == 4 and dims[1].HasField("dim_value"):
            channels[info.name] = dims[1].dim_value
    for node in pools:
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        pads = list(attributes.get("pads", [0, 0, 0, 0]))
        if not any(pads) or not attributes.get("count_include_pad", 0):
            continue
        if attributes.get("ceil_mode", 0) or attributes.get("auto_pad", b"NOTSET") != b"NOTSET":
            continue  # border windows would differ from a convolution's
        if node.input[0] not in channels:
            raise ValueError(
                f"AveragePool {node.name}: channel count of its input {node.input[0]!r} is "
                "unknown after shape inference; cannot build the depthwise filter"
            )
        kernel = list(attributes["kernel_shape"])
        count = channels[node.input[0]]
        weight_name = f"{node.name}/depthwise_mean_weight"
        graph.initializer.append(
            numpy_helper.from_array(
                np.full((count, 1, *kernel), 1.0 / float(np.prod(kernel)), np.float32),
                weight_name,
            )
        )
        node.op_type = "Conv"
        del node.input[1:]
        node.input.append(weight_name)
        del node.attribute[:]
        node.attribute.extend(
            [
                helper.make_attribute("kernel_shape", kernel),
                helper.make_attribute("strides", list(attributes.get("strides", [1, 1]))),
                helper.make_attribute("pads", pads),
                helper.make_attribute("group", count),
            ]
        )
    return model


def _matching_nodes(path: Path, patterns: Sequence[str]) -> list[str]:
    """Node names of ``path`` equal to a pattern or, for patterns ending in ``/``, under it."""
    if not patterns:
        return []
    import onnx

    names = [node.name for node in onnx.load(str(path), load_external_data=False).graph.node]
    matched = [
        name
        for name in names
        if any(name == p or (p.endswith("/") and name.startswith(p)) for p in patterns)
    ]
    unmatched = [p for p in patterns if not any(n == p or n.startswith(p) for n in matched)]
    if unmatched:
        raise ValueError(f"keep_float entries {unmatched} match no node of {path}")
    return matched
