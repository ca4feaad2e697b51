"""``ddrnet viz FIGURE``: one PNG per call (feature maps, confusion matrix, training curves,
model comparison, robustness to corruptions, confidence)."""

from __future__ import annotations

import argparse
import functools

from ddrnet.cli.options import (
    PATH,
    POSITIVE_INT,
    add_model_options,
    load_pytorch_model,
    writable_file,
)

# The command's line in ``ddrnet --help``.
HELP = (
    "pictures: feature maps, confusion matrix, training curves, model comparison, "
    "robustness, confidence"
)


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "viz",
        help=HELP,
        description="Write one PNG per call; see 'ddrnet viz FIGURE --help'.",
    )
    figures = parser.add_subparsers(dest="figure", metavar="FIGURE", required=True)
    features = figures.add_parser(
        "features",
        help="both branches around each fusion, DAPPM scales, class probabilities, entropy",
    )
    features.add_argument("image", help="input image")
    add_model_options(features, "model file (default: the bundled CamVid model)")
    features.add_argument(
        "--top-k", type=POSITIVE_INT, default=5, help="class-probability maps to show"
    )
    features.add_argument(
        "--reduce",
        choices=["mean-abs", "pca"],
        default="mean-abs",
        help="channels -> one map: mean of |activation| or first PCA component",
    )
    features.add_argument("-o", "--output", type=PATH, required=True, help="PNG file to write")
    features.set_defaults(handler=run_features)
    confusion = figures.add_parser(
        "confusion", help="row-normalised confusion matrix and per-class IoU"
    )
    confusion.add_argument("metrics", help="JSON written by 'ddrnet eval --json'")
    confusion.add_argument("-o", "--output", type=PATH, required=True, help="PNG file to write")
    confusion.set_defaults(handler=run_confusion)
    curves = figures.add_parser("curves", help="loss, val mIoU, lr and throughput per epoch")
    curves.add_argument("run_dir", help="training run folder (with metrics.jsonl)")
    curves.add_argument("-o", "--output", type=PATH, required=True, help="PNG file to write")
    curves.set_defaults(handler=run_curves)
    compare = figures.add_parser("compare", help="one image through several models")
    compare.add_argument("image", help="input image")
    compare.add_argument("--checkpoint", action="append", help="model file (repeat)")
    compare.add_argument(
        "--model", action="append", help="architecture (repeat; alone: untrained models)"
    )
    compare.add_argument("-o", "--output", type=PATH, required=True, help="PNG file to write")
    compare.set_defaults(handler=run_compare)
    _add_models_figure(
        figures, "robustness", "mIoU against corruption severity, several models",
        "--corruptions ...",
    )  # fmt: skip
    _add_models_figure(
        figures, "confidence", "reliability diagram, flagged pixels, per-class confidence",
        "--confidence",
    )  # fmt: skip


def _add_models_figure(figures, name: str, summary: str, option: str) -> None:
    """``ddrnet viz NAME JSON... -o PNG``: one figure of several models' evaluation JSONs
    (written by ``ddrnet eval OPTION --json``), drawn by ``ddrnet.viz.plot_NAME``."""
    parser = figures.add_parser(name, help=summary)
    parser.add_argument(
        "metrics", nargs="+", help=f"JSONs written by 'ddrnet eval {option} --json'"
    )
    parser.add_argument("-o", "--output", type=PATH, required=True, help="PNG file to write")
    parser.set_defaults(handler=functools.partial(run_models_figure, name))


def run_features(args: argparse.Namespace) -> int:
    from ddrnet.data.io import read_rgb
    from ddrnet.viz import plot_features

    writable_file("-o", args.output, (".png",), reads={"IMAGE": args.image})
    model = load_pytorch_model(args)
    output = plot_features(
        model, read_rgb(args.image), args.output, top_k=args.top_k, reduction=args.reduce
    )
    print(f"feature maps of {args.image} written to {output}")
    return 0


def run_confusion(args: argparse.Namespace) -> int:
    from ddrnet.viz import plot_confusion

    writable_file("-o", args.output, (".png",))  # before the report is read and drawn
    print(f"confusion matrix and IoU written to {plot_confusion(args.metrics, args.output)}")
    return 0


def run_models_figure(name: str, args: argparse.Namespace) -> int:
    import ddrnet.viz

    writable_file("-o", args.output, (".png",))
    output = getattr(ddrnet.viz, f"plot_{name}")(args.metrics, args.output)
    print(f"{name} figure written to {output}")
    return 0


def run_curves(args: argparse.Namespace) -> int:
    from ddrnet.viz import plot_curves

    writable_file("-o", args.output, (".png",))
    print(f"training curves written to {plot_curves(args.run_dir, args.output)}")
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from ddrnet.data.io import read_rgb
    from ddrnet.viz import load_models, plot_compare

    writable_file("-o", args.output, (".png",), reads={"IMAGE": args.image})
    models = load_models(args.checkpoint or [], args.model or [])  # none: a UsageError
    output = plot_compare(read_rgb(args.image), models, args.output)
    print(f"{len(models)} models on {args.image} written to {output}")
    return 0
