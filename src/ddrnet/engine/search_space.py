"""What ``ddrnet search`` chooses among: a DDRNet topology (``SearchSpace``'s topology fields)
and, where the user names them, recipe settings (``SearchSpace.recipe``: any recipe key with
its choices, such as ``optim.lr: [0.005, 0.01, 0.02]``).

A candidate is a topology plus one choice of each recipe setting; ``candidate_config`` makes
the recipe that trains it. The keys a search sets itself (the schedule, the seed, the run
folder), those that would make candidates' scores incomparable (what is scored and how) and
the topology's own (searched as topology fields) are refused as recipe settings.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from ddrnet.config import ConfigError, apply_overrides, from_dict, to_dict
from ddrnet.engine.config import Config
from ddrnet.limits import MAX_BLOCKS
from ddrnet.models.spec import TOPOLOGY_FIELDS, DDRNetSpec

# Recipe keys a search owns (it sets them per candidate, or refuses them in the recipe), and
# keys or sections that decide what a candidate is scored on: choices there would rank
# candidates on different tests.
OWNED_KEYS = frozenset(
    {"train.epochs", "train.seed", "train.output_dir", "train.max_minutes", "model.name"}
    | {"model.pretrained", "model.width_multiplier"}
    | {f"model.{field}" for field in TOPOLOGY_FIELDS}
    | {"data.dataset", "data.root", "data.val_split", "data.val_sequences", "data.classes_file"}
)
SCORING_SECTIONS = ("eval.",)


@dataclass(frozen=True)
class SearchSpace:
    """The choices of each topology field (``DDRNetSpec``'s) and of recipe settings. The
    topology defaults span DDRNet-23-slim (stem 32, blocks 2-2-2-2, DAPPM 128, head 64) from
    0.15 to 2.6 times its multiply-adds (at CamVid's crop size). Stage 3 counts are multiplied
    by the variant's ``stage3_splits`` (DDRNet-39 splits stage 3 in two). ``recipe`` maps
    dotted recipe keys to their choices (default: none, the recipe's own settings); one field
    of a single choice fixes it."""

    planes: tuple[int, ...] = (16, 24, 32, 48)
    blocks: tuple[tuple[int, ...], ...] = ((1, 2), (1, 2), (1, 2, 3), (1, 2))
    dappm_planes: tuple[int, ...] = (64, 96, 128)
    head_planes: tuple[int, ...] = (32, 64, 128)
    recipe: dict[str, list[Any]] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        """Each choice checked by ``DDRNetSpec``'s own rule, before anything is trained (the
        recipe settings: by ``check_recipe_choices``, which needs the recipe)."""
        if len(self.blocks) != 4:
            raise ValueError(f"blocks must list the choices of stages 1-4, got {self.blocks}")
        widths = {"planes": self.planes, "dappm_planes": self.dappm_planes}
        widths["head_planes"] = self.head_planes
        stages = {f"blocks{stage}": counts for stage, counts in enumerate(self.blocks, 1)}
        recipe = {f"recipe.{key}": choices for key, choices in self.recipe.items()}
        for key, choices in {**widths, **stages, **recipe}.items():
            if not isinstance(choices, (list, tuple)):
                raise ValueError(f"{key}: give a list of choices, got {choices!r}")
            if not choices or len({_text(c) for c in choices}) != len(choices):
                raise ValueError(f"{key}: give distinct choices, got {list(choices)}")
        for key, choices in widths.items():
            for value in choices:
                DDRNetSpec(**{key: value})  # its ValueError names the key and the rule
        for key, counts in stages.items():
            if not all(1 <= count <= MAX_BLOCKS for count in counts):
                raise ValueError(f"{key}: counts must be 1 to {MAX_BLOCKS}, got {list(counts)}")
        for key in self.recipe:
            if key in OWNED_KEYS or key.startswith(SCORING_SECTIONS):
                raise ValueError(f"recipe.{key}: {_why_owned(key)}")

    def suggest(self, trial: Any, stage3_splits: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """One candidate drawn by an Optuna ``trial``: its topology and recipe settings.
        Settings are drawn as JSON texts (Optuna's categorical choices are scalars; a
        setting may be a list, such as a crop size)."""
        blocks = [
            trial.suggest_categorical(f"blocks{stage + 1}", self._stage(stage, stage3_splits))
            for stage in range(4)
        ]
        topology = {
            "planes": trial.suggest_categorical("planes", self.planes),
            "blocks": blocks,
            "dappm_planes": trial.suggest_categorical("dappm_planes", self.dappm_planes),
            "head_planes": trial.suggest_categorical("head_planes", self.head_planes),
        }
        settings = {
            key: json.loads(trial.suggest_categorical(key, [_text(c) for c in choices]))
            for key, choices in self.recipe.items()
        }
        return topology, settings

    def smallest(self, stage3_splits: int) -> dict[str, Any]:
        """The topology with the fewest multiply-adds: every field at its least."""
        return {
            "planes": min(self.planes),
            "blocks": [min(self._stage(stage, stage3_splits)) for stage in range(4)],
            "dappm_planes": min(self.dappm_planes),
            "head_planes": min(self.head_planes),
        }

    def grid(self, stage3_splits: int) -> dict[str, list[Any]]:
        """Every parameter's choices, as ``suggest`` draws them: a grid search's space, each
        combination one candidate (as many as the product of the lists' lengths)."""
        grid: dict[str, list[Any]] = {"planes": list(self.planes)}
        grid |= {f"blocks{stage + 1}": self._stage(stage, stage3_splits) for stage in range(4)}
        grid |= {"dappm_planes": list(self.dappm_planes), "head_planes": list(self.head_planes)}
        return grid | {key: [_text(c) for c in choices] for key, choices in self.recipe.items()}

    def first_settings(self) -> dict[str, Any]:
        """The first choice of each recipe setting (with ``smallest``: the candidate queued
        when the sampler keeps proposing candidates over a tight budget)."""
        return {key: choices[0] for key, choices in self.recipe.items()}

    @staticmethod
    def params(topology: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
        """A candidate as the parameters ``suggest`` draws (``blocks1`` ... ``blocks4``, the
        settings as JSON texts)."""
        params = {key: value for key, value in topology.items() if key != "blocks"}
        params |= {f"blocks{stage + 1}": n for stage, n in enumerate(topology["blocks"])}
        return params | {key: _text(value) for key, value in settings.items()}

    def as_record(self) -> dict[str, Any]:
        """The space as JSON values, for the journal and the leaderboard (without ``recipe``
        where it is empty, as searches recorded it before it existed)."""
        record = json.loads(json.dumps(dataclasses.asdict(self)))
        return record if self.recipe else {k: v for k, v in record.items() if k != "recipe"}

    def _stage(self, stage: int, stage3_splits: int) -> list[int]:
        counts = self.blocks[stage]
        return [count * stage3_splits for count in counts] if stage == 2 else list(counts)


def candidate_config(config: Config, topology: dict[str, Any], settings: dict[str, Any]) -> Config:
    """The recipe ``config`` with a candidate's recipe ``settings`` (dotted keys) and
    ``topology`` (``model.*`` fields); a ``ConfigError`` names a setting the recipe refuses."""
    if settings:
        overrides = [f"{key}={_text(value)}" for key, value in settings.items()]
        config = from_dict(Config, apply_overrides(to_dict(config), overrides))
    if topology:
        model = {key: tuple(v) if key == "blocks" else v for key, v in topology.items()}
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, **model))
    return config


def check_recipe_choices(config: Config, space: SearchSpace) -> None:
    """Each recipe choice of ``space`` applied alone to ``config``: a ``ConfigError`` names
    the first one the recipe refuses (an unknown key, a value of the wrong kind or out of
    range), before anything is trained."""
    for key, choices in space.recipe.items():
        for choice in choices:
            try:
                candidate_config(config, {}, {key: choice})
            except ConfigError as error:
                raise ConfigError(f"recipe.{key}: choice {_text(choice)}: {error}") from None


def _why_owned(key: str) -> str:
    if key.startswith("model.") and key[len("model.") :] in TOPOLOGY_FIELDS:
        return f"searched as the topology field {key[len('model.') :]}; give its choices there"
    if key.startswith(SCORING_SECTIONS) or key.startswith("data."):
        return "decides what candidates are scored on; set it in the recipe, for all alike"
    return "set by the search itself (or refused in a search's recipe); not a choice"


def _text(value: Any) -> str:
    """A choice as JSON text: a recipe override's value, and Optuna's categorical choice."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True)
