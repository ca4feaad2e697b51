"""The backends ``ddrnet bench`` times: one model made ready to call in each of its deployable
forms, built by the same export, quantisation and runtime code that deploys it.

``build_runner`` turns a model into a ready-to-call ``Runner``: eager PyTorch (float32,
channels-last, bfloat16 autocast), BN-folded, ``torch.compile``, ONNX Runtime FP32 and INT8
(``onnx_session``), OpenVINO (``openvino_logits_function``), ncnn, and on NVIDIA GPUs PyTorch
float32/float16 and TensorRT (``gpu.py``). ``ddrnet.deploy.bench`` times them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ddrnet.atomic import scratch_folder
from ddrnet.choices import BACKENDS, GPU_BACKENDS
from ddrnet.deploy.export import export_onnx, float_cpu_copy
from ddrnet.deploy.quantize import quantize_onnx_int8
from ddrnet.deploy.runtime import onnx_session, openvino_logits_function
from ddrnet.errors import UsageError
from ddrnet.limits import check_min_side
from ddrnet.models.bn_folding import fuse_conv_bn
from ddrnet.models.metadata import normalisation

REFERENCE_BACKEND = "eager"


# Backends that compile a program for one input size (``ddrnet.deploy.fixed_size``).
FIXED_SIZE_BACKENDS = ("executorch", "executorch_int8", "aoti")


def check_backends(names: Sequence[str], input_size: tuple[int, int] | None = None) -> list[str]:
    """``names`` as a list, or a ``UsageError`` naming those that are not in ``BACKENDS``,
    or the one-size programs an ``input_size`` under ``MIN_WINDOW`` pixels a side cannot be
    compiled for (called before anything is measured)."""
    unknown = [name for name in names if name not in BACKENDS]
    if unknown:
        raise UsageError(f"unknown backends {unknown}; valid: {', '.join(BACKENDS)}")
    fixed = [name for name in names if name in FIXED_SIZE_BACKENDS]
    if fixed:
        check_min_side(input_size, "--size", f"{', '.join(fixed)}, which compile one input size")
    return list(names)


def default_backends() -> list[str]:
    """The backends ``ddrnet bench`` times by default: only those that run well here.

    bf16 autocast only where the CPU computes bf16 natively (emulated, it ran ~10x slower
    than float32 on an AMD Zen 2), OpenVINO where it is installed, ncnn where ncnn and pnnx
    are (its Winograd convolutions made it the fastest fp32 form on a Zen 4: 2.1x eager,
    1.5x ONNX Runtime at 360x480), the GPU backends where CUDA is available."""
    from importlib.util import find_spec

    from ddrnet.hardware import cpu_has_native_bf16

    names = ["eager", "bn_folded"]
    names += ["eager_bf16_channels_last"] if cpu_has_native_bf16() else []
    names += ["ort", "ort_int8"] if find_spec("onnxruntime") is not None else []
    names += ["openvino"] if find_spec("openvino") is not None else []
    names += ["ncnn"] if find_spec("ncnn") is not None and find_spec("pnnx") is not None else []
    return names + (list(GPU_BACKENDS) if torch.cuda.is_available() else [])


@dataclass
class Runner:
    """A backend ready to time: ``fn(*inputs)`` runs one forward pass.

    ``output()`` returns that pass's logits as a float32 ``torch.Tensor`` (for checking the
    backend against eager float32); ``keep`` holds objects that must outlive the runner
    (temporary folders with exported files).
    """

    name: str
    fn: Callable[..., Any]
    inputs: tuple[Any, ...]
    description: str
    keep: list[Any] = field(default_factory=list)

    def output(self) -> torch.Tensor:
        """Logits of one pass, float32 on the CPU."""
        result = self.fn(*self.inputs)
        if isinstance(result, (list, tuple)):
            result = result[0]
        if isinstance(result, np.ndarray):
            result = torch.from_numpy(result)
        return result.float().cpu()


def torch_call(
    module: nn.Module, image: torch.Tensor, bf16: bool = False, channels_last: bool = False
) -> tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor]:
    """``(fn, input)`` running ``module`` without autograd, optionally under bfloat16
    autocast and with module and input in channels-last memory format."""
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
        image = image.contiguous(memory_format=torch.channels_last)

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            return module(x)

    return run, image


def _torch_runner(
    name: str,
    module: nn.Module,
    image: torch.Tensor,
    bf16: bool = False,
    channels_last: bool = False,
) -> Runner:
    fn, image = torch_call(module, image, bf16, channels_last)
    return Runner(name, fn, (image,), BACKENDS[name])


def _timing_calibration(images: Sequence[Any] | None, size: tuple[int, int]) -> Sequence[Any]:
    """``images`` for an INT8 backend's calibration, or without them two noise images of
    ``size`` (height, width): speed does not depend on the activation ranges."""
    if images is not None:
        return images
    generator = np.random.default_rng(0)
    return [generator.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(2)]


def _onnx_runner(
    name: str,
    model: nn.Module,
    image: torch.Tensor,
    threads: int,
    calibration_images: Sequence[Any] | None,
) -> Runner:
    scratch = scratch_folder("bench")
    input_size = (int(image.shape[-2]), int(image.shape[-1]))
    path = export_onnx(model, Path(scratch.name) / "model.onnx", input_size)
    if name in ("ort_int8", "openvino_int8"):
        mean, std = normalisation(model)
        path = quantize_onnx_int8(
            path,
            Path(scratch.name) / "model_int8.onnx",
            _timing_calibration(calibration_images, input_size),
            mean,
            std,
            input_size,
        )
    array = image.numpy()
    if name.startswith("openvino"):
        # The INT8 model's quantised convolutions run in int8 whatever the hint; the hint sets
        # the precision of what stays in floating point (resizes, softmax-free head, DAPPM).
        precision = "f32" if name == "openvino" else "bf16"
        run_openvino = openvino_logits_function(path, threads, precision, array.shape)
        return Runner(name, run_openvino, (array,), BACKENDS[name], keep=[scratch])
    session = onnx_session(path, threads=threads)
    input_name = session.get_inputs()[0].name

    def run_ort(x: np.ndarray) -> Any:
        return session.run(None, {input_name: x})

    return Runner(name, run_ort, (array,), BACKENDS[name], keep=[scratch, session])


def build_runner(
    backend: str,
    model: nn.Module,
    input_size: tuple[int, int] = (360, 480),
    *,
    batch_size: int = 1,
    threads: int | None = None,
    calibration_images: Sequence[Any] | None = None,
    seed: int = 0,
) -> Runner:
    """Prepare ``backend`` (a key of ``BACKENDS``) for ``model`` on a fixed random input
    ``(batch_size, 3, H, W)`` float32, ``input_size = (H, W)`` in pixels.

    Each runner works on its own copy of the model. ``threads``: ONNX Runtime / OpenVINO
    threads, by default ``torch.get_num_threads()`` so every backend gets the same cores.
    ``calibration_images`` (``(H, W, 3)`` uint8 RGB) calibrate ``ort_int8``; without them
    noise images are used, fine for timing but not for accuracy. ``compile`` compiles (and
    runs once) here, so a compilation failure raises from this function.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
    threads = threads or torch.get_num_threads()
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn(batch_size, 3, *input_size, generator=generator)
    if backend in ("eager", "eager_channels_last", "eager_bf16", "eager_bf16_channels_last"):
        return _torch_runner(
            backend,
            float_cpu_copy(model),
            image,
            bf16="bf16" in backend,
            channels_last="channels_last" in backend,
        )
    if backend in ("bn_folded", "compile"):
        folded = fuse_conv_bn(model)
        if backend == "bn_folded":
            return _torch_runner(backend, folded, image)
        runner = _torch_runner(backend, torch.compile(folded, dynamic=False), image)
        runner.fn(*runner.inputs)  # compile now, inside the caller's error handling
        return runner
    if backend in GPU_BACKENDS:
        return _gpu_runner(backend, model, image)
    if backend == "ncnn":
        return _ncnn_runner(model, image, threads)
    if backend.startswith("executorch"):
        return _executorch_runner(backend, model, image, threads, calibration_images)
    if backend == "aoti":
        return _aoti_runner(model, image)
    return _onnx_runner(backend, model, image, threads, calibration_images)


def _gpu_runner(name: str, model: nn.Module, image: torch.Tensor) -> Runner:
    from ddrnet.deploy import gpu

    gpu.require_cuda(f"backend {name!r}")
    if name in ("cuda", "cuda_fp16"):
        fn, image = gpu.cuda_torch_function(fuse_conv_bn(model), image, half=name == "cuda_fp16")
        return Runner(name, fn, (image,), BACKENDS[name])
    scratch = scratch_folder("bench")
    input_size = (int(image.shape[-2]), int(image.shape[-1]))
    onnx_path = export_onnx(
        model, Path(scratch.name) / "model.onnx", input_size, batch_size=int(image.shape[0])
    )
    engine = gpu.build_tensorrt_engine(
        onnx_path, Path(scratch.name) / "model.engine", tuple(image.shape), fp16=True
    )
    fn, image = gpu.tensorrt_function(engine, image)
    return Runner(name, fn, (image,), BACKENDS[name], keep=[scratch])


def _ncnn_runner(model: nn.Module, image: torch.Tensor, threads: int) -> Runner:
    """The model exported with pnnx, run by ncnn in float32 with its Winograd 3x3 and
    packed layouts (its defaults). ``image``: the ``(N, 3, H, W)`` input."""
    from ddrnet.deploy.ncnn_export import export_ncnn
    from ddrnet.deploy.ncnn_runtime import NcnnSegmentationModel

    scratch = scratch_folder("bench-ncnn")
    input_size = (int(image.shape[-2]), int(image.shape[-1]))
    path = export_ncnn(model, Path(scratch.name) / "model.ncnn.param", input_size)
    deployed = NcnnSegmentationModel(path, threads)
    array = np.ascontiguousarray(image.numpy())

    def run(x: np.ndarray) -> np.ndarray:
        return np.stack([deployed._run(one) for one in x])  # ncnn runs one image at a time

    return Runner("ncnn", run, (array,), BACKENDS["ncnn"], keep=[scratch, deployed])


def _executorch_runner(
    name: str,
    model: nn.Module,
    image: torch.Tensor,
    threads: int,
    calibration_images: Sequence[Any] | None,
) -> Runner:
    """The model exported for ExecuTorch's XNNPACK delegate at ``image``'s size (float32, or
    INT8 calibrated on ``calibration_images``, noise without them), run with ``threads``."""
    from ddrnet.deploy.executorch_export import export_executorch
    from ddrnet.deploy.executorch_runtime import ExecutorchSegmentationModel

    size = (int(image.shape[-2]), int(image.shape[-1]))
    int8 = name == "executorch_int8"
    calibration = _timing_calibration(calibration_images, size) if int8 else None
    scratch = scratch_folder("bench-executorch")
    path = export_executorch(model, Path(scratch.name) / "model.pte", size, int8, calibration)
    deployed = ExecutorchSegmentationModel(path, threads)
    return Runner(name, deployed, (image,), BACKENDS[name], keep=[scratch, deployed])


def _aoti_runner(model: nn.Module, image: torch.Tensor) -> Runner:
    """The model compiled by AOTInductor at ``image``'s size (float32, portable kernels), run
    on PyTorch's threads."""
    from ddrnet.deploy.aoti import AotiSegmentationModel, export_aoti

    size = (int(image.shape[-2]), int(image.shape[-1]))
    scratch = scratch_folder("bench-aoti")
    path = export_aoti(model, Path(scratch.name) / "model.pt2", size)
    deployed = AotiSegmentationModel(path)
    return Runner("aoti", deployed, (image,), BACKENDS["aoti"], keep=[scratch, deployed])
