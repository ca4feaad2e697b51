"""``DDRNetSpec``: the hyper-parameters that fix a DDRNet topology, as every model file records
them (``ModelMetadata.spec``); the variants' specs are beside their builders in ``ddrnet.py``."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from ddrnet.limits import MAX_BLOCKS, MAX_PLANES
from ddrnet.models.fusion import FUSIONS

# The normalisation layers a DDRNet can be built with (``DDRNetSpec.norm``).
NORMS = ("batch", "group", "ibn")
# The fields a custom topology sets (recipe keys ``model.*``, ``create_model`` options, what
# ``ddrnet search`` explores), and those of them that ``widened`` sets too.
TOPOLOGY_FIELDS = ("planes", "blocks", "dappm_planes", "head_planes")
WIDTH_FIELDS = ("planes", "head_planes")


@dataclass(frozen=True)
class DDRNetSpec:
    """Hyper-parameters that fix a DDRNet topology; every checkpoint records one.

    Attributes:
        planes: stem width. The high-resolution branch has ``2 * planes`` channels; the low
            branch has ``2/4/8/16 * planes`` at 1/8, 1/16, 1/32 and 1/64 of the input.
        blocks: BasicBlocks per stage 1-4 of the low branch; the high branch repeats the
            stage 3 and 4 counts at 1/8.
        stage3_splits: 1 for DDRNet-23 (one fusion after stage 3); 2 for DDRNet-39, which splits
            stage 3 into halves with a bilateral fusion after each.
        dappm_planes: width of each DAPPM scale.
        head_planes: width of the 3x3 conv in the segmentation heads.
        classifier_planes: width of the last 1x1 conv of the ImageNet classifier.
        norm: ``"batch"`` (BatchNorm, the paper's) or ``"group"``: every BatchNorm becomes a
            GroupNorm of ``gcd(channels, norm_groups)`` groups, whose statistics come from
            each image alone, for batches of 1-4 per device; it cannot be folded into the
            convolutions for deployment. ``"ibn"``: IBN-Net's instance-batch mix
            (``blocks.InstanceBatchNorm``) as the first norm of every BasicBlock of stages
            1-3, both branches (IBN-a keeps the last stage batch-normalised), BatchNorm
            elsewhere; for streets unlike the training ones. Files written before this field
            load as ``"batch"``.
        norm_groups: the most groups a GroupNorm has (used only with ``norm="group"``).
        fusion: how each branch takes in the other's features at a bilateral fusion:
            ``"add"`` (the paper's sum), ``"cbam"``, ``"pixel"`` or ``"transformer"``
            (attention, the extension the project's documents name;
            ``ddrnet.models.fusion``). Files written before this field load as ``"add"``.
    """

    planes: int = 32
    blocks: tuple[int, int, int, int] = (2, 2, 2, 2)
    stage3_splits: int = 1
    dappm_planes: int = 128
    head_planes: int = 64
    classifier_planes: int = 1024
    norm: str = "batch"
    norm_groups: int = 32
    fusion: str = "add"

    def __post_init__(self) -> None:
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {', '.join(FUSIONS)}, got {self.fusion!r}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {self.norm!r}")
        if isinstance(self.norm_groups, bool) or not isinstance(self.norm_groups, int):
            raise ValueError(f"norm_groups must be an integer, got {self.norm_groups!r}")
        if self.norm_groups < 1:
            raise ValueError(f"norm_groups must be at least 1, got {self.norm_groups}")
        for name in ("planes", "dappm_planes", "head_planes", "classifier_planes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.planes > MAX_PLANES:
            raise ValueError(f"planes must be at most {MAX_PLANES}, got {self.planes}")
        if len(self.blocks) != 4 or not all(
            isinstance(count, int) and 1 <= count <= MAX_BLOCKS for count in self.blocks
        ):
            raise ValueError(
                f"blocks must be four counts of 1 to {MAX_BLOCKS} (stages 1-4), got "
                f"{list(self.blocks)}"
            )
        if self.blocks[2] % self.stage3_splits:
            raise ValueError(
                f"stage 3 has {self.blocks[2]} blocks, which cannot be split into "
                f"{self.stage3_splits} equal parts"
            )

    @property
    def widest_multiplier(self) -> float:
        """The largest ``widened`` multiplier: one that gives the first stage ``MAX_PLANES``
        channels (a memory guard; a mistyped 100 would ask for hundreds of GB)."""
        return MAX_PLANES / self.planes

    def widened(self, multiplier: float) -> DDRNetSpec:
        """The same topology with branch and head widths scaled (e.g. DDRNet-39 1.5x);
        ``multiplier`` > 0 (widths are rounded to multiples of 8, at least 8), for a first
        stage of at most ``MAX_PLANES`` channels."""
        if not (isinstance(multiplier, (int, float)) and math.isfinite(multiplier)) or (
            multiplier <= 0
        ):
            raise ValueError(f"width_multiplier must be a number > 0, got {multiplier!r}")
        if multiplier > self.widest_multiplier:
            raise ValueError(
                f"width_multiplier {multiplier:g} gives {self.planes * multiplier:g} channels in "
                f"the first stage, more than {MAX_PLANES} (8x DDRNet-23-slim, 4x DDRNet-23)"
            )

        def scale(channels: int) -> int:
            return max(8, int(round(channels * multiplier / 8)) * 8)

        return dataclasses.replace(
            self,
            planes=scale(self.planes),
            head_planes=scale(self.head_planes),
            classifier_planes=scale(self.classifier_planes),
        )

    def to_dict(self) -> dict[str, Any]:
        """The spec as JSON-ready values. The norm and fusion fields are left out at their
        defaults, so a paper-form model's metadata is what it was before they existed (and
        stays readable by versions that predate them); ``from_dict`` restores the defaults."""
        values = {**dataclasses.asdict(self), "blocks": list(self.blocks)}
        for name in _LATER_FIELDS:
            if values[name] == _DEFAULTS[name]:
                del values[name]
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DDRNetSpec:
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown DDRNetSpec fields {unknown}; valid: {sorted(known)}")
        values = dict(values)
        if "blocks" in values:
            values["blocks"] = tuple(int(count) for count in values["blocks"])
        return cls(**values)


# Fields added after model files were first written; ``to_dict`` omits them at their defaults.
_LATER_FIELDS = ("norm", "norm_groups", "fusion")
_DEFAULTS = {field.name: field.default for field in dataclasses.fields(DDRNetSpec)}
