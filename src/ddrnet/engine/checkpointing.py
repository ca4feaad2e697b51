"""Training checkpoints: written atomically (``ddrnet.atomic``), read back for an exact resume."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from ddrnet import atomic
from ddrnet.errors import DDRNetError, MissingFileError
from ddrnet.models.checkpoint_file import CheckpointError, refuse_what_is_no_pytorch_file


class TrainingError(DDRNetError, RuntimeError):
    """Training cannot go on; the last checkpoint on disk is intact."""


def atomic_save(payload: dict[str, Any], path: Path) -> None:
    """``torch.save`` through ``ddrnet.atomic.atomic_write``."""
    atomic.atomic_write(path, lambda stream: torch.save(payload, stream))


def refuse_model_file(path: Path) -> None:
    """A ``CheckpointError`` for a model file (``.safetensors``: weights only, no optimiser or
    epoch) given to resume from."""
    if path.suffix == ".safetensors":
        raise CheckpointError(
            f"cannot resume from {path}: a model file (weights only), not a training "
            "checkpoint; resume from the run's last.pt, or start a new run from it with "
            f"model.pretrained={path}"
        )


def load_training_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by ``atomic_save`` (weights-only unpickling)."""
    if not path.is_file():
        raise MissingFileError(f"no checkpoint to resume from at {path}")
    refuse_model_file(path)
    try:
        refuse_what_is_no_pytorch_file(path)
    except CheckpointError as error:
        raise CheckpointError(
            f"cannot resume from {path}: {error}; resume from a run's last.pt (model weights "
            "start a new run with model.pretrained)"
        ) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's text advises unsafe loading: not for a user
        raise CheckpointError(
            f"cannot resume from {path}: not a training checkpoint (it holds objects that "
            "only unsafe unpickling would load); resume from a run's last.pt"
        ) from None
    except Exception as error:  # corrupt or foreign file: say which
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(
            f"cannot resume from {path}: not a readable training checkpoint ({reason}); "
            "resume from a run's last.pt"
        ) from None
    needed = ("model", "optimizer", "scaler", "epoch", "iteration", "best_miou")
    missing = [key for key in needed if not (isinstance(state, dict) and key in state)]
    if missing:
        raise CheckpointError(
            f"cannot resume from {path}: it holds weights, not a training run's state (no "
            f"{', '.join(missing)}); resume from a run's last.pt, or start from these weights "
            "with model.pretrained"
        )
    return state


# Settings that decide the shape of the saved state: a resume must keep them.
STRUCTURAL_SETTINGS = (
    ("model", "name"),
    ("model", "aux_head"),
    ("model", "width_multiplier"),
    ("model", "norm"),
    ("model", "norm_groups"),
    ("model", "fusion"),
    ("optim", "optimizer"),
)


def check_resumable(state: dict[str, Any], config: dict[str, Any], path: Path) -> None:
    """Refuse, in one line, to resume ``state`` (read from ``path``) under a ``config`` (a
    plain dict) whose model or optimiser differs from the one the checkpoint was written by."""
    saved = state.get("config")
    if not isinstance(saved, dict):
        return
    # The group count builds nothing unless the norm is GroupNorm.
    grouped = config["model"]["norm"] == "group"
    changed = [
        f"{section}.{key}={saved[section][key]} (this run: {config[section][key]})"
        for section, key in STRUCTURAL_SETTINGS
        if isinstance(saved.get(section), dict)
        and key in saved[section]
        and saved[section][key] != config[section][key]
        and (grouped or (section, key) != ("model", "norm_groups"))
    ]
    if changed:
        raise TrainingError(
            f"cannot resume from {path}: it was written with {', '.join(changed)}; resume with "
            "its settings, or start a new run in another train.output_dir (nothing was changed)"
        )


def restore(target: Any, state_dict: dict[str, Any], what: str, path: Path) -> None:
    """``target.load_state_dict(state_dict)``; a mismatch (another number of classes, a
    checkpoint of another recipe) is a one-line ``TrainingError`` naming ``path``."""
    try:
        target.load_state_dict(state_dict)
    except (RuntimeError, ValueError, KeyError) as error:
        # PyTorch lists every offending tensor on a line of its own: say how many, show one.
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        problems = lines[1:] or lines or [type(error).__name__]
        first = problems[0] if len(problems[0]) <= 200 else problems[0][:200] + "..."
        count = f"{len(problems)} problems, the first: " if len(problems) > 1 else ""
        raise TrainingError(
            f"cannot resume from {path}: its {what} does not fit this run's ({count}{first}); "
            "resume with the settings it was written with, or start a new run in another "
            "train.output_dir (nothing was changed)"
        ) from None
