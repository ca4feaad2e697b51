"""``ddrnet prune``: structured channel pruning to a fraction of the MACs."""

from __future__ import annotations

import argparse

from ddrnet.cli.options import OPEN_FRACTION, PATH, POSITIVE_INT, parse_image_size, writable_file
from ddrnet.errors import DDRNetError, UsageError

# The command's line in ``ddrnet --help``.
HELP = "structured channel pruning to a fraction of the MACs (torch-pruning)"


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "prune",
        help=HELP,
        description="Remove whole channels, keeping every residual, fusion, DAPPM and head "
        "connection consistent, until the model has at most --macs of its multiply-adds at "
        "its training size. The result is not fine-tuned.",
    )
    parser.add_argument("checkpoint", help="model file or bundled model name (not .onnx)")
    parser.add_argument("--model", help="architecture, for checkpoints without metadata")
    parser.add_argument(
        "--macs", type=OPEN_FRACTION, required=True, help="fraction of the MACs to keep, in (0, 1)"
    )
    parser.add_argument("-o", "--output", type=PATH, required=True, help="output .safetensors file")
    parser.add_argument(
        "--importance",
        choices=["l1", "l2", "bn-scale"],
        default="l1",
        help="channel score: weight L1 (default) or L2 norm over the coupled layers, or "
        "BatchNorm scale",
    )
    parser.add_argument(
        "--max-layer-ratio",
        type=OPEN_FRACTION,
        default=0.8,
        help="most any layer may lose, as a fraction of its channels (default 0.8)",
    )
    parser.add_argument(
        "--global",
        dest="global_pruning",
        action="store_true",
        help="rank channels across the network (uneven widths) instead of the same "
        "fraction from every layer",
    )
    parser.add_argument(
        "--round-to",
        type=POSITIVE_INT,
        help="keep widths multiples of N (default 1; 32 ran faster on Intel AMX at the same "
        "MACs: see the README's Prune section)",
    )
    parser.add_argument(
        "--size",
        type=parse_image_size,
        help="HEIGHTxWIDTH to count MACs at (default: the model's training size, e.g. "
        "360x480 for CamVid)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Channel-prune a model to a fraction of its MACs and write it as a model file."""
    from ddrnet.loading import check_pytorch_file, load
    from ddrnet.models import save_model
    from ddrnet.models.prune import MAC_TOLERANCE, prune_to_macs

    writable_file("-o", args.output, (".safetensors",), reads={"CHECKPOINT": args.checkpoint})
    try:
        check_pytorch_file(args.checkpoint, "ddrnet prune")
        model = load(args.checkpoint, model=args.model)
    except DDRNetError as error:
        raise UsageError(f"CHECKPOINT {args.checkpoint}: {error}") from None
    result = prune_to_macs(
        model,
        args.macs,
        input_size=args.size,
        importance=args.importance,
        max_layer_ratio=args.max_layer_ratio,
        global_pruning=args.global_pruning,
        round_to=args.round_to,
    )
    save_model(result.model, args.output, result.model.metadata)
    size = result.input_size
    print(
        f"pruned {args.checkpoint} at {size[0]}x{size[1]}: "
        f"{result.macs_before / 1e9:.3f} -> {result.macs_after / 1e9:.3f} GMACs "
        f"({result.macs_fraction:.3f} of the MACs), {result.params_before / 1e6:.3f} -> "
        f"{result.params_after / 1e6:.3f} M parameters; written to {args.output} "
        "(not fine-tuned: train it before use)"
    )
    if result.macs_fraction < args.macs - MAC_TOLERANCE:
        print(
            f"note: {result.macs_fraction:.3f} is the nearest to --macs {args.macs:g} from below "
            "that the same fraction of every coupled group reaches (widths move in steps"
            + (f" of {args.round_to}" if args.round_to else "")
            + "); --global ranks channels across the network and steps finer"
        )
    return 0
