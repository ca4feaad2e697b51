"""Structured channel pruning of DDRNet to a fraction of its multiply-adds.

The dependency analysis is torch-pruning's (``pip install 'ddrnet[compress]'``): its
``DependencyGraph`` traces the forward pass and groups every layer whose channels must be
removed together, so that each residual sum, each bilateral fusion (the 1x1 ``low_to_high``
conv added to the high branch after a bilinear resize, the strided ``high_to_low`` convs added
to the low branch), DAPPM's concatenation and pre-activation BatchNorms, and both heads stay
consistent. Within a group the channels of least importance are removed:

* ``l1`` (default) / ``l2``: the L1 / L2 norm of each channel's weights, summed over the
  group's layers (each layer's scores normalised by their mean);
* ``bn-scale``: the magnitude of the BatchNorm scales (gamma) of the group.

The pruning ratio (the fraction of channels removed per group, or over the whole network
with ``global_pruning``) is found by bisection so that the pruned model's MACs, counted by
``count_macs`` at ``input_size``, are at most the target and within ``tolerance`` of it. The
classifiers' output (``num_classes``) and the stem's RGB input are never pruned. The result
keeps its ``DDRNetSpec``; its narrower layers are recorded in
``ModelMetadata.channel_widths`` (``ddrnet.models.widths``), from which ``create_model``
rebuilds it. No fine-tuning happens here: accuracy drops until the model is trained again.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ddrnet.errors import DDRNetError
from ddrnet.models.complexity import count_macs, count_parameters
from ddrnet.models.ddrnet import DDRNet
from ddrnet.models.fusion import CrossAttentionFusion, PixelAttentionFusion
from ddrnet.models.metadata import ModelMetadata, default_input_size
from ddrnet.models.registry import list_models, variant_info
from ddrnet.models.widths import CLASS_DEPENDENT_LAYERS, channel_widths

IMPORTANCES = ("l1", "l2", "bn-scale")
# How far below its target a pruned model's MACs may stay, as a fraction of the unpruned ones.
MAC_TOLERANCE = 0.01


class PruningError(DDRNetError, ValueError):
    """The model cannot be pruned as asked; the message says why."""


@dataclass
class PruneResult:
    """A pruned model and its cost: MACs per image at ``input_size`` ((height, width) in
    pixels) and parameter counts, before and after; ``ratio`` is the channel pruning ratio
    the bisection settled on."""

    model: nn.Module
    input_size: tuple[int, int]
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    ratio: float

    @property
    def macs_fraction(self) -> float:
        return self.macs_after / self.macs_before


def _torch_pruning() -> Any:
    try:
        import torch_pruning
    except ImportError as error:
        raise PruningError(
            f"pruning needs torch-pruning ({error}): pip install 'ddrnet[compress]'"
        ) from None
    return torch_pruning


def _forward_fn(model: nn.Module) -> Callable[[nn.Module, torch.Tensor], Any]:
    """Trace the auxiliary head too when the model has one, so its input is pruned with
    the high branch it taps."""
    if getattr(model, "aux_head", None) is not None:
        return lambda network, x: network.forward_with_aux(x)
    return lambda network, x: network(x)


def _check_prunable(model: nn.Module) -> None:
    if not isinstance(model, DDRNet):
        raise PruningError(
            f"only DDRNet segmentation models can be pruned, not {type(model).__name__}"
        )
    if model.spec.norm != "batch":
        # Narrowed GroupNorms would need their group counts kept consistent with the widths
        # (gcd of each new width), which neither torch-pruning nor the recorded widths do.
        raise PruningError(
            f"pruning supports BatchNorm models only; this one uses {model.spec.norm} norm"
        )


def _ignored_layers(model: nn.Module) -> list[nn.Module]:
    """The layers whose output channels are not pruned: those that output classes, and the
    projections of attention fusions, whose channels are summed into one similarity or split
    into heads (torch-pruning's graph follows neither; their inputs are still pruned with
    the branch)."""
    names = dict(model.named_modules())
    ignored = [names[name] for name in CLASS_DEPENDENT_LAYERS if name in names]
    for module in model.modules():
        if isinstance(module, PixelAttentionFusion):
            ignored += [module.query[0], module.key[0]]
        elif isinstance(module, CrossAttentionFusion):  # heads reshape these channels too
            ignored += [module.query[0], module.key[0], module.value[0], module.proj[0]]
    return ignored


def _importance(name: str) -> Any:
    tp = _torch_pruning()
    if name == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if name == "l2":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if name == "bn-scale":
        return tp.importance.BNScaleImportance()
    raise PruningError(f"importance {name!r} is not one of {', '.join(IMPORTANCES)}")


def _pruned_copy(
    model: nn.Module,
    ratio: float,
    importance: str,
    max_layer_ratio: float,
    global_pruning: bool,
    round_to: int | None,
) -> nn.Module:
    """A copy of ``model`` with ``ratio`` of its prunable channels removed in one shot."""
    tp = _torch_pruning()
    candidate = copy.deepcopy(model).cpu().float().eval()
    pruner = tp.pruner.BasePruner(
        candidate,
        torch.randn(1, 3, 64, 64),
        importance=_importance(importance),
        global_pruning=global_pruning,
        pruning_ratio=ratio,
        max_pruning_ratio=max_layer_ratio,
        iterative_steps=1,
        ignored_layers=_ignored_layers(candidate),
        round_to=round_to,
        forward_fn=_forward_fn(candidate),
    )
    with torch.enable_grad():  # the graph is traced through autograd
        pruner.step()
    return candidate


def prune_to_macs(
    model: nn.Module,
    macs_fraction: float,
    *,
    input_size: tuple[int, int] | None = None,
    importance: str = "l1",
    max_layer_ratio: float = 0.8,
    global_pruning: bool = False,
    round_to: int | None = None,
    tolerance: float = MAC_TOLERANCE,
    max_trials: int = 10,
) -> PruneResult:
    """Prune ``model`` (not modified) to at most ``macs_fraction`` of its MACs.

    Args:
        model: a ``DDRNet`` (any variant, pruned already or not).
        macs_fraction: in (0, 1): the pruned model's MACs over the model's, both counted by
            ``count_macs`` at ``input_size`` (default ``default_input_size(model)``).
        importance: ``"l1"``, ``"l2"`` or ``"bn-scale"`` (see the module docstring).
        max_layer_ratio: the most any group of coupled layers may lose, as a fraction of its
            channels (0.8 keeps at least a fifth of every layer).
        global_pruning: rank channels across the whole network (per-layer widths then differ)
            instead of removing the same fraction from every group.
        round_to: keep every pruned width a multiple of this (e.g. 8 for SIMD-friendly
            widths; coarser steps make the target harder to meet closely).
        tolerance: stop when the MACs are within this fraction of the base MACs below the target.
        max_trials: most bisection steps (each prunes a copy: ~1-3 s for DDRNet-23-slim).

    Returns a ``PruneResult`` whose model carries metadata with ``channel_widths``.
    """
    _check_prunable(model)
    if not 0 < macs_fraction < 1:
        raise PruningError(f"the MAC fraction must be in (0, 1), got {macs_fraction}")
    if not 0 < max_layer_ratio < 1:
        raise PruningError(f"the per-layer ratio limit must be in (0, 1), got {max_layer_ratio}")
    size = input_size or default_input_size(model)
    base = count_macs(model, size)
    target = macs_fraction * base

    def attempt(ratio: float) -> tuple[nn.Module, int]:
        pruned = _pruned_copy(model, ratio, importance, max_layer_ratio, global_pruning, round_to)
        return pruned, count_macs(pruned, size)

    best, best_macs, best_ratio, smallest = _search_ratio(
        attempt, base, target, max_layer_ratio, tolerance, max_trials
    )
    if best is None:
        hint = "raise the per-layer limit"
        if round_to is not None and round_to > 1:
            hint += f" or lower the rounding (widths multiples of {round_to})"
        raise PruningError(
            f"cannot reach {macs_fraction:g} of the MACs with at most {max_layer_ratio:g} of "
            f"each layer's channels removed (smallest reached: {smallest / base:.3f}); {hint}"
        )
    _record_widths(best, model, macs_fraction, importance, base, best_macs, size)
    return PruneResult(
        model=best.eval(),
        input_size=size,
        macs_before=base,
        macs_after=best_macs,
        params_before=count_parameters(model),
        params_after=count_parameters(best),
        ratio=best_ratio,
    )


def _search_ratio(
    attempt: Callable[[float], tuple[nn.Module, int]],
    base: int,
    target: float,
    max_layer_ratio: float,
    tolerance: float,
    max_trials: int,
) -> tuple[nn.Module | None, int, float, int]:
    """The pruning ratio whose model (``attempt(ratio) -> (model, MACs)``) has at most
    ``target`` MACs and at least ``target - tolerance * base``, searched in at most
    ``max_trials`` attempts: ``(model, its MACs, ratio, smallest MACs seen)``, the model
    None when no ratio up to ``max_layer_ratio`` reaches the target.

    The bracket ``[low, high]`` of ratios has MACs above the target at ``low``, at most the
    target at ``high``. Each guess assumes MACs ~ c * (1 - ratio)^2 (both sides of most convs
    shrink), with c fitted to the last trial, and falls back to bisection when it leaves the
    bracket.
    """
    low, high = 0.0, max_layer_ratio
    best: nn.Module | None = None
    best_macs, best_ratio, smallest = base, 0.0, base
    aim = max(target - tolerance * base / 2, target / 2)
    guess = min(1 - (aim / base) ** 0.5, max_layer_ratio)
    for _ in range(max_trials):
        pruned, macs = attempt(guess)
        smallest = min(smallest, macs)
        if macs <= target:
            high, best, best_macs, best_ratio = guess, pruned, macs, guess
            if macs >= target - tolerance * base:
                break
        else:
            if guess >= max_layer_ratio:
                break
            low = guess
        scale = macs / max((1 - guess) ** 2, 1e-6)
        guess = 1 - (aim / scale) ** 0.5
        if not low < guess < high:
            guess = (low + high) / 2
    return best, best_macs, best_ratio, smallest


def prune_channels(model: nn.Module, channels: dict[str, Sequence[int]]) -> nn.Module:
    """Remove the given output channels of the named convolutions, and every channel coupled
    to them (through residuals, fusions, concatenations), from a copy of ``model``.

    ``channels``: ``{conv name: [output channel indices]}``, e.g.
    ``{"backbone.layer1.0.conv1": [0, 5]}``. Channels of a layer listed twice through
    coupling are removed once. Returns the pruned copy with ``channel_widths`` in its
    metadata; ``model`` is not modified.
    """
    _check_prunable(model)
    tp = _torch_pruning()
    pruned = copy.deepcopy(model).cpu().float().eval()
    graph = tp.DependencyGraph()
    with torch.enable_grad():
        graph.build_dependency(
            pruned, example_inputs=torch.randn(1, 3, 64, 64), forward_fn=_forward_fn(pruned)
        )
    kept = _ignored_layers(pruned)
    for name, indices in channels.items():
        if name.startswith(CLASS_DEPENDENT_LAYERS):
            raise PruningError(f"{name} outputs class scores; its channels cannot be pruned")
        layer = pruned.get_submodule(name)
        if not isinstance(layer, nn.Conv2d):
            raise PruningError(f"{name} is a {type(layer).__name__}, not a Conv2d")
        if any(layer is other for other in kept):
            raise PruningError(f"{name} projects an attention fusion; it is not pruned")
        group = graph.get_pruning_group(layer, tp.prune_conv_out_channels, idxs=list(indices))
        group.prune()
    _record_widths(pruned, model, None, "given channels", None, None, None)
    return pruned


def _record_widths(
    pruned: nn.Module,
    original: nn.Module,
    macs_fraction: float | None,
    importance: str,
    macs_before: int | None,
    macs_after: int | None,
    size: tuple[int, int] | None,
) -> None:
    """Set ``pruned.metadata``: the original's, with the narrowed layers' widths (against
    the unpruned variant), the pruning recorded under ``training`` and no stale metrics."""
    with torch.device("meta"):
        reference = DDRNet(pruned.spec, pruned.num_classes, aux_head=pruned.aux_head is not None)
    widths = channel_widths(pruned, reference)
    if pruned.aux_head is None:
        widths.update(_aux_head_widths(pruned, reference))
    metadata = original.metadata or ModelMetadata(
        architecture=_variant_name(pruned),
        num_classes=pruned.num_classes,
        spec=pruned.spec.to_dict(),
        aux_head=pruned.aux_head is not None,
    )
    record = {
        "macs_fraction_target": macs_fraction,
        "importance": importance,
        "macs_before": macs_before,
        "macs_after": macs_after,
        "input_size": list(size) if size else None,
    }
    training = dict(metadata.training)
    training["pruning"] = training.get("pruning", []) + [record]
    pruned.metadata = dataclasses.replace(
        metadata, channel_widths=widths, metrics={}, training=training
    )


def _variant_name(model: nn.Module) -> str:
    """The registry name of a model built without metadata, from its spec."""
    for name in list_models("segmentation"):
        if variant_info(name).spec == model.spec:
            return name
    raise PruningError(f"no registered variant has the spec {model.spec}; set model.metadata")


def _aux_head_widths(pruned: nn.Module, reference: nn.Module) -> dict[str, list[int]]:
    """Widths for an auxiliary head the model was built without (a later training run may
    add one): its input is the high branch after the stage it taps."""
    stage = pruned.backbone.stages[pruned.backbone.aux_stage_index]
    tap = stage.low_to_high[0].out_channels
    mid = reference.spec.head_planes
    if tap == reference.spec.planes * 2:
        return {}
    return {"aux_head.bn1": [tap], "aux_head.conv1": [tap, mid]}
