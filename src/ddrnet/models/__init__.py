"""DDRNet networks, their registry, typed bundled weights and checkpoint conversion."""

from __future__ import annotations

from ddrnet.models.checkpoint import LoadReport, checkpoint_filter_fn, load_weights, save_model
from ddrnet.models.checkpoint_file import CheckpointError, read_checkpoint, read_metadata
from ddrnet.models.complexity import count_macs, count_parameters
from ddrnet.models.ddrnet import DDRNet, DDRNetClassifier
from ddrnet.models.factory import create_model
from ddrnet.models.metadata import ModelMetadata
from ddrnet.models.registry import list_models, register_model, variant_info
from ddrnet.models.spec import DDRNetSpec
from ddrnet.models.weights import (
    DDRNet23Slim_Weights,
    WeightsEnum,
    bundled_weights,
    get_weights,
)

__all__ = [
    "CheckpointError",
    "DDRNet",
    "DDRNet23Slim_Weights",
    "DDRNetClassifier",
    "DDRNetSpec",
    "LoadReport",
    "ModelMetadata",
    "WeightsEnum",
    "bundled_weights",
    "checkpoint_filter_fn",
    "count_macs",
    "count_parameters",
    "create_model",
    "get_weights",
    "list_models",
    "load_weights",
    "read_checkpoint",
    "read_metadata",
    "save_model",
    "register_model",
    "variant_info",
]
