"""Reading a model file in any of its forms, without unpickling arbitrary code, into a
``RawCheckpoint``: its tensors, its ``ModelMetadata`` (if any) and where it came from.

* ``ddrnet`` model files: ``.safetensors`` with ``ModelMetadata`` in the header
  (``read_metadata`` reads the header alone);
* PyTorch files (``weights_only``): the official checkpoints, mmseg's, our training
  checkpoints, inside the usual wrappers (``{"state_dict": ...}``, ``{"model": ...}``; when a
  run kept an exponential moving average of its weights, ``state_dict_ema``, that average,
  since it is what the run evaluated);
* and, named for what they are instead of being unpickled: pictures, text, ONNX files,
  TorchScript exports, an ncnn export's ``.bin``.

Mapping the tensors onto a model is ``ddrnet.models.checkpoint``'s.
"""

from __future__ import annotations

import pickle
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ddrnet.errors import DDRNetError
from ddrnet.models.metadata import ModelMetadata


class CheckpointError(DDRNetError, ValueError):
    """A checkpoint cannot be read or does not fit the model; the message says why."""


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
