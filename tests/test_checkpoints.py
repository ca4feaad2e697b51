"""Checkpoint formats: round trips, foreign layouts, strict errors, refusal of pickled code."""

from __future__ import annotations

import logging
import os
import pickle
import re
from pathlib import Path

import pytest
import torch

import ddrnet
from ddrnet.models import CheckpointError, ModelMetadata, read_checkpoint, save_model
from ddrnet.models.metadata import IMAGENET_MEAN, IMAGENET_STD, normalisation

from official_reference import official_network, randomize_batchnorm


def _trained_like(name: str = "ddrnet_23_slim", **kwargs) -> torch.nn.Module:
    model = ddrnet.create_model(name, **kwargs)
    randomize_batchnorm(model, seed=3)
    return model.eval()


def _same_outputs(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    images = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        return torch.equal(a.eval()(images), b.eval()(images))


@pytest.mark.parametrize("name", ddrnet.list_models())
@pytest.mark.parametrize("file_format", ["safetensors", "ddp_pickle"])
def test_every_variant_round_trips(name: str, file_format: str, tmp_path: Path) -> None:
    model = _trained_like(name)
    if file_format == "safetensors":
        metadata = ModelMetadata(
            architecture=name,
            num_classes=model.num_classes,
            spec=model.spec.to_dict(),
            task=ddrnet.models.variant_info(name).task,
        )
        path = save_model(model, tmp_path / "model.safetensors", metadata)
        loaded = ddrnet.create_model(checkpoint=path)
    else:
        torch.save(
            {"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}},
            tmp_path / "m.pth",
        )
        loaded = ddrnet.create_model(name, checkpoint=tmp_path / "m.pth")
    size = (96, 128) if ddrnet.models.variant_info(name).task == "segmentation" else (64, 64)
    images = torch.randn(1, 3, *size)
    with torch.no_grad():
        assert torch.equal(model(images), loaded.eval()(images))


def test_safetensors_round_trip_rebuilds_the_model_from_metadata(tmp_path: Path) -> None:
    model = _trained_like(num_classes=11)
    metadata = ModelMetadata(
        architecture="ddrnet_23_slim",
        num_classes=11,
        spec=model.spec.to_dict(),
        class_names=[f"c{i}" for i in range(11)],
        palette=[[i, i, i] for i in range(11)],
        mean=[0.4, 0.4, 0.4],
        std=[0.3, 0.3, 0.3],
        metrics={"mIoU": 12.5},
    )
    path = save_model(model, tmp_path / "m.safetensors", metadata)
    rebuilt = ddrnet.create_model(checkpoint=path)  # no name: the file describes itself
    assert rebuilt.metadata == metadata
    assert _same_outputs(model, rebuilt)


def test_a_group_norm_file_is_rebuilt_with_group_norm(tmp_path: Path, caplog) -> None:
    model = _trained_like(num_classes=4, norm="group", norm_groups=16)
    path = save_model(model, tmp_path / "gn.safetensors", model.metadata)
    rebuilt = ddrnet.create_model(checkpoint=path)  # nothing said about the norm
    assert rebuilt.metadata.spec["norm"] == "group" and rebuilt.spec == model.spec
    assert rebuilt.backbone.layer1[0].bn1.num_groups == 16  # gcd(32, 16)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in rebuilt.modules())
    assert _same_outputs(model, rebuilt)
    # The file's norm wins over the argument, as its widths do over width_multiplier; a
    # warning says so.
    with caplog.at_level(logging.WARNING, logger="ddrnet.models.factory"):
        assert ddrnet.create_model(checkpoint=path, norm="batch").spec.norm == "group"
    assert f"norm='batch' does not apply to {path}: the file records norm 'group'" in caplog.text
    # BatchNorm weights without metadata (an official file) do not fit a GroupNorm model:
    # the 3 statistics of each of its 55 BatchNorms have no place.
    torch.save(_trained_like().state_dict(), tmp_path / "bn.pth")
    with pytest.raises(CheckpointError, match="bn.pth: 165 keys have no counterpart"):
        ddrnet.create_model("ddrnet_23_slim", checkpoint=tmp_path / "bn.pth", norm="group")


def test_an_ibn_file_is_rebuilt_with_ibn(tmp_path: Path) -> None:
    from ddrnet.models.blocks import InstanceBatchNorm

    model = _trained_like(num_classes=4, norm="ibn")
    path = save_model(model, tmp_path / "ibn.safetensors", model.metadata)
    rebuilt = ddrnet.create_model(checkpoint=path)
    assert rebuilt.metadata.spec["norm"] == "ibn" and rebuilt.spec == model.spec
    assert isinstance(rebuilt.backbone.stages[0].high[1].bn1, InstanceBatchNorm)
    assert _same_outputs(model, rebuilt)


@pytest.mark.parametrize("wrapper", ["plain", "state_dict", "module", "model_and_module"])
def test_wrapped_pickled_state_dicts_load(tmp_path: Path, wrapper: str) -> None:
    model = _trained_like()
    state = model.state_dict()
    if wrapper == "state_dict":
        payload: object = {"state_dict": state, "epoch": 3}
    elif wrapper == "module":
        payload = {f"module.{k}": v for k, v in state.items()}
    elif wrapper == "model_and_module":
        payload = {"model": {f"module.{k}": v for k, v in state.items()}, "step": 7}
    else:
        payload = state
    torch.save(payload, tmp_path / "ckpt.pth")
    loaded = ddrnet.create_model("ddrnet_23_slim", checkpoint=tmp_path / "ckpt.pth")
    assert _same_outputs(model, loaded)


def test_official_cityscapes_file_without_aux_head_loads(tmp_path: Path) -> None:
    official = official_network("ddrnet_23_slim", augment=False)
    randomize_batchnorm(official)
    state = {f"model.{k}": v for k, v in official.state_dict().items()}
    state["loss.criterion.weight"] = torch.ones(19)
    torch.save(state, tmp_path / "best_val_smaller.pth")
    model = ddrnet.create_model("ddrnet_23_slim", checkpoint=tmp_path / "best_val_smaller.pth")
    images = torch.randn(1, 3, 64, 128)
    with torch.no_grad():
        assert (model(images) - official.eval()(images)).abs().max() < 1e-5


def test_official_camvid_file_without_metadata_keeps_its_11_class_head(tmp_path: Path) -> None:
    official = official_network("ddrnet_23_slim", augment=False, num_classes=11)
    randomize_batchnorm(official)
    torch.save({f"model.{k}": v for k, v in official.state_dict().items()}, tmp_path / "c.pth")
    model = ddrnet.create_model("ddrnet_23_slim", checkpoint=tmp_path / "c.pth")
    assert model.num_classes == model.metadata.num_classes == 11  # not 19 + a random head
    images = torch.randn(1, 3, 64, 128)
    with torch.no_grad():
        assert (model(images) - official.eval()(images)).abs().max() < 1e-5
    # An explicit count still wins, re-initialising the classifier (next test) ...
    wider = ddrnet.create_model("ddrnet_23_slim", checkpoint=tmp_path / "c.pth", num_classes=19)
    assert wider.num_classes == 19 and wider(images).shape == (1, 19, 8, 16)
    loaded, kept = model.state_dict(), wider.state_dict()
    assert torch.equal(kept["head.conv1.weight"], loaded["head.conv1.weight"])
    assert kept["head.conv2.weight"].shape[0] == 19
    # ... and an ImageNet file has no segmentation head to count: the default 19 stands.
    torch.save(official_network("ddrnet_23_slim_imagenet").state_dict(), tmp_path / "i.pth")
    assert ddrnet.create_model("ddrnet_23_slim", checkpoint=tmp_path / "i.pth").num_classes == 19


def test_a_trained_file_without_metadata_says_which_normalisation_it_gets(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing in a bare state dict says what mean and std its network was trained with:
    ImageNet's are assumed (the official code's), and a warning names the file; a ddrnet
    file, and an ImageNet backbone read to start training, need no such word."""
    model = _trained_like(num_classes=11)
    torch.save(model.state_dict(), tmp_path / "bare.pth")
    loaded = ddrnet.create_model("ddrnet_23_slim", checkpoint=tmp_path / "bare.pth")
    assert normalisation(loaded) == (IMAGENET_MEAN, IMAGENET_STD)
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warning.startswith(f"{tmp_path / 'bare.pth'} has no ddrnet metadata: its inputs are "
                              "normalised with ImageNet's mean and std")  # fmt: skip
    caplog.clear()
    path = save_model(model, tmp_path / "own.safetensors", model.metadata)
    ddrnet.create_model(checkpoint=path)
    torch.save(official_network("ddrnet_23_slim_imagenet").state_dict(), tmp_path / "i.pth")
    ddrnet.create_model("ddrnet_23_slim", checkpoint=tmp_path / "i.pth")
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_official_imagenet_checkpoint_initialises_the_segmentation_backbone(tmp_path: Path) -> None:
    classifier = official_network("ddrnet_23_slim_imagenet")
    randomize_batchnorm(classifier)
    torch.save(classifier.state_dict(), tmp_path / "DDRNet23s_imagenet.pth")
    model = ddrnet.create_model("ddrnet_23_slim", num_classes=11)
    report = ddrnet.load_weights(model, tmp_path / "DDRNet23s_imagenet.pth")
    assert {k.split(".")[0] for k in report.dropped} == {"final_down", "pre_logits", "classifier"}
    assert {k.split(".")[0] for k in report.missing} == {"dappm", "head"}
    ours = model.state_dict()
    assert torch.equal(
        ours["backbone.stages.1.high_to_low.3.weight"], classifier.state_dict()["down4.3.weight"]
    )


def test_fewer_classes_reinitialise_the_heads_and_say_so(tmp_path: Path) -> None:
    model = _trained_like(num_classes=19, aux_head=True)
    torch.save(model.state_dict(), tmp_path / "cityscapes.pth")
    fresh = ddrnet.create_model("ddrnet_23_slim", num_classes=11, aux_head=True)
    report = ddrnet.load_weights(fresh, tmp_path / "cityscapes.pth")
    assert sorted(report.reinitialised) == [
        "aux_head.conv2.bias",
        "aux_head.conv2.weight",
        "head.conv2.bias",
        "head.conv2.weight",
    ]
    assert "re-initialised the class-dependent layers" in report.summary()
    assert torch.equal(
        fresh.state_dict()["head.conv1.weight"], model.state_dict()["head.conv1.weight"]
    )


def test_unmappable_keys_are_listed(tmp_path: Path) -> None:
    state = {f"model.{k}": v for k, v in official_network("ddrnet_23_slim").state_dict().items()}
    state["model.extra_branch.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match=r"extra_branch\.weight"):
        ddrnet.create_model("ddrnet_23_slim", checkpoint=tmp_path / "odd.pth")


def test_wrong_variant_is_a_clear_error(tmp_path: Path) -> None:
    torch.save(ddrnet.create_model("ddrnet_23").state_dict(), tmp_path / "ddrnet23.pth")
    with pytest.raises(CheckpointError, match="shape mismatch"):
        ddrnet.create_model("ddrnet_23_slim", checkpoint=tmp_path / "ddrnet23.pth")


def test_missing_weights_are_named(tmp_path: Path) -> None:
    state = ddrnet.create_model("ddrnet_23_slim").state_dict()
    del state["backbone.layer1.0.conv1.weight"]
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match=r"backbone\.layer1\.0\.conv1"):
        ddrnet.create_model("ddrnet_23_slim", checkpoint=tmp_path / "partial.pth")


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # runs on unpickling if the loader is not weights-only
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = {"state_dict": {"w": torch.zeros(1)}, "hook": _Exploit(marker)}
    with open(tmp_path / "evil.pth", "wb") as handle:
        pickle.dump(payload, handle, protocol=2)
    with pytest.raises(CheckpointError, match="refusing to load .*evil.pth") as error:
        read_checkpoint(tmp_path / "evil.pth")
    assert not marker.exists()
    assert "\x1b" not in str(error.value)  # none of torch's terminal colours


def test_a_whole_pickled_model_is_named_for_what_it_holds(tmp_path: Path) -> None:
    torch.save(ddrnet.create_model("ddrnet_23_slim", num_classes=3), tmp_path / "whole.pt")
    with pytest.raises(
        CheckpointError, match=r"whole.pt: .* stopped at ddrnet\.models\.ddrnet\.DDRNet\)"
    ):
        read_checkpoint(tmp_path / "whole.pt")


def test_missing_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "nope.pth")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="junk.safetensors"):
        read_checkpoint(tmp_path / "junk.safetensors")
    (tmp_path / "junk.pth").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="junk.pth"):
        read_checkpoint(tmp_path / "junk.pth")


def test_name_is_required_without_self_describing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"create_model\(\) needs a model name or a checkpoint"):
        ddrnet.create_model()
    torch.save(ddrnet.create_model("ddrnet_23_slim").state_dict(), tmp_path / "sd.pt")
    message = f"{tmp_path / 'sd.pt'} does not name its architecture: give a model name"
    with pytest.raises(ValueError, match=re.escape(message)):
        ddrnet.create_model(checkpoint=tmp_path / "sd.pt")


def test_files_that_are_no_checkpoint_are_named_for_what_they_are(tmp_path: Path) -> None:
    (tmp_path / "notes.pt").write_text("hello")
    (tmp_path / "empty.pth").write_bytes(b"")
    scripted = torch.jit.script(torch.nn.Linear(2, 2))
    torch.jit.save(scripted, str(tmp_path / "scripted.pt"))
    (tmp_path / "model.ncnn.param").write_text("7767517\n")  # an ncnn export's two files
    (tmp_path / "model.ncnn.bin").write_bytes(bytes(16))
    for name, message in (
        ("notes.pt", "is not a PyTorch or safetensors file"),
        ("empty.pth", "is an empty file"),
        ("scripted.pt", "is a TorchScript export"),
        ("model.ncnn.bin", "holds the weights of the ncnn export .*model.ncnn.param: name that"),
    ):
        with pytest.raises(CheckpointError, match=message):
            read_checkpoint(tmp_path / name)


def _crafted_file(path: Path, tensors: dict[str, torch.Tensor] | None = None, **fields) -> Path:
    """A safetensors file whose ddrnet metadata has ``fields`` replaced, bypassing checks."""
    import json

    from safetensors.torch import save_file

    model = ddrnet.create_model("ddrnet_23_slim", num_classes=2)
    values = json.loads(
        ModelMetadata(
            architecture="ddrnet_23_slim", num_classes=2, spec=model.spec.to_dict()
        ).to_json()
    )
    values.update(fields)
    tensors = model.state_dict() if tensors is None else tensors
    save_file(dict(tensors), str(path), metadata={"ddrnet": json.dumps(values)})
    return path


def test_metadata_claiming_a_huge_model_is_refused_before_building_it(tmp_path: Path) -> None:
    spec = {**ddrnet.create_model("ddrnet_23_slim").spec.to_dict(), "planes": 256}
    path = _crafted_file(
        tmp_path / "small.safetensors", {"backbone.stem.0.weight": torch.zeros(32, 3, 3, 3)},
        spec=spec,
    )  # fmt: skip
    assert path.stat().st_size < 5000
    # Built for real, this model would take GBs: the refusal comes from shapes alone.
    with pytest.raises(CheckpointError, match=r"has 299\.2 M weights but the file holds only"):
        ddrnet.create_model(checkpoint=path)
    # Wider than any model may be: refused by the spec's own rule, naming the file.
    huge = _crafted_file(path, spec={**spec, "planes": 1024})
    with pytest.raises(
        CheckpointError, match=r"small.safetensors: metadata spec: planes must be at"
    ):
        ddrnet.create_model(checkpoint=huge)
    bad_specs = (
        {**spec, "planes": "wide"},
        {**spec, "blocks": [2, 2]},
        {"depth": 3},
        {**spec, "norm": "layer"},
        {**spec, "norm": "group", "norm_groups": "8"},
    )
    for bad_spec in bad_specs:
        with pytest.raises(CheckpointError, match="small.safetensors"):
            ddrnet.create_model(checkpoint=_crafted_file(path, spec=bad_spec))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"palette": [[0, 0, 0], [300, 0, 0]]}, "palette colours must be"),
        ({"class_names": ["road", 7]}, "class_names must be a list of strings"),
        ({"std": [0.2, 0.0, 0.2]}, "std must be positive"),
        ({"mean": [0.5, 0.5]}, "mean must be three finite numbers"),
        ({"num_classes": "2"}, "num_classes must be a positive integer"),
    ],
)
def test_crafted_metadata_is_a_one_line_error(fields, message, tmp_path: Path) -> None:
    path = _crafted_file(tmp_path / "crafted.safetensors", **fields)
    with pytest.raises(CheckpointError, match=f"crafted.safetensors: metadata: {message}"):
        read_checkpoint(path)


def test_crafted_metadata_from_the_command_line(tmp_path: Path) -> None:
    from helpers import run_ddrnet

    for fields, message in (
        ({"palette": [[0, 0, 0], [300, 0, 0]]}, "palette colours must be [r, g, b] integers"),
        ({"std": [0.2, 0.0, 0.2]}, "std must be positive"),
    ):
        path = _crafted_file(tmp_path / "crafted.safetensors", **fields)
        result = run_ddrnet("predict", "--checkpoint", str(path), "-o", str(tmp_path / "out"))
        assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
        assert result.stderr.count("\n") == 1 and "crafted.safetensors" in result.stderr


def test_a_shape_mismatch_is_summarised(tmp_path: Path) -> None:
    torch.save(ddrnet.create_model("ddrnet_23").state_dict(), tmp_path / "ddrnet23.pth")
    with pytest.raises(CheckpointError) as error:
        ddrnet.create_model("ddrnet_23_slim", checkpoint=tmp_path / "ddrnet23.pth")
    message = str(error.value)
    assert re.search(r"shape mismatch in \d{3} tensors", message), message
    assert "backbone.stem.0.weight (64, 3, 3, 3) vs (32, 3, 3, 3)" in message
    assert re.search(r"\.\.\. and \d{3} more$", message) and len(message) < 1000


def test_checkpoint_filter_fn_maps_official_keys_in_one_pass() -> None:
    from ddrnet.models import checkpoint_filter_fn

    official = official_network("ddrnet_39", augment=True)
    state = {f"model.{k}": v for k, v in official.state_dict().items()}
    state["loss.criterion.weight"] = torch.ones(19)
    model = ddrnet.create_model("ddrnet_39", aux_head=True)
    converted, report = checkpoint_filter_fn(state, model)
    assert set(converted) == set(model.state_dict()) and report.layout == "official"
    assert report.dropped == ["loss.criterion.weight"] and report.loaded == len(converted)
    assert torch.equal(
        converted["backbone.stages.1.high_to_low.0.weight"], state["model.down3_2.0.weight"]
    )
    # A state dict that mixes the two layouts is refused rather than half loaded.
    mixed = {**model.state_dict(), "layer1.0.conv1.weight": state["model.layer1.0.conv1.weight"]}
    with pytest.raises(CheckpointError, match="mixes ddrnet and official"):
        checkpoint_filter_fn(mixed, model)


def test_weights_that_are_not_finite_are_refused_by_name(tmp_path) -> None:
    """A file whose weights are NaN loaded without a word and labelled every pixel 0."""
    from ddrnet.models import CheckpointError, load_weights

    model = ddrnet.create_model("ddrnet_23_slim", num_classes=11)
    state = {key: value.clone() for key, value in model.state_dict().items()}
    key = next(k for k, v in state.items() if v.is_floating_point() and v.ndim == 4)
    state[key][0, 0, 0, 0] = float("nan")
    with pytest.raises(CheckpointError, match=f"<state dict>: {key} holds NaN or infinite"):
        load_weights(model, state)


def test_a_model_name_that_contradicts_the_file_is_named_as_the_mistake() -> None:
    """--model ddrnet_39 with the bundled 23-slim file blamed "damaged or crafted metadata"."""
    from ddrnet.models import CheckpointError

    with pytest.raises(CheckpointError, match=r"holds a ddrnet_23_slim, whose weights do not fit"):
        ddrnet.create_model("ddrnet_39", checkpoint="camvid_ddrnet23_slim")
