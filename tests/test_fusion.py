"""Attention in the bilateral fusions (``model.fusion``: ``ddrnet.models.fusion``): each form's
output on hand-set weights, the paper's form untouched, model files that rebuild their fusion,
starting attention from a paper-form file, folding, ONNX, pruning and training."""

from __future__ import annotations

import copy
import re

import pytest
import torch
import torch.nn.functional as F

import ddrnet
from ddrnet.config import ConfigError
from ddrnet.deploy import export_onnx, fuse_conv_bn, read_onnx_metadata, verify_onnx
from ddrnet.engine.train import TrainingError, train
from ddrnet.models import CheckpointError, load_weights, save_model
from ddrnet.models.fusion import (
    AddFusion,
    AttentionGatedFusion,
    CrossAttentionFusion,
    PixelAttentionFusion,
    make_fusion,
)
from ddrnet.models.spec import DDRNetSpec

from helpers import one_line_cli_error, real_inputs, tiny_config
from official_reference import randomize_batchnorm


def _zeroed(module: torch.nn.Module) -> torch.nn.Module:
    """Every weight and bias 0, BatchNorm statistics at mean 0 / variance 1, eval mode."""
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.zero_()
    return module.eval()


def test_each_fusion_computes_its_formula_on_hand_set_weights() -> None:
    receiver = torch.arange(24, dtype=torch.float32).reshape(1, 2, 3, 4)
    message = torch.full((1, 2, 3, 4), 10.0)
    assert torch.equal(AddFusion()(receiver, message), receiver + message)
    # Zero weights: every gate is sigmoid(0) = 1/2, and both start as the paper's sum.
    pixel = _zeroed(PixelAttentionFusion(2))
    assert torch.allclose(pixel(receiver, message), receiver + message)
    cbam = _zeroed(AttentionGatedFusion(2))
    assert torch.allclose(cbam(receiver, message), receiver + message)
    # An MLP passing the first channel's pooled values through: its gate is sigmoid(avg + max)
    # = sigmoid(20) = 1, the other's 1/2; the spatial gate stays 1/2: 4 * 1/2 * (10, 5).
    with torch.no_grad():
        cbam.attention.mlp[0].weight[0, 0] = 1.0
        cbam.attention.mlp[2].weight[0, 0] = 1.0
    gate = cbam.attention.channel_gate(message)
    assert torch.allclose(gate.flatten(), torch.tensor([1.0, 0.5]))
    expected = receiver + torch.tensor([20.0, 10.0]).reshape(1, 2, 1, 1)
    assert torch.allclose(cbam(receiver, message), expected)
    # Projections that make the similarity large where the receiver and message agree in sign.
    # (Two channels are projected to one; unit BatchNorm scales.)
    with torch.no_grad():
        pixel.query[0].weight.copy_(torch.tensor([100.0, 0.0]).reshape(1, 2, 1, 1))
        pixel.key[0].weight.copy_(torch.tensor([1.0, 0.0]).reshape(1, 2, 1, 1))
        pixel.query[1].weight.fill_(1.0)
        pixel.key[1].weight.fill_(1.0)
    positive = pixel(torch.ones(1, 2, 1, 1), torch.full((1, 2, 1, 1), 3.0))
    assert torch.allclose(
        positive, torch.full((1, 2, 1, 1), 7.0)
    )  # s = sigmoid(300) = 1: 1 + 2 * 3
    negative = pixel(torch.ones(1, 2, 1, 1), torch.full((1, 2, 1, 1), -3.0))
    assert torch.allclose(negative, torch.ones(1, 2, 1, 1))  # s = sigmoid(-300) = 0: receiver
    expected = "fusion must be one of add, cbam, pixel, transformer, got 'sum'"
    with pytest.raises(ValueError, match=expected):
        make_fusion("sum", 8)
    with pytest.raises(ValueError, match=expected):
        DDRNetSpec(fusion="sum")


def test_the_transformer_fusion_adds_what_each_position_gathers() -> None:
    """Two channels, one projected channel, one head, no pooling: query = the receiver's
    first channel, key = value = the message's first channel, output projection onto the
    first channel. Position i gathers sum_j softmax_j(q_i k_j) v_j."""
    fusion = _zeroed(CrossAttentionFusion(2, context_stride=1))
    receiver = torch.tensor([[1.0, 2.0], [5.0, 5.0]]).reshape(1, 2, 1, 2)
    message = torch.tensor([[0.0, 3.0], [7.0, 7.0]]).reshape(1, 2, 1, 2)
    assert torch.equal(fusion(receiver, message), receiver + message)  # zero output norm
    first = torch.tensor([1.0, 0.0]).reshape(1, 2, 1, 1)
    with torch.no_grad():
        for projection in (fusion.query, fusion.key, fusion.value):
            projection[0].weight.copy_(first)
            projection[1].weight.fill_(1.0)
        fusion.proj[0].weight.copy_(first.reshape(2, 1, 1, 1))
        fusion.proj[1].weight.fill_(1.0)
        fusion.proj[1].running_var.fill_(1.0 - 1e-5)  # BatchNorm's eps: exactly unit scale
        for projection in (fusion.query, fusion.key, fusion.value):
            projection[1].running_var.fill_(1.0 - 1e-5)
    e = torch.exp(torch.tensor([3.0, 6.0]))
    gathered = 3 * e / (1 + e)  # q = (1, 2), k = v = (0, 3)
    expected = receiver + message
    expected[0, 0, 0] += gathered
    assert torch.allclose(fusion(receiver, message), expected)
    # Pooled context: a 3x5 message at stride 2 gives 2x3 keys (ceil mode), any size works.
    pooled = make_fusion("transformer", 64, context_stride=2).eval()
    with torch.no_grad():
        out = pooled(torch.randn(1, 64, 3, 5), torch.randn(1, 64, 3, 5))
    assert out.shape == (1, 64, 3, 5) and pooled.heads == 1
    assert make_fusion("transformer", 256, context_stride=2).heads == 4


def test_the_paper_form_keeps_its_keys_and_metadata() -> None:
    """``fusion="add"`` has no parameters: the keys (hence official checkpoints) and the
    recorded spec are what they were before attention existed."""
    plain = ddrnet.create_model("ddrnet_23_slim", num_classes=11)
    assert not any(".fuse_" in key for key in plain.state_dict())
    assert "fusion" not in plain.metadata.spec
    for fusion in ("cbam", "pixel", "transformer"):
        model = ddrnet.create_model("ddrnet_23_slim", num_classes=11, fusion=fusion)
        assert model.metadata.spec["fusion"] == fusion
        extra = set(model.state_dict()) - set(plain.state_dict())
        assert set(plain.state_dict()) <= set(model.state_dict())
        # Two stages, two branches each: every added key belongs to a fusion module.
        assert {re.match(r"backbone\.stages\.\d\.fuse_(low|high)", k)[0] for k in extra} == {
            f"backbone.stages.{stage}.fuse_{branch}"
            for stage in (0, 1)
            for branch in ("low", "high")
        }
    deep = ddrnet.create_model("ddrnet_39", fusion="pixel")  # stage 3 in halves: three stages
    assert isinstance(deep.backbone.stages[2].fuse_high, PixelAttentionFusion)
    # A new transformer fusion is the paper's sum: the same outputs from the same weights.
    model.load_state_dict(plain.state_dict(), strict=False)
    image = torch.randn(1, 3, 72, 100)
    with torch.no_grad():
        assert torch.equal(model(image), plain(image))
    classifier = ddrnet.create_model("ddrnet_23_slim_imagenet", fusion="cbam")
    assert isinstance(classifier.backbone.stages[0].fuse_low, AttentionGatedFusion)


@pytest.mark.parametrize("fusion", ["cbam", "pixel", "transformer"])
def test_a_fusion_model_file_rebuilds_folds_and_exports(fusion, camvid_val, tmp_path) -> None:
    torch.manual_seed(0)
    model = ddrnet.create_model("ddrnet_23_slim", num_classes=11, fusion=fusion)
    randomize_batchnorm(model, seed=1)
    path = save_model(model, tmp_path / "model.safetensors", model.metadata)
    rebuilt = ddrnet.create_model(checkpoint=path)  # no name, no fusion: the file says
    inputs = real_inputs(camvid_val, sizes=((96, 128), (65, 97)))
    folded, exact_model = fuse_conv_bn(model), copy.deepcopy(model).double()
    with torch.no_grad():
        for image in inputs:
            assert torch.equal(rebuilt(image), model(image))
            # Folding is exact but for rounding: as close to float64 as the unfolded model.
            exact = exact_model(image.double())
            error_folded = float((folded(image).double() - exact).abs().max())
            error_plain = float((model(image).double() - exact).abs().max())
            assert error_folded < 2 * error_plain + 1e-5
    onnx_path = export_onnx(rebuilt, tmp_path / "model.onnx", (96, 128))
    assert read_onnx_metadata(onnx_path)["spec"]["fusion"] == fusion
    with torch.no_grad():  # random statistics give logits in the hundreds or thousands
        scale = max(float(model(image).abs().max()) for image in inputs)
    assert verify_onnx(rebuilt, onnx_path, inputs=inputs) < 1e-4 * scale


def test_attention_starts_from_a_paper_form_file_but_not_the_reverse(tmp_path) -> None:
    paper = ddrnet.create_model("ddrnet_23_slim", num_classes=11)
    official = tmp_path / "official.pth"  # an official-layout file: no metadata
    torch.save(paper.state_dict(), official)
    model = ddrnet.create_model("ddrnet_23_slim", num_classes=11, fusion="pixel")
    report = load_weights(model, str(official))
    assert report.missing and all(".fuse_" in key for key in report.missing)
    assert "backbone.stages.1.fuse_high.query.0.weight" in report.missing
    assert torch.equal(
        model.state_dict()["head.conv1.weight"], paper.state_dict()["head.conv1.weight"]
    )
    attention = save_model(model, tmp_path / "pixel.safetensors", model.metadata)
    damaged = {k: v for k, v in model.state_dict().items() if ".stages.1.fuse_high." not in k}
    with pytest.raises(
        CheckpointError, match=r"missing from the checkpoint: .*stages\.1\.fuse_high"
    ):
        load_weights(ddrnet.create_model("ddrnet_23_slim", num_classes=11, fusion="pixel"), damaged)
    with pytest.raises(CheckpointError, match="keys have no counterpart"):
        load_weights(ddrnet.create_model("ddrnet_23_slim", num_classes=11), str(attention))


def test_fusion_models_prune_and_rebuild(tmp_path) -> None:
    pytest.importorskip("torch_pruning")
    from ddrnet.models.prune import PruningError, prune_channels, prune_to_macs

    for fusion in ("cbam", "pixel", "transformer"):
        model = ddrnet.create_model("ddrnet_23_slim", num_classes=11, fusion=fusion)
        result = prune_to_macs(model, 0.5, input_size=(96, 128))
        assert result.macs_after <= 0.5 * result.macs_before
        path = save_model(result.model, tmp_path / f"{fusion}.safetensors", result.model.metadata)
        rebuilt = ddrnet.create_model(checkpoint=path)
        image = torch.randn(1, 3, 64, 96)
        with torch.no_grad():
            assert torch.equal(rebuilt(image), result.model(image))
    with pytest.raises(PruningError, match="projects an attention fusion"):
        prune_channels(model, {"backbone.stages.0.fuse_high.key.0": [0]})


def test_training_with_attention_from_a_paper_form_start(camvid_root, tmp_path) -> None:
    """``model.fusion=pixel`` fine-tunes a paper-form file (the attention starts fresh), the
    run's files rebuild it, a resume with another fusion and an attention file as the start
    of a paper-form recipe are refused in one line."""
    start = tmp_path / "start.safetensors"
    paper = ddrnet.create_model("ddrnet_23_slim", num_classes=11)
    save_model(paper, start, paper.metadata)
    extra = ["model.fusion=pixel", f"model.pretrained={start}"]
    output = train(tiny_config(camvid_root, tmp_path / "run", epochs=1, extra=extra))
    model = ddrnet.create_model(checkpoint=output / "best.safetensors")
    assert isinstance(model.backbone.stages[1].fuse_low, PixelAttentionFusion)
    with pytest.raises(TrainingError, match=r"model\.fusion=pixel \(this run: add\)"):
        train(tiny_config(camvid_root, output, epochs=2), resume=True)
    expected = (
        f"model.pretrained {output / 'best.safetensors'} was trained with model.fusion=pixel; "
        "the recipe asks for model.fusion=add"
    )
    fresh = tmp_path / "fresh"
    with pytest.raises(ConfigError, match=re.escape(expected)):
        train(
            tiny_config(
                camvid_root, fresh, extra=[f"model.pretrained={output / 'best.safetensors'}"]
            )
        )
    assert not fresh.exists()


def test_an_unknown_fusion_is_one_line(capsys, tmp_path) -> None:
    argv = ["train", "camvid_ddrnet23_slim", "model.fusion=sum", f"train.output_dir={tmp_path}"]
    message = one_line_cli_error(capsys, argv)
    assert message.endswith("'sum' is not one of ['add', 'cbam', 'pixel', 'transformer']")


def test_the_message_weights_are_recorded_and_drawn(camvid_frame) -> None:
    """``forward_features`` records where each attention fusion lets the message in (the
    weight its forward uses), and the feature figure gives each stage a row of them."""
    from ddrnet.data.io import read_rgb
    from ddrnet.viz import feature_panels

    torch.manual_seed(0)
    model = ddrnet.create_model("ddrnet_23_slim", num_classes=11, fusion="pixel")
    randomize_batchnorm(model, seed=2)
    with torch.no_grad():
        features = model.forward_features(torch.randn(1, 3, 64, 96))
        stage = model.backbone.stages[1]
        low, high = features["stage1.low_before_fusion"], features["stage1.high_before_fusion"]
        message = F.interpolate(
            stage.low_to_high(F.relu(low)), size=high.shape[-2:], mode="bilinear"
        )
        weight = features["stage1.high_message_weight"]
        assert torch.equal(weight, stage.fuse_high.message_weight(high, message))
        fused = features["stage1.high_after_fusion"]
        assert torch.allclose(fused, high + 2 * weight * message, atol=1e-5)
    assert weight.shape == (1, 1, 8, 12) and 0 <= weight.min() <= weight.max() <= 1
    assert features["stage0.low_message_weight"].shape == (1, 1, 4, 6)
    plain = ddrnet.create_model("ddrnet_23_slim", num_classes=11)
    with torch.no_grad():
        assert not any(
            "message_weight" in key for key in plain.forward_features(torch.randn(1, 3, 64, 96))
        )
    image = read_rgb(camvid_frame)
    titles = [panel.title for panel in feature_panels(model, image)]
    plain_titles = [panel.title for panel in feature_panels(plain, image)]
    assert len(titles) == len(plain_titles) + 8  # a row of four for each of the two stages
    assert any(t.startswith("stage 3: attention, low-res to high-res\n1/8, 1 ch") for t in titles)
    assert any(t.startswith("stage 4: attention, high-res to low-res\n1/32, 1 ch") for t in titles)
