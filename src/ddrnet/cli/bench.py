"""``ddrnet bench``: inference speed of several backends in one run, as a table."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ddrnet.atomic import atomic_write_json
from ddrnet.choices import BENCH_ROUNDS, BENCH_SECONDS, BENCH_SIZE, BENCH_WARMUP_SECONDS
from ddrnet.cli.options import (
    NON_NEGATIVE_FLOAT,
    PATH,
    POSITIVE_FLOAT,
    POSITIVE_INT,
    load_pytorch_model,
    parse_image_size,
    writable_file,
)
from ddrnet.errors import UsageError

# The command's line in ``ddrnet --help``.
HELP = "inference speed of several backends in one run (the paper's protocol by default)"


def add_parser(commands: argparse._SubParsersAction) -> None:
    from ddrnet.choices import BACKENDS

    parser = commands.add_parser(
        "bench",
        help=HELP,
        description="Batch 1, eval mode, warm-up then a timed loop; every speedup is relative "
        "to eager fp32 measured in the same run.",
    )
    parser.add_argument("--checkpoint", help="model file (default: the bundled CamVid model)")
    parser.add_argument("--model", help="architecture (fresh weights unless --checkpoint)")
    parser.add_argument(
        "--size",
        type=parse_image_size,
        default=BENCH_SIZE,
        help=f"HEIGHTxWIDTH (default {BENCH_SIZE[0]}x{BENCH_SIZE[1]}, the paper's)",
    )
    parser.add_argument(
        "--backends",
        nargs="+",
        help=f"any of {', '.join(BACKENDS)} (cuda* and tensorrt* on NVIDIA GPUs); default: "
        "those that run well on this machine (bf16 where the CPU computes it natively, "
        "OpenVINO and ncnn where installed, the GPU's where there is one)",
    )
    parser.add_argument(
        "--seconds",
        type=POSITIVE_FLOAT,
        default=BENCH_SECONDS,
        help="timed seconds per backend, in all (default %(default)s)",
    )
    parser.add_argument(
        "--rounds",
        type=POSITIVE_INT,
        default=BENCH_ROUNDS,
        help="split --seconds into this many round-robin passes over the backends; speed-ups "
        "are medians of the per-pass ratios, so a machine whose load drifts still gives "
        "fair ratios (default %(default)s)",
    )
    parser.add_argument(
        "--warmup",
        type=NON_NEGATIVE_FLOAT,
        default=BENCH_WARMUP_SECONDS,
        help="warm-up seconds per backend (default %(default)s)",
    )
    parser.add_argument("--batch-size", type=POSITIVE_INT, default=1)
    parser.add_argument("--threads", type=POSITIVE_INT, help="torch CPU threads")
    parser.add_argument("--calibration", help="INT8: folder of real images (default: demo frames)")
    parser.add_argument("--json", type=PATH, help="write all figures to this file")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ddrnet.deploy import (
        BACKENDS,
        check_backends,
        default_backends,
        float32_conv_peak,
        load_calibration_images,
        measure_conv_peak_gflops,
        run_benchmarks,
    )
    from ddrnet.deploy.calibration import calibration_folder
    from ddrnet.hardware import describe_cpu
    from ddrnet.models import count_macs, count_parameters

    writable_file("--json", args.json, (".json",))
    if args.threads:
        torch.set_num_threads(args.threads)
    # Checked before the ~30 s of measuring, not after.
    names = args.backends or default_backends()
    backends = check_backends(names, args.size)
    int8 = any(name.endswith("int8") for name in backends)
    if args.calibration is not None and not int8:
        raise UsageError("--calibration applies to the INT8 backends, and none is asked for")
    calibration = None
    if int8:  # read now: a wrong folder fails before the model loads and the peak is timed
        folder = calibration_folder(args.calibration, "INT8", demo_default=True)
        calibration = load_calibration_images(folder)
    model = load_pytorch_model(args)
    height, width = args.size
    params = count_parameters(model, exclude_prefixes=("aux_head.",))
    gmacs = count_macs(model, (height, width)) / 1e9
    print(
        f"{model.metadata.architecture}: {params / 1e6:.3f}M parameters, {gmacs:.2f} GMACs at "
        f"{height}x{width}; batch {args.batch_size}, {torch.get_num_threads()} threads"
    )
    print(describe_cpu())
    peak = measure_conv_peak_gflops(seconds=2.0)
    print(
        f"convolution peak of this CPU (3x3, 256 ch): fp32 {peak['float32']:.0f} GFLOP/s, "
        f"bf16 {peak['bfloat16']:.0f} GFLOP/s"
    )
    rows = run_benchmarks(
        model,
        (height, width),
        backends,
        seconds=args.seconds,
        rounds=args.rounds,
        warmup_seconds=args.warmup,
        batch_size=args.batch_size,
        calibration_images=calibration,
        measure_peak=float32_conv_peak,
    )
    print_rows(rows, args.rounds)
    if args.json:
        result = {
            "model": model.metadata.architecture,
            "input_size": [height, width],
            "batch_size": args.batch_size,
            "parameters": params,
            "gmacs": gmacs,
            "threads": torch.get_num_threads(),
            "conv_peak_gflops": peak,
            "backends": {name: BACKENDS[name] for name in backends},
            "rows": rows,
        }
        atomic_write_json(result, Path(args.json), default=str)
        print(f"results written to {args.json}")
    if all(row.get("error") for row in rows if row["backend"] in backends):
        print("ddrnet bench: every backend asked for failed (see above)", file=sys.stderr)
        return 1
    return 0


def print_rows(rows: list[dict], rounds: int) -> None:
    """The table of ``run_benchmarks`` rows: one line per backend, failures by reason."""
    from ddrnet.deploy import measured_peaks

    peaks = measured_peaks(rows)
    peak_range = f"{min(peaks):.0f}-{max(peaks):.0f}" if peaks else "not measured"
    print(
        f"{rounds} interleaved rounds; FPS and speed-up are medians over rounds, the range "
        "is the lowest and highest per-round speed-up; 'of fp32 peak' compares each round with "
        f"the fp32 convolution peak measured after it ({peak_range} GFLOP/s)"
    )
    header = (
        f"{'backend':<26}{'FPS':>8}{'mean ms':>9}{'p50':>8}{'p90':>8}{'p99':>8}"
        f"{'speedup':>9}{'range':>14}{'peak MiB':>10}{'of fp32 peak':>14}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        if row.get("error"):
            print(f"{row['backend']:<26}failed: {row['error'][:90]}")
            continue
        spread = f"{min(row['speedup_rounds']):.2f}-{max(row['speedup_rounds']):.2f}"
        print(
            f"{row['backend']:<26}{row['fps']:>8.2f}{row['latency_ms_mean']:>9.1f}"
            f"{row['latency_ms_p50']:>8.1f}{row['latency_ms_p90']:>8.1f}{row['latency_ms_p99']:>8.1f}"
            f"{row['speedup']:>8.2f}x{spread:>14}{row.get('peak_memory_mib') or 0:>10.0f}"
            f"{row.get('fraction_of_peak') or 0:>14.2f}"
        )
