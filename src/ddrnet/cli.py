"""The ``ddrnet`` command line. Each subcommand lives in a small function below; heavy
imports happen inside them so that ``ddrnet --help`` stays fast."""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ddrnet.limits import DEFAULT_MAX_PIXELS, MAX_SCALE

if TYPE_CHECKING:
    import torch

logger = logging.getLogger("ddrnet")


class UsageError(Exception):
    """Bad command-line input: printed as one line, exit status 2."""


def _number(kind: type, low: float, high: float = math.inf, *, open_low: bool = False):
    """An argparse ``type`` accepting ``kind`` values in ``[low, high]`` (``(low, high]``
    with ``open_low``), finite: a bad value is named by argparse with the option."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        below = value <= low if open_low else value < low
        if not math.isfinite(value) or below or value > high:
            bound = f"> {low:g}" if open_low else f">= {low:g}"
            limit = f" and <= {high:g}" if math.isfinite(high) else ""
            raise argparse.ArgumentTypeError(f"must be {bound}{limit}, got {text!r}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


POSITIVE_INT = _number(int, 1)
NON_NEGATIVE_INT = _number(int, 0)
POSITIVE_FLOAT = _number(float, 0, open_low=True)
NON_NEGATIVE_FLOAT = _number(float, 0)
FRACTION = _number(float, 0, 1)
SCALE = _number(float, 0, MAX_SCALE, open_low=True)
PORT = _number(int, 0, 65535)


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


def cmd_models(args: argparse.Namespace) -> int:
    from ddrnet.assets import bundled_model_rows
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
    bundled = bundled_model_rows()
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


def load_model_for_inference(
    checkpoint: str | None,
    model_name: str | None,
    num_classes=None,
    runtime: str | None = None,
    amp: str = "none",
):
    """A model from a checkpoint (its metadata names the architecture) or a registry name.

    An ``.onnx`` checkpoint gives an ``OnnxSegmentationModel`` run by ``runtime``
    (``onnxruntime`` by default, or ``openvino``, whose float layers run in bf16 with
    ``amp="bf16"``); ``runtime`` is an error for PyTorch model files.
    """
    import ddrnet

    if checkpoint is None and model_name is None:
        raise UsageError("give --checkpoint FILE (and --model NAME for files without metadata)")
    from ddrnet.deploy.ncnn_runtime import is_ncnn_file
    from ddrnet.deploy.runtime import is_onnx_file

    if runtime == "ncnn" or is_ncnn_file(checkpoint):
        return _load_ncnn_model(checkpoint or model_name, model_name, runtime, amp)
    if is_onnx_file(checkpoint):
        return _load_onnx_model(checkpoint, model_name, runtime, amp)
    if runtime is not None:
        raise UsageError(
            f"--runtime applies to exported .onnx files; {checkpoint or model_name} is a "
            "PyTorch model (use --amp and --device for it)"
        )
    return ddrnet.create_model(model_name, checkpoint=checkpoint, num_classes=num_classes)


def _load_onnx_model(checkpoint: str, model_name: str | None, runtime: str | None, amp: str):
    from ddrnet.deploy.onnx_file import ExportError
    from ddrnet.deploy.runtime import load_onnx_model

    runtime = runtime or "onnxruntime"
    if model_name is not None:
        raise UsageError(f"--model does not apply to {checkpoint}: an ONNX file is its own model")
    if amp == "fp16" or (amp == "bf16" and runtime == "onnxruntime"):
        raise UsageError(
            f"--amp {amp} with --runtime {runtime}: ONNX files run in float32 (or INT8 when "
            "quantised); for bf16 use --runtime openvino --amp bf16"
        )
    from ddrnet.hardware import cpu_has_native_bf16

    if amp == "bf16" and not cpu_has_native_bf16():
        logger.warning(
            "--amp bf16: this CPU has no native bfloat16 (AVX512-BF16 or AMX); OpenVINO runs "
            "the float layers of %s in float32 here",
            checkpoint,
        )
    bf16 = amp == "bf16" or (amp == "auto" and runtime == "openvino" and cpu_has_native_bf16())
    try:
        return load_onnx_model(checkpoint, runtime, "bf16" if bf16 else "f32")
    except ExportError as error:
        raise UsageError(str(error)) from None
    except ImportError as error:
        package = "openvino" if runtime == "openvino" else "onnxruntime and onnx"
        raise UsageError(
            f"running {checkpoint} with {runtime} needs {package} ({error}): "
            "pip install 'ddrnet[deploy]'"
        ) from None


def _load_ncnn_model(checkpoint: str, model_name: str | None, runtime: str | None, amp: str):
    """An ``NcnnSegmentationModel`` for ``--runtime ncnn`` or a ``.param`` checkpoint; a
    UsageError naming the file for another format, a missing .bin or a missing ncnn."""
    from ddrnet.deploy.ncnn_runtime import is_ncnn_file, load_ncnn_model

    if runtime not in (None, "ncnn"):
        raise UsageError(
            f"--runtime {runtime}: {checkpoint} is an ncnn file; run it with --runtime ncnn "
            "(or without --runtime)"
        )
    if not is_ncnn_file(checkpoint):
        raise UsageError(
            f"--runtime ncnn: {checkpoint} is not an ncnn .param file; export one with "
            "`ddrnet export --format ncnn -o NAME.param` (writes NAME.param, NAME.bin, NAME.json)"
        )
    if model_name is not None and model_name != checkpoint:
        raise UsageError(f"--model does not apply to {checkpoint}: an ncnn file is its own model")
    if amp not in ("none", "auto"):
        raise UsageError(f"--amp {amp}: ncnn files run in float32 here")
    return load_ncnn_model(checkpoint)  # NcnnFileError (an ExportError): one line from main


def _device_and_amp(
    args: argparse.Namespace, model: torch.nn.Module | None = None
) -> tuple[torch.device, torch.dtype | None]:
    """The ``--device`` and ``--amp`` options as a torch device and autocast dtype (or None).

    For an ONNX model the runtime already took ``--amp``, and the device is the CPU.
    """
    import torch

    from ddrnet.deploy.ncnn_runtime import NcnnSegmentationModel
    from ddrnet.deploy.runtime import OnnxSegmentationModel
    from ddrnet.engine.inference import pick_device, resolve_amp

    if isinstance(model, (OnnxSegmentationModel, NcnnSegmentationModel)):
        if args.device not in ("auto", "cpu"):
            raise UsageError(
                f"--device {args.device}: exported files run on the CPU here; for NVIDIA GPUs "
                "use the PyTorch model file or `ddrnet export --format tensorrt`"
            )
        return torch.device("cpu"), None
    try:
        device = pick_device(args.device)
    except ValueError as error:
        raise UsageError(f"--device {args.device}: {error}; use --device cpu or auto") from None
    try:
        return device, resolve_amp(args.amp, device, "--amp")
    except ValueError as error:
        raise UsageError(str(error)) from None


def _add_amp_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--amp",
        choices=["none", "auto", "bf16", "fp16"],
        default="none",
        help="reduced precision: auto = bf16 where the CPU computes it natively "
        "(AVX512-BF16/AMX) or on CUDA, else float32; bf16 on other CPUs is emulated and "
        "slow; fp16 needs CUDA",
    )


def _add_scales_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scales",
        type=SCALE,
        nargs="+",
        default=[1.0],
        help=f"test-time scales, each in (0, {MAX_SCALE:g}], e.g. 0.5 0.75 1 1.25 1.5 1.75",
    )


def _add_runtime_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--runtime",
        choices=["onnxruntime", "openvino", "ncnn"],
        help="for an exported .onnx checkpoint: the CPU runtime (default onnxruntime); "
        "openvino with --amp bf16 is the fastest float path on CPUs with AMX/AVX512-BF16; "
        "ncnn for a NAME.param from `ddrnet export --format ncnn` (picked by the suffix)",
    )


def cmd_eval(args: argparse.Namespace) -> int:
    import torch

    writable_file("--json", args.json, (".json",))

    from ddrnet.config import from_dict
    from ddrnet.data.build import build_dataset
    from ddrnet.data.datasets import DatasetError
    from ddrnet.engine.config import DataConfig
    from ddrnet.engine.evaluate import evaluate
    from ddrnet.engine.inference import to_fast_layout

    model = load_model_for_inference(
        args.checkpoint, args.model, runtime=args.runtime, amp=args.amp
    )
    metadata = model.metadata
    trained_with = (metadata.training or {}).get("config", {}).get("data", {})
    data_values = {k: v for k, v in trained_with.items()} if trained_with else {}
    for key, value in (
        ("dataset", args.dataset),
        ("root", args.root),
        ("classes_file", args.classes_file),
    ):
        if value is not None:
            data_values[key] = value
    if "dataset" not in data_values or "root" not in data_values:
        raise UsageError("this checkpoint does not record its data set: give --dataset and --root")
    if args.root is None and not Path(data_values["root"]).is_dir():
        raise UsageError(
            f"the model records its data at {data_values['root']}, which is not a folder from "
            f"here ({Path.cwd()}); give --root"
        )
    data_values["cache_images"] = False
    data_values["check"] = False
    # The recorded sequence filter describes the run's own validation split; another split,
    # or --sequences, replaces it.
    if args.sequences is not None or args.split != data_values.get("val_split", args.split):
        data_values["val_sequences"] = args.sequences
    data_config = from_dict(DataConfig, data_values)
    try:
        dataset = build_dataset(data_config, args.split, train=False)
    except DatasetError as error:
        raise DatasetError(f"evaluation set (--split {args.split}): {error}") from None
    labels = dataset.labels
    if labels.num_classes != model.num_classes:
        raise UsageError(
            f"the model predicts {model.num_classes} classes but {data_config.dataset} has "
            f"{labels.num_classes}"
        )
    if metadata.trained_on(data_config.dataset, args.split):
        logger.warning(
            "%s was trained on %s %s: its scores there are training-set figures",
            args.checkpoint,
            data_config.dataset,
            args.split,
        )
    if args.max_images is not None:
        dataset = torch.utils.data.Subset(dataset, range(min(args.max_images, len(dataset))))
    mean = metadata.mean if metadata.mean else labels.mean
    std = metadata.std if metadata.std else labels.std
    device, amp = _device_and_amp(args, model)
    model, memory_format = to_fast_layout(model.to(device))
    write_result = None
    if args.submission:
        if data_config.dataset != "cityscapes":
            raise UsageError(
                "--submission writes Cityscapes server files; the data set is "
                f"{data_config.dataset}"
            )
        from ddrnet.data.datasets import write_cityscapes_submission

        samples = getattr(dataset, "dataset", dataset).samples

        def write_result(index: int, prediction) -> None:
            write_cityscapes_submission(prediction, samples[index].image, args.submission)

    metrics = evaluate(
        model,
        dataset,
        labels.num_classes,
        mean,
        std,
        device=device,
        scales=args.scales,
        flip=args.flip,
        window=args.window,
        batch_size=args.batch_size,
        amp_dtype=amp,
        channels_last=memory_format == torch.channels_last,
        ignore_index=labels.ignore_index,
        prediction_callback=write_result,
    )
    names = list(labels.class_names)
    print(
        f"{data_config.dataset} {args.split}: {len(dataset)} images, "
        f"scales {args.scales}, flip {args.flip}"
    )
    print(metrics.table(names))
    if args.json:
        result = {
            "checkpoint": args.checkpoint,
            "dataset": data_config.dataset,
            "split": args.split,
            "images": len(dataset),
            "scales": list(args.scales),
            "flip": args.flip,
            **metrics.to_dict(names),
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"metrics written to {args.json}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from ddrnet.assets import bundled_model_path, demo_frames
    from ddrnet.predict import SegmentationRunner, run_prediction

    checkpoint = args.checkpoint
    if checkpoint is None and args.model is None:
        checkpoint = str(bundled_model_path())
    model = load_model_for_inference(checkpoint, args.model, runtime=args.runtime, amp=args.amp)
    inputs = args.inputs or [str(p) for p in demo_frames()]
    if not inputs:
        raise UsageError("no inputs given and no demo frames are installed")
    device, amp = _device_and_amp(args, model)
    runner = SegmentationRunner(model, device, amp, args.scales, args.flip, args.alpha)
    summary = run_prediction(
        runner,
        inputs,
        Path(args.output),
        kinds=args.save,
        batch_size=args.batch_size,
        num_workers=args.workers,
        max_frames=args.max_frames,
        max_pixels=args.max_pixels,
    )
    done, failed = len(summary.processed), len(summary.failed)
    if summary.latencies_ms:
        latencies = sorted(summary.latencies_ms)
        print(
            f"{done} input{'s' if done != 1 else ''} segmented into {args.output}; "
            "latency per image: "
            f"mean {sum(latencies) / len(latencies):.1f} ms, "
            f"median {latencies[len(latencies) // 2]:.1f} ms (not counted: a first, untimed "
            f"pass of {summary.warmup_ms:.0f} ms that created the kernels or compiled the model)"
        )
    if failed:
        print(f"{failed} of {done + failed} inputs failed (listed above)", file=sys.stderr)
        return 1
    return 0


def cmd_viz_features(args: argparse.Namespace) -> int:
    from ddrnet.data.io import read_rgb
    from ddrnet.viz import plot_features

    model = _model_for_deploy(args)  # --checkpoint, else --model, else the bundled model
    output = plot_features(
        model, read_rgb(args.image), args.output, top_k=args.top_k, reduction=args.reduce
    )
    print(f"feature maps of {args.image} written to {output}")
    return 0


def cmd_viz_confusion(args: argparse.Namespace) -> int:
    from ddrnet.viz import plot_confusion

    print(f"confusion matrix and IoU written to {plot_confusion(args.metrics, args.output)}")
    return 0


def cmd_viz_curves(args: argparse.Namespace) -> int:
    from ddrnet.viz import plot_curves

    print(f"training curves written to {plot_curves(args.run_dir, args.output)}")
    return 0


def cmd_viz_compare(args: argparse.Namespace) -> int:
    from ddrnet.data.io import read_rgb
    from ddrnet.viz import load_models, plot_compare

    if not args.checkpoint and not args.model:
        raise UsageError("give one or more --checkpoint FILE (or --model NAME) to compare")
    models = load_models(args.checkpoint or [], args.model or [])
    output = plot_compare(read_rgb(args.image), models, args.output)
    print(f"{len(models)} models on {args.image} written to {output}")
    return 0


def default_serving_checkpoint() -> str:
    """The bundled model's path, or a UsageError when this installation has none."""
    import ddrnet
    import ddrnet.assets

    # Older installations have no bundled model at all, newer ones may export it at the top.
    finder = getattr(ddrnet, "bundled_model_path", None) or getattr(
        ddrnet.assets, "bundled_model_path", None
    )
    if finder is not None:
        try:
            return str(finder())
        except FileNotFoundError:
            pass
    raise UsageError("no --checkpoint given and this installation bundles no model: give one")


def _warm_up(service) -> None:
    """One prediction on the first demo frame before the first request: oneDNN creates its
    kernels and OpenVINO compiles for that size (about a second for an ONNX file), so the
    first user of the usual frame size does not wait for it."""
    from ddrnet.assets import demo_frames
    from ddrnet.data.io import ImageReadError, read_rgb

    frames = demo_frames()
    if frames:
        try:
            service.predict(read_rgb(frames[0]))
        except ImageReadError:
            logger.warning("could not warm up on %s", frames[0])


def cmd_serve(args: argparse.Namespace) -> int:
    import socket

    from ddrnet.serve import create_app, make_server

    try:  # before loading anything: a mistyped host fails in a second, not after the warm-up
        socket.getaddrinfo(args.host, args.port)
    except socket.gaierror as error:
        raise UsageError(f"--host {args.host}: {error.strerror}") from None

    checkpoint = args.checkpoint or (None if args.model else default_serving_checkpoint())
    model = load_model_for_inference(checkpoint, args.model, runtime=args.runtime, amp=args.amp)
    device, amp = _device_and_amp(args, model)
    app = create_app(
        model,
        max_upload_mb=args.max_upload_mb,
        max_pixels=args.max_pixels,
        device=device,
        amp_dtype=amp,
    )
    _warm_up(app.extensions["ddrnet_service"])
    try:
        server = make_server(app, args.host, args.port, threads=args.threads, timeout=args.timeout)
    except OSError as error:
        raise UsageError(f"cannot listen on {args.host}:{args.port} ({error})") from None
    # Flushed: whoever started the server (a script, a test) reads the port from this line.
    address = f"http://{args.host}:{server.server_port}/"
    print(f"serving {model.metadata.architecture} on {address}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


def _pytorch_checkpoint_only(checkpoint: str | None, command: str) -> None:
    from ddrnet.deploy.ncnn_runtime import is_ncnn_file
    from ddrnet.deploy.runtime import is_onnx_file

    if is_onnx_file(checkpoint) or is_ncnn_file(checkpoint):
        raise UsageError(
            f"{command} works on the PyTorch model (.safetensors/.pt/.pth), not on the exported "
            f"{checkpoint}; predict, eval and serve run .onnx and ncnn .param files"
        )


def _model_for_deploy(args: argparse.Namespace):
    """--checkpoint (self-describing or with --model), else a fresh --model, else the bundled."""
    from ddrnet.assets import bundled_model_path

    _pytorch_checkpoint_only(args.checkpoint, f"ddrnet {args.command}")

    if args.checkpoint is None and args.model is None:
        return load_model_for_inference(str(bundled_model_path()), None)
    return load_model_for_inference(args.checkpoint, args.model)


def cmd_bench(args: argparse.Namespace) -> int:
    import torch

    writable_file("--json", args.json, (".json",))

    from ddrnet.assets import demo_frames
    from ddrnet.deploy import (
        BACKENDS,
        check_backends,
        default_backends,
        float32_conv_peak,
        load_calibration_images,
        measure_conv_peak_gflops,
        measured_peaks,
        run_benchmarks,
    )
    from ddrnet.hardware import describe_cpu
    from ddrnet.models import count_macs, count_parameters

    if args.threads:
        torch.set_num_threads(args.threads)
    # Checked before the ~30 s of measuring, not after.
    args.backends = check_backends(args.backends) if args.backends else default_backends()
    model = _model_for_deploy(args)
    height, width = args.size
    params = count_parameters(model, exclude_prefixes=("aux_head.",))
    gmacs = count_macs(model, (height, width)) / 1e9
    print(
        f"{model.metadata.architecture}: {params / 1e6:.3f}M parameters, {gmacs:.2f} GMACs at "
        f"{height}x{width}; batch {args.batch_size}, {torch.get_num_threads()} threads"
    )
    print(describe_cpu())
    peak = measure_conv_peak_gflops(seconds=2.0)
    print(
        f"convolution peak of this CPU (3x3, 256 ch): fp32 {peak['float32']:.0f} GFLOP/s, "
        f"bf16 {peak['bfloat16']:.0f} GFLOP/s"
    )
    calibration = None
    if any(name.endswith("int8") for name in args.backends):
        source = args.calibration or (demo_frames()[0].parent if demo_frames() else None)
        if source is None:
            raise UsageError("INT8 needs --calibration FOLDER of real images")
        calibration = load_calibration_images(source, count=16)
    rows = run_benchmarks(
        model,
        (height, width),
        args.backends,
        seconds=args.seconds,
        rounds=args.rounds,
        warmup_seconds=args.warmup,
        batch_size=args.batch_size,
        calibration_images=calibration,
        measure_peak=float32_conv_peak,
    )
    print(
        f"{args.rounds} interleaved rounds; FPS and speed-up are medians over rounds, the range "
        "is the lowest and highest per-round speed-up; 'of fp32 peak' compares each round with "
        "the fp32 convolution peak measured after it "
        f"({_peak_range(measured_peaks(rows))} GFLOP/s)"
    )
    header = (
        f"{'backend':<26}{'FPS':>8}{'mean ms':>9}{'p50':>8}{'p90':>8}{'p99':>8}"
        f"{'speedup':>9}{'range':>14}{'peak MiB':>10}{'of fp32 peak':>14}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        if row.get("error"):
            print(f"{row['backend']:<26}failed: {row['error'][:90]}")
            continue
        spread = f"{min(row['speedup_rounds']):.2f}-{max(row['speedup_rounds']):.2f}"
        print(
            f"{row['backend']:<26}{row['fps']:>8.2f}{row['latency_ms_mean']:>9.1f}"
            f"{row['latency_ms_p50']:>8.1f}{row['latency_ms_p90']:>8.1f}{row['latency_ms_p99']:>8.1f}"
            f"{row['speedup']:>8.2f}x{spread:>14}{row.get('peak_memory_mib') or 0:>10.0f}"
            f"{row.get('fraction_of_peak') or 0:>14.2f}"
        )
    if args.json:
        result = {
            "model": model.metadata.architecture,
            "input_size": [height, width],
            "parameters": params,
            "gmacs": gmacs,
            "threads": torch.get_num_threads(),
            "conv_peak_gflops": peak,
            "backends": {name: BACKENDS[name] for name in args.backends},
            "rows": rows,
        }
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
        print(f"results written to {args.json}")
    if all(row.get("error") for row in rows if row["backend"] in args.backends):
        print("ddrnet bench: every backend asked for failed (see above)", file=sys.stderr)
        return 1
    return 0


def _peak_range(peaks: list[float]) -> str:
    return f"{min(peaks):.0f}-{max(peaks):.0f}" if peaks else "not measured"


def cmd_export(args: argparse.Namespace) -> int:
    from ddrnet.deploy import (
        evaluate_onnx,
        evaluate_onnx_forms,
        export_onnx,
        export_torchscript,
        load_calibration_images,
        quantize_onnx_int8,
        verify_onnx,
        verify_onnx_labels,
    )
    from ddrnet.hardware import cpu_has_native_bf16

    writable_file(
        "-o",
        args.output,
        {
            "onnx": (".onnx",),
            "onnx-int8": (".onnx",),
            "torchscript": (".pt", ".ts", ".torchscript"),
            "tensorrt": (".engine", ".plan", ".trt"),
            "ncnn": (".param",),
        }[args.format],
    )
    if args.format == "ncnn" and args.argmax:
        raise UsageError("--format ncnn exports logits only: drop --argmax (pnnx has no argmax)")
    if args.format == "onnx-int8" and args.calibration is None:
        raise UsageError("--format onnx-int8 needs --calibration (a folder of real images)")
    model = _model_for_deploy(args)
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
        return 0
    if args.format == "torchscript":
        export_torchscript(
            model, output, args.size, argmax=args.argmax, upsample_to_input=args.upsample
        )
        print(f"TorchScript written to {output}")
        return 0
    if args.format == "tensorrt":
        from ddrnet.deploy import build_tensorrt_engine
        from ddrnet.deploy.gpu import require_cuda

        try:
            require_cuda("--format tensorrt")
            import tensorrt  # noqa: F401
        except (RuntimeError, ImportError) as error:
            raise UsageError(f"--format tensorrt: {error}") from None
    fp32_path = output if args.format == "onnx" else output.with_name(output.stem + "_fp32.onnx")
    export_onnx(model, fp32_path, args.size, argmax=args.argmax, upsample_to_input=args.upsample)
    kept = " (the float32 model, kept beside the INT8 file)" if fp32_path != output else ""
    print(f"ONNX written to {fp32_path}{kept} (dynamic batch, height and width)")
    if args.argmax:
        agreement = verify_onnx_labels(model, fp32_path)
        print(f"ONNX Runtime vs PyTorch: labels agree on {100 * agreement:.3f}% of pixels")
    else:
        difference = verify_onnx(model, fp32_path)
        print(f"ONNX Runtime vs PyTorch: max abs logit difference {difference:.2e}")
    final = fp32_path
    if args.format == "tensorrt":
        height, width = args.size
        build_tensorrt_engine(fp32_path, output, (1, 3, height, width), fp16=True)
        print(f"TensorRT engine (float16 allowed, input 1x3x{height}x{width}) written to {output}")
        return 0
    if args.format == "onnx-int8":
        if args.calibration is None:
            raise UsageError("--format onnx-int8 needs --calibration (a folder of real images)")
        images = load_calibration_images(args.calibration, count=args.calibration_count)
        final = quantize_onnx_int8(
            fp32_path, output, images, size=args.size, reduce_range=args.weight_bits == 7
        )
        print(
            f"INT8 (QDQ, per-channel, {args.weight_bits}-bit weights) written to {final}, "
            f"calibrated on {len(images)} images"
        )
    if args.evaluate_root:
        from ddrnet.data.datasets import camvid

        dataset = camvid(args.evaluate_root, "val")
        count = min(args.evaluate_images or len(dataset), len(dataset))
        print(f"scoring on {count} of the {len(dataset)} CamVid val images (--evaluate-images)")
        if model.metadata.trained_on("camvid", "val"):
            logger.warning(
                "this model was trained on CamVid val: its scores there are training-set "
                "figures; the held-out model is camvid_ddrnet23_slim_train (--checkpoint)"
            )
        reference = evaluate_onnx(fp32_path, dataset, limit=args.evaluate_images)
        print(f"fp32 ONNX with onnxruntime on CamVid val: mIoU {reference.miou:.2f}")
        # Every deployed form against that reference, run as `ddrnet bench` runs it.
        # OpenVINO's float layers in bf16 where the CPU computes it, as --amp auto runs them.
        precision = "bf16" if cpu_has_native_bf16() else "f32"
        layers = f"({precision} float layers)"
        forms = [(f"fp32 ONNX with openvino {layers}", fp32_path, "openvino", precision)]
        if final != fp32_path:
            forms += [
                ("INT8 ONNX with onnxruntime", final, "onnxruntime", "f32"),
                (f"INT8 ONNX with openvino {layers}", final, "openvino", precision),
            ]
        results = evaluate_onnx_forms(forms, dataset, limit=args.evaluate_images)
        for name, deployed in results.items():
            if deployed is None:
                print(f"{name}: not installed")
                continue
            print(
                f"{name} on CamVid val: mIoU {deployed.miou:.2f} "
                f"({deployed.miou - reference.miou:+.2f})"
            )
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    """Channel-prune a model to a fraction of its MACs and write it as a model file."""
    import ddrnet
    from ddrnet.deploy.runtime import is_onnx_file
    from ddrnet.models import CheckpointError, save_model
    from ddrnet.models.prune import PruningError, prune_to_macs, training_size

    if not 0 < args.macs < 1:  # also refuses nan
        raise UsageError(f"--macs {args.macs:g}: the MAC fraction to keep must be in (0, 1)")
    if not 0 < args.max_layer_ratio < 1:
        raise UsageError(f"--max-layer-ratio {args.max_layer_ratio:g}: must be in (0, 1)")
    if is_onnx_file(args.checkpoint):
        raise UsageError(
            f"CHECKPOINT {args.checkpoint}: an exported ONNX file cannot be pruned; prune the "
            ".safetensors model it was exported from, then export the pruned one"
        )
    writable_file("-o", args.output, (".safetensors",))
    try:
        model = ddrnet.create_model(args.model, checkpoint=args.checkpoint)
    except (CheckpointError, ValueError, KeyError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        raise UsageError(f"CHECKPOINT {args.checkpoint}: {message}") from None
    size = args.size or training_size(model.metadata)
    try:
        result = prune_to_macs(
            model,
            args.macs,
            input_size=size,
            importance=args.importance,
            max_layer_ratio=args.max_layer_ratio,
            global_pruning=args.global_pruning,
            round_to=args.round_to,
        )
    except PruningError as error:
        raise UsageError(str(error)) from None
    save_model(result.model, args.output, result.model.metadata)
    print(
        f"pruned {args.checkpoint} at {size[0]}x{size[1]}: "
        f"{result.macs_before / 1e9:.3f} -> {result.macs_after / 1e9:.3f} GMACs "
        f"({result.macs_fraction:.3f} of the MACs), {result.params_before / 1e6:.3f} -> "
        f"{result.params_after / 1e6:.3f} M parameters; written to {args.output} "
        "(not fine-tuned: train it before use)"
    )
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
        description="Train from a recipe; any key can be overridden as section.key=value "
        "(train.output_dir=runs/x, train.epochs=50, data.root=/data/camvid).",
        epilog="A short run, to try a recipe or a machine in minutes: "
        "train.epochs=2 train.max_iterations_per_epoch=20 (optimiser steps per epoch) "
        "eval.max_images=20 (validation images) train.output_dir=runs/try. "
        "train.max_minutes=N stops cleanly after the epoch that crosses N minutes; "
        "--resume continues.",
    )
    train.add_argument("config", help="bundled recipe name or path to a YAML file")
    train.add_argument(
        "overrides", nargs="*", help="overrides such as train.epochs=10 (section.key=value)"
    )
    train.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default=False,
        help="resume from OUTPUT_DIR/last.pt, or from the checkpoint given",
    )
    train.set_defaults(handler=cmd_train)

    evaluation = commands.add_parser(
        "eval",
        help="mIoU, per-class IoU and accuracy of a checkpoint on a data set",
        description="Evaluate at full label resolution. The data set defaults to the one the "
        "checkpoint was trained on (from its metadata).",
    )
    evaluation.add_argument(
        "checkpoint", help="model file (.safetensors, .pt or .pth), or an exported .onnx file"
    )
    evaluation.add_argument("--model", help="architecture, for checkpoints without metadata")
    evaluation.add_argument("--dataset", choices=["camvid", "cityscapes", "coco_stuff", "folder"])
    evaluation.add_argument("--root", help="data set folder")
    evaluation.add_argument("--classes-file", help="folder data sets: the classes file")
    evaluation.add_argument("--split", default="val")
    evaluation.add_argument(
        "--sequences", nargs="+", help="CamVid: only frames of these sequences (e.g. 0006R0)"
    )
    _add_scales_option(evaluation)
    evaluation.add_argument("--flip", action="store_true", help="add horizontally flipped passes")
    evaluation.add_argument("--window", type=parse_size, help="sliding window HEIGHTxWIDTH")
    evaluation.add_argument("--batch-size", type=POSITIVE_INT, default=1)
    _add_amp_option(evaluation)
    evaluation.add_argument("--device", default="auto")
    _add_runtime_option(evaluation)
    evaluation.add_argument("--max-images", type=POSITIVE_INT, help="only the first N images")
    evaluation.add_argument("--json", help="write the metrics (key 'mIoU') to this file")
    evaluation.add_argument(
        "--submission", help="Cityscapes: write labelId PNGs for the evaluation server here"
    )
    evaluation.set_defaults(handler=cmd_eval)

    predict = commands.add_parser(
        "predict",
        help="segment images, folders, globs, videos or a camera",
        description="Without --checkpoint the bundled CamVid model is used; without inputs, the "
        "bundled demo frames.",
    )
    predict.add_argument("inputs", nargs="*", help="image, folder, glob, video file or camera:N")
    predict.add_argument(
        "--checkpoint",
        help="model file, or an exported .onnx file (default: the bundled CamVid model)",
    )
    predict.add_argument("--model", help="architecture, for checkpoints without metadata")
    predict.add_argument("-o", "--output", default="predictions", help="output folder")
    predict.add_argument(
        "--save",
        nargs="+",
        default=["labels", "overlay"],
        choices=["labels", "overlay", "side"],
        help="label PNGs, overlays with legend, side-by-side pictures",
    )
    predict.add_argument("--batch-size", type=POSITIVE_INT, default=1)
    predict.add_argument(
        "--workers", type=NON_NEGATIVE_INT, default=0, help="DataLoader workers for reading"
    )
    _add_scales_option(predict)
    predict.add_argument(
        "--max-pixels",
        type=POSITIVE_INT,
        default=DEFAULT_MAX_PIXELS,
        help="skip (with a warning) images with more pixels than this at the largest scale "
        f"(default {DEFAULT_MAX_PIXELS:,}); the exit status is then 1",
    )
    predict.add_argument("--flip", action="store_true")
    predict.add_argument("--alpha", type=FRACTION, default=0.5, help="overlay colour weight, 0-1")
    _add_amp_option(predict)
    predict.add_argument("--device", default="auto")
    _add_runtime_option(predict)
    predict.add_argument(
        "--max-frames", type=NON_NEGATIVE_INT, help="videos and cameras: stop after N frames"
    )
    predict.set_defaults(handler=cmd_predict)

    bench = commands.add_parser(
        "bench",
        help="inference speed of several backends in one run (the paper's protocol by default)",
        description="Batch 1, eval mode, warm-up then a timed loop; every speedup is relative "
        "to eager fp32 measured in the same run.",
    )
    bench.add_argument("--checkpoint", help="model file (default: the bundled CamVid model)")
    bench.add_argument("--model", help="architecture (fresh weights unless --checkpoint)")
    bench.add_argument(
        "--size",
        type=parse_image_size,
        default=(1024, 2048),
        help="HEIGHTxWIDTH (default 1024x2048)",
    )
    from ddrnet.deploy.backends import BACKENDS, default_backends

    bench.add_argument(
        "--backends",
        nargs="+",
        help=f"any of {', '.join(BACKENDS)} (cuda* and tensorrt* on NVIDIA GPUs); default: "
        f"those that run well on this machine, here {' '.join(default_backends())}",
    )
    bench.add_argument(
        "--seconds",
        type=POSITIVE_FLOAT,
        default=6.0,
        help="timed seconds per backend, in all (default %(default)s)",
    )
    bench.add_argument(
        "--rounds",
        type=POSITIVE_INT,
        default=3,
        help="split --seconds into this many round-robin passes over the backends; speed-ups "
        "are medians of the per-pass ratios, so a machine whose load drifts still gives "
        "fair ratios (default %(default)s)",
    )
    bench.add_argument(
        "--warmup",
        type=NON_NEGATIVE_FLOAT,
        default=2.0,
        help="warm-up seconds per backend (default %(default)s)",
    )
    bench.add_argument("--batch-size", type=POSITIVE_INT, default=1)
    bench.add_argument("--threads", type=POSITIVE_INT, help="torch CPU threads")
    bench.add_argument("--calibration", help="INT8: folder of real images (default: demo frames)")
    bench.add_argument("--json", help="write all figures to this file")
    bench.set_defaults(handler=cmd_bench)

    export = commands.add_parser(
        "export", help="ONNX (fp32 or INT8) or TorchScript, checked against PyTorch"
    )
    export.add_argument("--checkpoint", help="model file (default: the bundled CamVid model)")
    export.add_argument("--model", help="architecture, for checkpoints without metadata")
    export.add_argument(
        "--format",
        choices=["onnx", "onnx-int8", "torchscript", "tensorrt", "ncnn"],
        default="onnx",
        help="tensorrt: a float16 engine for --size, built on this machine's GPU; ncnn: "
        "-o NAME.param writes NAME.param, NAME.bin and NAME.json (needs pnnx and ncnn)",
    )
    export.add_argument("-o", "--output", required=True, help="output file")
    export.add_argument(
        "--size",
        type=parse_image_size,
        default=(360, 480),
        help="example HEIGHTxWIDTH (default 360x480)",
    )
    export.add_argument("--argmax", action="store_true", help="labels instead of logits")
    export.add_argument("--upsample", action="store_true", help="resize to the input size in-graph")
    export.add_argument("--calibration", help="INT8: folder of real images")
    export.add_argument("--calibration-count", type=POSITIVE_INT, default=32)
    export.add_argument(
        "--weight-bits",
        type=int,
        choices=[7, 8],
        default=7,
        help="INT8: 7 (default) is accurate on every CPU; 8 only for files that run on "
        "VNNI/AMX CPUs or ARM (x86 CPUs without VNNI saturate with 8-bit weights)",
    )
    export.add_argument("--evaluate-root", help="CamVid root: report mIoU of fp32 and INT8 on val")
    export.add_argument("--evaluate-images", type=POSITIVE_INT, help="only the first N val images")
    export.set_defaults(handler=cmd_export)

    prune = commands.add_parser(
        "prune",
        help="structured channel pruning to a fraction of the MACs (torch-pruning)",
        description="Remove whole channels, keeping every residual, fusion, DAPPM and head "
        "connection consistent, until the model has at most --macs of its multiply-adds at "
        "its training size. The result is not fine-tuned.",
    )
    prune.add_argument("checkpoint", help="model file or bundled model name (not .onnx)")
    prune.add_argument("--model", help="architecture, for checkpoints without metadata")
    prune.add_argument(
        "--macs", type=float, required=True, help="fraction of the MACs to keep, in (0, 1)"
    )
    prune.add_argument("-o", "--output", required=True, help="output .safetensors file")
    prune.add_argument(
        "--importance",
        choices=["l1", "l2", "bn-scale"],
        default="l1",
        help="channel score: weight L1 (default) or L2 norm over the coupled layers, or "
        "BatchNorm scale",
    )
    prune.add_argument(
        "--max-layer-ratio",
        type=float,
        default=0.8,
        help="most any layer may lose, as a fraction of its channels (default 0.8)",
    )
    prune.add_argument(
        "--global",
        dest="global_pruning",
        action="store_true",
        help="rank channels across the network (uneven widths) instead of the same "
        "fraction from every layer",
    )
    prune.add_argument("--round-to", type=POSITIVE_INT, help="keep widths multiples of N")
    prune.add_argument(
        "--size",
        type=parse_image_size,
        help="HEIGHTxWIDTH to count MACs at (default: the model's training size, e.g. "
        "360x480 for CamVid)",
    )
    prune.set_defaults(handler=cmd_prune)

    viz = commands.add_parser(
        "viz",
        help="pictures: feature maps, confusion matrix, training curves, model comparison",
        description="Write one PNG per call; see 'ddrnet viz FIGURE --help'.",
    )
    figures = viz.add_subparsers(dest="figure", metavar="FIGURE", required=True)
    features = figures.add_parser(
        "features",
        help="both branches around each fusion, DAPPM scales, class probabilities, entropy",
    )
    features.add_argument("image", help="input image")
    features.add_argument("--checkpoint", help="model file (default: the bundled CamVid model)")
    features.add_argument("--model", help="architecture, for checkpoints without metadata")
    features.add_argument(
        "--top-k", type=POSITIVE_INT, default=5, help="class-probability maps to show"
    )
    features.add_argument(
        "--reduce",
        choices=["mean-abs", "pca"],
        default="mean-abs",
        help="channels -> one map: mean of |activation| or first PCA component",
    )
    features.add_argument("-o", "--output", required=True, help="PNG file to write")
    features.set_defaults(handler=cmd_viz_features)
    confusion = figures.add_parser(
        "confusion", help="row-normalised confusion matrix and per-class IoU"
    )
    confusion.add_argument("metrics", help="JSON written by 'ddrnet eval --json'")
    confusion.add_argument("-o", "--output", required=True, help="PNG file to write")
    confusion.set_defaults(handler=cmd_viz_confusion)
    curves = figures.add_parser("curves", help="loss, val mIoU, lr and throughput per epoch")
    curves.add_argument("run_dir", help="training run folder (with metrics.jsonl)")
    curves.add_argument("-o", "--output", required=True, help="PNG file to write")
    curves.set_defaults(handler=cmd_viz_curves)
    compare = figures.add_parser("compare", help="one image through several models")
    compare.add_argument("image", help="input image")
    compare.add_argument("--checkpoint", action="append", help="model file (repeat)")
    compare.add_argument(
        "--model", action="append", help="architecture (repeat; alone: untrained models)"
    )
    compare.add_argument("-o", "--output", required=True, help="PNG file to write")
    compare.set_defaults(handler=cmd_viz_compare)

    serve = commands.add_parser(
        "serve",
        help="HTTP server with a web demo page: /, /health, /predict, /demo",
        description="Load the model once and serve predictions (format=png|overlay|json). "
        "Without --checkpoint the bundled model is used.",
    )
    serve.add_argument(
        "--checkpoint", help="model file, or an exported .onnx file (default: the bundled model)"
    )
    serve.add_argument("--model", help="architecture, for checkpoints without metadata")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=PORT, default=8000, help="0 picks a free port")
    serve.add_argument(
        "--max-upload-mb", type=POSITIVE_FLOAT, default=10.0, help="larger bodies get 413"
    )
    serve.add_argument(
        "--max-pixels",
        type=POSITIVE_INT,
        default=4096 * 2048,
        help="larger images get 413 (default 4096x2048)",
    )
    serve.add_argument("--threads", type=POSITIVE_INT, default=4, help="worker threads (default 4)")
    serve.add_argument(
        "--timeout",
        type=POSITIVE_INT,
        default=30,
        help="close a connection after this many seconds without a byte (default 30)",
    )
    _add_amp_option(serve)
    serve.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 or auto")
    _add_runtime_option(serve)
    serve.set_defaults(handler=cmd_serve)
    return parser


def writable_file(option: str, path: str | None, suffixes: Sequence[str] = ()) -> None:
    """Check an output file's path before the work that fills it: not a folder, the right
    suffix, and a parent folder that exists or can be made."""
    if path is None:
        return
    target = Path(path)
    if target.is_dir():
        raise UsageError(f"{option} {path}: is a folder, but a file is to be written there")
    if suffixes and target.suffix.lower() not in suffixes:
        raise UsageError(f"{option} {path}: expected a {' or '.join(suffixes)} file name")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"{option} {path}: cannot create its folder ({error})") from None
    try:  # a read-only folder: refused now, not after minutes of work
        with tempfile.TemporaryFile(dir=target.parent):
            pass
    except OSError as error:
        reason = error.strerror or error
        raise UsageError(f"{option} {path}: cannot write in its folder ({reason})") from None


def _os_error_reason(error: OSError) -> str:
    """What an OS error on an output path means for the user (e.g. ``-o`` naming a file)."""
    if isinstance(error, (FileExistsError, NotADirectoryError)):
        return "a file is in the way where an output folder is needed"
    if isinstance(error, IsADirectoryError):
        return "is a folder, but a file is to be written there"
    return str(error.strerror or error)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    from ddrnet.deploy.onnx_file import ExportError
    from ddrnet.engine.train import TrainingError

    try:
        return int(args.handler(args) or 0)
    except (UsageError, ValueError, KeyError, OSError, TrainingError, ExportError) as error:
        if args.verbose:
            raise
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        if isinstance(error, OSError) and error.filename is not None:
            message = f"{error.filename}: {_os_error_reason(error)}"
        print(f"ddrnet {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
