"""ncnn: export through pnnx, logits against PyTorch on real CamVid frames, ``ddrnet eval`` and
``ddrnet predict`` on the exported file, and the bad-input messages (issue 23).

One export (about 10-25 s: pnnx loads libtorch) serves the whole module. Skips where pnnx or
ncnn is not installed (``pip install 'ddrnet[edge]'``); the dev extra, and so CI, has both.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("ncnn", reason="ncnn is not installed (pip install 'ddrnet[edge]')")
pytest.importorskip("pnnx", reason="pnnx is not installed (pip install 'ddrnet[edge]')")

import ddrnet
from ddrnet.data.camvid import camvid
from ddrnet.data.io import demo_frames
from ddrnet.deploy.ncnn_export import export_ncnn, frozen_interps
from ddrnet.deploy.ncnn_runtime import (
    NcnnFileError,
    NcnnFiles,
    NcnnSegmentationModel,
    load_ncnn_model,
)
from ddrnet.deploy.verify import verify_ncnn
from ddrnet.engine.evaluate import evaluate
from ddrnet.engine.inference import normalize
from ddrnet.engine.predictor import Predictor

from helpers import camvid_model, one_line_cli_error, run_ddrnet
from official_reference import randomize_batchnorm


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return camvid_model()


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory) -> Path:
    """The test model as ``model.ncnn.param`` (+ ``.bin``, ``.json``)."""
    return export_ncnn(model, tmp_path_factory.mktemp("ncnn") / "model.ncnn.param", (96, 128))


@pytest.fixture(scope="module")
def val_frames(model, camvid_root) -> list[torch.Tensor]:
    """The first CamVid val frame (360x480) normalised, and the same frame at an odd size."""
    image, _ = camvid(str(camvid_root), "val")[0]
    batch = normalize(torch.as_tensor(image)[None], model.metadata.mean, model.metadata.std)
    odd = torch.nn.functional.interpolate(batch, size=(361, 479), mode="bilinear")
    return [batch, odd]


def test_export_writes_param_bin_and_sidecar(exported, model) -> None:
    files = NcnnFiles.of(exported)
    assert files.param.read_text().startswith("7767517")
    assert files.weights.stat().st_size > 1_000_000  # float32 weights, not an empty file
    deployed = load_ncnn_model(exported)
    assert deployed.num_classes == 11
    assert deployed.metadata.class_names == model.metadata.class_names
    assert deployed.metadata.mean == model.metadata.mean


def test_files_of_different_exports_are_not_mixed(exported, tmp_path) -> None:
    """An export killed between its writes leaves a new .bin beside the old .param and
    sidecar: the sidecar's digests tell, and loading refuses by name."""
    files = NcnnFiles.of(exported)
    copy = NcnnFiles.of(tmp_path / files.param.name)
    for source, target in zip(
        (files.param, files.weights, files.sidecar), (copy.param, copy.weights, copy.sidecar)
    ):
        shutil.copy(source, target)
    assert load_ncnn_model(copy.param).num_classes == 11
    weights = bytearray(copy.weights.read_bytes())
    weights[-1] ^= 0xFF  # the same size, another file
    copy.weights.write_bytes(bytes(weights))
    with pytest.raises(NcnnFileError, match=r"\.bin is not the file .*\.json was written with"):
        load_ncnn_model(copy.param)


def test_an_export_copied_without_its_sidecar_says_so(exported, tmp_path, caplog) -> None:
    """``cp m.param m.bin elsewhere/``: without ``m.json`` the classes and normalisation
    are unknown; the file still runs (a foreign ncnn file has no sidecar either), with a
    warning naming what is missing."""
    files = NcnnFiles.of(exported)
    copy = NcnnFiles.of(tmp_path / files.param.name)
    shutil.copy(files.param, copy.param)
    shutil.copy(files.weights, copy.weights)
    model = load_ncnn_model(copy.param)
    assert model.num_classes == 11 and model.metadata.class_names == []  # by number
    assert f"{copy.param}: no {copy.sidecar.name} beside it" in caplog.text
    assert "copy its .json with the .param and .bin" in caplog.text


def test_an_export_killed_midway_leaves_the_earlier_one_working(
    exported, tmp_path, monkeypatch, caplog
) -> None:
    """A kill while a new export's three files take the earlier one's place (here: after the
    new .param went in) lost the earlier export: the mix was refused, never run. The next load
    puts the earlier files back and runs them."""
    import os

    from ddrnet import file_sets

    files = NcnnFiles.of(exported)
    copy = NcnnFiles.of(tmp_path / files.param.name)
    for source, target in zip(files.paths, copy.paths):
        shutil.copy(source, target)
    earlier = [path.read_bytes() for path in copy.paths]

    class Killed(BaseException):
        pass

    real_replace, calls = os.replace, []

    def replace(source, target):
        calls.append(target)
        if len(calls) > 4:  # three moved aside, the new .param in: killed
            raise Killed
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(Killed), file_sets.replaced_together(copy.paths) as staged:
        for path in copy.paths:
            staged[path].write_bytes(b"7767517\nanother export\n")
    monkeypatch.setattr(os, "replace", real_replace)
    assert copy.param.read_bytes().startswith(b"7767517\nanother")  # the mix a kill leaves
    with caplog.at_level("WARNING", logger="ddrnet.deploy.ncnn_runtime"):
        assert load_ncnn_model(copy.param).num_classes == 11
    assert "stopped midway; the earlier export's files are back" in caplog.text
    assert [path.read_bytes() for path in copy.paths] == earlier
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(p.name for p in copy.paths)


def test_a_json_beside_that_is_not_an_ncnn_sidecar_is_neither_replaced_nor_read(
    exported, model, tmp_path
) -> None:
    """m.param and m.pte share m.json: an ncnn export replaced an ExecuTorch export's sidecar
    (or a user's own m.json), and the ncnn file then ran with the other's record."""
    import json

    from ddrnet.deploy.onnx_file import ExportError

    mine = tmp_path / "m.json"
    mine.write_text('{"lanes": 4}')
    with pytest.raises(ExportError, match=r"m.json: .* is not a ddrnet sidecar; move it"):
        export_ncnn(model, tmp_path / "m.param", (96, 128))
    assert mine.read_text() == '{"lanes": 4}' and not (tmp_path / "m.param").exists()
    files = NcnnFiles.of(exported)
    copy = NcnnFiles.of(tmp_path / "copy.param")
    for source, target in zip(files.paths, copy.paths):
        shutil.copy(source, target)
    record = json.loads(copy.sidecar.read_text())
    record["executorch"] = {"pte_blake2b": "0" * 32}
    del record["ncnn"]
    copy.sidecar.write_text(json.dumps(record))
    with pytest.raises(NcnnFileError, match=r"copy.json beside it is the sidecar of an ExecuTorch"):
        load_ncnn_model(copy.param)
    with pytest.raises(ExportError, match=r"is the sidecar of an ExecuTorch export; move it"):
        export_ncnn(model, copy.param, (96, 128))
    mine.unlink()
    (tmp_path / "m.bin").write_bytes(b"my firmware")  # a .bin of no ncnn model: replaced
    with pytest.raises(ExportError, match=r"m.bin: .* is no ncnn export's \(no m.param beside"):
        export_ncnn(model, tmp_path / "m.param", (96, 128))
    assert (tmp_path / "m.bin").read_bytes() == b"my firmware"


def test_logits_match_pytorch_on_real_frames_at_any_size(exported, model, val_frames) -> None:
    difference = verify_ncnn(model, exported, val_frames)
    with torch.no_grad():
        scale = max(float(model(frame).abs().max()) for frame in val_frames)
    assert difference < 1e-4 * max(1.0, scale), (difference, scale)
    deployed = NcnnSegmentationModel(exported)
    logits = deployed(torch.cat([val_frames[0], val_frames[0]]))
    assert logits.shape == (2, 11, 45, 60)  # a batch runs image by image
    # A channels-last (non-contiguous) batch: ncnn.Mat borrows memory, so it must stay alive.
    strided = deployed(val_frames[0].contiguous(memory_format=torch.channels_last))
    assert torch.equal(strided, logits[:1])


def test_cli_eval_scores_the_ncnn_file_as_pytorch(exported, model, camvid_root) -> None:
    result = run_ddrnet(
        "eval",
        str(exported),
        "--dataset",
        "camvid",
        "--root",
        str(camvid_root),
        "--max-images",
        "2",
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    line = next(row for row in result.stdout.splitlines() if row.startswith("mIoU"))
    dataset = torch.utils.data.Subset(camvid(str(camvid_root), "val"), range(2))
    mean, std = model.metadata.mean, model.metadata.std
    reference = evaluate(model, dataset, 11, mean, std, progress=False)
    assert float(line.split()[-1]) == pytest.approx(reference.miou, abs=0.01)


def test_cli_predict_on_the_ncnn_file(exported, model, tmp_path) -> None:
    frames = [str(frame) for frame in demo_frames()[:2]]
    output = tmp_path / "out"
    result = run_ddrnet(
        "predict", *frames, "--checkpoint", str(exported), "-o", str(output), "--save", "labels"
    )
    assert result.returncode == 0, result.stderr
    labels = sorted(output.rglob("*.png"))
    assert len(labels) == 2
    expected = Predictor(model).predict(frames[0])
    actual = np.asarray(Image.open(labels[0]))
    assert actual.shape == expected.shape
    assert (actual == expected).mean() > 0.999


def test_bad_input_is_one_line_naming_the_file(
    exported, camvid_model_file, tmp_path, capsys, monkeypatch
) -> None:
    model_file = camvid_model_file
    error = one_line_cli_error(capsys, ["eval", str(model_file), "--runtime", "ncnn"])
    assert str(model_file) in error and "not an ncnn .param file" in error
    lonely = tmp_path / "lonely.param"
    shutil.copy(exported, lonely)
    error = one_line_cli_error(capsys, ["predict", "--checkpoint", str(lonely)])
    assert "lonely.bin" in error and "missing" in error
    garbage = tmp_path / "garbage.param"
    garbage.write_text("not a graph\n")
    (tmp_path / "garbage.bin").write_bytes(b"\0" * 16)
    error = one_line_cli_error(capsys, ["predict", "--checkpoint", str(garbage)])
    assert str(garbage) in error and "magic" in error
    error = one_line_cli_error(capsys, ["eval", str(exported), "--runtime", "onnxruntime"])
    assert "--runtime ncnn" in error
    error = one_line_cli_error(capsys, ["predict", "--checkpoint", str(exported), "--streams", "2"])
    assert error.endswith(
        "--streams 2: ncnn models segment one frame at a time; use a PyTorch model or an .onnx file"
    )
    error = one_line_cli_error(
        capsys, ["export", "--format", "ncnn", "-o", str(tmp_path / "m.onnx")]
    )
    assert ".param" in error
    monkeypatch.setitem(sys.modules, "ncnn", None)  # as if ncnn were not installed
    error = one_line_cli_error(capsys, ["predict", "--checkpoint", str(exported)])
    assert str(exported) in error and "pip install ncnn" in error
    monkeypatch.setitem(sys.modules, "pnnx", None)
    argv = ["export", "--checkpoint", str(model_file), "--format", "ncnn"]
    error = one_line_cli_error(capsys, [*argv, "-o", str(tmp_path / "x.param")])
    assert "pip install pnnx" in error


def test_frozen_resizes_are_found(tmp_path) -> None:
    param = tmp_path / "frozen.param"
    param.write_text(
        "7767517\n3 3\nInput in0 0 1 in0\n"
        'Interp up_ok 2 1 a b c 0=2 5=1 6=0 9="1w,1h"\n'
        'Interp up_frozen 2 1 d e f 0=2 5=1 6=0 9="2,1h"\n'
    )
    assert frozen_interps(param) == ["up_frozen"]


def test_bench_row_runs_the_export_and_matches_eager(model) -> None:
    from ddrnet.deploy import build_runner

    runner = build_runner("ncnn", model, (64, 96), threads=1)
    expected = build_runner("eager", model, (64, 96)).output()
    actual = runner.output()
    assert actual.shape == expected.shape == (1, 11, 8, 12)
    assert float((actual - expected).abs().max()) < 1e-4 * max(1.0, float(expected.abs().max()))


def test_upsample_export_gives_logits_at_input_size(model, val_frames, tmp_path) -> None:
    path = export_ncnn(model, tmp_path / "up.ncnn.param", (96, 128), upsample_to_input=True)
    assert load_ncnn_model(path).upsampled
    odd = val_frames[1]
    difference = verify_ncnn(model, path, [odd])  # against PyTorch's logits resized the same way
    with torch.no_grad():
        scale = float(model(odd).abs().max())
    assert difference < 1e-4 * max(1.0, scale)
    assert tuple(load_ncnn_model(path)(odd).shape) == (1, 11, 361, 479)


@pytest.mark.parametrize("fusion", ["cbam", "pixel", "transformer"])
def test_attention_fusions_export_and_match_at_any_size(fusion, val_frames, tmp_path) -> None:
    """``model.fusion``'s forms through pnnx: the transformer's pooled context at sizes that
    are not multiples of its stride (windows cut by the edge), CBAM's pooled gates, pixel
    attention's channel sum."""
    torch.manual_seed(0)
    net = ddrnet.create_model("ddrnet_23_slim", num_classes=11, fusion=fusion)
    randomize_batchnorm(net, seed=3)
    path = export_ncnn(net, tmp_path / f"{fusion}.ncnn.param", (96, 128))
    with torch.no_grad():
        scale = max(float(net(frame).abs().max()) for frame in val_frames)
    assert verify_ncnn(net, path, val_frames) < 1e-4 * max(1.0, scale)
