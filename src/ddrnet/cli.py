"""The ``ddrnet`` command line. Each subcommand lives in a small function below; heavy
imports happen inside them so that ``ddrnet --help`` stays fast."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

logger = logging.getLogger("ddrnet")


class UsageError(Exception):
    """Bad command-line input: printed as one line, exit status 2."""


def parse_size(text: str) -> tuple[int, int]:
    """``"1024x2048"`` (height x width, pixels) -> ``(1024, 2048)``."""
    try:
        height, width = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"size must be HEIGHTxWIDTH in pixels, e.g. 1024x2048; got {text!r}"
        ) from None
    if height < 1 or width < 1:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return height, width


def cmd_models(args: argparse.Namespace) -> int:
    from ddrnet.models import build_model, count_macs, count_parameters, list_models, variant_info

    rows = []
    for name in list_models():
        info = variant_info(name)
        segmentation = info.task == "segmentation"
        size = args.size if segmentation else (224, 224)
        classes = args.num_classes if segmentation else 1000
        model = build_model(name, num_classes=classes)
        rows.append(
            {
                "name": name,
                "task": info.task,
                "input": f"{size[0]}x{size[1]}",
                "params_M": round(count_parameters(model) / 1e6, 3),
                "GMACs": round(count_macs(model, size) / 1e9, 2),
                "paper_params_M": info.paper_params_millions,
                "paper_GMACs": info.paper_gmacs if size == (1024, 2048) else None,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = f"{'model':<26}{'task':<16}{'input':>11}{'params (M)':>12}{'GMACs':>9}{'paper':>18}"
    print(header)
    print("-" * len(header))
    for row in rows:
        paper = f"{row['paper_params_M']}M"
        if row["paper_GMACs"] is not None:
            paper += f" / {row['paper_GMACs']}"
        print(
            f"{row['name']:<26}{row['task']:<16}{row['input']:>11}{row['params_M']:>12.3f}"
            f"{row['GMACs']:>9.2f}{paper:>18}"
        )
    print("(segmentation: auxiliary head excluded, as in the paper; MACs count conv/linear)")
    return 0


def resolve_recipe(name_or_path: str):
    """A bundled recipe name (``camvid_ddrnet23_slim``) or a path to a YAML file."""
    from importlib import resources
    from pathlib import Path

    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise UsageError(f"config file {path} does not exist")
        return path
    bundled = resources.files("ddrnet") / "configs" / f"{name_or_path}.yaml"
    if not bundled.is_file():
        names = sorted(
            p.name.removesuffix(".yaml")
            for p in (resources.files("ddrnet") / "configs").iterdir()
            if p.name.endswith(".yaml")
        )
        raise UsageError(f"no recipe {name_or_path!r}; bundled recipes: {', '.join(names)}")
    return Path(str(bundled))


def cmd_train(args: argparse.Namespace) -> int:
    from ddrnet.config import load_config
    from ddrnet.engine.config import Config
    from ddrnet.engine.train import train

    config = load_config(Config, resolve_recipe(args.config), args.overrides)
    output = train(config, resume=args.resume if args.resume != "auto" else True)
    print(f"run written to {output}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ddrnet",
        description="Real-time semantic segmentation with Deep Dual-Resolution Networks.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    models = commands.add_parser("models", help="list variants with parameters and GMACs")
    models.add_argument(
        "--size", type=parse_size, default=(1024, 2048), help="HEIGHTxWIDTH (default 1024x2048)"
    )
    models.add_argument("--num-classes", type=int, default=19)
    models.add_argument("--json", action="store_true", help="print JSON instead of a table")
    models.set_defaults(handler=cmd_models)

    train = commands.add_parser(
        "train",
        help="train from a YAML recipe",
        description="Train from a recipe; any key can be overridden as section.key=value.",
    )
    train.add_argument("config", help="bundled recipe name or path to a YAML file")
    train.add_argument("overrides", nargs="*", help="overrides such as train.epochs=10")
    train.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default=False,
        help="resume from OUTPUT_DIR/last.pt, or from the checkpoint given",
    )
    train.set_defaults(handler=cmd_train)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.handler(args) or 0)
    except (UsageError, FileNotFoundError, ValueError, KeyError) as error:
        if args.verbose:
            raise
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"ddrnet {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
