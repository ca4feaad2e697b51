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
import logging
import math
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ddrnet.atomic import process_tag
from ddrnet.choices import SEARCH_SAMPLERS
from ddrnet.config import ConfigError
from ddrnet.data.build import build_dataset
from ddrnet.engine.checkpointing import load_training_checkpoint
from ddrnet.engine.config import Config
from ddrnet.engine.run_folder import LAST, RUN_FILES
from ddrnet.engine.search_runs import InlineRuns, ParallelRuns
from ddrnet.engine.search_space import (
    SearchSpace,
    candidate_config,
    check_recipe_choices,
)
from ddrnet.engine.search_study import (
    Candidate,
    candidate_key,
    import_optuna,
    open_study,
    requeue_interrupted,
    scored_trials,
    write_leaderboard,
)
from ddrnet.errors import UsageError
from ddrnet.models import count_macs, count_parameters, create_model, variant_info
from ddrnet.models.spec import TOPOLOGY_FIELDS

logger = logging.getLogger(__name__)

TRIALS = "trials"
# Proposals in a row that are over the budget or scored before, after which the search ends:
# the space holds few other candidates within the budget (each costs a MAC count, ~0.2 s).
MAX_STALLED = 200


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
    workers: int = 1,
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
    scored one. ``workers`` > 1 trains that many runs at once, each in a process of its own
    (``search_runs.ParallelRuns``: its output in ``<run>.log``, ``threads // workers``
    threads each where the recipe sets no ``train.threads``); the TPE sampler then proposes
    while others train, so its choices depend on which finish first. Returns the scored
    candidates, best first. Raises ``UsageError`` for bad
    arguments, recipe settings a search cannot honour (in the recipe or among the space's
    choices), a budget no candidate meets, or an ``output`` that holds a training run or
    another search."""
    optuna = import_optuna()
    space = space or SearchSpace()
    output = Path(output)
    seed = config.train.seed if seed is None else seed
    _check_arguments(trials, epochs, max_macs, seed, seeds, workers)
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
    study = open_study(
        optuna, config, output, epochs, max_macs, space, (seed, seeds), trials, grid=grid,
        parallel=workers > 1,
    )  # fmt: skip
    requeue_interrupted(optuna, study)
    if grid is not None:
        _queue_grid(study, grid, seed)

    def propose(held: set[str]) -> _Training | None:
        proposal = _propose(optuna, study, space, splits, budget, max_macs, held)
        return None if proposal is None else _training(proposal, config, output, epochs, seeds)

    def record(training: _Training) -> None:
        candidate = _record(optuna, study, training, output)
        if on_candidate is not None:
            on_candidate(candidate)

    # Where few candidates fit the budget, the sampler may keep proposing others: queue the
    # one known to fit a tight budget (a grid proposes it in its turn).
    smallest_params = space.params(*smallest) if grid is None else None
    runs = InlineRuns() if workers == 1 else ParallelRuns(workers)
    _run_trials(optuna, study, trials, propose, record, smallest_params, grid, runs)
    return write_leaderboard(optuna, study, output)


@dataclass
class _Training:
    """A candidate proposed and being trained: its trial, topology, recipe settings, MAC
    fraction and runs (one config per seed), how many of them started and finished."""

    trial: Any
    topology: dict[str, Any]
    settings: dict[str, Any]
    fraction: float
    runs: list[Config]
    started: int = 0
    finished: int = 0

    @property
    def folder(self) -> Path:
        return Path(self.runs[0].train.output_dir).parent


def _run_trials(
    optuna: Any, study: Any, trials: int, propose: Callable[[set[str]], _Training | None],
    record: Callable[[_Training], None], smallest: dict[str, Any] | None,
    grid: dict[str, list[Any]] | None, runs: InlineRuns | ParallelRuns,
) -> None:  # fmt: skip
    """Propose candidates and train their runs (``runs``: one after another, or several at
    once) until ``trials`` are scored, the ``grid`` (if any) is done, or the sampler keeps
    proposing none that is new and within the budget. An error or Ctrl-C stops the runs
    still training and marks their candidates failed (the next search trains them again,
    resuming each run)."""
    training: list[_Training] = []
    stalled, anchored, proposing = 0, smallest is None, True  # refused in a row; smallest queued
    try:
        while True:
            while runs.has_room():
                waiting = next((each for each in training if each.started < len(each.runs)), None)
                if waiting is None:
                    held = {candidate_key(each.trial.params) for each in training}
                    if not proposing or not _wants_more(optuna, study, trials, grid, held):
                        break
                    waiting = propose(held)
                    if waiting is None:
                        stalled += 1
                        if stalled >= MAX_STALLED:
                            if anchored or candidate_key(smallest) in held | set(
                                scored_trials(optuna, study)
                            ):
                                _warn_stalled(stalled, len(scored_trials(optuna, study)))
                                proposing = False
                            else:
                                study.enqueue_trial(smallest)
                                stalled, anchored = 0, True
                        continue
                    stalled = 0
                    training.append(waiting)
                runs.start(waiting.runs[waiting.started])
                waiting.started += 1
            if not runs.busy():
                return
            for run in runs.wait():
                owner = next(each for each in training if run.parent == each.folder)
                owner.finished += 1
                if owner.finished == len(owner.runs):
                    training.remove(owner)  # told by record, scored or failed
                    record(owner)
    except BaseException:
        runs.stop()
        for each in training:
            study.tell(each.trial, state=optuna.trial.TrialState.FAIL)
        raise


def _wants_more(
    optuna: Any, study: Any, trials: int, grid: dict[str, list[Any]] | None, held: set[str]
) -> bool:
    """Whether to propose another candidate, beside the ``held`` ones in training."""
    if len(scored_trials(optuna, study)) + len(held) >= trials:
        return False
    return not _grid_done(optuna, study, grid, held)


def _warn_stalled(stalled: int, scored: int) -> None:
    logger.warning(
        "the last %d candidates proposed were over the budget or scored before: few others "
        "are within it; stopping at %d", stalled, scored,
    )  # fmt: skip


def _queue_grid(study: Any, grid: dict[str, list[Any]], seed: int) -> None:
    """Queue each candidate of ``grid`` that the study holds in no state yet, in an order
    shuffled by ``seed`` (so that a ``trials`` below the grid's size takes a fair sample).
    Optuna's own grid sampler stops the study from inside ``tell``, which only its
    ``optimize`` loop allows."""
    points = [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]
    random.Random(seed).shuffle(points)
    held = {
        candidate_key(trial.params or trial.system_attrs.get("fixed_params", {}))
        for trial in study.get_trials(deepcopy=False)
    }
    for point in points:
        if candidate_key(point) not in held:
            study.enqueue_trial(point)


def _grid_done(
    optuna: Any, study: Any, grid: dict[str, list[Any]] | None, held: set[str] = frozenset()
) -> bool:
    """Whether every candidate of ``grid`` (None: no grid) is scored, was refused or is one
    of the ``held`` ones in training."""
    if grid is None:
        return False
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    seen = {
        candidate_key(trial.params) for trial in study.get_trials(deepcopy=False, states=states)
    }
    return len(seen | held) >= math.prod(len(choices) for choices in grid.values())


def _check_arguments(
    trials: int, epochs: int, max_macs: float, seed: int, seeds: int, workers: int
) -> None:
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise UsageError(f"workers must be at least 1, got {workers!r}")
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
    optuna: Any, study: Any, space: SearchSpace, splits: int, budget: _Budget, max_macs: float,
    held: set[str],
) -> tuple[Any, dict[str, Any], dict[str, Any], float] | None:  # fmt: skip
    """The sampler's next candidate within the budget: its trial, topology, recipe settings
    and MAC fraction; None when it proposed one over the budget or one whose settings the
    recipe refuses together (told as pruned, which the sampler learns from), one scored
    before (told that score again; it is not trained twice) or one of the ``held`` ones in
    training (told failed, which the sampler leaves aside)."""
    trial = study.ask()
    trial.set_user_attr("process", process_tag(os.getpid()))
    topology, settings = space.suggest(trial, splits)
    earlier = scored_trials(optuna, study).get(candidate_key(trial.params))
    if earlier is not None:
        study.tell(trial, earlier.values[0])
        return None
    if candidate_key(trial.params) in held:
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
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


def _training(
    proposal: tuple[Any, dict[str, Any], dict[str, Any], float], config: Config, output: Path,
    epochs: int, seeds: int,
) -> _Training:  # fmt: skip
    """A proposed candidate's runs: the recipe with its topology and settings, for
    ``epochs``, once per seed (the recipe's ``train.seed`` and the next ones), each in its
    run folder ``trials/<candidate>/seed<N>``."""
    trial, topology, settings, fraction = proposal
    recipe = candidate_config(config, topology, settings)
    folder = output / TRIALS / run_name(topology, settings)
    logger.info("candidate %d: %s %s", trial.number, folder.name, settings or "")
    runs = []
    for seed in range(recipe.train.seed, recipe.train.seed + seeds):
        schedule = dataclasses.replace(
            recipe.train, epochs=epochs, output_dir=str(folder / f"seed{seed}"), seed=seed
        )
        runs.append(dataclasses.replace(recipe, train=schedule))
    return _Training(trial, topology, settings, fraction, runs)


def _record(optuna: Any, study: Any, training: _Training, output: Path) -> Candidate:
    """Score a candidate whose runs have all finished, and record it (journal,
    leaderboard); a failure marks the trial failed, and the next search gives it another
    go."""
    try:
        candidate = _scored_candidate(training)
    except BaseException:
        study.tell(training.trial, state=optuna.trial.TrialState.FAIL)
        raise
    training.trial.set_user_attr("candidate", dataclasses.asdict(candidate))
    study.tell(training.trial, candidate.miou)
    write_leaderboard(optuna, study, output)
    return candidate


def run_name(topology: dict[str, Any], settings: dict[str, Any] | None = None) -> str:
    """A candidate's run folder name, from the candidate alone (``p24_b1-1-2-1_d96_h64``,
    then ``_r`` and a digest of its recipe settings where it has any), so that a candidate
    queued again after a kill finds its own run to resume."""
    blocks = "-".join(str(count) for count in topology["blocks"])
    name = f"p{topology['planes']}_b{blocks}_d{topology['dappm_planes']}_h{topology['head_planes']}"
    if not settings:
        return name
    digest = hashlib.sha256(candidate_key(settings).encode()).hexdigest()
    return f"{name}_r{digest[:8]}"


def _scored_candidate(training: _Training) -> Candidate:
    """The candidate scored by the mean of its runs' last validations."""
    mious, minutes = [], 0.0
    for config in training.runs:
        run = Path(config.train.output_dir)
        state = load_training_checkpoint(run / LAST)
        if state["epoch"] != config.train.epochs:  # scored unfinished, it would rank lower
            raise RuntimeError(
                f"{run}: trained {state['epoch']} of its {config.train.epochs} epochs"
            )
        scores = [record["val_mIoU"] for record in state["history"] if "val_mIoU" in record]
        mious.append(float(scores[-1]))
        minutes += sum(record.get("epoch_seconds", 0.0) for record in state["history"]) / 60
    trained = create_model(checkpoint=run / LAST)
    return Candidate(
        trial=training.trial.number,
        topology=training.topology,
        miou=sum(mious) / len(mious),
        macs_fraction=training.fraction,
        gmacs=count_macs(trained, tuple(config.data.crop_size)) / 1e9,
        params_millions=count_parameters(trained) / 1e6,
        minutes=minutes,
        run=str(training.folder),
        seed_mious=mious,
        settings=training.settings,
    )
