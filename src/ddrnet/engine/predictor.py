"""``Predictor``: RGB images in, label maps at input resolution out, for every kind of model.

The one inference path: ``ddrnet.Predictor`` (the public API), evaluation
(``ddrnet.engine.evaluate``), ``ddrnet predict`` and ``ddrnet serve`` all segment through
it. It takes a PyTorch ``DDRNet`` or an exported file behind the same ``nn.Module``
interface (``ddrnet.deploy.runtime.OnnxSegmentationModel`` for ONNX Runtime and OpenVINO,
``ddrnet.deploy.ncnn_runtime.NcnnSegmentationModel``), and applies the model's own
normalisation, test-time augmentation (scales, flip) and sliding windows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ddrnet.engine.device import autocast
from ddrnet.engine.inference import (
    model_num_classes,
    normalize,
    segment_class_ids,
    segment_logits,
    to_fast_layout,
    upsampled_class_ids,
    upsampled_winning_class,
    winning_class,
)
from ddrnet.engine.temporal import TemporalSmoother
from ddrnet.errors import UsageError
from ddrnet.limits import DEFAULT_MAX_PIXELS, check_pixels, check_scales, check_window
from ddrnet.models.metadata import normalisation

ImageInput = np.ndarray | str | Path
# How a caller lets larger images through, in the refusal of one over the cap.
MAX_PIXELS_HINT = "Predictor(max_pixels=...) raises it"


def label_dtype(num_classes: int) -> type[np.integer]:
    """The dtype of label maps for ``num_classes`` classes: uint8 up to 256, else int32."""
    return np.uint8 if num_classes <= 256 else np.int32


def unknown_label(num_classes: int) -> int:
    """The label value of pixels left unknown (``Predictor(min_confidence=...)``): 255, the
    data sets' void value, for up to 255 classes; 65535, the largest a 16-bit label PNG
    holds, for 257 to 65535. With exactly 256 classes no uint8 value is free: a
    ``ValueError``."""
    largest = int(np.iinfo(np.uint16).max)
    if num_classes < 256:
        return 255
    if num_classes == 256 or num_classes >= largest:
        raise ValueError(f"a model of {num_classes} classes leaves no label value for unknown")
    return largest


def mark_unknown(
    labels: np.ndarray | torch.Tensor,
    confidence: np.ndarray | torch.Tensor,
    min_confidence: float,
    unknown: int,
) -> None:
    """Set ``labels`` to ``unknown`` where ``confidence`` (same shape) is below
    ``min_confidence``, in place; compared in the confidence's own precision (float32), as
    ``ddrnet eval --confidence`` compares its thresholds."""
    labels[confidence < min_confidence] = unknown


def image_batch(
    images: Sequence[ImageInput], max_pixels: int | None = None, scale: float = 1.0
) -> torch.Tensor:
    """Same-sized ``(H, W, 3)`` uint8 RGB images (or their paths) as one ``(N, 3, H, W)``
    uint8 tensor (a channels-last view of the stacked pixels, not a copy of them). A file
    with more than ``max_pixels`` at ``scale`` is refused from its header, before decoding
    (``InputTooLargeError``)."""
    from ddrnet.data.io import read_rgb_within

    if isinstance(images, (str, Path, np.ndarray)):
        raise TypeError("expected a sequence of images (a list), got a single image or path")

    def pixels(image: ImageInput) -> np.ndarray:
        if not isinstance(image, (str, Path)):
            return np.asarray(image)
        return read_rgb_within(image, max_pixels, scale, MAX_PIXELS_HINT)

    arrays = [_checked_pixels(pixels(image)) for image in images]
    if not arrays:
        raise ValueError("no images given")
    for array in arrays:
        if array.shape != arrays[0].shape:
            raise ValueError(
                f"a batch needs images of one size, got {arrays[0].shape} and {array.shape}"
            )
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


def _checked_pixels(array: np.ndarray) -> np.ndarray:
    """An ``(H, W, 3)`` RGB image as the network reads it: uint8 as it is, uint16 as its
    high bytes, float only in 0..1 (as ``normalize`` takes it); any other dtype or range, an
    empty image or not-a-number pixels are a ``ValueError`` (read as 0..1 floats, 0..255
    values would give wrong labels without a word)."""
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"the image is empty (shape {array.shape})")
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        return (array >> 8).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        low, high = float(np.min(array)), float(np.max(array))
        if not (np.isfinite(low) and np.isfinite(high)):
            raise ValueError("the image holds NaN or infinite pixels")
        if low < 0 or high > 1:
            raise ValueError(
                f"float images hold RGB values in 0..1, got {low:g}..{high:g} (divide by 255, "
                "or pass uint8)"
            )
        return array.astype(np.float32, copy=False)
    raise ValueError(f"expected uint8 RGB pixels (or float in 0..1), got dtype {array.dtype}")


def _channel_values(name: str, values: Sequence[float]) -> tuple[float, ...]:
    """``mean`` or ``std``: three finite numbers, one per RGB channel."""
    values = tuple(float(v) for v in values)
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise ValueError(f"{name} takes 3 finite values (R, G, B), got {values}")
    return values


def _check_one_size_model(
    model: nn.Module, scales: tuple[float, ...], window: tuple[int, int] | None
) -> None:
    """Refuse test-time scales and windows for a file compiled for one input size
    (ExecuTorch, AOTInductor, a fixed-size ONNX export: ``model.input_size``): every pass
    would be resized to that size (or refused), so a "scale 0.5" pass would be the plain one,
    blurred, and a window a crop stretched to the full frame."""
    size = getattr(model, "input_size", None)
    if size is not None and (scales != (1.0,) or window is not None):
        asked = "--window" if window is not None else "--scales"  # predict has no --window
        raise UsageError(
            f"{getattr(model, 'path', 'the model')} runs one input size, {size[1]}x{size[0]}: "
            f"{asked} passes would all be resized to it; use the PyTorch model or an ONNX "
            "export of dynamic size for them"
        )


class Predictor:
    """Label maps at input resolution from RGB images, with the model's own pre-processing.

    >>> predictor = Predictor(ddrnet.create_model(checkpoint="camvid.safetensors"))
    >>> labels = predictor.predict("street.png")           # (H, W) uint8/int32 class indices
    >>> probabilities = predictor.predict_proba(image_array)  # (C, H, W) float32
    >>> label_maps = predictor.predict_batch([frame_a, frame_b])  # same-sized frames
    >>> smoother = ddrnet.TemporalSmoother(0.5)  # one per video: steadier labels
    >>> labels = predictor.predict(frame, smoother)  # the video's next frame

    Args:
        model: a ``DDRNet`` or a runtime wrapper (``load_onnx_model``, ``load_ncnn_model``).
        device: where the network runs; runtime wrappers run on the CPU whatever it says.
        mean, std: RGB normalisation on the 0..1 scale; default: the model's metadata
            (ImageNet's for a model without metadata).
        scales, flip: test-time augmentation; several passes average their softmax
            probabilities. Each scale must lie in ``(0, ddrnet.limits.MAX_SCALE]``.
        amp_dtype: ``torch.bfloat16`` (CPUs with AMX/AVX512-BF16) or ``torch.float16``
            (GPUs) runs the network under autocast; scores come back as float32.
        window, stride: sliding-window inference with ``(height, width)`` crops in pixels
            (stride by default two thirds of the window).
        prepared: ``None`` (default): the model runs as its fast eval-mode copy
            (``to_fast_layout``: BatchNorm folded, channels-last), the caller's model left
            as it is. A memory format: the model is run as given, on the device it is on,
            inputs in that format (the training loop evaluates its live model this way).
        max_pixels: images with more pixels (at the largest test-time scale) are refused
            with ``ddrnet.limits.InputTooLargeError`` before anything is allocated for them;
            None: no cap (for callers that checked the image's header already).
        min_confidence: in (0, 1): the label maps of ``predict`` and ``predict_batch``
            mark the pixels whose winning class probability is below it as
            ``unknown_label(num_classes)`` (255 for up to 255 classes). This resizes all
            the logits to full resolution, which the plain class ids avoid: a slower frame.
            See ``ddrnet eval --confidence`` for what a threshold keeps.
    """

    def __init__(
        self,
        model: nn.Module,
        device: str | torch.device = "cpu",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        scales: Sequence[float] = (1.0,),
        flip: bool = False,
        amp_dtype: torch.dtype | None = None,
        window: tuple[int, int] | None = None,
        stride: tuple[int, int] | None = None,
        *,
        prepared: torch.memory_format | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        min_confidence: float | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"Predictor takes a model (ddrnet.load(...) or ddrnet.create_model(...)), "
                f"got {type(model).__name__}"
            )
        default_mean, default_std = normalisation(model)
        self.mean = _channel_values("mean", mean or default_mean)
        self.std = _channel_values("std", std or default_std)
        if not all(value > 0 for value in self.std):
            raise ValueError(f"std must be > 0 per channel, got {self.std}")
        self.device = torch.device(device)
        self.scales, self.flip = check_scales(scales), flip
        check_window(window, "--window")
        if stride is not None and (len(stride) != 2 or min(stride) < 1):
            raise ValueError(f"stride takes (height, width) steps of >= 1 pixel, got {stride}")
        self.window, self.stride = window, stride
        _check_one_size_model(model, self.scales, window)
        self.max_pixels = max_pixels
        self.amp_dtype = amp_dtype
        self.num_classes = model_num_classes(model)
        self.label_dtype = label_dtype(self.num_classes)
        if min_confidence is not None and not 0 < min_confidence < 1:
            raise ValueError(f"min_confidence must lie in (0, 1), got {min_confidence}")
        self.min_confidence = min_confidence
        self.unknown = unknown_label(self.num_classes) if min_confidence is not None else None
        if prepared is None:
            fast, self.memory_format = to_fast_layout(model)
            self.model = fast.to(self.device)
        else:
            self.model, self.memory_format = model, prepared

    @property
    def single_pass(self) -> bool:
        """One plain pass per image (no scales, flip or windows): scores are logits."""
        return self.scales == (1.0,) and not self.flip and self.window is None

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` uint8 (0..255) or float (0..1) RGB -> the normalised float32
        batch on the device, in the model's memory format; refuses images over
        ``max_pixels``."""
        if self.max_pixels is not None:
            height, width = images.shape[-2:]
            check_pixels("image", width, height, self.max_pixels, max(self.scales), MAX_PIXELS_HINT)
        batch = normalize(images.to(self.device), self.mean, self.std)
        return batch.contiguous(memory_format=self.memory_format)

    @torch.no_grad()
    def class_ids(
        self, images: torch.Tensor, smoother: TemporalSmoother | None = None
    ) -> torch.Tensor:
        """``(N, 3, H, W)`` RGB images (as ``preprocess`` takes them) -> ``(N, H, W)``
        int64 class ids at input resolution, on the device. With ``smoother``, the images
        are consecutive frames of a video, and the ids come from its smoothed probabilities."""
        if smoother is not None:
            return upsampled_class_ids(self._smoothed(images, smoother), images.shape[-2:])
        batch = self.preprocess(images)
        with autocast(self.device, self.amp_dtype):
            return segment_class_ids(
                self.model, batch, self.scales, self.flip, self.window, self.stride
            )

    @torch.no_grad()
    def scores(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` RGB images -> ``(N, C, H, W)`` float32 class scores at input
        resolution: logits for a single pass, averaged probabilities with augmentation."""
        batch = self.preprocess(images)
        with autocast(self.device, self.amp_dtype):
            scores = segment_logits(
                self.model, batch, self.scales, self.flip, self.window, self.stride
            )
        return scores.float()

    @torch.no_grad()
    def _smoothed(
        self, images: torch.Tensor, smoother: TemporalSmoother, full_size: bool = False
    ) -> torch.Tensor:
        """``smoother``'s ``(N, C, h, w)`` log-probabilities (used as logits) for consecutive
        frames: at the network's output resolution for a plain pass, at input resolution
        with augmentation or ``full_size`` (resized bilinearly)."""
        batch = self.preprocess(images)
        with autocast(self.device, self.amp_dtype):
            if self.single_pass:
                scores = self.model(batch)
            else:
                scores = segment_logits(
                    self.model, batch, self.scales, self.flip, self.window, self.stride
                )
        smoothed = smoother(images, scores, logits=self.single_pass)
        if full_size and smoothed.shape[-2:] != images.shape[-2:]:
            size = tuple(images.shape[-2:])
            smoothed = F.interpolate(smoothed, size, mode="bilinear", align_corners=False)
        return smoothed

    def probabilities(
        self, images: torch.Tensor, smoother: TemporalSmoother | None = None
    ) -> torch.Tensor:
        """``(N, 3, H, W)`` RGB images -> ``(N, C, H, W)`` float32 class probabilities at
        input resolution (the softmax of the logits; with augmentation, their average; with
        ``smoother``, its running probabilities of consecutive frames)."""
        if smoother is not None:
            return self._smoothed(images, smoother, full_size=True).softmax(dim=1)
        scores = self.scores(images)
        return scores.softmax(dim=1) if self.single_pass else scores

    @torch.no_grad()
    def class_ids_and_confidence(
        self, images: torch.Tensor, smoother: TemporalSmoother | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N, 3, H, W)`` RGB images -> ``(N, H, W)`` int64 class ids and their ``(N, H,
        W)`` float32 confidence (the winning class's probability, 0..1), at input
        resolution, on the device; ids below ``min_confidence`` are ``unknown``. With
        ``smoother``: as ``class_ids``."""
        size = tuple(images.shape[-2:])
        if smoother is not None:  # log-probabilities, at 1/8 for a plain pass
            ids, confidence = upsampled_winning_class(self._smoothed(images, smoother), size)
        elif self.single_pass:
            with autocast(self.device, self.amp_dtype):
                logits = self.model(self.preprocess(images))
            ids, confidence = upsampled_winning_class(logits.float(), size)
        else:  # averaged probabilities at input resolution
            ids, confidence = winning_class(self.scores(images), logits=False)
        if self.min_confidence is not None:
            mark_unknown(ids, confidence, self.min_confidence, self.unknown)
        return ids, confidence

    def predict_with_confidence(
        self, images: Sequence[ImageInput], smoother: TemporalSmoother | None = None
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """``predict_batch``'s label maps and each one's ``(H, W)`` float32 confidence map
        (the winning class's probability, 0..1)."""
        ids, confidence = self.class_ids_and_confidence(self._batch(images), smoother)
        return list(ids.cpu().numpy().astype(self.label_dtype)), list(confidence.cpu().numpy())

    def predict_batch(
        self, images: Sequence[ImageInput], smoother: TemporalSmoother | None = None
    ) -> list[np.ndarray]:
        """Label maps ``(H, W)`` (``label_dtype``: uint8 for <= 256 classes, else int32) of
        same-sized ``(H, W, 3)`` uint8 RGB images or image paths, run as one batch; with
        ``smoother`` (``ddrnet.engine.temporal``), consecutive frames of a video."""
        if self.min_confidence is not None:
            return self.predict_with_confidence(images, smoother)[0]
        ids = self.class_ids(self._batch(images), smoother).cpu().numpy()
        return list(ids.astype(self.label_dtype))

    def _batch(self, images: Sequence[ImageInput]) -> torch.Tensor:
        """``image_batch`` with this predictor's pixel cap, checked on files' headers."""
        return image_batch(images, self.max_pixels, max(self.scales))

    def predict(self, image: ImageInput, smoother: TemporalSmoother | None = None) -> np.ndarray:
        """Label map ``(H, W)`` of class indices (uint8 for <= 256 classes, else int32);
        with ``smoother``, of the next frame of its video."""
        return self.predict_batch([image], smoother)[0]

    def predict_proba(self, image: ImageInput) -> np.ndarray:
        """Class probabilities ``(num_classes, H, W)`` float32 at the image's resolution."""
        return self.probabilities(self._batch([image]))[0].cpu().numpy()
