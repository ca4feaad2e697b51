"""The command line: model table, help, and one-line errors instead of tracebacks."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import run_ddrnet


@pytest.mark.slow
def test_models_table_matches_the_paper() -> None:
    result = run_ddrnet("models", "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert (rows["ddrnet_23_slim"]["params_M"], rows["ddrnet_23_slim"]["GMACs"]) == (5.696, 36.28)
    assert (rows["ddrnet_23"]["params_M"], rows["ddrnet_23"]["GMACs"]) == (20.149, 143.06)
    assert (rows["ddrnet_39"]["params_M"], rows["ddrnet_39"]["GMACs"]) == (32.36, 281.12)
    assert rows["ddrnet_39_imagenet"]["params_M"] == 40.13
    table = run_ddrnet("models", "--size", "360x480").stdout
    assert "ddrnet_23_slim" in table and "3.04" in table  # GMACs at CamVid's size
    # The bundled trained models too, with what they were trained on.
    assert rows["camvid_ddrnet23_slim_train"]["val_mIoU"] == 72.1
    assert rows["camvid_ddrnet23_slim_train"]["val_held_out"] is True
    assert rows["camvid_ddrnet23_slim"]["val_held_out"] is False
    assert re.search(r"camvid_ddrnet23_slim_train +ddrnet_23_slim, CamVid train only", table)
    # One column for the names, however long the longest (the fast train-only twin) is.
    lines = [line for line in table.splitlines() if line.startswith("  camvid_")]
    assert len(lines) == len([name for name in rows if name.startswith("camvid_")]) == 4
    assert len({line.index("ddrnet_23_slim,") for line in lines}) == 1, lines


@pytest.mark.slow
def test_every_subcommand_has_help() -> None:
    for command in ("models", "train", "eval", "predict", "bench", "export", "viz", "serve"):
        result = run_ddrnet(command, "--help")
        assert result.returncode == 0 and "usage: ddrnet" in result.stdout, command


def test_the_help_names_every_export_format_and_serve_format() -> None:
    """The summaries are written out (the help must not import torch): they keep up."""
    from ddrnet.cli import build_parser
    from ddrnet.cli.export import SUFFIXES
    from ddrnet.serve import FORMATS

    commands = build_parser()._subparsers._group_actions[0]
    summaries = {action.dest: action.help for action in commands._choices_actions}
    named = {"onnx": "ONNX", "onnx-int8": "INT8", "torchscript": "TorchScript", "ncnn": "ncnn"}
    named |= {"executorch": "ExecuTorch", "executorch-int8": "ExecuTorch"}
    named |= {"aoti": "AOTInductor", "tensorrt": "TensorRT"}
    assert set(named) == set(SUFFIXES)
    assert all(word in summaries["export"] for word in named.values()), summaries["export"]
    serve = commands.choices["serve"].description
    assert f"format={'|'.join(FORMATS)})" in serve, serve


def test_every_command_that_runs_a_model_picks_its_device_alike() -> None:
    """predict, eval, pick and serve run where ``--device auto`` says (CUDA when there is
    one); the server once defaulted to the CPU alone."""
    from ddrnet.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    with_device = {
        name
        for name, parser in commands.items()
        if any("--device" in action.option_strings for action in parser._actions)
    }
    assert {"predict", "eval", "pick", "serve"} <= with_device
    for name in with_device:
        device = next(a for a in commands[name]._actions if "--device" in a.option_strings)
        assert device.default == "auto", name


def test_help_and_mistyped_options_answer_without_loading_pytorch() -> None:
    """``ddrnet --help``, a command's help and an unknown option are answered before
    PyTorch is imported (a second or more)."""
    from ddrnet.cli import COMMANDS

    asked = [["--help"], ["-v", "nosuchcommand"], ["predict", "in.png", "--colour"]]
    asked += [[name, "--help"] for name in COMMANDS]
    script = f"""
import contextlib, io, sys
from ddrnet.cli import main
for argv in {asked!r}:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            main(argv)
        except SystemExit as stop:
            assert stop.code in (0, 2), (argv, stop.code)
print(sorted(name for name in ("torch", "onnx", "openvino") if name in sys.modules))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.stdout == "[]\n", result.stderr[-2000:]


def test_output_into_a_closed_pipe_or_a_full_disk_ends_without_a_traceback() -> None:
    """``ddrnet models | head -1``: the reader goes away, and the command ends as a shell
    tool ends on SIGPIPE (status 141), not with a BrokenPipeError traceback."""
    process = subprocess.Popen(
        [sys.executable, "-m", "ddrnet.cli", "models", "--size", "64x64"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    process.stdout.close()  # before the command writes its first line
    errors = process.stderr.read()
    assert (process.wait(timeout=120), errors) == (141, "")
    # Into a full disk (``> out.txt``), which names no file: one line too.
    if Path("/dev/full").exists():
        with open("/dev/full", "w") as full:
            result = subprocess.run(
                [sys.executable, "-m", "ddrnet.cli", "models"], stdout=full, stderr=subprocess.PIPE,
                text=True, timeout=120,
            )  # fmt: skip
        assert (result.returncode, result.stderr) == (
            2, "ddrnet models: error: No space left on device\n"
        )  # fmt: skip


def test_closed_standard_streams_or_a_deleted_folder_cost_no_output_and_no_traceback(
    camvid_frame, tmp_path
) -> None:
    """``2>&-`` made Python's stderr None, and the first progress bar failed: predict exited
    1 without a word and without its files. ``>&-`` failed after the job, with a traceback."""

    def closing(descriptor: int):
        return lambda: os.close(descriptor)

    out = tmp_path / "out"
    argv = [sys.executable, "-m", "ddrnet.cli", "predict", str(camvid_frame), "-o", str(out)]
    argv += ["--checkpoint", "camvid_ddrnet23_slim_fast"]
    no_stderr = subprocess.run(argv, stdout=subprocess.DEVNULL, preexec_fn=closing(2))
    assert no_stderr.returncode == 0
    assert sorted(p.suffix for p in out.iterdir()) == [".png", ".png"]  # labels and overlay
    models = [sys.executable, "-m", "ddrnet.cli", "models", "--size", "64x64"]
    no_stdout = subprocess.run(models, stderr=subprocess.PIPE, text=True, preexec_fn=closing(1))
    assert (no_stdout.returncode, no_stdout.stderr) == (0, "")
    # A current folder deleted under the shell: PyTorch's import failed with an MKL error.
    gone = tmp_path / "gone"
    gone.mkdir()
    deleted = subprocess.run(
        models, capture_output=True, text=True, cwd=gone, preexec_fn=gone.rmdir
    )
    assert (deleted.returncode, deleted.stderr) == (
        2, "ddrnet: error: the current folder no longer exists; cd to one\n"
    )  # fmt: skip


def test_loops_of_links_and_torchruns_variables_are_one_line(
    camvid_frame, tmp_path, capsys, monkeypatch
) -> None:
    from ddrnet.cli.options import writable_file
    from ddrnet.engine.distributed import setup_distributed
    from ddrnet.errors import UsageError

    from helpers import one_line_cli_error

    loop = tmp_path / "loop"
    loop.mkdir()
    (loop / "a").symlink_to("b")
    (loop / "b").symlink_to("a")
    argv = ["predict", str(camvid_frame), "--checkpoint", "camvid_ddrnet23_slim_fast"]
    error = one_line_cli_error(capsys, [*argv, "-o", str(loop / "a")])
    assert str(loop / "a") in error and "symbolic links" in error  # not a RuntimeError
    # An output file under the loop is refused before the work, not after it.
    with pytest.raises(UsageError, match="loop/a is a link to nothing"):
        writable_file("--json", str(loop / "a" / "d.json"), (".json",))
    monkeypatch.setenv("WORLD_SIZE", "abc")
    with pytest.raises(UsageError, match="WORLD_SIZE='abc': not a whole number"):
        setup_distributed("cpu")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(UsageError, match="WORLD_SIZE=2 is set but RANK is not"):
        setup_distributed("cpu")


def test_ctrl_c_after_the_job_while_python_exits_prints_nothing() -> None:
    """A Ctrl-C in the moment between the job's end and the process's (PyTorch's exit
    handlers run then) printed Python's "Exception ignored in atexit callback" traceback;
    it ends the process as a shell's Ctrl-C does. An exit handler sends it here."""
    script = (
        "import atexit, os, signal, sys\n"
        "from ddrnet.cli import run\n"
        "sys.argv = ['ddrnet', 'models', '--size', '64x64']\n"
        "atexit.register(lambda: os.kill(os.getpid(), signal.SIGINT))\n"
        "run()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as in a shell
    )  # fmt: skip
    assert (result.returncode, result.stderr) == (-signal.SIGINT, "")
    assert "ddrnet_23_slim" in result.stdout  # the job itself ran to its end


def test_ctrl_c_while_the_command_starts_is_one_line() -> None:
    """SIGINT while the command's modules (and PyTorch) are still being imported."""
    # A shell's default for SIGINT: pytest-xdist's workers ignore it, and a child inherits that.
    process = subprocess.Popen(
        [sys.executable, "-m", "ddrnet.cli", "predict", "no_such.png"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    # Once PyTorch's library is mapped, its import has begun (and Python's SIGINT handler is
    # in place); the rest of that import takes longer than this loop's step.
    maps, deadline = Path(f"/proc/{process.pid}/maps"), time.monotonic() + 60
    while "libtorch" not in maps.read_text():
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.005)
    process.send_signal(signal.SIGINT)
    _, errors = process.communicate(timeout=60)
    assert (process.returncode, errors) == (130, "interrupted\n")


def test_bad_arguments_are_one_line_errors(tmp_path) -> None:
    result = run_ddrnet("models", "--size", "1024by2048")
    assert result.returncode == 2 and "HEIGHTxWIDTH" in result.stderr
    result = run_ddrnet("train", "no_such_recipe")
    assert result.returncode == 2 and "bundled recipes: camvid_ddrnet23_slim" in result.stderr
    result = run_ddrnet("eval", str(tmp_path / "missing.safetensors"))
    assert result.returncode == 2 and "missing.safetensors" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_eval_on_one_camvid_sequence(camvid_root, camvid_model_file, tmp_path) -> None:
    path = camvid_model_file
    result = run_ddrnet(
        "eval", str(path), "--dataset", "camvid", "--root", str(camvid_root), "--split", "train",
        "--sequences", "0006R0", "--max-images", "2", "--json", str(tmp_path / "m.json"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((tmp_path / "m.json").read_text())["images"] == 2
    result = run_ddrnet(
        "eval",
        str(path),
        "--dataset",
        "camvid",
        "--root",
        str(camvid_root),
        "--sequences",
        "0006R0",
    )
    assert result.returncode == 2 and "has no frames of sequences ['0006R0']" in result.stderr
    result = run_ddrnet(
        "eval", str(path), "--dataset", "camvid", "--root", str(camvid_root), "--split", "vall"
    )
    assert result.returncode == 2 and "(--split vall): CamVid split must be" in result.stderr


@pytest.mark.slow
def test_out_of_range_options_are_refused_by_name(tmp_path) -> None:
    for arguments, message in (
        (["eval", "x", "--json", str(tmp_path)], "is a folder, but a file is to be written"),
        (["export", "-o", str(tmp_path / "m.png")], "expected a .onnx file name"),
        (["export", "-o", str(tmp_path / "m.onnx"), "--format", "onnx-int8"], "--calibration"),
        (["predict", "--scales", "0"], "argument --scales: must be > 0"),
        (["predict", "--scales", "1e9"], "argument --scales: must be > 0 and <= 4, got '1e9'"),
        (["eval", "x", "--scales", "20"], "argument --scales: must be > 0 and <= 4, got '20'"),
        (["predict", "--max-pixels", "0"], "argument --max-pixels: must be >= 1"),
        (["predict", "--alpha", "nan"], "argument --alpha: must be a finite number, got 'nan'"),
        (["eval", "x", "--max-images", "-1"], "argument --max-images: must be >= 1"),
        (["serve", "--port", "99999"], "argument --port: must be >= 0 and <= 65535"),
        (["bench", "--threads", "0"], "argument --threads: must be >= 1"),
        (["search", "x", "-o", str(tmp_path / "s"), "--max-macs", "0"], "must be > 0 and <= 1"),
        (["search", "x", "-o", str(tmp_path / "s"), "--seed", "-1"], "argument --seed: must be"),
    ):
        result = run_ddrnet(*arguments)
        assert result.returncode == 2 and message in result.stderr, (arguments, result.stderr)
    assert os.listdir(tmp_path) == []  # refused before any work or any file


@pytest.mark.slow
def test_eval_refuses_labels_outside_the_classes_by_file(
    camvid_root, camvid_model_file, tmp_path
) -> None:
    import numpy as np
    from PIL import Image

    path = camvid_model_file
    root = tmp_path / "camvid"
    (root / "val").mkdir(parents=True)
    (root / "valannot").mkdir()
    frames = sorted(p.name for p in (camvid_root / "valannot").glob("*.png"))[:2]
    labels = []
    for name in frames:
        (root / "val" / name).write_bytes((camvid_root / "val" / name).read_bytes())
        labels.append(np.array(Image.open(camvid_root / "valannot" / name)))
    labels[0][:10] = 255  # the ignore index stays ignore
    labels[1][100:110, 200:210] = 77  # before: silently ignored, as if it were 255
    for name, label in zip(frames, labels):
        Image.fromarray(label).save(root / "valannot" / name)
    arguments = ["eval", str(path), "--dataset", "camvid", "--root", str(root)]
    result = run_ddrnet(*arguments)
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"{root / 'valannot' / frames[1]}: label values [77] are not classes" in result.stderr
    assert "Traceback" not in result.stderr  # (above it: the progress bar)

    Image.fromarray(labels[0][:180, :240]).save(root / "valannot" / frames[1])
    result = run_ddrnet(*arguments)
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"{root / 'valannot' / frames[1]}: label is 240x180 but image" in result.stderr


def test_viz_features_defaults_to_the_bundled_model(tmp_path) -> None:
    from ddrnet.data.io import demo_frames

    output = tmp_path / "features.png"
    result = run_ddrnet("viz", "features", str(demo_frames()[0]), "-o", str(output))
    assert result.returncode == 0, result.stderr[-2000:]
    assert output.stat().st_size > 10_000


def test_an_error_that_is_no_user_error_shows_its_traceback() -> None:
    """Only ``DDRNetError`` (and OS errors naming a file) are one-line usage errors: a plain
    ValueError from inside a command is a bug, shown with its traceback, exit status 1."""
    import subprocess
    import sys

    program = (
        "import sys, ddrnet.models\n"
        "def broken(task=None):\n"
        "    raise ValueError('a bug, not a user error')\n"
        "ddrnet.models.list_models = broken\n"
        "from ddrnet.cli import main\n"
        "sys.exit(main(['models']))\n"
    )
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" in result.stderr and "ValueError: a bug, not a user error" in result.stderr
    assert "ddrnet models: error:" not in result.stderr


@pytest.mark.parametrize(
    ("argv", "overrides", "resume"),
    [
        (["--resume"], ["train.epochs=3"], True),
        (["--resume", "data.batch_size=4"], ["train.epochs=3", "data.batch_size=4"], True),
        (
            ["--resume", "data.batch_size=4", "optim.lr=0.02"],
            ["train.epochs=3", "data.batch_size=4", "optim.lr=0.02"],
            True,
        ),
        (
            ["--resume", "run/last.pt", "optim.lr=0.02"],
            ["train.epochs=3", "optim.lr=0.02"],
            "run/last.pt",
        ),
    ],
)
def test_train_overrides_may_follow_resume(monkeypatch, argv, overrides, resume) -> None:
    """`ddrnet train RECIPE --resume train.epochs=400` resumes with that override; argparse
    alone read the override as the checkpoint to resume from, and refused the ones after it."""
    import ddrnet.config
    import ddrnet.engine.train
    from ddrnet.cli import main

    seen = {}

    def load_config(cls, path, given):
        seen["overrides"] = list(given)
        return "config"

    monkeypatch.setattr(ddrnet.config, "load_config", load_config)
    monkeypatch.setattr(
        ddrnet.engine.train, "train", lambda config, resume: seen.update(resume=resume) or "run"
    )
    assert main(["train", "camvid_ddrnet23_slim", "train.epochs=3", *argv]) == 0
    assert seen == {"overrides": overrides, "resume": resume}
    with pytest.raises(SystemExit):  # an unknown option stays an argparse error
        main(["train", "camvid_ddrnet23_slim", "--resume", "--bogus"])


def test_inputs_may_follow_options() -> None:
    """`ddrnet predict a.png -o out --batch-size 3 b.png` was "unrecognized arguments: b.png"."""
    from ddrnet.cli import _parse

    args = _parse(["predict", "a.png", "-o", "out", "--batch-size", "3", "b.png", "c/"])
    assert args.inputs == ["a.png", "b.png", "c/"] and args.batch_size == 3
    args = _parse(["pick", "frames/", "-n", "5", "drive.mp4", "-o", "to_label"])
    assert args.inputs == ["frames/", "drive.mp4"]
    with pytest.raises(SystemExit):  # an unknown option stays an argparse error
        _parse(["predict", "a.png", "--bogus", "b.png"])
    args = _parse(["predict", "a.png", "--flip", "--", "b.png", "-dash.png"])  # end of options
    assert args.inputs == ["a.png", "b.png", "-dash.png"] and args.flip
