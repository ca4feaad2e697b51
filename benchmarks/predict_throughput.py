"""Frames per second of ``ddrnet predict`` on a stream of frames, one stream against several,
for the bundled 23-slim and its fast twin, measured in one run.

For each model file (default: both train-only CamVid models) and form (PyTorch fp32, ONNX
Runtime INT8, OpenVINO INT8 with f32 float layers, and with bf16 float layers where the CPU
computes bf16), 30 CamVid val frames at 480x360 go through ``SegmentationRunner.map`` (the
code ``ddrnet predict --streams N`` runs: normalise, forward, class ids; no file reading or
writing) with 1 stream and with ``--streams`` streams; the frames per second of each, the
gain of the streams, and each form's speed-up of the fast model over the 23-slim. Every
(model, form, streams) set takes its turn in each of ``--rounds`` rounds, so load that
drifts hits all alike; medians over the rounds, and the gains and speed-ups medians of the
ratios within each round. Run on an otherwise idle machine:

    python benchmarks/predict_throughput.py [--models A B] [--frames 30] [--threads 2]
        [--streams 2] [--rounds 5] [--max-isa AVX2]

``--max-isa AVX2``: as in ``pruning_tradeoff.py``, the run starts again with oneDNN,
OpenVINO and PyTorch capped to AVX2 (an AVX2 laptop without VNNI or native bf16, on the same
cores), without ONNX Runtime, which no cap reaches.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import ddrnet
from ddrnet.data.camvid import camvid
from ddrnet.deploy import export_onnx, load_calibration_images, load_onnx_model, quantize_onnx_int8
from ddrnet.hardware import cpu_has_native_bf16, describe_cpu, onednn_isa_cap
from ddrnet.runner import SegmentationRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inference_speed import (  # noqa: E402
    add_comparison_options,
    as_predict_runs,
    restart_capped,
    val_frames,
    warmed_runners,
)


def runners(
    path: str, scratch: Path, calibration: list, threads: int, streams: int
) -> dict[str, SegmentationRunner]:
    """``"form/streams"`` -> a runner of the model in ``path`` in that form."""
    model = ddrnet.create_model(checkpoint=path)
    int8 = quantize_onnx_int8(
        export_onnx(model, scratch / "fp32.onnx"), scratch / "int8.onnx", calibration
    )
    forms = [("ort_int8", "onnxruntime", "f32"), ("openvino_int8", "openvino", "f32")]
    if cpu_has_native_bf16():
        forms.append(("openvino_int8_bf16", "openvino", "bf16"))
    if onednn_isa_cap():  # ONNX Runtime picks kernels from CPUID: no cap reaches it
        forms = forms[1:]
    cpu = torch.device("cpu")
    result = {}
    for count in sorted({1, streams}):
        result[f"pytorch/{count}"] = SegmentationRunner(model, cpu, streams=count)
        for name, runtime, precision in forms:
            onnx = load_onnx_model(int8, runtime, precision, threads, streams=count)
            result[f"{name}/{count}"] = SegmentationRunner(onnx, cpu, streams=count)
    return result


def frames_per_second(runner: SegmentationRunner, frames: list[np.ndarray]) -> float:
    start = time.perf_counter()
    for _ in runner.map(lambda frame: runner.labels([frame]), frames):
        pass
    return len(frames) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_comparison_options(parser, max_isa=True)
    parser.add_argument("--streams", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    restart_capped(args.max_isa)
    torch.set_num_threads(args.threads)
    frames = val_frames(args.camvid, args.frames)
    calibration = load_calibration_images(camvid(args.camvid, "train"), count=16)
    measured: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as scratch_root:
        sets = warmed_runners(
            args.models,
            Path(scratch_root),
            lambda path, scratch: runners(path, scratch, calibration, args.threads, args.streams),
            args.threads,
            frames[0],
        )
        for _ in range(args.rounds):
            for key, runner in sets.items():
                as_predict_runs(runner.predictor.model, args.threads)
                measured.setdefault(key, []).append(frames_per_second(runner, frames))
    report(measured, args)


def median_ratio(rates: dict[tuple[str, str], list[float]], key, base) -> float:
    """The median over rounds of ``key``'s frames per second over ``base``'s in the same
    round: load that drifts between rounds cancels out."""
    return statistics.median(a / b for a, b in zip(rates[key], rates[base]))


def report(rates: dict[tuple[str, str], list[float]], args: argparse.Namespace) -> None:
    """Medians over the rounds; the gains and speed-ups are medians of per-round ratios."""
    print(f"\n{describe_cpu()}; {args.threads} threads; frames per second at 480x360")
    first = Path(args.models[0]).stem
    header = f"{'model':<34}{'form':>20}{'1 stream':>10}{f'{args.streams} streams':>11}"
    header += f"{'gain':>7}{'vs first model, 1 / N streams':>31}"
    print(header + "\n" + "-" * len(header))
    for model in dict.fromkeys(model for model, _ in rates):
        for form in dict.fromkeys(key.split("/")[0] for _, key in rates):
            one, many = (model, f"{form}/1"), (model, f"{form}/{args.streams}")
            base_one, base_many = (first, f"{form}/1"), (first, f"{form}/{args.streams}")
            print(
                f"{model[:33]:<34}{form:>20}{statistics.median(rates[one]):>10.1f}"
                f"{statistics.median(rates[many]):>11.1f}"
                f"{median_ratio(rates, many, one):>6.2f}x"
                f"{median_ratio(rates, one, base_one):>23.2f}x / "
                f"{median_ratio(rates, many, base_many):.2f}x"
            )


if __name__ == "__main__":
    main()
