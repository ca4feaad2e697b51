"""Registry of DDRNet variants, in the manner of timm: one function per variant.

``list_models()`` names them; ``build_model(name, ...)`` calls the variant's function. The
published counts (parameters and GMACs at 1024x2048, 19 classes, no auxiliary head) are kept
beside each variant so that tests and ``ddrnet models`` can check them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from ddrnet.errors import DDRNetError
from ddrnet.models.ddrnet import DDRNet, DDRNetClassifier, DDRNetSpec


class UnknownModelError(DDRNetError, KeyError):
    """No registered variant has this name; the message lists the valid ones."""

    __str__ = Exception.__str__  # the message as given, not KeyError's repr of it


@dataclass(frozen=True)
class VariantInfo:
    """A registered variant: its topology, task and the paper's reference counts."""

    name: str
    spec: DDRNetSpec
    task: str  # "segmentation" or "classification"
    paper_params_millions: float | None
    paper_gmacs: float | None  # segmentation: at 1024x2048; classification: at 224x224
    description: str


_VARIANTS: dict[str, VariantInfo] = {}
_BUILDERS: dict[str, Callable[..., nn.Module]] = {}

SLIM_SPEC = DDRNetSpec(planes=32, blocks=(2, 2, 2, 2), head_planes=64, classifier_planes=1024)
DDRNET23_SPEC = DDRNetSpec(planes=64, blocks=(2, 2, 2, 2), head_planes=128, classifier_planes=2048)
DDRNET39_SPEC = DDRNetSpec(
    planes=64, blocks=(3, 4, 6, 3), stage3_splits=2, head_planes=256, classifier_planes=2048
)


def _register(info: VariantInfo, builder: Callable[..., nn.Module]) -> None:
    if info.name in _VARIANTS:
        raise ValueError(f"model {info.name!r} is registered twice")
    _VARIANTS[info.name] = info
    _BUILDERS[info.name] = builder


def _register_family(
    base: str,
    spec: DDRNetSpec,
    seg_counts: tuple[float, float],
    cls_params: float | None,
    title: str,
) -> None:
    def build_segmentation(
        num_classes: int = 19, aux_head: bool = False, width_multiplier: float = 1.0
    ) -> DDRNet:
        variant_spec = spec if width_multiplier == 1.0 else spec.widened(width_multiplier)
        return DDRNet(variant_spec, num_classes=num_classes, aux_head=aux_head)

    def build_classifier(num_classes: int = 1000, width_multiplier: float = 1.0) -> nn.Module:
        variant_spec = spec if width_multiplier == 1.0 else spec.widened(width_multiplier)
        return DDRNetClassifier(variant_spec, num_classes=num_classes)

    _register(
        VariantInfo(base, spec, "segmentation", seg_counts[0], seg_counts[1], title),
        build_segmentation,
    )
    _register(
        VariantInfo(
            f"{base}_imagenet", spec, "classification", cls_params, None, f"{title}, ImageNet form"
        ),
        build_classifier,
    )


# The paper's Table (Cityscapes): parameters in millions and GFLOPs (multiply-adds) at
# 1024x2048, as printed. The networks here, like the official code, measure 5.696 / 36.28,
# 20.149 / 143.06 and 32.360 / 281.12 (``ddrnet models``; tests/test_models.py). The paper
# gives no counts for the ImageNet forms.
_register_family("ddrnet_23_slim", SLIM_SPEC, (5.7, 36.3), None, "DDRNet-23-slim")
_register_family("ddrnet_23", DDRNET23_SPEC, (20.1, 143.1), None, "DDRNet-23")
_register_family("ddrnet_39", DDRNET39_SPEC, (32.3, 281.2), None, "DDRNet-39")


def list_models(task: str | None = None) -> list[str]:
    """Registered variant names, optionally only ``"segmentation"`` or ``"classification"``."""
    return [name for name, info in _VARIANTS.items() if task is None or info.task == task]


def variant_info(name: str) -> VariantInfo:
    """Metadata of a registered variant; a clear error lists the valid names otherwise."""
    if name not in _VARIANTS:
        raise UnknownModelError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    return _VARIANTS[name]


def build_model(name: str, **kwargs: object) -> nn.Module:
    """Build a freshly initialised registered variant (no weights loaded)."""
    variant_info(name)
    return _BUILDERS[name](**kwargs)
