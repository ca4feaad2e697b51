"""``ddrnet.load``: one function for model files, bundled names and exported files."""

from __future__ import annotations

import numpy as np
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
    # The file's suffix decides; a runtime of another format is told which ones run it.
    with pytest.raises(UsageError, match="--runtime ncnn: .*m.onnx is an ONNX file; run it with "
                       "--runtime onnxruntime or openvino"):  # fmt: skip
        ddrnet.load(path, runtime="ncnn")


def test_each_exported_format_is_told_by_its_suffix_alone() -> None:
    """One table (``ddrnet.deploy.formats``) names every exported file; a PyTorch model file,
    a bundled name or nothing is none of them."""
    from ddrnet.deploy import formats
    from ddrnet.loading import check_pytorch_file

    for name, expected in [
        ("m.onnx", formats.ONNX), ("M.ONNX", formats.ONNX), ("dir/m.param", formats.NCNN),
        ("m.pte", formats.EXECUTORCH), ("m.pt2", formats.AOTI), ("m.pt", None),
        ("m.safetensors", None), ("m.bin", None), ("camvid_ddrnet23_slim", None), (None, None),
    ]:  # fmt: skip
        assert formats.exported_format(name) is expected, name
    assert formats.format_of_runtime("ncnn") is formats.NCNN
    assert formats.format_of_runtime("openvino") is None  # ONNX files have two runtimes
    with pytest.raises(UsageError) as refused:
        check_pytorch_file("model.pte", "ddrnet prune")
    message = str(refused.value)
    assert message.startswith("ddrnet prune works on the PyTorch model")
    assert "exported ExecuTorch file model.pte" in message
    for fmt in formats.EXPORTED_FORMATS:  # what the refusal offers instead
        assert f"{fmt.label} {fmt.suffix}" in message
    check_pytorch_file("model.safetensors", "ddrnet prune")  # no refusal


def test_the_segmenting_commands_refuse_meaningless_models(tmp_path, capsys) -> None:
    """Random weights, an ImageNet classifier, a file whose metadata and weights disagree on
    the classes, an ONNX file of another input: one line each, before any image."""
    from ddrnet.loading import load_segmenter
    from ddrnet.models import CheckpointError

    from helpers import one_line_cli_error

    frame = "src/ddrnet/assets/demo/0016E5_07959.png"
    error = one_line_cli_error(capsys, ["predict", frame, "--model", "ddrnet_23", "-o", "o"])
    assert "--model ddrnet_23 without --checkpoint is a network with random weights" in error
    classifier = ddrnet.create_model("ddrnet_23_slim_imagenet", num_classes=4)
    path = ddrnet.save_model(classifier, tmp_path / "classifier.safetensors", classifier.metadata)
    with pytest.raises(UsageError, match="an ImageNet classifier"):
        load_segmenter(path)
    segmenter = ddrnet.create_model("ddrnet_23_slim", num_classes=19)
    eleven = ddrnet.load().metadata
    mixed = ddrnet.save_model(segmenter, tmp_path / "mixed.safetensors", eleven)
    with pytest.raises(CheckpointError, match=r"says 11 classes, .* \['head.conv2'\]"):
        ddrnet.load(mixed)
    assert ddrnet.create_model(checkpoint=mixed, num_classes=5).num_classes == 5  # fine-tuning


def test_an_onnx_file_of_a_fixed_or_foreign_input_is_refused_in_one_line(tmp_path) -> None:
    import onnx
    from onnx import TensorProto, helper

    from ddrnet.deploy.onnx_file import ExportError

    def relu_file(name: str, shape: list[int]):
        tensors = [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in "xy"]
        node = helper.make_node("Relu", ["x"], ["y"])
        graph = helper.make_graph([node], name, tensors[:1], tensors[1:])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.save(model, tmp_path / f"{name}.onnx")
        return tmp_path / f"{name}.onnx"

    with pytest.raises(ExportError, match=r"its input is \(1, 12\), not \(N, 3, H, W\)"):
        ddrnet.load(relu_file("flat", [1, 12]))
    fixed = ddrnet.Predictor(ddrnet.load(relu_file("fixed", [1, 3, 4, 4])))
    assert fixed.predict(np.zeros((4, 4, 3), np.uint8)).shape == (4, 4)
    with pytest.raises(ExportError, match="takes 4x4 images only .* not 6x5"):
        fixed.predict(np.zeros((5, 6, 3), np.uint8))
