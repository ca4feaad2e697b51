"""Option types and options that several ``ddrnet`` commands share, and the checks of
output paths that run before any work. Parsing only: what the values mean is decided in
the library (``ddrnet.load``, ``ddrnet.loading.inference_setup``)."""

from __future__ import annotations

import argparse
import logging
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ddrnet.atomic import why_not_writable
from ddrnet.choices import EXPORTED_RUNTIMES
from ddrnet.data.corruptions import SEVERITIES
from ddrnet.errors import UsageError
from ddrnet.limits import MAX_NUM_CLASSES, MAX_SCALE
from ddrnet.preview import MAX_PORT

if TYPE_CHECKING:
    import torch
    from torch import nn

logger = logging.getLogger("ddrnet")


def _number(
    kind: type,
    low: float,
    high: float = math.inf,
    *,
    open_low: bool = False,
    open_high: bool = False,
) -> Callable[[str], float]:
    """An argparse ``type`` accepting ``kind`` values in ``[low, high]`` (without ``low``
    with ``open_low``, without ``high`` with ``open_high``), finite: a bad value is named
    by argparse with the option."""
    expected = "an integer" if kind is int else "a number"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not math.isfinite(value):  # float("inf") and float("nan") parse
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        below = value <= low if open_low else value < low
        above = value >= high if open_high else value > high
        if below or above:
            bound = f"> {low:g}" if open_low else f">= {low:g}"
            limit = f" and {'<' if open_high else '<='} {high:g}" if math.isfinite(high) else ""
            raise argparse.ArgumentTypeError(f"must be {bound}{limit}, got {text!r}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def _path(text: str) -> str:
    """An argparse ``type`` for output paths: an empty one (``-o ""``, a variable that was
    not set) would quietly mean the current folder."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a path, got an empty one")
    return text


_path.__name__ = "path"  # argparse names the type in its messages
PATH = _path

POSITIVE_INT = _number(int, 1)
NON_NEGATIVE_INT = _number(int, 0)
POSITIVE_FLOAT = _number(float, 0, open_low=True)
NON_NEGATIVE_FLOAT = _number(float, 0)
FRACTION = _number(float, 0, 1)
OPEN_FRACTION = _number(float, 0, 1, open_low=True, open_high=True)  # in (0, 1)
SHARE = _number(float, 0, 1, open_low=True)  # in (0, 1]
SEED = _number(int, 0, 2**32 - 1)  # what NumPy's and Optuna's generators take
SCALE = _number(float, 0, MAX_SCALE, open_low=True)
PORT = _number(int, 0, MAX_PORT)
SEVERITY = _number(int, min(SEVERITIES), max(SEVERITIES))  # of a camera corruption
NUM_CLASSES = _number(int, 1, MAX_NUM_CLASSES)


def parse_pixel_count(text: str) -> int:
    """A pixel count as its help text shows it: ``8388608``, ``50,000,000``, ``50_000_000``
    or a size ``4096x2048`` (their product); at least 1."""
    if "x" in text.lower():
        height, width = parse_size(text)
        return height * width
    return POSITIVE_INT(text.replace(",", ""))


parse_pixel_count.__name__ = "pixel count"  # argparse names the type in its messages


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


def parse_image_size(text: str) -> tuple[int, int]:
    """``parse_size`` for sizes that tensors are allocated for: at most
    ``ddrnet.limits.DEFAULT_MAX_PIXELS``."""
    from ddrnet.limits import check_pixels

    height, width = parse_size(text)
    try:
        check_pixels("", width, height, hint="")
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return height, width


def add_amp_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--amp",
        choices=["none", "auto", "bf16", "fp16"],
        default="none",
        help="reduced precision: auto = bf16 where the CPU computes it natively "
        "(AVX512-BF16/AMX) or on CUDA, else float32; bf16 on other CPUs is emulated and "
        "slow; fp16 needs CUDA",
    )


def add_device_option(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--device`` of the commands that run a model (``ddrnet.loading.inference_setup``)."""
    parser.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA when there is one, else the CPU; exported files run on the CPU), "
        "cpu, cuda or cuda:N",
    )


def add_scales_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scales",
        type=SCALE,
        nargs="+",
        default=[1.0],
        help=f"test-time scales, each in (0, {MAX_SCALE:g}], e.g. 0.5 0.75 1 1.25 1.5 1.75",
    )


def add_runtime_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--runtime",
        choices=list(EXPORTED_RUNTIMES),
        help="for an exported .onnx checkpoint: the CPU runtime (default onnxruntime); "
        "openvino with --amp bf16 is the fastest float path on CPUs with AMX/AVX512-BF16; "
        "ncnn (NAME.param), executorch (NAME.pte) and aoti (NAME.pt2, AOTInductor) run the "
        "files of `ddrnet export --format ncnn/executorch/aoti` (picked by the suffix)",
    )


def add_model_options(parser: argparse.ArgumentParser, checkpoint_help: str) -> None:
    """``--checkpoint`` (default: the bundled model) and ``--model``."""
    parser.add_argument("--checkpoint", help=checkpoint_help)
    parser.add_argument("--model", help="architecture, for checkpoints without metadata")


def load_model(args: argparse.Namespace, streams: int = 1) -> nn.Module:
    """``ddrnet.loading.load_segmenter`` of ``--checkpoint`` (or the bundled model),
    ``--model``, ``--runtime`` and ``--amp``, for the commands that segment (exported files
    too)."""
    from ddrnet.loading import load_segmenter

    return load_segmenter(
        args.checkpoint, model=args.model, runtime=args.runtime, amp=args.amp, streams=streams
    )


def load_pytorch_model(args: argparse.Namespace) -> nn.Module:
    """``--checkpoint`` (self-describing or with ``--model``), else a fresh ``--model``, else
    the bundled model, for the commands that need the PyTorch network itself."""
    from ddrnet.loading import check_pytorch_file, load

    check_pytorch_file(args.checkpoint, f"ddrnet {args.command}")
    if args.checkpoint is None and args.model is not None:
        logger.warning("--model %s without --checkpoint: a network with random weights", args.model)
    return load(args.checkpoint, model=args.model)


def device_and_precision(
    args: argparse.Namespace, model: nn.Module
) -> tuple[torch.device, torch.dtype | None]:
    """``--device`` and ``--amp`` for ``model``: ``ddrnet.loading.inference_setup``."""
    from ddrnet.loading import inference_setup

    return inference_setup(model, args.device, args.amp)


def writable_file(
    option: str,
    path: str | None,
    suffixes: Sequence[str] = (),
    reads: dict[str, str | None] | None = None,
) -> None:
    """Check an output file's path before the work that fills it: not a folder, the right
    suffix, not one of the files the command ``reads`` (option -> path: writing it would
    replace the user's input), and a folder that exists or can be made, and written in."""
    if path is None:
        return
    target = Path(path)
    if target.is_dir():
        raise UsageError(f"{option} {path}: is a folder, but a file is to be written there")
    if suffixes and target.suffix.lower() not in suffixes:
        raise UsageError(f"{option} {path}: expected a {' or '.join(suffixes)} file name")
    taken = _path_taken(target, reads)
    if taken is not None:
        raise UsageError(
            f"{option} {path}: is the file {taken} reads; writing it would replace it "
            "(give another file name)"
        )
    _check_can_write_in(option, path, target.parent)


def writable_folder(
    option: str, path: str | None, reads: dict[str, str | None] | None = None
) -> None:
    """Check an output folder's path before the work that fills it: not a file, not one
    of the files the command ``reads``, and a folder that exists or can be made, and
    written in."""
    if path is None:
        return
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise UsageError(f"{option} {path}: is a file, but a folder is to be written there")
    taken = _path_taken(target, reads)
    if taken is not None:
        raise UsageError(f"{option} {path}: is the file {taken} writes or reads")
    _check_can_write_in(option, path, target)


def _path_taken(target: Path, paths: dict[str, str | None] | None) -> str | None:
    """The option among ``paths`` (option -> path) that names ``target`` too, or None."""
    for name, source in (paths or {}).items():
        if source is not None and _same_file(target, _input_file(source)):
            return name
    return None


def _check_can_write_in(option: str, path: str, folder: Path) -> None:
    """``folder`` (where ``option``'s ``path`` goes) can be written in
    (``ddrnet.atomic.why_not_writable``), or a ``UsageError`` naming ``option``."""
    reason = why_not_writable(folder)
    if reason is not None:
        raise UsageError(f"{option} {path}: {reason}")


def _input_file(source: str) -> Path:
    """The file an input option names: a bundled model's name is its file."""
    from ddrnet.models.weights import resolve_bundled_name

    return resolve_bundled_name(source)


def _same_file(first: Path, second: Path) -> bool:
    """Whether two paths name one file (through links too, when both exist)."""
    if first.exists() and second.exists():
        return os.path.samefile(first, second)
    return first.resolve() == second.resolve()


def add_recipe_arguments(parser: argparse.ArgumentParser, example: str) -> None:
    """A recipe (a bundled recipe's name or a YAML file) and its overrides, ``example``
    showing one, for the commands that read a recipe."""
    parser.add_argument("config", help="bundled recipe name or path to a YAML file")
    parser.add_argument(
        "overrides", nargs="*", help=f"overrides such as {example} (section.key=value)"
    )


def given_overrides(args: argparse.Namespace) -> list[str]:
    """Every override given, those after an option too (``args.late_overrides``, which
    ``ddrnet.cli`` collects), in order."""
    return [*args.overrides, *getattr(args, "late_overrides", [])]


def is_override(argument: str) -> bool:
    """Whether a command-line word is a recipe override, ``section.key=value``."""
    return "=" in argument and not argument.startswith("-")
