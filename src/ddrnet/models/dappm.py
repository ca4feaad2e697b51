"""Deep Aggregation Pyramid Pooling Module (DAPPM), section III-C of the paper."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ddrnet.models.blocks import BN_MOMENTUM


def _bn_relu_conv(in_channels: int, out_channels: int, kernel_size: int) -> list[nn.Module]:
    """Pre-activation unit used throughout DAPPM: BatchNorm, ReLU, then a bias-free conv."""
    return [
        nn.BatchNorm2d(in_channels, momentum=BN_MOMENTUM),
        nn.ReLU(inplace=True),
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
    ]


class DAPPM(nn.Module):
    """Multi-scale context on the 1/64 feature map, fused hierarchically.

    Pools with kernels 5/9/17 and strides 2/4/8 plus a global pool give context at 1/128,
    1/256, 1/512 and image level. Each pooled map is upsampled (bilinear,
    ``align_corners=False``) to the input size, added to the previous scale's output and
    refined by a 3x3 conv, so coarse context is aggregated step by step. The five scales are
    concatenated, compressed by a 1x1 conv and added to a 1x1 shortcut.

    Shapes: ``(N, in_channels, h, w) -> (N, out_channels, h, w)`` for any ``h, w >= 1``.
    The module names (``scale0..4``, ``process1..4``, ``compression``, ``shortcut``) match
    the official implementation so that published weights load by name.
    """

    def __init__(self, in_channels: int, branch_channels: int, out_channels: int) -> None:
        super().__init__()
        pools = [
            nn.AvgPool2d(kernel_size=5, stride=2, padding=2),
            nn.AvgPool2d(kernel_size=9, stride=4, padding=4),
            nn.AvgPool2d(kernel_size=17, stride=8, padding=8),
            nn.AdaptiveAvgPool2d((1, 1)),
        ]
        self.scale0 = nn.Sequential(*_bn_relu_conv(in_channels, branch_channels, 1))
        self.scale1 = nn.Sequential(pools[0], *_bn_relu_conv(in_channels, branch_channels, 1))
        self.scale2 = nn.Sequential(pools[1], *_bn_relu_conv(in_channels, branch_channels, 1))
        self.scale3 = nn.Sequential(pools[2], *_bn_relu_conv(in_channels, branch_channels, 1))
        self.scale4 = nn.Sequential(pools[3], *_bn_relu_conv(in_channels, branch_channels, 1))
        self.process1 = nn.Sequential(*_bn_relu_conv(branch_channels, branch_channels, 3))
        self.process2 = nn.Sequential(*_bn_relu_conv(branch_channels, branch_channels, 3))
        self.process3 = nn.Sequential(*_bn_relu_conv(branch_channels, branch_channels, 3))
        self.process4 = nn.Sequential(*_bn_relu_conv(branch_channels, branch_channels, 3))
        self.compression = nn.Sequential(*_bn_relu_conv(branch_channels * 5, out_channels, 1))
        self.shortcut = nn.Sequential(*_bn_relu_conv(in_channels, out_channels, 1))

    def forward_scales(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The five aggregated scale outputs, each ``(N, branch_channels, h, w)``."""
        size = x.shape[-2:]
        outputs = [self.scale0(x)]
        pooled_branches = (self.scale1, self.scale2, self.scale3, self.scale4)
        refiners = (self.process1, self.process2, self.process3, self.process4)
        for pooled_branch, refine in zip(pooled_branches, refiners):
            context = F.interpolate(
                pooled_branch(x), size=size, mode="bilinear", align_corners=False
            )
            outputs.append(refine(context + outputs[-1]))
        return outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.compression(torch.cat(self.forward_scales(x), dim=1)) + self.shortcut(x)
