"""``ddrnet export``: ONNX (fp32 or INT8), TorchScript, TensorRT, ncnn, ExecuTorch (fp32 or
INT8) or AOTInductor, each checked against PyTorch, optionally scored on CamVid val."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from ddrnet.cli.options import (
    PATH,
    POSITIVE_INT,
    add_model_options,
    load_pytorch_model,
    parse_image_size,
    writable_file,
)
from ddrnet.errors import UsageError

if TYPE_CHECKING:
    from torch import nn


SUFFIXES = {
    "onnx": (".onnx",),
    "onnx-int8": (".onnx",),
    "torchscript": (".pt", ".ts", ".torchscript"),
    "tensorrt": (".engine", ".plan", ".trt"),
    "ncnn": (".param",),
    "executorch": (".pte",),
    "executorch-int8": (".pte",),
    "aoti": (".pt2",),
}
# Formats that export logits only (no --argmax).
LOGITS_ONLY_FORMATS = ("ncnn", "executorch", "executorch-int8", "aoti")
# Formats whose INT8 calibration reads real images (``--calibration``).
INT8_FORMATS = ("onnx-int8", "executorch-int8")
CALIBRATION_COUNT = 32  # images, when --calibration-count is not given
# Formats that ``--evaluate-root`` scores on CamVid val.
EVALUATED_FORMATS = ("onnx", "onnx-int8", "ncnn", "executorch", "executorch-int8", "aoti")


# The command's line in ``ddrnet --help``.
HELP = (
    "ONNX (fp32 or INT8), TorchScript, ncnn, ExecuTorch, AOTInductor or TensorRT, "
    "checked against PyTorch"
)


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "export",
        help=HELP,
    )
    add_model_options(parser, "model file (default: the bundled CamVid model)")
    parser.add_argument(
        "--format",
        choices=list(SUFFIXES),
        default="onnx",
        help="tensorrt: a float16 engine for --size, built on this machine's GPU; ncnn: "
        "-o NAME.param writes NAME.param, NAME.bin and NAME.json (needs pnnx and ncnn); "
        "executorch(-int8): -o NAME.pte writes NAME.pte and NAME.json, XNNPACK, fixed --size "
        "(other sizes are resized to it when run; needs executorch); aoti: -o NAME.pt2, "
        "AOTInductor, PyTorch's compiled successor to TorchScript (fixed --size, batches "
        "1-32; runs with this PyTorch version, from Python or C++; needs a C++ compiler)",
    )
    parser.add_argument("-o", "--output", type=PATH, required=True, help="output file")
    parser.add_argument(
        "--size",
        type=parse_image_size,
        help="HEIGHTxWIDTH: the size of fixed-size formats and of INT8 calibration, the "
        "example size of the others (default: the model's recorded input size, else its "
        "data set's: CamVid 360x480, Cityscapes 1024x2048)",
    )
    parser.add_argument("--argmax", action="store_true", help="labels instead of logits")
    parser.add_argument("--upsample", action="store_true", help="resize to the input size in-graph")
    parser.add_argument("--calibration", help="INT8: folder of real images")
    parser.add_argument(
        "--calibration-count",
        type=POSITIVE_INT,
        help=f"INT8: how many calibration images (default {CALIBRATION_COUNT})",
    )
    parser.add_argument(
        "--weight-bits",
        type=int,
        choices=[7, 8],
        help="onnx-int8: 7 (default) is accurate on every CPU; 8 only for files that run on "
        "VNNI/AMX CPUs or ARM (x86 CPUs without VNNI saturate with 8-bit weights)",
    )
    parser.add_argument(
        "--isa",
        choices=["portable", "native"],
        help="aoti: compile the kernels for AVX2, which every recent x86 CPU runs (portable, "
        "default), or for this CPU's widest instructions (native: may not load elsewhere)",
    )
    parser.add_argument("--evaluate-root", help="CamVid root: report mIoU of fp32 and INT8 on val")
    parser.add_argument("--evaluate-images", type=POSITIVE_INT, help="only the first N val images")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    images = _checked_options(args)
    model = load_pytorch_model(args)
    if args.evaluate_root is not None:  # before the export, not after it
        _check_camvid_classes(model)
    output = Path(args.output)
    if args.format == "ncnn":
        from ddrnet.deploy.ncnn_export import export_ncnn_checked

        export_ncnn_checked(
            model,
            output,
            args.size,
            upsample_to_input=args.upsample,
            evaluate_root=args.evaluate_root,
            evaluate_images=args.evaluate_images,
        )
    elif args.format.startswith("executorch"):
        from ddrnet.deploy.executorch_export import export_executorch_checked

        export_executorch_checked(
            model,
            output,
            args.size,
            int8=images is not None,
            calibration=images,
            upsample_to_input=args.upsample,
            evaluate_root=args.evaluate_root,
            evaluate_images=args.evaluate_images,
        )
    elif args.format == "aoti":
        from ddrnet.deploy.aoti import export_aoti_checked

        export_aoti_checked(
            model,
            output,
            args.size,
            upsample_to_input=args.upsample,
            isa=args.isa or "portable",
            evaluate_root=args.evaluate_root,
            evaluate_images=args.evaluate_images,
        )
    elif args.format == "torchscript":
        from ddrnet.deploy import export_torchscript

        export_torchscript(
            model, output, args.size, argmax=args.argmax, upsample_to_input=args.upsample
        )
        print(f"TorchScript written to {output}")
    else:
        from ddrnet.deploy.onnx_checked import export_onnx_checked

        export_onnx_checked(
            model,
            output,
            args.size,
            form=args.format,
            calibration=images or (),
            weight_bits=args.weight_bits,
            argmax=args.argmax,
            upsample_to_input=args.upsample,
            evaluate_root=args.evaluate_root,
            evaluate_images=args.evaluate_images,
        )
    return 0


def _checked_options(args: argparse.Namespace) -> list | None:
    """Refuse, before the model is loaded or anything written, what cannot work: an output
    that is the checkpoint, options of other formats, a --evaluate-root that is no CamVid
    folder; and read the calibration images of the INT8 formats (None for the others)."""
    from ddrnet.data.camvid import camvid
    from ddrnet.data.datasets import DatasetError
    from ddrnet.deploy import load_calibration_images
    from ddrnet.deploy.calibration import calibration_folder

    reads = {"--checkpoint": args.checkpoint}
    writable_file("-o", args.output, SUFFIXES[args.format], reads=reads)
    for companion in _files_beside(Path(args.output), args.format):
        writable_file(f"-o {args.output} writes beside it", str(companion), reads=reads)
    _check_options_apply(args)
    if args.format in (*LOGITS_ONLY_FORMATS, "onnx-int8") and args.argmax:
        what = "quantises a logits model" if args.format == "onnx-int8" else "exports logits only"
        raise UsageError(f"--format {args.format} {what}: drop --argmax")
    if args.argmax and args.evaluate_root is not None and not args.upsample:
        raise UsageError(
            "--evaluate-root scores labels at each frame's size: with --argmax add --upsample"
        )
    if args.format == "onnx-int8":
        from ddrnet.deploy.quantize import check_calibration_size

        check_calibration_size(args.size)
    if args.format in ("onnx-int8", "tensorrt"):
        from ddrnet.deploy.onnx_checked import check_fp32_companion

        check_fp32_companion(args.output)
    if args.evaluate_root is not None:  # read now: a wrong root fails before the export
        try:
            camvid(args.evaluate_root, "val")
        except (DatasetError, OSError) as error:
            raise UsageError(f"--evaluate-root {args.evaluate_root}: {error}") from None
    if args.format == "tensorrt":
        _check_tensorrt()
    if args.format not in INT8_FORMATS:
        return None
    folder = calibration_folder(args.calibration, f"--format {args.format}", demo_default=False)
    return load_calibration_images(folder, count=args.calibration_count or CALIBRATION_COUNT)


def _files_beside(output: Path, export_format: str) -> list[Path]:
    """The files an export of ``export_format`` to ``output`` writes besides it."""
    if export_format == "ncnn":
        from ddrnet.deploy.ncnn_runtime import NcnnFiles

        files = NcnnFiles.of(output)
        return [files.weights, files.sidecar]
    if export_format.startswith("executorch"):
        from ddrnet.deploy.executorch_runtime import ExecutorchFiles

        return [ExecutorchFiles.of(output).sidecar]
    if export_format in ("onnx-int8", "tensorrt"):
        from ddrnet.deploy.onnx_checked import kept_fp32_path

        return [kept_fp32_path(output)]
    return []


def _check_camvid_classes(model: nn.Module) -> None:
    """``--evaluate-root`` scores CamVid's classes: a model of other classes is refused
    (its scores would be another class's, or none)."""
    from ddrnet.data.labels import CAMVID

    if model.num_classes != CAMVID.num_classes:
        raise UsageError(
            f"--evaluate-root scores CamVid's {CAMVID.num_classes} classes; the model predicts "
            f"{model.num_classes}"
        )


def _check_options_apply(args: argparse.Namespace) -> None:
    """Refuse options that the format would accept and ignore."""
    if args.isa is not None and args.format != "aoti":
        raise UsageError(f"--isa applies to --format aoti, not {args.format}")
    int8_only = {"--calibration": args.calibration, "--calibration-count": args.calibration_count}
    for option, value in int8_only.items():
        if value is not None and args.format not in INT8_FORMATS:
            raise UsageError(
                f"{option} applies to the INT8 formats ({', '.join(INT8_FORMATS)}), "
                f"not {args.format}"
            )
    if args.weight_bits is not None and args.format != "onnx-int8":
        raise UsageError(f"--weight-bits applies to --format onnx-int8, not {args.format}")
    if args.evaluate_root is not None and args.format not in EVALUATED_FORMATS:
        raise UsageError(
            f"--evaluate-root scores {', '.join(EVALUATED_FORMATS)} files, not {args.format}"
        )
    if args.evaluate_images is not None and args.evaluate_root is None:
        raise UsageError("--evaluate-images applies to --evaluate-root, which is not given")


def _check_tensorrt() -> None:
    """A TensorRT engine is built on this machine's GPU: refused before any work without
    one, or without the tensorrt package."""
    from ddrnet.deploy.gpu import require_cuda

    try:
        require_cuda("--format tensorrt")  # its message names the option
    except RuntimeError as error:
        raise UsageError(str(error)) from None
    try:
        import tensorrt  # noqa: F401
    except ImportError as error:
        raise UsageError(f"--format tensorrt: {error}") from None
