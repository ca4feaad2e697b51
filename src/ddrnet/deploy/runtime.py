"""Exported ONNX files run on the CPU by ONNX Runtime or OpenVINO, and behind the PyTorch
model interface, so that ``ddrnet predict``, ``ddrnet eval``, ``ddrnet serve`` and
``ddrnet.Predictor`` run the deployed form itself.

The sessions (``onnx_session``), OpenVINO's compiled plans (``openvino_logits_function``,
cached per input shape by ``OpenVinoPlans``) and the model wrapper built on them
(``OnnxSegmentationModel``) live here; ``ddrnet bench`` times the same sessions and plans.

``OnnxSegmentationModel`` is an ``nn.Module`` without parameters whose ``forward`` hands the
normalised batch to ONNX Runtime or OpenVINO and returns the logits as a tensor; it carries
the ``ModelMetadata`` that ``export_onnx`` stored in the file (classes, palette, mean/std),
so inference code that takes a ``DDRNet`` (``Predictor``, ``segment_logits``, ``evaluate``)
takes it unchanged. What needs the network's insides (``ddrnet viz features``, BN folding,
export, ``bench``) needs the PyTorch model. That makes the fast CPU paths measured by
``ddrnet bench`` (OpenVINO bf16, INT8) usable for real work, and lets ``ddrnet eval`` score
exactly the file that will be deployed.

onnxruntime and openvino (the ``deploy`` extra) are imported by the functions that use them.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ddrnet.deploy.onnx_file import (
    METADATA_KEY,
    ExportError,
    OnnxFileProperties,
    onnx_file_properties,
    openvino_fixed_size_ok,
)
from ddrnet.errors import MissingFileError
from ddrnet.hardware import cap_openvino_like_onednn, cpu_has_int8_dot_product
from ddrnet.models.metadata import ModelMetadata

logger = logging.getLogger(__name__)

RUNTIMES = ("onnxruntime", "openvino")
OPENVINO_PRECISIONS = ("f32", "bf16")


def openvino_precision(dtype: torch.dtype | None) -> str:
    """The name (``OPENVINO_PRECISIONS``) of float layers computed in ``dtype``, as
    ``resolve_precision`` gives it: ``"bf16"`` for bfloat16, else ``"f32"``."""
    return "bf16" if dtype == torch.bfloat16 else "f32"


# --------------------------------------------------------------------------------------------
# ONNX Runtime
# --------------------------------------------------------------------------------------------


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
    # Parallelism inside the ops (and across concurrent runs, OnnxSegmentationModel(streams)).
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if not spin_wait:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _check_image_input(path: Path, dims: tuple[int | None, ...]) -> None:
    """An ``ExportError`` unless the file's input can be ``(N, 3, H, W)`` images."""
    if len(dims) != 4 or dims[1] not in (None, 3):
        shape = "(" + ", ".join("?" if d is None else str(d) for d in dims) + ")"
        raise ExportError(
            f"{path}: its input is {shape}, not (N, 3, H, W) images: not a segmentation "
            "model's export"
        )


def onnx_logits(session: object, image: np.ndarray) -> np.ndarray:
    """Run a session on one normalised ``(N, 3, H, W)`` batch (made float32, contiguous);
    its one output: logits, or class ids for a file exported with argmax."""
    input_name = session.get_inputs()[0].name  # type: ignore[attr-defined]
    (output,) = session.run(None, {input_name: np.ascontiguousarray(image, np.float32)})  # type: ignore[attr-defined]
    return output


# --------------------------------------------------------------------------------------------
# OpenVINO
# --------------------------------------------------------------------------------------------


@functools.cache
def openvino_core() -> object:
    """The process's one ``openvino.Core``. Each Core's CPU plugin puts the thread that loads
    it on a signal stack of its own, and when the Core is freed puts back the stack it found:
    Cores freed out of order (plans for several sizes, a benchmark of several files) left
    the thread on a freed stack, and the next signal that Python handles there (Ctrl-C,
    SIGTERM, a child process's exit under PyTorch's DataLoader) killed the process with
    SIGSEGV (OpenVINO 2026.4). One Core lives until the process ends, its kernels capped as
    oneDNN's are (``hardware.cap_openvino_like_onednn``)."""
    cap_openvino_like_onednn()
    import openvino as ov

    return ov.Core()


def openvino_logits_function(
    path: str | Path,
    threads: int | None = None,
    precision: str = "f32",
    input_shape: Sequence[int] | None = None,
    *,
    fixed_size_ok: bool | None = None,
    streams: int = 1,
) -> Callable[[np.ndarray], np.ndarray]:
    """Compile the ONNX file with OpenVINO for CPU (``threads`` inference threads in all,
    ``precision`` ``"f32"`` or ``"bf16"`` for float layers) and return a function mapping one
    ``(N, 3, H, W)`` float32 batch to a copy of the model's output array.

    ``streams``: 1 (latency: every thread works on one inference), or N inferences at once,
    each on its own share of the threads (OpenVINO's throughput mode); the function may then
    be called from N threads at a time, each call taking one of N inference requests. On two
    cores two streams segment 0.95-1.1x the frames per second of one (CamVid INT8 models,
    ``benchmarks/predict_throughput.py``): one inference keeps both cores busy already.

    ``input_shape`` ``(N, 3, H, W)`` fixes the input size before compiling, which lets
    OpenVINO plan every layer for it (faster than the file's dynamic sizes: 1.1-1.4x for the
    INT8 DDRNet-23-slim); the function then accepts that shape only. Quantised (QDQ) files
    not marked by ``quantize_onnx_int8`` stay dynamic (``openvino_fixed_size_ok``;
    ``fixed_size_ok`` passes its answer when the caller already has it, to spare parsing the
    file again).
    """
    if precision not in OPENVINO_PRECISIONS:
        raise ValueError(f"OpenVINO precision must be 'f32' or 'bf16', got {precision!r}")
    config: dict[str, object] = {"INFERENCE_PRECISION_HINT": precision}
    if streams > 1:
        config.update(PERFORMANCE_HINT="THROUGHPUT", NUM_STREAMS=streams)
    else:
        config["PERFORMANCE_HINT"] = "LATENCY"
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    core = openvino_core()
    model = core.read_model(str(path))
    if fixed_size_ok is None and input_shape is not None:
        fixed_size_ok = openvino_fixed_size_ok(path)
    if input_shape is not None and fixed_size_ok:
        model.reshape([int(size) for size in input_shape])
    compiled = core.compile_model(model, "CPU", config)
    output = compiled.output(0)
    requests: queue.SimpleQueue = queue.SimpleQueue()
    for _ in range(streams):
        requests.put(compiled.create_infer_request())

    def run(batch: np.ndarray) -> np.ndarray:
        request = requests.get()  # waits while every request is busy
        try:
            # The request reads the caller's array in place (the call returns when inference
            # ends), sparing a copy of the input; the output is copied out of the request's
            # buffer, which its next call reuses.
            inputs = [np.ascontiguousarray(batch, dtype=np.float32)]
            result = request.infer(inputs, share_inputs=True, share_outputs=True)
            return np.array(result[output], copy=True)
        finally:
            requests.put(request)

    run.compiled_model = compiled  # type: ignore[attr-defined]  # keeps it alive
    return run


class OpenVinoPlans:
    """``openvino_logits_function`` compiled once per input shape, the last ``keep`` shapes
    kept (a video, or a folder of same-sized frames, compiles once), or once with dynamic
    sizes for a file that ``openvino_fixed_size_ok`` rules out. Call it with one
    ``(N, 3, H, W)`` float32 batch; it returns a copy of the output array. ``streams``: see
    ``openvino_logits_function``; calls may come from that many threads at once.
    ``fixed_size``: ``openvino_fixed_size_ok(path)`` when the caller already knows it (two
    plans of one file parse it once)."""

    def __init__(
        self,
        path: str | Path,
        threads: int | None,
        precision: str,
        keep: int = 4,
        *,
        fixed_size: bool | None = None,
        streams: int = 1,
    ) -> None:
        self.path, self.threads, self.precision, self.keep = Path(path), threads, precision, keep
        self.streams = streams
        self.fixed_size = openvino_fixed_size_ok(path) if fixed_size is None else fixed_size
        self._plans: dict[tuple[int, ...] | None, Callable[[np.ndarray], np.ndarray]] = {}
        self._lock = threading.Lock()  # one compile per shape, whichever thread asks first

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        key = tuple(batch.shape) if self.fixed_size else None
        with self._lock:
            plan = self._plans.pop(key, None)  # re-inserted below: most recent last
            if plan is None:
                plan = openvino_logits_function(
                    self.path,
                    self.threads,
                    self.precision,
                    key,
                    fixed_size_ok=self.fixed_size,
                    streams=self.streams,
                )
            self._plans[key] = plan
            if len(self._plans) > self.keep:
                del self._plans[next(iter(self._plans))]
        return plan(batch)


# --------------------------------------------------------------------------------------------
# The model wrapper
# --------------------------------------------------------------------------------------------


def _check_options(path: Path, runtime: str, precision: str) -> None:
    if not path.is_file():
        raise MissingFileError(f"{path}: no such ONNX file")
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    if precision not in OPENVINO_PRECISIONS:
        raise ValueError(f"precision must be one of {OPENVINO_PRECISIONS}, got {precision!r}")
    if runtime == "onnxruntime" and precision != "f32":
        raise ValueError(
            "ONNX Runtime's CPU provider has no bf16 convolutions: use runtime='openvino' "
            "for bf16 (or an INT8 file with either runtime)"
        )


def _file_metadata(path: Path, properties: OnnxFileProperties) -> ModelMetadata:
    """The ``ModelMetadata`` stored in the file; for a foreign file, classes by number and
    ImageNet normalisation (``ModelMetadata``'s defaults)."""
    if METADATA_KEY in properties.metadata_props:
        return ModelMetadata.from_json(properties.metadata_props[METADATA_KEY], source=str(path))
    if properties.channels < 1:
        raise ExportError(
            f"{path} has no ddrnet metadata and a symbolic class dimension, so its "
            "class count is unknown: export it with `ddrnet export`"
        )
    return ModelMetadata(architecture=path.stem, num_classes=properties.channels, spec={})


class OnnxSegmentationModel(nn.Module):
    """An ONNX logits model (from ``ddrnet export``) run on the CPU by ONNX Runtime or OpenVINO.

    ``forward``: ``(N, 3, H, W)`` normalised float images -> ``(N, num_classes, h, w)``
    float32 logits (``h, w`` = ``ceil(H/8), ceil(W/8)``, or ``H, W`` for files exported with
    ``--upsample``), on the input's device. Gradients do not flow through it.

    Args:
        path: the ``.onnx`` file; INT8 (QDQ) files from ``ddrnet export --format onnx-int8``
            work as well.
        runtime: ``"onnxruntime"`` or ``"openvino"``.
        precision: OpenVINO only: ``"f32"`` or ``"bf16"`` for the float layers (bf16 is the
            fastest float path on CPUs with AMX or AVX512-BF16).
        threads: inference threads in all; by default ``torch.get_num_threads()`` for ONNX
            Runtime and OpenVINO's own choice (one per core) for OpenVINO.
        streams: how many inferences may run at once, from as many threads, each on its
            share of the threads (``ddrnet predict --streams``): more frames per second on a
            stream of frames, each no sooner (``openvino_logits_function``). 1: every thread
            works on one inference, the least latency.
        accept_labels: also take a file that outputs class ids (exported with ``--argmax``
            and ``--upsample``); it has no ``forward``, only ``class_ids``, so it can be
            evaluated at one scale but not augmented. Otherwise such a file is an
            ``ExportError``.

    OpenVINO plans each layer for a fixed input size, which is faster than running the file's
    dynamic sizes, so a float file is compiled once per input shape (the last four are kept:
    a video or a folder of same-sized frames compiles once). So is an INT8 file written by
    ``quantize_onnx_int8``; other quantised files compile once, dynamic (see
    ``openvino_fixed_size_ok``).
    """

    def __init__(
        self,
        path: str | Path,
        runtime: str = "onnxruntime",
        precision: str = "f32",
        threads: int | None = None,
        *,
        streams: int = 1,
        accept_labels: bool = False,
    ) -> None:
        super().__init__()
        if streams < 1:
            raise ValueError(f"streams must be >= 1, got {streams}")
        path = Path(path)
        _check_options(path, runtime, precision)
        properties = onnx_file_properties(path)
        _check_image_input(path, properties.input_dims)
        self.input_size = properties.fixed_input_size
        self.outputs_labels = not properties.outputs_logits
        if self.outputs_labels and not accept_labels:
            raise ExportError(
                f"{path} outputs {properties.output_type.lower()} labels (exported with --argmax); "
                "prediction and evaluation need its logits: export again without --argmax"
            )
        self.metadata = _file_metadata(path, properties)
        if properties.full_range_int8_weights and not cpu_has_int8_dot_product():
            logger.warning(
                "%s has 8-bit int8 weights and this CPU has no VNNI: its uint8 x int8 "
                "products saturate in int16, which costs accuracy (0.8-11 mIoU measured on "
                "CamVid); export it again with 7-bit weights (ddrnet export --format "
                "onnx-int8, the default --weight-bits 7)",
                path,
            )
        self.upsampled = bool(properties.export_options.get("upsample_to_input", False))
        self.num_classes = self.metadata.num_classes
        self.path, self.runtime, self.precision = path, runtime, precision
        self.threads, self.streams = threads, streams
        self._session = self._openvino = None
        if runtime == "openvino":
            fixed_size = properties.openvino_fixed_size
            self._openvino = OpenVinoPlans(
                path, threads, precision, fixed_size=fixed_size, streams=streams
            )
        else:
            # Each concurrent run works on the calling thread plus its share of the pool; no
            # spin-waiting, as the tail after the logits runs between two calls (see there).
            share = max(1, (threads or torch.get_num_threads()) // streams)
            self._session = onnx_session(path, threads=share, spin_wait=False)

    def _as_batch(self, images: torch.Tensor) -> np.ndarray:
        """``(N, 3, H, W)`` images as the contiguous float32 array both runtimes take; an
        ``ExportError`` for a file of a fixed input size that ``images`` do not have."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected (N, 3, H, W) images, got shape {tuple(images.shape)}")
        size = tuple(images.shape[-2:])
        if self.input_size is not None and size != self.input_size:
            (height, width), (image_height, image_width) = self.input_size, size
            raise ExportError(
                f"{self.path} takes {width}x{height} images only (exported with a fixed "
                f"size), not {image_width}x{image_height}: export it again with dynamic sizes "
                "(the default)"
            )
        return np.ascontiguousarray(images.detach().float().cpu().numpy())

    def _run(self, batch: np.ndarray) -> np.ndarray:
        """The file's output for one batch, a copy that outlives the next call."""
        if self._session is not None:
            return onnx_logits(self._session, batch)
        return self._openvino(batch)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.outputs_labels:
            raise ExportError(
                f"{self.path} outputs class labels (exported with --argmax): only one plain "
                "pass can be scored (no --scales, --flip, --window or --smooth); export "
                "without --argmax"
            )
        logits = self._run(self._as_batch(images))
        return torch.from_numpy(np.asarray(logits, dtype=np.float32)).to(images.device)

    def class_ids(self, images: torch.Tensor) -> torch.Tensor | None:
        """``(N, 3, H, W)`` normalised images -> ``(N, H, W)`` int64 class ids at input size
        for a file that outputs class ids itself (at input size, or a ``ValueError``); None
        for a logits file, whose class ids the caller takes from the logits."""
        if not self.outputs_labels:
            return None
        batch = self._as_batch(images)
        ids = self._run(batch)
        if tuple(ids.shape[-2:]) != tuple(batch.shape[-2:]):
            raise ValueError(
                f"{self.path}: labels come out {tuple(ids.shape[-2:])} for a "
                f"{tuple(batch.shape[-2:])} image; export with upsample_to_input=True "
                "(or argmax=False) to evaluate"
            )
        return torch.from_numpy(ids.astype(np.int64)).to(images.device)

    def extra_repr(self) -> str:
        detail = f", precision={self.precision}" if self.runtime == "openvino" else ""
        detail += f", streams={self.streams}" if self.streams > 1 else ""
        return f"path={str(self.path)!r}, runtime={self.runtime}{detail}"


def load_onnx_model(
    path: str | Path,
    runtime: str = "onnxruntime",
    precision: str = "f32",
    threads: int | None = None,
    streams: int = 1,
) -> OnnxSegmentationModel:
    """``OnnxSegmentationModel(path, runtime, precision, threads, streams=streams)``, in eval
    mode.

    >>> import ddrnet
    >>> model = load_onnx_model("camvid_int8.onnx", runtime="openvino", precision="bf16")
    >>> labels = ddrnet.Predictor(model).predict("street.png")
    """
    return OnnxSegmentationModel(path, runtime, precision, threads, streams=streams).eval()
