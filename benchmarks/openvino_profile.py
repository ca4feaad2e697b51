"""Where OpenVINO spends an INT8 DDRNet's forward pass, layer by layer, for each model file.

Each model (default: the bundled 23-slim and fast train-only models) is exported, quantised
as ``ddrnet export --format onnx-int8`` does (16 CamVid train frames) and compiled for a fixed
360x480 input with OpenVINO's per-layer counters on (``PERF_COUNT``); then the median
wall-clock ms of one inference, the counters summed by layer type, and the slowest layers.
The network alone: no normalisation, resize or arg-max (``predict_overhead.py`` times those).
The counters cost a little time themselves, so compare the models with each other, not with
the other benchmarks. Run on an otherwise idle machine:

    python benchmarks/openvino_profile.py [--models A B] [--threads 2] [--max-isa AVX2]
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import ddrnet
from ddrnet.data.camvid import camvid
from ddrnet.deploy import export_onnx, load_calibration_images, quantize_onnx_int8
from ddrnet.hardware import describe_cpu

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inference_speed import add_comparison_options, restart_capped  # noqa: E402

SIZE = (360, 480)


def profile(onnx_path: Path, threads: int, runs: int = 50) -> tuple[float, collections.Counter]:
    """Median ms of one inference, and ms per inference by ``(layer type, kernel, name)``."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(onnx_path))
    model.reshape([1, 3, *SIZE])
    config = {"PERF_COUNT": "YES", "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    request = core.compile_model(model, "CPU", config).create_infer_request()
    image = np.random.default_rng(0).random((1, 3, *SIZE), dtype=np.float32)
    for _ in range(20):
        request.infer([image])
    layers: collections.Counter = collections.Counter()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        request.infer([image])
        times.append(1000 * (time.perf_counter() - start))
        for layer in request.profiling_info:
            if layer.status == layer.Status.EXECUTED:
                key = (layer.node_type, layer.exec_type, layer.node_name)
                layers[key] += layer.real_time.total_seconds() * 1000 / runs
    return statistics.median(times), layers


def report(name: str, wall: float, layers: collections.Counter, top: int) -> None:
    by_type: collections.Counter = collections.Counter()
    for (node_type, exec_type, _), ms in layers.items():
        by_type[(node_type, exec_type)] += ms
    print(f"\n{name}: {wall:.2f} ms per inference, {sum(layers.values()):.2f} ms in the layers")
    for (node_type, exec_type), ms in by_type.most_common(8):
        print(f"  {node_type:<18}{exec_type:<26}{ms:7.2f} ms")
    print(f"  slowest {top} layers:")
    for (node_type, exec_type, node_name), ms in layers.most_common(top):
        print(f"    {ms:5.2f} ms  {node_type:<14}{exec_type:<22}{node_name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_comparison_options(parser, max_isa=True)
    parser.add_argument("--top", type=int, default=10, help="slowest layers to list")
    args = parser.parse_args()
    restart_capped(args.max_isa)
    calibration = load_calibration_images(camvid(args.camvid, "train"), count=16)
    print(f"{describe_cpu()}; {args.threads} threads; INT8 files at {SIZE[0]}x{SIZE[1]}")
    with tempfile.TemporaryDirectory() as scratch:
        for index, path in enumerate(args.models):
            model = ddrnet.create_model(checkpoint=path)
            fp32 = export_onnx(model, Path(scratch) / f"{index}.onnx")
            int8 = quantize_onnx_int8(fp32, Path(scratch) / f"{index}.int8.onnx", calibration)
            report(Path(path).stem, *profile(int8, args.threads), args.top)


if __name__ == "__main__":
    main()
