"""Residual building blocks shared by every DDRNet variant.

The layer layout follows the official implementation (ydhongHIT/DDRNet) so that
published weights map onto these modules one to one.
"""

from __future__ import annotations

import math

import torch
from torch import nn

# The official code trains with momentum 0.1 (PyTorch's default); kept explicit for clarity.
BN_MOMENTUM = 0.1


def conv_bn(
    in_channels: int, out_channels: int, kernel_size: int, stride: int = 1
) -> list[nn.Module]:
    """Convolution without bias followed by BatchNorm, as a list ready for ``nn.Sequential``."""
    return [
        nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size=kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            bias=False,
        ),
        nn.BatchNorm2d(out_channels, momentum=BN_MOMENTUM),
    ]


def group_norm(channels: int, max_groups: int) -> nn.GroupNorm:
    """GroupNorm over ``channels`` with the most groups up to ``max_groups`` that divide
    them, ``gcd(channels, max_groups)`` (32 channels, 32 -> 32 groups; 48 -> 16), and
    BatchNorm's eps (1e-5)."""
    return nn.GroupNorm(math.gcd(channels, max_groups), channels)


def replace_batch_norms(module: nn.Module, max_groups: int) -> None:
    """Replace every ``BatchNorm2d`` under ``module`` by ``group_norm`` of its width, in place.

    Each keeps its name, so state-dict keys stay ``...bn1.weight``/``...bn1.bias`` (GroupNorm
    has no running statistics). Done on the built network rather than threading a norm choice
    through every block, so the block code and the official key layout stay one.
    """
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, group_norm(child.num_features, max_groups))
        else:
            replace_batch_norms(child, max_groups)


class InstanceBatchNorm(nn.Module):
    """IBN-Net's mix (Pan et al., ECCV 2018, "IBN-a"): the first ``channels // 2`` channels
    are instance-normalised (affine), the rest batch-normalised.

    Instance normalisation takes each image's own contrast and colour statistics out of the
    features, which is what makes the network less sensitive to the look of a street it has
    not seen; the batch-normalised half keeps what tells classes apart.
    Shapes: ``(N, channels, H, W) -> (N, channels, H, W)``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        if channels < 2:
            raise ValueError(f"instance-batch norm needs at least 2 channels, got {channels}")
        self.half = channels // 2
        self.instance = nn.InstanceNorm2d(self.half, affine=True)
        self.batch = nn.BatchNorm2d(channels - self.half, momentum=BN_MOMENTUM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        instance_part, batch_part = torch.split(x, [self.half, x.shape[1] - self.half], dim=1)
        return torch.cat((self.instance(instance_part), self.batch(batch_part)), dim=1)


def use_instance_batch_norms(layers: list[nn.Module]) -> None:
    """Replace the first norm (``bn1``) of every ``BasicBlock`` under ``layers`` by an
    ``InstanceBatchNorm`` of its width, in place (IBN-a's placement: inside the residual
    branch, so the identity path keeps its batch statistics)."""
    for layer in layers:
        for block in layer.modules():
            if isinstance(block, BasicBlock):
                block.bn1 = InstanceBatchNorm(block.bn1.num_features)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18 style).

    Shapes: ``(N, in_channels, H, W) -> (N, channels, ceil(H / stride), ceil(W / stride))``.
    ``final_relu=False`` leaves the sum un-activated; DDRNet does that on the last block of
    every stage because the fusion that follows adds to the raw sum and activates later.
    """

    expansion = 1

    def __init__(
        self,
        in_channels: int,
        channels: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        final_relu: bool = True,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels, momentum=BN_MOMENTUM)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels, momentum=BN_MOMENTUM)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.final_relu = final_relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + identity
        return self.relu(out) if self.final_relu else out


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 residual block with channel expansion 2 (DDRNet's last stage).

    Shapes: ``(N, in_channels, H, W) -> (N, 2 * channels, ceil(H / stride), ceil(W / stride))``.
    """

    expansion = 2

    def __init__(
        self,
        in_channels: int,
        channels: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        final_relu: bool = False,
    ) -> None:
        super().__init__()
        out_channels = channels * self.expansion
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels, momentum=BN_MOMENTUM)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels, momentum=BN_MOMENTUM)
        self.conv3 = nn.Conv2d(channels, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels, momentum=BN_MOMENTUM)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.final_relu = final_relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out = out + identity
        return self.relu(out) if self.final_relu else out


def make_res_layer(
    block: type[BasicBlock] | type[Bottleneck],
    in_channels: int,
    channels: int,
    num_blocks: int,
    stride: int = 1,
) -> nn.Sequential:
    """Stack ``num_blocks`` residual blocks; the last one ends without ReLU (official layout).

    A 1x1 strided projection is added to the first block when the shape changes.
    """
    out_channels = channels * block.expansion
    downsample = None
    if stride != 1 or in_channels != out_channels:
        downsample = nn.Sequential(*conv_bn(in_channels, out_channels, 1, stride=stride))
    # As in the official code, the first block keeps the default ending of its type (ReLU for
    # BasicBlock, none for Bottleneck) and every later block but the last ends with ReLU.
    layers: list[nn.Module] = [
        block(in_channels, channels, stride, downsample, final_relu=block is BasicBlock)
    ]
    for index in range(1, num_blocks):
        is_last = index == num_blocks - 1
        layers.append(block(out_channels, channels, 1, None, final_relu=not is_last))
    return nn.Sequential(*layers)


class SegmentationHead(nn.Module):
    """BN-ReLU-3x3 conv, BN-ReLU-1x1 conv to class logits. Resolution is unchanged.

    Shapes: ``(N, in_channels, H, W) -> (N, num_classes, H, W)``.
    """

    def __init__(self, in_channels: int, mid_channels: int, num_classes: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels, momentum=BN_MOMENTUM)
        self.conv1 = nn.Conv2d(in_channels, mid_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid_channels, momentum=BN_MOMENTUM)
        self.conv2 = nn.Conv2d(mid_channels, num_classes, 1, bias=True)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(self.relu(self.bn1(x)))
        return self.conv2(self.relu(self.bn2(x)))
