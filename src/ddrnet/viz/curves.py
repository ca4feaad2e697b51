"""Training curves: loss, validation mIoU, learning rate and throughput from a run's
``metrics.jsonl`` (``ddrnet viz curves``)."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ddrnet.config import read_text
from ddrnet.engine.run_folder import METRICS
from ddrnet.errors import MissingFileError, UsageError
from ddrnet.viz.figure import new_figure, prepare_output, save_figure

logger = logging.getLogger(__name__)

CURVES_SIZE = (1200, 800)  # pixels


def read_metrics_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Epoch records of a run's ``metrics.jsonl``, sorted by epoch.

    When a run was resumed an epoch can appear twice; the later line wins. A half-written
    last line (training still running) is skipped; any other bad line is an error.
    """
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"{path}: no such file (is this a training run folder?)")
    lines = read_text(path, "metrics file", UsageError).splitlines()
    by_epoch: dict[int, dict[str, Any]] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            if number == len(lines):
                logger.warning("%s: skipping the unfinished last line %d", path, number)
                continue
            raise UsageError(f"{path}:{number}: not a JSON line ({error})") from None
        epoch = record.get("epoch") if isinstance(record, dict) else None
        if isinstance(epoch, bool) or not isinstance(epoch, int):
            raise UsageError(f"{path}:{number}: expected an object with a whole-number 'epoch'")
        by_epoch[int(record["epoch"])] = record
    if not by_epoch:
        raise UsageError(f"{path}: no epoch records yet")
    return [by_epoch[epoch] for epoch in sorted(by_epoch)]


def _series(records: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """Epochs and values of ``key`` where the record has a finite number for it."""
    epochs, values = [], []
    for record in records:
        value = record.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            epochs.append(int(record["epoch"]))
            values.append(float(value))
    return epochs, values


def plot_curves(run_dir: str | Path, output: str | Path) -> Path:
    """Four panels from ``run_dir/metrics.jsonl``: train loss, val mIoU (epochs where it was
    measured), learning rate and images per second. The PNG is ``1200 x 800`` pixels."""
    output = prepare_output(output)
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MissingFileError(f"{run_dir}: no such run folder")
    records = read_metrics_jsonl(run_dir / METRICS)
    from matplotlib.ticker import MaxNLocator

    figure, axes = new_figure(CURVES_SIZE, 2, 2)
    first, last_epoch = int(records[0]["epoch"]), int(records[-1]["epoch"])
    panels = (
        ("train_loss", "training loss", "loss", "tab:blue"),
        ("val_mIoU", "validation mIoU", "mIoU (%)", "tab:green"),
        ("lr", "learning rate", "learning rate", "tab:orange"),
        ("images_per_second", "training throughput", "images / s", "tab:purple"),
    )
    for axis, (key, title, ylabel, colour) in zip(axes.ravel(), panels):
        epochs, values = _series(records, key)
        axis.set_title(title)
        axis.set_xlabel("epoch")
        axis.set_ylabel(ylabel)
        axis.grid(alpha=0.3)
        # The same epoch axis everywhere, so that sparse val_mIoU points line up with the rest.
        axis.set_xlim(first - 0.5, last_epoch + 0.5)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        if not values:
            message = f"no '{key}' in metrics.jsonl"
            axis.text(0.5, 0.5, message, ha="center", va="center", transform=axis.transAxes)
            continue
        axis.plot(epochs, values, marker="o" if len(values) < 40 else None, color=colour)
        if key == "val_mIoU":
            best = int(np.argmax(values))
            axis.annotate(
                f"best {values[best]:.2f} (epoch {epochs[best]})",
                (epochs[best], values[best]),
                textcoords="offset points",
                xytext=(0, -15),
                ha="center",
                fontsize=9,
            )
        if key == "lr":
            axis.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    last = records[-1]
    figure.suptitle(f"{run_dir.name}: {len(records)} epochs recorded, last epoch {last['epoch']}")
    figure.tight_layout()
    return save_figure(figure, output)
