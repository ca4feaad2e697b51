"""DDRNet: real-time semantic segmentation with Deep Dual-Resolution Networks.

>>> import ddrnet
>>> model = ddrnet.create_model("ddrnet_23_slim", num_classes=11)
>>> labels = ddrnet.Predictor(model).predict("street.png")  # (H, W) class indices
"""

from __future__ import annotations

from ddrnet.engine.predictor import Predictor
from ddrnet.models import (
    CheckpointError,
    ModelMetadata,
    count_macs,
    count_parameters,
    create_model,
    list_models,
    load_weights,
    save_model,
)

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ModelMetadata",
    "Predictor",
    "__version__",
    "count_macs",
    "count_parameters",
    "create_model",
    "list_models",
    "load_weights",
    "save_model",
]
