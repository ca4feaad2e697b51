"""``ddrnet search``: the DDRNet topology a recipe trains best within a multiply-add budget."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

from ddrnet.choices import SEARCH_SAMPLERS
from ddrnet.cli.options import (
    PATH,
    POSITIVE_INT,
    SEED,
    SHARE,
    add_recipe_arguments,
    given_overrides,
    writable_folder,
)
from ddrnet.errors import UsageError

if TYPE_CHECKING:
    from ddrnet.engine.search import Candidate

# The command's line in ``ddrnet --help``.
HELP = "search the topology (depths, widths) and settings a recipe trains best within a MAC budget"


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "search",
        help=HELP,
        description="Architecture search: candidates (BasicBlocks per stage 1-4, stem, DAPPM "
        "and head widths, and a choice of each recipe setting that --space names) within "
        "--max-macs of the recipe model's multiply-adds, each trained by the recipe for "
        "--epochs and scored by its last validation mIoU; Optuna's TPE proposes them (or "
        "--sampler grid: each in turn). Score on held-out data (data.val_sequences), not on "
        "frames that share a sequence with the training ones. Run again to continue a "
        "stopped search or to add trials.",
        epilog="Everything is in -o: search.journal, trials/CANDIDATE/seedN/ (run folders), "
        "leaderboard.json (best first, with the overrides that train each).",
    )
    add_recipe_arguments(parser, "data.root=/data/camvid")
    parser.add_argument("-o", "--output", type=PATH, required=True, help="the search's folder")
    parser.add_argument(
        "--trials", type=POSITIVE_INT, default=12, help="candidates to score (default 12)"
    )
    parser.add_argument(
        "--epochs", type=POSITIVE_INT, default=20, help="training epochs each (default 20)"
    )
    parser.add_argument(
        "--max-macs",
        type=SHARE,
        default=0.5,
        help="budget: fraction of the recipe model's multiply-adds (default 0.5)",
    )
    parser.add_argument(
        "--seeds",
        type=POSITIVE_INT,
        default=1,
        help="train each candidate with this many seeds and score the mean (default 1; short "
        "runs of one seed differ by about as much as candidates do)",
    )
    parser.add_argument(
        "--space",
        type=PATH,
        help="YAML file of the choices (any of planes, blocks: four lists for stages 1-4, "
        "dappm_planes, head_planes; recipe: a mapping of recipe keys to their choices, e.g. "
        "optim.lr: [0.005, 0.01]); default: ddrnet.engine.search_space.SearchSpace's",
    )
    parser.add_argument(
        "--sampler",
        choices=SEARCH_SAMPLERS,
        default="tpe",
        help="tpe: Optuna's TPE, candidates near the best so far (default); grid: every "
        "candidate of the space in turn, ending when all are scored or over the budget",
    )
    parser.add_argument("--seed", type=SEED, help="sampler seed (default: the recipe's)")
    parser.add_argument(
        "--workers",
        type=POSITIVE_INT,
        default=1,
        help="train this many runs at once, each in its own process at threads/N threads "
        "(unless train.threads is set), its output in trials/CANDIDATE/seedN.log (default 1: "
        "one at a time, in this process; 2 on 2 cores: 1.25x as fast with --seeds 2)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ddrnet.config import load_config
    from ddrnet.engine.config import Config, resolve_recipe
    from ddrnet.engine.search import search
    from ddrnet.engine.search_space import SearchSpace

    overrides = given_overrides(args)
    config = load_config(Config, resolve_recipe(args.config), overrides)
    if args.space is not None and not Path(args.space).is_file():
        raise UsageError(f"--space {args.space}: no such file")
    space = load_config(SearchSpace, args.space) if args.space is not None else None
    writable_folder("--output", args.output)

    def report(candidate: Candidate) -> None:
        print(f"{_row(candidate)}  {candidate.run}", flush=True)

    candidates = search(
        config, args.output, args.trials, args.epochs, args.max_macs, space, args.seed,
        on_candidate=report, seeds=args.seeds, sampler=args.sampler, workers=args.workers,
    )  # fmt: skip
    print(f"\n{len(candidates)} candidates, best first (leaderboard.json in {args.output}):")
    print(f"{'val mIoU':>8}  {'MACs':>5}  {'GMACs':>6}  {'params':>7}  {'minutes':>7}  topology")
    for candidate in candidates[:10]:
        print(_row(candidate))
    if candidates:
        command = ["ddrnet", "train", args.config, *overrides, *candidates[0].overrides]
        print(f"train the best with the full recipe:\n  {shlex.join(command)}")
    return 0


def _row(candidate: Candidate) -> str:
    """A candidate's figures in one line."""
    seeds = candidate.seed_mious
    each = f" (seeds: {', '.join(f'{miou:.2f}' for miou in seeds)})" if len(seeds) > 1 else ""
    return (
        f"{candidate.miou:8.2f}  {candidate.macs_fraction:5.2f}  {candidate.gmacs:6.2f}  "
        f"{candidate.params_millions:6.2f}M  {candidate.minutes:7.1f}  "
        f"{' '.join(candidate.overrides)}{each}"
    )
