"""Label definitions: class names, palettes and id mappings of the supported data sets."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

IGNORE_INDEX = 255


@dataclass(frozen=True)
class LabelSet:
    """The classes a model predicts, with one RGB colour each (0..255)."""

    name: str
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    ignore_index: int = IGNORE_INDEX
    # Per-channel RGB mean/std on the 0..1 scale used to normalise inputs.
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if len(self.class_names) != len(self.palette):
            raise ValueError(
                f"{self.name}: {len(self.class_names)} class names but {len(self.palette)} colours"
            )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


# CamVid, the 11-class SegNet version. Index 11 ("Unlabelled") is void and mapped to 255.
CAMVID = LabelSet(
    name="camvid",
    class_names=(
        "Sky",
        "Building",
        "Pole",
        "Road",
        "Pavement",
        "Tree",
        "SignSymbol",
        "Fence",
        "Car",
        "Pedestrian",
        "Bicyclist",
    ),  # fmt: skip
    palette=(
        (128, 128, 128),
        (128, 0, 0),
        (192, 192, 128),
        (128, 64, 128),
        (60, 40, 222),
        (128, 128, 0),
        (192, 128, 128),
        (64, 64, 128),
        (64, 0, 128),
        (64, 64, 0),
        (0, 128, 192),
    ),  # fmt: skip
    # Measured on the 367 training frames (see shared/data/README.md).
    mean=(0.412, 0.425, 0.433),
    std=(0.307, 0.312, 0.307),
)
CAMVID_VOID_INDEX = 11


def lookup_table(
    mapping: dict[int, int], default: int = IGNORE_INDEX, size: int = 256
) -> np.ndarray:
    """A ``uint8`` table ``t`` with ``t[source_id] = target_id`` and ``default`` elsewhere."""
    table = np.full(size, default, dtype=np.uint8)
    for source, target in mapping.items():
        table[source] = target
    return table


CAMVID_LUT = lookup_table({i: i for i in range(11)})  # 11 (void) and anything else -> 255
