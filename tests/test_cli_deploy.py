"""`ddrnet export` and `ddrnet bench` end to end on a saved CamVid-style model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ddrnet.deploy import onnx_session
from ddrnet.models import count_macs, save_model

from camvid_models import camvid_model
from cli_runner import run_ddrnet


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    model = camvid_model()
    return save_model(model, tmp_path_factory.mktemp("m") / "camvid.safetensors", model.metadata)


def test_export_onnx_with_argmax_runs_at_another_size(model_file, tmp_path) -> None:
    result = run_ddrnet(
        "export", "--checkpoint", str(model_file), "-o", str(tmp_path / "m.onnx"),
        "--size", "64x96", "--argmax", "--upsample",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    session = onnx_session(tmp_path / "m.onnx", threads=1)
    name = session.get_inputs()[0].name
    labels = session.run(None, {name: np.zeros((1, 3, 73, 91), np.float32)})[0]
    assert labels.shape[-2:] == (73, 91) and labels.max() < 11


def test_export_reports_parity(model_file, tmp_path) -> None:
    result = run_ddrnet(
        "export", "--checkpoint", str(model_file), "-o", str(tmp_path / "m.onnx"), "--size", "64x96"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    difference = float(result.stdout.split("max abs logit difference ")[1].split()[0])
    assert difference < 1e-2


def test_bench_prints_and_writes_rows(model_file, tmp_path) -> None:
    result = run_ddrnet(
        "bench", "--checkpoint", str(model_file), "--size", "64x96", "--seconds", "0.3",
        "--warmup", "0.1", "--threads", "1", "--backends", "eager", "bn_folded", "ort",
        "--json", str(tmp_path / "bench.json"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "bench.json").read_text())
    rows = {row["backend"]: row for row in report["rows"]}
    assert set(rows) == {"eager", "bn_folded", "ort"}
    assert rows["eager"]["speedup"] == pytest.approx(1.0)
    assert all(r["fps"] > 0 and r["latency_ms_p50"] <= r["latency_ms_p99"] for r in rows.values())
    assert report["gmacs"] == pytest.approx(count_macs(camvid_model(), (64, 96)) / 1e9)
    assert "bn_folded" in result.stdout


def test_bench_without_bundled_model_or_checkpoint_is_a_clear_error(tmp_path) -> None:
    result = run_ddrnet("bench", "--checkpoint", str(tmp_path / "missing.safetensors"))
    assert result.returncode == 2 and "missing.safetensors" in result.stderr
    assert "Traceback" not in result.stderr
