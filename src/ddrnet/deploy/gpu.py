"""NVIDIA GPU deployment: PyTorch on CUDA (float32, float16) and TensorRT engines.

The paper's speed figures are float16 (TensorRT-free, eager PyTorch) on one GPU; this module
gives the same measurement for ``ddrnet bench`` and builds TensorRT engines from our ONNX
export. Nothing here runs on a machine without a CUDA GPU: every entry point first calls
``require_cuda`` (a clear ``RuntimeError``), and the ``tensorrt`` package is imported only by
the functions that need it (``pip install tensorrt``; not a dependency of ddrnet).

Timing on a GPU: kernels are launched asynchronously, so every callable returned here
synchronises the device before it returns; ``ddrnet.deploy.benchmark`` then measures the
wall-clock time of complete forward passes, as it does on the CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ddrnet.atomic import atomic_write, remove_stale_temporaries


def require_cuda(what: str) -> torch.device:
    """The current CUDA device, or a ``RuntimeError`` naming ``what`` needed it."""
    if not torch.cuda.is_available():
        build = "a CPU-only build of PyTorch" if torch.version.cuda is None else "no visible GPU"
        raise RuntimeError(f"{what} needs an NVIDIA GPU with CUDA; this machine has {build}")
    return torch.device("cuda", torch.cuda.current_device())


def cuda_torch_function(
    model: nn.Module, image: torch.Tensor, half: bool
) -> tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor]:
    """``(fn, input)`` running ``model`` (BN already folded by the caller) on the GPU.

    ``half``: weights and input in float16 and channels-last memory format (tensor cores);
    otherwise float32 NCHW with TF32 disabled, so float32 really is float32. cuDNN picks the
    fastest algorithm per layer shape (``cudnn.benchmark``), as deployments do. ``fn`` returns
    logits on the GPU after the device has finished.
    """
    device = require_cuda("a CUDA backend")
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    model = model.to(device).eval()
    image = image.to(device)
    if half:
        model = model.half().to(memory_format=torch.channels_last)
        image = image.half().contiguous(memory_format=torch.channels_last)

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            logits = model(x)
        torch.cuda.synchronize(device)
        return logits

    return run, image


def build_tensorrt_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    input_shape: tuple[int, int, int, int],
    *,
    fp16: bool = True,
    max_input_shape: tuple[int, int, int, int] | None = None,
    workspace_gib: float = 4.0,
) -> Path:
    """Build a serialized TensorRT engine (``.engine``) from one of our ONNX files.

    ``input_shape`` ``(N, 3, H, W)`` is the shape the engine is tuned for (TensorRT's "opt"
    and "min" shape); ``max_input_shape`` allows inputs up to that size (default: the same,
    a static engine, the fastest). ``fp16`` lets TensorRT run layers in float16 where that is
    faster; the ONNX file itself stays float32. Raises ``RuntimeError`` with the ONNX parser's
    messages if TensorRT cannot read the graph, or if the build fails.
    """
    require_cuda("TensorRT")
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # TensorRT 8 needs the explicit-batch flag; TensorRT 10 is always explicit-batch and
    # deprecates it.
    explicit = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
    network = builder.create_network(0 if explicit is None else 1 << int(explicit))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * 2**30))
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    input_name = network.get_input(0).name
    profile.set_shape(input_name, input_shape, input_shape, max_input_shape or input_shape)
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT could not build an engine from {onnx_path} (see its log)")
    engine_path = Path(engine_path)
    data = bytes(serialized)
    remove_stale_temporaries(engine_path.parent, (engine_path.name,))  # of a build killed before
    atomic_write(engine_path, lambda stream: stream.write(data))
    return engine_path


def tensorrt_function(
    engine_path: str | Path, image: torch.Tensor
) -> tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor]:
    """``(fn, input)`` running a TensorRT engine on ``image`` ``(N, 3, H, W)``, moved to the
    GPU as float32.

    Input and output live in PyTorch CUDA tensors (no host copies in the timed call); the
    engine runs on PyTorch's current stream, and ``fn`` returns the output (logits, or labels
    for an ``argmax`` export) after the stream has finished; it is overwritten by the next
    call. Uses the TensorRT >= 8.5 named-tensor API.
    """
    device = require_cuda("TensorRT")
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    engine = trt.Runtime(logger).deserialize_cuda_engine(Path(engine_path).read_bytes())
    if engine is None:
        raise RuntimeError(f"TensorRT could not load the engine {engine_path}")
    context = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    outputs = [n for n in names if n not in inputs]
    if len(inputs) != 1 or len(outputs) != 1:
        raise RuntimeError(f"{engine_path}: expected one input and one output, got {names}")
    image = image.to(device=device, dtype=torch.float32).contiguous()
    if not context.set_input_shape(inputs[0], tuple(image.shape)):
        raise RuntimeError(
            f"{engine_path} was built for other input shapes than {tuple(image.shape)}"
        )
    # An in-graph argmax comes out as int64 (TensorRT 10) or int32 (TensorRT 8 narrows it).
    dtypes = {
        trt.float32: torch.float32,
        trt.float16: torch.float16,
        trt.int32: torch.int32,
        trt.uint8: torch.uint8,
    }
    dtypes.update({trt.int64: torch.int64} if hasattr(trt, "int64") else {})
    logits = torch.empty(
        tuple(context.get_tensor_shape(outputs[0])),
        dtype=dtypes[engine.get_tensor_dtype(outputs[0])],
        device=device,
    )
    context.set_tensor_address(outputs[0], logits.data_ptr())

    def run(x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        context.set_tensor_address(inputs[0], x.data_ptr())
        stream = torch.cuda.current_stream(device)
        if not context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"TensorRT failed to run {engine_path}")
        stream.synchronize()
        return logits

    # The closure keeps engine and context alive as long as the function lives.
    run.engine, run.context = engine, context  # type: ignore[attr-defined]
    return run, image
