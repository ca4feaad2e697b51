"""Structured channel pruning (issue 21, item 1): exactness on channels that contribute
nothing, the MAC target, model files that rebuild themselves, and the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

import ddrnet
from ddrnet.models import CheckpointError, count_macs, save_model
from ddrnet.models.prune import PruningError, prune_channels, prune_to_macs

from helpers import camvid_model, one_line_cli_error, run_ddrnet

pytest.importorskip("torch_pruning")

SIZE = (96, 128)  # (height, width) of the test inputs


def _zero_channels(model: torch.nn.Module, conv: str, bn: str, channels: list[int]) -> None:
    """Make ``channels`` of ``conv`` contribute nothing: zero weights and a BatchNorm that
    maps them to exactly 0 (gamma = beta = 0), so the ReLU and the next conv see zeros."""
    with torch.no_grad():
        model.get_submodule(conv).weight[channels] = 0
        norm = model.get_submodule(bn)
        norm.weight[channels] = 0
        norm.bias[channels] = 0


def test_pruning_channels_that_contribute_nothing_keeps_the_outputs() -> None:
    model = camvid_model()
    plan = {
        ("backbone.layer1.0.conv1", "backbone.layer1.0.bn1"): [1, 4, 7],
        ("backbone.stages.0.high.1.conv1", "backbone.stages.0.high.1.bn1"): [0, 63],
        ("backbone.high_bottleneck.0.conv1", "backbone.high_bottleneck.0.bn1"): [5],
        ("backbone.low_bottleneck.0.conv2", "backbone.low_bottleneck.0.bn2"): [2, 3],
        ("head.conv1", "head.bn2"): [10, 20],
    }
    for (conv, bn), channels in plan.items():
        _zero_channels(model, conv, bn, channels)
    pruned = prune_channels(model, {conv: channels for (conv, _), channels in plan.items()})
    # Compared in float64: pruning only slices tensors, but this untrained network's logits
    # reach ~200, where float32 summation order alone moves them by ~2e-4.
    image = torch.randn(2, 3, *SIZE, dtype=torch.float64)
    with torch.no_grad():
        expected = model.double()(image)
        actual = pruned.double()(image)
    assert expected.abs().max() > 1
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5)
    widths = pruned.metadata.channel_widths
    assert widths["backbone.layer1.0.conv1"] == [32, 29]
    assert widths["backbone.layer1.0.conv2"] == [29, 32]
    assert widths["backbone.stages.0.high.1.bn1"] == [62]
    assert widths["backbone.low_bottleneck.0.conv3"] == [254, 512]
    assert widths["head.conv2"] == [62, 11]  # its output stays at the classes
    assert model.metadata.channel_widths == {}  # the original is untouched


def test_the_classifier_output_is_never_pruned() -> None:
    with pytest.raises(PruningError, match="class scores"):
        prune_channels(camvid_model(), {"head.conv2": [0]})


@pytest.fixture(scope="module")
def pruned_half() -> ddrnet.models.prune.PruneResult:
    return prune_to_macs(camvid_model(), 0.5)


def test_prune_to_macs_meets_the_target(pruned_half) -> None:
    result = pruned_half
    assert result.input_size == (360, 480)  # CamVid's training size, from the metadata
    assert 0.47 <= result.macs_fraction <= 0.5
    assert result.macs_after == count_macs(result.model, (360, 480))
    assert result.params_after < 0.7 * result.params_before
    output = result.model(torch.randn(1, 3, *SIZE))
    assert output.shape == (1, 11, SIZE[0] // 8, SIZE[1] // 8)
    assert result.model.backbone.stem[0].in_channels == 3
    assert result.model.metadata.metrics == {}  # the unpruned model's scores no longer hold


def test_an_unreachable_target_names_what_stops_it() -> None:
    """Widths rounded to a multiple larger than any layer cannot shrink at all: the error
    says so (the smallest fraction any attempt reached, 1.000) and names the rounding."""
    with pytest.raises(PruningError) as caught:
        prune_to_macs(camvid_model(), 0.5, round_to=4096)
    assert str(caught.value) == (
        "cannot reach 0.5 of the MACs with at most 0.8 of each layer's channels removed "
        "(smallest reached: 1.000); raise the per-layer limit or lower the rounding (widths "
        "multiples of 4096)"
    )


def test_global_bn_scale_pruning_respects_the_per_layer_limit() -> None:
    model = camvid_model()
    result = prune_to_macs(
        model, 0.6, importance="bn-scale", global_pruning=True, max_layer_ratio=0.5
    )
    assert 0.57 <= result.macs_fraction <= 0.6
    before = dict(model.named_modules())
    for name, layer in result.model.named_modules():
        if isinstance(layer, torch.nn.Conv2d):
            assert layer.out_channels >= before[name].out_channels // 2, name


def test_pruned_model_file_rebuilds_itself_and_exports(pruned_half, tmp_path: Path) -> None:
    from ddrnet.deploy import export_onnx, verify_onnx

    model = pruned_half.model
    path = save_model(model, tmp_path / "pruned.safetensors", model.metadata)
    rebuilt = ddrnet.create_model(checkpoint=path)
    image = torch.randn(1, 3, *SIZE)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(image), model(image), rtol=0, atol=0)
    assert rebuilt.metadata.channel_widths == model.metadata.channel_widths
    # A training run may add the auxiliary head: it is built at the pruned width.
    with_aux = ddrnet.create_model(checkpoint=path, aux_head=True)
    assert with_aux.forward_with_aux(image)[1].shape == (1, 11, SIZE[0] // 8, SIZE[1] // 8)
    onnx_path = export_onnx(rebuilt, tmp_path / "pruned.onnx", SIZE)
    assert verify_onnx(rebuilt, onnx_path, sizes=[SIZE]) < 1e-4


def test_a_pruned_start_with_a_width_multiplier_is_refused_by_name(
    pruned_half, tmp_path: Path
) -> None:
    """A pruned file's widths are its own: a recipe's model.width_multiplier over them
    failed at the first step with "running_mean should contain 64 elements not 128"."""
    from ddrnet.config import ConfigError
    from ddrnet.data.labels import CAMVID
    from ddrnet.engine.config import Config
    from ddrnet.engine.steps import build_model

    model = pruned_half.model
    path = save_model(model, tmp_path / "pruned.safetensors", model.metadata)
    config = Config()
    config.model.pretrained = str(path)
    assert build_model(config, CAMVID, torch.device("cpu"), amp=False)[1]  # its widths
    config.model.width_multiplier = 2.0
    message = r"is a channel-pruned model of another planes/head_planes than this recipe builds"
    with pytest.raises(ConfigError, match=message + r": .* \(drop model.width_multiplier\)"):
        build_model(config, CAMVID, torch.device("cpu"), amp=False)
    config.model.width_multiplier, config.model.blocks = 1.0, (1, 1, 1, 1)
    with pytest.raises(ConfigError, match=r"another blocks than .* \(drop model.blocks\)$"):
        build_model(config, CAMVID, torch.device("cpu"), amp=False)


def _rewrite_metadata(source: Path, target: Path, **changes: object) -> Path:
    with safe_open(str(source), framework="pt") as handle:
        header = json.loads(handle.metadata()["ddrnet"])
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    header.update(changes)
    save_file(tensors, str(target), metadata={"ddrnet": json.dumps(header)})
    return target


def test_model_file_checks_hold_for_pruned_files(pruned_half, tmp_path: Path) -> None:
    model = pruned_half.model
    path = save_model(model, tmp_path / "pruned.safetensors", model.metadata)
    # Without its widths the file describes the unpruned model: strict loading refuses it.
    bare = _rewrite_metadata(path, tmp_path / "bare.safetensors", channel_widths={})
    with pytest.raises(CheckpointError, match="shape mismatch"):
        ddrnet.create_model(checkpoint=bare)
    # Widths larger than the variant's would make a crafted file grow the model.
    widths = dict(model.metadata.channel_widths, **{"backbone.stem.1": [4096]})
    grown = _rewrite_metadata(path, tmp_path / "grown.safetensors", channel_widths=widths)
    with pytest.raises(CheckpointError, match="describes no valid model"):
        ddrnet.create_model(checkpoint=grown)
    unknown = dict(model.metadata.channel_widths, **{"backbone.nowhere": [3, 4]})
    crafted = _rewrite_metadata(path, tmp_path / "unknown.safetensors", channel_widths=unknown)
    with pytest.raises(CheckpointError, match="no layer of the model"):
        ddrnet.create_model(checkpoint=crafted)


def test_pruned_metadata_keeps_the_rest(pruned_half) -> None:
    before, after = camvid_model().metadata, pruned_half.model.metadata
    unchanged = ("architecture", "num_classes", "spec", "class_names", "palette", "dataset")
    for name in unchanged:
        assert getattr(after, name) == getattr(before, name), name
    assert after.training["pruning"][0]["macs_fraction_target"] == 0.5

    # The recorded widths are exactly the layers narrower than the unpruned model's, as the
    # pruned model has them: Conv2d [in, out], BatchNorm2d [features]; beside them, those of
    # the auxiliary head a training run may add (test_pruned_model_file_rebuilds_itself...).
    def widths(layer: torch.nn.Module) -> list[int] | None:
        if isinstance(layer, torch.nn.Conv2d):
            return [layer.in_channels, layer.out_channels]
        if isinstance(layer, torch.nn.BatchNorm2d):
            return [layer.num_features]
        return None

    unpruned = dict(camvid_model().named_modules())
    narrower = {
        name: widths(layer)
        for name, layer in pruned_half.model.named_modules()
        if widths(layer) is not None and widths(layer) != widths(unpruned[name])
    }
    recorded = {k: v for k, v in after.channel_widths.items() if not k.startswith("aux_head.")}
    assert len(narrower) > 10 and recorded == narrower


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["--macs", "1.5"], "argument --macs: must be > 0 and < 1, got '1.5'"),
        (["--macs", "0"], "argument --macs: must be > 0 and < 1, got '0'"),
        (["--macs", "nan"], "argument --macs: must be a finite number, got 'nan'"),
        (
            ["--macs", "0.5", "--max-layer-ratio", "1"],
            "argument --max-layer-ratio: must be > 0 and < 1, got '1'",
        ),
    ],
)
def test_prune_refuses_a_fraction_outside_0_1(arguments, expected, capsys, tmp_path) -> None:
    from ddrnet.cli import main

    output = str(tmp_path / "p.safetensors")
    with pytest.raises(SystemExit) as stop:  # argparse's refusal, before anything loads
        main(["prune", "camvid_ddrnet23_slim_train", *arguments, "-o", output])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"ddrnet prune: error: {expected}"


def test_prune_refuses_onnx_files_and_files_that_are_no_model(capsys, tmp_path) -> None:
    output = str(tmp_path / "p.safetensors")
    error = one_line_cli_error(
        capsys, ["prune", str(tmp_path / "model.onnx"), "--macs", "0.5", "-o", output]
    )
    assert error.startswith("ddrnet prune: error: CHECKPOINT ") and "ONNX" in error
    notes = tmp_path / "notes.txt"
    notes.write_text("not a model\n")
    error = one_line_cli_error(capsys, ["prune", str(notes), "--macs", "0.5", "-o", output])
    assert error.startswith(f"ddrnet prune: error: CHECKPOINT {notes}: ")
    assert not Path(output).exists()


def test_a_group_norm_model_is_refused_in_one_line(capsys, tmp_path) -> None:
    model = ddrnet.create_model("ddrnet_23_slim", num_classes=11, norm="group")
    expected = "pruning supports BatchNorm models only; this one uses group norm"
    with pytest.raises(PruningError, match=expected):
        prune_channels(model, {"backbone.layer1.0.conv1": [1]})
    path = save_model(model, tmp_path / "gn.safetensors", model.metadata)
    output = tmp_path / "p.safetensors"
    argv = ["prune", str(path), "--macs", "0.5", "-o", str(output)]
    assert one_line_cli_error(capsys, argv) == f"ddrnet prune: error: {expected}"
    assert not output.exists()


@pytest.mark.slow
def test_prune_eval_export_predict_through_the_cli(
    tmp_path: Path, camvid_root: Path, camvid_frame: Path
) -> None:
    pruned = tmp_path / "pruned.safetensors"
    result = run_ddrnet("prune", "camvid_ddrnet23_slim_train", "--macs", "0.5", "-o", str(pruned))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "of the MACs" in result.stdout
    result = run_ddrnet("eval", str(pruned), "--root", str(camvid_root), "--max-images", "2")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "mIoU" in result.stdout
    onnx_path = tmp_path / "pruned.onnx"
    result = run_ddrnet("export", "--checkpoint", str(pruned), "-o", str(onnx_path))
    assert result.returncode == 0, result.stderr[-2000:]
    result = run_ddrnet(
        "predict", str(camvid_frame), "--checkpoint", str(onnx_path), "-o", str(tmp_path / "out")
    )
    assert result.returncode == 0, result.stderr[-2000:]
    labels = np.asarray(Image.open(tmp_path / "out" / f"{camvid_frame.stem}_labels.png"))
    assert labels.shape == (360, 480) and labels.max() < 11  # the frame's classes


def test_a_target_the_widths_cannot_reach_closely_is_said(tmp_path, capsys) -> None:
    """The fast model's coupled groups step from 0.824 to 0.778 of its MACs with the same
    fraction pruned from each: --macs 0.8 lands on 0.778, and the command says why."""
    from ddrnet.cli import main

    output = tmp_path / "p.safetensors"
    assert (
        main(["prune", "camvid_ddrnet23_slim_fast_train", "--macs", "0.8", "-o", str(output)]) == 0
    )
    out = capsys.readouterr().out
    fraction = float(out.split(" of the MACs")[0].rsplit("(", 1)[1])
    assert fraction < 0.79 and "is the nearest to --macs 0.8 from below" in out
    argv = ["prune", "camvid_ddrnet23_slim_train", "--macs", "0.5", "-o", str(output)]
    assert main(argv) == 0  # the 23-slim's finer steps: 0.493, no note
    assert "(0.49" in (out := capsys.readouterr().out) and "note:" not in out
