"""Registry of DDRNet variants, in the manner of timm: one ``@register_model`` builder each.

The builders live in ``ddrnet.models.ddrnet``; decorating one records it here under its
function name with the variant's topology, task and the paper's reference counts (parameters
and GMACs at 1024x2048, 19 classes, no auxiliary head), which tests and ``ddrnet models``
check. ``ddrnet.create_model(name, ...)`` looks the name up here and calls the builder with
the keyword arguments it was given: there is no other way a model gets built.

A builder takes, all optional: ``num_classes``, ``aux_head`` (segmentation only),
``width_multiplier``, ``norm``, ``norm_groups`` and ``fusion`` (``DDRNetSpec``'s: GroupNorm in
place of BatchNorm, attention in the bilateral fusions), ``spec`` (a topology recorded in a
model file, used as is, in place of the last four) and ``channel_widths`` (a channel-pruned
file's narrower layers, ``ddrnet.models.widths``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from torch import nn

from ddrnet.errors import DDRNetError

if TYPE_CHECKING:  # ddrnet.py imports this module to register its builders
    from ddrnet.models.spec import DDRNetSpec

Builder = TypeVar("Builder", bound=Callable[..., nn.Module])


class UnknownModelError(DDRNetError, KeyError):
    """No registered variant has this name; the message lists the valid ones."""

    __str__ = Exception.__str__  # the message as given, not KeyError's repr of it


@dataclass(frozen=True)
class VariantInfo:
    """A registered variant: its builder, topology, task and the paper's reference counts."""

    name: str
    builder: Callable[..., nn.Module]
    spec: DDRNetSpec
    task: str  # "segmentation" or "classification"
    paper_params_millions: float | None
    paper_gmacs: float | None  # segmentation: at 1024x2048; classification: at 224x224
    description: str


_VARIANTS: dict[str, VariantInfo] = {}


def register_model(
    *,
    spec: DDRNetSpec,
    task: str,
    description: str,
    paper_params_millions: float | None = None,
    paper_gmacs: float | None = None,
) -> Callable[[Builder], Builder]:
    """Decorator registering a builder under its function name; returns it unchanged.

    ``spec`` is the topology the builder makes by default (``ddrnet prune`` finds a model's
    variant by it); ``task`` is ``"segmentation"`` or ``"classification"``.
    """
    if task not in ("segmentation", "classification"):
        raise ValueError(f"task must be 'segmentation' or 'classification', got {task!r}")

    def register(builder: Builder) -> Builder:
        name = builder.__name__
        if name in _VARIANTS:
            raise ValueError(f"model {name!r} is registered twice")
        _VARIANTS[name] = VariantInfo(
            name, builder, spec, task, paper_params_millions, paper_gmacs, description
        )
        return builder

    return register


def list_models(task: str | None = None) -> list[str]:
    """Registered variant names, optionally only ``"segmentation"`` or ``"classification"``."""
    return [name for name, info in _VARIANTS.items() if task is None or info.task == task]


def variant_info(name: str) -> VariantInfo:
    """Metadata of a registered variant; a clear error lists the valid names otherwise."""
    if name not in _VARIANTS:
        raise UnknownModelError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    return _VARIANTS[name]
