"""Where a frame of ``ddrnet predict`` goes outside the network, before and after issue 21's
item 5, measured in one run.

For each model file (default: the bundled 23-slim and fast train-only models) and form
(PyTorch fp32, ONNX Runtime INT8, OpenVINO INT8 with f32 float layers), on CamVid val frames
at 480x360, the stages of one frame, each timed:

- ``before``: the tail as it was: normalise into an NCHW tensor, copy it into the model's
  memory format, forward, ``F.interpolate`` the logits to 360x480, ``max`` over the classes,
  convert the ids to uint8;
- ``after``: ``Predictor``'s code now: the same normalisation, forward,
  ``upsampled_class_ids`` (OpenCV's resize of class-interleaved logits, then torch's ``max``
  over the contiguous class axis), uint8.

Both take turns frame by frame, so load that drifts hits both alike; medians over the frames.
The class ids of both are compared (they may differ at float32 near-ties). Run on an otherwise
idle machine:

    python benchmarks/predict_overhead.py [--models A B] [--frames 30] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import ddrnet
from ddrnet.data.camvid import camvid
from ddrnet.deploy import export_onnx, load_calibration_images, load_onnx_model, quantize_onnx_int8
from ddrnet.engine.inference import class_indices, normalize, upsampled_class_ids
from ddrnet.engine.predictor import Predictor, image_batch
from ddrnet.hardware import describe_cpu

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid"
STAGES = ("normalise", "forward", "resize + arg-max", "to uint8")


def before(predictor: Predictor, frame: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """The previous tail (see the module docstring); the ids and each stage's ms."""
    marks = [time.perf_counter()]
    with torch.no_grad():
        batch = normalize(image_batch([frame]), predictor.mean, predictor.std)
        batch = batch.contiguous(memory_format=predictor.memory_format)
        marks.append(time.perf_counter())
        logits = predictor.model(batch)
        marks.append(time.perf_counter())
        full = F.interpolate(
            logits.float(), size=frame.shape[:2], mode="bilinear", align_corners=False
        )
        ids = class_indices(full)
        marks.append(time.perf_counter())
        labels = ids[0].numpy().astype(np.uint8)
        marks.append(time.perf_counter())
    return labels, [1000 * (b - a) for a, b in zip(marks, marks[1:])]


def after(predictor: Predictor, frame: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """``Predictor``'s tail now, stage by stage (``predict_batch`` runs exactly these)."""
    marks = [time.perf_counter()]
    with torch.no_grad():
        batch = predictor.preprocess(image_batch([frame]))
        marks.append(time.perf_counter())
        logits = predictor.model(batch)
        marks.append(time.perf_counter())
        ids = upsampled_class_ids(logits, frame.shape[:2])
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
    return {
        "pytorch": Predictor(model),
        "ort_int8": Predictor(load_onnx_model(int8, "onnxruntime", "f32", threads)),
        "openvino_int8": Predictor(load_onnx_model(int8, "openvino", "f32", threads)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--models", nargs="+",
        default=["camvid_ddrnet23_slim_train", "camvid_ddrnet23_slim_fast_train"],
    )  # fmt: skip
    parser.add_argument("--camvid", type=Path, default=DATA)
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import cv2

    cv2.setNumThreads(args.threads)
    val = camvid(args.camvid, "val")
    frames = [val[i][0].permute(1, 2, 0).numpy() for i in range(min(args.frames, len(val)))]
    calibration = load_calibration_images(camvid(args.camvid, "train"), count=16)
    runs: dict[tuple[str, str, str], list[list[float]]] = {}
    tails: dict[str, Callable] = {"before": before, "after": after}
    differ = total = 0
    with tempfile.TemporaryDirectory() as scratch_root:
        predictors = {}
        for index, path in enumerate(args.models):
            scratch = Path(scratch_root) / str(index)
            scratch.mkdir()
            for form, predictor in forms(path, scratch, calibration, args.threads).items():
                predictors[(Path(path).stem, form)] = predictor
                for frame in frames[:3]:  # warm-up: OpenVINO compiles, oneDNN plans
                    before(predictor, frame), after(predictor, frame)
        for frame in frames:
            for key, predictor in predictors.items():
                results = {}
                for tail, function in tails.items():
                    results[tail], stages = function(predictor, frame)
                    runs.setdefault((*key, tail), []).append(stages)
                differ += int((results["before"] != results["after"]).sum())
                total += results["before"].size
    report(runs, differ / total)


def report(runs: dict[tuple[str, str, str], list[list[float]]], differ: float) -> None:
    print(f"\n{describe_cpu()}; {torch.get_num_threads()} threads; ms per 480x360 frame")
    header = f"{'model':<34}{'form':>14}{'tail':>8}" + "".join(f"{s:>18}" for s in STAGES)
    header += f"{'total':>8}{'outside':>9}"
    print(header + "\n" + "-" * len(header))
    for (model, form, tail), frames in runs.items():
        medians = [statistics.median(stage) for stage in zip(*frames)]
        totals = statistics.median(sum(stages) for stages in frames)
        outside = statistics.median(sum(s) - s[1] for s in frames)
        print(
            f"{model[:33]:<34}{form:>14}{tail:>8}"
            + "".join(f"{m:>18.2f}" for m in medians)
            + f"{totals:>8.2f}{outside:>9.2f}"
        )
    print(f"\nclass ids that differ between the two tails: {differ:.6%} of pixels")


if __name__ == "__main__":
    main()
