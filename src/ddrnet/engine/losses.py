"""Segmentation losses: cross-entropy with online hard example mining (OHEM) and deep
supervision, computed on logits resized to the label grid.

Resizing logits ``(N, C, h, w)`` to the labels' ``(H, W)`` is separable bilinear
interpolation, done here as two small matrix products (``A_h @ z @ A_w^T``): the same
numbers as ``F.interpolate(..., mode="bilinear", align_corners=False)`` but with a backward
pass that costs a third less on CPUs, where this resize and the softmax over full-resolution
maps take more time than the network itself.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from ddrnet.models.metadata import IGNORE_INDEX


@functools.lru_cache(maxsize=32)
def bilinear_matrix(in_size: int, out_size: int) -> torch.Tensor:
    """``(out_size, in_size)`` float32 matrix of 1-D bilinear resizing, align_corners=False.

    Row ``i`` holds the weights of output pixel ``i``: its centre maps to source coordinate
    ``(i + 0.5) * in/out - 0.5`` (clamped at 0), split between the two nearest source pixels.
    """
    scale = in_size / out_size
    target = torch.arange(out_size, dtype=torch.float64)
    source = ((target + 0.5) * scale - 0.5).clamp(min=0)
    lower = source.floor().long().clamp(max=in_size - 1)
    upper = (lower + 1).clamp(max=in_size - 1)
    weight_upper = source - lower
    matrix = torch.zeros(out_size, in_size, dtype=torch.float64)
    rows = torch.arange(out_size)
    matrix.index_put_((rows, lower), 1 - weight_upper, accumulate=True)
    matrix.index_put_((rows, upper), weight_upper, accumulate=True)
    return matrix.float()


def resize_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize (align_corners=False) of ``(N, C, h, w)`` to ``(N, C, *size)``, float32."""
    logits = logits.float()
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    rows = bilinear_matrix(logits.shape[-2], size[0]).to(logits.device)
    cols = bilinear_matrix(logits.shape[-1], size[1]).to(logits.device)
    return torch.matmul(rows, torch.matmul(logits.contiguous(), cols.t()))


def subsample_labels(target: torch.Tensor, stride: int) -> torch.Tensor:
    """Labels at the centres of ``stride x stride`` cells, ``(N, ceil(H/s), ceil(W/s))``."""
    if stride == 1:
        return target
    offset = (stride - 1) // 2
    return target[:, offset::stride, offset::stride].contiguous()


def boundary_mask(
    target: torch.Tensor, radius: int, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """``(N, H, W)`` bool: the labelled pixels of ``target`` ``(N, H, W)`` that have a pixel
    of another labelled class within ``radius`` pixels (a ``(2r+1)``-square window). Void is
    no class: an object's edge against void is not a boundary."""
    valid = target != ignore_index
    size = 2 * radius + 1
    # Max and min of the labelled classes in each window: they differ exactly where the
    # window holds two classes. Void becomes -1 for the max and a value above every class
    # for the min, so it never decides either.
    highest = torch.where(valid, target, -1).unsqueeze(1).float()
    lowest = torch.where(valid, target, ignore_index + 1).unsqueeze(1).float()
    window_max = F.max_pool2d(highest, size, stride=1, padding=radius)
    window_min = -F.max_pool2d(-lowest, size, stride=1, padding=radius)
    return (window_max != window_min).squeeze(1) & valid


def pixel_weights(
    target: torch.Tensor,
    ignore_index: int,
    class_weights: torch.Tensor | None,
    boundary_weight: float,
    boundary_radius: int,
) -> torch.Tensor | None:
    """Per-pixel loss weights ``(N, H, W)``: the class weight of each pixel's true class
    times ``1 + boundary_weight`` near a boundary (``boundary_mask``); None when neither is
    on. Void pixels get their own weight too; the losses mask them out."""
    weights = None
    if class_weights is not None:
        weights = class_weights[torch.where(target != ignore_index, target, 0)]
    if boundary_weight > 0:
        near = boundary_mask(target, boundary_radius, ignore_index)
        factor = 1.0 + boundary_weight * near.float()
        weights = factor if weights is None else weights * factor
    return weights


class OhemCrossEntropy(nn.Module):
    """Cross-entropy over the hardest pixels, as in the DDRNet/HRNet training code.

    A pixel is kept when the softmax probability of its true class is below
    ``max(threshold, p_k)``, where ``p_k`` is the ``min_kept``-th smallest such probability
    in the batch; so at least ``min_kept`` pixels (all, if fewer) always contribute, and easy
    pixels (p >= threshold) are dropped once enough hard ones exist. The loss is the mean of
    the (class-weighted) per-pixel losses of the kept pixels. ``boundary_weight`` > 0 also
    multiplies the losses of pixels within ``boundary_radius`` pixels of another class by
    ``1 + boundary_weight`` (a boundary-aware term for thin structures, whose pixels are
    mostly edge); the pixels kept are chosen before any weight.

    Shapes: logits ``(N, C, h, w)``, target ``(N, H, W)`` int64 with ``ignore_index`` for void.
    """

    def __init__(
        self,
        threshold: float = 0.9,
        min_kept: int = 131072,
        ignore_index: int = IGNORE_INDEX,
        class_weights: torch.Tensor | None = None,
        boundary_weight: float = 0.0,
        boundary_radius: int = 1,
    ) -> None:
        super().__init__()
        self.threshold = threshold
        self.min_kept = max(1, min_kept)
        self.ignore_index = ignore_index
        self.register_buffer("class_weights", class_weights, persistent=False)
        self.boundary_weight, self.boundary_radius = boundary_weight, boundary_radius

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = resize_logits(logits, tuple(target.shape[-2:]))
        valid = target != self.ignore_index
        num_valid = int(valid.sum())
        if num_valid == 0:
            return logits.sum() * 0.0
        # Fused log-softmax + NLL, 0 at void pixels; the selection below works on masks, not on
        # gathered copies: boolean indexing of full-resolution maps dominated this loss on CPU.
        pixel_losses = F.cross_entropy(
            logits, target, ignore_index=self.ignore_index, reduction="none"
        )  # (N, H, W)
        with torch.no_grad():
            true_prob = torch.exp(-pixel_losses)
            k = min(self.min_kept, num_valid - 1)
            kept = valid & (true_prob < self.threshold)
            # The k-th smallest probability is below the threshold whenever more than k pixels
            # are: then the threshold alone decides and no selection pass is needed.
            if int(kept.sum()) <= k:
                kth = true_prob.masked_fill(~valid, 2.0).flatten().kthvalue(k + 1).values
                kept = valid & (true_prob < torch.clamp(kth, min=self.threshold))
            if not kept.any():
                kept = valid
        weights = pixel_weights(
            target, self.ignore_index, self.class_weights, self.boundary_weight,
            self.boundary_radius,
        )  # fmt: skip
        if weights is not None:
            pixel_losses = pixel_losses * weights
        return (pixel_losses * kept).sum() / kept.sum()


class CrossEntropy(nn.Module):
    """Plain cross-entropy on resized logits: the weighted mean over non-ignored pixels, as
    ``F.cross_entropy(weight=class_weights)`` computes it (sum of weighted losses over sum of
    weights), with pixel weights from ``pixel_weights`` (class and boundary)."""

    def __init__(
        self,
        ignore_index: int = IGNORE_INDEX,
        class_weights: torch.Tensor | None = None,
        boundary_weight: float = 0.0,
        boundary_radius: int = 1,
    ) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.register_buffer("class_weights", class_weights, persistent=False)
        self.boundary_weight, self.boundary_radius = boundary_weight, boundary_radius

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = resize_logits(logits, tuple(target.shape[-2:]))
        if self.boundary_weight <= 0:
            return F.cross_entropy(
                logits, target, weight=self.class_weights, ignore_index=self.ignore_index
            )
        pixel_losses = F.cross_entropy(
            logits, target, ignore_index=self.ignore_index, reduction="none"
        )
        weights = pixel_weights(
            target, self.ignore_index, self.class_weights, self.boundary_weight,
            self.boundary_radius,
        ) * (target != self.ignore_index)  # fmt: skip
        return (pixel_losses * weights).sum() / weights.sum().clamp(min=1e-12)


class DeepSupervisionLoss(nn.Module):
    """Main-head loss plus the auxiliary head's, weighted (1.0 and 0.4 in the paper).

    ``label_stride`` > 1 computes both on labels subsampled by that factor (logits resized
    to the smaller grid): a cheaper loss for compute-bound (CPU) training. 1 is the official
    full-resolution loss.
    """

    def __init__(
        self,
        criterion: nn.Module,
        main_weight: float = 1.0,
        aux_weight: float = 0.4,
        label_stride: int = 1,
    ) -> None:
        super().__init__()
        self.criterion = criterion
        self.main_weight = main_weight
        self.aux_weight = aux_weight
        self.label_stride = label_stride

    def forward(
        self, main: torch.Tensor, aux: torch.Tensor | None, target: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        target = subsample_labels(target, self.label_stride)
        main_loss = self.criterion(main, target)
        total = self.main_weight * main_loss
        parts = {"loss_main": float(main_loss.detach())}
        if aux is not None and self.aux_weight > 0:
            aux_loss = self.criterion(aux, target)
            total = total + self.aux_weight * aux_loss
            parts["loss_aux"] = float(aux_loss.detach())
        return total, parts


# The ``method`` names ``class_balance_weights`` accepts (``loss.class_weights`` in recipes).
CLASS_WEIGHTING_METHODS = ("enet", "median_frequency")


def class_balance_weights(
    pixel_counts: torch.Tensor, method: str = "enet", enet_c: float = 1.02
) -> torch.Tensor:
    """Per-class loss weights from pixel counts ``(C,)``.

    ``enet``: ``1 / ln(c + p_k)`` (Paszke et al., ENet); ``median_frequency``:
    ``median(f) / f_k`` (Eigen & Fergus). Classes never seen get the largest weight.
    Weights are normalised to mean 1.
    """
    counts = pixel_counts.double()
    frequency = counts / counts.sum()
    if method == "enet":
        weights = 1.0 / torch.log(enet_c + frequency)
    elif method == "median_frequency":
        present = frequency > 0
        weights = torch.zeros_like(frequency)
        weights[present] = frequency[present].median() / frequency[present]
    else:
        raise ValueError(
            f"class weighting must be one of {CLASS_WEIGHTING_METHODS}, got {method!r}"
        )
    unseen = counts == 0
    if unseen.any():
        weights[unseen] = weights[~unseen].max() if (~unseen).any() else 1.0
    return (weights / weights.mean()).float()
