"""A training run's folder: what each epoch writes, in which order, and how resume repairs it.

``last.pt`` holds everything the other files are made from (weights, optimiser, epoch,
``best_miou``, the ``history`` of metrics records and the model metadata), so it is written
first and is the epoch's commit point. Then, when val mIoU improved, ``best.pt`` (the same
state) and ``best.safetensors`` (the evaluated weights), then ``metrics.jsonl`` (one line per
finished epoch, rewritten whole from the history). Every file goes through ``ddrnet.atomic``,
so a kill leaves each file either as it was or complete, and at any moment ``last.pt`` is the
previous epoch's or this one's; the files after it are at most that one epoch behind, which
``repair_run`` restores from ``last.pt`` on ``--resume``. No finished epoch is lost.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ddrnet.atomic import (
    atomic_write_text,
    json_values,
    remove_stale_temporaries,
    why_not_writable,
)
from ddrnet.engine.checkpointing import TrainingError, atomic_save, refuse_model_file
from ddrnet.models import ModelMetadata, read_checkpoint, save_model

logger = logging.getLogger(__name__)

LAST, BEST, BEST_MODEL, METRICS = "last.pt", "best.pt", "best.safetensors", "metrics.jsonl"
RUN_FILES = (LAST, BEST, BEST_MODEL, METRICS)
CONFIG = "config.yaml"  # the run's resolved recipe, written once its checks passed
# The first line of every config.yaml a run writes: what tells it from a recipe kept there.
CONFIG_HEADER = "# written by ddrnet train: the resolved recipe of the run in this folder\n"
# Every file a run writes: the temporaries a kill left of any of them are removed.
WRITTEN_FILES = (*RUN_FILES, CONFIG)


def checked_output(output: Path, resume: bool | str, config_text: str = "") -> Path | None:
    """The checkpoint to resume from (None for a new run): ``output``'s ``last.pt`` for
    ``resume=True``, the file ``resume`` names, or the ``last.pt`` of the run folder it
    names. Refuses before anything is written: a missing checkpoint to resume, or a new run
    over a folder that holds a run's files (its ``last.pt``, ``best.*`` or ``metrics.jsonl``
    would be overwritten or mixed) or a ``config.yaml`` that no run wrote (a recipe kept
    there would be replaced; a run stopped before its first checkpoint leaves its own,
    ``CONFIG_HEADER`` first, which a new run replaces) and that differs from
    ``config_text``."""
    resume_path = output / LAST if resume is True else Path(resume) if resume else None
    if resume == "":  # an empty variable (`--resume "$RUN"`): no new run by mistake
        raise TrainingError("--resume '': give a checkpoint or run folder, or no value")
    if resume_path is not None and resume_path.is_dir():  # `--resume runs/x`: a run folder
        resume_path = resume_path / LAST
    if output.exists() and not output.is_dir():
        raise TrainingError(f"train.output_dir={output} is a file, not a folder")
    reason = why_not_writable(output)
    if reason is not None:
        raise TrainingError(f"train.output_dir={output}: {reason}")
    if resume_path is not None and resume_path.is_file():
        refuse_model_file(resume_path)  # now, before the run's set-up says anything
    if resume_path is not None and not resume_path.is_file():
        never = " (the run stopped before its first epoch: start it again without --resume)"
        started = resume is True and (output / CONFIG).is_file()
        raise TrainingError(
            f"no checkpoint to resume from at {resume_path}{never if started else ''}"
        )
    present = [name for name in RUN_FILES if (output / name).exists()]
    if resume_path is not None and present and resume_path.resolve().parent != output.resolve():
        raise TrainingError(
            f"train.output_dir={output} holds another run ({', '.join(present)}); resuming "
            f"{resume_path} there would replace it: give an empty train.output_dir, or "
            "resume that run itself (nothing was overwritten)"
        )
    if resume_path is None and present:
        advice = (
            "continue it with --resume"
            if LAST in present
            else f"continue from its best.pt with --resume {output / BEST}"
            if BEST in present
            else "move them away"
        )
        raise TrainingError(
            f"train.output_dir={output} already holds a run ({', '.join(present)}); {advice}, "
            "or give another train.output_dir (nothing was overwritten)"
        )
    config = output / CONFIG
    kept = config.read_text() if resume_path is None and config.is_file() else None
    if kept is not None and not kept.startswith(CONFIG_HEADER) and kept != config_text:
        raise TrainingError(
            f"train.output_dir={output} holds a {CONFIG} that is not this run's (a recipe?); "
            f"a run writes its own {CONFIG} there: give another train.output_dir or move it "
            "(nothing was overwritten)"
        )
    return resume_path


def metrics_text(history: list[dict[str, Any]]) -> str:
    """``metrics.jsonl``'s content: one JSON line per finished epoch; a score nothing was
    scored for (the IoU of a class absent from the validation frames: nan) is ``null``,
    as in every JSON file we write (``atomic.json_values``)."""
    return "".join(json.dumps(json_values(record), allow_nan=False) + "\n" for record in history)


def write_epoch(
    output: Path, state: dict[str, Any], model: torch.nn.Module, improved: bool
) -> None:
    """Write the epoch's files in commit order (see the module's docstring). ``state`` is
    ``last.pt``'s content, ``model`` the evaluated one (the weight average when there is one).
    A write that fails (a full disk) is a ``TrainingError`` naming the file and the epoch
    that ``last.pt`` holds intact; the files not yet written are as they were."""
    metadata = ModelMetadata.from_json(state["metadata"])
    text = metrics_text(state["history"])
    writes: list[tuple[str, Callable[[], object]]] = [
        (LAST, lambda: atomic_save(state, output / LAST))
    ]
    if improved:
        writes.append((BEST, lambda: atomic_save(state, output / BEST)))
        writes.append((BEST_MODEL, lambda: save_model(model, output / BEST_MODEL, metadata)))
    writes.append((METRICS, lambda: atomic_write_text(text, output / METRICS)))
    for name, write in writes:
        try:
            write()
        except OSError as error:
            epoch = state["epoch"] - (name == LAST)
            kept = (
                f"{output / LAST} holds epoch {epoch} intact; make room and continue with --resume"
                if epoch
                else "no epoch was checkpointed yet"
            )
            raise TrainingError(
                f"cannot write {output / name}: {error.strerror or error}; {kept}"
            ) from error


def best_epoch(state: dict[str, Any]) -> int | None:
    """The epoch whose val mIoU is ``state["best_miou"]`` (the first one: later epochs
    replace the best only when they beat it); None before any evaluation."""
    for record in state.get("history", []):
        if record.get("val_mIoU") == state["best_miou"]:
            return record["epoch"]
    return None


def _saved_epoch(path: Path) -> int | None:
    """The epoch ``best.pt`` or ``best.safetensors`` was written at; None if unreadable."""
    try:
        if path.suffix == ".safetensors":
            return read_checkpoint(path).metadata.training["epoch"]
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)["epoch"]
    except (OSError, RuntimeError, ValueError, LookupError, TypeError, AttributeError):
        return None


def repair_run(output: Path, state: dict[str, Any], model: torch.nn.Module) -> list[str]:
    """Finish what a kill left half done, from the resumed ``state`` (with ``model`` holding
    its evaluated weights): remove stale temporaries, write ``best.*`` when ``last.pt``'s epoch
    is the best one and they lag behind it, and make ``metrics.jsonl`` one line per finished
    epoch. Returns the names of the files repaired (logged). A folder without a run's files
    is a new one for a checkpoint resumed from elsewhere: its files are written, not
    repaired, and the best epoch, unless it is the last, stays with the run it came from."""
    output.mkdir(parents=True, exist_ok=True)
    for path in remove_stale_temporaries(output, WRITTEN_FILES):
        logger.info("removed %s, a temporary file left by an interrupted write", path)
    new_folder = not any((output / name).exists() for name in RUN_FILES)
    repaired = []
    best = best_epoch(state)
    if best is not None and best == state["epoch"]:
        if _saved_epoch(output / BEST) != best or _saved_epoch(output / BEST_MODEL) != best:
            atomic_save(state, output / BEST)
            save_model(model, output / BEST_MODEL, ModelMetadata.from_json(state["metadata"]))
            repaired += [BEST, BEST_MODEL]
    elif best is not None and new_folder:
        logger.info(
            "best.* not written to %s: the run's best epoch, %d (val mIoU %.2f), is not the "
            "last one, and stays in the folder it was trained in",
            output, best, state["best_miou"],
        )  # fmt: skip
    elif best is not None and _saved_epoch(output / BEST_MODEL) != best:
        logger.warning(
            "%s does not hold epoch %d, the best one of the run (val mIoU %.2f); it was not "
            "written by this run, and cannot be rewritten from last.pt",
            output / BEST_MODEL, best, state["best_miou"],
        )  # fmt: skip
    if "history" in state:
        text = metrics_text(state["history"])
        metrics = output / METRICS
        if not metrics.is_file() or metrics.read_text() != text:
            atomic_write_text(text, metrics)
            repaired.append(METRICS)
    if repaired and new_folder:
        logger.info("%s written to %s from epoch %d", ", ".join(repaired), output, state["epoch"])
    elif repaired:
        logger.info(
            "repaired %s after an interrupted epoch: they now match %s (epoch %d)",
            ", ".join(repaired), LAST, state["epoch"],
        )  # fmt: skip
    return repaired
