"""``ddrnet search``: candidates within the budget, trained by the recipe and scored, a search
that continues where a kill or Ctrl-C stopped it, and bad arguments in one line."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

import ddrnet
from ddrnet.config import load_config
from ddrnet.engine import search as search_module
from ddrnet.engine import search_runs, search_study
from ddrnet.engine.config import Config
from ddrnet.engine.search import run_name, search
from ddrnet.engine.search_space import SearchSpace, candidate_config
from ddrnet.engine.search_study import LEADERBOARD
from ddrnet.errors import UsageError

from helpers import one_line_cli_error, tiny_config

# A small space, so that a few trials cover distinct candidates quickly.
SPACE = SearchSpace(planes=(16, 24), dappm_planes=(32, 64), head_planes=(32,))


def test_the_space_draws_valid_topologies_and_names_their_runs() -> None:
    space = SearchSpace()
    assert space.smallest(1) == {
        "planes": 16, "blocks": [1, 1, 1, 1], "dappm_planes": 64, "head_planes": 32
    }  # fmt: skip
    assert space.smallest(2)["blocks"] == [1, 1, 2, 1]  # DDRNet-39 splits stage 3 in two
    assert space._stage(2, 2) == [2, 4, 6]
    topology = {"planes": 24, "blocks": [1, 2, 3, 1], "dappm_planes": 96, "head_planes": 64}
    assert run_name(topology) == "p24_b1-2-3-1_d96_h64"


def test_a_search_scores_candidates_within_the_budget_and_extends(camvid_root, tmp_path) -> None:
    config = tiny_config(camvid_root, tmp_path / "unused", epochs=1)
    heard = []
    candidates = search(config, tmp_path / "s", 2, epochs=1, max_macs=0.6, space=SPACE,
                        on_candidate=heard.append)  # fmt: skip
    assert len(candidates) == 2 == len(heard)
    assert len({c.run for c in candidates}) == 2  # two distinct candidates
    assert [c.miou for c in candidates] == sorted((c.miou for c in candidates), reverse=True)
    reference = ddrnet.count_macs(ddrnet.create_model("ddrnet_23_slim", num_classes=11), (64, 96))
    for candidate in candidates:
        assert 0 < candidate.macs_fraction <= 0.6
        model = ddrnet.create_model(checkpoint=Path(candidate.run) / "seed0" / "last.pt")
        assert model.spec.planes == candidate.topology["planes"]  # the run trained the candidate
        assert list(model.spec.blocks) == candidate.topology["blocks"]
        macs = ddrnet.count_macs(model, (64, 96))
        assert candidate.gmacs == pytest.approx(macs / 1e9)
        assert abs(candidate.macs_fraction - macs / reference) < 0.02  # 19 vs 11 classes
        # The overrides printed for the winner train that very topology.
        loaded = load_config(Config, None, candidate.overrides)
        assert loaded.model.planes == candidate.topology["planes"]
        assert list(loaded.model.blocks) == candidate.topology["blocks"]
        history = Path(candidate.run, "seed0", "metrics.jsonl").read_text().splitlines()
        assert candidate.miou == json.loads(history[-1])["val_mIoU"] == candidate.seed_mious[0]
    board = json.loads((tmp_path / "s" / LEADERBOARD).read_text())
    assert [row["run"] for row in board["leaderboard"]] == [c.run for c in candidates]
    assert board["max_macs"] == 0.6 and board["epochs"] == 1
    # A larger --trials extends the search: the two scored stay as they were.
    more = search(config, tmp_path / "s", 3, epochs=1, max_macs=0.6, space=SPACE)
    assert len(more) == 3 and {c.run for c in candidates} < {c.run for c in more}
    assert {c.run: c.miou for c in candidates}.items() <= {c.run: c.miou for c in more}.items()


def test_workers_train_runs_side_by_side_each_in_a_process(camvid_root, tmp_path, monkeypatch):
    """``workers=2``: the second run starts while the first trains, each in a child process
    with its output in ``<run>.log`` and half the cores (the recipe sets no threads); the
    scores are the runs' own, and the search ends with no child left."""
    config = tiny_config(camvid_root, tmp_path / "unused", epochs=1)
    assert config.train.threads is None
    in_flight: list[int] = []
    real_start = search_runs.ParallelRuns.start

    def start(self, run_config):
        real_start(self, run_config)
        in_flight.append(len(self._children))

    monkeypatch.setattr(search_runs.ParallelRuns, "start", start)
    candidates = search(config, tmp_path / "s", 3, epochs=1, max_macs=0.6, space=SPACE,
                        seeds=2, workers=2)  # fmt: skip
    assert len(candidates) == 3 and len(in_flight) == 6 and max(in_flight) == 2
    threads = max(1, search_runs.usable_cores() // 2)
    for candidate in candidates:
        for seed, miou in zip((0, 1), candidate.seed_mious, strict=True):
            run = Path(candidate.run) / f"seed{seed}"
            log = run.with_name(f"seed{seed}.log").read_bytes()
            assert b"epoch 1: loss" in log and b"\r" not in log  # its epochs, no progress bar
            recipe = load_config(Config, run / "config.yaml")
            assert recipe.train.threads == threads and recipe.train.seed == seed
            history = (run / "metrics.jsonl").read_text().splitlines()
            assert miou == json.loads(history[-1])["val_mIoU"]
    assert not multiprocessing.active_children()


def test_a_failed_run_in_a_worker_is_named(tmp_path) -> None:
    """A child that wrote a user's problem gives that one line; any other failure names the
    log that holds the traceback, with its last lines."""
    run = tmp_path / "trials" / "p16" / "seed0"
    run.with_name("seed0.log").parent.mkdir(parents=True)
    run.with_name("seed0.log").write_text(
        "epoch 1/1:  50%|#####\rTraceback (most recent call last):\nBoom\n"
    )
    with pytest.raises(
        RuntimeError, match=r"(?s)seed0 stopped \(exit status 1\); its log .*seed0.log ends:.*Boom"
    ):
        search_runs._raise_if_failed(run, 1)
    run.with_name("seed0.error").write_text(f"{run}: data.root /nowhere: no such folder\n")
    with pytest.raises(UsageError, match=r"seed0: data.root /nowhere: no such folder$"):
        search_runs._raise_if_failed(run, 2)
    search_runs._raise_if_failed(run, 0)  # finished: nothing to say


def test_each_candidate_can_train_with_several_seeds_and_score_their_mean(
    camvid_root, tmp_path
) -> None:
    config = tiny_config(camvid_root, tmp_path / "unused", epochs=1)
    (candidate,) = search(config, tmp_path / "s", 1, 1, 0.6, SPACE, seeds=2)
    runs = sorted(Path(candidate.run).iterdir())
    assert [run.name for run in runs] == ["seed0", "seed1"]
    last = [json.loads((run / "metrics.jsonl").read_text().splitlines()[-1]) for run in runs]
    assert candidate.seed_mious == [record["val_mIoU"] for record in last]
    assert candidate.miou == pytest.approx(sum(candidate.seed_mious) / 2)
    assert "seed: 1" in (runs[1] / "config.yaml").read_text()
    with pytest.raises(UsageError, match="holds a search with another seeds"):
        search(config, tmp_path / "s", 1, 1, 0.6, SPACE, seeds=1)


def test_a_stopped_search_trains_its_interrupted_candidate_first(
    camvid_root, tmp_path, monkeypatch
) -> None:
    """Ctrl-C during a candidate's training, and a kill that left a trial marked running:
    the next search gives that candidate another go before any new one."""
    config = tiny_config(camvid_root, tmp_path / "unused", epochs=1)
    trained: list[str] = []
    real_train = search_runs.train

    def train_or_stop(trial_config, resume):
        trained.append(Path(trial_config.train.output_dir).parent.name)
        if len(trained) == 1:
            raise KeyboardInterrupt
        return real_train(trial_config, resume=resume)

    monkeypatch.setattr(search_runs, "train", train_or_stop)
    with pytest.raises(KeyboardInterrupt):
        search(config, tmp_path / "s", 1, epochs=1, max_macs=0.6, space=SPACE)
    candidates = search(config, tmp_path / "s", 1, epochs=1, max_macs=0.6, space=SPACE)
    assert trained[1] == trained[0] and Path(candidates[0].run).name == trained[0]

    # A trial of a process that is gone (a kill), still marked running in the journal.
    optuna = search_study.import_optuna()
    study = search_study.open_study(optuna, config, tmp_path / "s", 1, 0.6, SPACE, (0, 1), 2)
    killed = study.ask({"planes": optuna.distributions.CategoricalDistribution([16, 24])})
    SPACE.suggest(killed, 1)
    killed.set_user_attr("process", f"{2**22 + 7}-0")  # no such process
    # A kill in the middle of a journal write: a record half written at the end.
    with (tmp_path / "s" / search_study.JOURNAL).open("ab") as journal:
        journal.write(b'{"op_code": 5, "worker_id": "x", "trial_id": 9')
    candidates = search(config, tmp_path / "s", 2, epochs=1, max_macs=0.6, space=SPACE)
    assert trained[-1] == run_name(*SPACE.suggest(_Fixed(killed.params), 1))
    assert len(candidates) == 2
    assert (tmp_path / "s" / search_study.JOURNAL).read_bytes().endswith(b"}\n")


class _Fixed:
    """A stand-in trial that answers with fixed parameters."""

    def __init__(self, params: dict) -> None:
        self.params = params

    def suggest_categorical(self, name: str, choices):
        return self.params[name]


def test_bad_arguments_are_one_line(camvid_root, tmp_path, capsys) -> None:
    # (values argparse refuses, --max-macs 0 among them: tests/test_cli.py)
    recipe = ["search", "camvid_ddrnet23_slim", f"data.root={camvid_root}"]
    error = one_line_cli_error(capsys, [*recipe, "-o", str(tmp_path / "s"), "--max-macs", "0.05"])
    assert error.endswith(
        "max_macs 0.05: the smallest candidate takes 0.15 of the recipe model's multiply-adds; "
        "raise it"
    )
    (tmp_path / "file").write_text("x")
    error = one_line_cli_error(capsys, [*recipe, "-o", str(tmp_path / "file")])
    assert error.endswith(
        f"--output {tmp_path / 'file'}: is a file, but a folder is to be written there"
    )
    config = tiny_config(camvid_root, tmp_path / "unused", epochs=1)
    optuna = search_study.import_optuna()
    search_study.open_study(optuna, config, tmp_path / "s", 1, 0.6, SPACE, (0, 1), 1)
    with pytest.raises(UsageError, match="holds a search with another epochs, max_macs; continue"):
        search(config, tmp_path / "s", 1, epochs=2, max_macs=0.5, space=SPACE)
    for bad in (0, 1.5, True):
        with pytest.raises(UsageError, match="trials must be at least 1"):
            search(config, tmp_path / "t", bad, epochs=1, space=SPACE)
    with pytest.raises(UsageError, match="seed must be an integer from 0 to 2\\*\\*32 - 1"):
        search(config, tmp_path / "t", 1, epochs=1, space=SPACE, seed=-1)
    # Recipe settings a search cannot honour, refused before anything is written.
    for override, message in (
        ("train.max_minutes=1", "train.max_minutes would stop each candidate before its epochs"),
        ("model.pretrained=camvid_ddrnet23_slim", "model.pretrained: candidates of other shapes"),
        ("model.width_multiplier=1.5", "model.width_multiplier: the search sets the widths"),
    ):
        recipe = tiny_config(camvid_root, tmp_path / "unused", 1, extra=[override])
        with pytest.raises(UsageError, match=message):
            search(recipe, tmp_path / "t", 1, epochs=1, space=SPACE)
    assert not (tmp_path / "t").exists()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text("")
    with pytest.raises(UsageError, match="run holds a training run \\(metrics.jsonl\\): search"):
        search(config, tmp_path / "run", 1, epochs=1, space=SPACE)
    with pytest.raises(UsageError, match="holds a search with another seed"):
        search(config, tmp_path / "s", 1, epochs=1, max_macs=0.6, space=SPACE, seed=7)
    (tmp_path / "s" / search_study.JOURNAL).write_text("garbage\n")
    with pytest.raises(UsageError, match="search.journal: not a readable search journal"):
        search(config, tmp_path / "s", 1, epochs=1, max_macs=0.6, space=SPACE)


def test_a_budget_only_the_smallest_candidate_meets_trains_it(
    camvid_root, tmp_path, monkeypatch
) -> None:
    monkeypatch.setattr(search_module, "MAX_STALLED", 3)
    config = tiny_config(camvid_root, tmp_path / "unused", epochs=1)
    budget = search_module._Budget(config, 11)
    smallest = SPACE.smallest(1)
    others = {**smallest, "dappm_planes": 64}
    assert budget.fraction(smallest, {}) < budget.fraction(others, {})
    candidates = search(config, tmp_path / "s", 2, 1, budget.fraction(smallest, {}), SPACE)
    assert [c.topology for c in candidates] == [smallest]  # then it stopped: none else fits


def test_the_command_prints_each_candidate_and_a_command_that_trains_the_best(
    camvid_root, tmp_path, capsys
) -> None:
    import shlex

    from ddrnet.cli import main

    from helpers import tiny_overrides

    overrides = [o for o in tiny_overrides(camvid_root, tmp_path / "x", 1) if "output_dir" not in o]
    argv = ["search", "camvid_ddrnet23_slim", *overrides, "--trials", "1", "--epochs", "1"]
    assert main([*argv, "-o", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    board = json.loads((tmp_path / "s" / LEADERBOARD).read_text())["leaderboard"]
    assert f"{board[0]['miou']:8.2f}" in out and board[0]["run"] in out
    command = shlex.split(out.strip().splitlines()[-1])  # the shell reads it back whole
    assert command[:3] == ["ddrnet", "train", "camvid_ddrnet23_slim"]
    assert "data.crop_size=[64, 96]" in command and command[-4:] == board[0]["overrides"]


def test_a_space_file_sets_the_choices_and_bad_ones_are_named(
    camvid_root, tmp_path, capsys
) -> None:
    from ddrnet.cli import main

    from helpers import tiny_overrides

    overrides = [o for o in tiny_overrides(camvid_root, tmp_path / "x", 1) if "output_dir" not in o]
    argv = ["search", "camvid_ddrnet23_slim", *overrides, "--trials", "1", "--epochs", "1"]
    (tmp_path / "space.yaml").write_text(
        "planes: [16]\nblocks: [[1], [1], [2], [1]]\ndappm_planes: [32]\nhead_planes: [32]\n"
    )
    assert main([*argv, "--space", str(tmp_path / "space.yaml"), "-o", str(tmp_path / "s")]) == 0
    board = json.loads((tmp_path / "s" / LEADERBOARD).read_text())
    assert board["leaderboard"][0]["run"].endswith("p16_b1-1-2-1_d32_h32")  # the one choice
    assert board["space"]["blocks"] == [[1], [1], [2], [1]]
    capsys.readouterr()
    for text, message in (
        ("planes: [0, 16]\n", "planes must be a positive integer, got 0"),
        ("blocks: [[1], [1], [1, 2]]\n", "blocks must list the choices of stages 1-4"),
        ("head_planes: []\n", "head_planes: give distinct choices, got []"),
        ("blocks: [[1], [1], [1, 17], [1]]\n", "blocks3: counts must be 1 to 16, got [1, 17]"),
        ("depth: [1]\n", "unknown key depth"),
    ):
        (tmp_path / "bad.yaml").write_text(text)
        error = one_line_cli_error(
            capsys, [*argv, "--space", str(tmp_path / "bad.yaml"), "-o", str(tmp_path / "t")]
        )
        assert f"{tmp_path / 'bad.yaml'}: " in error and message in error, error
    error = one_line_cli_error(capsys, [*argv, "--space", "nope.yaml", "-o", str(tmp_path / "t")])
    assert error.endswith("--space nope.yaml: no such file")
    assert not (tmp_path / "t").exists()


def test_recipe_settings_are_searched_beside_the_topology(camvid_root, tmp_path) -> None:
    """``SearchSpace.recipe``: each candidate trains with its choice of each named setting
    (its run records it, the leaderboard's overrides reproduce it), and a setting that
    changes the model (``model.fusion``) counts in the candidate's multiply-adds."""
    config = tiny_config(camvid_root, tmp_path / "unused", epochs=1)
    recipe = {"optim.lr": [0.01, 0.02], "model.fusion": ["add", "cbam"]}
    one = {"planes": (16,), "blocks": ((1,), (1,), (1,), (1,)), "dappm_planes": (32,)}
    space = SearchSpace(**one, head_planes=(32,), recipe=recipe)
    candidates = search(config, tmp_path / "s", 4, epochs=1, max_macs=1.0, space=space)
    assert sorted((c.settings["optim.lr"], c.settings["model.fusion"]) for c in candidates) == [
        (0.01, "add"), (0.01, "cbam"), (0.02, "add"), (0.02, "cbam")
    ]  # fmt: skip
    fractions = {}
    for candidate in candidates:
        run = Path(candidate.run) / "seed0"
        assert Path(candidate.run).name == run_name(candidate.topology, candidate.settings)
        trained = load_config(Config, run / "config.yaml")
        assert trained.optim.lr == candidate.settings["optim.lr"]
        assert trained.model.fusion == candidate.settings["model.fusion"]
        again = load_config(Config, None, candidate.overrides)  # as `ddrnet train` reads them
        assert (again.optim.lr, again.model.fusion) == (trained.optim.lr, trained.model.fusion)
        assert again.model.planes == 16
        fractions[candidate.settings["model.fusion"]] = candidate.macs_fraction
    assert fractions["cbam"] > fractions["add"]  # CBAM's attention adds multiply-adds
    board = json.loads((tmp_path / "s" / LEADERBOARD).read_text())
    assert board["space"]["recipe"] == {"optim.lr": [0.01, 0.02], "model.fusion": ["add", "cbam"]}


def test_recipe_choices_a_search_cannot_use_are_named(camvid_root, tmp_path, capsys) -> None:
    from ddrnet.cli import main  # noqa: F401  (one_line_cli_error runs it)

    from helpers import tiny_overrides

    for recipe, message in (
        ({"train.epochs": [1, 2]}, "recipe.train.epochs: set by the search itself"),
        ({"model.planes": [16]}, "recipe.model.planes: searched as the topology field planes"),
        ({"eval.flip": [True]}, "recipe.eval.flip: decides what candidates are scored on"),
        ({"data.val_split": ["val"]}, "recipe.data.val_split: decides what candidates are"),
        ({"optim.lr": 0.01}, "recipe.optim.lr: give a list of choices, got 0.01"),
        ({"optim.lr": [0.01, 0.01]}, "recipe.optim.lr: give distinct choices"),
    ):
        with pytest.raises(ValueError, match=message):
            SearchSpace(recipe=recipe)
    config = tiny_config(camvid_root, tmp_path / "unused", epochs=1)
    lr = candidate_config(config, {"planes": 16}, {"optim.lr": 0.5, "data.crop_size": [32, 32]})
    assert (lr.optim.lr, lr.data.crop_size, lr.model.planes) == (0.5, (32, 32), 16)
    overrides = [o for o in tiny_overrides(camvid_root, tmp_path / "x", 1) if "output_dir" not in o]
    argv = ["search", "camvid_ddrnet23_slim", *overrides, "--trials", "1", "--epochs", "1"]
    for text, message in (
        ("recipe:\n  optim.lr: [0.01, fast]\n",
         'search space: recipe.optim.lr: choice "fast": optim.lr: expected a number'),
        ("recipe:\n  optim.lrr: [0.01]\n", "unknown key optim.lrr"),
        ("recipe:\n  train.seed: [1, 2]\n", "recipe.train.seed: set by the search itself"),
    ):  # fmt: skip
        (tmp_path / "bad.yaml").write_text(text)
        error = one_line_cli_error(
            capsys, [*argv, "--space", str(tmp_path / "bad.yaml"), "-o", str(tmp_path / "t")]
        )
        assert message in error, error
    assert not (tmp_path / "t").exists()


def test_a_grid_search_scores_each_candidate_within_the_budget_once_and_ends(
    camvid_root, tmp_path, caplog
) -> None:
    config = tiny_config(camvid_root, tmp_path / "unused", epochs=1)
    fixed = {"blocks": ((1,), (1,), (1,), (1,)), "dappm_planes": (32,), "head_planes": (32,)}
    space = SearchSpace(planes=(16, 24), **fixed, recipe={"optim.lr": [0.01, 0.02]})
    assert space.grid(1)["optim.lr"] == ["0.01", "0.02"] and len(space.grid(1)) == 8
    budget = search_module._Budget(config, 11)
    narrow = budget.fraction(space.smallest(1), {})  # planes 16 fits, planes 24 does not
    candidates = search(config, tmp_path / "s", 10, 1, narrow, space, sampler="grid")
    assert sorted((c.topology["planes"], c.settings["optim.lr"]) for c in candidates) == [
        (16, 0.01), (16, 0.02)
    ]  # fmt: skip
    assert "few others are within it" not in caplog.text  # it ended with the grid
    assert json.loads((tmp_path / "s" / LEADERBOARD).read_text())["sampler"] == "grid"
    with pytest.raises(UsageError, match="holds a search with another sampler"):
        search(config, tmp_path / "s", 10, 1, narrow, space)
    with pytest.raises(UsageError, match="sampler must be one of tpe, grid, got 'random'"):
        search(config, tmp_path / "t", 1, 1, narrow, space, sampler="random")
