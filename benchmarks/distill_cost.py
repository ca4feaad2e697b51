"""What a distillation teacher costs a training step: images/s of the bare step (forward,
OHEM main + auxiliary loss at label_stride 2, backward, SGD step; no data loading) of a
DDRNet-23-slim student on random CamVid-shaped batches, without a teacher and with
``distill.teacher`` (KD, KD + CWD, and KD from the teacher's multi-scale + flip ensemble),
rounds interleaved; medians with their spread.

    python benchmarks/distill_cost.py [--teacher camvid_ddrnet23_slim] [--device cpu]
        [--batch 8] [--crop 352 480] [--steps 5] [--rounds 3] [--amp none|bf16]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import ddrnet
from ddrnet.data.labels import CAMVID
from ddrnet.engine.config import DistillConfig
from ddrnet.engine.device import autocast
from ddrnet.engine.distill import build_distiller
from ddrnet.engine.losses import DeepSupervisionLoss, OhemCrossEntropy


def step_rate(args: argparse.Namespace, distiller, model, optimizer, criterion) -> float:
    """Images/s over ``args.steps`` steps (after one warm-up step)."""
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.amp == "bf16" else None
    images = torch.randn(args.batch, 3, *args.crop, device=device)
    images = images.contiguous(memory_format=torch.channels_last)
    target = torch.randint(0, 11, (args.batch, *args.crop), device=device)

    def step() -> None:
        with autocast(device, dtype):
            main, aux = model.forward_with_aux(images)
        loss, parts = criterion(main.float(), aux.float(), target)
        if distiller is not None:
            loss, parts = distiller.add_to(loss, parts, images, main, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return args.steps * args.batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="camvid_ddrnet23_slim")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--crop", type=int, nargs=2, default=[352, 480])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--amp", choices=["none", "bf16"], default="none")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.amp == "bf16" else None
    model = ddrnet.create_model("ddrnet_23_slim", num_classes=11, aux_head=True)
    model = model.train().to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    criterion = DeepSupervisionLoss(OhemCrossEntropy(0.9, 32768), 1.0, 0.4, 2).to(device)
    settings = {
        "no teacher": None,
        "KD": DistillConfig(args.teacher, 1.0, 2.0),
        "KD + CWD": DistillConfig(args.teacher, 1.0, 2.0, 3.0, 4.0),
        "KD, teacher 0.75/1/1.25 + flip": DistillConfig(
            args.teacher, 1.0, 2.0, teacher_scales=[0.75, 1.0, 1.25], teacher_flip=True
        ),
    }
    distillers = {
        name: cfg and build_distiller(cfg, CAMVID, CAMVID.mean, CAMVID.std, device, dtype, True)
        for name, cfg in settings.items()
    }
    rates: dict[str, list[float]] = {name: [] for name in settings}
    for _ in range(args.rounds):
        for name, distiller in distillers.items():
            rates[name].append(step_rate(args, distiller, model, optimizer, criterion))
    base = statistics.median(rates["no teacher"])
    print(f"{args.device} {args.amp} batch {args.batch} crop {args.crop[0]}x{args.crop[1]}")
    for name, values in rates.items():
        median = statistics.median(values)
        print(
            f"{name:12s} {median:8.2f} img/s ({min(values):.2f}-{max(values):.2f}), "
            f"{median / base:.2f}x"
        )


if __name__ == "__main__":
    main()
