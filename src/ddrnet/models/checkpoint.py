"""Reading, converting and writing DDRNet weights.

Supported inputs, all loaded without unpickling arbitrary code:

* ``ddrnet`` model files: ``.safetensors`` with ``ModelMetadata`` in the header;
* the official ImageNet checkpoints (plain state dict; the classifier keys ``down5``,
  ``last_layer`` and ``linear`` have no counterpart in the segmentation network);
* the official Cityscapes/CamVid checkpoints (every key prefixed ``model.``, an extra
  ``loss.criterion.weight``, with or without the auxiliary head ``seghead_extra``);
* the usual wrappers: ``{"state_dict": ...}``, ``{"model": ...}``, ``module.`` from DDP;
* our own training checkpoints (``{"model": state_dict, "optimizer": ..., ...}``); when the
  run kept an exponential moving average of its weights (``state_dict_ema``, also timm's
  key), that average is read, since it is what the run evaluated.

Conversion is ``checkpoint_filter_fn(state_dict, model)``, timm's hook, in one pass over the
keys, and strict, as in segmentation_models_pytorch: a key that no rule maps, a mapped key the
model does not have, a missing weight, or a shape mismatch outside the class-dependent layers
is an error that names every offending key. A different number of classes re-initialises the
class-dependent layers and the ``LoadReport`` says so. ``check_weights_fit`` runs the same
filter on a shape-only (meta device) build before a model is allocated.
"""

from __future__ import annotations

import logging
import pickle
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ddrnet import atomic
from ddrnet.errors import DDRNetError
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


class CheckpointError(DDRNetError, ValueError):
    """A checkpoint cannot be read or does not fit the model; the message says why."""


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


@dataclass
class RawCheckpoint:
    state_dict: dict[str, torch.Tensor]
    metadata: ModelMetadata | None
    source: str


def read_checkpoint(path: str | Path) -> RawCheckpoint:
    """Read tensors (and ddrnet metadata, if any) from a ``.safetensors`` or PyTorch file.

    Pickled files are opened with ``weights_only=True``: a file that holds anything but
    tensors and plain containers is refused rather than executed. The name of a bundled
    model (``ddrnet.models.weights``: ``camvid_ddrnet23_slim``, ...) stands for its file.
    """
    from ddrnet.models.weights import bundled_names, resolve_bundled_name

    path = resolve_bundled_name(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path} does not exist or is not a file (bundled models, usable by "
            f"name: {', '.join(bundled_names())})"
        )
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    refuse_what_is_no_pytorch_file(path)
    try:
        with warnings.catch_warnings():  # torch's note on pickle protocols: not the user's
            warnings.simplefilter("ignore", UserWarning)
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # torch's own text advises unsafe loading, in terminal colours; only what it found.
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
        stopped = f" (weights-only loading stopped at {found.group(1)})" if found else ""
        raise CheckpointError(
            f"refusing to load {path}: it is not a plain weights file, and loading it would "
            f"run code stored inside it{stopped}. Only load checkpoints from sources you "
            "trust; convert them to .safetensors."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise CheckpointError(f"cannot read checkpoint {path}: {error}") from None
    metadata = None
    if isinstance(payload, dict) and isinstance(payload.get("metadata"), str):
        metadata = ModelMetadata.from_json(payload["metadata"], source=str(path))
    return RawCheckpoint(_unwrap(payload, path), metadata, str(path))


def refuse_what_is_no_pytorch_file(path: Path) -> None:
    """Name what a file is when it is plainly no PyTorch checkpoint (a picture, text, an
    ONNX file, a TorchScript export), instead of torch's advice to unpickle it unsafely."""
    import zipfile

    with path.open("rb") as stream:
        head = stream.read(9)
    if not head:
        raise CheckpointError(f"checkpoint {path} is an empty file")
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000:
        raise CheckpointError(
            f"{path} is a safetensors model file under another suffix: name it .safetensors"
        )  # safetensors: an 8-byte header length, then the JSON header
    if head.startswith(b"PK"):  # torch.save's zip format, and TorchScript's
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except zipfile.BadZipFile:
            return  # torch will say what is wrong
        if any(name.split("/", 1)[-1].startswith("code/") for name in names):
            raise CheckpointError(
                f"{path} is a TorchScript export (torch.jit), not a checkpoint: load the "
                ".safetensors/.pt model it was exported from"
            )
        return
    if path.suffix == ".bin" and path.with_suffix(".param").is_file():
        raise CheckpointError(
            f"{path} holds the weights of the ncnn export {path.with_suffix('.param')}: "
            "name that .param file instead"
        )
    if not head.startswith(b"\x80"):  # pickle protocol 2+: what older torch.save wrote
        raise CheckpointError(
            f"checkpoint {path} is not a PyTorch or safetensors file (it starts with "
            f"{head[:4]!r}); "
            "ONNX files run with predict/eval/serve --checkpoint model.onnx"
        )


def _read_safetensors(path: Path) -> RawCheckpoint:
    from safetensors import SafetensorError, safe_open

    try:
        tensors: dict[str, torch.Tensor] = {}
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            header = handle.metadata() or {}
            for key in handle.keys():
                tensors[key] = handle.get_tensor(key)
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"cannot read safetensors file {path}: {error}") from None
    return RawCheckpoint(tensors, _metadata_of(header, path), str(path))


def read_metadata(path: str | Path) -> ModelMetadata | None:
    """The ``ModelMetadata`` of a ``.safetensors`` model file, reading its header only (no
    weights); ``None`` when the file carries none. Raises ``CheckpointError``."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            header = handle.metadata() or {}
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"cannot read safetensors file {path}: {error}") from None
    return _metadata_of(header, path)


def _metadata_of(header: dict[str, str], path: Path) -> ModelMetadata | None:
    if "ddrnet" not in header:
        return None
    try:
        return ModelMetadata.from_json(header["ddrnet"], source=str(path))
    except ValueError as error:
        raise CheckpointError(str(error)) from None


# Where wrappers keep the weights, in order of preference: an exponential moving average of
# the weights (timm's key, and ours when train.ema_decay is set) is what such a run evaluated.
_STATE_DICT_KEYS = ("state_dict_ema", "state_dict", "model", "model_state", "net")


def _unwrap(payload: object, path: Path) -> dict[str, torch.Tensor]:
    """Find the state dict inside the usual wrappers."""
    for _ in range(3):
        if isinstance(payload, dict) and not _is_state_dict(payload):
            inner = next(
                (payload[k] for k in _STATE_DICT_KEYS if k in payload),
                None,
            )
            if inner is None:
                break
            payload = inner
    if not isinstance(payload, dict) or not _is_state_dict(payload):
        raise CheckpointError(
            f"{path} holds no state dict: expected a mapping of names to tensors, possibly "
            "under 'state_dict' or 'model'"
        )
    return dict(payload)


def _is_state_dict(value: dict) -> bool:
    return bool(value) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()
    )


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
