"""The networks: topology against the paper and the official code, any input size."""

from __future__ import annotations

import pytest
import torch

import ddrnet
from ddrnet.models import DDRNet, count_macs, count_parameters, variant_info

from official_reference import official_network, randomize_batchnorm

SEGMENTATION = ddrnet.list_models("segmentation")
CLASSIFICATION = ddrnet.list_models("classification")


# Measured counts (millions of parameters, GMACs at 1024x2048 / ImageNet at 224x224), the
# official code's too; the paper prints them to one decimal.
MEASURED = {
    "ddrnet_23_slim": (5.696, 36.28),
    "ddrnet_23": (20.149, 143.06),
    "ddrnet_39": (32.360, 281.12),
    "ddrnet_23_slim_imagenet": (7.575, 0.97),
    "ddrnet_23_imagenet": (28.217, 3.87),
    "ddrnet_39_imagenet": (40.130, 6.94),
}


@pytest.mark.parametrize("name", SEGMENTATION)
def test_segmentation_counts_match_the_paper(name: str) -> None:
    info = variant_info(name)
    model = ddrnet.create_model(name, num_classes=19, aux_head=True)
    params = count_parameters(model, exclude_prefixes=("aux_head.",))
    macs = count_macs(model, (1024, 2048))
    assert (round(params / 1e6, 3), round(macs / 1e9, 2)) == MEASURED[name]
    # Within the paper's printed precision (DDRNet-39 is 0.06M and 0.08 G off its table, as
    # the official code is: the paper's figures for it must come from a slightly other count).
    assert params / 1e6 == pytest.approx(info.paper_params_millions, abs=0.1)
    assert macs / 1e9 == pytest.approx(info.paper_gmacs, abs=0.1)


def test_exact_counts_of_the_slim_model() -> None:
    # Hand-checked totals that the rounded paper figures come from.
    model = ddrnet.create_model("ddrnet_23_slim")
    assert count_parameters(model) == 5_695_987
    assert count_macs(model, (1024, 2048)) == 36_281_319_424


@pytest.mark.parametrize("name", CLASSIFICATION)
def test_classification_forms_count_and_run(name: str) -> None:
    model = ddrnet.create_model(name)
    params, macs = count_parameters(model), count_macs(model, (224, 224))
    assert (round(params / 1e6, 3), round(macs / 1e9, 2)) == MEASURED[name]
    assert variant_info(name).paper_params_millions is None  # the paper gives none
    assert model(torch.randn(2, 3, 224, 224)).shape == (2, 1000)


SIZE_CASES = [
    (name, size)
    for name in SEGMENTATION
    for size in ([(64, 64), (361, 479), (360, 480)] if name != "ddrnet_39" else [(361, 479)])
]


@pytest.mark.parametrize(("name", "size"), SIZE_CASES)
def test_forward_and_backward_at_any_size(name: str, size: tuple[int, int]) -> None:
    model = ddrnet.create_model(name, num_classes=5, aux_head=True).train()
    images = torch.randn(2, 3, *size, requires_grad=True)
    logits, aux = model.forward_with_aux(images)
    expected = (2, 5, -(-size[0] // 8), -(-size[1] // 8))
    assert logits.shape == expected and aux is not None and aux.shape == expected
    (logits.mean() + 0.4 * aux.mean()).backward()
    assert images.grad is not None and torch.isfinite(images.grad).all()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("size", [(720, 960), (1024, 2048)])
def test_large_inputs_in_eval_mode(size: tuple[int, int]) -> None:
    model = ddrnet.create_model("ddrnet_23_slim", num_classes=11)
    with torch.no_grad():
        assert model(torch.randn(1, 3, *size)).shape == (1, 11, size[0] // 8, size[1] // 8)


def test_forward_returns_one_tensor_even_with_aux_head() -> None:
    model = ddrnet.create_model("ddrnet_23_slim", num_classes=3, aux_head=True).train()
    images = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        logits = model(images)  # the main head's logits alone, not (main, aux)
        main, aux = model.forward_with_aux(images)
    assert logits.shape == aux.shape == (2, 3, 8, 12)
    assert torch.equal(logits, main) and not torch.equal(logits, aux)


@pytest.mark.parametrize("name", SEGMENTATION + CLASSIFICATION)
def test_official_layout_reproduces_the_official_network(name: str) -> None:
    """Weights in the official key layout give the same outputs as the official forward."""
    segmentation = name in SEGMENTATION
    official = official_network(name, augment=True) if segmentation else official_network(name)
    randomize_batchnorm(official)
    official.eval()
    state = official.state_dict()
    if segmentation:  # as published: the FullModel wrapper prefix and the loss weight
        state = {f"model.{k}": v for k, v in state.items()}
        state["loss.criterion.weight"] = torch.ones(19)
    ours = ddrnet.create_model(name, aux_head=segmentation)
    report = ddrnet.load_weights(ours, state)
    assert report.layout == "official" and not report.missing and not report.reinitialised
    images = torch.randn(1, 3, 128, 192) if segmentation else torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = official(images)
        if segmentation:
            main, aux = ours.eval().forward_with_aux(images)
            assert (main - expected[0]).abs().max() < 1e-5
            assert (aux - expected[1]).abs().max() < 1e-5
        else:
            assert (ours.eval()(images) - expected).abs().max() < 1e-5


def test_forward_features_exposes_branches_and_dappm_scales() -> None:
    model = ddrnet.create_model("ddrnet_39", num_classes=4)
    with torch.no_grad():
        features = model.forward_features(torch.randn(1, 3, 128, 128))
        logits = model(torch.randn(1, 3, 128, 128))
    for stage in range(3):
        for key in ("low_before_fusion", "high_before_fusion", "low_after_fusion"):
            assert f"stage{stage}.{key}" in features
    assert features["stage0.high_after_fusion"].shape == (1, 128, 16, 16)
    assert [features[f"dappm.scale{i}"].shape[1] for i in range(5)] == [128] * 5
    assert features["logits"].shape == logits.shape


def test_width_multiplier_widens_the_branches() -> None:
    wide = ddrnet.create_model("ddrnet_39", width_multiplier=1.5)
    assert wide.spec.planes == 96
    assert count_parameters(wide) > 1.9 * count_parameters(ddrnet.create_model("ddrnet_39"))
    with torch.no_grad():
        assert wide(torch.randn(1, 3, 72, 88)).shape == (1, 19, 9, 11)


def test_a_custom_topology_builds_the_blocks_and_widths_asked_and_its_file_rebuilds_it(
    tmp_path,
) -> None:
    """``ddrnet search``'s candidates: blocks per stage 1-4, stem, DAPPM and head widths."""
    model = ddrnet.create_model(
        "ddrnet_23_slim", num_classes=11, blocks=[1, 2, 3, 1], planes=24, dappm_planes=40,
        head_planes=32,
    )  # fmt: skip
    backbone = model.backbone
    assert (len(backbone.layer1), len(backbone.layer2)) == (1, 2)
    assert [len(stage.low) for stage in backbone.stages] == [3, 1]
    assert [len(stage.high) for stage in backbone.stages] == [3, 1]  # stages 3-4 at 1/8 too
    assert backbone.stem[0].out_channels == 24 and model.head.conv1.out_channels == 32
    assert model.dappm.scale0[2].out_channels == 40 and model.dappm.scale0[0].num_features == 384
    assert count_macs(model, (360, 480)) < count_macs(
        ddrnet.create_model("ddrnet_23_slim"), (360, 480)
    )
    path = ddrnet.save_model(model, tmp_path / "custom.safetensors", model.metadata)
    rebuilt = ddrnet.create_model(checkpoint=path)
    assert rebuilt.spec == model.spec and rebuilt.spec.blocks == (1, 2, 3, 1)
    with pytest.raises(ValueError, match="give width_multiplier or planes, not both"):
        ddrnet.create_model("ddrnet_23_slim", planes=24, width_multiplier=0.5)
    with pytest.raises(ValueError, match=r"blocks must be four counts of 1 to 16"):
        ddrnet.create_model("ddrnet_23_slim", blocks=[1, 0, 1, 1])
    with pytest.raises(ValueError, match="stage 3 has 3 blocks, which cannot be split into 2"):
        ddrnet.create_model("ddrnet_39", blocks=[1, 1, 3, 1])


def test_unknown_model_name_lists_the_valid_ones() -> None:
    with pytest.raises(KeyError, match="ddrnet_23_slim"):
        ddrnet.create_model("ddrnet_99")
    # a bundled model's name where an architecture goes: the call that builds it
    with pytest.raises(KeyError, match=r"create_model\(checkpoint='camvid_ddrnet23_slim'\)"):
        ddrnet.create_model("camvid_ddrnet23_slim")


def test_create_model_goes_through_the_registered_builder(monkeypatch) -> None:
    from ddrnet.models import registry
    from ddrnet.models.ddrnet import SLIM_SPEC, ddrnet_23_slim

    monkeypatch.setattr(registry, "_VARIANTS", dict(registry._VARIANTS))  # forgotten afterwards
    calls: list[dict] = []

    @ddrnet.register_model(spec=SLIM_SPEC, task="segmentation", description="a test variant")
    def test_variant(**kwargs) -> DDRNet:
        calls.append(kwargs)
        return ddrnet_23_slim(**kwargs)

    assert "test_variant" in ddrnet.list_models("segmentation")
    model = ddrnet.create_model("test_variant", num_classes=3, aux_head=True)
    assert calls == [{"num_classes": 3, "aux_head": True}]
    assert model.metadata.architecture == "test_variant" and model.aux_head is not None
    ddrnet.create_model("test_variant", width_multiplier=1.5)
    assert calls[-1] == {"width_multiplier": 1.5}
    with pytest.raises(ValueError, match="registered twice"):
        ddrnet.register_model(spec=SLIM_SPEC, task="segmentation", description="")(test_variant)


def test_a_pruned_file_is_rebuilt_by_its_builder_from_its_metadata(monkeypatch) -> None:
    import dataclasses

    from ddrnet.models import registry

    info = variant_info("ddrnet_23_slim")
    calls: list[dict] = []

    def spy(**kwargs) -> torch.nn.Module:
        calls.append(kwargs)
        return info.builder(**kwargs)

    variants = dict(registry._VARIANTS, ddrnet_23_slim=dataclasses.replace(info, builder=spy))
    monkeypatch.setattr(registry, "_VARIANTS", variants)
    weights = ddrnet.DDRNet23Slim_Weights.CAMVID_FAST
    model = ddrnet.create_model(weights=weights)  # no name: the file's metadata names it
    # Once on the meta device (does the file fit?), once for real: the same arguments.
    assert len(calls) == 2 and calls[0] == calls[1]
    assert calls[0]["channel_widths"] == weights.metadata.channel_widths != {}
    assert calls[0]["spec"].to_dict() == weights.metadata.spec
    # Narrowed by the widths: the high-resolution branch (spec.planes * 2 unpruned) is thinner.
    assert model.backbone.stages[0].high[0].conv1.out_channels < info.spec.planes * 2


@pytest.mark.parametrize("name", SEGMENTATION + CLASSIFICATION)
def test_each_builder_makes_its_registered_topology(name: str) -> None:
    info = variant_info(name)
    with torch.device("meta"):  # shapes only
        model = info.builder()
    assert model.spec == info.spec and info.builder.__name__ == name
    assert model.num_classes == (19 if info.task == "segmentation" else 1000)


def test_a_classifier_has_no_auxiliary_head() -> None:
    with pytest.raises(ValueError, match="no auxiliary head"):
        ddrnet.create_model("ddrnet_23_slim_imagenet", aux_head=True)


def test_group_norm_replaces_every_batch_norm_with_gcd_groups() -> None:
    model = ddrnet.create_model("ddrnet_23_slim", num_classes=5, aux_head=True, norm="group")
    batch = ddrnet.create_model("ddrnet_23_slim", num_classes=5, aux_head=True)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    group_norms = [m for m in model.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert len(group_norms) == sum(isinstance(m, torch.nn.BatchNorm2d) for m in batch.modules())
    # The same names: BatchNorm's keys without its running statistics.
    statistics = ("running_mean", "running_var", "num_batches_tracked")
    assert set(model.state_dict()) == {k for k in batch.state_dict() if not k.endswith(statistics)}
    layer = model.backbone.layer1[0].bn1  # 32 channels, at most 32 groups: gcd 32
    assert (layer.num_groups, layer.num_channels) == (32, 32)
    assert torch.equal(layer.weight, torch.ones(32)) and torch.equal(layer.bias, torch.zeros(32))
    assert model.dappm.compression[0].num_groups == 32  # 640 channels
    # DDRNet-23-slim 1.5x: 48 stem channels, gcd(48, 32) = 16 groups; 12 at most: gcd 12.
    wide = ddrnet.create_model("ddrnet_23_slim", norm="group", width_multiplier=1.5)
    assert (wide.backbone.stem[1].num_groups, wide.backbone.stem[1].num_channels) == (16, 48)
    few = ddrnet.create_model("ddrnet_23_slim", norm="group", norm_groups=12)
    assert few.backbone.stem[1].num_groups == 4  # gcd(32, 12)
    assert few.spec.to_dict()["norm"] == "group" and few.spec.to_dict()["norm_groups"] == 12
    classifier = ddrnet.create_model("ddrnet_23_slim_imagenet", norm="group")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in classifier.modules())
    assert classifier.final_down[1].num_groups == 32
    model.train()  # single images train: no batch statistics
    main, aux = model.forward_with_aux(torch.randn(1, 3, 64, 64))
    (main.sum() + aux.sum()).backward()


def test_ibn_norms_half_the_channels_per_image_in_stages_1_to_3() -> None:
    from ddrnet.models.blocks import InstanceBatchNorm

    model = ddrnet.create_model("ddrnet_23_slim", num_classes=5, aux_head=True, norm="ibn")
    mixed = [name for name, m in model.named_modules() if isinstance(m, InstanceBatchNorm)]
    # IBN-a: the first norm of each BasicBlock of stages 1, 2 and both branches of stage 3.
    assert mixed == [
        f"backbone.{layer}.{block}.bn1"
        for layer in ("layer1", "layer2", "stages.0.low", "stages.0.high")
        for block in (0, 1)
    ]
    assert model.backbone.layer2[0].bn1.instance.num_features == 32  # of 64 channels
    assert isinstance(model.backbone.stages[1].low[0].bn1, torch.nn.BatchNorm2d)
    assert ddrnet.create_model("ddrnet_39", norm="ibn").spec.to_dict()["norm"] == "ibn"
    # Hand-computed: channels 0-1 by each image's own mean and variance over H x W,
    # channels 2-4 by the batch's over N x H x W (training mode, unit affine).
    layer = InstanceBatchNorm(5).train()
    x = torch.randn(3, 5, 4, 6, dtype=torch.float64)
    layer.double()
    first, rest = x[:, :2], x[:, 2:]
    per_image = (first - first.mean((2, 3), keepdim=True)) / torch.sqrt(
        first.var((2, 3), unbiased=False, keepdim=True) + 1e-5
    )
    per_batch = (rest - rest.mean((0, 2, 3), keepdim=True)) / torch.sqrt(
        rest.var((0, 2, 3), unbiased=False, keepdim=True) + 1e-5
    )
    torch.testing.assert_close(layer(x), torch.cat((per_image, per_batch), 1))
    with pytest.raises(ValueError, match="at least 2 channels, got 1"):
        InstanceBatchNorm(1)
    model.train()
    main, aux = model.forward_with_aux(torch.randn(2, 3, 64, 64))
    (main.sum() + aux.sum()).backward()
    assert model.backbone.layer1[0].bn1.instance.weight.grad is not None


def test_norm_is_validated_and_old_spec_dicts_mean_batch_norm_and_the_paper_fusion() -> None:
    from ddrnet.models.ddrnet import SLIM_SPEC
    from ddrnet.models.spec import DDRNetSpec

    with pytest.raises(ValueError, match="norm must be one of batch, group, ibn, got 'layer'"):
        DDRNetSpec(norm="layer")
    with pytest.raises(ValueError, match="norm_groups must be at least 1, got 0"):
        DDRNetSpec(norm_groups=0)
    # What files written before GroupNorm existed record, and what BatchNorm files still do.
    old = {
        "planes": 32,
        "blocks": [2, 2, 2, 2],
        "stage3_splits": 1,
        "dappm_planes": 128,
        "head_planes": 64,
        "classifier_planes": 1024,
    }
    assert SLIM_SPEC.to_dict() == old
    assert DDRNetSpec.from_dict(old) == SLIM_SPEC and SLIM_SPEC.norm == "batch"
    model = ddrnet.create_model(weights=ddrnet.DDRNet23Slim_Weights.CAMVID)
    assert "norm" not in model.metadata.spec and model.spec.norm == "batch"
    assert isinstance(model.backbone.stem[1], torch.nn.BatchNorm2d)
    assert DDRNetSpec.from_dict(old).fusion == "add" and "fusion" not in model.metadata.spec
    with pytest.raises(ValueError, match="give spec or width_multiplier/norm/fusion, not both"):
        variant_info("ddrnet_23_slim").builder(spec=SLIM_SPEC, norm="group")
