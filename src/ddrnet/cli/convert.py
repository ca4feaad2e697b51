"""``ddrnet convert``: annotations from a labelling tool (COCO or LabelMe JSON) as a folder
data set that ``ddrnet data`` checks and ``ddrnet train`` trains on."""

from __future__ import annotations

import argparse

from ddrnet.cli.options import PATH, writable_folder

# The command's line in ``ddrnet --help``.
HELP = (
    "turn COCO or LabelMe annotations (CVAT, Label Studio, Roboflow, LabelMe) into a "
    "data set to train on"
)


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "convert",
        help=HELP,
        description="Paint the polygons and masks of a COCO JSON file (CVAT, Label Studio, "
        "Roboflow, makesense.ai export it) or of LabelMe JSON files into class-id masks, copy "
        "the images, and write one split of a folder data set: ROOT/images/SPLIT, "
        "ROOT/masks/SPLIT and ROOT/classes.yaml. Convert the validation annotations into "
        "--split val of the same ROOT: they are numbered by the classes file the first split "
        "wrote. Nothing in ROOT is overwritten.",
        epilog="Example: ddrnet convert annotations/instances_default.json --images images "
        "-o data/mine --split train; then: ddrnet data custom_folder_example "
        "data.root=data/mine",
    )
    parser.add_argument(
        "source", type=PATH, help="a COCO .json file, a LabelMe .json file or a folder of them"
    )
    parser.add_argument(
        "-o", "--output", type=PATH, required=True, metavar="ROOT", help="the data set's folder"
    )
    parser.add_argument("--split", default="train", help="the split to write (default train)")
    parser.add_argument(
        "--images",
        type=PATH,
        metavar="FOLDER",
        help="COCO: the folder holding the images (default: the JSON file's folder)",
    )
    parser.add_argument(
        "--classes",
        nargs="+",
        metavar="NAME",
        help="a new data set's classes in id order (default: COCO's category order, LabelMe's "
        "labels sorted); every label must be one of them",
    )
    parser.add_argument(
        "--no-background",
        action="store_true",
        help="pixels no region covers are not labelled (ignored in training) instead of the "
        "class 'background' (id 0)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ddrnet.data.convert import convert_annotations, split_names

    writable_folder("-o", args.output)
    result = convert_annotations(
        Path(args.source),
        Path(args.output),
        split=args.split,
        image_folder=args.images,
        background=not args.no_background,
        classes=args.classes,
        progress=True,
    )
    root = result.root
    print(
        f"{result.images} images and masks written to {root / 'images' / result.split} and "
        f"{root / 'masks' / result.split}"
    )
    if result.skipped:
        print(f"{len(result.skipped)} images without a region left out (--no-background)")
    if result.unannotated:
        print(
            f"warning: {len(result.unannotated)} images have no region, so their masks are all "
            f"background (e.g. {result.unannotated[0]}); if nobody labelled them, convert with "
            "--no-background to leave them out"
        )
    written = "written" if result.wrote_classes_file else "used"
    print(f"classes file {written}: {result.classes_file}")
    total = sum(result.class_pixels) + result.unlabelled_pixels
    width = max(len(name) for name in (*result.class_names, "not labelled"))
    for index, (name, pixels) in enumerate(
        zip(result.class_names, result.class_pixels, strict=True)
    ):
        print(f"  {index:>3} {name:<{width}} {100 * pixels / total:6.2f}% of the pixels")
    if result.unlabelled_pixels:
        print(f"  255 {'not labelled':<{width}} {100 * result.unlabelled_pixels / total:6.2f}%")
    absent = [name for name, pixels in zip(result.class_names, result.class_pixels) if not pixels]
    if absent:
        print(f"warning: no pixel of {', '.join(absent)} in this split")
    splits = split_names(root)
    if len(splits) < 2:
        other, role = ("val", "validation") if result.split == "train" else ("train", "training")
        print(f"next: convert the {role} annotations into the same folder with --split {other}")
    else:
        names = (
            "" if {"train", "val"} <= set(splits) else " data.train_split=... data.val_split=..."
        )
        print(f"next: ddrnet data custom_folder_example data.root={root}{names}")
        print(f"then: ddrnet train custom_folder_example data.root={root}{names}")
    return 0
