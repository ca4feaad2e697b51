"""Parameter and multiply-accumulate counts, the way the paper reports them.

MACs count convolutions and linear layers only (one MAC per weight per output position),
which is what the paper's GFLOPs column means; BatchNorm, ReLU, pooling and resizing are
left out, as in the usual counters.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def count_parameters(model: nn.Module, exclude_prefixes: tuple[str, ...] = ()) -> int:
    """Number of parameters, leaving out those whose name starts with an excluded prefix."""
    return sum(
        p.numel()
        for name, p in model.named_parameters()
        if not any(name.startswith(prefix) for prefix in exclude_prefixes)
    )


@torch.no_grad()
def count_macs(model: nn.Module, input_size: tuple[int, int], batch: int = 1) -> int:
    """Multiply-accumulates of one ``model(x)`` call for ``x`` of shape ``(1, 3, H, W)``.

    ``input_size`` is ``(height, width)`` in pixels. Modules not reached by ``forward`` (an
    auxiliary head) are not counted. Runs on the meta device, so 1024x2048 costs nothing.
    """
    total = 0

    def conv_hook(module: nn.Conv2d, _inputs: object, output: torch.Tensor) -> None:
        nonlocal total
        kernel = module.kernel_size[0] * module.kernel_size[1]
        per_output = kernel * module.in_channels // module.groups
        total += output.numel() // batch * per_output

    def linear_hook(module: nn.Linear, _inputs: object, output: torch.Tensor) -> None:
        nonlocal total
        total += output.numel() // batch * module.in_features

    # A shape-only copy: counting needs output shapes, not arithmetic or the real weights.
    meta_model = copy.deepcopy(model).to("meta").eval()
    handles = []
    for layer in meta_model.modules():
        if isinstance(layer, nn.Conv2d):
            handles.append(layer.register_forward_hook(conv_hook))
        elif isinstance(layer, nn.Linear):
            handles.append(layer.register_forward_hook(linear_hook))
    try:
        meta_model(torch.zeros(batch, 3, *input_size, device="meta"))
    finally:
        for handle in handles:
            handle.remove()
    return total
