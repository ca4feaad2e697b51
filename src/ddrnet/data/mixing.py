"""Mixing across frames: ClassMix and copy-paste of chosen classes, applied to a batch.

ClassMix (Olsson et al., WACV 2021) pastes the pixels of some classes of one training crop
onto another: the image pixels and their labels move together, at the same position, so a
pedestrian from one street stands in front of the buildings of another. With a fixed list of
classes it is copy-paste of those objects (Ghiasi et al., CVPR 2021, without the extra
scale jitter: the crops are already scaled and placed at random). Both act on whole batches
of crops, as the DataLoader's ``collate_fn``, so they cost one masked copy per image and run
in the loader workers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import default_collate

from ddrnet.models.metadata import IGNORE_INDEX


@dataclass(frozen=True)
class ClassMix:
    """A ``collate_fn`` that stacks ``(image, label)`` samples and mixes the batch.

    Image ``i`` of the batch takes its pixels from image ``(i + 1) % N`` (the batch as drawn,
    before any mixing) with probability ``probability``, wherever that source's label is one
    of the pasted classes; labels follow the pixels. The pasted classes are ``classes`` when
    given (copy-paste of those objects), else a random half (rounded up) of the classes present
    in the source (ClassMix). Void pixels are never pasted. Randomness comes from torch's RNG,
    which the training loop seeds per epoch (and the DataLoader per worker), so a resumed run
    draws the same mixes.

    Attributes:
        probability: chance that an image receives a paste, in (0, 1].
        classes: class ids to paste, or None for ClassMix's random half.
        ignore_index: the void label, never pasted.
    """

    probability: float
    classes: tuple[int, ...] | None = None
    ignore_index: int = IGNORE_INDEX

    def __call__(
        self, samples: Sequence[tuple[torch.Tensor, torch.Tensor]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``samples``: ``(image (3, H, W) uint8, label (H, W) int64)`` pairs of one size.
        Returns ``(images (N, 3, H, W), labels (N, H, W))`` as ``default_collate`` would,
        mixed."""
        images, labels = default_collate(samples)
        return mix_batch(images, labels, self.probability, self.classes, self.ignore_index)


def mix_batch(
    images: torch.Tensor,
    labels: torch.Tensor,
    probability: float,
    classes: tuple[int, ...] | None,
    ignore_index: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """ClassMix of a batch (see ``ClassMix``): ``images (N, C, H, W)``, ``labels (N, H, W)``;
    returns new tensors, the inputs unchanged. A batch of one is returned as it is."""
    count = images.shape[0]
    if count < 2:
        return images, labels
    mixed_images, mixed_labels = images.clone(), labels.clone()
    receives = torch.rand(count) < probability
    for target in torch.nonzero(receives).flatten().tolist():
        source = (target + 1) % count
        mask = paste_mask(labels[source], classes, ignore_index)
        mixed_images[target][:, mask] = images[source][:, mask]
        mixed_labels[target][mask] = labels[source][mask]
    return mixed_images, mixed_labels


def paste_mask(
    label: torch.Tensor, classes: tuple[int, ...] | None, ignore_index: int
) -> torch.Tensor:
    """``(H, W)`` bool: the pixels of ``label`` whose class is pasted: one of ``classes``, or
    of a random half (rounded up) of the non-void classes present when ``classes`` is None."""
    if classes is None:
        present = torch.unique(label)
        present = present[present != ignore_index]
        if present.numel() == 0:
            return torch.zeros_like(label, dtype=torch.bool)
        chosen = present[torch.randperm(present.numel())[: (present.numel() + 1) // 2]]
    else:
        chosen = torch.tensor(classes, dtype=label.dtype)
    return torch.isin(label, chosen)


def class_ids(names: Sequence[str], class_names: Sequence[str], key: str) -> tuple[int, ...]:
    """The ids of class ``names`` (case-insensitive) in ``class_names``; a ``ValueError``
    naming ``key`` and the known classes for a name that is not one of them."""
    lookup = {name.lower(): index for index, name in enumerate(class_names)}
    unknown = [name for name in names if name.lower() not in lookup]
    if unknown:
        raise ValueError(
            f"{key}: {', '.join(map(repr, unknown))} not among the classes "
            f"({', '.join(class_names)})"
        )
    return tuple(sorted({lookup[name.lower()] for name in names}))
