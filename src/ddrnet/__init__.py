"""DDRNet: real-time semantic segmentation with Deep Dual-Resolution Networks.

>>> import ddrnet
>>> model = ddrnet.create_model("ddrnet_23_slim", num_classes=11)
>>> labels = ddrnet.Predictor(model).predict("street.png")  # (H, W) class indices
>>> trained = ddrnet.create_model(weights=ddrnet.DDRNet23Slim_Weights.CAMVID)  # bundled
>>> labels = ddrnet.Predictor(ddrnet.load()).predict("street.png")  # the bundled CamVid model
"""

from __future__ import annotations

from ddrnet.engine.predictor import Predictor
from ddrnet.engine.temporal import TemporalSmoother
from ddrnet.loading import load
from ddrnet.models import (
    CheckpointError,
    DDRNet23Slim_Weights,
    ModelMetadata,
    WeightsEnum,
    count_macs,
    count_parameters,
    create_model,
    get_weights,
    list_models,
    load_weights,
    register_model,
    save_model,
)
from ddrnet.video import VideoSource

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "DDRNet23Slim_Weights",
    "ModelMetadata",
    "Predictor",
    "TemporalSmoother",
    "VideoSource",
    "WeightsEnum",
    "__version__",
    "count_macs",
    "count_parameters",
    "create_model",
    "get_weights",
    "list_models",
    "load",
    "load_weights",
    "register_model",
    "save_model",
]
