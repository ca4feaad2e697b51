"""`ddrnet export` and `ddrnet bench` end to end on a saved CamVid-style model."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from ddrnet.data.io import demo_frames
from ddrnet.deploy import onnx_session
from ddrnet.models import count_macs

from helpers import camvid_model, one_line_cli_error, run_ddrnet


@pytest.mark.slow
def test_export_onnx_with_argmax_runs_at_another_size(camvid_model_file, tmp_path) -> None:
    result = run_ddrnet(
        "export", "--checkpoint", str(camvid_model_file), "-o", str(tmp_path / "m.onnx"),
        "--size", "64x96", "--argmax", "--upsample",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    agreement = float(result.stdout.split("labels agree on ")[1].split("%")[0])
    assert agreement > 99.9  # the argmax graph is checked too
    session = onnx_session(tmp_path / "m.onnx", threads=1)
    name = session.get_inputs()[0].name
    labels = session.run(None, {name: np.zeros((1, 3, 73, 91), np.float32)})[0]
    assert labels.shape[-2:] == (73, 91) and labels.max() < 11


def test_an_int8_export_stopped_midway_leaves_the_earlier_pair(
    camvid_model_file, tmp_path, monkeypatch
) -> None:
    """The float32 file beside an INT8 file takes its name after the INT8 file is written:
    a run stopped while quantising leaves an earlier pair as it was."""
    import ddrnet.deploy.onnx_checked
    from ddrnet.cli import main
    from ddrnet.data.io import demo_frames
    from ddrnet.deploy import export_onnx

    int8, fp32 = tmp_path / "m.onnx", tmp_path / "m_fp32.onnx"
    int8.write_bytes(b"earlier int8")
    export_onnx(camvid_model(), fp32, (64, 64))  # an earlier export's (another file is refused)
    earlier = fp32.read_bytes()

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ddrnet.deploy.onnx_checked, "quantize_onnx_int8", stopped)
    command = ["export", "--checkpoint", str(camvid_model_file), "--format", "onnx-int8"]
    command += ["-o", str(int8), "--calibration", str(demo_frames()[0].parent)]
    assert main([*command, "--calibration-count", "1", "--size", "64x64"]) == 130
    assert (int8.read_bytes(), fp32.read_bytes()) == (b"earlier int8", earlier)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m_fp32.onnx"]


def test_export_reports_parity(camvid_model_file, tmp_path) -> None:
    result = run_ddrnet(
        "export",
        "--checkpoint",
        str(camvid_model_file),
        "-o",
        str(tmp_path / "m.onnx"),
        "--size",
        "64x96",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    difference = float(result.stdout.split("max abs logit difference ")[1].split()[0])
    assert difference < 1e-2


@pytest.mark.slow
def test_bench_prints_and_writes_rows(camvid_model_file, tmp_path) -> None:
    result = run_ddrnet(
        "bench", "--checkpoint", str(camvid_model_file), "--size", "64x96", "--seconds", "0.3",
        "--warmup", "0.1", "--threads", "1", "--backends", "eager", "bn_folded", "ort",
        "cuda_fp16", "tensorrt_fp16", "--json", str(tmp_path / "bench.json"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "bench.json").read_text())
    rows = {row["backend"]: row for row in report["rows"]}
    assert set(rows) == {"eager", "bn_folded", "ort", "cuda_fp16", "tensorrt_fp16"}
    gpu_rows = [rows.pop("cuda_fp16"), rows.pop("tensorrt_fp16")]
    if not torch.cuda.is_available():  # a GPU backend here is a row with a reason, not a crash
        assert all("needs an NVIDIA GPU" in row["error"] for row in gpu_rows)
        assert "cuda_fp16" in result.stdout and "failed: RuntimeError" in result.stdout
    assert rows["eager"]["speedup"] == pytest.approx(1.0)
    assert all(r["fps"] > 0 and r["latency_ms_p50"] <= r["latency_ms_p99"] for r in rows.values())
    assert report["gmacs"] == pytest.approx(count_macs(camvid_model(), (64, 96)) / 1e9)
    assert report["batch_size"] == 1 and "bn_folded" in result.stdout


def test_bench_without_bundled_model_or_checkpoint_is_a_clear_error(tmp_path) -> None:
    result = run_ddrnet("bench", "--checkpoint", str(tmp_path / "missing.safetensors"))
    assert result.returncode == 2 and "missing.safetensors" in result.stderr
    assert "Traceback" not in result.stderr
    result = run_ddrnet("export", "--checkpoint", str(tmp_path / "model.onnx"), "-o", "x.onnx")
    assert result.returncode == 2 and "works on the PyTorch model" in result.stderr
    # a calibration folder no backend would read: refused before the model loads
    result = run_ddrnet("bench", "--backends", "eager", "--calibration", str(tmp_path))
    assert result.returncode == 2 and result.stderr.strip().endswith(
        "--calibration applies to the INT8 backends, and none is asked for"
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on machines without GPU")
def test_tensorrt_export_without_gpu_is_a_clear_error(camvid_model_file, tmp_path) -> None:
    result = run_ddrnet(
        "export", "--checkpoint", str(camvid_model_file), "--format", "tensorrt",
        "-o", str(tmp_path / "m.engine"),
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--format tensorrt" in result.stderr and "needs an NVIDIA GPU" in result.stderr
    assert not list(tmp_path.iterdir())  # nothing half-written


@pytest.mark.slow
def test_export_evaluates_every_deployed_form_on_camvid_val(camvid_root, tmp_path) -> None:
    """fp32 ONNX scores what PyTorch scores on the same frames; the INT8 and bf16 forms are
    reported against it and stay within 3 mIoU points (bundled model, 3 val frames)."""
    from ddrnet.data.io import demo_frames
    from ddrnet.models.weights import bundled_model_path

    images = 3
    evaluated = run_ddrnet(
        "eval", str(bundled_model_path()), "--root", str(camvid_root), "--max-images",
        str(images), "--json", str(tmp_path / "torch.json"),
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    torch_miou = json.loads((tmp_path / "torch.json").read_text())["mIoU"]
    result = run_ddrnet(
        "export", "--format", "onnx-int8", "-o", str(tmp_path / "m_int8.onnx"),
        "--calibration", str(demo_frames()[0].parent), "--calibration-count", "2",
        "--evaluate-root", str(camvid_root), "--evaluate-images", str(images),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    fp32_file = tmp_path / "m_int8_fp32.onnx"
    assert f"ONNX written to {fp32_file} (the float32 model, kept beside the INT8" in result.stdout
    assert "scoring on 3 of the 101 CamVid val images" in result.stdout
    # The default (bundled) model saw CamVid val in training, and the output says so.
    assert "this model was trained on CamVid val" in result.stderr
    lines = result.stdout.splitlines()
    reference = next(line for line in lines if line.startswith("fp32 ONNX with onnxruntime"))
    assert float(reference.split("mIoU ")[1]) == pytest.approx(torch_miou, abs=0.01)
    deployed = [line for line in lines if "on CamVid val: mIoU" in line and line != reference]
    names = [line.split(" on CamVid val")[0] for line in deployed]
    assert "INT8 ONNX with onnxruntime" in names
    for line in deployed:
        miou, difference = line.split("mIoU ")[1].split()
        assert float(difference.strip("()")) == pytest.approx(
            float(miou) - float(reference.split("mIoU ")[1]), abs=0.011
        )
        assert abs(float(difference.strip("()"))) < 3.0, line

    # `ddrnet eval` runs the deployed files themselves and agrees with the export's report.
    scored = {}
    for name, path, options in (
        ("fp32 ONNX with onnxruntime", "m_int8_fp32.onnx", []),
        ("INT8 ONNX with openvino", "m_int8.onnx", ["--runtime", "openvino", "--amp", "auto"]),
    ):  # fmt: skip
        result = run_ddrnet(
            "eval", str(tmp_path / path), "--root", str(camvid_root), "--max-images",
            str(images), "--json", str(tmp_path / "deployed.json"), *options,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-2000:]
        scored[name] = json.loads((tmp_path / "deployed.json").read_text())["mIoU"]
    assert scored["fp32 ONNX with onnxruntime"] == pytest.approx(torch_miou, abs=0.01)
    if any(line.startswith("INT8 ONNX with openvino") for line in deployed):
        reported = next(line for line in deployed if line.startswith("INT8 ONNX with openvino"))
        assert scored["INT8 ONNX with openvino"] == pytest.approx(
            float(reported.split("mIoU ")[1].split()[0]), abs=0.01
        )


def test_bench_checks_its_backends_before_measuring_and_fails_when_all_did(
    camvid_model_file,
) -> None:
    result = run_ddrnet(
        "bench", "--checkpoint", str(camvid_model_file), "--backends", "eager", "ort8"
    )
    assert result.returncode == 2 and "unknown backends ['ort8']; valid: eager" in result.stderr
    assert "convolution peak" not in result.stdout  # refused before ~30 s of measuring
    if not torch.cuda.is_available():
        result = run_ddrnet(
            "bench", "--checkpoint", str(camvid_model_file), "--size", "64x96", "--seconds", "0.2",
            "--warmup", "0", "--rounds", "1", "--threads", "1", "--backends", "cuda_fp16",
        )  # fmt: skip
        assert result.returncode == 1, result.stderr[-2000:]
        assert "every backend asked for failed" in result.stderr
        assert "Traceback" not in result.stderr


def test_bench_help_shows_defaults_and_which_backends_run_by_default() -> None:
    from ddrnet.deploy import default_backends
    from ddrnet.hardware import cpu_has_native_bf16

    text = " ".join(run_ddrnet("bench", "--help").stdout.split())
    for option, default in (("seconds", "6.0"), ("rounds", "3"), ("warmup", "2.0")):
        assert re.search(rf"--{option} \w+ .*?\(default {re.escape(default)}\)", text), option
    assert "default: those that run well on this machine (bf16 where the CPU computes" in text
    assert ("eager_bf16_channels_last" in default_backends()) == cpu_has_native_bf16()


def test_export_refuses_a_huge_size_and_a_folder_it_cannot_write(
    camvid_model_file, tmp_path
) -> None:
    from ddrnet.deploy import export_onnx, export_torchscript

    result = run_ddrnet(
        "export", "--checkpoint", str(camvid_model_file), "-o", str(tmp_path / "m.onnx"),
        "--size", "100000x100000",
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert (
        "argument --size: 100000x100000 is 10000.0 megapixels, over the limit of 50.0 megapixels"
        in result.stderr
    )
    with pytest.raises(ValueError, match="over the limit of 50.0 megapixels"):
        export_onnx(camvid_model(), tmp_path / "m.onnx", (100000, 100000))
    # sysfs takes no new files, whoever we are (chmod does not stop root)
    result = run_ddrnet(
        "export",
        "--checkpoint",
        str(camvid_model_file),
        "--format",
        "torchscript",
        "-o",
        "/sys/m.pt",
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "-o /sys/m.pt: cannot write in its folder" in result.stderr
    with pytest.raises(OSError) as error:
        export_torchscript(camvid_model(), "/sys/m.pt", (64, 96))
    assert error.value.filename == "/sys/m.pt"
    assert not list(tmp_path.iterdir())


def test_int8_export_checks_its_calibration_folder_before_exporting(
    camvid_model_file, tmp_path
) -> None:
    """A calibration folder that cannot work is refused in one line before the fp32 export
    runs, and no model file is written."""
    (tmp_path / "video.mp4").write_bytes(b"not a folder")
    (tmp_path / "empty").mkdir()
    expected = {
        "video.mp4": "is a file; give a folder of images",
        "empty": "has no .png/.jpg/.jpeg/.bmp/.tif/.tiff/.webp/.ppm files",
        "missing": "does not exist",
    }
    output = tmp_path / "out" / "m.onnx"
    for name, reason in expected.items():
        result = run_ddrnet(
            "export", "--checkpoint", str(camvid_model_file), "--format", "onnx-int8",
            "--calibration", str(tmp_path / name), "-o", str(output),
        )  # fmt: skip
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert f"calibration folder {tmp_path / name} {reason}" in result.stderr
        assert "ONNX Runtime vs PyTorch" not in result.stdout  # no export was run first
    assert not output.exists()


def test_export_refuses_before_any_work_what_would_write_a_wrong_or_a_users_file(
    camvid_root, tmp_path, capsys
) -> None:
    """What the export audit found: a user's NAME_fp32.onnx replaced by an INT8 export's
    float32 model; a 19-class model scored on CamVid's 11; INT8 calibrated on 1-pixel
    images; label exports that cannot be scored or quantised, found after the work."""
    from ddrnet.cli import main

    fast = ["export", "--checkpoint", "camvid_ddrnet23_slim_fast_train"]
    demo = ["--calibration", str(demo_frames()[0].parent)]
    mine = tmp_path / "notes_fp32.onnx"
    mine.write_text("my notes")
    error = one_line_cli_error(
        capsys, [*fast, "--format", "onnx-int8", *demo, "-o", str(tmp_path / "notes.onnx")]
    )
    assert error.endswith(f"{mine} is no ddrnet export, and this export writes its float32 "
                          "model there: move it, or export under another name")  # fmt: skip
    assert mine.read_text() == "my notes"
    root = ["--evaluate-root", str(camvid_root)]
    for argv, message in (
        ([*fast, "--format", "onnx-int8", *demo, "--size", "8x8"],
         "--size 8x8: under 64 pixels a side, too small for INT8 calibration at the deployment "
         "size (the network's coarsest branch is 1/64 of its input)"),
        ([*fast, "--argmax", *root],
         "--evaluate-root scores labels at each frame's size: with --argmax add --upsample"),
        ([*fast, "--format", "onnx-int8", *demo, "--argmax"],
         "--format onnx-int8 quantises a logits model: drop --argmax"),
    ):  # fmt: skip
        error = one_line_cli_error(capsys, [*argv, "-o", str(tmp_path / "m.onnx")])
        assert error.endswith(message), error
    # (a model of random weights is named in a warning first)
    assert main(["export", "--model", "ddrnet_23_slim", *root, "-o", str(tmp_path / "m.onnx")]) == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .splitlines()[-1]
        .endswith("--evaluate-root scores CamVid's 11 classes; the model predicts 19")
    )
    error = one_line_cli_error(
        capsys, ["bench", "--size", "32x48", "--backends", "eager", "executorch", "aoti"]
    )
    assert error.endswith("--size 32x48: under 64 pixels a side, too small for executorch, aoti, "
                          "which compile one input size (the network's coarsest branch is 1/64 "
                          "of its input)")  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes_fp32.onnx"]
