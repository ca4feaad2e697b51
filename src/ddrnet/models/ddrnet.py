"""Deep Dual-Resolution Networks (Hong et al., arXiv 2101.06085): the family, assembled.

This file puts the family together and holds its variant builders, in the manner of timm:
a frozen ``DDRNetSpec`` (``spec.py``) describes a topology, ``DualResolutionBackbone`` builds
the shared trunk and the two branches with their bilateral fusions (``BilateralStage``),
``DDRNet`` adds DAPPM and the segmentation heads, and ``DDRNetClassifier`` is the ImageNet
form used for pre-training. The ``@register_model`` functions at the end (``ddrnet_23_slim``,
``ddrnet_23``, ``ddrnet_39`` and their ``_imagenet`` forms) are what ``ddrnet.create_model``
calls. The parts live beside it, one concept a file: the residual blocks and heads in
``blocks.py``, DAPPM in ``dappm.py``, the ways a branch takes in the other's features
(the paper's sum, or attention) in ``fusion.py``; ``bn_folding.py`` folds BatchNorm into the
convolutions for deployment. ``DDRNetSpec.norm="group"`` builds every BatchNorm as a
GroupNorm instead (``blocks.replace_batch_norms``), under the same names.

Every resize is bilinear with ``align_corners=False`` and takes its target size from the
tensors themselves, so any input size works (the official code computes ``H // 8`` and fails
on sizes that are not multiples of 8).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ddrnet.models.blocks import (
    BN_MOMENTUM,
    BasicBlock,
    Bottleneck,
    SegmentationHead,
    conv_bn,
    make_res_layer,
    replace_batch_norms,
    use_instance_batch_norms,
)
from ddrnet.models.dappm import DAPPM
from ddrnet.models.fusion import CrossAttentionFusion, make_fusion
from ddrnet.models.metadata import ModelMetadata
from ddrnet.models.registry import register_model
from ddrnet.models.spec import TOPOLOGY_FIELDS, WIDTH_FIELDS, DDRNetSpec
from ddrnet.models.widths import apply_channel_widths


def _upsample_to(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Bilinear resize of ``x`` to the spatial size of ``reference`` (align_corners=False)."""
    return F.interpolate(x, size=reference.shape[-2:], mode="bilinear", align_corners=False)


class BilateralStage(nn.Module):
    """One stage of both branches followed by a bilateral fusion.

    The low branch runs ``low`` (possibly strided), the high branch runs ``high`` at 1/8.
    Then, from the pre-fusion outputs of both: high -> low by strided 3x3 conv+BN
    (``high_to_low``, one conv per halving) and low -> high by 1x1 conv+BN and bilinear
    upsampling (``low_to_high``), each taken in by the other branch: added (the paper), or
    through attention (``fuse_low`` / ``fuse_high``, ``DDRNetSpec.fusion``).
    """

    def __init__(
        self,
        low_in: int,
        low_out: int,
        high_in: int,
        high_out: int,
        num_blocks: int,
        low_stride: int,
        halvings: int,
        fusion: str = "add",
    ) -> None:
        super().__init__()
        self.low = make_res_layer(BasicBlock, low_in, low_out, num_blocks, stride=low_stride)
        self.high = make_res_layer(BasicBlock, high_in, high_out, num_blocks)
        self.low_to_high = nn.Sequential(*conv_bn(low_out, high_out, 1))
        down: list[nn.Module] = []
        channels = high_out
        for step in range(halvings):
            out_channels = low_out if step == halvings - 1 else low_out // 2
            down += conv_bn(channels, out_channels, 3, stride=2)
            if step < halvings - 1:
                down.append(nn.ReLU(inplace=True))
            channels = out_channels
        self.high_to_low = nn.Sequential(*down)
        # The high branch is at 1/8 of the input, the low one at 1/16 or 1/32 (``halvings``):
        # a transformer fusion pools its context to 1/64.
        self.fuse_low = make_fusion(fusion, low_out, context_stride=8 // 2**halvings)
        self.fuse_high = make_fusion(fusion, high_out, context_stride=8)

    def forward(
        self, low: torch.Tensor, high: torch.Tensor, record: dict[str, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        low = self.low(F.relu(low))
        high = self.high(F.relu(high))
        if record is not None:
            record["low_before_fusion"], record["high_before_fusion"] = low, high
        to_low = self.high_to_low(F.relu(high))
        to_high = _upsample_to(self.low_to_high(F.relu(low)), high)
        if record is not None:
            for branch, fuse, receiver, message in (
                ("low", self.fuse_low, low, to_low),
                ("high", self.fuse_high, high, to_high),
            ):
                if hasattr(fuse, "message_weight"):  # attention: where it lets the message in
                    record[f"{branch}_message_weight"] = fuse.message_weight(receiver, message)
        return self.fuse_low(low, to_low), self.fuse_high(high, to_high)


class BackboneOutput(NamedTuple):
    """What the dual-resolution trunk hands to a task head.

    ``high``: ``(N, 4 * planes, H/8, W/8)`` after the high-branch Bottleneck.
    ``low``: ``(N, 16 * planes, H/64, W/64)`` (segmentation) or ``H/32`` (classification).
    ``aux``: ``(N, 2 * planes, H/8, W/8)``, the high branch after the stage-3 fusion, where
    the auxiliary head of deep supervision taps in.
    """

    high: torch.Tensor
    low: torch.Tensor
    aux: torch.Tensor


class DualResolutionBackbone(nn.Module):
    """Stem, shared stages 1-2, bilateral stages 3 (and 3b) and 4, and the Bottlenecks."""

    def __init__(self, spec: DDRNetSpec, low_bottleneck_stride: int) -> None:
        super().__init__()
        planes, high = spec.planes, spec.planes * 2
        # The stem convs carry biases in the official code, followed by BN anyway.
        self.stem = nn.Sequential(
            nn.Conv2d(3, planes, 3, stride=2, padding=1),
            nn.BatchNorm2d(planes, momentum=BN_MOMENTUM),
            nn.ReLU(inplace=True),
            nn.Conv2d(planes, planes, 3, stride=2, padding=1),
            nn.BatchNorm2d(planes, momentum=BN_MOMENTUM),
            nn.ReLU(inplace=True),
        )
        self.layer1 = make_res_layer(BasicBlock, planes, planes, spec.blocks[0])
        self.layer2 = make_res_layer(BasicBlock, planes, planes * 2, spec.blocks[1], stride=2)
        stage3_blocks = spec.blocks[2] // spec.stage3_splits
        stages = [
            BilateralStage(
                low_in=planes * 2 if split == 0 else planes * 4,
                low_out=planes * 4,
                high_in=planes * 2 if split == 0 else high,
                high_out=high,
                num_blocks=stage3_blocks,
                low_stride=2 if split == 0 else 1,
                halvings=1,
                fusion=spec.fusion,
            )
            for split in range(spec.stage3_splits)
        ]
        stages.append(
            BilateralStage(
                planes * 4,
                planes * 8,
                high,
                high,
                spec.blocks[3],
                2,
                halvings=2,
                fusion=spec.fusion,
            )
        )
        self.stages = nn.ModuleList(stages)
        self.aux_stage_index = spec.stage3_splits - 1
        self.high_bottleneck = make_res_layer(Bottleneck, high, high, 1)
        self.low_bottleneck = make_res_layer(
            Bottleneck, planes * 8, planes * 8, 1, stride=low_bottleneck_stride
        )

    def forward(
        self, x: torch.Tensor, record: dict[str, torch.Tensor] | None = None
    ) -> BackboneOutput:
        """``x``: ``(N, 3, H, W)`` normalised image. ``record``, if given, receives the
        branch features before and after each fusion (for visualisation)."""
        x = self.layer1(self.stem(x))
        x = self.layer2(F.relu(x))
        low, high = x, x
        aux = x
        for index, stage in enumerate(self.stages):
            stage_record: dict[str, torch.Tensor] | None = {} if record is not None else None
            low, high = stage(low, high, stage_record)
            if record is not None and stage_record is not None:
                for key, value in stage_record.items():
                    record[f"stage{index}.{key}"] = value
                record[f"stage{index}.low_after_fusion"] = low
                record[f"stage{index}.high_after_fusion"] = high
            if index == self.aux_stage_index:
                aux = high
        high = self.high_bottleneck(F.relu(high))
        low = self.low_bottleneck(F.relu(low))
        return BackboneOutput(high=high, low=low, aux=aux)


def _finish(model: nn.Module, spec: DDRNetSpec) -> None:
    """GroupNorm or IBN in place of BatchNorms when ``spec.norm`` asks, then the official
    initialisation: Kaiming-normal convolutions (fan-out, ReLU gain), unit norm layers (but
    the output norm of a transformer fusion, zero)."""
    if spec.norm == "group":
        replace_batch_norms(model, spec.norm_groups)
    elif spec.norm == "ibn":
        backbone = model.backbone
        use_instance_batch_norms([backbone.layer1, backbone.layer2, *backbone.stages[:-1]])
    for layer in model.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(layer, (nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d)):
            nn.init.ones_(layer.weight)
            nn.init.zeros_(layer.bias)
    for layer in model.modules():
        if isinstance(layer, CrossAttentionFusion):  # starts as the paper's sum
            nn.init.zeros_(layer.proj[1].weight)


class DDRNet(nn.Module):
    """DDRNet for semantic segmentation.

    ``forward`` maps a normalised image ``(N, 3, H, W)`` to class logits at 1/8 resolution,
    ``(N, num_classes, ceil(H/8), ceil(W/8))``; upsample them to ``(H, W)`` for a label map
    (``ddrnet.Predictor`` does). With ``aux_head=True`` the auxiliary head for deep
    supervision is built; it is used only by ``forward_with_aux`` during training.
    """

    output_stride = 8

    def __init__(self, spec: DDRNetSpec, num_classes: int = 19, aux_head: bool = False) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        self.spec = spec
        self.num_classes = num_classes
        # Classes, palette and normalisation; set by ``ddrnet.create_model``.
        self.metadata: ModelMetadata | None = None
        self.backbone = DualResolutionBackbone(spec, low_bottleneck_stride=2)
        self.dappm = DAPPM(spec.planes * 16, spec.dappm_planes, spec.planes * 4)
        self.head = SegmentationHead(spec.planes * 4, spec.head_planes, num_classes)
        self.aux_head = (
            SegmentationHead(spec.planes * 2, spec.head_planes, num_classes) if aux_head else None
        )
        _finish(self, spec)

    def _decode(self, features: BackboneOutput) -> torch.Tensor:
        context = _upsample_to(self.dappm(features.low), features.high)
        return self.head(features.high + context)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._decode(self.backbone(x))

    def forward_with_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Main logits and auxiliary logits (``None`` without an aux head), both at 1/8."""
        features = self.backbone(x)
        aux = self.aux_head(features.aux) if self.aux_head is not None else None
        return self._decode(features), aux

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every intermediate map worth looking at, keyed by name, plus ``logits``.

        Includes both branches before and after each bilateral fusion (with attention
        fusions also where each branch lets the other's message in,
        ``stageN.{low,high}_message_weight``, ``(N, 1, h, w)`` in (0, 1)), the five DAPPM
        scales (``dappm.scale0..4``) and the DAPPM output.
        """
        record: dict[str, torch.Tensor] = {}
        features = self.backbone(x, record)
        record["high_final"], record["low_final"] = features.high, features.low
        for index, scale in enumerate(self.dappm.forward_scales(features.low)):
            record[f"dappm.scale{index}"] = scale
        record["dappm.output"] = self.dappm(features.low)
        record["logits"] = self._decode(features)
        return record


class MainAndAuxiliary(nn.Module):
    """Training view of a ``DDRNet``: ``forward`` is its ``forward_with_aux``, returning
    ``(main_logits, aux_logits | None)``, both ``(N, num_classes, ceil(H/8), ceil(W/8))``.

    DDP and ``torch.compile`` wrap a module's ``forward``; this one lets them wrap the pass
    that feeds both heads of deep supervision. Its state dict is the model's, under
    ``model.``; checkpoints save the wrapped model itself.
    """

    def __init__(self, model: DDRNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.model.forward_with_aux(x)


class DDRNetClassifier(nn.Module):
    """The ImageNet form of DDRNet, used to pre-train the backbone.

    The low branch stays at 1/32 (its Bottleneck is not strided); the high branch is brought
    down by two strided convs and added, then a 1x1 conv, global pooling and a linear layer
    give ``(N, num_classes)`` logits.
    """

    def __init__(self, spec: DDRNetSpec, num_classes: int = 1000) -> None:
        super().__init__()
        planes = spec.planes
        self.spec = spec
        self.num_classes = num_classes
        self.metadata: ModelMetadata | None = None
        self.backbone = DualResolutionBackbone(spec, low_bottleneck_stride=1)
        self.final_down = nn.Sequential(
            *conv_bn(planes * 4, planes * 8, 3, stride=2),
            nn.ReLU(inplace=True),
            *conv_bn(planes * 8, planes * 16, 3, stride=2),
        )
        self.pre_logits = nn.Sequential(
            *conv_bn(planes * 16, spec.classifier_planes, 1),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d((1, 1)),
        )
        self.classifier = nn.Linear(spec.classifier_planes, num_classes)
        _finish(self, spec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone(x)
        fused = features.low + self.final_down(F.relu(features.high))
        return self.classifier(torch.flatten(self.pre_logits(F.relu(fused)), 1))


# ---- variant builders --------------------------------------------------------------------

SLIM_SPEC = DDRNetSpec(planes=32, blocks=(2, 2, 2, 2), head_planes=64, classifier_planes=1024)
DDRNET23_SPEC = DDRNetSpec(planes=64, blocks=(2, 2, 2, 2), head_planes=128, classifier_planes=2048)
DDRNET39_SPEC = DDRNetSpec(
    planes=64, blocks=(3, 4, 6, 3), stage3_splits=2, head_planes=256, classifier_planes=2048
)


# The spec fields a builder takes as keyword arguments (None: the variant's default): the
# norm and fusion forms, and the widths and depths of a custom topology (``ddrnet search``).
SPEC_OPTIONS = ("norm", "norm_groups", "fusion", *TOPOLOGY_FIELDS)


def _variant_spec(
    default: DDRNetSpec, spec: DDRNetSpec | None, width_multiplier: float, **options: Any
) -> DDRNetSpec:
    """The topology to build: a recorded ``spec`` as is, else ``default`` widened and with
    the ``SPEC_OPTIONS`` asked for (None: the default's)."""
    unknown = sorted(set(options) - set(SPEC_OPTIONS))
    if unknown:
        raise TypeError(f"unexpected keyword arguments {unknown}")
    asked = {key: value for key, value in options.items() if value is not None}
    if spec is not None:
        if width_multiplier != 1.0 or asked:
            raise ValueError(
                "give spec or width_multiplier/norm/fusion, not both: a spec records them"
            )
        return spec
    widths = [key for key in WIDTH_FIELDS if key in asked]
    if width_multiplier != 1.0 and widths:
        raise ValueError(f"give width_multiplier or {'/'.join(widths)}, not both")
    if "blocks" in asked:
        asked["blocks"] = tuple(asked["blocks"])
    built = default if width_multiplier == 1.0 else default.widened(width_multiplier)
    return dataclasses.replace(built, **asked)


def _segmenter(
    default: DDRNetSpec,
    num_classes: int = 19,
    aux_head: bool = False,
    width_multiplier: float = 1.0,
    spec: DDRNetSpec | None = None,
    channel_widths: dict[str, list[int]] | None = None,
    **options: Any,
) -> DDRNet:
    """A segmentation variant; ``channel_widths`` narrows a channel-pruned model's layers;
    ``options``: ``SPEC_OPTIONS``."""
    topology = _variant_spec(default, spec, width_multiplier, **options)
    model = DDRNet(topology, num_classes, aux_head)
    return apply_channel_widths(model, channel_widths or {})


def _classifier(
    default: DDRNetSpec,
    num_classes: int = 1000,
    width_multiplier: float = 1.0,
    spec: DDRNetSpec | None = None,
    channel_widths: dict[str, list[int]] | None = None,
    **options: Any,
) -> DDRNetClassifier:
    """An ImageNet form; it has no auxiliary head, so it takes no ``aux_head``."""
    topology = _variant_spec(default, spec, width_multiplier, **options)
    model = DDRNetClassifier(topology, num_classes)
    return apply_channel_widths(model, channel_widths or {})


# The paper's Table (Cityscapes): parameters in millions and GFLOPs (multiply-adds) at
# 1024x2048, as printed. The networks here, like the official code, measure 5.696 / 36.28,
# 20.149 / 143.06 and 32.360 / 281.12 (``ddrnet models``; tests/test_models.py). The paper
# gives no counts for the ImageNet forms. Registration order is the order of ``ddrnet models``.


@register_model(
    spec=SLIM_SPEC,
    task="segmentation",
    description="DDRNet-23-slim",
    paper_params_millions=5.7,
    paper_gmacs=36.3,
)
def ddrnet_23_slim(**kwargs: Any) -> DDRNet:
    """DDRNet-23-slim for segmentation (keyword arguments: ``ddrnet.models.registry``)."""
    return _segmenter(SLIM_SPEC, **kwargs)


@register_model(spec=SLIM_SPEC, task="classification", description="DDRNet-23-slim, ImageNet form")
def ddrnet_23_slim_imagenet(**kwargs: Any) -> DDRNetClassifier:
    """DDRNet-23-slim's ImageNet classifier, 1000 classes by default."""
    return _classifier(SLIM_SPEC, **kwargs)


@register_model(
    spec=DDRNET23_SPEC,
    task="segmentation",
    description="DDRNet-23",
    paper_params_millions=20.1,
    paper_gmacs=143.1,
)
def ddrnet_23(**kwargs: Any) -> DDRNet:
    """DDRNet-23 for segmentation (keyword arguments: ``ddrnet.models.registry``)."""
    return _segmenter(DDRNET23_SPEC, **kwargs)


@register_model(spec=DDRNET23_SPEC, task="classification", description="DDRNet-23, ImageNet form")
def ddrnet_23_imagenet(**kwargs: Any) -> DDRNetClassifier:
    """DDRNet-23's ImageNet classifier, 1000 classes by default."""
    return _classifier(DDRNET23_SPEC, **kwargs)


@register_model(
    spec=DDRNET39_SPEC,
    task="segmentation",
    description="DDRNet-39",
    paper_params_millions=32.3,
    paper_gmacs=281.2,
)
def ddrnet_39(**kwargs: Any) -> DDRNet:
    """DDRNet-39 for segmentation; ``width_multiplier=1.5`` gives the paper's DDRNet-39 1.5x."""
    return _segmenter(DDRNET39_SPEC, **kwargs)


@register_model(spec=DDRNET39_SPEC, task="classification", description="DDRNet-39, ImageNet form")
def ddrnet_39_imagenet(**kwargs: Any) -> DDRNetClassifier:
    """DDRNet-39's ImageNet classifier, 1000 classes by default."""
    return _classifier(DDRNET39_SPEC, **kwargs)
