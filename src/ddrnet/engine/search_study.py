"""A search's study on disk: Optuna's journal in the output folder (opened, checked to be
the same search, repaired after a kill), the candidates it scored, and ``leaderboard.json``.
``ddrnet.engine.search`` runs the search on it."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ddrnet.atomic import atomic_write_json, process_ended
from ddrnet.config import to_dict
from ddrnet.engine.config import Config
from ddrnet.engine.search_space import SearchSpace
from ddrnet.errors import UsageError

logger = logging.getLogger(__name__)

JOURNAL, LEADERBOARD = "search.journal", "leaderboard.json"
STUDY_NAME = "ddrnet-search"


@dataclass
class Candidate:
    """A scored candidate, as ``leaderboard.json`` lists it."""

    trial: int
    topology: dict[str, Any]
    miou: float  # the last validation's, in percent; the mean over the seeds trained
    macs_fraction: float  # of the recipe model's multiply-adds
    gmacs: float  # at the recipe's crop size
    params_millions: float
    minutes: float  # of training, all seeds
    run: str  # the candidate's folder: a run folder per seed, seed<N>/
    seed_mious: list[float] = dataclasses.field(default_factory=list)  # one per seed
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)  # recipe key -> choice

    @property
    def overrides(self) -> list[str]:
        """The recipe keys that train this candidate (``ddrnet train RECIPE ...``): its
        topology, then its recipe settings."""
        keys = {f"model.{key}": value for key, value in self.topology.items()} | self.settings
        return [f"{key}={json.dumps(value).replace(' ', '')}" for key, value in keys.items()]


def import_optuna() -> Any:
    try:
        import optuna
    except ImportError as error:
        raise UsageError(
            f"the architecture search needs Optuna ({error}): pip install 'ddrnet[search]'"
        ) from None
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our own line per candidate
    return optuna


def study_settings(
    config: Config, epochs: int, max_macs: float, space: SearchSpace, seeds: tuple[int, int],
    grid: bool,
) -> dict[str, Any]:  # fmt: skip
    """What makes two searches the same search: the recipe (but its output folder and
    epochs, which the search sets), the budget, the schedule, the space, the sampler and its
    seed, as JSON values."""
    recipe = to_dict(config)
    for key in ("output_dir", "epochs"):
        recipe["train"].pop(key, None)
    settings = {"recipe": recipe, "epochs": epochs, "max_macs": max_macs}
    settings |= {"seed": seeds[0], "seeds": seeds[1]}
    settings["space"] = space.as_record()
    if grid:  # (TPE's searches recorded no sampler)
        settings["sampler"] = "grid"
    return json.loads(json.dumps(settings))


def open_study(
    optuna: Any, config: Config, output: Path, epochs: int, max_macs: float,
    space: SearchSpace, seeds: tuple[int, int], trials: int,
    grid: dict[str, list[Any]] | None = None, parallel: bool = False,
) -> Any:  # fmt: skip
    """The search journalled in ``output`` (made if new), sampled by TPE or over ``grid``
    (the parameters' choices); an ``output`` that holds another search (another recipe,
    budget, schedule, space, sampler or seed) is refused, as is a journal that cannot be
    read. ``parallel``: candidates are proposed while others train, and TPE takes those as
    scoring the worst so far (its "constant liar"), so that it does not propose their
    neighbours again and again."""
    output.mkdir(parents=True, exist_ok=True)
    _drop_unfinished_line(output / JOURNAL)
    # seeds: the sampler's, and how many training seeds each candidate has
    if grid is None:
        with warnings.catch_warnings():  # constant_liar is "experimental" since Optuna 2.8
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = optuna.samplers.TPESampler(
                seed=seeds[0], n_startup_trials=max(3, trials // 3), constant_liar=parallel
            )
    else:  # every candidate is queued (_queue_grid): the sampler draws none itself
        sampler = optuna.samplers.RandomSampler(seed=seeds[0])
    try:
        storage = optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(output / JOURNAL))
        )
        study = optuna.create_study(
            storage=storage, study_name=STUDY_NAME, direction="maximize", sampler=sampler,
            load_if_exists=True,
        )  # fmt: skip
    except (ValueError, KeyError) as error:  # a journal edited or damaged by hand
        raise UsageError(
            f"{output / JOURNAL}: not a readable search journal ({error}); search into a new folder"
        ) from None
    settings = study_settings(config, epochs, max_macs, space, seeds, grid is not None)
    recorded = study.user_attrs.get("settings")
    if recorded is None:
        study.set_user_attr("settings", settings)
    elif recorded != settings:
        changed = sorted(k for k in {*settings, *recorded} if settings.get(k) != recorded.get(k))
        raise UsageError(
            f"{output} holds a search with another {', '.join(changed)}; continue it with the "
            "same recipe and options, or search into a new folder"
        )
    return study


def _drop_unfinished_line(journal: Path) -> None:
    """Cut a line a kill (or a full disk) left half written at the end of the journal: the
    next record would be appended to it, and Optuna would refuse the journal from there on.
    The record it held was never complete, so the trial it spoke of is redone."""
    if not journal.is_file() or journal.stat().st_size == 0:
        return
    data = journal.read_bytes()
    if data.endswith(b"\n"):
        return
    with journal.open("r+b") as stream:
        stream.truncate(data.rfind(b"\n") + 1)
        os.fsync(stream.fileno())
    logger.warning("%s: dropped the half-written last record of an interrupted search", journal)


def requeue_interrupted(optuna: Any, study: Any) -> None:
    """Give the candidates a kill or Ctrl-C interrupted another go (their run folders resume
    from the last epoch): a trial still marked running whose process has ended is failed,
    and each failed candidate not scored or queued since is queued again."""
    states = optuna.trial.TrialState
    for trial in study.get_trials(deepcopy=False, states=(states.RUNNING,)):
        if process_ended(trial.user_attrs.get("process", "0-0")):
            study.tell(trial.number, state=states.FAIL)
    settled = {
        candidate_key(trial.params)
        for trial in study.get_trials(deepcopy=False)
        if trial.state in (states.COMPLETE, states.WAITING, states.RUNNING)
    }
    for trial in study.get_trials(deepcopy=False, states=(states.FAIL,)):
        if candidate_key(trial.params) not in settled:
            study.enqueue_trial(trial.params)
            settled.add(candidate_key(trial.params))


def candidate_key(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True)


def scored_trials(optuna: Any, study: Any) -> dict[str, Any]:
    """The first scored trial of each candidate, by its parameters (``_key``)."""
    first: dict[str, Any] = {}
    complete = optuna.trial.TrialState.COMPLETE
    for trial in study.get_trials(deepcopy=False, states=(complete,)):
        first.setdefault(candidate_key(trial.params), trial)
    return first


def write_leaderboard(optuna: Any, study: Any, output: Path) -> list[Candidate]:
    """``output/leaderboard.json``: the scored candidates, best first, with the search's
    settings; returns the candidates."""
    scored = scored_trials(optuna, study).values()
    candidates = sorted(
        (Candidate(**trial.user_attrs["candidate"]) for trial in scored),
        key=lambda candidate: -candidate.miou,
    )
    refused = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.PRUNED,)))
    document = {
        **study.user_attrs["settings"],
        "candidates_over_budget": refused,
        "leaderboard": [
            {"rank": rank, **dataclasses.asdict(candidate), "overrides": candidate.overrides}
            for rank, candidate in enumerate(candidates, 1)
        ],
    }
    atomic_write_json(document, output / LEADERBOARD)
    return candidates
