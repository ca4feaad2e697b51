"""Training checkpoints: atomic writes and exact resume."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def atomic_save(payload: dict[str, Any], path: Path) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over
    ``path``: a crash (even SIGKILL) mid-write leaves the previous file intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(payload, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load_training_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by ``atomic_save`` (weights-only unpickling)."""
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint to resume from at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # corrupt or foreign file: say which
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"cannot resume from {path}: not a readable training checkpoint ({reason})"
        ) from None
    needed = ("model", "optimizer", "scaler", "epoch", "iteration", "best_miou")
    missing = [key for key in needed if not (isinstance(state, dict) and key in state)]
    if missing:
        raise ValueError(
            f"cannot resume from {path}: it holds weights, not a training run's state (no "
            f"{', '.join(missing)}); resume from a run's last.pt, or start from these weights "
            "with model.pretrained"
        )
    return state
