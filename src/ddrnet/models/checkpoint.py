"""Fitting weights into a DDRNet, and writing model files.

The weights come from ``ddrnet.models.checkpoint_file`` (any model file, read without
unpickling code), in ours or the official layout:

* the official ImageNet checkpoints (plain state dict; the classifier keys ``down5``,
  ``last_layer`` and ``linear`` have no counterpart in the segmentation network);
* the official Cityscapes/CamVid checkpoints (every key prefixed ``model.``, an extra
  ``loss.criterion.weight``, with or without the auxiliary head ``seghead_extra``);
* ``module.`` from DDP on every key; our own model files and training checkpoints.

Conversion is ``checkpoint_filter_fn(state_dict, model)``, timm's hook, in one pass over the
keys, and strict, as in segmentation_models_pytorch: a key that no rule maps, a mapped key the
model does not have, a missing weight, or a shape mismatch outside the class-dependent layers
is an error that names every offending key. A different number of classes re-initialises the
class-dependent layers and the ``LoadReport`` says so. ``check_weights_fit`` runs the same
filter on a shape-only (meta device) build before a model is allocated. ``save_model``
writes a ``.safetensors`` model file with its metadata, atomically.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ddrnet import atomic
from ddrnet.models.checkpoint_file import CheckpointError, RawCheckpoint, read_checkpoint
from ddrnet.models.metadata import ModelMetadata

logger = logging.getLogger(__name__)

# Keys that belong to the official training wrapper rather than to the network.
_WRAPPER_ONLY_PREFIXES = ("loss.",)
# Parts that exist only in one task's network, in our naming.
_CLASSIFICATION_ONLY = ("final_down.", "pre_logits.", "classifier.")
_SEGMENTATION_ONLY = ("dappm.", "head.", "aux_head.")
# Layers whose shape depends on the number of classes.
_CLASS_DEPENDENT = ("head.conv2.", "aux_head.conv2.", "classifier.")
# Every top-level module of either network: a key under one of these is in our layout.
_OUR_MODULES = ("backbone.", *_SEGMENTATION_ONLY, *_CLASSIFICATION_ONLY)


@dataclass
class LoadReport:
    """What loading did, beyond copying matching tensors."""

    source: str
    layout: str  # "ddrnet" or "official"
    loaded: int = 0
    dropped: list[str] = field(default_factory=list)  # keys with no place in this model
    reinitialised: list[str] = field(default_factory=list)  # class-dependent, shape changed
    missing: list[str] = field(default_factory=list)  # model keys left at initialisation

    @property
    def reinitialised_layers(self) -> list[str]:
        """The modules whose class-dependent tensors were re-initialised, sorted."""
        return _prefixes(self.reinitialised)

    def summary(self) -> str:
        parts = [f"loaded {self.loaded} tensors from {self.source} ({self.layout} layout)"]
        if self.dropped:
            parts.append(f"ignored {len(self.dropped)} keys with no counterpart in this model")
        if self.reinitialised:
            parts.append(
                "re-initialised the class-dependent layers "
                f"{self.reinitialised_layers} (number of classes differs)"
            )
        if self.missing:
            parts.append(f"left {_prefixes(self.missing)} at their initial values")
        return "; ".join(parts)


def _first_few(items: list[str], separator: str, count: int = 5) -> str:
    """The first ``count`` items joined, and how many more there are: a 14 KB line of every
    key of a model helps nobody."""
    more = f"{separator}... and {len(items) - count} more" if len(items) > count else ""
    return separator.join(items[:count]) + more


def _prefixes(keys: list[str]) -> list[str]:
    """Collapse parameter names to their module names for readable reports."""
    return sorted({key.rsplit(".", 1)[0] for key in keys})


def _strip_common_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove ``module.`` (DDP) and ``model.`` (official FullModel) while every key has it."""
    changed = True
    while changed:
        changed = False
        network_keys = [k for k in state_dict if not k.startswith(_WRAPPER_ONLY_PREFIXES)]
        for prefix in ("module.", "model."):
            if network_keys and all(k.startswith(prefix) for k in network_keys):
                state_dict = {
                    (k[len(prefix) :] if k.startswith(prefix) else k): v
                    for k, v in state_dict.items()
                }
                changed = True
    return state_dict


def _official_rules(stage3_splits: int) -> list[tuple[re.Pattern[str], str]]:
    """Regex rules from the official key names to ours for a given stage-3 split count."""
    stage_names = ["3"] if stage3_splits == 1 else [f"3_{i + 1}" for i in range(stage3_splits)]
    stage_names.append("4")
    rules = [
        (r"conv1\.", "backbone.stem."),
        (r"layer([12])\.", r"backbone.layer\1."),
        (r"layer5_\.", "backbone.high_bottleneck."),
        (r"layer5\.", "backbone.low_bottleneck."),
        (r"spp\.", "dappm."),
        (r"final_layer\.", "head."),
        (r"seghead_extra\.", "aux_head."),
        (r"down5\.", "final_down."),
        (r"last_layer\.", "pre_logits."),
        (r"linear\.", "classifier."),
    ]
    for index, name in enumerate(stage_names):
        stage = f"backbone.stages.{index}."
        rules += [
            (rf"layer{name}_\.", stage + "high."),
            (rf"layer{name}\.", stage + "low."),
            (rf"compression{name}\.", stage + "low_to_high."),
            (rf"down{name}\.", stage + "high_to_low."),
        ]
    return [(re.compile("^" + pattern), target) for pattern, target in rules]


def _our_key(key: str, rules: list[tuple[re.Pattern[str], str]]) -> tuple[str, str] | None:
    """``key`` under ddrnet's names and the layout it came in (``"ddrnet"`` or
    ``"official"``); ``None`` when it fits neither. No official name starts with one of our
    top-level module names, so one lookup tells the layouts apart."""
    if key.startswith(_OUR_MODULES):
        return key, "ddrnet"
    for pattern, target in rules:
        if pattern.match(key):
            return pattern.sub(target, key, count=1), "official"
    return None


def checkpoint_num_classes(
    raw: RawCheckpoint, stage3_splits: int, segmentation: bool = True
) -> int | None:
    """The class count of a checkpoint's segmentation head (or, with ``segmentation=False``,
    its ImageNet classifier), from the weights; ``None`` when it has no such layer (an
    ImageNet file read for a segmenter, a backbone). For checkpoints without metadata, such
    as the official ones: an 11-class CamVid file then builds an 11-class model instead of a
    19-class one with its trained head thrown away."""
    wanted = "head.conv2.weight" if segmentation else "classifier.weight"
    rules = _official_rules(stage3_splits)
    for key, value in _strip_common_prefixes(raw.state_dict).items():
        mapped = _our_key(key, rules)
        if mapped is not None and mapped[0] == wanted:
            return int(value.shape[0])
    return None


def checkpoint_filter_fn(
    state_dict: dict[str, torch.Tensor], model: nn.Module, source: str = "<state dict>"
) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Map a foreign or wrapped state dict onto ``model``'s keys, timm's checkpoint filter.

    One pass over the keys, after stripping the wrappers' ``module.``/``model.`` prefixes:
    each key is renamed from the official layout (or kept, in ours), then placed against the
    model. Returns the state dict to load strictly (class-dependent tensors of another shape
    left out, to stay initialised) and a ``LoadReport``. Raises ``CheckpointError`` naming
    every key that fits neither layout, a mix of the two layouts, keys the model lacks,
    shape mismatches and missing weights.
    """
    rules = _official_rules(model.spec.stage3_splits)
    expected = model.state_dict()
    is_segmentation = hasattr(model, "dappm")
    other_task_only = _CLASSIFICATION_ONLY if is_segmentation else _SEGMENTATION_ONLY
    report = LoadReport(source=source, layout="ddrnet")
    result: dict[str, torch.Tensor] = {}
    layouts: set[str] = set()
    unmapped, unknown, mismatched = [], [], []
    for original, value in _strip_common_prefixes(state_dict).items():
        if original.startswith(_WRAPPER_ONLY_PREFIXES):
            report.dropped.append(original)
            continue
        mapped = _our_key(original, rules)
        if mapped is None:
            unmapped.append(original)
            continue
        key, layout = mapped
        layouts.add(layout)
        if key not in expected:
            # Other-task parts (an ImageNet classifier into a segmenter), or an auxiliary head
            # that this model was built without, are dropped; anything else is an error.
            if key.startswith(other_task_only) or key.startswith("aux_head."):
                report.dropped.append(key)
            else:
                unknown.append(key)
        elif value.shape != expected[key].shape:
            if key.startswith(_CLASS_DEPENDENT):
                report.reinitialised.append(key)
            else:
                mismatched.append(f"{key} {tuple(value.shape)} vs {tuple(expected[key].shape)}")
        else:
            result[key] = value
    if unmapped:
        raise CheckpointError(
            f"{source}: {len(unmapped)} keys match neither the ddrnet nor the official "
            f"DDRNet layout: {', '.join(sorted(unmapped))}"
        )
    if len(layouts) > 1:
        raise CheckpointError(
            f"{source}: mixes ddrnet and official DDRNet key names; convert it from one layout"
        )
    report.layout = layouts.pop() if layouts else "official"
    _check_placed(unknown, mismatched, model, source)
    report.missing = _missing_weights(
        expected, result, report.reinitialised, is_segmentation, source
    )
    report.loaded = len(result)
    return result, report


def _check_placed(unknown: list[str], mismatched: list[str], model: nn.Module, source: str) -> None:
    if unknown:
        raise CheckpointError(
            f"{source}: {len(unknown)} keys have no counterpart in {type(model).__name__} "
            f"(is it another variant?): {_first_few(sorted(unknown), ', ')}"
        )
    if mismatched:
        raise CheckpointError(
            f"{source}: shape mismatch in {len(mismatched)} tensors (checkpoint vs model; is it "
            f"another variant?): {_first_few(mismatched, '; ')}"
        )


# The keys of an attention fusion module (``ddrnet.models.fusion``) in a bilateral stage.
_FUSION_ATTENTION = re.compile(r"(^|\.)stages\.\d+\.fuse_(low|high)\.")


def _missing_weights(
    expected: dict[str, torch.Tensor],
    result: dict[str, torch.Tensor],
    reinitialised: list[str],
    is_segmentation: bool,
    source: str,
) -> list[str]:
    """The model's keys the checkpoint legitimately lacks (``LoadReport.missing``); raises
    ``CheckpointError`` for any other missing weight."""
    own_task_only = _SEGMENTATION_ONLY if is_segmentation else _CLASSIFICATION_ONLY
    # Parts a checkpoint may lack legitimately: the other task's parts when converting between
    # ImageNet and segmentation forms, the auxiliary head, BN batch counters of old PyTorch.
    optional: tuple[str, ...] = ("aux_head.",)
    if not any(k.startswith(own_task_only) for k in result):
        optional += own_task_only  # a backbone-only transfer (e.g. ImageNet -> segmentation)
    missing = [k for k in expected if k not in result and k not in reinitialised]
    # Attention added to the bilateral fusions of a paper-form file (``model.fusion`` when
    # fine-tuning a published checkpoint) starts from its initial values; a file holding
    # some attention weights but not all is damaged.
    paper_fusion = not any(_FUSION_ATTENTION.search(k) for k in result)
    absent = [
        k
        for k in missing
        if not (
            k.startswith(optional)
            or k.endswith("num_batches_tracked")
            or (paper_fusion and _FUSION_ATTENTION.search(k))
        )
    ]
    if absent:
        raise CheckpointError(
            f"{source}: {len(absent)} weights of the model are missing from the checkpoint: "
            f"{', '.join(_prefixes(absent))}"
        )
    return [k for k in missing if not k.endswith("num_batches_tracked")]


def check_weights_fit(build: Callable[[], nn.Module], raw: RawCheckpoint) -> None:
    """Check that ``raw``'s tensors fit the model ``build()`` makes, before any of its memory
    is allocated: the model is built on the meta device (shapes only), then its size is
    compared with the weights present and the keys converted as ``load_weights`` would.

    A 3 KB file whose metadata claims ``planes=1024`` would otherwise build a model of tens of
    GB before reading a single weight. Raises ``CheckpointError`` naming the file.
    """
    try:
        with torch.device("meta"):
            shell = build()
    except (TypeError, ValueError, RuntimeError) as error:
        raise CheckpointError(
            f"{raw.source}: its metadata describes no valid model ({error})"
        ) from None
    needed = sum(t.numel() for t in shell.state_dict().values())
    held = sum(t.numel() for t in raw.state_dict.values())
    # Room for what may legitimately differ: an auxiliary head, another number of classes.
    if needed > 2 * held + 1_000_000:
        raise CheckpointError(
            f"{raw.source}: the model to build ({type(shell).__name__}, planes "
            f"{shell.spec.planes}) has {needed / 1e6:,.1f} M weights but the file holds only "
            f"{held / 1e6:,.3f} M; refusing to build it (another variant, or damaged or "
            "crafted metadata)"
        )
    checkpoint_filter_fn(raw.state_dict, shell, source=raw.source)


def load_weights(
    model: nn.Module, source: str | Path | dict[str, torch.Tensor] | RawCheckpoint
) -> LoadReport:
    """Load weights from a file, a read checkpoint or a state dict into ``model`` in place.

    Layers that are re-initialised or left at their initial values are logged at INFO level.
    """
    if isinstance(source, dict):
        state_dict, name = source, "<state dict>"
    else:
        raw = source if isinstance(source, RawCheckpoint) else read_checkpoint(source)
        state_dict, name = raw.state_dict, raw.source
    converted, report = checkpoint_filter_fn(state_dict, model, source=name)
    for key, tensor in converted.items():  # a diverged run's weights label every pixel alike
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(
                f"{name}: {key} holds NaN or infinite values (a run that diverged?)"
            )
    model.load_state_dict(converted, strict=False)
    if report.reinitialised or report.missing:
        logger.info(report.summary())
    return report


def save_model(model: nn.Module, path: str | Path, metadata: ModelMetadata) -> Path:
    """Write ``model``'s weights and ``metadata`` to one ``.safetensors`` file, atomically.

    Weights are stored in their current dtype (call ``.half()`` on a copy for a small file);
    ``num_batches_tracked`` counters are kept so that training statistics survive.
    """
    from safetensors.torch import save

    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"model files are .safetensors; got {path}")
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    data = save(tensors, metadata={"ddrnet": metadata.to_json()})
    atomic.remove_stale_temporaries(path.parent, (path.name,))  # of a write killed before
    atomic.atomic_write(path, lambda stream: stream.write(data))
    return path
