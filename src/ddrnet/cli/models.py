"""``ddrnet models``: the registered variants with parameters and GMACs, and the bundled
trained models."""

from __future__ import annotations

import argparse
import json

from ddrnet.cli.options import NUM_CLASSES, parse_size

# The command's line in ``ddrnet --help``.
HELP = "list variants with parameters and GMACs"


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("models", help=HELP)
    parser.add_argument(
        "--size", type=parse_size, default=(1024, 2048), help="HEIGHTxWIDTH (default 1024x2048)"
    )
    parser.add_argument("--num-classes", type=NUM_CLASSES, default=19)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(handler=run)


def variant_rows(size: tuple[int, int], num_classes: int) -> list[dict[str, object]]:
    """One row per registered variant: parameters and MACs at ``size`` (segmentation; the
    ImageNet forms at 224x224, 1000 classes) beside the paper's figures."""
    from ddrnet.models import count_macs, count_parameters, create_model, list_models, variant_info

    rows = []
    for name in list_models():
        info = variant_info(name)
        segmentation = info.task == "segmentation"
        shape = size if segmentation else (224, 224)
        model = create_model(name, num_classes=num_classes if segmentation else 1000)
        rows.append(
            {
                "name": name,
                "task": info.task,
                "input": f"{shape[0]}x{shape[1]}",
                "params_M": round(count_parameters(model) / 1e6, 3),
                "GMACs": round(count_macs(model, shape) / 1e9, 2),
                "paper_params_M": info.paper_params_millions,
                "paper_GMACs": info.paper_gmacs if shape == (1024, 2048) else None,
            }
        )
    return rows


def bundled_rows() -> list[dict[str, object]]:
    """The bundled trained models this installation ships, from their files' metadata."""
    from ddrnet.models import bundled_weights

    return [
        {
            "name": weights.bundled_name,
            "architecture": weights.architecture,
            "classes": weights.num_classes,
            "dataset": weights.metadata.dataset,
            "trained_on": weights.description,
            "val_mIoU": weights.val_miou,
            "val_held_out": weights.val_held_out,
        }
        for weights in bundled_weights()
        if weights.file.is_file()
    ]


def run(args: argparse.Namespace) -> int:
    rows = variant_rows(args.size, args.num_classes)
    bundled = bundled_rows()
    if args.json:
        print(json.dumps([*rows, *({**row, "bundled": True} for row in bundled)], indent=2))
        return 0
    header = f"{'model':<26}{'task':<16}{'input':>11}{'params (M)':>12}{'GMACs':>9}{'paper':>18}"
    print(header)
    print("-" * len(header))
    for row in rows:
        paper = f"{row['paper_params_M']}M" if row["paper_params_M"] is not None else ""
        if row["paper_GMACs"] is not None:
            paper += f" / {row['paper_GMACs']}"
        print(
            f"{row['name']:<26}{row['task']:<16}{row['input']:>11}{row['params_M']:>12.3f}"
            f"{row['GMACs']:>9.2f}{paper:>18}"
        )
    print("(segmentation: auxiliary head excluded, as in the paper; MACs count conv/linear)")
    print("\nbundled trained models (give the name as --checkpoint; the first is the default):")
    width = max((len(row["name"]) for row in bundled), default=0) + 2
    for row in bundled:
        score = f"CamVid val mIoU {row['val_mIoU']}" + (
            "" if row["val_held_out"] else " (val was training data)"
        )
        print(f"  {row['name']:<{width}}{row['architecture']}, {row['trained_on']}; {score}")
    return 0
