"""An untrained CamVid model for the viz and serve tests (no dependence on training runs)."""

from __future__ import annotations

import torch
from torch import nn

import ddrnet
from ddrnet.data.labels import CAMVID, LabelSet
from ddrnet.models import ModelMetadata

from official_reference import randomize_batchnorm


def labelled_model(labels: LabelSet = CAMVID, seed: int = 1) -> nn.Module:
    """A DDRNet-23-slim with a data set's metadata (names, palette, normalisation).

    Weights drawn from ``seed``, so every run tests the same model. Random BatchNorm
    statistics (``seed``) make its feature maps and predictions vary over
    the image: untrained, but enough to test pictures, serving and evaluation end to end.
    """
    with torch.random.fork_rng():  # the same weights in every run, global RNG untouched
        torch.manual_seed(seed)
        model = ddrnet.create_model("ddrnet_23_slim", num_classes=labels.num_classes)
    randomize_batchnorm(model, seed=seed)
    model.metadata = ModelMetadata(
        architecture="ddrnet_23_slim",
        num_classes=labels.num_classes,
        spec=model.spec.to_dict(),
        class_names=list(labels.class_names),
        palette=[list(c) for c in labels.palette],
        mean=list(labels.mean),
        std=list(labels.std),
        dataset=labels.name,
    )
    return model.eval()


def camvid_model(seed: int = 1) -> nn.Module:
    """An 11-class CamVid model (see ``labelled_model``)."""
    return labelled_model(CAMVID, seed)
