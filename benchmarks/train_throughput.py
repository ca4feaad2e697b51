"""Training throughput of DDRNet-23-slim on CamVid crops (batch 8, 352x480), measured in one run.

Prints images/s for:
  * the bare step (forward, main + auxiliary loss, backward, SGD step; no data loading),
    fp32 and bf16 autocast + channels_last, with the loss at full label resolution and at
    ``loss.label_stride`` 4;
  * the data pipeline alone (decode-once cache, random scale/crop/flip/photometric), with
    0, 1 and 2 DataLoader workers;
  * our whole training loop (``ddrnet.engine.train.train``: data, step, logging), second epoch;
and each as a ratio to the bare fp32 step. Run on an otherwise idle machine:

    python benchmarks/train_throughput.py [--data ../shared/data/camvid] [--seconds 20]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

import ddrnet
from ddrnet.config import load_config
from ddrnet.data.build import build_dataset
from ddrnet.engine.config import Config
from ddrnet.engine.losses import DeepSupervisionLoss, OhemCrossEntropy
from ddrnet.engine.train import train

BATCH, CROP, CLASSES = 8, (352, 480), 11


def bare_step_rate(bf16: bool, label_stride: int, seconds: float) -> float:
    """Images/s of the bare training step on random tensors of CamVid's shape."""
    torch.manual_seed(0)
    model = ddrnet.create_model("ddrnet_23_slim", num_classes=CLASSES, aux_head=True).train()
    images = torch.randn(BATCH, 3, *CROP)
    if bf16:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    targets = torch.randint(0, CLASSES, (BATCH, *CROP))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    criterion = DeepSupervisionLoss(
        OhemCrossEntropy(min_kept=131072 // label_stride**2), 1.0, 0.4, label_stride
    )

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            main, aux = model.forward_with_aux(images)
        loss, _ = criterion(main, aux, targets)
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


def training_loop_rate(data_root: str, workers: int, iterations: int) -> float:
    """Images/s of the second epoch of a real ``train()`` run (first epoch warms up)."""
    with tempfile.TemporaryDirectory() as output:
        config = load_config(
            Config,
            None,
            [
                f"data.root={data_root}",
                f"data.num_workers={workers}",
                "data.check=false",
                "loss.label_stride=4",
                "eval.max_images=1",
                "eval.every_epochs=100",
                "train.epochs=2",
                f"train.max_iterations_per_epoch={iterations}",
                f"train.output_dir={output}",
            ],
        )
        train(config)
        records = [
            json.loads(line) for line in (Path(output) / "metrics.jsonl").read_text().splitlines()
        ]
        return records[-1]["images_per_second"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data", default=str(Path(__file__).resolve().parents[1].parent / "shared/data/camvid")
    )
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument(
        "--iterations", type=int, default=25, help="training-loop iterations per epoch"
    )
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {BATCH}, crop {CROP}"
    )
    rows = []
    baseline = bare_step_rate(bf16=False, label_stride=1, seconds=args.seconds)
    rows.append(("bare step fp32, full-res loss", baseline))
    for bf16, stride in ((False, 4), (True, 1), (True, 4)):
        name = f"bare step {'bf16+channels_last' if bf16 else 'fp32'}, loss label_stride {stride}"
        rows.append((name, bare_step_rate(bf16, stride, args.seconds)))
    config = load_config(Config, None, [f"data.root={args.data}", "data.check=false"])
    for workers in (0, 1, 2):
        rows.append(
            (
                f"data pipeline alone, {workers} workers",
                data_pipeline_rate(config, workers, args.seconds),
            )
        )
    for workers in (1, 2):
        rows.append(
            (
                f"ddrnet train loop (bf16, label_stride 4), {workers} workers",
                training_loop_rate(args.data, workers, args.iterations),
            )
        )
    width = max(len(name) for name, _ in rows) + 2
    print(f"\n{'measurement':<{width}}{'img/s':>8}{'vs bare fp32':>14}")
    for name, rate in rows:
        print(f"{name:<{width}}{rate:>8.1f}{rate / baseline:>13.2f}x")


if __name__ == "__main__":
    main()
