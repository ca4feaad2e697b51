"""Exported ONNX files behind the PyTorch model interface, so that ``ddrnet predict``,
``ddrnet eval``, ``ddrnet serve`` and ``ddrnet.Predictor`` run the deployed form itself.

``OnnxSegmentationModel`` is an ``nn.Module`` without parameters whose ``forward`` hands the
normalised batch to ONNX Runtime or OpenVINO on the CPU and returns the logits as a tensor;
it carries the ``ModelMetadata`` that ``export_onnx`` stored in the file (classes, palette,
mean/std), so inference code that takes a ``DDRNet`` (``Predictor``, ``segment_logits``,
``evaluate``, the prediction and serving code) takes it unchanged. What needs the network's
insides (``ddrnet viz features``, BN folding, export, ``bench``) needs the PyTorch model.
That makes the fast CPU paths measured by ``ddrnet bench`` (OpenVINO bf16, INT8) usable for
real work, and lets ``ddrnet eval`` score exactly the file that will be deployed.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ddrnet.deploy.export import (
    METADATA_KEY,
    ExportError,
    onnx_file_properties,
    onnx_session,
)
from ddrnet.errors import MissingFileError
from ddrnet.hardware import cpu_has_int8_dot_product
from ddrnet.models.metadata import ModelMetadata

logger = logging.getLogger(__name__)

RUNTIMES = ("onnxruntime", "openvino")
OPENVINO_PRECISIONS = ("f32", "bf16")


def is_onnx_file(path: str | Path | None) -> bool:
    """Whether ``path`` names an ONNX file (by its suffix; the file need not exist)."""
    return path is not None and Path(path).suffix.lower() == ".onnx"


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
        threads: inference threads; by default ``torch.get_num_threads()`` for ONNX Runtime
            and OpenVINO's own choice (one per core) for OpenVINO.

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
    ) -> None:
        super().__init__()
        path = Path(path)
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
        properties = onnx_file_properties(path)
        if properties.output_type != "FLOAT":
            raise ExportError(
                f"{path} outputs {properties.output_type.lower()} labels (exported with --argmax); "
                "prediction and evaluation need its logits: export again without --argmax"
            )
        if METADATA_KEY in properties.metadata_props:
            self.metadata = ModelMetadata.from_json(
                properties.metadata_props[METADATA_KEY], source=str(path)
            )
        else:
            if properties.channels < 1:
                raise ExportError(
                    f"{path} has no ddrnet metadata and a symbolic class dimension, so its "
                    "class count is unknown: export it with `ddrnet export`"
                )
            # A foreign file: classes by number, ImageNet normalisation (ModelMetadata's).
            self.metadata = ModelMetadata(
                architecture=path.stem, num_classes=properties.channels, spec={}
            )
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
        self.threads = threads
        self._session = None
        if runtime == "openvino":
            from ddrnet.deploy.quantize import OpenVinoPlans

            fixed_size = properties.openvino_fixed_size
            self._openvino = OpenVinoPlans(path, threads, precision, fixed_size=fixed_size)
            self._openvino_class_ids = OpenVinoPlans(
                path, threads, precision, class_ids=True, fixed_size=fixed_size
            )
        if runtime == "onnxruntime":
            # No spin-waiting: PyTorch's resize and argmax run between two calls (see there).
            self._session = onnx_session(path, threads=threads, spin_wait=False)
        if self._session is not None:
            self._input_name = self._session.get_inputs()[0].name

    @staticmethod
    def _as_batch(images: torch.Tensor) -> np.ndarray:
        """``(N, 3, H, W)`` images as the contiguous float32 array both runtimes take."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected (N, 3, H, W) images, got shape {tuple(images.shape)}")
        return np.ascontiguousarray(images.detach().float().cpu().numpy())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        batch = self._as_batch(images)
        if self._session is not None:
            (logits,) = self._session.run(None, {self._input_name: batch})
        else:
            # Copied: OpenVINO's result is a view of the request's buffer, reused next call.
            logits = np.array(self._openvino(batch), copy=True)
        return torch.from_numpy(np.asarray(logits, dtype=np.float32)).to(images.device)

    def class_ids(self, images: torch.Tensor) -> torch.Tensor | None:
        """``(N, 3, H, W)`` normalised images -> ``(N, H, W)`` int64 class ids at input size,
        or None where only logits are available (ONNX Runtime).

        With OpenVINO the resize of the logits and the arg-max run inside the compiled graph
        (``openvino_logits_function(class_ids=True)``): the same class ids as
        ``class_indices(F.interpolate(logits))`` up to near-ties (under ``precision="bf16"``
        the tail runs in bf16 too: 0.02% of pixels differed on CamVid), in less time.
        """
        if self.runtime != "openvino":
            return None
        ids = self._openvino_class_ids(self._as_batch(images))
        ids = ids.astype(np.int64)  # a copy, off OpenVINO's buffer
        return torch.from_numpy(ids).to(images.device)

    def extra_repr(self) -> str:
        detail = f", precision={self.precision}" if self.runtime == "openvino" else ""
        return f"path={str(self.path)!r}, runtime={self.runtime}{detail}"


def load_onnx_model(
    path: str | Path,
    runtime: str = "onnxruntime",
    precision: str = "f32",
    threads: int | None = None,
) -> OnnxSegmentationModel:
    """``OnnxSegmentationModel(path, runtime, precision, threads)``, in eval mode.

    >>> import ddrnet
    >>> model = load_onnx_model("camvid_int8.onnx", runtime="openvino", precision="bf16")
    >>> labels = ddrnet.Predictor(model).predict("street.png")
    """
    return OnnxSegmentationModel(path, runtime, precision, threads).eval()
