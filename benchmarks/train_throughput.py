"""Training throughput of DDRNet-23-slim on CamVid crops (batch 8, 352x480), measured in one run.

Prints images/s for:
  * the bare step (forward, main + auxiliary loss, backward, SGD step; no data loading),
    fp32, and bf16 autocast + channels_last where the CPU computes bf16 natively (AVX512-BF16
    or AMX; emulated elsewhere and ~10x slower than fp32, so not timed), with the loss at full
    label resolution and at ``loss.label_stride`` 2 (the CamVid recipe) and 4, and with no
    loss at all (the network alone: the ceiling for the whole loop); and the recipe's step
    with ``torch.compile``;
  * the data pipeline alone (decode-once cache, random scale/crop/flip/photometric), with
    0, 1 and 2 DataLoader workers;
  * our whole training loop (``ddrnet.engine.train.train``: data, step, logging; the recipe's
    ``train.amp: auto``, channels_last, label_stride 2), second epoch, with 0 and 1 DataLoader
    workers;
  * the recipe's bare step and the loop with and without ``train.retain_freed_memory`` (glibc
    keeps freed memory for the next step instead of page-faulting it back in; the bare steps
    above run with glibc's defaults, the loop with the setting unless it says otherwise);
and each as a ratio to the bare fp32 step (medians over ``--rounds`` round-robin repeats,
with their spread). Every measurement runs in a fresh process, so that none inherits another's
heap or allocator setting. Run on an otherwise idle machine:

    python benchmarks/train_throughput.py [--data ../shared/data/camvid] [--seconds 20]
        [--rounds 3] [--only "label_stride 2"]
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

import ddrnet
from ddrnet.config import load_config
from ddrnet.data.build import build_dataset
from ddrnet.engine.allocator import retain_freed_memory
from ddrnet.engine.config import Config
from ddrnet.engine.losses import DeepSupervisionLoss, OhemCrossEntropy
from ddrnet.engine.train import train
from ddrnet.hardware import cpu_has_native_bf16, describe_cpu

BATCH, CROP, CLASSES = 8, (352, 480), 11


def bare_step_rate(
    bf16: bool,
    label_stride: int | None,
    seconds: float,
    compiled: bool = False,
    retain_memory: bool = False,
) -> float:
    """Images/s of the bare training step on random tensors of CamVid's shape;
    ``label_stride=None``: the mean of the logits as the loss (the network's cost alone);
    ``compiled``: the network's forward (and so its backward) through ``torch.compile``, as
    ``train.compile: true`` does (compilation happens in the warm-up steps);
    ``retain_memory``: with ``retain_freed_memory()`` (the loop's default on CPU)."""
    if retain_memory and not retain_freed_memory():
        raise SystemExit("retain_freed_memory() does not apply here (needs Linux with glibc)")
    torch.manual_seed(0)
    model = ddrnet.create_model("ddrnet_23_slim", num_classes=CLASSES, aux_head=True).train()
    images = torch.randn(BATCH, 3, *CROP)
    if bf16:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    targets = torch.randint(0, CLASSES, (BATCH, *CROP))
    optimizer = torch.optim.SGD(
        model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4, fused=True
    )
    forward_with_aux = torch.compile(model.forward_with_aux) if compiled else model.forward_with_aux
    stride = label_stride or 1
    criterion = DeepSupervisionLoss(
        OhemCrossEntropy(min_kept=131072 // stride**2), 1.0, 0.4, stride
    )

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            main, aux = forward_with_aux(images)
        if label_stride is None:
            loss = main.float().mean() + 0.4 * aux.float().mean()
        else:
            loss, _ = criterion(main.float(), aux.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return BATCH * _steps_per_second(step, seconds)


def _steps_per_second(step, seconds: float) -> float:
    for _ in range(3):  # warm-up: oneDNN primitive creation, allocator
        step()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        count += 1
    return count / (time.perf_counter() - start)


def data_pipeline_rate(config: Config, workers: int, seconds: float) -> float:
    """Images/s delivered by the training DataLoader alone."""
    dataset = build_dataset(config.data, config.data.train_split, train=True)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=BATCH, shuffle=True, num_workers=workers, drop_last=True
    )
    delivered, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for images, _ in loader:
            delivered += images.shape[0]
            if time.perf_counter() - start >= seconds:
                break
    return delivered / (time.perf_counter() - start)


def training_loop_rate(
    data_root: str, workers: int, iterations: int, label_stride: int, retain_memory: bool = True
) -> float:
    """Images/s of the second epoch of a real ``train()`` run (first epoch warms up)."""
    with tempfile.TemporaryDirectory() as output:
        config = load_config(
            Config,
            None,
            [
                f"data.root={data_root}",
                f"data.num_workers={workers}",
                "data.check=false",
                f"loss.label_stride={label_stride}",
                "eval.max_images=1",
                "eval.every_epochs=100",
                "train.epochs=2",
                f"train.max_iterations_per_epoch={iterations}",
                f"train.output_dir={output}",
                f"train.retain_freed_memory={str(retain_memory).lower()}",
            ],
        )
        train(config)
        records = [
            json.loads(line) for line in (Path(output) / "metrics.jsonl").read_text().splitlines()
        ]
        return records[-1]["images_per_second"]


def in_fresh_process(measure: Callable[[], float]) -> float:
    """Run one measurement in a new interpreter: allocator settings and heap state last for
    a process's lifetime, so measurements in one process would not be independent."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(measure).result()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data", default=str(Path(__file__).resolve().parents[1].parent / "shared/data/camvid")
    )
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument(
        "--iterations", type=int, default=25, help="training-loop iterations per epoch"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="measure everything this many times, round-robin, and report the median: the "
        "same step on this kind of machine varies by up to 40%% from one minute to the next",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="TEXT",
        help="run only the measurements whose name contains one of these texts (the first, "
        "bare fp32, always runs: it is the baseline of the ratios)",
    )
    return parser.parse_args()


def bare_step_measurements(seconds: float, bf16: bool) -> list[tuple[str, Callable[[], float]]]:
    """The model's training step alone, in each precision and loss resolution; the first, bare
    fp32 with the loss at full resolution, is the baseline of the ratios."""
    recipe = "bf16+channels_last" if bf16 else "fp32"
    measurements: list[tuple[str, Callable[[], float]]] = [
        ("bare step fp32, full-res loss", functools.partial(bare_step_rate, False, 1, seconds))
    ]
    strides = (
        ((False, 4), (True, 1), (True, 2), (True, 4), (True, None))
        if bf16
        else ((False, 2), (False, 4), (False, None))
    )
    for step_bf16, stride in strides:
        loss = "no loss (network alone)" if stride is None else f"loss label_stride {stride}"
        name = f"bare step {'bf16+channels_last' if step_bf16 else 'fp32'}, {loss}"
        measurements.append((name, functools.partial(bare_step_rate, step_bf16, stride, seconds)))
    compiled = functools.partial(bare_step_rate, bf16, 2, seconds, compiled=True)
    measurements.append((f"bare step {recipe}, loss label_stride 2, torch.compile", compiled))
    for stride in (2, None):
        loss = "no loss (network alone)" if stride is None else f"loss label_stride {stride}"
        retained = functools.partial(bare_step_rate, bf16, stride, seconds, retain_memory=True)
        measurements.append((f"bare step {recipe}, {loss}, freed memory retained", retained))
    return measurements


def loop_measurements(
    args: argparse.Namespace, recipe: str
) -> list[tuple[str, Callable[[], float]]]:
    """The data pipeline alone, and ``ddrnet train``'s loop with it."""
    measurements: list[tuple[str, Callable[[], float]]] = []
    config = load_config(Config, None, [f"data.root={args.data}", "data.check=false"])
    for workers in (0, 1, 2):
        pipeline = functools.partial(data_pipeline_rate, config, workers, args.seconds)
        measurements.append((f"data pipeline alone, {workers} workers", pipeline))
    for workers, stride in ((0, 2), (1, 2), (0, 4)):
        loop = functools.partial(training_loop_rate, args.data, workers, args.iterations, stride)
        name = f"ddrnet train loop ({recipe}, label_stride {stride}), {workers} workers"
        measurements.append((name, loop))
    defaults = functools.partial(
        training_loop_rate, args.data, 0, args.iterations, 2, retain_memory=False
    )
    name = f"ddrnet train loop ({recipe}, label_stride 2), 0 workers, glibc malloc defaults"
    measurements.append((name, defaults))
    return measurements


def main() -> None:
    args = parse_args()
    print(describe_cpu())
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {BATCH}, "
        f"crop {CROP}, {args.rounds} rounds"
    )
    # The recipe's precision here (train.amp: auto): bf16 only where the CPU computes it
    # natively; emulated bf16 runs ~10x slower than fp32 and is not timed.
    bf16 = cpu_has_native_bf16()
    recipe = "bf16+channels_last" if bf16 else "fp32"
    measurements = bare_step_measurements(args.seconds, bf16) + loop_measurements(args, recipe)
    if args.only:
        measurements = measurements[:1] + [
            (name, measure)
            for name, measure in measurements[1:]
            if any(text in name for text in args.only)
        ]
    rates: dict[str, list[float]] = {name: [] for name, _ in measurements}
    for _ in range(args.rounds):
        for name, measure in measurements:
            rates[name].append(in_fresh_process(measure))
    baseline = statistics.median(rates[measurements[0][0]])
    width = max(len(name) for name in rates) + 2
    print(f"\n{'measurement':<{width}}{'img/s':>8}{'min-max':>14}{'vs bare fp32':>14}")
    for name, values in rates.items():
        median = statistics.median(values)
        spread = f"{min(values):.1f}-{max(values):.1f}"
        print(f"{name:<{width}}{median:>8.1f}{spread:>14}{median / baseline:>13.2f}x")


if __name__ == "__main__":
    main()
