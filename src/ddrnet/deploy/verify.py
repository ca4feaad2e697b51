"""Checking an export against the PyTorch model it came from: logits and labels on the same
inputs (``verify_onnx``, ``verify_onnx_labels``, ``verify_ncnn``, ``verify_fixed_size``),
and accuracy on a data set scored by ``ddrnet.engine.evaluate``, the loop ``ddrnet eval``
runs (``evaluate_onnx``, ``evaluate_onnx_forms``, ``evaluate_on_camvid``).

The files are run by ``ddrnet.deploy.runtime`` / ``ncnn_runtime`` / ``executorch_runtime``
/ ``aoti`` exactly as ``ddrnet predict`` and ``ddrnet eval`` run them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, Subset

from ddrnet.deploy.export import check_size, float_cpu_copy
from ddrnet.deploy.ncnn_runtime import NcnnSegmentationModel
from ddrnet.deploy.onnx_file import ExportError, file_normalisation
from ddrnet.deploy.runtime import RUNTIMES, OnnxSegmentationModel, onnx_logits, onnx_session
from ddrnet.engine.evaluate import evaluate
from ddrnet.engine.inference import normalize
from ddrnet.engine.metrics import SegmentationMetrics
from ddrnet.models.metadata import IGNORE_INDEX, normalisation

if TYPE_CHECKING:
    from ddrnet.deploy.fixed_size import FixedSizeSegmentationModel

DEFAULT_VERIFY_SIZES: tuple[tuple[int, int], ...] = ((360, 480), (361, 479), (64, 64))


def _onnx_and_pytorch_outputs(
    model: nn.Module,
    path: str | Path,
    sizes: Sequence[tuple[int, int]],
    inputs: Sequence[torch.Tensor] | None,
    batch_size: int,
    seed: int,
    labels: bool,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """For each input: the file's output (ONNX Runtime, CPU) and PyTorch's logits, resized to
    the input when the file's output is at input size. ``labels``: whether the caller
    compares class labels (a graph ending in argmax) or logits; the other kind of file is a
    ``ValueError``."""
    session = onnx_session(path)
    outputs_labels = "float" not in session.get_outputs()[0].type
    if outputs_labels and not labels:
        raise ValueError(
            f"{path}: its output is class labels, not logits; verify_onnx compares logits "
            "(verify_onnx_labels compares labels)"
        )
    if labels and not outputs_labels:
        raise ValueError(f"{path}: its output is logits; use verify_onnx")
    reference_model = float_cpu_copy(model)
    if inputs is None:
        generator = torch.Generator().manual_seed(seed)
        inputs = [
            torch.randn(batch_size, 3, *check_size("sizes entry", size), generator=generator)
            for size in sizes
        ]
    for image in inputs:
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"inputs must be (N, 3, H, W) tensors, got {tuple(image.shape)}")
        image = image.float().cpu()
        height, width = image.shape[-2:]
        expected = reference_model(image)
        actual = onnx_logits(session, image.numpy())
        if actual.shape[-2:] == (height, width) and expected.shape[-2:] != (height, width):
            expected = F.interpolate(
                expected, size=(height, width), mode="bilinear", align_corners=False
            )
        yield torch.from_numpy(actual), expected


@torch.no_grad()
def verify_onnx(
    model: nn.Module,
    path: str | Path,
    sizes: Sequence[tuple[int, int]] = DEFAULT_VERIFY_SIZES,
    *,
    inputs: Sequence[torch.Tensor] | None = None,
    batch_size: int = 1,
    seed: int = 0,
) -> float:
    """Largest absolute difference between ONNX Runtime (CPU) and PyTorch logits.

    Compares on ``inputs`` (normalised ``(N, 3, H, W)`` float tensors) when given, otherwise
    on random normal inputs ``(batch_size, 3, H, W)`` for every ``(H, W)`` in ``sizes``
    (include sizes other than the export size, and odd ones, to prove the graph is dynamic).
    Logits exported with ``upsample_to_input`` are compared with the model's logits resized
    the same way. Returns the max abs difference in logit units over all inputs.

    The difference scales with the logits: a trained model gives logits of order 10 on real
    images and float32 differences around 1e-4, but random noise is far from the data its
    BatchNorm statistics describe and can drive logits into the thousands (and the
    difference with them), so pass real images for a tolerance that means something.

    Raises ``ValueError`` for a graph that ends in argmax (``verify_onnx_labels`` checks
    those) and ``ExportError`` when an output has the wrong shape.
    """
    worst = 0.0
    pairs = _onnx_and_pytorch_outputs(model, path, sizes, inputs, batch_size, seed, labels=False)
    for actual, expected in pairs:
        if tuple(actual.shape) != tuple(expected.shape):
            raise ExportError(
                f"{path}: ONNX gives {tuple(actual.shape)}, PyTorch {tuple(expected.shape)}"
            )
        worst = max(worst, float((actual - expected).abs().max()))
    return worst


@torch.no_grad()
def verify_onnx_labels(
    model: nn.Module,
    path: str | Path,
    sizes: Sequence[tuple[int, int]] = DEFAULT_VERIFY_SIZES,
    *,
    inputs: Sequence[torch.Tensor] | None = None,
    batch_size: int = 1,
    seed: int = 0,
) -> float:
    """Fraction of pixels (0..1) where a graph that ends in argmax gives PyTorch's class,
    on the same inputs as ``verify_onnx``. Pixels whose top two logits tie within float32
    rounding may differ; anything well below 1 means a broken graph."""
    agree, total = 0, 0
    pairs = _onnx_and_pytorch_outputs(model, path, sizes, inputs, batch_size, seed, labels=True)
    for actual, expected in pairs:
        labels = expected.max(dim=1).indices  # argmax; see ddrnet.engine.inference
        if tuple(actual.shape) != tuple(labels.shape):
            raise ExportError(
                f"{path}: ONNX gives labels {tuple(actual.shape)}, PyTorch {tuple(labels.shape)}"
            )
        agree += int((actual.long() == labels).sum())
        total += labels.numel()
    return agree / total


@torch.no_grad()
def verify_ncnn(
    model: nn.Module,
    path: str | Path,
    inputs: Sequence[torch.Tensor],
    threads: int | None = None,
) -> float:
    """Largest absolute difference between the ncnn file's logits and PyTorch's (float32,
    unfolded) on ``inputs``, normalised ``(N, 3, H, W)`` tensors (use real images: see
    ``verify_onnx``). Raises ``ExportError`` when the shapes differ."""
    deployed = NcnnSegmentationModel(path, threads)
    reference = float_cpu_copy(model)
    worst = 0.0
    for image in inputs:
        image = image.float().cpu()
        expected = reference(image)
        if deployed.upsampled:
            expected = F.interpolate(
                expected, size=image.shape[-2:], mode="bilinear", align_corners=False
            )
        actual = deployed(image)
        if tuple(actual.shape) != tuple(expected.shape):
            raise ExportError(
                f"{path}: ncnn gives {tuple(actual.shape)}, PyTorch {tuple(expected.shape)}"
            )
        worst = max(worst, float((actual - expected).abs().max()))
    return worst


class Agreement(NamedTuple):
    """How an exported program's outputs compare with PyTorch float32 on the same inputs."""

    max_logit_difference: float  # largest absolute difference, in logit units
    label_agreement: float  # fraction of logit pixels (0..1) with the same arg-max class


@torch.no_grad()
def verify_fixed_size(
    model: nn.Module, deployed: FixedSizeSegmentationModel, inputs: Sequence[torch.Tensor]
) -> Agreement:
    """An exported program's logits (ExecuTorch, AOTInductor: ``deployed``, loaded with
    ``resize=False``) against PyTorch's (float32, unfolded) on ``inputs``, normalised
    ``(N, 3, H, W)`` tensors at the file's input size (use real images: see ``verify_onnx``).
    Raises ``ExportError`` when the shapes differ, ``ValueError`` when an input is not at the
    file's size (the runtime would resize it: a different comparison)."""
    reference = float_cpu_copy(model)
    worst, agree, total = 0.0, 0, 0
    for image in inputs:
        image = image.float().cpu()
        if tuple(image.shape[-2:]) != deployed.input_size:
            raise ValueError(
                f"{deployed.path} takes {deployed.input_size} inputs; got {tuple(image.shape[-2:])}"
            )
        expected = reference(image)
        if deployed.upsampled:
            expected = F.interpolate(
                expected, image.shape[-2:], mode="bilinear", align_corners=False
            )
        actual = deployed(image)
        if tuple(actual.shape) != tuple(expected.shape):
            raise ExportError(
                f"{deployed.path}: {deployed.runtime_name} gives {tuple(actual.shape)}, "
                f"PyTorch {tuple(expected.shape)}"
            )
        worst = max(worst, float((actual - expected).abs().max()))
        agree += int((actual.argmax(1) == expected.argmax(1)).sum())
        total += expected[:, 0].numel()
    return Agreement(worst, agree / max(total, 1))


def real_frames(model: nn.Module, count: int = 2) -> list[torch.Tensor]:
    """The first ``count`` bundled demo frames (CamVid, 360x480) normalised as ``model``
    expects, plus the first one resized to an odd 361x479: real inputs to check an export
    on where it is written."""
    from ddrnet.data.io import demo_frames, read_rgb

    mean, std = normalisation(model)
    images = [torch.from_numpy(read_rgb(frame)).permute(2, 0, 1)[None] for frame in demo_frames()]
    inputs = [normalize(image, mean, std) for image in images[:count]]
    if inputs:
        odd = F.interpolate(inputs[0], size=(361, 479), mode="bilinear", align_corners=False)
        inputs.append(odd)
    return inputs


def evaluate_onnx(
    path: str | Path,
    dataset: Dataset,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    num_classes: int | None = None,
    *,
    ignore_index: int = IGNORE_INDEX,
    limit: int | None = None,
    threads: int | None = None,
    runtime: str = "onnxruntime",
    openvino_precision: str = "bf16",
) -> SegmentationMetrics:
    """Segmentation metrics of an ONNX file on ``dataset``, run by ``runtime`` on the CPU
    as ``ddrnet eval`` and ``ddrnet predict`` run it (``OnnxSegmentationModel``) and scored
    by the same loop (``ddrnet.engine.evaluate``); with ``runtime="openvino"``, OpenVINO's
    float layers at ``openvino_precision`` (``"f32"`` or ``"bf16"``; int8 layers stay int8).

    ``dataset[i]`` gives ``(image, label)``: image ``(3, H, W)`` uint8 RGB tensor, label
    ``(H, W)`` int64 with ``ignore_index`` for void (``ddrnet.data.datasets`` data sets do).
    Each image is normalised with ``mean``/``std`` (default: stored in the file), run at its
    own size, the logits resized to it (bilinear, ``align_corners=False``; with OpenVINO
    inside its compiled graph) and arg-maxed. A file exported with ``argmax=True,
    upsample_to_input=True`` (labels at input size) is scored directly. ``limit`` evaluates
    the first ``limit`` samples only. ``num_classes`` defaults to the file's.
    """
    path = Path(path)
    mean, std = file_normalisation(path, mean, std)
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be 'onnxruntime' or 'openvino', got {runtime!r}")
    precision = openvino_precision if runtime == "openvino" else "f32"
    model = OnnxSegmentationModel(path, runtime, precision, threads, accept_labels=True)
    count = len(dataset) if limit is None else min(limit, len(dataset))  # type: ignore[arg-type]
    if count < 1:
        raise ValueError(f"nothing to evaluate: dataset has {len(dataset)} samples, limit={limit}")  # type: ignore[arg-type]
    return evaluate(
        model,
        Subset(dataset, range(count)),
        num_classes or model.num_classes,
        mean,
        std,
        ignore_index=ignore_index,
        progress=False,
    )


def evaluate_onnx_forms(
    forms: Sequence[tuple[str, str | Path, str, str]],
    dataset: Dataset,
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


def evaluate_on_camvid(
    model: nn.Module,
    path: str | Path,
    root: str | Path,
    limit: int | None = None,
    load: Callable[[Path], nn.Module] = NcnnSegmentationModel,
) -> tuple[float, float, int]:
    """CamVid val mIoU of ``model`` (PyTorch fp32) and of the exported file ``path`` (run by
    ``load(path)``: ncnn by default), scored by ``ddrnet.engine.evaluate`` as ``ddrnet eval``
    scores them; and the image count."""
    from ddrnet.data.camvid import camvid

    dataset = camvid(str(root), "val")
    count = min(limit or len(dataset), len(dataset))
    subset = Subset(dataset, range(count))
    mean, std = normalisation(model)
    labels = dataset.labels
    scores = []
    for candidate in (float_cpu_copy(model), load(Path(path))):
        metrics = evaluate(
            candidate,
            subset,
            labels.num_classes,
            mean,
            std,
            ignore_index=labels.ignore_index,
            progress=False,
        )
        scores.append(float(metrics.miou))  # in percent
    return scores[0], scores[1], count
