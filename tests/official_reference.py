"""An independent re-implementation of the published DDRNet networks, for tests only.

It keeps the official module names (``conv1``, ``layer3_``, ``compression3``, ``down3``,
``spp``, ``final_layer``, ``seghead_extra``; ``layer3_1``/``layer3_2`` for DDRNet-39;
``down5``/``last_layer``/``linear`` for the ImageNet form) and the official forward pass,
including its ``H // 8`` output-size arithmetic, so a state dict of this network has exactly
the key layout of the published checkpoints. Tests load such state dicts into ``ddrnet`` and
compare outputs. It is written for this purpose and deliberately shares no code with the
package.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels)


class _Basic(nn.Module):
    expansion = 1

    def __init__(self, cin, cout, stride=1, downsample=None, no_relu=False):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = _bn(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = _bn(cout)
        self.downsample = downsample
        self.no_relu = no_relu

    def forward(self, x):
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        out = out + (x if self.downsample is None else self.downsample(x))
        return out if self.no_relu else torch.relu(out)


class _Bottle(nn.Module):
    expansion = 2

    def __init__(self, cin, cmid, stride=1, downsample=None, no_relu=True):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cmid, 1, bias=False)
        self.bn1 = _bn(cmid)
        self.conv2 = nn.Conv2d(cmid, cmid, 3, stride, 1, bias=False)
        self.bn2 = _bn(cmid)
        self.conv3 = nn.Conv2d(cmid, cmid * 2, 1, bias=False)
        self.bn3 = _bn(cmid * 2)
        self.downsample = downsample
        self.no_relu = no_relu

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out = out + (x if self.downsample is None else self.downsample(x))
        return out if self.no_relu else torch.relu(out)


def _layer(block, cin, planes, n, stride=1):
    downsample = None
    if stride != 1 or cin != planes * block.expansion:
        downsample = nn.Sequential(
            nn.Conv2d(cin, planes * block.expansion, 1, stride, bias=False),
            _bn(planes * block.expansion),
        )
    blocks = [block(cin, planes, stride, downsample)]
    for i in range(1, n):
        blocks.append(block(planes * block.expansion, planes, 1, no_relu=(i == n - 1)))
    return nn.Sequential(*blocks)


def _brc(cin, cout, k):
    return [_bn(cin), nn.ReLU(), nn.Conv2d(cin, cout, k, padding=k // 2, bias=False)]


class _SPP(nn.Module):
    def __init__(self, cin, cb, cout):
        super().__init__()
        self.scale1 = nn.Sequential(nn.AvgPool2d(5, 2, 2), *_brc(cin, cb, 1))
        self.scale2 = nn.Sequential(nn.AvgPool2d(9, 4, 4), *_brc(cin, cb, 1))
        self.scale3 = nn.Sequential(nn.AvgPool2d(17, 8, 8), *_brc(cin, cb, 1))
        self.scale4 = nn.Sequential(nn.AdaptiveAvgPool2d(1), *_brc(cin, cb, 1))
        self.scale0 = nn.Sequential(*_brc(cin, cb, 1))
        for i in range(1, 5):
            setattr(self, f"process{i}", nn.Sequential(*_brc(cb, cb, 3)))
        self.compression = nn.Sequential(*_brc(cb * 5, cout, 1))
        self.shortcut = nn.Sequential(*_brc(cin, cout, 1))

    def forward(self, x):
        h, w = x.shape[-2:]
        outs = [self.scale0(x)]
        for i in range(1, 5):
            up = F.interpolate(getattr(self, f"scale{i}")(x), size=[h, w], mode="bilinear")
            outs.append(getattr(self, f"process{i}")(up + outs[-1]))
        return self.compression(torch.cat(outs, 1)) + self.shortcut(x)


class _Head(nn.Module):
    def __init__(self, cin, cmid, cout):
        super().__init__()
        self.bn1 = _bn(cin)
        self.conv1 = nn.Conv2d(cin, cmid, 3, padding=1, bias=False)
        self.bn2 = _bn(cmid)
        self.conv2 = nn.Conv2d(cmid, cout, 1, bias=True)

    def forward(self, x):
        return self.conv2(torch.relu(self.bn2(self.conv1(torch.relu(self.bn1(x))))))


class OfficialDualResNet(nn.Module):
    """``depth`` 23 or 39; ``classification`` gives the ImageNet network."""

    def __init__(
        self,
        depth=23,
        planes=32,
        head_planes=64,
        num_classes=19,
        augment=False,
        classification=False,
        last_planes=1024,
    ):
        super().__init__()
        counts = [2, 2, 2, 2] if depth == 23 else [3, 4, 6, 3]
        hp = planes * 2
        self.depth, self.augment, self.classification = depth, augment, classification
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, planes, 3, 2, 1),
            _bn(planes),
            nn.ReLU(),
            nn.Conv2d(planes, planes, 3, 2, 1),
            _bn(planes),
            nn.ReLU(),
        )
        self.layer1 = _layer(_Basic, planes, planes, counts[0])
        self.layer2 = _layer(_Basic, planes, planes * 2, counts[1], 2)
        names = ["3"] if depth == 23 else ["3_1", "3_2"]
        n3 = counts[2] // len(names)
        for i, name in enumerate(names):
            setattr(
                self,
                f"layer{name}",
                _layer(_Basic, planes * (2 if i == 0 else 4), planes * 4, n3, 2 if i == 0 else 1),
            )
            setattr(self, f"layer{name}_", _layer(_Basic, planes * 2 if i == 0 else hp, hp, n3))
            setattr(
                self,
                f"compression{name}",
                nn.Sequential(nn.Conv2d(planes * 4, hp, 1, bias=False), _bn(hp)),
            )
            setattr(
                self,
                f"down{name}",
                nn.Sequential(nn.Conv2d(hp, planes * 4, 3, 2, 1, bias=False), _bn(planes * 4)),
            )
        self.stage3_names = names
        self.layer4 = _layer(_Basic, planes * 4, planes * 8, counts[3], 2)
        self.layer4_ = _layer(_Basic, hp, hp, counts[3])
        self.compression4 = nn.Sequential(nn.Conv2d(planes * 8, hp, 1, bias=False), _bn(hp))
        self.down4 = nn.Sequential(
            nn.Conv2d(hp, planes * 4, 3, 2, 1, bias=False),
            _bn(planes * 4),
            nn.ReLU(),
            nn.Conv2d(planes * 4, planes * 8, 3, 2, 1, bias=False),
            _bn(planes * 8),
        )
        self.layer5_ = _layer(_Bottle, hp, hp, 1)
        self.layer5 = _layer(_Bottle, planes * 8, planes * 8, 1, 1 if classification else 2)
        if classification:
            self.down5 = nn.Sequential(
                nn.Conv2d(planes * 4, planes * 8, 3, 2, 1, bias=False),
                _bn(planes * 8),
                nn.ReLU(),
                nn.Conv2d(planes * 8, planes * 16, 3, 2, 1, bias=False),
                _bn(planes * 16),
            )
            self.last_layer = nn.Sequential(
                nn.Conv2d(planes * 16, last_planes, 1, bias=False),
                _bn(last_planes),
                nn.ReLU(),
                nn.AdaptiveAvgPool2d(1),
            )
            self.linear = nn.Linear(last_planes, num_classes)
        else:
            self.spp = _SPP(planes * 16, 128, planes * 4)
            if augment:
                self.seghead_extra = _Head(hp, head_planes, num_classes)
            self.final_layer = _Head(planes * 4, head_planes, num_classes)

    def forward(self, x):
        ho, wo = x.shape[-2] // 8, x.shape[-1] // 8
        r = torch.relu
        x = self.layer1(self.conv1(x))
        l2 = self.layer2(r(x))
        x, x_ = l2, l2
        for name in self.stage3_names:
            x = getattr(self, f"layer{name}")(r(x))
            x_ = getattr(self, f"layer{name}_")(r(x_))
            low = x
            x = x + getattr(self, f"down{name}")(r(x_))
            x_ = x_ + F.interpolate(
                getattr(self, f"compression{name}")(r(low)), size=[ho, wo], mode="bilinear"
            )
        temp = x_
        x = self.layer4(r(x))
        x_ = self.layer4_(r(x_))
        low = x
        x = x + self.down4(r(x_))
        x_ = x_ + F.interpolate(self.compression4(r(low)), size=[ho, wo], mode="bilinear")
        if self.classification:
            x = self.layer5(r(x)) + self.down5(r(self.layer5_(r(x_))))
            return self.linear(torch.flatten(self.last_layer(r(x)), 1))
        x_ = self.layer5_(r(x_))
        x = F.interpolate(self.spp(self.layer5(r(x))), size=[ho, wo], mode="bilinear")
        out = self.final_layer(x + x_)
        if self.augment:
            return [out, self.seghead_extra(temp)]
        return out


OFFICIAL_CONFIGS = {
    "ddrnet_23_slim": dict(depth=23, planes=32, head_planes=64, last_planes=1024),
    "ddrnet_23": dict(depth=23, planes=64, head_planes=128, last_planes=2048),
    "ddrnet_39": dict(depth=39, planes=64, head_planes=256, last_planes=2048),
}


def official_network(name: str, **kwargs) -> OfficialDualResNet:
    """The official network for a registry name (``*_imagenet`` gives the classifier)."""
    classification = name.endswith("_imagenet")
    base = name.removesuffix("_imagenet")
    config = dict(OFFICIAL_CONFIGS[base])
    if classification:
        config.update(classification=True, num_classes=kwargs.pop("num_classes", 1000))
    config.update(kwargs)
    head_planes = config.pop("head_planes")
    last_planes = config.pop("last_planes")
    return OfficialDualResNet(head_planes=head_planes, last_planes=last_planes, **config)


def randomize_batchnorm(module: nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm non-trivial statistics and affine parameters, so that an
    eval-mode comparison exercises them (fresh BNs are identities); every GroupNorm and
    affine InstanceNorm (which keep no statistics) non-trivial affine parameters."""
    generator = torch.Generator().manual_seed(seed)
    for layer in module.modules():
        if isinstance(layer, nn.BatchNorm2d):
            n = layer.num_features
            layer.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
            layer.running_var.copy_(torch.rand(n, generator=generator) * 0.5 + 0.75)
        elif isinstance(layer, nn.GroupNorm):
            n = layer.num_channels
        elif isinstance(layer, nn.InstanceNorm2d):
            n = layer.num_features
        else:
            continue
        layer.weight.data.copy_(torch.rand(n, generator=generator) * 0.5 + 0.75)
        layer.bias.data.copy_(torch.randn(n, generator=generator) * 0.1)
