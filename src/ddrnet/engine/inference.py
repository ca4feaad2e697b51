"""The steps from images to label maps: normalisation, the fast inference form of a model,
test-time augmentation (multi-scale, flip), sliding-window inference and the arg-max back at
input resolution (the device and precision: ``ddrnet.engine.device``).

``ddrnet.engine.predictor.Predictor`` puts them together; everything that segments images
(``ddrnet.Predictor``, evaluation, ``ddrnet predict``, ``ddrnet serve``) goes through it.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ddrnet.limits import MIN_WINDOW, check_scales
from ddrnet.models.bn_folding import FusionError, fuse_conv_bn, unwrap_model

logger = logging.getLogger(__name__)


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(N, C, H, W)`` uint8 (0..255) or float (0..1) RGB -> float32 normalised tensor,
    contiguous NCHW, ``(x / 255 - mean) / std`` computed as ``x * scale - shift``.

    uint8 images on the CPU (decoded frames: usually a channels-last view of ``(H, W, 3)``
    pixels) go through OpenCV, one pass per channel plane that reads the bytes and writes the
    normalised floats (``_normalize_uint8_planes``). Other input: one conversion copy into a
    fresh NCHW tensor, then two in-place passes, several times faster than three out-of-place
    passes over a channels-last view.
    """
    if images.device.type == "cpu" and images.dtype == torch.uint8:
        return _normalize_uint8_planes(images, mean, std)
    divisor = 255.0 if images.dtype == torch.uint8 else 1.0
    std_t = torch.tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    normalised = torch.empty(images.shape, dtype=torch.float32, device=images.device)
    normalised.copy_(images)
    return normalised.mul_(1.0 / (divisor * std_t)).sub_(mean_t / std_t)


def _normalize_uint8_planes(
    images: torch.Tensor, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """``normalize`` of CPU uint8 ``(N, C, H, W)`` images in any memory layout: each channel
    plane (split out of interleaved pixels first) is scaled and shifted by OpenCV's
    ``addWeighted`` straight into the float32 output, a third of the passes of torch's route
    (a transposing conversion copy, a multiply, a subtract)."""
    batch, channels = images.shape[:2]
    normalised = np.empty(tuple(images.shape), dtype=np.float32)
    for index in range(batch):
        pixels = images[index].permute(1, 2, 0).numpy()  # (H, W, C), a view when channels-last
        if pixels.flags.c_contiguous and 1 < channels <= 4:
            planes = cv2.split(pixels)
        else:
            planes = [np.ascontiguousarray(images[index, c].numpy()) for c in range(channels)]
        for channel, plane in enumerate(planes):
            scale = 1.0 / (255.0 * std[channel])
            cv2.addWeighted(
                plane,
                scale,
                plane,
                0.0,
                -mean[channel] / std[channel],
                dst=normalised[index, channel],
                dtype=cv2.CV_32F,
            )
    return torch.from_numpy(normalised)


def to_fast_layout(model: nn.Module) -> tuple[nn.Module, torch.memory_format]:
    """The fastest eval-mode form of ``model`` for inference, and the memory format its
    inputs should have.

    A PyTorch network comes back as an eval-mode copy with every Conv+BatchNorm pair folded
    into one convolution (``ddrnet.models.bn_folding.fuse_conv_bn``: the same logits within
    ~1e-5) and in channels_last, which oneDNN (CPU) and cuDNN run without the layout reorders
    around every layer that NCHW costs them. For DDRNet-23-slim on 2-core CPUs, channels_last
    gave 1.16-1.31x and folding another 1.09x (1024x2048) to 1.14x (360x480) on an AMD Zen 2
    (``ddrnet bench``). The caller's model is left as it was. A network that ``torch.fx``
    cannot trace is used unfolded. Runtime wrappers without parameters
    (``OnnxSegmentationModel``) take plain NCHW arrays and are returned unchanged.
    """
    if next(model.parameters(), None) is None:
        return model, torch.contiguous_format
    try:
        model = fuse_conv_bn(model)
    except FusionError as error:
        logger.debug("batch norm left unfolded: %s", error)
        model = model.eval()
    return model.to(memory_format=torch.channels_last), torch.channels_last


def class_indices(scores: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Index of the largest score along ``dim`` (the first one on ties, as ``argmax``):
    ``(N, C, H, W)`` scores -> ``(N, H, W)`` int64 class ids.

    ``torch.max(dim).indices`` rather than ``argmax``: on the CPU (torch 2.x) argmax over the
    channel dimension of an NCHW tensor is 5-13x slower, 44 ms against 3.4 ms for CamVid's
    11x360x480 and 540 against 105 ms for Cityscapes' 19x1024x2048 on our 2-core machine:
    it was most of the per-image latency of ``ddrnet predict`` and of evaluation.
    """
    return scores.max(dim=dim).indices


def winning_class(scores: torch.Tensor, logits: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, C, H, W)`` class scores -> ``(N, H, W)`` int64 class ids and the winning class's
    probability ``(N, H, W)`` (0..1). ``logits``: the scores are logits, whose winning softmax
    probability is ``1 / sum(exp(l - max l))``, without the full softmax (which costs about as
    much as resizing the logits); else they are probabilities already (averaged ones)."""
    if logits:
        top, ids = scores.max(dim=1)
        return ids, (scores - top.unsqueeze(1)).exp_().sum(dim=1).reciprocal_()
    confidence, ids = scores.max(dim=1)
    return ids, confidence


def _logits_full_size(
    model: nn.Module, images: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    logits = model(images)
    return F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)


# OpenCV resizes images of at most this many channels (CV_CN_MAX).
_OPENCV_MAX_CHANNELS = 512


def upsampled_class_ids(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Class ids ``(N, *size)`` int64 of logits ``(N, C, h, w)`` resized bilinearly
    (align_corners=False) to ``size``: ``class_indices(F.interpolate(logits, size))``.

    On the CPU, when ``size`` is a whole multiple of ``(h, w)`` (DDRNet's logits are 1/8 of
    an input whose sides divide by 8), only the cells between four logit pixels whose classes
    differ are interpolated (``_class_ids_at_whole_scale``); other sizes are resized by OpenCV,
    one ``(h, w, C)`` image at a time (the same half-pixel weights, several times faster than
    ``F.interpolate`` on class-interleaved data), then arg-maxed by torch's threaded ``max``
    over the contiguous class axis. The ids agree with PyTorch's route up to near-ties in
    float32 rounding.
    """
    size = (int(size[0]), int(size[1]))
    batch, channels, height, width = logits.shape
    if (
        logits.device.type != "cpu"
        or channels > _OPENCV_MAX_CHANNELS
        or tuple(logits.shape[-2:]) == size
    ):
        full = F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)
        return class_indices(full)
    if channels == 1:
        return torch.zeros((batch, *size), dtype=torch.int64)
    if size[0] % height == 0 and size[1] % width == 0:
        scale = (size[0] // height, size[1] // width)
        planes = logits.float().numpy()
        ids = [_class_ids_at_whole_scale(planes[index], scale) for index in range(batch)]
        return torch.from_numpy(np.stack(ids)).long()
    return class_ids_by_opencv(logits, size)


def class_ids_by_opencv(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``upsampled_class_ids`` of CPU logits ``(N, C, h, w)`` (C <= 512) at any ``size``:
    OpenCV resizes one ``(h, w, C)`` image at a time, then torch's ``max`` reads each pixel's
    scores side by side. ``(N, *size)`` int64."""
    return class_indices(torch.from_numpy(_resized_interleaved(logits, size)), dim=-1)


def upsampled_winning_class(
    logits: torch.Tensor, size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``winning_class(F.interpolate(logits, size), logits=True)``: the class ids ``(N,
    *size)`` int64 and the winning class's probability ``(N, *size)`` float32 of logits
    ``(N, C, h, w)`` resized bilinearly (align_corners=False) to ``size``.

    On the CPU (C <= 512) OpenCV resizes the class-interleaved logits, and the maximum and the
    sum of exponentials then run over the contiguous class axis: the tail of ``--save
    confidence`` and ``--min-confidence`` takes about a fifth less time than through
    ``F.interpolate`` (``benchmarks/predict_overhead.py``; planar layouts after OpenCV's resize
    were slower still, the copy costing more than the reductions save). The same values
    within float32 rounding, and ids up to near-ties."""
    size = (int(size[0]), int(size[1]))
    if logits.device.type != "cpu" or logits.shape[1] > _OPENCV_MAX_CHANNELS:
        full = F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)
        return winning_class(full, logits=True)
    scores = torch.from_numpy(_resized_interleaved(logits, size))  # (N, H, W, C)
    top, ids = scores.max(dim=-1)
    return ids, (scores - top.unsqueeze(-1)).exp_().sum(dim=-1).reciprocal_()


def _resized_interleaved(logits: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """CPU logits ``(N, C, h, w)`` (C <= 512) resized bilinearly by OpenCV, one ``(h, w, C)``
    image at a time (half-pixel centres, as align_corners=False): ``(N, *size, C)`` float32."""
    batch, channels = logits.shape[:2]
    interleaved = logits.float().permute(0, 2, 3, 1).contiguous().numpy()  # (N, h, w, C)
    resized = np.empty((batch, *size, channels), dtype=np.float32)
    for index in range(batch):
        cv2.resize(
            interleaved[index], size[::-1], dst=resized[index], interpolation=cv2.INTER_LINEAR
        )
    return resized


def _class_ids_at_whole_scale(logits: np.ndarray, scale: tuple[int, int]) -> np.ndarray:
    """``(C, h, w)`` float32 logits -> ``(h * sy, w * sx)`` class ids of their bilinear
    (align_corners=False) upsampling by whole factors ``scale = (sy, sx)``.

    Every output pixel interpolates the four logit pixels around it (edge pixels repeated past
    the border, as PyTorch clamps), a convex combination: where those four share their first
    arg-max class, the pixel's first arg-max is that class too, so only the cells whose
    corners disagree (the class boundaries, a small share of a street scene) are interpolated.
    With whole factors every cell is ``sy x sx`` output pixels with the same weights.
    """
    (sy, sx), (channels, height, width) = scale, logits.shape
    ids = logits.argmax(axis=0).astype(np.uint8 if channels <= 256 else np.int64)
    corner_ids = np.pad(ids, 1, mode="edge")  # (h+2, w+2): corners of the (h+1, w+1) cells
    top_left = corner_ids[:-1, :-1]  # cell (r, c) lies between corners (r, c) and (r+1, c+1)
    mixed = (
        (top_left != corner_ids[:-1, 1:])
        | (top_left != corner_ids[1:, :-1])
        | (top_left != corner_ids[1:, 1:])
    )
    cells = np.repeat(np.repeat(top_left, sy, axis=0), sx, axis=1)  # (sy (h+1), sx (w+1))
    rows, cols = np.nonzero(mixed)
    if rows.size:
        blocks = cells.reshape(height + 1, sy, width + 1, sx)  # a view: written through
        blocks[rows, :, cols, :] = _interpolated_cell_ids(logits, rows, cols, scale, ids.dtype)
    top, left = (sy + 1) // 2, (sx + 1) // 2  # output pixel 0 within the padded cells
    return cells[top : top + height * sy, left : left + width * sx]


def _interpolated_cell_ids(
    logits: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    scale: tuple[int, int],
    dtype: np.dtype,
) -> np.ndarray:
    """First arg-max ``(m, sy, sx)`` of the bilinear values inside ``m`` cells of
    ``_class_ids_at_whole_scale``'s grid, cell ``(r, c)`` having the corners ``(r - 1, c - 1)``
    to ``(r, c)`` of ``(C, h, w)`` ``logits``, clamped to the border; ids of ``dtype``.

    Each cell's ``sy * sx`` values are one matrix product of its four corners with the fixed
    bilinear weights, and the arg-max runs over the classes as a running maximum along whole
    rows of values: several times faster than numpy's arg-max over a short last axis."""
    channels, height, width = logits.shape
    top, bottom = np.clip(rows - 1, 0, height - 1), np.clip(rows, 0, height - 1)
    left, right = np.clip(cols - 1, 0, width - 1), np.clip(cols, 0, width - 1)
    corners = np.stack(
        [
            logits[:, top, left],
            logits[:, top, right],
            logits[:, bottom, left],
            logits[:, bottom, right],
        ],
        axis=-1,
    )  # (C, m, 4)
    corners = torch.from_numpy(corners.astype(np.float32, copy=False)).reshape(-1, 4)
    # In float32 whatever the caller's autocast (bf16 autocast would run the product in
    # bf16, which numpy cannot take, and round away near-ties).
    with torch.autocast("cpu", enabled=False):
        values = (corners @ _corner_weights(*scale)).numpy().reshape(channels, -1)  # (C, m sy sx)
    best = values[0].copy()
    ids = np.zeros(values.shape[1], dtype=dtype)
    for index in range(1, channels):
        higher = values[index] > best  # strictly: a tie keeps the first class
        np.maximum(best, values[index], out=best)
        ids[higher] = index
    return ids.reshape(-1, *scale)


@functools.lru_cache(maxsize=8)
def _corner_weights(sy: int, sx: int) -> torch.Tensor:
    """``(4, sy * sx)`` float32 bilinear weights of a cell's top-left, top-right, bottom-left
    and bottom-right corners for each of its output pixels (row-major)."""
    fy, fx = _cell_fractions(sy), _cell_fractions(sx)
    along_y, along_x = np.stack([1 - fy, fy]), np.stack([1 - fx, fx])  # (2, sy), (2, sx)
    weights = along_y[:, None, :, None] * along_x[None, :, None, :]  # (2, 2, sy, sx)
    return torch.from_numpy(np.ascontiguousarray(weights.reshape(4, sy * sx), dtype=np.float32))


def _cell_fractions(scale: int) -> np.ndarray:
    """The bilinear weight of a cell's far corner for each of its ``scale`` output pixels:
    output pixel i samples (i + 0.5) / scale - 0.5 (align_corners=False)."""
    offset = (scale + 1) // 2
    return ((np.arange(scale) - offset + 0.5 + scale / 2) / scale).astype(np.float32)


def sliding_window_logits(
    model: nn.Module,
    images: torch.Tensor,
    num_classes: int,
    window: tuple[int, int],
    stride: tuple[int, int],
) -> torch.Tensor:
    """Logits at the input size from overlapping ``window`` crops averaged where they overlap.

    ``images``: ``(N, 3, H, W)`` normalised. Windows larger than the image shrink to it.
    """
    batch, _, height, width = images.shape
    win_h, win_w = min(window[0], height), min(window[1], width)
    rows = max(math.ceil((height - win_h) / stride[0]), 0) + 1
    cols = max(math.ceil((width - win_w) / stride[1]), 0) + 1
    total = images.new_zeros((batch, num_classes, height, width))
    counts = images.new_zeros((1, 1, height, width))
    for row in range(rows):
        for col in range(cols):
            top = min(row * stride[0], height - win_h)
            left = min(col * stride[1], width - win_w)
            crop = images[:, :, top : top + win_h, left : left + win_w]
            total[:, :, top : top + win_h, left : left + win_w] += _logits_full_size(
                model, crop, (win_h, win_w)
            )
            counts[:, :, top : top + win_h, left : left + win_w] += 1
    return total / counts


# A test-time pass is never run on fewer pixels a side than this, whatever its scale.
MIN_SCALED_SIDE = 8


def _scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """The ``(height, width)`` in pixels of a pass at ``scale``, at least ``MIN_SCALED_SIDE``
    a side; a scale that takes an image of ``MIN_WINDOW`` pixels a side or more under that
    is logged once, as nothing else would tell the user that the pass sees almost nothing."""
    exact = (round(height * scale), round(width * scale))
    size = (max(MIN_SCALED_SIDE, exact[0]), max(MIN_SCALED_SIDE, exact[1]))
    if min(exact) < MIN_WINDOW <= min(height, width):
        _warn_tiny_pass(scale, (height, width), size)
    return size


@functools.lru_cache(maxsize=64)
def _warn_tiny_pass(scale: float, size: tuple[int, int], scaled: tuple[int, int]) -> None:
    logger.warning(
        "scale %g takes %dx%d (height x width) images to %dx%d pixels: under %d a side the "
        "network's coarsest branch (1/64 of its input) sees less than one cell, so this pass "
        "adds little but noise",
        scale,
        *size,
        *scaled,
        MIN_WINDOW,
    )


@torch.no_grad()
def segment_logits(
    model: nn.Module,
    images: torch.Tensor,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    window: tuple[int, int] | None = None,
    stride: tuple[int, int] | None = None,
    size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Class scores ``(N, num_classes, *size)`` for normalised ``(N, 3, H, W)`` images;
    ``size`` None: the input's ``(H, W)``.

    With several ``scales`` or ``flip``, softmax probabilities are averaged over the
    augmented passes (the usual multi-scale + flip protocol); with one plain pass the raw
    logits are returned. Each pass's logits are resized straight to ``size`` (so a
    distillation teacher's ensemble on the student's 1/8 grid never goes through the input
    size). ``window`` turns on sliding-window inference at each scale. A scale outside
    ``(0, ddrnet.limits.MAX_SCALE]`` is a ``ValueError``.
    """
    scales = check_scales(scales)
    height, width = images.shape[-2:]
    size = size or (height, width)
    num_classes = model_num_classes(model)
    single_pass = len(scales) == 1 and scales[0] == 1.0 and not flip
    total = None
    for scale in scales:
        scaled = images
        if scale != 1.0:
            scaled_size = _scaled_size(height, width, scale)
            scaled = F.interpolate(images, size=scaled_size, mode="bilinear", align_corners=False)
        for flipped in (False, True) if flip else (False,):
            batch = scaled.flip(-1) if flipped else scaled
            if window is not None:
                logits = sliding_window_logits(
                    model,
                    batch,
                    num_classes,
                    window,
                    stride or (window[0] * 2 // 3, window[1] * 2 // 3),
                )
                if tuple(logits.shape[-2:]) != tuple(size):
                    logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
            else:
                logits = _logits_full_size(model, batch, size)
            if flipped:
                # Bilinear resizing with align_corners=False is mirror-symmetric, so flipping
                # back after the resize equals resizing the flipped-back logits.
                logits = logits.flip(-1)
            if single_pass:
                return logits
            probabilities = logits.softmax(dim=1)
            total = probabilities if total is None else total + probabilities
    assert total is not None
    return total / (len(scales) * (2 if flip else 1))


def segment_class_ids(
    model: nn.Module,
    images: torch.Tensor,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    window: tuple[int, int] | None = None,
    stride: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Class ids ``(N, H, W)`` int64 at input resolution for normalised ``(N, 3, H, W)``
    images: ``class_indices(segment_logits(...))``, except for a single plain pass: then a
    model with its own ``class_ids`` method (an exported file that outputs class ids) gives
    them, and otherwise ``upsampled_class_ids`` takes them from the logits, faster than the
    general path."""
    plain = tuple(scales) == (1.0,) and not flip and window is None
    if not plain:
        return class_indices(segment_logits(model, images, scales, flip, window, stride))
    own = getattr(model, "class_ids", None)
    ids = own(images) if own is not None else None
    if ids is None:
        ids = upsampled_class_ids(model(images), tuple(images.shape[-2:]))
    return ids


def model_num_classes(model: nn.Module) -> int:
    """The class count of ``model``, through DDP and ``torch.compile`` wrappers."""
    return int(unwrap_model(model).num_classes)
