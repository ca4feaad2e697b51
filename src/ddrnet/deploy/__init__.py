"""Deployment: ONNX / TorchScript / TensorRT / ncnn / ExecuTorch / AOTInductor export, BN
folding, INT8 quantisation, speed benchmarks, and exported ONNX, ncnn, ExecuTorch and
AOTInductor files run as models (``load_onnx_model``, ``load_ncnn_model``,
``load_executorch_model``, ``load_aoti_model``).

Data flows one way, export -> file -> runtime: ``export`` / ``ncnn_export`` / ``quantize`` /
``executorch_export`` write files, ``onnx_file`` reads what a file says about itself,
``runtime`` / ``ncnn_runtime`` / ``executorch_runtime`` run files (sessions, OpenVINO plans,
``nn.Module`` wrappers; ``fixed_size``: what programs of one input size share), ``aoti``
writes and runs AOTInductor packages, ``verify`` checks a file against PyTorch and scores
it, ``backends`` + ``bench`` time every form.

onnx, onnxruntime and openvino are optional (``pip install ddrnet[deploy]``), as are pnnx and
ncnn (``pip install ddrnet[edge]``); they are imported by the functions that use them, so
importing this package needs only PyTorch.
"""

from __future__ import annotations

from ddrnet.deploy.aoti import AotiSegmentationModel, export_aoti, load_aoti_model
from ddrnet.deploy.backends import (
    BACKENDS,
    GPU_BACKENDS,
    Runner,
    build_runner,
    check_backends,
    default_backends,
)
from ddrnet.deploy.bench import (
    benchmark,
    float32_conv_peak,
    measure_conv_peak_gflops,
    measured_peaks,
    run_benchmarks,
)
from ddrnet.deploy.executorch_export import export_executorch
from ddrnet.deploy.executorch_runtime import ExecutorchSegmentationModel, load_executorch_model
from ddrnet.deploy.export import export_onnx, export_torchscript
from ddrnet.deploy.formats import (
    EXPORTED_FORMATS,
    ExportedFormat,
    exported_format,
    is_aoti_file,
    is_executorch_file,
    is_ncnn_file,
    is_onnx_file,
)
from ddrnet.deploy.gpu import build_tensorrt_engine, tensorrt_function
from ddrnet.deploy.ncnn_export import export_ncnn
from ddrnet.deploy.ncnn_runtime import NcnnSegmentationModel, load_ncnn_model
from ddrnet.deploy.onnx_file import (
    OPENVINO_FIXED_SIZE_KEY,
    ExportError,
    OnnxFileProperties,
    onnx_file_properties,
    openvino_fixed_size_ok,
    read_onnx_metadata,
)
from ddrnet.deploy.quantize import (
    ImageCalibrationReader,
    average_pools_as_depthwise_convs,
    concat_convolution_blocks,
    load_calibration_images,
    quantize_onnx_int8,
)
from ddrnet.deploy.runtime import (
    OnnxSegmentationModel,
    load_onnx_model,
    onnx_session,
    openvino_logits_function,
)
from ddrnet.deploy.verify import (
    evaluate_onnx,
    evaluate_onnx_forms,
    verify_fixed_size,
    verify_ncnn,
    verify_onnx,
    verify_onnx_labels,
)
from ddrnet.models.bn_folding import conv_bn_pairs, fuse_conv_bn

__all__ = [
    "BACKENDS",
    "GPU_BACKENDS",
    "OPENVINO_FIXED_SIZE_KEY",
    "AotiSegmentationModel",
    "ExecutorchSegmentationModel",
    "ExportError",
    "ImageCalibrationReader",
    "NcnnSegmentationModel",
    "OnnxFileProperties",
    "OnnxSegmentationModel",
    "Runner",
    "average_pools_as_depthwise_convs",
    "benchmark",
    "build_runner",
    "build_tensorrt_engine",
    "check_backends",
    "concat_convolution_blocks",
    "conv_bn_pairs",
    "default_backends",
    "evaluate_onnx",
    "evaluate_onnx_forms",
    "export_aoti",
    "export_executorch",
    "export_ncnn",
    "export_onnx",
    "export_torchscript",
    "fuse_conv_bn",
    "EXPORTED_FORMATS",
    "ExportedFormat",
    "exported_format",
    "is_aoti_file",
    "is_executorch_file",
    "is_ncnn_file",
    "is_onnx_file",
    "load_aoti_model",
    "load_calibration_images",
    "load_executorch_model",
    "load_ncnn_model",
    "load_onnx_model",
    "float32_conv_peak",
    "measure_conv_peak_gflops",
    "measured_peaks",
    "onnx_file_properties",
    "onnx_session",
    "openvino_fixed_size_ok",
    "openvino_logits_function",
    "quantize_onnx_int8",
    "read_onnx_metadata",
    "run_benchmarks",
    "tensorrt_function",
    "verify_fixed_size",
    "verify_ncnn",
    "verify_onnx",
    "verify_onnx_labels",
]
