"""AOTInductor packages (``ddrnet export --format aoti``): what the package records, its logits
against PyTorch, batches split at the package's limit, the fixed-size resize, the commands
that run it, and the files and options it refuses.

Compiling takes 30-60 s on 2 cores whatever the image size (Inductor generates and compiles
C++ for the whole graph), so one tiny model is exported once, through the CLI, for every test.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import ddrnet
from ddrnet.data.io import demo_frames
from ddrnet.data.labels import CAMVID
from ddrnet.deploy import aoti
from ddrnet.deploy.aoti import AotiFileError, AotiSegmentationModel, export_aoti, load_aoti_model
from ddrnet.deploy.fixed_size import frames_at
from ddrnet.deploy.onnx_file import ExportError
from ddrnet.deploy.verify import verify_fixed_size
from ddrnet.hardware import runs_inductor_isa

from helpers import (
    check_cli_runs_file,
    exported_through_cli,
    labelled_model,
    one_line_cli_error,
)

TINY_SIZE = (64, 96)


@pytest.fixture(scope="module")
def tiny_model() -> torch.nn.Module:
    """A quarter-width untrained DDRNet-23-slim with CamVid's metadata."""
    return labelled_model(CAMVID, seed=5, width_multiplier=0.25)


@pytest.fixture(scope="module")
def package(tiny_model, tmp_path_factory) -> Path:
    """``ddrnet export --format aoti --size 64x96`` of the tiny model's file."""
    folder = tmp_path_factory.mktemp("aoti")
    return exported_through_cli(tiny_model, folder, "aoti", "tiny.pt2", "64x96")


def _scale(model: torch.nn.Module, frames: list[torch.Tensor]) -> float:
    with torch.no_grad():
        return max(float(model(frame).abs().max()) for frame in frames)


def test_package_describes_itself_and_matches_pytorch(package, tiny_model) -> None:
    values = aoti.read_package_metadata(package)
    assert json.loads(values["ddrnet.export"]) == {
        "argmax": False,
        "upsample_to_input": False,
        "input_size": [64, 96],
        "int8": False,
        "output_size": [8, 12],
    }
    if values["AOTI_MACHINE"] == "x86_64":
        assert values["AOTI_CPU_ISA"] == "AVX2"  # --isa portable, the default
    deployed = load_aoti_model(package)
    assert deployed.input_size == TINY_SIZE and deployed.num_classes == 11
    assert deployed.metadata.class_names == tiny_model.metadata.class_names
    assert deployed.metadata.mean == tiny_model.metadata.mean
    assert deployed.metadata.input_size == [64, 96]
    frames = frames_at(tiny_model, TINY_SIZE)
    check = verify_fixed_size(tiny_model, AotiSegmentationModel(package, resize=False), frames)
    assert check.max_logit_difference < 1e-4 * max(1.0, _scale(tiny_model, frames)), check


def test_batches_larger_than_the_package_takes_are_split(package, monkeypatch) -> None:
    deployed = load_aoti_model(package)
    batch = torch.cat(frames_at(ddrnet.load("camvid_ddrnet23_slim"), TINY_SIZE, count=3))
    whole = deployed(batch)
    monkeypatch.setattr(aoti, "MAX_BATCH", 2)
    split = deployed(batch)
    assert whole.shape == (3, 11, 8, 12)
    single = torch.cat([deployed(image[None]) for image in batch])
    # The same logits up to rounding: convolutions may sum in another order per batch size.
    tolerance = 1e-4 * max(1.0, float(single.abs().max()))
    assert float((split - single).abs().max()) < tolerance
    assert float((whole - single).abs().max()) < tolerance


def test_other_sizes_are_resized_to_the_package_and_back(package, tiny_model) -> None:
    frame = frames_at(tiny_model, (70, 101), count=1)[0]
    with torch.no_grad():
        resized = F.interpolate(frame, TINY_SIZE, mode="bilinear", align_corners=False)
        expected = F.interpolate(tiny_model(resized), (9, 13), mode="bilinear", align_corners=False)
    actual = load_aoti_model(package)(frame)
    assert actual.shape == (1, 11, 9, 13)
    assert float((actual - expected).abs().max()) < 1e-4 * max(1.0, float(expected.abs().max()))
    with pytest.raises(AotiFileError, match=r"exported for 64x96 inputs, got 70x101"):
        AotiSegmentationModel(package, resize=False)(frame)


def test_cli_eval_and_predict_run_the_package(package, camvid_root, tmp_path) -> None:
    check_cli_runs_file(load_aoti_model(package), package, camvid_root, tmp_path / "out")


def _with_metadata(package: Path, target: Path, **changes: str) -> Path:
    """A copy of ``package`` whose AOTInductor metadata has ``changes``."""
    with zipfile.ZipFile(package) as source, zipfile.ZipFile(target, "w") as copy:
        for item in source.infolist():
            data = source.read(item)
            if item.filename.endswith("metadata.json"):
                data = json.dumps({**json.loads(data), **changes}).encode()
            copy.writestr(item, data)
    return target


def test_packages_that_cannot_run_here_are_refused_by_name(package, tmp_path) -> None:
    fake = _with_metadata(package, tmp_path / "fake_isa.pt2", AOTI_CPU_ISA="AVX2 NO_SUCH_ISA")
    with pytest.raises(AotiFileError, match=r"fake_isa.pt2: compiled for .* NO_SUCH_ISA"):
        AotiSegmentationModel(fake)
    arm = _with_metadata(package, tmp_path / "arm.pt2", AOTI_MACHINE="riscv64")
    with pytest.raises(AotiFileError, match=r"arm.pt2: compiled for riscv64 CPUs"):
        AotiSegmentationModel(arm)
    gpu = _with_metadata(package, tmp_path / "gpu.pt2", AOTI_DEVICE_KEY="cuda")
    with pytest.raises(AotiFileError, match=r"gpu.pt2: compiled for cuda"):
        AotiSegmentationModel(gpu)
    (tmp_path / "text.pt2").write_text("not a package")
    with pytest.raises(AotiFileError, match=r"text.pt2: not an AOTInductor package"):
        AotiSegmentationModel(tmp_path / "text.pt2")
    with zipfile.ZipFile(tmp_path / "empty.pt2", "w") as archive:
        archive.writestr("m/archive_format", "pt2")
    with pytest.raises(AotiFileError, match=r"empty.pt2: a .pt2 archive without a compiled"):
        AotiSegmentationModel(tmp_path / "empty.pt2")
    with pytest.raises(AotiFileError, match=r"missing.pt2: no such AOTInductor package"):
        AotiSegmentationModel(tmp_path / "missing.pt2")
    # A damaged copy: 64 bytes flipped in the middle (the compiled code or the weights).
    data = bytearray(package.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(255 - byte for byte in data[middle : middle + 64])
    (tmp_path / "flipped.pt2").write_bytes(bytes(data))
    with pytest.raises(AotiFileError, match=r"flipped.pt2: damaged \(its .+ fails the archive"):
        AotiSegmentationModel(tmp_path / "flipped.pt2")


def test_vector_instruction_sets_are_checked_against_this_cpu() -> None:
    import platform

    machine = platform.machine()
    assert runs_inductor_isa("", machine)
    assert not runs_inductor_isa("", "not-this-machine")
    if machine == "x86_64":
        flags = Path("/proc/cpuinfo").read_text()
        assert runs_inductor_isa("AVX2", machine) == (" avx2 " in flags.replace("\n", " "))
        assert runs_inductor_isa("AVX512", machine) == (" avx512f " in flags.replace("\n", " "))
        assert not runs_inductor_isa("AVX2 NO_SUCH_ISA", machine)


def test_cli_refusals_name_the_argument(package, camvid_model_file, tmp_path, capsys) -> None:
    error = one_line_cli_error(capsys, ["eval", str(package), "--runtime", "ncnn"])
    assert "--runtime aoti" in error
    error = one_line_cli_error(capsys, ["eval", str(camvid_model_file), "--runtime", "aoti"])
    assert "not an AOTInductor .pt2 package" in error
    error = one_line_cli_error(capsys, ["export", "--format", "aoti", "-o", str(tmp_path / "m.pt")])
    assert ".pt2" in error
    argv = ["export", "--format", "aoti", "--argmax", "-o", str(tmp_path / "m.pt2")]
    assert "drop --argmax" in one_line_cli_error(capsys, argv)
    argv = ["export", "--isa", "native", "-o", str(tmp_path / "m.onnx")]
    assert "--isa applies to --format aoti" in one_line_cli_error(capsys, argv)
    argv = ["prune", str(package), "--macs", "0.5", "-o", str(tmp_path / "p.safetensors")]
    error = one_line_cli_error(capsys, argv)
    assert "AOTInductor" in error and str(package) in error
    argv = ["predict", "--checkpoint", str(package), "--amp", "bf16"]
    assert "run in the precision they were exported in" in one_line_cli_error(capsys, argv)


def test_a_failed_compile_is_one_error_and_keeps_the_old_file(tiny_model, tmp_path) -> None:
    from torch._inductor import config

    target = tmp_path / "kept.pt2"
    shutil.copy(demo_frames()[0], target)
    before = target.read_bytes()
    (tmp_path / ".kept.pt2.k1ll3d.tmp.pt2").write_bytes(b"")  # what a killed export left
    with config.patch({"cpp.cxx": ("no-such-compiler-ddrnet",)}):
        with pytest.raises(ExportError, match="could not compile the model: .*No working C"):
            export_aoti(tiny_model, target, TINY_SIZE)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.pt2"]  # no temporary left
