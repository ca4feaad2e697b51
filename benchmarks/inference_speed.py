"""Inference speed of DDRNet-23-slim on this CPU, every backend against eager fp32, in one run.

For 1024x2048 (the paper's Cityscapes protocol) and 360x480 (CamVid), batch 1, eval mode:
FPS, latency percentiles, speed as a ratio to the plain eager fp32 forward pass measured in the
same run (every backend timed in ``--rounds`` interleaved passes; the ratio is the median of
the per-pass ratios, shown with their range, so load that drifts during the run cancels), and
the fraction of this CPU's float32 convolution peak (measured again after every pass, each
pass's rates against its own peak) that each backend reaches (bf16/INT8 backends can exceed 1:
they beat fp32's ceiling).
Then, with CamVid at hand, every deployed form of the same weights run as a model, through
the code of ``ddrnet eval`` (mIoU on CamVid val and its change against eager fp32; INT8
calibrated on 16 CamVid *train* images) and of ``ddrnet predict`` (median latency per frame,
pre- and post-processing included, and its ratio to eager fp32). Run on an otherwise idle
machine:

    python benchmarks/inference_speed.py [--checkpoint FILE] [--seconds 10] [--rounds 5]
        [--threads 2]
        [--camvid ../shared/data/camvid] [--evaluate-images 101]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

import ddrnet
from ddrnet.data.camvid import camvid
from ddrnet.data.io import demo_frames
from ddrnet.deploy import (
    export_onnx,
    float32_conv_peak,
    load_calibration_images,
    load_onnx_model,
    measure_conv_peak_gflops,
    measured_peaks,
    quantize_onnx_int8,
    run_benchmarks,
)
from ddrnet.engine.evaluate import evaluate
from ddrnet.hardware import cpu_has_native_bf16, describe_cpu, onednn_isa_cap
from ddrnet.runner import SegmentationRunner, leave_cores_to_runtime

BACKENDS = [
    "eager",
    "bn_folded",
    "compile",
    "eager_channels_last",
    "eager_bf16_channels_last",
    "ort",
    "ort_int8",
    "openvino",
    "openvino_bf16",
    "openvino_int8",
]
# What the benchmarks compare by default: the bundled CamVid 23-slim and its fast (pruned and
# distilled) twin, both trained without val, so their val mIoU is a held-out figure.
COMPARED_MODELS = ["camvid_ddrnet23_slim_train", "camvid_ddrnet23_slim_fast_train"]
CAMVID = Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid"
# Timed only where the CPU computes bf16 natively: elsewhere PyTorch emulates it (about 10x
# slower than fp32) and OpenVINO runs its bf16 hint in fp32 (the "openvino" row).
BF16_BACKENDS = ("eager_bf16_channels_last", "openvino_bf16")


def add_comparison_options(parser: argparse.ArgumentParser, max_isa: bool = False) -> None:
    """The options every model-comparing benchmark takes: ``--models``, ``--camvid``,
    ``--frames``, ``--threads`` (and ``--max-isa``, see ``restart_capped``)."""
    parser.add_argument("--models", nargs="+", default=COMPARED_MODELS)
    parser.add_argument("--camvid", type=Path, default=CAMVID)
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    if max_isa:
        parser.add_argument("--max-isa", type=str.upper, choices=["AVX2", "AVX512_CORE"])


def as_predict_runs(model: torch.nn.Module, threads: int) -> None:
    """PyTorch's threads as ``ddrnet predict`` sets them for ``model``: one beside a model that
    its runtime runs (``leave_cores_to_runtime``), ``threads`` for a PyTorch model. The forms
    share one process, so call it before evaluating or timing each."""
    torch.set_num_threads(threads)
    leave_cores_to_runtime(model)


def warmed_runners(
    models: list[str],
    scratch_root: Path,
    build: Callable[[str, Path], dict[str, SegmentationRunner]],
    threads: int,
    frame,
) -> dict[tuple[str, str], SegmentationRunner]:
    """``(model file stem, form) -> runner`` for each of ``models`` and each form that
    ``build(model, scratch)`` makes of it (``scratch``: a new folder under ``scratch_root``
    per model, for its exported files), each run once on ``frame`` (``(H, W, 3)`` uint8) with
    PyTorch's threads as ``ddrnet predict`` sets them: OpenVINO compiles, oneDNN plans."""
    runners = {}
    for index, path in enumerate(models):
        scratch = Path(scratch_root) / f"model{index}"
        scratch.mkdir()
        for form, runner in build(path, scratch).items():
            as_predict_runs(runner.predictor.model, threads)
            runner.labels([frame])
            runners[(Path(path).stem, form)] = runner
    return runners


def val_frames(root: Path, count: int) -> list:
    """The first ``count`` CamVid val frames as ``(360, 480, 3)`` uint8 RGB arrays."""
    val = camvid(root, "val")
    return [val[i][0].permute(1, 2, 0).numpy() for i in range(min(count, len(val)))]


def restart_capped(isa: str | None) -> None:
    """Run this script again with every capable runtime capped to ``isa`` (set before they
    load: oneDNN reads its cap once, at its first kernel); nothing when ``isa`` is None or
    this run is capped to it already."""
    if isa is None or onednn_isa_cap() == isa:
        return
    os.environ.update(
        ONEDNN_MAX_CPU_ISA=isa,
        OV_CPU_MAX_ISA=isa,
        ATEN_CPU_CAPABILITY="avx2" if isa == "AVX2" else "avx512",
    )
    os.execv(sys.executable, [sys.executable, *sys.argv])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--checkpoint",
        help="default: the bundled camvid_ddrnet23_slim_train (trained without val, so the "
        "accuracy table is held out), else fresh weights",
    )
    parser.add_argument("--seconds", type=float, default=8.0, help="timed seconds per backend")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved passes over backends")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument(
        "--backends",
        nargs="+",
        default=[b for b in BACKENDS if cpu_has_native_bf16() or b not in BF16_BACKENDS],
    )
    parser.add_argument("--json", help="write all rows here")
    parser.add_argument(
        "--camvid",
        type=Path,
        default=CAMVID,
        help="CamVid root for the accuracy table (skipped if missing)",
    )
    parser.add_argument("--evaluate-images", type=int, default=101)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    try:
        checkpoint = args.checkpoint or str(
            ddrnet.models.weights.bundled_model_path(COMPARED_MODELS[0])
        )
        model = ddrnet.create_model(checkpoint=checkpoint)
    except FileNotFoundError:
        model = ddrnet.create_model("ddrnet_23_slim", num_classes=11)
    calibration = load_calibration_images(demo_frames()[0].parent, count=3)
    peak = measure_conv_peak_gflops(seconds=3.0)
    print(describe_cpu())
    print(
        f"torch {torch.__version__}, {args.threads} threads; convolution peak fp32 "
        f"{peak['float32']:.0f} GFLOP/s, bf16 {peak['bfloat16']:.0f} GFLOP/s"
    )
    results = {}
    for size in ((1024, 2048), (360, 480)):
        rows = run_benchmarks(
            model,
            size,
            args.backends,
            seconds=args.seconds,
            rounds=args.rounds,
            warmup_seconds=2.0,
            calibration_images=calibration,
            measure_peak=float32_conv_peak,
        )
        results[f"{size[0]}x{size[1]}"] = rows
        peaks = ", ".join(f"{peak:.0f}" for peak in measured_peaks(rows))
        print(f"\n{size[0]}x{size[1]} (fp32 convolution peak per round: {peaks} GFLOP/s)")
        print(
            f"{'backend':<26}{'FPS':>8}{'p50 ms':>9}{'vs eager fp32':>15}{'range':>12}"
            f"{'of fp32 peak':>14}"
        )
        for row in rows:
            if row.get("error"):
                print(f"{row['backend']:<26}unavailable: {row['error'][:70]}")
                continue
            print(
                f"{row['backend']:<26}{row['fps']:>8.2f}{row['latency_ms_p50']:>9.1f}"
                f"{row['speedup']:>14.2f}x"
                f"{min(row['speedup_rounds']):>6.2f}-{max(row['speedup_rounds']):<5.2f}"
                f"{row.get('fraction_of_peak') or 0:>14.2f}"
            )
    accuracy = deployed_accuracy_and_latency(model, args.camvid, args.evaluate_images, args.threads)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"peak": peak, "results": results, "camvid_val": accuracy},
                indent=2,
                default=str,
            )
        )


def deployed_forms(
    model: torch.nn.Module, scratch: Path, calibration: list, threads: int
) -> dict[str, tuple[torch.nn.Module, torch.dtype | None]]:
    """Every deployed form of ``model`` as a model ``ddrnet predict``/``eval`` can run, with its
    autocast dtype: PyTorch fp32 and bf16, the fp32 ONNX file with ONNX Runtime and OpenVINO
    (f32, bf16), the INT8 file with both (OpenVINO's float layers in bf16). The bf16 forms
    only where the CPU computes bf16 natively."""
    fp32 = export_onnx(model, scratch / "fp32.onnx")
    int8 = quantize_onnx_int8(fp32, scratch / "int8.onnx", calibration)
    bf16 = cpu_has_native_bf16()
    forms: dict[str, tuple[torch.nn.Module, torch.dtype | None]] = {"eager": (model, None)}
    if bf16:
        forms["eager_bf16"] = (model, torch.bfloat16)
    candidates = [
        ("ort", fp32, "onnxruntime", "f32"),
        ("openvino", fp32, "openvino", "f32"),
        ("openvino_bf16", fp32, "openvino", "bf16"),
        ("ort_int8", int8, "onnxruntime", "f32"),
        ("openvino_int8", int8, "openvino", "bf16" if bf16 else "f32"),
    ]
    for name, path, runtime, precision in candidates:
        if name == "openvino_bf16" and not bf16:
            continue
        try:
            forms[name] = (load_onnx_model(path, runtime, precision, threads), None)
        except ImportError:
            print(f"({name}: {runtime} is not installed)")
    return forms


def deployed_accuracy_and_latency(
    model: torch.nn.Module, root: Path, images: int, threads: int
) -> dict[str, dict[str, float]]:
    """For each deployed form of ``model``: mIoU on the first ``images`` CamVid val frames
    (``ddrnet eval``'s code path) and the median per-frame latency of ``ddrnet predict``'s
    code path on 20 of them (normalise, forward, resize to 360x480, class ids; file reading
    and writing excluded), the forms taking turns frame by frame so drifting load hits all."""
    if not (root / "val.txt").is_file() or getattr(model, "metadata", None) is None:
        print(f"\n(no accuracy table: needs a trained checkpoint and CamVid at {root})")
        return {}
    val = camvid(root, "val")
    subset = torch.utils.data.Subset(val, range(min(images, len(val))))
    frames = [val[index][0].permute(1, 2, 0).numpy() for index in range(min(20, len(val)))]
    metadata = model.metadata
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        calibration = load_calibration_images(camvid(root, "train"), count=16)
        runners = {}
        for name, (form, amp) in deployed_forms(model, Path(scratch), calibration, threads).items():
            as_predict_runs(form, threads)
            metrics = evaluate(
                form, subset, model.num_classes, metadata.mean, metadata.std,
                amp_dtype=amp, progress=False,
            )  # fmt: skip
            results[name] = {"mIoU": metrics.miou}
            runners[name] = SegmentationRunner(form, torch.device("cpu"), amp)
            for frame in frames[:3]:  # warm-up: OpenVINO compiles for the size, oneDNN plans
                runners[name].labels([frame])
        latencies: dict[str, list[float]] = {name: [] for name in runners}
        for frame in frames:
            for name, runner in runners.items():
                as_predict_runs(runner.predictor.model, threads)
                latencies[name].append(runner.labels([frame])[-1])
        for name, values in latencies.items():
            results[name]["latency_ms"] = statistics.median(values)
    reference = results["eager"]
    print(
        f"\nddrnet eval on the first {len(subset)} CamVid val images, and ddrnet predict's "
        "median latency per 360x480 frame (normalise, forward, resize, class ids)"
    )
    print(f"{'form':<26}{'mIoU':>8}{'change':>9}{'ms/frame':>10}{'vs eager':>10}")
    for name, row in results.items():
        print(
            f"{name:<26}{row['mIoU']:>8.2f}{row['mIoU'] - reference['mIoU']:>+9.2f}"
            f"{row['latency_ms']:>10.1f}{reference['latency_ms'] / row['latency_ms']:>9.2f}x"
        )
    return results


if __name__ == "__main__":
    main()
