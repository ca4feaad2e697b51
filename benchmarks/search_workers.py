"""How long one architecture search takes with its runs trained one after another in the
search's process (``--workers 1``, PyTorch at every core) and side by side in processes of
their own (``--workers 2``, one core each), in one run: the same grid of candidates, the
same recipe and schedule, each search in a fresh folder, the two taking turns round after
round. Prints the wall-clock minutes of each search and their ratio, and the candidates'
scores (they differ only by the float sums of one thread against two). Run on an otherwise
idle machine:

    python benchmarks/search_workers.py [--camvid ../shared/data/camvid] [--epochs 2]
        [--iterations 20] [--seeds 2] [--rounds 1] [--workers 2] [--output /tmp/search_workers]

Runs of unequal length leave a core idle at the end (the last, longest run trains alone at
its share of the cores): with ``--seeds 1`` and these four candidates that tail can take
all the gain; with two seeds the two runs of a candidate start and end together.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path

from ddrnet.config import load_config
from ddrnet.engine.config import Config, resolve_recipe
from ddrnet.engine.search import search
from ddrnet.engine.search_space import SearchSpace
from ddrnet.hardware import describe_cpu

CAMVID = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "camvid"
# Four candidates: two stem widths x two head widths (a grid: every search trains the same).
SPACE = SearchSpace(
    planes=(16, 24), blocks=((2,), (1,), (2,), (1,)), dappm_planes=(64,), head_planes=(32, 64)
)


def recipe(args: argparse.Namespace) -> Config:
    """The bundled CamVid recipe, train split, scored on 20 val frames, a short epoch."""
    overrides = [
        f"data.root={args.camvid}",
        "data.train_split=train",
        f"train.max_iterations_per_epoch={args.iterations}",
        "eval.max_images=20",
        "train.amp=none",
    ]
    return load_config(Config, resolve_recipe("camvid_ddrnet23_slim"), overrides)


def timed_search(args: argparse.Namespace, workers: int, folder: Path) -> tuple[float, dict]:
    """Minutes of one whole search with ``workers``, and its scores by run folder name."""
    shutil.rmtree(folder, ignore_errors=True)
    started = time.perf_counter()
    candidates = search(
        recipe(args), folder, trials=4, epochs=args.epochs, max_macs=1.0, space=SPACE,
        sampler="grid", seeds=args.seeds, workers=workers,
    )  # fmt: skip
    minutes = (time.perf_counter() - started) / 60
    return minutes, {Path(c.run).name: round(c.miou, 2) for c in candidates}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--camvid", type=Path, default=CAMVID)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=20, help="training steps per epoch")
    parser.add_argument("--seeds", type=int, default=2, help="runs per candidate")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--output", type=Path, default=Path("/tmp/search_workers"))
    args = parser.parse_args()
    times: dict[int, list[float]] = {1: [], args.workers: []}
    for round_ in range(args.rounds):
        for workers in times:
            minutes, scores = timed_search(args, workers, args.output / f"w{workers}")
            times[workers].append(minutes)
            print(f"round {round_ + 1}, workers {workers}: {minutes:.2f} min  {scores}", flush=True)
    one, many = statistics.median(times[1]), statistics.median(times[args.workers])
    print(f"\n{describe_cpu()}; 4 candidates x {args.seeds} seeds, {args.epochs} epochs of "
          f"{args.iterations} steps")  # fmt: skip
    print(f"workers 1: {one:.2f} min, workers {args.workers}: {many:.2f} min (median of "
          f"{args.rounds}); {one / many:.2f}x as fast")  # fmt: skip


if __name__ == "__main__":
    main()
