"""scripts/gpu_check.py on a machine without a GPU: it must skip the GPU steps with the
reason, and (``--cpu-smoke``) the commands it builds must run, so that it still works the
day a GPU is lent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "gpu_check.py"


def run_check(out: Path, *arguments: str) -> tuple[subprocess.CompletedProcess, dict]:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(out), *arguments],
        capture_output=True,
        text=True,
        timeout=900,
    )
    return done, json.loads((out / "gpu_check.json").read_text())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU path")
def test_without_a_gpu_every_gpu_step_is_skipped_with_the_reason(tmp_path: Path) -> None:
    done, result = run_check(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    steps = {record["step"]: record for record in result["steps"]}
    assert list(steps) == [
        "environment", "install", "tests", "train_fp16", "train_bf16", "eval", "bench",
        "predict", "serve", "export",
    ]  # fmt: skip
    assert steps["environment"]["status"] == "passed"
    assert steps["environment"]["torch"] == torch.__version__
    for name in list(steps)[2:]:
        assert steps[name]["status"] == "skipped"
        assert steps[name]["reason"].startswith("no CUDA GPU here")
    assert result["failed"] == []
    assert (tmp_path / "gpu_check.log").is_file()


@pytest.mark.slow
def test_cpu_smoke_runs_every_command_the_script_builds(tmp_path: Path, camvid_root) -> None:
    """Training (with a stop and --resume that must reproduce the uninterrupted losses),
    eval, bench, predict, serve and export, each on the CPU at toy sizes."""
    done, result = run_check(tmp_path, "--cpu-smoke", "--data", str(camvid_root))
    steps = {record["step"]: record for record in result["steps"]}
    failed = {
        name: record["reason"] for name, record in steps.items() if record["status"] == "failed"
    }
    assert done.returncode == 0 and not failed, failed
    assert all(record["status"] == "passed" for record in steps.values())
    assert steps["train_bf16"]["train_loss_by_epoch"] == steps["train_fp16"]["train_loss_by_epoch"]
    assert steps["predict"]["min_label_agreement_with_cpu"] == 1.0
    assert steps["serve"]["health"]["status"] == "ok"
    # The bundled train-only model on 2 real val frames: a trained model, not chance.
    assert steps["eval"]["bundled_train_only_mIoU"] > 50
    assert "max abs logit difference" in steps["export"]["onnx"]
