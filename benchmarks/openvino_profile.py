"""Where OpenVINO spends an INT8 DDRNet's forward pass, layer by layer, for each model file.

Each model (default: the bundled 23-slim and fast train-only models) is exported, quantised
as ``ddrnet export --format onnx-int8`` does (16 CamVid train frames) and compiled for a fixed
360x480 input with OpenVINO's per-layer counters on (``PERF_COUNT``); the models take turns
inference by inference. Then the median wall-clock ms of one inference, the counters summed by
layer type, and the slowest layers.
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


def compile_profiled(onnx_path: Path, threads: int):
    """An inference request for ``onnx_path`` at a fixed 360x480, per-layer counters on."""
    from ddrnet.deploy.runtime import openvino_core

    core = openvino_core()
    model = core.read_model(str(onnx_path))
    model.reshape([1, 3, *SIZE])
    config = {"PERF_COUNT": "YES", "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    return core.compile_model(model, "CPU", config).create_infer_request()


def profile(requests: dict, runs: int = 60) -> dict[str, tuple[float, collections.Counter]]:
    """For each request: the median ms of one inference, and ms per inference by ``(layer
    type, kernel, name)``. The models take turns inference by inference, so load that drifts
    hits all alike."""
    image = np.random.default_rng(0).random((1, 3, *SIZE), dtype=np.float32)
    for request in requests.values():
        for _ in range(20):
            request.infer([image])
    layers = {name: collections.Counter() for name in requests}
    times: dict[str, list[float]] = {name: [] for name in requests}
    for _ in range(runs):
        for name, request in requests.items():
            start = time.perf_counter()
            request.infer([image])
            times[name].append(1000 * (time.perf_counter() - start))
            for layer in request.profiling_info:
                if layer.status == layer.Status.EXECUTED:
                    key = (layer.node_type, layer.exec_type, layer.node_name)
                    layers[name][key] += layer.real_time.total_seconds() * 1000 / runs
    return {name: (statistics.median(times[name]), layers[name]) for name in requests}


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
    requests = {}
    with tempfile.TemporaryDirectory() as scratch:
        for index, path in enumerate(args.models):
            model = ddrnet.create_model(checkpoint=path)
            fp32 = export_onnx(model, Path(scratch) / f"{index}.onnx")
            int8 = quantize_onnx_int8(fp32, Path(scratch) / f"{index}.int8.onnx", calibration)
            requests[f"{index}: {Path(path).stem}"] = compile_profiled(int8, args.threads)
    results = profile(requests)
    for name, (wall, layers) in results.items():
        report(name, wall, layers, args.top)
    first = next(iter(results.values()))[0]
    for name, (wall, _) in results.items():
        print(f"{name}: {first / wall:.2f}x the first model's inferences per second")


if __name__ == "__main__":
    main()
