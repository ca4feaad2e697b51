"""``ddrnet data``: read a recipe's training and validation sets before a long run and say
what they hold and what is wrong with them."""

from __future__ import annotations

import argparse
from pathlib import Path

from ddrnet.cli.options import (
    NON_NEGATIVE_INT,
    PATH,
    POSITIVE_INT,
    add_recipe_arguments,
    given_overrides,
    writable_file,
)
from ddrnet.errors import UsageError

PICTURES_PER_SET = 8  # --show's frames per set

CELL = 8  # characters of a share in the class table, "100.00%" and a space


# The command's line in ``ddrnet --help``.
HELP = (
    "check a recipe's data sets: problems by file, class shares, sizes, mean/std, "
    "validation frames that training saw"
)


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "data",
        help=HELP,
        description="Read every image and label of a recipe's training and validation sets "
        "(as `ddrnet train` would) and print: problems by file (unreadable files, size "
        "mismatches, values or colours of no class), image sizes, each class's share of the "
        "pixels and of the frames, the RGB mean and std, and warnings about what makes "
        "validation scores mislead (validation frames or recordings also in training) or "
        "training miss a class. Exit status 1 when there are problems.",
        epilog="Example: ddrnet data camvid_ddrnet23_slim data.root=../shared/data/camvid "
        "data.train_split=train --show runs/labels --augmented",
    )
    add_recipe_arguments(parser, "data.root=/data/camvid")
    parser.add_argument(
        "--json", type=PATH, help="write every figure, warning and problem to this file"
    )
    parser.add_argument(
        "--show",
        type=PATH,
        metavar="FOLDER",
        help="write frames with their labels' colours and a legend to FOLDER/train and FOLDER/val",
    )
    parser.add_argument(
        "--count", type=POSITIVE_INT, help=f"--show: frames per set (default {PICTURES_PER_SET})"
    )
    parser.add_argument(
        "--augmented",
        action="store_true",
        help="--show: training frames as the recipe's augmentation draws them",
    )
    parser.add_argument("--seed", type=NON_NEGATIVE_INT, help="--augmented: the draws (default 0)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ddrnet.atomic import atomic_write_json, check_set_names_free
    from ddrnet.config import load_config
    from ddrnet.data.build import build_split
    from ddrnet.data.survey import survey_dataset, survey_warnings
    from ddrnet.engine.config import Config, resolve_recipe
    from ddrnet.viz.figure import LABEL_PICTURES, check_pictures_folder
    from ddrnet.viz.labels import label_picture_names, write_label_pictures

    _check_show_options(args)
    recipe = resolve_recipe(args.config)
    config = load_config(Config, recipe, given_overrides(args))
    reads = {"config": str(recipe), "data.classes_file": config.data.classes_file}
    writable_file("--json", args.json, (".json",), reads=reads)
    # Not cached: the survey reads each file once, and a broken one must not stop the rest.
    sets = {
        "train": build_split(config.data, "train_split", train=True, cache=False),
        "val": build_split(config.data, "val_split", train=False, cache=False),
    }
    count = args.count or PICTURES_PER_SET
    if args.show:
        folders = {role: Path(args.show) / role for role in sets}
        for role, folder in folders.items():  # refused now, before minutes of reading:
            check_pictures_folder(sets[role], folder)  # the data's own folder
            folder.mkdir(parents=True, exist_ok=True)  # a file in the way
            check_set_names_free(folder, LABEL_PICTURES, label_picture_names(sets[role], count))
    surveys = {role: survey_dataset(dataset, progress=True) for role, dataset in sets.items()}
    warnings = survey_warnings(surveys["train"], surveys["val"])
    labels = sets["train"].labels
    mean, std = config.data.normalisation(labels)
    print(_report(surveys, mean, std))
    for warning in warnings:
        print(f"warning: {warning}")
    problems = [problem for survey in surveys.values() for problem in survey.problems]
    _print_problems(problems)
    if args.show:
        for role, dataset in sets.items():
            augmented = args.augmented and role == "train"
            written = write_label_pictures(dataset, folders[role], count, augmented, args.seed or 0)
            print(f"{len(written)} label pictures written to {folders[role]}")
    if args.json:
        document = {
            "recipe": args.config,
            "normalisation": {"mean": list(mean), "std": list(std)},
            "sets": {role: survey.to_dict() for role, survey in surveys.items()},
            "warnings": warnings,
        }
        atomic_write_json(document, Path(args.json))
    return 1 if problems else 0


def _report(surveys: dict, mean: tuple, std: tuple) -> str:
    """The sets' sizes and recordings, then one row per class: its share of the label
    pixels (ignored ones included) and of the frames in each set."""
    lines = []
    for role, survey in surveys.items():
        sizes = ", ".join(f"{w}x{h} ({n})" for (w, h), n in survey.sizes.most_common(4))
        more = f" and {len(survey.sizes) - 4} more sizes" if len(survey.sizes) > 4 else ""
        kind = "training" if role == "train" else "validation"
        line = f"{kind} set, {survey.name}: {survey.frames} frames, {sizes or 'none readable'}"
        line += more
        if survey.recordings:
            listed = ", ".join(f"{r} {n}" for r, n in sorted(survey.recordings.items()))
            line += f"; {survey.recording_kind}: {listed}"
        lines.append(line)
    train, val = surveys["train"], surveys["val"]
    width = max(len(name) for name in (*train.class_names, "RGB mean (0..1)"))
    set_width = 2 * CELL + 2
    header = f"{'':{width}}  {'training set':^{set_width}}  {'validation set':^{set_width}}"
    lines += ["", header.rstrip()]
    cells = f"{'pixels':>{CELL}}  {'frames':>{CELL}}"
    lines.append(f"{'class':{width}}  {cells}  {cells}")
    for index, name in enumerate(train.class_names):
        row = [
            f"{_percent(s.class_pixels[index], s.label_pixels)}  "
            f"{_percent(s.class_frames[index], s.frames)}"
            for s in (train, val)
        ]
        lines.append(f"{name:{width}}  {row[0]}  {row[1]}")
    ignored = [f"{_percent(s.ignored_pixels, s.label_pixels)}  {'':{CELL}}" for s in (train, val)]
    lines.append(f"{'(ignored)':{width}}  {ignored[0]}  {ignored[1]}".rstrip())
    for title, moment in (("RGB mean (0..1)", "mean"), ("RGB std", "std")):
        values = [" ".join(f"{v:.3f}" for v in getattr(s, moment)) for s in (train, val)]
        lines.append(f"{title:{width}}  {values[0]:>{set_width}}  {values[1]:>{set_width}}")
    recipe = " ".join(f"{v:.3f}" for v in mean), " ".join(f"{v:.3f}" for v in std)
    lines.append(f"the recipe normalises with mean {recipe[0]}, std {recipe[1]}")
    return "\n".join(lines)


def _percent(count: int, total: int) -> str:
    """A share in percent as a ``CELL``-wide cell, e.g. ``  31.70%``; ``-`` without a total."""
    return f"{100.0 * int(count) / total:{CELL - 1}.2f}%" if total else f"{'-':>{CELL}}"


def _print_problems(problems: list[str]) -> None:
    """The survey's problems, as many as a failed training run lists; --json keeps all."""
    from ddrnet.data.survey import LISTED_PROBLEMS

    if not problems:
        print("no problems: every file is readable and every label fits its image and classes")
        return
    print(f"problems: {len(problems)}")
    for problem in problems[:LISTED_PROBLEMS]:
        print(f"  {problem}")
    if len(problems) > LISTED_PROBLEMS:
        print(f"  ... and {len(problems) - LISTED_PROBLEMS} more (all of them: --json)")


def _check_show_options(args: argparse.Namespace) -> None:
    """Refuse options of the pictures without --show (they would do nothing)."""
    if args.seed is not None and not args.augmented:
        raise UsageError("--seed draws the --augmented pictures, which are not asked for")
    if not args.show:
        given = [
            name
            for name, value in (("--count", args.count), ("--augmented", args.augmented))
            if value
        ]
        if given:
            raise UsageError(
                f"{' and '.join(given)} shape the pictures of --show, which is not given"
            )
