"""Inference speed of DDRNet-23-slim on this CPU, every backend against eager fp32, in one run.

For 1024x2048 (the paper's Cityscapes protocol) and 360x480 (CamVid), batch 1, eval mode:
FPS, latency percentiles, speed as a ratio to the plain eager fp32 forward pass measured in the
same run, and the fraction of this CPU's float32 convolution peak (also measured in this run)
that each backend reaches (bf16/INT8 backends can exceed 1: they beat fp32's ceiling).
Then, with CamVid at hand, the accuracy of every deployed form of the same weights on CamVid
val (mIoU and its change against the fp32 ONNX model), INT8 calibrated on 16 CamVid *train*
images. Run on an otherwise idle machine:

    python benchmarks/inference_speed.py [--checkpoint FILE] [--seconds 10] [--threads 2]
        [--camvid ../shared/data/camvid] [--evaluate-images 101]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

import ddrnet
from ddrnet.assets import demo_frames
from ddrnet.data.datasets import camvid
from ddrnet.deploy import (
    evaluate_onnx_forms,
    export_onnx,
    load_calibration_images,
    measure_conv_peak_gflops,
    quantize_onnx_int8,
    run_benchmarks,
)
from ddrnet.engine.evaluate import evaluate

BACKENDS = [
    "eager",
    "bn_folded",
    "eager_channels_last",
    "eager_bf16_channels_last",
    "ort",
    "ort_int8",
    "openvino",
    "openvino_bf16",
    "openvino_int8",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--checkpoint",
        help="default: the bundled camvid_ddrnet23_slim_train (trained without val, so the "
        "accuracy table is held out), else fresh weights",
    )
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--backends", nargs="+", default=BACKENDS)
    parser.add_argument("--json", help="write all rows here")
    parser.add_argument(
        "--camvid",
        type=Path,
        default=Path(__file__).resolve().parents[2] / "shared/data/camvid",
        help="CamVid root for the accuracy table (skipped if missing)",
    )
    parser.add_argument("--evaluate-images", type=int, default=101)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    try:
        checkpoint = args.checkpoint or str(
            ddrnet.assets.bundled_model_path("camvid_ddrnet23_slim_train")
        )
        model = ddrnet.create_model(checkpoint=checkpoint)
    except FileNotFoundError:
        model = ddrnet.create_model("ddrnet_23_slim", num_classes=11)
    calibration = load_calibration_images(demo_frames()[0].parent, count=3)
    peak = measure_conv_peak_gflops(seconds=3.0)
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
            warmup_seconds=2.0,
            calibration_images=calibration,
            peak_gflops=peak["float32"],
        )
        results[f"{size[0]}x{size[1]}"] = rows
        print(f"\n{size[0]}x{size[1]}")
        print(f"{'backend':<26}{'FPS':>8}{'p50 ms':>9}{'vs eager fp32':>15}{'of fp32 peak':>14}")
        for row in rows:
            if row.get("error"):
                print(f"{row['backend']:<26}unavailable: {row['error'][:70]}")
                continue
            print(
                f"{row['backend']:<26}{row['fps']:>8.2f}{row['latency_ms_p50']:>9.1f}"
                f"{row['speedup']:>14.2f}x{row.get('fraction_of_peak') or 0:>14.2f}"
            )
    accuracy = deployed_accuracy(model, args.camvid, args.evaluate_images, args.threads)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"peak": peak, "results": results, "camvid_val_mIoU": accuracy},
                indent=2,
                default=str,
            )
        )


def deployed_accuracy(
    model: torch.nn.Module, root: Path, images: int, threads: int
) -> dict[str, float]:
    """mIoU on the first ``images`` CamVid val frames of each deployed form of ``model``."""
    if not (root / "val.txt").is_file() or getattr(model, "metadata", None) is None:
        print(f"\n(no accuracy table: needs a trained checkpoint and CamVid at {root})")
        return {}
    val = camvid(root, "val")
    metadata = model.metadata
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as scratch:
        fp32 = export_onnx(model, Path(scratch) / "fp32.onnx")
        calibration = load_calibration_images(camvid(root, "train"), count=16)
        int8 = quantize_onnx_int8(fp32, Path(scratch) / "int8.onnx", calibration)
        forms = [
            ("ort", fp32, "onnxruntime", "f32"),
            ("openvino", fp32, "openvino", "f32"),
            ("openvino_bf16", fp32, "openvino", "bf16"),
            ("ort_int8", int8, "onnxruntime", "f32"),
            ("openvino_int8", int8, "openvino", "bf16"),
        ]
        evaluated = evaluate_onnx_forms(forms, val, limit=images, threads=threads)
        results.update({name: m.miou for name, m in evaluated.items() if m is not None})
    subset = torch.utils.data.Subset(val, range(min(images, len(val))))
    for name, amp in (("eager", None), ("eager_bf16_channels_last", torch.bfloat16)):
        metrics = evaluate(
            model,
            subset,
            model.num_classes,
            metadata.mean,
            metadata.std,
            amp_dtype=amp,
            channels_last=amp is not None,
            progress=False,
        )
        results[name] = metrics.miou
    reference = results["ort"]
    print(f"\nCamVid val mIoU, first {len(subset)} images (change against fp32 ONNX)")
    for name, miou in results.items():
        print(f"{name:<26}{miou:>8.2f}{miou - reference:>+9.2f}")
    return results


if __name__ == "__main__":
    main()
