"""Accuracy against speed for DDRNet-23-slim and its pruned forms, every deployed form, one run.

For each model file (default: the bundled CamVid 23-slim and the bundled fast model, both the
train-only twins, so that val was never trained on): MACs and parameters at 360x480, CamVid
val mIoU through ``ddrnet eval``'s code, and the median per-frame latency through ``ddrnet
predict``'s code (normalise, forward, resize to 360x480, class ids) in PyTorch fp32, ONNX
Runtime fp32 and INT8, OpenVINO fp32 and INT8, and ncnn where installed. Every (model, form)
pair takes its turn frame by frame, so load that drifts during the run hits all alike: the
ratios are fair even where the absolute figures are not. Issue 21's speed targets for the
second model against the first are checked at the end (``report_targets``). ``--speed-only
FILE`` adds models whose accuracy means nothing yet (pruned, not fine-tuned): latency only.
Then a PNG of mIoU against ms per frame. Run on an otherwise idle machine:

    python benchmarks/pruning_tradeoff.py [--models A B ...] [--speed-only C ...]
        [--camvid ../shared/data/camvid] [--images 101] [--frames 30] [--threads 2]
        [--plot benchmarks/pruning_tradeoff.png] [--json out.json] [--max-isa AVX2]

``--max-isa AVX2`` runs the table as an AVX2 laptop without VNNI or native bf16 would, on a
machine that has them: the script starts again with oneDNN's ``ONEDNN_MAX_CPU_ISA`` (PyTorch's
and OpenVINO's convolutions), OpenVINO's ``OV_CPU_MAX_ISA`` and PyTorch's
``ATEN_CPU_CAPABILITY`` set, and leaves out ONNX Runtime and ncnn, which choose their kernels
from the CPU itself and cannot be capped. The same cores at AVX2 width, not a laptop's clock
or caches: a stand-in for the laptop's ratios, not its frame rate.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

import ddrnet
from ddrnet.data.camvid import camvid
from ddrnet.deploy import load_calibration_images
from ddrnet.engine.evaluate import evaluate
from ddrnet.hardware import describe_cpu, onednn_isa_cap
from ddrnet.models import count_macs, count_parameters
from ddrnet.runner import SegmentationRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inference_speed import (  # noqa: E402
    add_comparison_options,
    as_predict_runs,
    deployed_forms,
    restart_capped,
    val_frames,
)


def ncnn_form(model: torch.nn.Module, scratch: Path, threads: int) -> torch.nn.Module | None:
    """The model exported to ncnn and loaded back, or None where pnnx/ncnn are missing."""
    from ddrnet.deploy.onnx_file import ExportError

    try:
        from ddrnet.deploy.ncnn_export import export_ncnn
        from ddrnet.deploy.ncnn_runtime import load_ncnn_model

        param = export_ncnn(model, scratch / "model.param")
        return load_ncnn_model(param, threads)
    except (ImportError, ExportError) as error:  # pnnx or ncnn not installed
        print(f"(ncnn: {error})")
        return None


def forms_of(
    path: str, scratch: Path, calibration: list, threads: int
) -> tuple[torch.nn.Module, dict]:
    """The model in ``path`` and its deployed forms (``inference_speed.deployed_forms``, the
    fp32 and INT8 ones, plus ncnn)."""
    model = ddrnet.create_model(checkpoint=path)
    forms = deployed_forms(model, scratch, calibration, threads)
    forms.pop("eager_bf16", None)  # the fp32 comparison; bf16 is the CPU's own question
    forms.pop("openvino_bf16", None)
    if onednn_isa_cap():  # ONNX Runtime and ncnn pick kernels from CPUID: no cap reaches them
        forms.pop("ort", None)
        forms.pop("ort_int8", None)
        return model, forms
    ncnn = ncnn_form(model, scratch, threads)
    if ncnn is not None:
        forms["ncnn"] = (ncnn, None)
    return model, forms


def measure(args: argparse.Namespace) -> list[dict]:
    val = camvid(args.camvid, "val")
    subset = torch.utils.data.Subset(val, range(min(args.images, len(val))))
    frames = val_frames(args.camvid, args.frames)
    calibration = load_calibration_images(camvid(args.camvid, "train"), count=16)
    rows, runners = [], {}
    with tempfile.TemporaryDirectory() as scratch_root:
        for index, path in enumerate([*args.models, *args.speed_only]):
            scratch = Path(scratch_root) / str(index)
            scratch.mkdir()
            model, forms = forms_of(path, scratch, calibration, args.threads)
            common = {
                "model": str(path),
                "gmacs": count_macs(model, (360, 480)) / 1e9,
                "params_m": count_parameters(model, exclude_prefixes=("aux_head.",)) / 1e6,
            }
            for name, (form, amp) in forms.items():
                row = dict(common, form=name, mIoU=None)
                as_predict_runs(form, args.threads)
                if path in args.models:
                    metadata = model.metadata
                    row["mIoU"] = evaluate(
                        form, subset, model.num_classes, metadata.mean, metadata.std,
                        amp_dtype=amp, progress=False,
                    ).miou  # fmt: skip
                runners[len(rows)] = SegmentationRunner(form, torch.device("cpu"), amp)
                for frame in frames[:3]:  # warm-up: OpenVINO compiles, oneDNN plans
                    runners[len(rows)].labels([frame])
                rows.append(row)
        latencies: dict[int, list[float]] = {key: [] for key in runners}
        for frame in frames:
            for key, runner in runners.items():
                as_predict_runs(runner.predictor.model, args.threads)
                latencies[key].append(runner.labels([frame])[-1])
    for key, row in enumerate(rows):
        row["ms_per_frame"] = statistics.median(latencies[key])
    return rows


def short_names(models: list[str]) -> dict[str, str]:
    """Each model's file name, with as many parent folders as it takes to tell them apart
    (three runs' ``best.safetensors`` become ``base/best.safetensors``, ...)."""
    unique = list(dict.fromkeys(models))
    for depth in range(1, max(len(Path(m).parts) for m in unique) + 1):
        names = {m: "/".join(Path(m).parts[-depth:]) for m in unique}
        if len(set(names.values())) == len(unique):
            return names
    return {m: m for m in unique}


def report(rows: list[dict]) -> None:
    names = short_names([r["model"] for r in rows])
    reference = {r["form"]: r["ms_per_frame"] for r in rows if r["model"] == rows[0]["model"]}
    print(f"\n{describe_cpu()}; {torch.get_num_threads()} threads; the first model is the 1.00x")
    header = (
        f"{'model':<44}{'GMACs':>7}{'params M':>9}{'form':>15}{'mIoU':>8}{'ms':>8}{'FPS':>7}"
        f"{'speed':>8}"
    )
    print(header + "\n" + "-" * len(header))
    for r in rows:
        miou = f"{r['mIoU']:.2f}" if r["mIoU"] is not None else "-"
        speed = reference.get(r["form"], float("nan")) / r["ms_per_frame"]
        print(
            f"{names[r['model']][-43:]:<44}{r['gmacs']:>7.2f}{r['params_m']:>9.2f}"
            f"{r['form']:>15}{miou:>8}{r['ms_per_frame']:>8.1f}{1000 / r['ms_per_frame']:>7.1f}"
            f"{speed:>7.2f}x"
        )


def report_targets(rows: list[dict]) -> None:
    """Issue 21's speed targets for the second model (the fast one) against the first: at most
    half the MACs; in its fastest form at least 30 frames per second and 1.8x the first
    model's frames per second in that same form. Measured on this machine as it runs (capped
    or not): the targets are set for 2 cores of an AVX2 CPU without VNNI."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    if len(models) < 2:
        return
    names = short_names(models)
    first = {r["form"]: r for r in rows if r["model"] == models[0]}
    second = [r for r in rows if r["model"] == models[1] and r["form"] in first]
    fastest = min(second, key=lambda r: r["ms_per_frame"])
    fraction = fastest["gmacs"] / first[fastest["form"]]["gmacs"]
    fps = 1000 / fastest["ms_per_frame"]
    speed_up = first[fastest["form"]]["ms_per_frame"] / fastest["ms_per_frame"]
    print(
        f"\nissue 21's targets (set for 2 cores of an AVX2 CPU without VNNI; this run: "
        f"{describe_cpu()}) for {names[models[1]]} against {names[models[0]]}:"
    )
    for text, value, met in (
        ("MACs, at most 0.50 of the first", f"{fraction:.2f}", fraction <= 0.5),
        (
            f"frames per second in its fastest form ({fastest['form']}), at least 30",
            f"{fps:.1f}",
            fps >= 30,
        ),
        ("speed-up in that form, at least 1.80x", f"{speed_up:.2f}x", speed_up >= 1.8),
    ):
        print(f"  {text}: {value} ({'met' if met else 'MISSED'})")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    scored = [r for r in rows if r["mIoU"] is not None]
    # A colour per form (its line joins the models), a marker per model (a second legend).
    markers = dict(zip(dict.fromkeys(r["model"] for r in scored), "osD^v<>p*h"))
    for form in dict.fromkeys(r["form"] for r in scored):
        points = [r for r in scored if r["form"] == form]
        (line,) = axes.plot([r["ms_per_frame"] for r in points], [r["mIoU"] for r in points])
        line.set_label(form)
        for r in points:
            axes.plot(r["ms_per_frame"], r["mIoU"], markers[r["model"]], color=line.get_color())
    forms_legend = axes.legend(fontsize=8, loc="lower right", title="form", title_fontsize=8)
    axes.add_artist(forms_legend)
    gmacs = {r["model"]: r["gmacs"] for r in scored}
    handles = [
        axes.plot([], [], marker, color="grey", linestyle="")[0] for marker in markers.values()
    ]
    names = short_names(list(markers))
    labels = [f"{names[model]} ({gmacs[model]:.2f} GMACs)" for model in markers]
    axes.legend(handles, labels, fontsize=7, loc="lower center", title="model", title_fontsize=8)
    axes.set_xlabel("ms per 480x360 frame through ddrnet predict (lower is better)")
    axes.set_ylabel("CamVid val mIoU (%)")
    axes.set_title(describe_cpu()[:80], fontsize=8)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    print(f"picture written to {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_comparison_options(parser, max_isa=True)
    parser.add_argument("--speed-only", nargs="*", default=[])
    parser.add_argument("--images", type=int, default=101)
    parser.add_argument("--plot", type=Path, default=Path(__file__).with_suffix(".png"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    restart_capped(args.max_isa)
    torch.set_num_threads(args.threads)
    rows = measure(args)
    torch.set_num_threads(args.threads)  # the forms set it as they ran
    report(rows)
    report_targets(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    plot(rows, args.plot)


if __name__ == "__main__":
    main()
