"""Where a model runs and in what precision: the device a name means (``--device``,
``train.device``), the float dtype an ``amp`` setting gives on it, for PyTorch (autocast) and
for exported files run by ONNX Runtime, OpenVINO, ncnn, ExecuTorch or AOTInductor."""

from __future__ import annotations

import logging

import torch

from ddrnet.choices import EXPORTED_RUNTIMES, OWN_FORMAT_RUNTIMES
from ddrnet.errors import UsageError
from ddrnet.hardware import cpu_has_native_bf16

logger = logging.getLogger(__name__)


def pick_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; any other name as given.

    Raises ``UsageError`` (a ``ValueError``) for a name torch does not know, for a CUDA
    device this machine does not have and for any other accelerator (``mps``, ``xpu``...)
    that this torch build cannot use here (callers add the option's name to the message).
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:  # torch's own message lists the device types
        raise UsageError(str(error)) from None
    if device.type == "cuda":
        available = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= available:
            raise UsageError(
                f"this machine has {available} usable CUDA device(s) (torch {torch.__version__})"
            )
    elif device.type != "cpu" and not _accelerator_available(device.type):
        raise UsageError(f"no usable {device.type} device here (torch {torch.__version__})")
    return device


def _accelerator_available(kind: str) -> bool:
    """Whether torch can run on accelerators of ``kind`` (``"mps"``, ``"xpu"``...) here: its
    backend module says so. Types without one (``meta``: no data, ``vulkan``, ``hip`` in a
    build for another platform) cannot run a model."""
    for module in (getattr(torch.backends, kind, None), getattr(torch, kind, None)):
        is_available = getattr(module, "is_available", None)
        if callable(is_available):
            return bool(is_available())
    return False


AMP_SETTINGS = ("auto", "none", "bf16", "fp16")


def resolve_precision(
    amp: str, device: torch.device, runtime: str | None = None, option: str = "amp"
) -> torch.dtype | None:
    """The dtype that the float layers compute in (None: float32) under the ``amp`` setting
    on ``device``, for a PyTorch network (``runtime=None``: the autocast dtype) or for an
    exported file run by ``runtime`` (one of ``EXPORTED_RUNTIMES``, on the CPU); ``option``
    names the setting in messages (``"train.amp"``, ``"--amp"``).

    PyTorch, ``"auto"``: bfloat16 on CPUs that compute it natively (AVX512-BF16, AMX; see
    ``ddrnet.hardware``) and float32 on other CPUs, where bf16 is emulated: a DDRNet-23-slim
    training step ran 0.32 img/s in bf16 against 3.5 in float32 on an AMD EPYC (Zen 2,
    AVX2). On CUDA, bfloat16 where the GPU supports it (Ampere and later), else float16.
    An explicit ``"bf16"`` on a CPU without native bf16 is obeyed with a warning; ``"fp16"``
    on a CPU is a ``UsageError``.

    Exported files: OpenVINO runs the float layers in bf16 for ``"bf16"``, and for
    ``"auto"`` where the CPU computes it natively; ONNX Runtime and ncnn run float32 only,
    so ``"bf16"`` (and ``"fp16"`` anywhere) is a ``UsageError`` there, as is a GPU device.
    """
    if amp not in AMP_SETTINGS:
        raise UsageError(f"{option}={amp}: choose one of {', '.join(AMP_SETTINGS)}")
    if runtime is not None:
        return _exported_precision(amp, device, runtime, option)
    if amp == "none":
        return None
    if amp == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "cpu" and cpu_has_native_bf16():
            return torch.bfloat16
        return None
    if amp == "fp16":
        if device.type == "cpu":
            raise UsageError(f"{option}=fp16 needs CUDA; on a CPU use bf16, or auto")
        return torch.float16
    if device.type == "cpu" and not cpu_has_native_bf16():
        logger.warning(
            "%s=bf16: this CPU has no native bfloat16 (AVX512-BF16 or AMX), so bf16 is "
            "emulated and runs several times slower than float32 (a training step: 10x "
            "slower on an AMD Zen 2); %s=auto picks float32 here",
            option,
            option,
        )
    return torch.bfloat16


def _exported_precision(
    amp: str, device: torch.device, runtime: str, option: str
) -> torch.dtype | None:
    """``resolve_precision`` for an exported file run by ``runtime`` on the CPU (no side
    effects: ``ddrnet.load`` and the choice of device both ask it)."""
    if runtime not in EXPORTED_RUNTIMES:
        raise UsageError(f"runtime {runtime!r}: choose one of {', '.join(EXPORTED_RUNTIMES)}")
    if device.type != "cpu":
        raise UsageError(
            f"--device {device}: exported files run on the CPU here; for NVIDIA GPUs use the "
            "PyTorch model file or `ddrnet export --format tensorrt`"
        )
    if runtime in OWN_FORMAT_RUNTIMES:
        if amp not in ("none", "auto"):
            raise UsageError(
                f"{option} {amp}: {runtime} files run in the precision they were exported in "
                "(float32, or INT8 when quantised)"
            )
        return None
    if amp == "fp16" or (amp == "bf16" and runtime == "onnxruntime"):
        raise UsageError(
            f"{option} {amp} with --runtime {runtime}: ONNX files run in float32 (or INT8 when "
            "quantised); for bf16 use --runtime openvino --amp bf16"
        )
    native = runtime == "openvino" and cpu_has_native_bf16()
    return torch.bfloat16 if amp == "bf16" or (amp == "auto" and native) else None


def autocast(device: torch.device, amp_dtype: torch.dtype | None) -> torch.autocast:
    """Autocast to ``amp_dtype`` on ``device``'s type, or a disabled one for ``None``."""
    return torch.autocast(
        device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
    )
