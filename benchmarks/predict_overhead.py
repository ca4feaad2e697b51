"""Where a frame of ``ddrnet predict`` goes outside the network, with each tail issue 21's
item 5 has had, measured in one run.

For each model file (default: the bundled 23-slim and fast train-only models) and form
(PyTorch fp32, ONNX Runtime INT8, OpenVINO INT8 with f32 float layers), on CamVid val frames
at 480x360, the stages of one frame, each timed: normalise into an NCHW tensor (the
``Predictor``'s code), forward, then one of five tails from logits to class ids:

- ``interp``: the first tail, ``F.interpolate`` of the logits to 360x480, ``max`` over the
  classes;
- ``opencv``: OpenCV's resize of class-interleaved logits, then torch's ``max`` over the
  contiguous class axis;
- ``lerp-cells``: the logits' own arg-max repeated 8x8, and only the cells between logit
  pixels of different classes interpolated, in numpy: two linear interpolations of each
  cell's corners, then numpy's arg-max over the class axis;
- ``cells``: ``upsampled_class_ids`` now (the ``Predictor``'s tail): the same cells, their
  values one matrix product of corners and bilinear weights, and the arg-max a running
  maximum over the classes;
- ``conf-interp``: the first tail of ``--save confidence`` and ``--min-confidence``: every
  logit resized as ``interp`` does, then the arg-max and the winning class's probability
  (``winning_class``);
- ``confidence``: that tail now (``upsampled_winning_class``, which
  ``Predictor.class_ids_and_confidence`` runs): the logits resized as ``opencv`` does, the
  arg-max and the probability over the contiguous class axis;
- ``smooth``: the tail of ``--smooth 0.5`` (``ddrnet.engine.temporal``): the optical flow
  from the previous frame, the running log-probabilities carried along it and blended with
  the frame's, then ``cells`` on the result (its class ids differ from the others' by
  design);

then the conversion to uint8. PyTorch runs at one thread beside a runtime's model and at
``--threads`` otherwise, as ``ddrnet predict`` sets it. The tails take turns frame by frame,
so load that drifts hits all alike; medians over the frames. The class ids of each tail are
compared with ``interp``'s (they may differ at float32 near-ties). Run on an otherwise idle machine:

    python benchmarks/predict_overhead.py [--models A B] [--frames 30] [--threads 2]
        [--max-isa AVX2]

``--max-isa AVX2`` measures as an AVX2 laptop without VNNI would, on a machine that has more
(``pruning_tradeoff.py`` says how); ONNX Runtime, which cannot be capped, is then left out.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

import ddrnet
from ddrnet.data.camvid import camvid
from ddrnet.deploy import export_onnx, load_calibration_images, load_onnx_model, quantize_onnx_int8
from ddrnet.engine.inference import (
    _cell_fractions,
    class_ids_by_opencv,
    class_indices,
    upsampled_class_ids,
    upsampled_winning_class,
    winning_class,
)
from ddrnet.engine.predictor import Predictor, image_batch
from ddrnet.engine.temporal import TemporalSmoother
from ddrnet.hardware import describe_cpu, onednn_isa_cap

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inference_speed import (  # noqa: E402
    add_comparison_options,
    as_predict_runs,
    restart_capped,
    val_frames,
)

STAGES = ("normalise", "forward", "resize + arg-max", "to uint8")


def interp_tail(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    full = F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)
    return class_indices(full)


def lerp_cells_tail(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The first cells tail: ``(1, C, h, w)`` logits at whole factors of ``size``."""
    planes = logits[0].float().numpy()
    (_, height, width), sy, sx = (
        planes.shape,
        size[0] // logits.shape[2],
        size[1] // logits.shape[3],
    )
    padded = np.pad(planes, ((0, 0), (1, 1), (1, 1)), mode="edge")
    corner_ids = padded.argmax(axis=0).astype(np.uint8)
    top_left = corner_ids[:-1, :-1]
    mixed = (
        (top_left != corner_ids[:-1, 1:])
        | (top_left != corner_ids[1:, :-1])
        | (top_left != corner_ids[1:, 1:])
    )
    cells = np.repeat(np.repeat(top_left, sy, axis=0), sx, axis=1)
    rows, cols = np.nonzero(mixed)
    a, b = padded[:, rows, cols].T, padded[:, rows, cols + 1].T  # (m, C) corners
    c, d = padded[:, rows + 1, cols].T, padded[:, rows + 1, cols + 1].T
    fy, fx = _cell_fractions(sy), _cell_fractions(sx)
    upper = a[:, None] + fx[None, :, None] * (b - a)[:, None]  # (m, sx, C)
    lower = c[:, None] + fx[None, :, None] * (d - c)[:, None]
    values = upper[:, None] + fy[None, :, None, None] * (lower - upper)[:, None]
    cells.reshape(height + 1, sy, width + 1, sx)[rows, :, cols, :] = values.argmax(axis=-1)
    top, left = (sy + 1) // 2, (sx + 1) // 2
    ids = cells[top : top + height * sy, left : left + width * sx]
    return torch.from_numpy(np.ascontiguousarray(ids)[None]).long()


def conf_interp_tail(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    full = F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)
    ids, _ = winning_class(full, logits=True)
    return ids


def confidence_tail(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return upsampled_winning_class(logits, size)[0]


def smooth_tail(
    smoother: TemporalSmoother, frame: np.ndarray, logits: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """The ``--smooth`` tail for the next ``frame`` of ``smoother``'s video."""
    return upsampled_class_ids(smoother(image_batch([frame]), logits, logits=True), size)


TAILS: dict[str, Callable[[torch.Tensor, tuple[int, int]], torch.Tensor]] = {
    "interp": interp_tail,
    "opencv": class_ids_by_opencv,
    "lerp-cells": lerp_cells_tail,
    "cells": upsampled_class_ids,
    "conf-interp": conf_interp_tail,
    "confidence": confidence_tail,
    "smooth": upsampled_class_ids,  # with a smoother: see main()
}


def one_frame(
    predictor: Predictor, frame: np.ndarray, tail: Callable
) -> tuple[np.ndarray, list[float]]:
    """One frame through ``predictor`` with ``tail``; the ids and each stage's ms."""
    marks = [time.perf_counter()]
    with torch.no_grad():
        batch = predictor.preprocess(image_batch([frame]))
        marks.append(time.perf_counter())
        logits = predictor.model(batch)
        marks.append(time.perf_counter())
        ids = tail(logits, frame.shape[:2])
        marks.append(time.perf_counter())
        labels = ids[0].numpy().astype(predictor.label_dtype)
        marks.append(time.perf_counter())
    return labels, [1000 * (b - a) for a, b in zip(marks, marks[1:])]


def forms(path: str, scratch: Path, calibration: list, threads: int) -> dict[str, Predictor]:
    """The model in ``path`` as Predictors: PyTorch fp32, ONNX Runtime INT8, OpenVINO INT8."""
    model = ddrnet.create_model(checkpoint=path)
    int8 = quantize_onnx_int8(
        export_onnx(model, scratch / "fp32.onnx"), scratch / "int8.onnx", calibration
    )
    predictors = {"pytorch": Predictor(model)}
    if not onednn_isa_cap():  # ONNX Runtime picks kernels from CPUID: no cap reaches it
        predictors["ort_int8"] = Predictor(load_onnx_model(int8, "onnxruntime", "f32", threads))
    predictors["openvino_int8"] = Predictor(load_onnx_model(int8, "openvino", "f32", threads))
    return predictors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_comparison_options(parser, max_isa=True)
    args = parser.parse_args()
    restart_capped(args.max_isa)
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    frames = val_frames(args.camvid, args.frames)
    calibration = load_calibration_images(camvid(args.camvid, "train"), count=16)
    runs: dict[tuple[str, str, str], list[list[float]]] = {}
    differ = dict.fromkeys(TAILS, 0)
    total = 0
    with tempfile.TemporaryDirectory() as scratch_root:
        predictors = {}
        for index, path in enumerate(args.models):
            scratch = Path(scratch_root) / str(index)
            scratch.mkdir()
            for form, predictor in forms(path, scratch, calibration, args.threads).items():
                predictors[(Path(path).stem, form)] = predictor
                as_predict_runs(predictor.model, args.threads)
                for frame in frames[:3]:  # warm-up: OpenVINO compiles, oneDNN plans
                    one_frame(predictor, frame, upsampled_class_ids)
        smoothers = {key: TemporalSmoother(0.5) for key in predictors}  # frames in order
        for frame in frames:
            for key, predictor in predictors.items():
                as_predict_runs(predictor.model, args.threads)
                results = {}
                for tail, function in TAILS.items():
                    if tail == "smooth":
                        function = functools.partial(smooth_tail, smoothers[key], frame)
                    results[tail], stages = one_frame(predictor, frame, function)
                    runs.setdefault((*key, tail), []).append(stages)
                for tail in TAILS:
                    differ[tail] += int((results[tail] != results["interp"]).sum())
                total += results["interp"].size
    report(runs, {tail: count / total for tail, count in differ.items()}, args.threads)


def report(
    runs: dict[tuple[str, str, str], list[list[float]]], differ: dict[str, float], threads: int
) -> None:
    print(f"\n{describe_cpu()}; {threads} threads; ms per 480x360 frame")
    header = f"{'model':<34}{'form':>14}{'tail':>12}" + "".join(f"{s:>18}" for s in STAGES)
    header += f"{'total':>8}{'outside':>9}"
    print(header + "\n" + "-" * len(header))
    for (model, form, tail), frames in runs.items():
        medians = [statistics.median(stage) for stage in zip(*frames)]
        totals = statistics.median(sum(stages) for stages in frames)
        outside = statistics.median(sum(s) - s[1] for s in frames)
        print(
            f"{model[:33]:<34}{form:>14}{tail:>12}"
            + "".join(f"{m:>18.2f}" for m in medians)
            + f"{totals:>8.2f}{outside:>9.2f}"
        )
    for tail, share in differ.items():
        if tail not in ("interp", "smooth"):
            print(f"class ids of {tail} that differ from interp's: {share:.6%} of pixels")


if __name__ == "__main__":
    main()
