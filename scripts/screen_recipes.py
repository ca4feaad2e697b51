#!/usr/bin/env python3
"""Screen CamVid recipe options on the held-out-sequence protocol, several runs at a time.

    python scripts/screen_recipes.py OUT --variant baseline= \\
        --variant cat075="data.cat_max_ratio=0.75" \\
        --variant rotate="data.rotate_degrees=10 data.aspect_range=[0.8,1.25]" \\
        --epochs 100 --parallel 2 --threads 1

Every variant is ``ddrnet train camvid_ddrnet23_slim`` trained on sequences 0001TP + 0016E5
and scored on 0006R0 (frames it never saw; see scripts/camvid_experiments.md), plus the
variant's own overrides, in ``OUT/NAME``. A variant whose folder already holds ``last.pt``
is resumed (``--resume``), so a screen stopped by ``--max-minutes`` or a kill goes on where
it stopped when the same command is given again; a finished one is only summarised.

``OUT/summary.md`` and ``OUT/summary.json`` (written after every run ends) hold, per
variant: the epochs done, the 0006R0 mIoU of the last evaluation, the mean of the last three
evaluations (the run-to-run spread of one evaluation is a point or more: compare means, and
two seeds of the baseline), the training minutes and the per-class IoU of the last
evaluation. When every run has finished, each ``last.pt`` is scored on 0006R0 once more
with ``ddrnet eval --ci`` (``OUT/NAME/heldout.json``), the others ``--compare``-d with the first
variant: the summary then gives each mIoU's 95% bootstrap interval over the 101 frames and
each difference to the first variant with its paired interval (``--no-intervals``: not). Two CPU runs side by side at one thread each use two cores best; on a GPU, give
``--device cuda`` and loader ``--workers``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SUMMARY_LOCK = threading.Lock()
HELD_OUT = [
    "data.train_split=train",
    "data.val_split=train",
    "data.train_sequences=[0001TP,0016E5]",
    "data.val_sequences=[0006R0]",
]


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``NAME=OVERRIDES`` -> ``(NAME, [override, ...])``; the overrides are shell words."""
    name, _, overrides = text.partition("=")
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise argparse.ArgumentTypeError(f"--variant {text!r}: expected NAME=OVERRIDES")
    return name, shlex.split(overrides)


def train_command(args: argparse.Namespace, name: str, overrides: list[str]) -> list[str]:
    """The ``ddrnet train`` command line of one variant (with ``--resume`` when its folder
    already holds a checkpoint)."""
    run = args.out / name
    command = [
        sys.executable, "-m", "ddrnet.cli", "train", args.recipe, f"data.root={args.data}",
        *HELD_OUT, f"train.epochs={args.epochs}", f"eval.every_epochs={args.eval_every}",
        f"train.device={args.device}", f"data.num_workers={args.workers}",
        f"train.output_dir={run}", *args.common, *overrides,
    ]  # fmt: skip
    if args.threads:
        command.append(f"train.threads={args.threads}")
    if args.max_minutes is not None:
        command.append(f"train.max_minutes={args.max_minutes}")
    if (run / "last.pt").is_file():
        command.append("--resume")
    return command


def run_variant(args: argparse.Namespace, name: str, overrides: list[str]) -> int:
    """Train one variant unless it is finished; its output goes to ``OUT/NAME/screen.log``."""
    run = args.out / name
    records = read_metrics(run)
    if records and records[-1]["epoch"] >= args.epochs:
        return 0
    run.mkdir(parents=True, exist_ok=True)
    command = train_command(args, name, overrides)
    with (run / "screen.log").open("a") as log:
        log.write(f"\n$ {shlex.join(command)}\n")
        log.flush()
        start = time.perf_counter()
        code = subprocess.call(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        log.write(f"[exit {code} after {(time.perf_counter() - start) / 60:.1f} min]\n")
    print(f"{name}: exit {code}", flush=True)
    with SUMMARY_LOCK:  # the table so far, readable while the other runs go on
        write_summary(
            args.out,
            [summarise(args.out / n, o, read_metrics(args.out / n)) for n, o in args.variant],
        )
    return code


def read_metrics(run: Path) -> list[dict[str, Any]]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def summarise(run: Path, overrides: list[str], records: list[dict[str, Any]]) -> dict[str, Any]:
    """One variant's figures from its metrics.jsonl (``val_*`` keys are 0006R0 here) and,
    once written, its heldout.json (``interval_reports``)."""
    name = run.name
    evaluated = [r for r in records if "val_mIoU" in r]
    summary: dict[str, Any] = {
        "variant": name,
        "overrides": overrides,
        "epochs": records[-1]["epoch"] if records else 0,
        "minutes": round(sum(r.get("epoch_seconds", 0) for r in records) / 60, 1),
    }
    report = fresh_report(run)
    if report is not None:  # interval_reports' figures
        scores = json.loads(report.read_text())
        low_high = scores.get("interval", {})
        summary["interval"] = [low_high.get("low"), low_high.get("high")]
        if "comparison" in scores:
            difference = scores["comparison"]
            summary["difference"] = [difference[k] for k in ("value", "low", "high")]
    if evaluated:
        last3 = [r["val_mIoU"] for r in evaluated[-3:]]
        summary.update(
            heldout_mIoU=evaluated[-1]["val_mIoU"],
            heldout_mIoU_mean_last3=round(sum(last3) / len(last3), 2),
            curve={r["epoch"]: r["val_mIoU"] for r in evaluated},
            per_class=evaluated[-1]["val_per_class_IoU"],
        )
    return summary


def write_summary(out: Path, summaries: list[dict[str, Any]]) -> None:
    (out / "summary.json").write_text(json.dumps(summaries, indent=2))
    classes = next((list(s["per_class"]) for s in summaries if "per_class" in s), [])
    first = summaries[0]["variant"] if summaries else ""
    header = ["variant", "epochs", "min", "0006R0", "mean last 3", "95% interval"]
    header += [f"vs {first} (95%)", *classes]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for s in summaries:
        per_class = [f"{s['per_class'][c]:.1f}" for c in classes] if "per_class" in s else []
        cells = [s["variant"], str(s["epochs"]), str(s["minutes"])]
        cells += [str(s.get("heldout_mIoU", "")), str(s.get("heldout_mIoU_mean_last3", ""))]
        low, high = s.get("interval", [None, None])
        cells.append(f"{low:.2f} to {high:.2f}" if low is not None else "")
        value, low, high = s.get("difference", [None, None, None])
        cells.append(f"{value:+.2f} ({low:+.2f} to {high:+.2f})" if value is not None else "")
        lines.append("| " + " | ".join(cells + per_class) + " |")
    overrides = [
        f"- {s['variant']}: `{shlex.join(s['overrides']) or '(the recipe)'}`" for s in summaries
    ]
    text = "\n".join(
        ["# Held-out screen (train 0001TP + 0016E5, score 0006R0)", "", *lines, "", *overrides]
    )
    (out / "summary.md").write_text(text + "\n")


def fresh_report(run: Path) -> Path | None:
    """``run/heldout.json`` if it was written after the run's last checkpoint, else None
    (a run resumed for more epochs needs scoring again)."""
    report, checkpoint = run / "heldout.json", run / "last.pt"
    if not report.is_file() or not checkpoint.is_file():
        return None
    return report if report.stat().st_mtime >= checkpoint.stat().st_mtime else None


def interval_reports(args: argparse.Namespace, names: list[str]) -> None:
    """Score each finished variant's last.pt on 0006R0 with ``ddrnet eval --ci`` into
    ``OUT/NAME/heldout.json``, the variants after the first ``--compare``-d with it (the same
    frames, paired draws); a report already there is kept."""
    reference = args.out / names[0] / "heldout.json"
    for name in names:
        run = args.out / name
        records = read_metrics(run)
        done = records and records[-1]["epoch"] >= args.epochs and (run / "last.pt").is_file()
        if not done or fresh_report(run) is not None:
            continue
        command = [
            sys.executable, "-m", "ddrnet.cli", "eval", str(run / "last.pt"), "--root",
            str(args.data), "--split", "train", "--sequences", "0006R0", "--ci",
            "--device", args.device, "--json", str(run / "heldout.json"),
        ]  # fmt: skip
        if name != names[0] and reference.is_file():
            command += ["--compare", str(reference)]
        with (run / "screen.log").open("a") as log:
            log.write(f"\n$ {shlex.join(command)}\n")
            log.flush()
            subprocess.call(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="one folder per variant, and the summary")
    parser.add_argument("--variant", type=parse_variant, action="append", required=True,
                        metavar="NAME=OVERRIDES", help="e.g. cat=\"data.cat_max_ratio=0.75\"")  # fmt: skip
    parser.add_argument("--recipe", default="camvid_ddrnet23_slim")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "camvid")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--parallel", type=int, default=2, help="runs at a time")
    parser.add_argument("--threads", type=int, help="torch CPU threads per run (CPU: 1)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=0, help="loader workers per run")
    parser.add_argument("--max-minutes", type=float, help="each run stops (resumable) after this")
    parser.add_argument("--common", nargs="*", default=[], help="overrides for every variant")
    parser.add_argument("--no-intervals", action="store_true",
                        help="skip the bootstrap intervals of the finished runs")  # fmt: skip
    args = parser.parse_args(argv)
    names = [name for name, _ in args.variant]
    if len(set(names)) != len(names):
        parser.error(f"--variant names must differ: {names}")
    args.out.mkdir(parents=True, exist_ok=True)
    args.data = args.data.resolve()
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        codes = list(pool.map(lambda v: run_variant(args, *v), args.variant))
    if not args.no_intervals:
        interval_reports(args, names)
    write_summary(
        args.out, [summarise(args.out / n, o, read_metrics(args.out / n)) for n, o in args.variant]
    )
    print((args.out / "summary.md").read_text())
    return 1 if any(codes) else 0


if __name__ == "__main__":
    sys.exit(main())
