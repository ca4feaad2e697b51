"""How a branch takes in what the other branch sends it at a bilateral fusion.

The paper adds the message: the high branch receives the low branch's features (1x1 conv+BN,
upsampled), the low branch the high branch's (strided 3x3 convs+BN), and each is summed into
the receiving branch (``"add"``, the default, which the published weights need). The documents
this project started from name attention in the fusion module as a direction to extend
DDRNet (their §11: CBAM, or a transformer fusion); three forms are built here, chosen by
``DDRNetSpec.fusion``:

* ``"cbam"``: the message passes through CBAM (Woo et al., ECCV 2018) before it is added:
  a channel gate from its average- and max-pooled descriptors through a shared two-layer MLP,
  then a spatial gate from a 7x7 conv over its channel mean and max. The message decides what
  of itself to pass on.
* ``"pixel"``: pixel attention after PIDNet's ``PagFM`` (Xu et al., CVPR 2023): the receiver
  and the message are each projected by a 1x1 conv+BN to ``channels // 2``; their per-pixel
  dot product through a sigmoid, ``s``, weighs the message. The receiver decides, pixel by
  pixel, how much of the message to take.
* ``"transformer"``: the paper's sum plus multi-head cross-attention: every position of the
  receiver gathers from the whole message, pooled to 1/64 of the input (spatial-reduction
  attention, as in PVT), so context comes from anywhere in the image, not only from the
  co-located, upsampled position.

All three start as the paper's sum in a new network (the gates of the first two, about 1/2,
are scaled by 2; the third's output norm starts at zero), so attention changes the fusion only
as far as training finds it useful. ``cbam`` and ``pixel`` expose ``message_weight(receiver,
message)``, the ``(N, 1, H, W)`` map of where they let the message in, which
``forward_features`` records for ``ddrnet viz features``.

Every form maps ``receiver, message: (N, C, H, W)`` (the message already at the receiver's
size and width) to ``(N, C, H, W)``, is traceable by ``torch.fx`` (batch-norm folding) and
exports to ONNX with standard operators.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ddrnet.models.blocks import conv_bn

# The fusion forms a DDRNet can be built with (``DDRNetSpec.fusion``); the first is the paper's.
FUSIONS = ("add", "cbam", "pixel", "transformer")


class AddFusion(nn.Module):
    """The paper's fusion: ``receiver + message``. No parameters, so the state-dict keys of
    a DDRNet built with it are the official ones."""

    def forward(self, receiver: torch.Tensor, message: torch.Tensor) -> torch.Tensor:
        return receiver + message


class ChannelSpatialAttention(nn.Module):
    """CBAM: ``x * channel_gate(x)``, then that times ``spatial_gate`` of it.

    ``channel_gate``: ``sigmoid(mlp(avg_pool(x)) + mlp(max_pool(x)))``, ``(N, C, 1, 1)``, the
    MLP two 1x1 convs through ``max(C // reduction, 8)`` channels. ``spatial_gate``:
    ``sigmoid(bn(conv7x7([mean_c(x), max_c(x)])))``, ``(N, 1, H, W)``.
    """

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7) -> None:
        super().__init__()
        hidden = max(channels // reduction, 8)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1, bias=False),
        )
        self.spatial = nn.Sequential(*conv_bn(2, 1, kernel_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.channel_gate(x)
        return x * self.spatial_gate(x)

    def channel_gate(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W) -> (N, C, 1, 1)`` in (0, 1)."""
        average = torch.mean(x, dim=(2, 3), keepdim=True)
        largest = torch.amax(x, dim=(2, 3), keepdim=True)
        return torch.sigmoid(self.mlp(average) + self.mlp(largest))

    def spatial_gate(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W) -> (N, 1, H, W)`` in (0, 1)."""
        pooled = torch.cat(
            (torch.mean(x, dim=1, keepdim=True), torch.amax(x, dim=1, keepdim=True)), dim=1
        )
        return torch.sigmoid(self.spatial(pooled))


class AttentionGatedFusion(nn.Module):
    """``receiver + 4 * cbam(message)``: the message filtered by CBAM before it is added.

    Each of CBAM's two gates is about 1/2 in a new network, so the message would reach the
    receiver at a quarter of its strength; the factor 4 makes the fusion start as the
    paper's sum and lets a gate amplify as well as damp (NFNets' ``2 * sigmoid`` in their
    squeeze-excite, once per gate). Without it, training from scratch scored lower
    (``scripts/camvid_experiments.md``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.attention = ChannelSpatialAttention(channels)

    def forward(self, receiver: torch.Tensor, message: torch.Tensor) -> torch.Tensor:
        return receiver + 4.0 * self.attention(message)

    def message_weight(self, receiver: torch.Tensor, message: torch.Tensor) -> torch.Tensor:
        """Where the message is let in: CBAM's spatial gate, ``(N, 1, H, W)`` in (0, 1)."""
        return self.attention.spatial_gate(message * self.attention.channel_gate(message))


class PixelAttentionFusion(nn.Module):
    """Pixel-attention-guided fusion after PIDNet's ``PagFM``: ``s = sigmoid(sum_c(q(receiver)
    * k(message)))`` of shape ``(N, 1, H, W)``, then ``receiver + 2 * s * message``.

    PagFM mixes, ``(1 - s) * receiver + s * message``, which starts a new network at half of
    each; the form here keeps the receiver whole and starts at the paper's sum (``s`` about
    1/2), the message weighted 0..2 by how well it agrees with the receiver. The mix scored
    lower when trained from scratch (``scripts/camvid_experiments.md``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        projected = max(channels // 2, 1)
        self.query = nn.Sequential(*conv_bn(channels, projected, 1))
        self.key = nn.Sequential(*conv_bn(channels, projected, 1))

    def forward(self, receiver: torch.Tensor, message: torch.Tensor) -> torch.Tensor:
        return receiver + 2.0 * self.message_weight(receiver, message) * message

    def message_weight(self, receiver: torch.Tensor, message: torch.Tensor) -> torch.Tensor:
        """``s``, ``(N, 1, H, W)`` in (0, 1)."""
        similarity = torch.sum(self.query(receiver) * self.key(message), dim=1, keepdim=True)
        return torch.sigmoid(similarity)


class CrossAttentionFusion(nn.Module):
    """``receiver + message + proj(attention(q(receiver), k(pooled), v(pooled)))``: the paper's
    sum, plus what every position of the receiver gathers by multi-head cross-attention from
    the whole message, average-pooled by ``context_stride`` first (spatial-reduction attention,
    as in PVT), so that the keys are the message at 1/64 of the input whatever the branch.

    ``q``, ``k``, ``v``: 1x1 conv+BN to ``channels // 2`` (heads of 32 channels); ``proj``:
    1x1 conv+BN back to ``channels``, its BatchNorm scale zero at first, so a new network
    starts as the paper's sum. Memory grows with (receiver positions) x (message positions /
    ``context_stride**2``): at 1024x2048, 32768 x 512 per head for the high branch.
    """

    def __init__(self, channels: int, context_stride: int) -> None:
        super().__init__()
        inner = max(channels // 2, 1)
        self.heads = max(inner // 32, 1)
        self.scale = (inner // self.heads) ** -0.5
        self.context_stride = context_stride
        self.query = nn.Sequential(*conv_bn(channels, inner, 1))
        self.key = nn.Sequential(*conv_bn(channels, inner, 1))
        self.value = nn.Sequential(*conv_bn(channels, inner, 1))
        self.proj = nn.Sequential(*conv_bn(inner, channels, 1))

    def forward(self, receiver: torch.Tensor, message: torch.Tensor) -> torch.Tensor:
        query = self.query(receiver)  # (N, inner, H, W)
        context = message
        if self.context_stride > 1:
            stride = self.context_stride
            # Windows cut by the edge average what they hold (the same in PyTorch either way;
            # ncnn divides by the whole window unless told not to count the padding).
            context = F.avg_pool2d(message, stride, stride, ceil_mode=True, count_include_pad=False)
        # (N, heads, positions, channels per head)
        q = query.flatten(2).unflatten(1, (self.heads, -1)).transpose(2, 3)
        k = self.key(context).flatten(2).unflatten(1, (self.heads, -1)).transpose(2, 3)
        v = self.value(context).flatten(2).unflatten(1, (self.heads, -1)).transpose(2, 3)
        weights = torch.softmax(torch.matmul(q, k.transpose(2, 3)) * self.scale, dim=-1)
        gathered = torch.matmul(weights, v).transpose(2, 3).flatten(1, 2)  # (N, inner, H*W)
        return receiver + message + self.proj(torch.reshape(gathered, query.shape))


def make_fusion(kind: str, channels: int, context_stride: int = 1) -> nn.Module:
    """The fusion module of ``kind`` (one of ``FUSIONS``) for a branch of ``channels``;
    ``context_stride`` (``"transformer"``): the pooling that brings the branch to 1/64."""
    if kind == "add":
        return AddFusion()
    if kind == "cbam":
        return AttentionGatedFusion(channels)
    if kind == "pixel":
        return PixelAttentionFusion(channels)
    if kind == "transformer":
        return CrossAttentionFusion(channels, context_stride)
    raise ValueError(f"fusion must be one of {', '.join(FUSIONS)}, got {kind!r}")
