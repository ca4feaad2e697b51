"""One way to get a runnable model from whatever the user names: ``ddrnet.load``.

>>> import ddrnet
>>> model = ddrnet.load()                               # the bundled CamVid model
>>> model = ddrnet.load("camvid_ddrnet23_slim_train")   # a bundled model by name
>>> model = ddrnet.load("runs/camvid/best.safetensors")  # a model file (or .pt/.pth)
>>> model = ddrnet.load("camvid.onnx", runtime="openvino", amp="bf16")  # an exported file
>>> from ddrnet.loading import inference_setup
>>> device, amp_dtype = inference_setup(model, "auto", "bf16")  # where and how to run it

Every model that comes back carries ``model.metadata`` (classes, palette, normalisation) and
takes normalised ``(N, 3, H, W)`` images, so ``ddrnet.Predictor``, evaluation, prediction
and serving run any of them. Exported files (ONNX, ncnn) run on the CPU through their
runtime; what needs the network's insides (export, bench, prune, feature maps) needs the
PyTorch model: ``check_pytorch_file`` refuses exported files for those by name.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from ddrnet.engine.device import pick_device, resolve_precision
from ddrnet.errors import UsageError
from ddrnet.hardware import cpu_has_native_bf16
from ddrnet.models import DDRNetClassifier, create_model, weights

logger = logging.getLogger(__name__)


def default_checkpoint() -> str:
    """The path of the bundled default model (``DDRNet23Slim_Weights.DEFAULT``), or a
    ``UsageError`` when this installation bundles none."""
    try:
        return str(weights.bundled_model_path())
    except FileNotFoundError:
        raise UsageError(
            "no --checkpoint given and this installation bundles no model: give one"
        ) from None


def load(
    source: str | Path | None = None,
    *,
    model: str | None = None,
    runtime: str | None = None,
    amp: str = "none",
    num_classes: int | None = None,
    streams: int = 1,
) -> nn.Module:
    """The model that ``source`` names, in eval mode, with ``model.metadata``.

    Args:
        source: a model file (``.safetensors``, ``.pt``, ``.pth``; official DDRNet
            checkpoints too), a bundled model's name (``camvid_ddrnet23_slim_train``), an
            exported ``.onnx`` file or an ncnn ``.param`` file. ``None``: the bundled default
            model, or with ``model`` a fresh network with random weights.
        model: the architecture (``ddrnet.list_models()``), for files without metadata.
        runtime: for exported files, ``"onnxruntime"`` (the default for ``.onnx``),
            ``"openvino"`` or ``"ncnn"`` (the only one for ``.param``); a ``UsageError``
            for a PyTorch model, whose device and precision are chosen when it runs.
        amp: for exported files, the precision the runtime prepares them for
            (``resolve_precision``: OpenVINO's float layers in bf16 for ``"bf16"``, and for
            ``"auto"`` on CPUs with native bf16); PyTorch models take it when they run
            (``inference_setup``).
        num_classes: PyTorch models: re-initialise the class-dependent layers for this many
            classes (``ddrnet.create_model``).
        streams: for ``.onnx`` files, how many inferences may run at once, each on its share
            of the threads (``SegmentationRunner(streams=...)``). A PyTorch model needs
            nothing at loading; ncnn and ExecuTorch files run one at a time (the runner
            refuses more).

    Errors a user can fix (a missing or unreadable file, options that do not fit the file)
    are ``DDRNetError`` subclasses that name the file.
    """
    from ddrnet.deploy.formats import ONNX, exported_format, format_of_runtime

    if source is None and model is None:
        source = default_checkpoint()
    # The file's suffix decides (a runtime that does not run it is refused there); else a
    # runtime of one format's own (which then says what the file should be).
    fmt = exported_format(source) or (format_of_runtime(runtime) if runtime else None)
    if fmt is ONNX:
        return _load_onnx(str(source), model, runtime, amp, streams)
    if fmt is not None:
        return _load_own_format(fmt.runtimes[0], str(source or model), model, runtime, amp)
    if runtime is not None:
        raise UsageError(
            f"--runtime applies to exported .onnx files; {source or model} is a PyTorch model "
            "(use --amp and --device for it)"
        )
    return create_model(model, checkpoint=source, num_classes=num_classes)


def load_segmenter(
    source: str | Path | None = None,
    *,
    model: str | None = None,
    runtime: str | None = None,
    amp: str = "none",
    streams: int = 1,
) -> nn.Module:
    """``load`` for the commands whose labels are the point (eval, predict, serve): it
    refuses, with a ``UsageError``, what would only give meaningless labels: a network with
    random weights (``model`` without ``source``) and DDRNet's ImageNet classifier."""
    if source is None and model is not None:
        raise UsageError(
            f"--model {model} without --checkpoint is a network with random weights; give "
            "--checkpoint (a model file or a bundled model's name)"
        )
    loaded = load(source, model=model, runtime=runtime, amp=amp, streams=streams)
    if isinstance(loaded, DDRNetClassifier):
        raise UsageError(
            f"{source}: an ImageNet classifier (DDRNet's pre-training form, "
            f"{type(loaded).__name__}), not a segmentation model"
        )
    return loaded


def _load_onnx(
    path: str, model: str | None, runtime: str | None, amp: str, streams: int = 1
) -> nn.Module:
    """An ``OnnxSegmentationModel`` of ``path`` run by ``runtime`` (default onnxruntime)."""
    from ddrnet.deploy.formats import ONNX
    from ddrnet.deploy.runtime import load_onnx_model, openvino_precision

    runtime = runtime or ONNX.runtimes[0]
    if runtime not in ONNX.runtimes:
        raise UsageError(
            f"--runtime {runtime}: {path} is an ONNX file; run it with --runtime "
            f"{' or '.join(ONNX.runtimes)} (or without --runtime)"
        )
    if model is not None:
        raise UsageError(f"--model does not apply to {path}: an ONNX file is its own model")
    precision = resolve_precision(amp, torch.device("cpu"), runtime, option="--amp")
    if amp == "bf16" and not cpu_has_native_bf16():
        logger.warning(
            "--amp bf16: this CPU has no native bfloat16 (AVX512-BF16 or AMX); OpenVINO runs "
            "the float layers of %s in float32 here",
            path,
        )
    try:
        return load_onnx_model(path, runtime, openvino_precision(precision), streams=streams)
    except ImportError as error:
        package = "openvino" if runtime == "openvino" else "onnxruntime and onnx"
        raise UsageError(
            f"running {path} with {runtime} needs {package} ({error}): pip install 'ddrnet[deploy]'"
        ) from None


def _load_own_format(
    runtime_name: str, path: str, model: str | None, runtime: str | None, amp: str
) -> nn.Module:
    """The file ``path`` run by ``runtime_name`` (a key of ``_OWN_FORMATS``, picked by
    the suffix or by ``--runtime``); a ``UsageError`` naming the file for another format,
    runtime or precision; the runtime's own error for a missing companion file or package."""
    from ddrnet.deploy import aoti, executorch_runtime, ncnn_runtime
    from ddrnet.deploy.formats import format_of_runtime

    loader = {
        "aoti": aoti.load_aoti_model,
        "ncnn": ncnn_runtime.load_ncnn_model,
        "executorch": executorch_runtime.load_executorch_model,
    }[runtime_name]
    fmt = format_of_runtime(runtime_name)
    if runtime not in (None, runtime_name):
        raise UsageError(
            f"--runtime {runtime}: {path} is an {fmt.label} file; run it with --runtime "
            f"{runtime_name} (or without --runtime)"
        )
    if not fmt.names(path):
        raise UsageError(
            f"--runtime {runtime_name}: {path} is not an {fmt.file_kind}; export one with "
            f"{fmt.export_hint}"
        )
    if model is not None and model != path:
        raise UsageError(f"--model does not apply to {path}: an {fmt.label} file is its own model")
    resolve_precision(amp, torch.device("cpu"), runtime_name, option="--amp")  # float32/INT8
    return loader(path)


def runtime_of(model: nn.Module) -> str | None:
    """The runtime that runs ``model`` when it is an exported file (``"onnxruntime"``,
    ``"openvino"``, ``"ncnn"``, ``"executorch"``, ``"aoti"``), or None for a PyTorch
    network."""
    from ddrnet.deploy.fixed_size import FixedSizeSegmentationModel
    from ddrnet.deploy.ncnn_runtime import NcnnSegmentationModel
    from ddrnet.deploy.runtime import OnnxSegmentationModel

    if isinstance(model, FixedSizeSegmentationModel):
        return model.runtime_name
    if isinstance(model, NcnnSegmentationModel):
        return "ncnn"
    if isinstance(model, OnnxSegmentationModel):
        return model.runtime
    return None


def inference_setup(
    model: nn.Module, device: str = "auto", amp: str = "none"
) -> tuple[torch.device, torch.dtype | None]:
    """Where to run ``model`` (from ``load``) and its autocast dtype (None: float32), from
    the ``device`` name (``"auto"``, ``"cpu"``, ``"cuda:1"``) and the ``amp`` setting.

    An exported file runs on the CPU (``"auto"`` picks it; a GPU is a ``UsageError``) in the
    precision its runtime took at ``load``, so its autocast dtype is None.
    """
    runtime = runtime_of(model)
    try:
        where = pick_device(device) if runtime is None else _named_device(device)
    except UsageError as error:
        raise UsageError(f"--device {device}: {error}; use --device cpu or auto") from None
    precision = resolve_precision(amp, where, runtime, option="--amp")
    return where, precision if runtime is None else None


def _named_device(name: str) -> torch.device:
    """The device ``name`` means without asking whether this machine has it; ``"auto"`` is
    the CPU (for exported files, which run there)."""
    try:
        return torch.device("cpu" if name == "auto" else name)
    except RuntimeError as error:  # torch's own message lists the device types
        raise UsageError(str(error)) from None


def check_pytorch_file(source: str | Path | None, command: str) -> None:
    """Refuse an exported file (``.onnx``, ncnn ``.param``, ExecuTorch ``.pte``, AOTInductor
    ``.pt2``) where
    ``command`` (e.g. ``"ddrnet export"``) needs the PyTorch network itself: a ``UsageError``
    naming it."""
    from ddrnet.deploy.formats import EXPORTED_FORMATS, exported_format

    fmt = exported_format(source)
    if fmt is not None:
        runnable = ", ".join(f"{each.label} {each.suffix}" for each in EXPORTED_FORMATS)
        raise UsageError(
            f"{command} works on the PyTorch model (.safetensors/.pt/.pth), not on the "
            f"exported {fmt.label} file {source}; predict, eval and serve run {runnable} files"
        )
