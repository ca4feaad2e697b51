"""Deployment: ONNX / TorchScript / TensorRT export, BN folding, INT8 quantisation, speed
benchmarks, and exported ONNX files run as models (``load_onnx_model``).

onnx, onnxruntime and openvino are optional (``pip install ddrnet[deploy]``); they are
imported by the functions that use them, so importing this package needs only PyTorch.
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
    "export_onnx",
    "export_torchscript",
    "fuse_conv_bn",
    "is_onnx_file",
    "load_calibration_images",
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
    "verify_onnx",
    "verify_onnx_labels",
]
