"""``ddrnet.load``: one function for model files, bundled names and exported files."""

from __future__ import annotations

import pytest
import torch

import ddrnet
from ddrnet.errors import DDRNetError, UsageError
from ddrnet.loading import inference_setup, runtime_of
from ddrnet.models.weights import bundled_model_path

from helpers import camvid_model


def test_a_bundled_name_and_the_default_load_the_bundled_files() -> None:
    held_out = ddrnet.load("camvid_ddrnet23_slim_train")
    assert held_out.metadata.architecture == "ddrnet_23_slim"
    assert held_out.metadata.num_classes == 11 and not held_out.training
    assert not held_out.metadata.trained_on("camvid", "val")  # the held-out twin
    default = ddrnet.load()
    expected = ddrnet.create_model(checkpoint=bundled_model_path())
    for name, tensor in expected.state_dict().items():
        assert torch.equal(default.state_dict()[name], tensor), name
    assert runtime_of(default) is None


def test_safetensors_and_pt_files_load_the_same_network(tmp_path) -> None:
    model = camvid_model()
    safetensors = ddrnet.save_model(model, tmp_path / "m.safetensors", model.metadata)
    torch.save(model.state_dict(), tmp_path / "m.pt")  # no metadata: the name is needed
    images = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected = model(images)
        from_safetensors = ddrnet.load(safetensors)
        from_pt = ddrnet.load(tmp_path / "m.pt", model="ddrnet_23_slim")
        assert torch.allclose(from_safetensors(images), expected, atol=1e-5)
        assert torch.allclose(from_pt(images), expected, atol=1e-5)
    assert from_safetensors.metadata.class_names == model.metadata.class_names
    assert from_pt.metadata.num_classes == 11  # from the shape of the head
    with pytest.raises(UsageError, match="--runtime applies to exported .onnx files"):
        ddrnet.load(safetensors, runtime="openvino")
    with pytest.raises(DDRNetError, match="missing.safetensors"):
        ddrnet.load(tmp_path / "missing.safetensors")


def test_an_onnx_file_loads_as_a_model_that_runs_on_the_cpu(tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    from ddrnet.deploy import export_onnx

    model = camvid_model()
    path = export_onnx(model, tmp_path / "m.onnx", (64, 96))
    loaded = ddrnet.load(path)
    assert runtime_of(loaded) == "onnxruntime"
    assert loaded.metadata.class_names == model.metadata.class_names
    images = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        difference = (loaded(images) - model(images)).abs().max()
    assert float(difference) < 1e-3
    assert inference_setup(loaded, "auto", "auto") == (torch.device("cpu"), None)
    with pytest.raises(UsageError, match="exported files run on the CPU"):
        inference_setup(loaded, "cuda", "none")
    with pytest.raises(UsageError, match="--model does not apply"):
        ddrnet.load(path, model="ddrnet_23")
    with pytest.raises(UsageError, match="for bf16 use --runtime openvino --amp bf16"):
        ddrnet.load(path, amp="bf16")
    with pytest.raises(FileNotFoundError, match="missing.onnx: no such ONNX file"):
        ddrnet.load(tmp_path / "missing.onnx")
