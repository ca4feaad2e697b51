"""Frames per second of ``ddrnet predict`` on a video, and the share of a 30 FPS camera's
frames it keeps up with, for the bundled 23-slim and its fast twin, measured in one run.

A video of ``--frames`` CamVid val frames at 480x360, looped to ``--length`` frames at 30
frames per second (Motion JPEG), goes through ``run_prediction``: what ``ddrnet predict
VIDEO --save overlay`` runs (decoding in a reader thread, segmenting, drawing the overlay,
encoding the output video in a writer thread). For each model file (default: both
train-only CamVid models) and form (PyTorch; OpenVINO INT8 with f32 float layers):

- ``every frame``: the job's frames per second, the segmentation's alone (``segment FPS``,
  1000 / its median ms per frame: normalise, forward, class ids) and their ratio, the share
  of the segmentation's speed that the whole job keeps (``kept``);
- ``as a camera``: the video replayed at its frame rate with ``--drop-frames yes``, as a
  camera would send it: the share of its frames that were segmented (the others skipped for
  newer ones).

Each (model, form) takes its turn in each of ``--rounds`` rounds; medians over the rounds.
Run on an otherwise idle machine:

    python benchmarks/video_throughput.py [--models A B] [--frames 30] [--length 150]
        [--threads 2] [--rounds 3] [--max-isa AVX2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch

import ddrnet
from ddrnet.data.camvid import camvid
from ddrnet.deploy import export_onnx, load_calibration_images, load_onnx_model, quantize_onnx_int8
from ddrnet.hardware import describe_cpu
from ddrnet.predict import run_prediction
from ddrnet.runner import SegmentationRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inference_speed import (  # noqa: E402
    add_comparison_options,
    as_predict_runs,
    restart_capped,
    val_frames,
    warmed_runners,
)

CAMERA_FPS = 30.0


def write_video(frames: list[np.ndarray], length: int, path: Path) -> Path:
    """``frames`` (RGB) looped to ``length`` frames, as a Motion JPEG AVI at ``CAMERA_FPS``."""
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(
        str(path), cv2.VideoWriter_fourcc(*"MJPG"), CAMERA_FPS, (width, height)
    )
    for index in range(length):
        writer.write(cv2.cvtColor(frames[index % len(frames)], cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def runners(path: str, scratch: Path, calibration: list, threads: int) -> dict:
    """``form`` -> a runner of the model in ``path`` in that form."""
    model = ddrnet.create_model(checkpoint=path)
    int8 = quantize_onnx_int8(
        export_onnx(model, scratch / "fp32.onnx"), scratch / "int8.onnx", calibration
    )
    cpu = torch.device("cpu")
    openvino = load_onnx_model(int8, "openvino", "f32", threads)
    return {
        "pytorch": SegmentationRunner(model, cpu),
        "openvino_int8": SegmentationRunner(openvino, cpu),
    }


def measure(runner: SegmentationRunner, video: Path, output: Path) -> tuple[float, float, float]:
    """Job frames per second and segmentation frames per second on every frame, and the
    share of the frames segmented when the video is replayed as a camera sends it."""
    every = run_prediction(runner, [str(video)], output, kinds=["overlay"], progress=False)
    frames = len(every.latencies_ms)
    job = frames / every.seconds  # warmed up before: no first pass inside
    network = 1000 / statistics.median(every.latencies_ms)
    replay = run_prediction(
        runner, [str(video)], output, kinds=["overlay"], progress=False, drop_frames="yes"
    )
    dropped, read = replay.dropped[str(video)]
    return job, network, (read - dropped) / read


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_comparison_options(parser, max_isa=True)
    parser.add_argument("--length", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    restart_capped(args.max_isa)
    torch.set_num_threads(args.threads)
    calibration = load_calibration_images(camvid(args.camvid, "train"), count=16)
    measured: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    with tempfile.TemporaryDirectory() as scratch_root:
        scratch = Path(scratch_root)
        video = write_video(
            val_frames(args.camvid, args.frames), args.length, scratch / "drive.avi"
        )
        sets = warmed_runners(
            args.models,
            scratch,
            lambda path, folder: runners(path, folder, calibration, args.threads),
            args.threads,
            val_frames(args.camvid, 1)[0],
        )
        for _ in range(args.rounds):
            for key, runner in sets.items():
                as_predict_runs(runner.predictor.model, args.threads)
                measured.setdefault(key, []).append(measure(runner, video, scratch / "out"))
    print(f"\n{describe_cpu()}; {args.threads} threads; a {args.length}-frame 480x360 video")
    header = f"{'model':<34}{'form':>15}{'job FPS':>9}{'segment FPS':>13}{'kept':>6}"
    header += f"{'as a 30 FPS camera':>20}"
    print(header + "\n" + "-" * len(header))
    for (model, form), rounds in measured.items():
        job, network, segmented = (statistics.median(values) for values in zip(*rounds))
        print(
            f"{model[:33]:<34}{form:>15}{job:>9.1f}{network:>13.1f}{job / network:>6.2f}"
            f"{segmented:>19.0%} segmented"
        )


if __name__ == "__main__":
    main()
