"""ExecuTorch (XNNPACK) speed on this CPU: eager PyTorch float32 against the ExecuTorch export
in float32 and INT8, DDRNet-23-slim at 360x480 (CamVid), batch 1, in one run.

Each of ``--runs`` rounds times one forward pass of every form, one after the other, so load
that drifts during the run hits all of them alike; the table gives each form's median in ms
and the median of its per-round ratios to eager. The exports (30-150 s each) happen first;
INT8 calibrates on ``--calibration-count`` CamVid *train* frames when ``--camvid`` exists,
else on noise (speed does not depend on the ranges). The last column is the arg-max label
agreement with eager on the benchmark's random input (a sanity check, not accuracy: see
tests/test_executorch.py for mIoU).

    python benchmarks/executorch_speed.py [--checkpoint FILE] [--size 360x480] [--runs 20]
        [--threads 2] [--camvid ../shared/data/camvid] [--calibration-count 8]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

import ddrnet
from ddrnet.data.camvid import camvid
from ddrnet.deploy import build_runner, load_calibration_images
from ddrnet.hardware import describe_cpu

REPO = Path(__file__).resolve().parents[1]


def _size(text: str) -> tuple[int, int]:
    height, width = text.lower().split("x")
    return int(height), int(width)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="camvid_ddrnet23_slim")
    parser.add_argument("--size", type=_size, default=(360, 480), help="HEIGHTxWIDTH")
    parser.add_argument("--runs", type=int, default=20, help="timed rounds")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--camvid", default=str(REPO.parent / "shared" / "data" / "camvid"))
    parser.add_argument("--calibration-count", type=int, default=8)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    model = ddrnet.create_model(checkpoint=args.checkpoint).eval()
    calibration = None
    if (Path(args.camvid) / "train.txt").is_file():
        calibration = load_calibration_images(camvid(args.camvid, "train"), args.calibration_count)
    runners = {"eager": build_runner("eager", model, args.size, threads=args.threads)}
    # build_runner draws the same random input (seed 0) for every form.
    for name in ("executorch", "executorch_int8"):
        started = time.perf_counter()
        runners[name] = build_runner(
            name, model, args.size, threads=args.threads, calibration_images=calibration
        )
        print(f"{name}: exported in {time.perf_counter() - started:.0f} s", flush=True)

    for runner in runners.values():  # warm-up: XNNPACK and oneDNN plan on the first call
        runner.fn(*runner.inputs)
    seconds: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(args.runs):
        for name, runner in runners.items():
            begin = time.perf_counter()
            runner.fn(*runner.inputs)
            seconds[name].append(time.perf_counter() - begin)

    reference = runners["eager"].output().argmax(1)
    height, width = args.size
    print(f"\nCPU: {describe_cpu()}; {args.threads} threads (torch and XNNPACK)")
    print(f"{args.checkpoint}, {height}x{width}, batch 1, {args.runs} interleaved rounds\n")
    print(f"{'form':<18}{'median ms':>10}{'vs eager':>10}{'labels = eager':>16}")
    for name, runner in runners.items():
        ratios = [eager / own for eager, own in zip(seconds["eager"], seconds[name])]
        agreement = float((runner.output().argmax(1) == reference).float().mean())
        print(
            f"{name:<18}{1000 * statistics.median(seconds[name]):>10.1f}"
            f"{statistics.median(ratios):>9.2f}x{100 * agreement:>15.2f}%"
        )


if __name__ == "__main__":
    main()
