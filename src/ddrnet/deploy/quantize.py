"""INT8 post-training quantisation for CPU with ONNX Runtime, and evaluation of any ONNX form.

``quantize_onnx_int8`` calibrates activation ranges on real images and writes a QDQ model
(int8 per-channel weights, uint8 activations), the layout ONNX Runtime's CPU kernels fuse
into integer convolutions. ``evaluate_onnx`` measures mIoU of an ONNX file on a data set the
same way ``ddrnet.engine`` evaluates a PyTorch model, so FP32, INT8 and the PyTorch model can
be compared on the same images.

bfloat16: ONNX Runtime's CPU provider has no bfloat16 convolution kernels, so a bf16 ONNX
graph would run as casts around float32 ops (slower, not faster). bf16 on CPU is served by
PyTorch autocast instead (``torch.autocast("cpu", dtype=torch.bfloat16)``, oneDNN uses AMX or
AVX512-BF16 where the CPU has them); ``ddrnet.deploy.bench`` times it as ``eager_bf16``.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from ddrnet.deploy.export import (
    OPENVINO_FIXED_SIZE_KEY,
    onnx_file_properties,
    onnx_session,
    read_onnx_metadata,
)
from ddrnet.engine.inference import class_indices, normalize
from ddrnet.engine.metrics import ConfusionMatrix, SegmentationMetrics
from ddrnet.errors import MissingFileError, UsageError

if TYPE_CHECKING:
    import onnx
    import openvino as ov

ImageSource = np.ndarray | str | Path
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


def load_calibration_images(source: str | Path | object, count: int = 16) -> list[np.ndarray]:
    """Up to ``count`` ``(H, W, 3)`` uint8 RGB images, evenly spaced over ``source``.

    ``source``: a folder of images (png/jpg/bmp/webp, sorted by name), or a data set with
    ``load(index) -> (image, label)`` such as ``ddrnet.data.datasets.camvid(root, "train")``.
    Even spacing covers every sequence of a video data set rather than its first frames.
    """
    from ddrnet.data.io import read_rgb

    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    if isinstance(source, (str, Path)):
        folder = Path(source)
        if not folder.is_dir():
            raise MissingFileError(f"calibration folder {folder} does not exist")
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise UsageError(f"calibration folder {folder} has no {'/'.join(IMAGE_SUFFIXES)} files")
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


def _normalisation(
    path: Path,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    metadata: dict[str, object] | None = None,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``mean``/``std`` as given, else the ones ``export_onnx`` stored in the file (read from
    it unless the caller passes its ``metadata``)."""
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
    from onnxruntime.quantization.shape_inference import quant_pre_process

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
    mean, std = _normalisation(fp32_path, mean, std)
    session = onnx_session(fp32_path)
    output_type = session.get_outputs()[0].type
    if "float" not in output_type:
        raise ValueError(
            f"fp32_path {fp32_path}: output is {output_type}; quantise a logits model "
            "(export_onnx with argmax=False)"
        )
    reader = ImageCalibrationReader(
        calibration_images, session.get_inputs()[0].name, mean, std, size
    )
    del session
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ddrnet-quant-") as scratch:
        model_input = fp32_path
        if preprocess:
            model_input = Path(scratch) / "preprocessed.onnx"
            quant_pre_process(str(fp32_path), str(model_input), skip_symbolic_shape=True)
        if pools_as_convs:
            import onnx

            rewritten = Path(scratch) / "pools_as_convs.onnx"
            onnx.save(average_pools_as_depthwise_convs(onnx.load(str(model_input))), rewritten)
            model_input = rewritten
        # Matched on the graph being quantised: pre-processing may merge or drop nodes.
        excluded = _matching_nodes(model_input, keep_float)
        if openvino_fixed_size:
            excluded += concat_convolution_blocks(model_input)
        with _without_per_channel_axis_warnings():
            quantize_static(
                str(model_input),
                str(out_path),
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
        import onnx

        quantized = onnx.load(str(out_path))
        onnx.helper.set_model_props(
            quantized,
            {
                **{prop.key: prop.value for prop in quantized.metadata_props},
                OPENVINO_FIXED_SIZE_KEY: "1",
            },
        )
        onnx.save(quantized, str(out_path))
    return out_path


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


def openvino_fixed_size_ok(path: str | Path) -> bool:
    """Whether OpenVINO may compile ``path`` for a fixed input size
    (``OnnxFileProperties.openvino_fixed_size``)."""
    return onnx_file_properties(path).openvino_fixed_size


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


def onnx_logits(session: object, image: np.ndarray) -> np.ndarray:
    """Run a logits session on one normalised ``(N, 3, H, W)`` float32 batch."""
    input_name = session.get_inputs()[0].name  # type: ignore[attr-defined]
    (output,) = session.run(None, {input_name: np.ascontiguousarray(image, np.float32)})  # type: ignore[attr-defined]
    return output


def evaluate_onnx(
    path: str | Path,
    dataset: object,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    num_classes: int | None = None,
    *,
    ignore_index: int = 255,
    limit: int | None = None,
    threads: int | None = None,
    runtime: str = "onnxruntime",
    openvino_precision: str = "bf16",
) -> SegmentationMetrics:
    """Segmentation metrics of an ONNX model on ``dataset``, with ONNX Runtime on CPU, or
    with ``runtime="openvino"``: OpenVINO's CPU plugin at ``openvino_precision`` (``"f32"``
    or ``"bf16"``: the precision of every layer not quantised to int8), compiled for each
    input size exactly as ``ddrnet bench`` times it and ``ddrnet predict`` runs it.

    ``dataset[i]`` gives ``(image, label)``: image ``(3, H, W)`` uint8 RGB tensor, label
    ``(H, W)`` int64 with ``ignore_index`` for void (``ddrnet.data.datasets`` data sets do).
    Each image is normalised with ``mean``/``std`` (default: stored in the file), run at its
    own size, the logits are resized to the label size (bilinear, ``align_corners=False``,
    as ``ddrnet.engine`` does for PyTorch models) and arg-maxed; with OpenVINO, when label and
    image sizes agree, inside the compiled graph, as ``ddrnet predict`` and ``ddrnet eval``
    run such a file (``openvino_logits_function(class_ids=True)``). A model exported with
    ``argmax=True, upsample_to_input=True`` (labels at input size) is scored directly.
    ``limit`` evaluates the first ``limit`` samples only. ``num_classes`` defaults to the
    logits' channel count.
    """
    path = Path(path)
    properties = onnx_file_properties(path)
    mean, std = _normalisation(path, mean, std, properties.model_metadata)
    class_ids = None
    if runtime == "openvino":
        fixed_size = properties.openvino_fixed_size
        run = OpenVinoPlans(path, threads, openvino_precision, fixed_size=fixed_size)
        if properties.output_type in ("FLOAT", "FLOAT16"):  # logits, not class ids already
            # What ddrnet predict and ddrnet eval run: resize and arg-max inside the graph.
            class_ids = OpenVinoPlans(
                path, threads, openvino_precision, class_ids=True, fixed_size=fixed_size
            )
            # 0: a symbolic class dimension
            num_classes = num_classes or properties.channels or None
    elif runtime == "onnxruntime":
        session = onnx_session(path, threads=threads)

        def run(batch: np.ndarray) -> np.ndarray:
            return onnx_logits(session, batch)

    else:
        raise ValueError(f"runtime must be 'onnxruntime' or 'openvino', got {runtime!r}")
    count = len(dataset) if limit is None else min(limit, len(dataset))  # type: ignore[arg-type]
    if count < 1:
        raise ValueError(f"nothing to evaluate: dataset has {len(dataset)} samples, limit={limit}")  # type: ignore[arg-type]
    matrix: ConfusionMatrix | None = None
    for index in range(count):
        image, label = dataset[index]  # type: ignore[index]
        batch = normalize(torch.as_tensor(image)[None], mean, std).numpy()
        label = torch.as_tensor(label)
        if class_ids is not None and tuple(batch.shape[-2:]) == tuple(label.shape[-2:]):
            if num_classes is None:
                num_classes = int(np.asarray(run(batch)).shape[1])
            prediction = torch.from_numpy(class_ids(batch).astype(np.int64))[0]
        else:
            prediction, num_classes = _prediction(path, run(batch), label, num_classes)
        if matrix is None:
            matrix = ConfusionMatrix(num_classes, ignore_index=ignore_index)
        matrix.update(prediction, label)
    assert matrix is not None
    return matrix.compute()


def _prediction(
    path: Path, output: np.ndarray, label: torch.Tensor, num_classes: int | None
) -> tuple[torch.Tensor, int]:
    """Class ids at the label's size from one output of ``path`` (logits, resized and
    arg-maxed, or class ids already at input size), and the class count."""
    scores = torch.from_numpy(np.asarray(output))
    if scores.is_floating_point():
        logits = F.interpolate(
            scores, size=tuple(label.shape[-2:]), mode="bilinear", align_corners=False
        )
        return class_indices(logits)[0], num_classes or int(scores.shape[1])
    prediction = scores[0]
    if tuple(prediction.shape) != tuple(label.shape):
        raise ValueError(
            f"{path}: labels come out {tuple(prediction.shape)} for a "
            f"{tuple(label.shape)} label map; export with upsample_to_input=True "
            "(or argmax=False) to evaluate"
        )
    if num_classes is None:
        raise ValueError(f"{path} outputs labels; pass num_classes")
    return prediction, num_classes


def evaluate_onnx_forms(
    forms: Sequence[tuple[str, str | Path, str, str]],
    dataset: object,
    *,
    limit: int | None = None,
    threads: int | None = None,
) -> dict[str, SegmentationMetrics | None]:
    """``evaluate_onnx`` of each ``(name, path, runtime, openvino_precision)`` form on
    ``dataset``, keyed by name; ``None`` where that runtime is not installed."""
    results: dict[str, SegmentationMetrics | None] = {}
    for name, path, runtime, precision in forms:
        try:
            results[name] = evaluate_onnx(
                path,
                dataset,
                limit=limit,
                threads=threads,
                runtime=runtime,
                openvino_precision=precision,
            )
        except ImportError:
            results[name] = None
    return results


def openvino_logits_function(
    path: str | Path,
    threads: int | None = None,
    precision: str = "f32",
    input_shape: Sequence[int] | None = None,
    *,
    class_ids: bool = False,
    fixed_size_ok: bool | None = None,
) -> Callable[[np.ndarray], np.ndarray]:
    """Compile the ONNX file with OpenVINO for CPU (latency hint, ``threads`` inference
    threads, ``precision`` ``"f32"`` or ``"bf16"`` for float layers) and return a function
    mapping one ``(N, 3, H, W)`` float32 batch to the model's output array.

    ``class_ids``: end the graph with a bilinear resize of the logits to the input size
    (``align_corners=False``, as ``F.interpolate``) and a stable arg-max over classes, so the
    output is ``(N, H, W)`` int32 class ids. OpenVINO fuses and threads that tail: 10 ms less
    per 360x480 frame, 70 ms less at 1024x2048, than doing it in PyTorch after the logits.

    ``input_shape`` ``(N, 3, H, W)`` fixes the input size before compiling, which lets
    OpenVINO plan every layer for it (faster than the file's dynamic sizes: 1.1-1.4x for the
    INT8 DDRNet-23-slim); the function then accepts that shape only. Quantised (QDQ) files
    not marked by ``quantize_onnx_int8`` stay dynamic (``openvino_fixed_size_ok``;
    ``fixed_size_ok`` passes its answer when the caller already has it, to spare parsing the
    file again).
    """
    import openvino as ov

    if precision not in ("f32", "bf16"):
        raise ValueError(f"OpenVINO precision must be 'f32' or 'bf16', got {precision!r}")
    config: dict[str, object] = {
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": precision,
    }
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    core = ov.Core()
    model = core.read_model(str(path))
    if fixed_size_ok is None and input_shape is not None:
        fixed_size_ok = openvino_fixed_size_ok(path)
    if input_shape is not None and fixed_size_ok:
        model.reshape([int(size) for size in input_shape])
    if class_ids:
        model = _with_class_ids(model)
    compiled = core.compile_model(model, "CPU", config)
    request = compiled.create_infer_request()
    output = compiled.output(0)

    def run(batch: np.ndarray) -> np.ndarray:
        return request.infer([batch])[output]

    run.compiled_model = compiled  # type: ignore[attr-defined]  # keeps it alive
    return run


def _with_class_ids(model: ov.Model) -> ov.Model:
    """``model`` (one image input, logits output) with its output replaced, in place, by a
    resize of the logits to the input's height and width and an arg-max over the class
    axis: ``(N, H, W)`` int32."""
    import openvino.opset13 as ops

    (image,) = model.get_parameters()
    (logits_result,) = model.get_results()
    height_width = ops.gather(ops.shape_of(image), np.array([2, 3]), np.array(0))
    resized = ops.interpolate(
        logits_result.input_value(0),
        height_width,
        mode="linear_onnx",  # ONNX Resize linear: what our exported Resize nodes become
        shape_calculation_mode="sizes",
        coordinate_transformation_mode="half_pixel",  # align_corners=False
        axes=np.array([2, 3]),
    )
    # stable: the first class among equal scores, as torch.max / argmax
    best = ops.topk(resized, np.array(1), axis=1, mode="max", sort="value", stable=True)
    ids = ops.squeeze(best.output(1), np.array([1]))
    model.remove_result(logits_result)
    model.add_results([ops.result(ids)])
    model.validate_nodes_and_infer_types()
    return model


class OpenVinoPlans:
    """``openvino_logits_function`` compiled once per input shape, the last ``keep`` shapes
    kept (a video, or a folder of same-sized frames, compiles once), or once with dynamic
    sizes for a file that ``openvino_fixed_size_ok`` rules out. Call it with one
    ``(N, 3, H, W)`` float32 batch; it returns the output array (a view of OpenVINO's
    buffer, overwritten by the next call: copy it to keep it). ``class_ids``: see
    ``openvino_logits_function``. ``fixed_size``: ``openvino_fixed_size_ok(path)`` when the
    caller already knows it (two plans of one file parse it once)."""

    def __init__(
        self,
        path: str | Path,
        threads: int | None,
        precision: str,
        keep: int = 4,
        *,
        class_ids: bool = False,
        fixed_size: bool | None = None,
    ) -> None:
        self.path, self.threads, self.precision, self.keep = Path(path), threads, precision, keep
        self.class_ids = class_ids
        self.fixed_size = openvino_fixed_size_ok(path) if fixed_size is None else fixed_size
        self._plans: dict[tuple[int, ...] | None, Callable[[np.ndarray], np.ndarray]] = {}

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        key = tuple(batch.shape) if self.fixed_size else None
        plan = self._plans.pop(key, None)  # re-inserted below: most recent last
        if plan is None:
            plan = openvino_logits_function(
                self.path,
                self.threads,
                self.precision,
                key,
                class_ids=self.class_ids,
                fixed_size_ok=self.fixed_size,
            )
        self._plans[key] = plan
        if len(self._plans) > self.keep:
            del self._plans[next(iter(self._plans))]
        return plan(batch)
