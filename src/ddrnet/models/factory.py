"""``create_model``: a registry name (or a self-describing file) to a model, weights loaded.

The one way a model is built, in the manner of timm's ``create_model``: the name is looked up
in the registry (``ddrnet.models.registry``) and its ``@register_model`` builder
(``ddrnet.models.ddrnet``) is called with the keyword arguments; a checkpoint's metadata adds
its recorded topology and, for a channel-pruned file, its narrower layers. Weights are
checked against a shape-only build on the meta device before the real one is allocated, then
loaded strictly through ``checkpoint_filter_fn``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from ddrnet.limits import check_num_classes
from ddrnet.models.checkpoint import check_weights_fit, checkpoint_num_classes, load_weights
from ddrnet.models.checkpoint_file import CheckpointError, RawCheckpoint, read_checkpoint
from ddrnet.models.metadata import ModelMetadata
from ddrnet.models.registry import UnknownModelError, VariantInfo, list_models, variant_info
from ddrnet.models.spec import DDRNetSpec
from ddrnet.models.weights import WeightsEnum, bundled_names

logger = logging.getLogger(__name__)


def create_model(
    name: str | None = None,
    *,
    num_classes: int | None = None,
    checkpoint: str | Path | None = None,
    weights: WeightsEnum | None = None,
    aux_head: bool = False,
    width_multiplier: float = 1.0,
    norm: str | None = None,
    norm_groups: int | None = None,
    fusion: str | None = None,
    planes: int | None = None,
    blocks: Sequence[int] | None = None,
    dappm_planes: int | None = None,
    head_planes: int | None = None,
) -> nn.Module:
    """Build a DDRNet variant, optionally with weights.

    Args:
        name: a registry name (``ddrnet.list_models()``). May be omitted when ``checkpoint``
            is a ddrnet ``.safetensors`` file, whose metadata names its architecture.
        num_classes: output classes; defaults to the checkpoint's (from its metadata, else
            from the shape of its final layer), else the builder's: 19 (Cityscapes) for
            segmentation and 1000 for the ImageNet forms. When it differs from the
            checkpoint's, the class-dependent layers are re-initialised (and logged).
        checkpoint: a ddrnet ``.safetensors`` file, an official DDRNet checkpoint (ImageNet
            or segmentation), a ddrnet training checkpoint (``.pt``), or a bundled model's
            name (``camvid_ddrnet23_slim``).
        weights: a bundled model as a typed entry (``DDRNet23Slim_Weights.CAMVID``), the same
            as ``checkpoint=`` its name; give one of the two.
        aux_head: build the auxiliary head used for deep supervision in training.
        width_multiplier: scale branch and head widths (e.g. 1.5 for DDRNet-39 1.5x); a
            self-describing file's recorded widths take its place.
        norm: ``"batch"``, ``"group"`` (GroupNorm in place of every BatchNorm, of
            ``gcd(channels, norm_groups)`` groups) or ``"ibn"`` (IBN-Net's instance-batch
            mix in stages 1-3); ``DDRNetSpec.norm``. None: the variant's, BatchNorm. A
            self-describing file's recorded norm takes the place of both, so a model trained
            with GroupNorm or IBN is rebuilt with it.
        norm_groups: the most groups of a GroupNorm; None: the variant's, 32.
        fusion: how the branches take in each other's features: ``"add"`` (the paper's),
            ``"cbam"``, ``"pixel"`` or ``"transformer"`` (attention;
            ``ddrnet.models.fusion``). None: the variant's, ``"add"``; a self-describing
            file's recorded fusion takes its place.
        planes, blocks, dappm_planes, head_planes: a custom topology (``DDRNetSpec``'s
            fields: stem width, BasicBlocks per stage 1-4, DAPPM and head widths), as
            ``ddrnet search`` explores; None: the variant's. ``planes`` and ``head_planes``
            replace ``width_multiplier``. A self-describing file's spec takes their place.

    The returned model is in eval mode and carries ``model.metadata`` (a ``ModelMetadata``)
    with classes, palette and normalisation for prediction.
    """
    if name in bundled_names() and checkpoint is None and weights is None:
        raise UnknownModelError(
            f"{name!r} is a bundled model, not an architecture: "
            f"create_model(checkpoint={name!r}) builds it with its weights"
        )
    checkpoint = _checkpoint_of(checkpoint, weights)
    raw = read_checkpoint(checkpoint) if checkpoint is not None else None
    metadata = raw.metadata if raw is not None else None
    name = name if name is not None else _architecture_named_by(raw)
    info = variant_info(name)
    if aux_head and info.task != "segmentation":
        raise ValueError(f"{name} is an ImageNet classifier: it has no auxiliary head")
    widened = width_multiplier if width_multiplier != 1.0 else None
    asked = dict(width_multiplier=widened, norm=norm, norm_groups=norm_groups, fusion=fusion)
    asked.update(planes=planes, blocks=blocks, dappm_planes=dappm_planes, head_planes=head_planes)
    kwargs = _builder_kwargs(raw, name, aux_head, asked)
    classes = num_classes if num_classes is not None else _file_num_classes(raw, info)
    if classes is not None:
        kwargs["num_classes"] = check_num_classes(classes)
    if raw is not None:  # before allocating a model the file may not fill
        _check_fits(info, kwargs, raw, name)
    model = info.builder(**kwargs)
    if raw is not None:
        _load_checked(model, raw, classes_from_file=num_classes is None)
    if raw is not None and raw.metadata is None:
        _warn_assumed_normalisation(raw, info)
    if (
        metadata is None
        or metadata.num_classes != model.num_classes
        or metadata.architecture != name
    ):
        metadata = ModelMetadata(
            architecture=name,
            num_classes=model.num_classes,
            spec=model.spec.to_dict(),
            task=info.task,
            aux_head=aux_head,
            channel_widths=kwargs.get("channel_widths", {}),
        )
    model.metadata = metadata
    return model.eval()


def _warn_assumed_normalisation(raw: RawCheckpoint, info: VariantInfo) -> None:
    """A file without metadata (an official checkpoint, a bare state dict) says nothing of
    the mean and std its network was trained with: ImageNet's are assumed, as the official
    code trains. Said once, where the file holds a trained segmentation head (an ImageNet
    backbone read to start a training run is normalised by the run's own recipe): a model
    trained with other statistics would score points lower without a word."""
    if info.task != "segmentation" or checkpoint_num_classes(raw, info.spec.stage3_splits) is None:
        return
    logger.warning(
        "%s has no ddrnet metadata: its inputs are normalised with ImageNet's mean and std "
        "(as the official DDRNet code trains); for weights trained otherwise, set "
        "model.metadata.mean/std and save it with ddrnet.save_model",
        raw.source,
    )


def _check_fits(info: VariantInfo, kwargs: dict[str, Any], raw: RawCheckpoint, name: str) -> None:
    """``check_weights_fit`` of the model ``name`` for the file ``raw``; where the file names
    another architecture, the name given (``--model``) is the mistake, and the error says so."""
    try:
        check_weights_fit(lambda: info.builder(**kwargs), raw)
    except CheckpointError:
        recorded = raw.metadata.architecture if raw.metadata is not None else name
        if recorded == name:
            raise
        raise CheckpointError(
            f"{raw.source} holds a {recorded}, whose weights do not fit {name}, the model "
            "name given: drop it (the file names its architecture)"
        ) from None


def _checkpoint_of(checkpoint: str | Path | None, weights: WeightsEnum | None) -> str | Path | None:
    """The file ``create_model`` reads: ``checkpoint``, or the bundled ``weights``' file."""
    if weights is None:
        return checkpoint
    if not isinstance(weights, WeightsEnum):
        raise TypeError(
            f"weights takes a bundled entry such as DDRNet23Slim_Weights.CAMVID, got "
            f"{weights!r}; a file or a bundled model's name goes to checkpoint="
        )
    if checkpoint is not None:
        raise ValueError("give checkpoint or weights, not both")
    return weights.path


def _architecture_named_by(raw: RawCheckpoint | None) -> str:
    """The registry name a self-describing file records; other files name none."""
    if raw is None:
        raise TypeError(
            f"create_model() needs a model name or a checkpoint; names: {', '.join(list_models())}"
        )
    if raw.metadata is None:
        raise CheckpointError(
            f"{raw.source} does not name its architecture: give a model name (--model on the "
            "command line, name= in create_model), or use a ddrnet .safetensors file, whose "
            f"metadata names it; available: {', '.join(list_models())}"
        )
    return raw.metadata.architecture


def _file_num_classes(raw: RawCheckpoint | None, info: VariantInfo) -> int | None:
    """The class count a file holds: from its metadata, else from the shape of its final
    layer; None without a file (the builder's default)."""
    if raw is None:
        return None
    if raw.metadata is not None:
        return raw.metadata.num_classes
    segmentation = info.task == "segmentation"
    return checkpoint_num_classes(raw, info.spec.stage3_splits, segmentation)


def _load_checked(model: nn.Module, raw: RawCheckpoint, classes_from_file: bool) -> None:
    """``load_weights``; when the class count came from the file itself
    (``classes_from_file``), class-dependent layers of another shape are a ``CheckpointError``
    (a damaged or hand-edited file), not layers to re-initialise."""
    report = load_weights(model, raw)
    if report.reinitialised and classes_from_file:
        raise CheckpointError(
            f"{raw.source}: its metadata says {model.num_classes} classes, but its "
            f"class-dependent layers {report.reinitialised_layers} are shaped for another "
            "number: a damaged or hand-edited file"
        )


def _builder_kwargs(
    raw: RawCheckpoint | None, name: str, aux_head: bool, topology: dict[str, Any]
) -> dict[str, Any]:
    """The builder's keyword arguments but ``num_classes``. A file of this architecture
    brings its recorded ``spec`` (already widened, with its norm and fusion) and
    ``channel_widths`` (pruned layers) in place of ``topology`` (``width_multiplier`` and the
    builders' ``SPEC_OPTIONS``; None where not asked). Defaults are left out, so that a
    builder without an auxiliary head never sees ``aux_head``."""
    kwargs: dict[str, Any] = {"aux_head": True} if aux_head else {}
    metadata = raw.metadata if raw is not None else None
    if raw is not None and metadata is not None and metadata.architecture == name:
        try:
            kwargs["spec"] = DDRNetSpec.from_dict(metadata.spec)
        except (TypeError, ValueError) as error:
            raise CheckpointError(f"{raw.source}: metadata spec: {error}") from None
        _warn_overruled(raw.source, kwargs["spec"], topology)
        if metadata.channel_widths:
            kwargs["channel_widths"] = metadata.channel_widths
    else:
        kwargs.update({k: v for k, v in topology.items() if v is not None})
    return kwargs


def _warn_overruled(source: str, spec: DDRNetSpec, topology: dict[str, Any]) -> None:
    """Say which options asked for a self-describing file give way to what it records (its
    weights fit only the topology they were trained in)."""
    for option, value in topology.items():
        recorded = getattr(spec, option, None)
        value = tuple(value) if option == "blocks" and value is not None else value
        if value is None or value == recorded:
            continue
        what = f"{option} {recorded!r}" if recorded is not None else "its widths"
        logger.warning(
            "%s=%r does not apply to %s: the file records %s and is rebuilt as recorded "
            "(its weights fit only that)",
            option, value, source, what,
        )  # fmt: skip
