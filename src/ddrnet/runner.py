"""``SegmentationRunner``: a model with its ``Predictor``, classes and pictures, shared by
``ddrnet predict`` (images: ``ddrnet.predict``; videos, cameras, streams: ``ddrnet.video``), the
benchmarks and the live preview; it times each batch, warms the kernels up untimed, runs
several streams at once, and draws the pictures of a result.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import torch
from torch import nn

from ddrnet.choices import OWN_FORMAT_RUNTIMES
from ddrnet.engine.predictor import Predictor
from ddrnet.engine.temporal import TemporalSmoother
from ddrnet.errors import UsageError
from ddrnet.models.metadata import class_info
from ddrnet.render import confidence_picture, labelled_overlay, side_by_side

Item = TypeVar("Item")
Result = TypeVar("Result")


def leave_cores_to_runtime(model: nn.Module) -> None:
    """For a model run by ONNX Runtime or OpenVINO, run PyTorch at one thread.

    Those runtimes bring their own thread pools. PyTorch's OpenMP threads, which only
    normalise and pick class ids around them, keep spinning after each operation and hold the
    cores the runtime needs next (an OpenVINO INT8 inference took 11-13 ms after a 0.1 ms
    normalisation at two threads, 8.7 ms at one); at one thread there are none. Not for ncnn,
    which shares PyTorch's OpenMP threads (its frame took 38.6 instead of 21.8 ms that way),
    nor for ExecuTorch (not measured) or a PyTorch model. Process-wide, as PyTorch's thread
    count is.
    """
    from ddrnet.loading import runtime_of

    if runtime_of(model) in ("onnxruntime", "openvino"):
        torch.set_num_threads(1)


class SegmentationRunner:
    """A ``Predictor``, the model's classes and the chosen outputs, shared by the image and
    video paths; it times each batch.

    ``streams``: how many frames are segmented at once (``map``), each in its own thread on
    its share of the CPU threads. More frames per second on folders and videos (two streams
    on two cores: 1.1-1.4x for the CamVid models in PyTorch and ONNX Runtime, about 1x in
    OpenVINO, ``benchmarks/predict_throughput.py``), each frame no sooner. A model file run by
    ONNX Runtime or OpenVINO must be loaded with as many streams (``ddrnet.load(...,
    streams=N)``) to run that many inferences at once; ncnn and ExecuTorch models take one."""

    def __init__(
        self,
        model: nn.Module,
        device: torch.device,
        amp_dtype: torch.dtype | None = None,
        scales: Sequence[float] = (1.0,),
        flip: bool = False,
        alpha: float = 0.5,
        streams: int = 1,
        min_confidence: float | None = None,
        smooth: float | None = None,
    ) -> None:
        from ddrnet.loading import runtime_of

        if streams < 1:
            raise ValueError(f"streams must be >= 1, got {streams}")
        if smooth is not None and streams > 1:
            raise UsageError(
                f"--smooth with --streams {streams}: each frame builds on the one before, "
                "so frames are segmented one after another; use --streams 1"
            )
        if smooth is not None:
            TemporalSmoother(smooth)  # a weight outside (0, 1): refused before any work
        self.smooth = smooth
        if streams > 1 and runtime_of(model) in OWN_FORMAT_RUNTIMES:
            raise UsageError(
                f"--streams {streams}: {runtime_of(model)} models segment one frame at a time; "
                "use a PyTorch model or an .onnx file"
            )
        self.streams = streams
        leave_cores_to_runtime(model)
        # The image and video paths check each input's size (--max-pixels) before decoding.
        self.predictor = Predictor(
            model,
            device,
            scales=scales,
            flip=flip,
            amp_dtype=amp_dtype,
            max_pixels=None,
            min_confidence=min_confidence,
        )
        self.scales = self.predictor.scales
        self.alpha = alpha
        self.warmup_ms: float | None = None
        info = class_info(model)
        self.class_names, self.palette = list(info.names), list(info.palette)

    def smoother(self) -> TemporalSmoother | None:
        """A new ``TemporalSmoother`` for one video or image sequence (None without
        ``smooth``): its frames go through ``labels`` in order."""
        return TemporalSmoother(self.smooth) if self.smooth is not None else None

    def labels(
        self,
        images: list[np.ndarray],
        confidence: bool = False,
        smoother: TemporalSmoother | None = None,
    ) -> tuple[list[np.ndarray], list[np.ndarray] | None, float]:
        """Label maps ``(H, W)`` (uint8 for <= 256 classes; unknown pixels, below the
        runner's ``min_confidence``, 255) for same-sized ``(H, W, 3)`` images; with
        ``confidence``, their ``(H, W)`` float32 confidence maps (else None); and the time
        in ms. ``smoother`` (from ``smoother()``): the images are the next frames of its
        video.

        The runner's first call runs the batch twice: the first, untimed pass creates the
        kernels (OpenVINO compiles its graph, ~1 s) and its time goes to ``warmup_ms``, so
        that the time returned is what every later call takes too. That pass leaves
        ``smoother`` alone: its frames must come once each, in order."""
        if self.warmup_ms is None:
            self.warmup_ms = self._labels(images, confidence, None)[2]
        return self._labels(images, confidence, smoother)

    def _labels(
        self, images: list[np.ndarray], confidence: bool, smoother: TemporalSmoother | None
    ) -> tuple[list[np.ndarray], list[np.ndarray] | None, float]:
        start = time.perf_counter()
        if confidence:
            labels, confidences = self.predictor.predict_with_confidence(images, smoother)
        else:
            labels, confidences = self.predictor.predict_batch(images, smoother), None
        return labels, confidences, (time.perf_counter() - start) * 1000

    def map(self, function: Callable[[Item], Result], items: Iterable[Item]) -> Iterator[Result]:
        """``function`` over ``items`` (reading them here, in this thread), results in order.
        The first item runs alone (its ``labels`` call creates the kernels), then up to
        ``streams`` at once in worker threads, with PyTorch's threads shared out among them
        (restored after)."""
        iterator = iter(items)
        for first in itertools.islice(iterator, 1):
            yield function(first)
        if self.streams == 1:
            yield from map(function, iterator)
            return
        threads = torch.get_num_threads()
        torch.set_num_threads(max(1, threads // self.streams))
        try:
            with ThreadPoolExecutor(self.streams, thread_name_prefix="ddrnet-stream") as pool:
                pending: deque = deque()
                for item in iterator:
                    pending.append(pool.submit(function, item))
                    if len(pending) > self.streams:  # one waiting beyond the busy streams
                        yield pending.popleft().result()
                while pending:
                    yield pending.popleft().result()
        finally:
            torch.set_num_threads(threads)

    def pictures(
        self,
        image: np.ndarray,
        labels: np.ndarray,
        kinds: Sequence[str],
        every_class_legend: bool = False,
        confidence: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        """The requested pictures, ``(H, W, 3)`` uint8 RGB (the confidence map: ``(H, W)``
        uint8 grey, from the float ``confidence`` given); ``every_class_legend`` (videos)
        keeps their size fixed."""
        result: dict[str, np.ndarray] = {}
        if "confidence" in kinds:
            if confidence is None:
                raise ValueError("the confidence picture needs the confidence map")
            result["confidence"] = confidence_picture(confidence)
        if "overlay" in kinds or "side" in kinds:
            blended = labelled_overlay(
                image, labels, self.class_names, self.palette, self.alpha, every_class_legend
            )
            if "overlay" in kinds:
                result["overlay"] = blended
            if "side" in kinds:
                result["side"] = side_by_side(image, blended)
        return result
