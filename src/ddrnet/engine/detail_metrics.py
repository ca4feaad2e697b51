"""Where the errors are: near class boundaries and on small objects.

mIoU is dominated by the large regions (road, sky, building), so two models can share an mIoU
while one loses the thin and distant things a driving stack cares about. These metrics make
that visible, accumulated over a data set like the confusion matrix:

* **Boundary IoU** (Cheng et al., CVPR 2021, arXiv 2103.16562): per class, the IoU of the
  ground truth's and the prediction's *boundary regions*, the pixels of each mask within ``d``
  pixels of its contour, with ``d = round(0.02 * image diagonal)`` (12 px at 480x360) as in the
  paper. Pixels far inside a region do not count, so it scores the edges alone. One change for
  whole scenes: the frame's border is no contour (a road that leaves the picture goes on beyond
  it), where the paper's object-centric code pads masks with zeros.
* **Objects found, by size**: each class's ground-truth mask split into connected regions
  (8-connectivity), each counted as *found* when at least half of its pixels are predicted as
  its class, in COCO's size buckets: small (< 32x32 pixels), medium (< 96x96), large. Touching
  objects of one class are one region: CamVid and Cityscapes' semantic labels do not separate
  instances. Regions under 16 pixels (4x4) are no objects: most are slivers that resizing
  left in the labels (386 of the 446 small Sky regions of CamVid val at 480x360 have 1-4
  pixels).

Pixels labelled ``ignore_index`` count for neither.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from ddrnet.engine.metrics import format_cell, nanmean, percent_or_nan
from ddrnet.models.metadata import IGNORE_INDEX

BOUNDARY_DILATION_RATIO = 0.02
SIZE_BUCKETS = ("small", "medium", "large")
# Upper bounds in pixels of the first two buckets (COCO's 32x32 and 96x96).
SIZE_LIMITS = (32 * 32, 96 * 96)
MIN_OBJECT_AREA = 16
FOUND_SHARE = 0.5


def boundary_width(height: int, width: int, ratio: float = BOUNDARY_DILATION_RATIO) -> int:
    """The band ``d`` in pixels: ``ratio`` of the image diagonal, rounded, at least 1."""
    return max(1, round(ratio * float(np.hypot(height, width))))


def boundary_region(mask: np.ndarray, width: int) -> np.ndarray:
    """The pixels of a boolean ``(H, W)`` mask within ``width`` pixels (chessboard distance)
    of a pixel outside it; outside the frame counts as inside the mask."""
    mask_u8 = mask.astype(np.uint8)
    kernel = np.ones((2 * width + 1, 2 * width + 1), np.uint8)
    # OpenCV's default border for erosion is the largest value: the frame edge erodes nothing.
    interior = cv2.erode(mask_u8, kernel)
    return mask & (interior == 0)


class DetailMetrics:
    """Accumulates boundary IoU and objects found by size over ``(H, W)`` label maps.

    ``counts`` is one int64 tensor, so that processes of a distributed evaluation can sum it:
    rows are classes; columns are boundary intersection, boundary union, then per size bucket
    the objects, the objects found, the pixels and the pixels predicted right.
    """

    _COLUMNS = 2 + 4 * len(SIZE_BUCKETS)

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = IGNORE_INDEX,
        dilation_ratio: float = BOUNDARY_DILATION_RATIO,
    ) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.dilation_ratio = dilation_ratio
        self.counts = torch.zeros(num_classes, self._COLUMNS, dtype=torch.int64)

    def update(
        self, index: int, prediction: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor
    ) -> None:
        """One image: ``prediction`` and ``target`` are integer ``(H, W)`` class-id maps;
        ``index``, its position in the data set (unused: the counts pool the frames; it is the
        frame accumulators' one signature, ``evaluate.FrameAccumulator``)."""
        prediction, target = _as_numpy(prediction), _as_numpy(target)
        if prediction.shape != target.shape or prediction.ndim != 2:
            raise ValueError(
                f"prediction {prediction.shape} and target {target.shape} must be one (H, W)"
            )
        valid = (target >= 0) & (target < self.num_classes) & (target != self.ignore_index)
        width = boundary_width(*target.shape, self.dilation_ratio)
        rows = np.zeros((self.num_classes, self._COLUMNS), np.int64)
        for cls in _classes_present(target, prediction, valid, self.num_classes):
            truth = target == cls
            predicted = (prediction == cls) & valid
            truth_edge = boundary_region(truth, width)
            predicted_edge = boundary_region(predicted, width) & valid
            rows[cls, 0] = np.count_nonzero(truth_edge & predicted_edge)
            rows[cls, 1] = np.count_nonzero(truth_edge | predicted_edge)
            if truth.any():
                rows[cls, 2:] = _objects_by_size(truth, predicted)
        self.counts += torch.from_numpy(rows)

    def compute(self) -> DetailResult:
        return DetailResult.from_counts(self.counts)


def _as_numpy(labels: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        labels = labels.cpu().numpy()
    return np.asarray(labels).astype(np.int64, copy=False)


def _classes_present(
    target: np.ndarray, prediction: np.ndarray, valid: np.ndarray, num_classes: int
) -> np.ndarray:
    """The class ids in ``target`` or ``prediction`` at valid pixels (bincount: np.unique
    sorts, tens of times slower on a frame)."""
    in_range = valid & (prediction >= 0) & (prediction < num_classes)
    seen = np.bincount(target[valid], minlength=num_classes)[:num_classes]
    seen += np.bincount(prediction[in_range], minlength=num_classes)[:num_classes]
    return np.flatnonzero(seen)


def _objects_by_size(truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Per size bucket: objects, objects found, pixels, pixels predicted right, for one
    class's ground-truth mask ``truth`` and its predicted mask."""
    count, regions, stats, _ = cv2.connectedComponentsWithStats(truth.astype(np.uint8), 8)
    areas = stats[1:, cv2.CC_STAT_AREA].astype(np.int64)
    right = np.bincount(regions[predicted], minlength=count)[1:].astype(np.int64)
    buckets = np.searchsorted(SIZE_LIMITS, areas, side="right")
    found = right >= FOUND_SHARE * areas
    counted = areas >= MIN_OBJECT_AREA
    out = np.zeros((len(SIZE_BUCKETS), 4), np.int64)
    for bucket in range(len(SIZE_BUCKETS)):
        chosen = (buckets == bucket) & counted
        out[bucket] = (
            np.count_nonzero(chosen),
            np.count_nonzero(found & chosen),
            areas[chosen].sum(),
            right[chosen].sum(),
        )
    return out.reshape(-1)


@dataclass
class DetailResult:
    """Percentages per class (``nan`` where a class has nothing to score) and their means
    over the classes that have something.

    ``boundary_iou[k]``: class ``k``'s boundary IoU. ``found[bucket][k]``: the share of
    class ``k``'s ground-truth objects of that size found; ``objects[bucket][k]``: how many
    there were. ``pixel_recall[bucket][k]``: the share of their pixels predicted as ``k``.
    """

    boundary_iou: list[float]
    mean_boundary_iou: float
    found: dict[str, list[float]]
    mean_found: dict[str, float]
    objects: dict[str, list[int]]
    pixel_recall: dict[str, list[float]]

    @classmethod
    def from_counts(cls, counts: torch.Tensor) -> DetailResult:
        counts = counts.double()
        boundary = percent_or_nan(counts[:, 0], counts[:, 1])
        found, mean_found, objects, recall = {}, {}, {}, {}
        for bucket, name in enumerate(SIZE_BUCKETS):
            column = 2 + 4 * bucket
            found[name] = percent_or_nan(counts[:, column + 1], counts[:, column])
            mean_found[name] = nanmean(found[name])
            objects[name] = [int(v) for v in counts[:, column]]
            recall[name] = percent_or_nan(counts[:, column + 3], counts[:, column + 2])
        return cls(boundary, nanmean(boundary), found, mean_found, objects, recall)

    def to_dict(self, class_names: list[str]) -> dict:
        def named(values: list) -> dict:
            return dict(zip(class_names, values))

        return {
            "mean_boundary_IoU": self.mean_boundary_iou,
            "boundary_IoU": named(self.boundary_iou),
            "boundary_dilation_ratio": BOUNDARY_DILATION_RATIO,
            "objects_found": {
                name: {
                    "mean": self.mean_found[name],
                    "per_class": named(self.found[name]),
                    "objects": named(self.objects[name]),
                    "pixel_recall": named(self.pixel_recall[name]),
                }
                for name in SIZE_BUCKETS
            },
            "object_size_limits_px": list(SIZE_LIMITS),
            "min_object_area_px": MIN_OBJECT_AREA,
        }

    def table(self, class_names: list[str]) -> str:
        """Boundary IoU and objects found per class, each bucket's object count beside it."""
        width = max(12, *(len(n) for n in class_names)) + 2
        header = f"{'class':<{width}}{'boundary IoU':>13}" + "".join(
            f"{'found ' + name:>19}" for name in SIZE_BUCKETS
        )
        lines = [header, "-" * len(header)]
        for k, name in enumerate(class_names):
            cells = "".join(
                f"{format_cell(self.found[b][k]):>10} of {self.objects[b][k]:<6}"
                for b in SIZE_BUCKETS
            )
            lines.append(f"{name:<{width}}{format_cell(self.boundary_iou[k]):>13}{cells}")
        means = "".join(f"{format_cell(self.mean_found[b]):>10}{'':<9}" for b in SIZE_BUCKETS)
        lines += [
            "-" * len(header),
            f"{'mean':<{width}}{format_cell(self.mean_boundary_iou):>13}{means}",
        ]
        small, medium = (int(np.sqrt(limit)) for limit in SIZE_LIMITS)
        lines.append(
            f"(%; objects: connected regions of a class, found when half their pixels are "
            f"right; small < {small}x{small} px, medium < {medium}x{medium}, none under "
            f"{MIN_OBJECT_AREA} px)"
        )
        return "\n".join(lines)
