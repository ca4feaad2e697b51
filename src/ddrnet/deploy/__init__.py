"""Deployment: ONNX / TorchScript / TensorRT / ncnn export, BN folding, INT8 quantisation,
speed benchmarks, and exported ONNX and ncnn files run as models (``load_onnx_model``,
``load_ncnn_model``).

onnx, onnxruntime and openvino are optional (``pip install ddrnet[deploy]``), as are pnnx and
ncnn (``pip install ddrnet[edge]``); they are imported by the functions that use them, so
importing this package needs only PyTorch.
"""

from __future__ import annotations

from ddrnet.deploy.bench import (
    BACKENDS,
    GPU_BACKENDS,
    Runner,
    benchmark,
    build_runner,
    check_backends,
    default_backends,
    float32_conv_peak,
    measure_conv_peak_gflops,
    measured_peaks,
    run_benchmarks,
)
from ddrnet.deploy.export import (
    OPENVINO_FIXED_SIZE_KEY,
    ExportError,
    OnnxFileProperties,
    export_onnx,
    export_torchscript,
    onnx_file_properties,
    onnx_session,
    read_onnx_metadata,
    verify_onnx,
    verify_onnx_labels,
)
from ddrnet.deploy.gpu import build_tensorrt_engine, tensorrt_function
from ddrnet.deploy.ncnn_export import export_ncnn, verify_ncnn
from ddrnet.deploy.ncnn_runtime import NcnnSegmentationModel, is_ncnn_file, load_ncnn_model
from ddrnet.deploy.quantize import (
    ImageCalibrationReader,
    average_pools_as_depthwise_convs,
    concat_convolution_blocks,
    evaluate_onnx,
    evaluate_onnx_forms,
    load_calibration_images,
    openvino_fixed_size_ok,
    openvino_logits_function,
    quantize_onnx_int8,
)
from ddrnet.deploy.runtime import OnnxSegmentationModel, is_onnx_file, load_onnx_model
from ddrnet.models.fusion import conv_bn_pairs, fuse_conv_bn

__all__ = [
    "BACKENDS",
    "GPU_BACKENDS",
    "OPENVINO_FIXED_SIZE_KEY",
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
    "export_ncnn",
    "export_onnx",
    "export_torchscript",
    "fuse_conv_bn",
    "is_ncnn_file",
    "is_onnx_file",
    "load_calibration_images",
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
    "verify_ncnn",
    "verify_onnx",
    "verify_onnx_labels",
]
