"""DDRNet: real-time semantic segmentation with Deep Dual-Resolution Networks.

>>> import ddrnet
>>> model = ddrnet.create_model("ddrnet_23_slim", num_classes=11)
>>> labels = ddrnet.Predictor(model).predict("street.png")  # (H, W) class indices
>>> trained = ddrnet.create_model(weights=ddrnet.DDRNet23Slim_Weights.CAMVID)  # bundled
>>> labels = ddrnet.Predictor(ddrnet.load()).predict("street.png")  # the bundled CamVid model
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for type checkers and IDEs; at run time ``__getattr__`` imports them
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
    from ddrnet.video_source import VideoSource

# Each public name and the module it lives in, imported at its first use (PEP 562): the
# ``ddrnet`` command and ``import ddrnet.errors`` do not pay for PyTorch's import until a
# command needs it (Ctrl-C during that import is then the command's, one line).
_LAZY = {
    "Predictor": "ddrnet.engine.predictor",
    "TemporalSmoother": "ddrnet.engine.temporal",
    "load": "ddrnet.loading",
    "VideoSource": "ddrnet.video_source",
    **dict.fromkeys(
        (
            "CheckpointError",
            "DDRNet23Slim_Weights",
            "ModelMetadata",
            "WeightsEnum",
            "count_macs",
            "count_parameters",
            "create_model",
            "get_weights",
            "list_models",
            "load_weights",
            "register_model",
            "save_model",
        ),
        "ddrnet.models",
    ),
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'ddrnet' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # the next access is a plain lookup
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


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
