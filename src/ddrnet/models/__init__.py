"""DDRNet networks, their registry, and checkpoint conversion."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ddrnet.models.checkpoint import (
    CheckpointError,
    LoadReport,
    check_weights_fit,
    checkpoint_num_classes,
    load_weights,
    read_checkpoint,
    save_model,
)
from ddrnet.models.complexity import count_macs, count_parameters
from ddrnet.models.ddrnet import DDRNet, DDRNetClassifier, DDRNetSpec
from ddrnet.models.metadata import ModelMetadata
from ddrnet.models.registry import build_model, list_models, variant_info
from ddrnet.models.widths import apply_channel_widths

__all__ = [
    "CheckpointError",
    "DDRNet",
    "DDRNetClassifier",
    "DDRNetSpec",
    "LoadReport",
    "ModelMetadata",
    "build_model",
    "count_macs",
    "count_parameters",
    "create_model",
    "list_models",
    "load_weights",
    "read_checkpoint",
    "save_model",
    "variant_info",
]


def create_model(
    name: str | None = None,
    *,
    num_classes: int | None = None,
    checkpoint: str | Path | None = None,
    aux_head: bool = False,
    width_multiplier: float = 1.0,
) -> nn.Module:
    """Build a DDRNet variant, optionally with weights.

    Args:
        name: a registry name (``ddrnet.list_models()``). May be omitted when ``checkpoint``
            is a ddrnet ``.safetensors`` file, whose metadata names its architecture.
        num_classes: output classes; defaults to the checkpoint's (from its metadata, else
            from the shape of its final layer), else 19 (Cityscapes) for segmentation and
            1000 for the ImageNet forms. When it differs from the
            checkpoint's, the class-dependent layers are re-initialised (and logged).
        checkpoint: a ddrnet ``.safetensors`` file, an official DDRNet checkpoint (ImageNet
            or segmentation), or a ddrnet training checkpoint (``.pt``).
        aux_head: build the auxiliary head used for deep supervision in training.
        width_multiplier: scale branch and head widths (e.g. 1.5 for DDRNet-39 1.5x).

    The returned model is in eval mode and carries ``model.metadata`` (a ``ModelMetadata``)
    with classes, palette and normalisation for prediction.
    """
    raw = read_checkpoint(checkpoint) if checkpoint is not None else None
    metadata = raw.metadata if raw is not None else None
    if name is None:
        if metadata is None:
            raise CheckpointError(
                "create_model needs a model name, or a ddrnet .safetensors checkpoint whose "
                f"metadata names its architecture; available: {', '.join(list_models())}"
            )
        name = metadata.architecture
    info = variant_info(name)
    segmentation = info.task == "segmentation"
    widths: dict[str, list[int]] = {}
    if metadata is not None and metadata.architecture == name:
        try:
            spec = DDRNetSpec.from_dict(metadata.spec)
        except (TypeError, ValueError) as error:
            raise CheckpointError(f"{raw.source}: metadata spec: {error}") from None
        widths = metadata.channel_widths  # a channel-pruned model's narrower layers
    else:
        spec = info.spec if width_multiplier == 1.0 else info.spec.widened(width_multiplier)
    if num_classes is None and metadata is not None:
        num_classes = metadata.num_classes
    if num_classes is None and raw is not None:
        num_classes = checkpoint_num_classes(raw, spec.stage3_splits, segmentation)
    if num_classes is None:
        num_classes = 19 if segmentation else 1000

    def build() -> nn.Module:
        if segmentation:
            network = DDRNet(spec, num_classes=num_classes, aux_head=aux_head)
        else:
            network = DDRNetClassifier(spec, num_classes=num_classes)
        return apply_channel_widths(network, widths)

    if raw is not None:
        check_weights_fit(build, raw)  # before allocating a model the file may not fill
    model = build()
    if raw is not None:
        load_weights(model, raw)
    if metadata is None or metadata.num_classes != num_classes or metadata.architecture != name:
        metadata = ModelMetadata(
            architecture=name,
            num_classes=num_classes,
            spec=spec.to_dict(),
            task=info.task,
            aux_head=aux_head,
            channel_widths=widths,
        )
    model.metadata = metadata
    return model.eval()
