"""An untrained CamVid model for the viz and serve tests (no dependence on training runs)."""

from __future__ import annotations

from torch import nn

import ddrnet
from ddrnet.data.labels import CAMVID
from ddrnet.models import ModelMetadata

from official_reference import randomize_batchnorm


def camvid_model(seed: int = 1) -> nn.Module:
    """An 11-class DDRNet-23-slim with CamVid metadata (names, palette, normalisation).

    Random BatchNorm statistics (``seed``) make its feature maps and predictions vary over
    the image: untrained, but enough to test pictures and serving end to end.
    """
    model = ddrnet.create_model("ddrnet_23_slim", num_classes=11)
    randomize_batchnorm(model, seed=seed)
    model.metadata = ModelMetadata(
        architecture="ddrnet_23_slim",
        num_classes=11,
        spec=model.spec.to_dict(),
        class_names=list(CAMVID.class_names),
        palette=[list(c) for c in CAMVID.palette],
        mean=list(CAMVID.mean),
        std=list(CAMVID.std),
        dataset="camvid",
    )
    return model.eval()
