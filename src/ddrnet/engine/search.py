"""Architecture search: which DDRNet topology a recipe trains best within a multiply-add
budget (the starting documents' §11: search the dual-branch structure automatically), and
with which recipe settings, where the user names some to choose among.

A candidate is a topology (``SearchSpace``: BasicBlocks per stage 1-4, stem width, DAPPM and
head widths) and, where the space names recipe settings (``SearchSpace.recipe``: learning
rate, augmentation...), a choice of each; everything else is the recipe's. A candidate over
the budget (a fraction of the recipe model's multiply-adds at its crop size) is refused
before any training; one within it is trained by the recipe for a short schedule
(``epochs``) in its own run folder and scored by its last validation mIoU (the weight
average's, where the recipe keeps one). Which candidate comes next is Optuna's TPE
sampler's choice: the first third at random, then near the best so far; refused candidates
count as failures, so it learns where the budget ends. A grid search (``sampler="grid"``)
queues every candidate of the space instead, in a shuffled order, and ends with the last.

Everything lives in the output folder, so a killed search continues where it stopped:
``search.journal`` (Optuna's append-only journal of the trials), ``trials/<candidate>/``
(a ``ddrnet train`` run folder per seed, ``seed<N>/``; an interrupted one resumes from its
last epoch) and ``leaderboard.json`` (the scored candidates, best first; rewritten after
each).

Short schedules rank candidates, they do not finish them: train the winner with the full
recipe (``leaderboard.json`` gives the overrides that train it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import math
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ddrnet.atomic import atomic_write_json, process_ended, process_tag
from ddrnet.choices import SEARCH_SAMPLERS
from ddrnet.config import ConfigError, to_dict
from ddrnet.data.build import build_dataset
from ddrnet.engine.checkpointing import load_training_checkpoint
from ddrnet.engine.config import Config
from ddrnet.engine.run_folder import LAST, RUN_FILES
from ddrnet.engine.search_space import (
    SearchSpace,
    candidate_config,
    check_recipe_choices,
)
from ddrnet.engine.train import train
from ddrnet.errors import UsageError
from ddrnet.models import count_macs, count_parameters, create_model, variant_info
from ddrnet.models.spec import TOPOLOGY_FIELDS

logger = logging.getLogger(__name__)

JOURNAL, LEADERBOARD, TRIALS = "search.journal", "leaderboard.json", "trials"
STUDY_NAME = "ddrnet-search"
# Proposals in a row that are over the budget or scored before, after which the search ends:
# the space holds few other candidates within the budget (each costs a MAC count, ~0.2 s).
MAX_STALLED = 200


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


def search(
    config: Config,
    output: str | Path,
    trials: int,
    epochs: int = 20,
    max_macs: float = 0.5,
    space: SearchSpace | None = None,
    seed: int | None = None,
    on_candidate: Callable[[Candidate], None] | None = None,
    seeds: int = 1,
    sampler: str = "tpe",
) -> list[Candidate]:
    """Search ``space`` for the topology (and recipe settings, where ``space.recipe`` names
    them) that ``config`` (a recipe) trains best within
    ``max_macs`` (0 < fraction <= 1) of its own model's multiply-adds, until ``trials``
    candidates are scored in ``output`` (those of an earlier search there count: a larger
    ``trials`` extends it). Each candidate trains for ``epochs``, ``seeds`` times (the
    recipe's ``train.seed`` and the next ones), and scores the mean: short runs of one seed
    differ by about as much as candidates do. ``seed`` (0 to 2**32 - 1)
    seeds the sampler (default: the recipe's ``train.seed``); ``sampler`` is ``"tpe"``
    (Optuna's TPE: near the best so far) or ``"grid"`` (every candidate of the space in turn,
    the search ending when all are scored or refused); ``on_candidate`` hears of each
    scored one. Returns the scored candidates, best first. Raises ``UsageError`` for bad
    arguments, recipe settings a search cannot honour (in the recipe or among the space's
    choices), a budget no candidate meets, or an ``output`` that holds a training run or
    another search."""
    optuna = _optuna()
    space = space or SearchSpace()
    output = Path(output)
    seed = config.train.seed if seed is None else seed
    _check_arguments(trials, epochs, max_macs, seed, seeds)
    if sampler not in SEARCH_SAMPLERS:
        raise UsageError(f"sampler must be one of {', '.join(SEARCH_SAMPLERS)}, got {sampler!r}")
    _check_recipe(config, output)
    try:
        check_recipe_choices(config, space)
    except ConfigError as error:
        raise UsageError(f"search space: {error}") from None
    # The data set's classes (its file list only): the budget counts the real heads.
    labels = build_dataset(config.data, config.data.train_split, False, cache=False).labels
    budget = _Budget(config, labels.num_classes)
    splits = variant_info(config.model.name).spec.stage3_splits
    smallest = (space.smallest(splits), space.first_settings())
    try:
        least = budget.fraction(*smallest)
    except ConfigError as error:  # each setting passed alone (check_recipe_choices)
        raise UsageError(f"search space: the first choices together: {error}") from None
    if least > max_macs:
        raise UsageError(
            f"max_macs {max_macs:g}: the smallest candidate takes {least:.2f} of the recipe "
            "model's multiply-adds; raise it"
        )
    grid = space.grid(splits) if sampler == "grid" else None
    study = _open_study(
        optuna, config, output, epochs, max_macs, space, (seed, seeds), trials, grid=grid
    )
    _requeue_interrupted(optuna, study)
    if grid is not None:
        _queue_grid(study, grid, seed)

    def propose() -> tuple[Any, dict[str, Any], dict[str, Any], float] | None:
        return _propose(optuna, study, space, splits, budget, max_macs)

    def score(proposal: tuple[Any, dict[str, Any], dict[str, Any], float]) -> None:
        candidate = _score(optuna, study, *proposal, config, output, epochs, seeds)
        if on_candidate is not None:
            on_candidate(candidate)

    # Where few candidates fit the budget, the sampler may keep proposing others: queue the
    # one known to fit a tight budget (a grid proposes it in its turn).
    smallest_params = space.params(*smallest) if grid is None else None
    _run_trials(optuna, study, trials, propose, score, smallest_params, grid)
    return write_leaderboard(optuna, study, output)


def _run_trials(
    optuna: Any, study: Any, trials: int, propose: Callable[[], Any],
    score: Callable[[Any], None], smallest: dict[str, Any] | None,
    grid: dict[str, list[Any]] | None,
) -> None:  # fmt: skip
    """Propose and score candidates until ``trials`` are scored, the ``grid`` (if any) is
    done, or the sampler keeps proposing none that is new and within the budget."""
    stalled, anchored = 0, smallest is None  # proposals refused in a row; smallest queued
    while len(_scored(optuna, study)) < trials and not _grid_done(optuna, study, grid):
        if stalled >= MAX_STALLED:
            if anchored or _key(smallest) in _scored(optuna, study):
                logger.warning(
                    "the last %d candidates proposed were over the budget or scored before: "
                    "few others are within it; stopping at %d", stalled,
                    len(_scored(optuna, study)),
                )  # fmt: skip
                break
            study.enqueue_trial(smallest)
            stalled, anchored = 0, True
        proposal = propose()
        if proposal is None:
            stalled += 1
            continue
        stalled = 0
        score(proposal)


def _queue_grid(study: Any, grid: dict[str, list[Any]], seed: int) -> None:
    """Queue each candidate of ``grid`` that the study holds in no state yet, in an order
    shuffled by ``seed`` (so that a ``trials`` below the grid's size takes a fair sample).
    Optuna's own grid sampler stops the study from inside ``tell``, which only its
    ``optimize`` loop allows."""
    points = [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]
    random.Random(seed).shuffle(points)
    held = {
        _key(trial.params or trial.system_attrs.get("fixed_params", {}))
        for trial in study.get_trials(deepcopy=False)
    }
    for point in points:
        if _key(point) not in held:
            study.enqueue_trial(point)


def _grid_done(optuna: Any, study: Any, grid: dict[str, list[Any]] | None) -> bool:
    """Whether every candidate of ``grid`` (None: no grid) is scored or was refused."""
    if grid is None:
        return False
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    seen = {_key(trial.params) for trial in study.get_trials(deepcopy=False, states=states)}
    return len(seen) >= math.prod(len(choices) for choices in grid.values())


def _optuna() -> Any:
    try:
        import optuna
    except ImportError as error:
        raise UsageError(
            f"the architecture search needs Optuna ({error}): pip install 'ddrnet[search]'"
        ) from None
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our own line per candidate
    return optuna


def _check_arguments(trials: int, epochs: int, max_macs: float, seed: int, seeds: int) -> None:
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise UsageError(f"trials must be at least 1, got {trials!r}")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise UsageError(f"epochs must be at least 1, got {epochs!r}")
    if not (isinstance(max_macs, (int, float)) and 0 < max_macs <= 1):
        raise UsageError(f"max_macs must be a fraction in (0, 1], got {max_macs!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise UsageError(f"seed must be an integer from 0 to 2**32 - 1, got {seed!r}")
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise UsageError(f"seeds must be at least 1, got {seeds!r}")


def _check_recipe(config: Config, output: Path) -> None:
    """Refuse what a search cannot honour, before anything is written."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # every process would search on its own
        raise UsageError("the search runs in one process: start it without torchrun")
    if config.train.max_minutes is not None:
        raise UsageError(
            "train.max_minutes would stop each candidate before its epochs, unfinished: leave "
            "it null (Ctrl-C stops a search; the same command continues it)"
        )
    if config.model.pretrained:
        raise UsageError(
            "model.pretrained: candidates of other shapes cannot start from one file; a "
            "search trains them from scratch (leave it null)"
        )
    if config.model.width_multiplier != 1.0:
        raise UsageError(
            "model.width_multiplier: the search sets the widths itself (model.planes, "
            "model.head_planes); leave it at 1"
        )
    present = [name for name in RUN_FILES if (output / name).exists()]
    if present:
        raise UsageError(
            f"{output} holds a training run ({', '.join(present)}): search into another folder"
        )


@dataclass
class _Budget:
    """Multiply-adds of a candidate's model (its topology, and its settings where they change
    the model, such as ``model.fusion``), as a fraction of the recipe model's own, at the
    recipe's crop size with its data set's classes (shape-only builds)."""

    config: Config
    num_classes: int
    reference: int = 0

    def __post_init__(self) -> None:
        self.reference = self.macs({}, {})

    def macs(self, topology: dict[str, Any], settings: dict[str, Any]) -> int:
        """Of the recipe's model with ``topology`` and ``settings`` (empty: its own)."""
        cfg = candidate_config(self.config, topology, settings).model
        asked = {key: getattr(cfg, key) for key in TOPOLOGY_FIELDS}
        with torch.device("meta"):
            model = create_model(
                cfg.name, num_classes=self.num_classes, norm=cfg.norm,
                norm_groups=cfg.norm_groups, fusion=cfg.fusion, **asked,
            )  # fmt: skip
        return count_macs(model, tuple(self.config.data.crop_size))

    def fraction(self, topology: dict[str, Any], settings: dict[str, Any]) -> float:
        return self.macs(topology, settings) / self.reference


def _propose(
    optuna: Any, study: Any, space: SearchSpace, splits: int, budget: _Budget, max_macs: float
) -> tuple[Any, dict[str, Any], dict[str, Any], float] | None:
    """The sampler's next candidate within the budget: its trial, topology, recipe settings
    and MAC fraction; None when it proposed one over the budget or one whose settings the
    recipe refuses together (told as pruned, which the sampler learns from), or one scored
    before (told that score again; it is not trained twice)."""
    trial = study.ask()
    trial.set_user_attr("process", process_tag(os.getpid()))
    topology, settings = space.suggest(trial, splits)
    earlier = _scored(optuna, study).get(_key(trial.params))
    if earlier is not None:
        study.tell(trial, earlier.values[0])
        return None
    try:
        fraction = budget.fraction(topology, settings)
    except ConfigError as error:  # each setting passed alone (check_recipe_choices)
        logger.warning("settings refused together, not trained: %s", error)
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        return None
    if fraction > max_macs:
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        return None
    return trial, topology, settings, fraction


def _score(
    optuna: Any, study: Any, trial: Any, topology: dict[str, Any], settings: dict[str, Any],
    fraction: float, config: Config, output: Path, epochs: int, seeds: int,
) -> Candidate:  # fmt: skip
    """Train and score one candidate, and record it (journal, leaderboard); a failure or
    Ctrl-C marks the trial failed, and the next search gives it another go."""
    try:
        candidate = _train_candidate(
            candidate_config(config, topology, settings), output, trial.number, topology,
            settings, epochs, seeds,
        )  # fmt: skip
    except BaseException:
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        raise
    candidate.macs_fraction = fraction
    trial.set_user_attr("candidate", dataclasses.asdict(candidate))
    study.tell(trial, candidate.miou)
    write_leaderboard(optuna, study, output)
    return candidate


def _settings(
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


def _open_study(
    optuna: Any, config: Config, output: Path, epochs: int, max_macs: float,
    space: SearchSpace, seeds: tuple[int, int], trials: int,
    grid: dict[str, list[Any]] | None = None,
) -> Any:  # fmt: skip
    """The search journalled in ``output`` (made if new), sampled by TPE or over ``grid``
    (the parameters' choices); an ``output`` that holds another search (another recipe,
    budget, schedule, space, sampler or seed) is refused, as is a journal that cannot be
    read."""
    output.mkdir(parents=True, exist_ok=True)
    _drop_unfinished_line(output / JOURNAL)
    # seeds: the sampler's, and how many training seeds each candidate has
    if grid is None:
        sampler = optuna.samplers.TPESampler(seed=seeds[0], n_startup_trials=max(3, trials // 3))
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
    settings = _settings(config, epochs, max_macs, space, seeds, grid is not None)
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


def _requeue_interrupted(optuna: Any, study: Any) -> None:
    """Give the candidates a kill or Ctrl-C interrupted another go (their run folders resume
    from the last epoch): a trial still marked running whose process has ended is failed,
    and each failed candidate not scored or queued since is queued again."""
    states = optuna.trial.TrialState
    for trial in study.get_trials(deepcopy=False, states=(states.RUNNING,)):
        if process_ended(trial.user_attrs.get("process", "0-0")):
            study.tell(trial.number, state=states.FAIL)
    settled = {
        _key(trial.params)
        for trial in study.get_trials(deepcopy=False)
        if trial.state in (states.COMPLETE, states.WAITING, states.RUNNING)
    }
    for trial in study.get_trials(deepcopy=False, states=(states.FAIL,)):
        if _key(trial.params) not in settled:
            study.enqueue_trial(trial.params)
            settled.add(_key(trial.params))


def _key(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True)


def _scored(optuna: Any, study: Any) -> dict[str, Any]:
    """The first scored trial of each candidate, by its parameters (``_key``)."""
    first: dict[str, Any] = {}
    complete = optuna.trial.TrialState.COMPLETE
    for trial in study.get_trials(deepcopy=False, states=(complete,)):
        first.setdefault(_key(trial.params), trial)
    return first


def run_name(topology: dict[str, Any], settings: dict[str, Any] | None = None) -> str:
    """A candidate's run folder name, from the candidate alone (``p24_b1-1-2-1_d96_h64``,
    then ``_r`` and a digest of its recipe settings where it has any), so that a candidate
    queued again after a kill finds its own run to resume."""
    blocks = "-".join(str(count) for count in topology["blocks"])
    name = f"p{topology['planes']}_b{blocks}_d{topology['dappm_planes']}_h{topology['head_planes']}"
    if not settings:
        return name
    digest = hashlib.sha256(_key(settings).encode()).hexdigest()
    return f"{name}_r{digest[:8]}"


def _train_candidate(
    config: Config, output: Path, number: int, topology: dict[str, Any],
    settings: dict[str, Any], epochs: int, seeds: int,
) -> Candidate:  # fmt: skip
    """Train one candidate (``config``: the recipe with its topology and settings) with
    ``seeds`` seeds (the recipe's ``train.seed`` and the next ones), each in its run folder
    (resuming what a kill left), and score it by the mean of their last validations."""
    folder = output / TRIALS / run_name(topology, settings)
    logger.info("candidate %d: %s %s", number, folder.name, settings or "")
    mious, minutes = [], 0.0
    for seed in range(config.train.seed, config.train.seed + seeds):
        run = folder / f"seed{seed}"
        schedule = dataclasses.replace(config.train, epochs=epochs, output_dir=str(run), seed=seed)
        train(dataclasses.replace(config, train=schedule), resume=(run / LAST).is_file())
        state = load_training_checkpoint(run / LAST)
        if state["epoch"] != epochs:  # scored unfinished, it would rank below what it is
            raise RuntimeError(f"{run}: trained {state['epoch']} of its {epochs} epochs")
        scores = [record["val_mIoU"] for record in state["history"] if "val_mIoU" in record]
        mious.append(float(scores[-1]))
        minutes += sum(record.get("epoch_seconds", 0.0) for record in state["history"]) / 60
    trained = create_model(checkpoint=run / LAST)
    return Candidate(
        trial=number,
        topology=topology,
        miou=sum(mious) / len(mious),
        macs_fraction=0.0,  # set by the caller, which measured it against the budget
        gmacs=count_macs(trained, tuple(config.data.crop_size)) / 1e9,
        params_millions=count_parameters(trained) / 1e6,
        minutes=minutes,
        run=str(folder),
        seed_mious=mious,
        settings=settings,
    )


def write_leaderboard(optuna: Any, study: Any, output: Path) -> list[Candidate]:
    """``output/leaderboard.json``: the scored candidates, best first, with the search's
    settings; returns the candidates."""
    scored = _scored(optuna, study).values()
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
