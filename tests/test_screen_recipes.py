"""``scripts/screen_recipes.py``'s summary: finished runs are not trained again, and the
intervals of their held-out reports (``ddrnet eval --ci / --compare``) reach the table."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

from helpers import REPO_ROOT


def _script():
    spec = importlib.util.spec_from_file_location(
        "screen_recipes", REPO_ROOT / "scripts" / "screen_recipes.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _finished_run(run: Path, miou: float, report: dict | None) -> None:
    run.mkdir(parents=True)
    record = {"epoch": 2, "epoch_seconds": 30, "val_mIoU": miou, "val_per_class_IoU": {"a": 1.0}}
    (run / "metrics.jsonl").write_text(json.dumps(record) + "\n")
    (run / "last.pt").write_bytes(b"")
    if report is not None:
        (run / "heldout.json").write_text(json.dumps(report))
        os.utime(run / "last.pt", (1, 1))  # the report is newer than the checkpoint


def test_the_summary_gives_intervals_and_paired_differences(tmp_path: Path, capsys) -> None:
    interval = {"low": 37.0, "high": 40.5}
    _finished_run(tmp_path / "base", 38.4, {"interval": interval})
    comparison = {"value": 0.56, "low": 0.1, "high": 1.06}
    _finished_run(tmp_path / "new", 38.95, {"interval": interval, "comparison": comparison})
    argv = [str(tmp_path), "--epochs", "2", "--variant", "base=", "--variant", "new=a.b=1"]
    assert _script().main(argv) == 0
    table = (tmp_path / "summary.md").read_text()
    assert "| 0006R0 | mean last 3 | 95% interval | vs base (95%) |" in table
    assert "| new | 2 | 0.5 | 38.95 | 38.95 | 37.00 to 40.50 | +0.56 (+0.10 to +1.06) |" in table
    assert "| base | 2 | 0.5 | 38.4 | 38.4 | 37.00 to 40.50 |  |" in table
    # A report older than the checkpoint (the run went on) is not shown.
    os.utime(tmp_path / "new" / "last.pt")
    assert _script().fresh_report(tmp_path / "new") is None
