"""Bad input is one line naming the file or option and what is wrong, never a traceback: text
files that are not UTF-8 or are folders, class counts no model can have, a bad override (not
the recipe file), a run folder given to --resume, non-finite numbers."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from ddrnet.config import ConfigError, read_text
from ddrnet.data.camvid import camvid_samples
from ddrnet.data.datasets import DatasetError
from ddrnet.data.folder import load_classes_file
from ddrnet.engine.checkpointing import TrainingError
from ddrnet.engine.run_folder import checked_output
from ddrnet.errors import UsageError
from ddrnet.limits import MAX_NUM_CLASSES, InputTooLargeError
from ddrnet.models import create_model

from helpers import CLASSES_YAML, REPO_ROOT, one_line_cli_error, tiny_overrides

RECIPE = REPO_ROOT / "src/ddrnet/configs/camvid_ddrnet23_slim.yaml"


def utf16(path: Path, text: str) -> Path:
    """``text`` written to ``path`` as UTF-16 (with its byte-order mark 0xff 0xfe)."""
    path.write_bytes(text.encode("utf-16"))
    return path


def test_read_text_names_the_file_and_the_first_bad_byte(tmp_path) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes("ok\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError) as error:
        read_text(path, "some file")
    assert str(error.value) == (
        f"some file {path}: not UTF-8 text (byte 0xe9 at offset 6: invalid continuation byte); "
        "save it as UTF-8"
    )
    with pytest.raises(DatasetError, match=f"^some file {tmp_path} is a folder, not a file$"):
        read_text(tmp_path, "some file", DatasetError)
    # UTF-8 with the byte-order mark Windows editors write reads as plain UTF-8; offsets
    # count the mark.
    path.write_bytes("\ufeffclasses: []".encode())
    assert read_text(path, "some file") == "classes: []"
    path.write_bytes("\ufeffcaf\xe9".encode()[:-1])
    with pytest.raises(ConfigError, match=r"\(byte 0xc3 at offset 6: unexpected end of data\)"):
        read_text(path, "some file")


def test_a_utf16_recipe_is_one_line(capsys, tmp_path) -> None:
    recipe = utf16(tmp_path / "rec16.yaml", RECIPE.read_text())
    error = one_line_cli_error(capsys, ["train", str(recipe)])
    assert error.startswith(f"ddrnet train: error: config file {recipe}: not UTF-8 text (byte 0xff")


def test_a_folder_as_recipe_is_called_a_folder(capsys, tmp_path) -> None:
    for name in ("some_folder", "folder.yaml"):
        (tmp_path / name).mkdir()
        error = one_line_cli_error(capsys, ["train", str(tmp_path / name)])
        assert (
            error == f"ddrnet train: error: config file {tmp_path / name} is a folder, not a file"
        )
    missing = tmp_path / "missing.yaml"
    error = one_line_cli_error(capsys, ["train", str(missing)])
    assert error == f"ddrnet train: error: config file {missing} does not exist"


def test_a_utf16_or_folder_classes_file_is_a_dataset_error(tmp_path) -> None:
    path = utf16(tmp_path / "classes.yaml", CLASSES_YAML)
    with pytest.raises(DatasetError, match=r"^classes file .*classes\.yaml: not UTF-8 text \("):
        load_classes_file(path)
    with pytest.raises(DatasetError, match=f"^classes file {tmp_path} is a folder, not a file$"):
        load_classes_file(tmp_path)
    with pytest.raises(DatasetError, match="does not exist"):
        load_classes_file(tmp_path / "nope.yaml")


def test_a_utf16_camvid_list_is_a_dataset_error(tmp_path) -> None:
    utf16(tmp_path / "train.txt", "/SegNet/CamVid/train/a.png /SegNet/CamVid/trainannot/a.png\n")
    with pytest.raises(DatasetError, match=r"^CamVid list file .*train\.txt: not UTF-8 text \("):
        camvid_samples(tmp_path, "train")


def test_a_utf16_metrics_file_is_one_line(capsys, tmp_path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    utf16(run / "metrics.jsonl", '{"epoch": 1, "train_loss": 1.0}\n')
    argv = ["viz", "curves", str(run), "-o", str(tmp_path / "c.png")]
    error = one_line_cli_error(capsys, argv)
    assert error.startswith(f"ddrnet viz: error: metrics file {run / 'metrics.jsonl'}: not UTF-8")
    (run / "metrics.jsonl").unlink()
    (run / "metrics.jsonl").mkdir()
    error = one_line_cli_error(capsys, argv)
    assert error.endswith(f"metrics file {run / 'metrics.jsonl'} is a folder, not a file")


def test_too_many_classes_are_refused_before_allocating() -> None:
    # (`ddrnet models --num-classes` refuses them as it parses: OPTION_ERRORS)
    too_many = f"^num_classes=100000000: over the limit of {MAX_NUM_CLASSES} classes"
    with pytest.raises(InputTooLargeError, match=too_many):
        create_model("ddrnet_23_slim", num_classes=100_000_000)
    with pytest.raises(UsageError, match="^num_classes=0: a model needs at least 1 class"):
        create_model("ddrnet_23_slim", num_classes=0)
    assert create_model("ddrnet_23_slim", num_classes=MAX_NUM_CLASSES).num_classes == 65535


def test_an_override_error_names_the_override_not_the_recipe(capsys, tmp_path) -> None:
    error = one_line_cli_error(capsys, ["train", "camvid_ddrnet23_slim", "train.foo=1"])
    assert error.startswith(
        "ddrnet train: error: override 'train.foo=1': unknown key train.foo; valid keys in "
        "train: amp, "
    )
    assert "camvid_ddrnet23_slim.yaml" not in error
    error = one_line_cli_error(capsys, ["train", "camvid_ddrnet23_slim", "train.epochs=x"])
    assert error.endswith("override 'train.epochs=x': train.epochs: expected an integer, got 'x'")
    # A bad key of the recipe file itself is still blamed on the file, overrides or not.
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(RECIPE.read_text() + "\nschedule: {}\n")
    error = one_line_cli_error(capsys, ["train", str(recipe), "train.epochs=3"])
    assert error.startswith(f"ddrnet train: error: {recipe}: unknown key schedule; valid keys: ")


def test_resume_takes_a_run_folder_as_its_last_pt(capsys, tmp_path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(b"")  # only its presence is checked here
    assert checked_output(tmp_path / "new", str(run)) == run / "last.pt"
    assert checked_output(tmp_path / "new", str(run / "last.pt")) == run / "last.pt"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TrainingError, match="^no checkpoint to resume from at .*empty/last.pt$"):
        checked_output(tmp_path / "new", str(empty))
    argv = ["train", "camvid_ddrnet23_slim", f"train.output_dir={tmp_path / 'out'}"]
    error = one_line_cli_error(capsys, [*argv, "--resume", str(empty)])
    assert error == f"ddrnet train: error: no checkpoint to resume from at {empty / 'last.pt'}"


def argparse_error(capsys, argv: list[str]) -> str:
    """The error line of an option that argparse refuses (``ddrnet.cli.main`` exits with
    status 2 after printing the command's usage), without ``ddrnet COMMAND: error: ``."""
    from ddrnet.cli import main

    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    prefix = f"ddrnet {argv[0]}: error: "
    assert lines[0].startswith("usage: ") and lines[-1].startswith(prefix), lines
    assert not any("Traceback" in line for line in lines), lines
    return lines[-1][len(prefix) :]


OPTION_ERRORS = [
    (["serve", "--max-upload-mb", "inf"], "--max-upload-mb: must be a finite number, got 'inf'"),
    (["predict", "x.png", "--alpha", "nan"], "--alpha: must be a finite number, got 'nan'"),
    (["predict", "x.png", "--alpha", "1x"], "--alpha: expected a number, got '1x'"),
    (["predict", "x.png", "--alpha", "2"], "--alpha: must be >= 0 and <= 1, got '2'"),
    (["models", "--num-classes", "1.5"], "--num-classes: expected an integer, got '1.5'"),
    (["models", "--num-classes", "inf"], "--num-classes: expected an integer, got 'inf'"),
    (["models", "--num-classes", "0"], "--num-classes: must be >= 1 and <= 65535, got '0'"),
    (
        ["models", "--num-classes", "100000000"],
        "--num-classes: must be >= 1 and <= 65535, got '100000000'",
    ),
]


@pytest.mark.parametrize(("argv", "message"), OPTION_ERRORS)
def test_option_types_say_what_they_expect(capsys, argv, message) -> None:
    assert argparse_error(capsys, argv) == f"argument {message}"


@pytest.mark.slow  # two tiny training runs: ~11 s on 2 cores
def test_resume_from_a_run_folder_continues_its_last_pt(camvid_root, tmp_path, caplog) -> None:
    from ddrnet.cli import main

    def command(output: Path, epochs: int) -> list[str]:
        return ["train", "camvid_ddrnet23_slim", *tiny_overrides(camvid_root, output, epochs)]

    first, second = tmp_path / "first", tmp_path / "second"
    assert main(command(first, epochs=1)) == 0
    with caplog.at_level("INFO", logger="ddrnet.engine"):
        assert main([*command(second, epochs=2), "--resume", str(first)]) == 0
    assert f"resumed from {first / 'last.pt'} at epoch 1" in caplog.text
    assert torch.load(second / "last.pt", weights_only=True)["epoch"] == 2
    # A new folder's files are written from the checkpoint, not "repaired after a kill".
    assert f"written to {second} from epoch 1" in caplog.text
    assert "repaired" not in caplog.text and "not written by this run" not in caplog.text


def test_a_mean_outside_the_image_scale_is_refused_by_name(capsys) -> None:
    """``data.mean`` is on the 0..1 scale: nan (or a 0..255 value) would train to nan."""
    error = one_line_cli_error(capsys, ["data", "camvid_ddrnet23_slim", "data.mean=[nan,0,0]"])
    assert "override 'data.mean=[nan,0,0]': data: mean must be in [0, 1] per channel" in error
    error = one_line_cli_error(capsys, ["data", "camvid_ddrnet23_slim", "data.mean=[104,117,123]"])
    assert "mean must be in [0, 1] per channel, got (104.0, 117.0, 123.0)" in error


def test_a_key_given_twice_is_refused_where_it_is(tmp_path, capsys) -> None:
    recipe = tmp_path / "twice.yaml"
    recipe.write_text("optim:\n  lr: 0.1\n  momentum: 0.9\n  lr: 0.01\n")
    error = one_line_cli_error(capsys, ["train", str(recipe)])
    assert error.endswith(f"{recipe}: invalid YAML (line 4, column 3: key 'lr' appears twice "
                          "in one mapping)")  # fmt: skip
    from ddrnet.data.datasets import DatasetError
    from ddrnet.data.folder import load_classes_file

    classes = tmp_path / "classes.yaml"
    classes.write_text("classes: [{name: a, color: [1, 2, 3], name: b}]\n")
    with pytest.raises(DatasetError, match="key 'name' appears twice"):
        load_classes_file(classes)


def test_eval_names_only_the_missing_data_option(tmp_path, capsys) -> None:
    import ddrnet

    model = ddrnet.create_model("ddrnet_23_slim", num_classes=3)  # records no data set
    path = ddrnet.save_model(model, tmp_path / "m.safetensors", model.metadata)
    error = one_line_cli_error(capsys, ["eval", str(path), "--root", str(tmp_path)])
    assert error.endswith("this checkpoint does not record its data set: give --dataset")
    # options of another kind of data set name themselves, not the recipe's fields
    camvid = ["eval", "camvid_ddrnet23_slim_train"]
    error = one_line_cli_error(capsys, [*camvid, "--classes-file", str(tmp_path / "c.json")])
    assert error.endswith("--classes-file is for folder data sets; the data set is camvid")
    argv = [*camvid, "--dataset", "folder", "--root", str(tmp_path), "--sequences", "0006R0"]
    assert one_line_cli_error(capsys, argv).endswith(
        "--sequences picks CamVid sequences; the data set is folder"
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["predict", "x.png", "-o", ""],
        ["export", "-o", " ", "--format", "onnx"],
        ["eval", "x.safetensors", "--json", ""],
        ["data", "camvid_ddrnet23_slim", "--show", ""],
    ],
)
def test_an_empty_output_path_is_refused(capsys, argv) -> None:
    """An empty path would quietly mean the current folder."""
    assert argparse_error(capsys, argv).endswith("expected a path, got an empty one")


def test_an_empty_run_folder_is_refused(capsys) -> None:
    error = one_line_cli_error(capsys, ["train", "camvid_ddrnet23_slim", "train.output_dir="])
    assert error.endswith("train: output_dir must be a folder path, got ''")


def test_a_pixel_count_is_taken_as_the_help_writes_it() -> None:
    from ddrnet.cli.options import parse_pixel_count

    assert parse_pixel_count("50,000,000") == parse_pixel_count("50_000_000") == 50_000_000
    assert parse_pixel_count("4096x2048") == 4096 * 2048
    for text in ("0", "abc", "0x5"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_pixel_count(text)


def test_options_that_would_be_ignored_are_refused(capsys) -> None:
    error = one_line_cli_error(capsys, ["eval", "camvid_ddrnet23_slim", "--severities", "2"])
    assert error.endswith("--severities applies to --corruptions, which is not given")
    error = one_line_cli_error(capsys, ["data", "camvid_ddrnet23_slim", "data.classes_file=x.yaml"])
    assert "classes_file must be null unless dataset is folder, got 'x.yaml'" in error


def test_outputs_never_replace_what_the_command_reads(camvid_model_file, tmp_path, capsys):
    """An output path that names the command's own input is refused before any work, and
    the input is left as it was."""
    import shutil

    from ddrnet.data.io import demo_frames

    model = tmp_path / "model.safetensors"
    shutil.copy(camvid_model_file, model)
    image = shutil.copy(demo_frames()[0], tmp_path / "street.png")
    report = tmp_path / "baseline.json"
    report.write_text("{}")
    before = {path: path.read_bytes() for path in (model, image, report)}
    cases = [
        (["prune", str(model), "--macs", "0.5", "-o", str(model)], "is the file CHECKPOINT reads"),
        (["export", "--checkpoint", str(model), "--format", "torchscript", "-o", str(model)],
         "expected a .pt or .ts or .torchscript file name"),
        (["viz", "features", str(image), "--checkpoint", str(model), "-o", str(image)],
         "is the file IMAGE reads"),
        (["viz", "compare", str(image), "--checkpoint", str(model), "-o", str(image)],
         "is the file IMAGE reads"),
        (["eval", str(model), "--compare", str(report), "--json", str(report)],
         "is the file --compare reads"),
        (["eval", str(model), "--dataset", "folder", "--root", str(tmp_path),
          "--classes-file", str(report), "--json", str(report)],
         "is the file --classes-file reads"),
        (["eval", str(model), "--json", str(tmp_path / "new.json"), "--worst", "1",
          "--show", str(tmp_path / "new.json")], "--show " + str(tmp_path / "new.json")),
        # the pictures' folder would need a folder where a file is: refused before evaluating
        (["eval", str(model), "--worst", "1", "--show", str(report / "pictures")],
         f"cannot create its folder ({report} is a file)"),
        (["eval", str(model), "--submission", str(image)], "is a file, but a folder is to be"),
    ]  # fmt: skip
    for argv, message in cases:
        assert message in one_line_cli_error(capsys, argv), argv
    checkpoint = tmp_path / "last.pt"
    torch.save({}, checkpoint)
    argv = ["export", "--checkpoint", str(checkpoint), "--format", "torchscript"]
    error = one_line_cli_error(capsys, [*argv, "-o", str(checkpoint)])
    assert error.endswith(f"-o {checkpoint}: is the file --checkpoint reads; writing it would "
                          "replace it (give another file name)")  # fmt: skip
    assert all(path.read_bytes() == data for path, data in before.items())


def test_a_new_run_keeps_a_config_yaml_it_did_not_write(camvid_root, tmp_path, capsys) -> None:
    output = tmp_path / "run"
    output.mkdir()
    recipe = output / "config.yaml"
    recipe.write_text(RECIPE.read_text())  # a recipe kept where its run will be written
    argv = ["train", str(recipe), *tiny_overrides(camvid_root, output, epochs=1)]
    error = one_line_cli_error(capsys, argv)
    assert f"train.output_dir={output} holds a config.yaml that is not this run's" in error
    assert recipe.read_text() == RECIPE.read_text()


def test_export_reads_its_inputs_before_writing(camvid_model_file, tmp_path, capsys) -> None:
    """A wrong --evaluate-root or an unreadable calibration image is refused before any
    file is written (an INT8 export writes its float32 file first)."""
    output = tmp_path / "out" / "model.onnx"
    argv = ["export", "--checkpoint", str(camvid_model_file), "-o", str(output)]
    error = one_line_cli_error(capsys, [*argv, "--evaluate-root", str(tmp_path / "nowhere")])
    assert f"--evaluate-root {tmp_path / 'nowhere'}: CamVid root" in error
    calibration = tmp_path / "calibration"
    calibration.mkdir()
    (calibration / "broken.png").write_bytes(b"not a picture")
    argv += ["--format", "onnx-int8", "--calibration", str(calibration)]
    assert "broken.png" in one_line_cli_error(capsys, argv)
    assert not output.parent.exists() or not any(output.parent.iterdir())


def test_options_of_another_mode_are_refused(camvid_model_file, tmp_path, capsys) -> None:
    argv = ["data", "camvid_ddrnet23_slim"]
    error = one_line_cli_error(capsys, [*argv, "--augmented"])
    assert error.endswith("--augmented shape the pictures of --show, which is not given")
    error = one_line_cli_error(capsys, [*argv, "--count", "3"])
    assert error.endswith("--count shape the pictures of --show, which is not given")
    argv = ["export", "--checkpoint", str(camvid_model_file), "-o", str(tmp_path / "m.onnx")]
    error = one_line_cli_error(capsys, [*argv, "--calibration", str(tmp_path)])
    assert error.endswith("--calibration applies to the INT8 formats (onnx-int8, "
                          "executorch-int8), not onnx")  # fmt: skip
    # options the format would accept and ignore
    cases = [
        (["--weight-bits", "8"], "--weight-bits applies to --format onnx-int8, not onnx"),
        (["--calibration-count", "5"], "--calibration-count applies to the INT8 formats"),
        (["--evaluate-images", "3"], "--evaluate-images applies to --evaluate-root, which is"),
        (["--format", "torchscript", "-o", str(tmp_path / "m.pt"), "--evaluate-root", "."],
         "--evaluate-root scores onnx, onnx-int8, ncnn, executorch, executorch-int8, aoti "
         "files, not torchscript"),
    ]  # fmt: skip
    for options, message in cases:
        assert message in one_line_cli_error(capsys, [*argv, *options]), options


def test_export_never_writes_a_companion_file_over_its_input(camvid_model_file, tmp_path, capsys):
    """ncnn writes NAME.bin and NAME.json beside -o NAME.param: a checkpoint named NAME.bin
    was replaced by the ncnn weights. Every file an export writes is checked before any."""
    checkpoint = tmp_path / "m.bin"
    checkpoint.write_bytes(camvid_model_file.read_bytes())
    argv = ["export", "--checkpoint", str(checkpoint), "--format", "ncnn"]
    error = one_line_cli_error(capsys, [*argv, "-o", str(tmp_path / "m.param")])
    assert f"writes beside it {checkpoint}: is the file --checkpoint reads" in error
    assert checkpoint.read_bytes() == camvid_model_file.read_bytes()
    (tmp_path / "int8_fp32.onnx").mkdir()  # in the way of the float32 file kept beside
    argv = ["export", "--checkpoint", str(checkpoint), "--format", "onnx-int8"]
    error = one_line_cli_error(capsys, [*argv, "-o", str(tmp_path / "int8.onnx")])
    assert error.endswith("int8_fp32.onnx: is a folder, but a file is to be written there")
    assert not (tmp_path / "int8.onnx").exists()


def test_a_run_stopped_before_its_first_checkpoint_can_start_again(tmp_path) -> None:
    """Its own config.yaml (written with the header) gives way to a new run with other
    settings; --resume says there is nothing to resume and what to do instead."""
    from ddrnet.engine.run_folder import CONFIG_HEADER

    output = tmp_path / "run"
    output.mkdir()
    (output / "config.yaml").write_text(CONFIG_HEADER + "train:\n  epochs: 3\n")
    assert checked_output(output, False, CONFIG_HEADER + "train:\n  epochs: 5\n") is None
    with pytest.raises(TrainingError, match="stopped before its first epoch: start it again"):
        checked_output(output, True)


def test_python_api_mistakes_are_named(tmp_path) -> None:
    """What a caller of the Python API gets wrong is a ValueError/TypeError saying what is
    expected, not an error from deep inside torch, OpenCV or pathlib."""
    import ddrnet
    from ddrnet.video_source import VideoSource, VideoSourceError

    from helpers import camvid_model

    model = camvid_model()
    with pytest.raises(TypeError, match="Predictor takes a model .* got str"):
        ddrnet.Predictor("camvid_ddrnet23_slim")
    with pytest.raises(ValueError, match=r"mean takes 3 finite values"):
        ddrnet.Predictor(model, mean=(0.5,))
    with pytest.raises(ValueError, match=r"std must be > 0 per channel"):
        ddrnet.Predictor(model, std=(0, 0, 0))
    with pytest.raises(ValueError, match=r"stride takes \(height, width\) steps"):
        ddrnet.Predictor(model, window=(64, 64), stride=(0, 0))
    with pytest.raises(TypeError, match="weights takes a bundled entry"):
        create_model(weights="bogus")
    with pytest.raises(UsageError, match="num_classes=2.5: a whole number of classes"):
        create_model("ddrnet_23_slim", num_classes=2.5)
    for multiplier in (0, -1, float("nan")):
        with pytest.raises(ValueError, match=r"width_multiplier must be a number > 0"):
            create_model("ddrnet_23_slim", width_multiplier=multiplier)
    # 100x asked for tens of GB of weights: the kernel killed the training run. The cap is
    # the width, not the factor: 8x a DDRNet-39 would be 2,000 M parameters.
    for name, multiplier in (("ddrnet_23_slim", 100), ("ddrnet_39", 8)):
        with pytest.raises(ValueError, match=r"channels in the first stage, more than 256"):
            create_model(name, width_multiplier=multiplier)
    with pytest.raises(VideoSourceError, match="cannot open the video: no such file"):
        VideoSource(tmp_path / "nope.mp4")  # a Path, as well as a str
    with pytest.raises(VideoSourceError, match="cannot open the video: a folder"):
        VideoSource(str(tmp_path))


def test_resuming_from_what_is_no_training_checkpoint_says_what_it_is(
    camvid_model_file, tmp_path
) -> None:
    import shutil

    from ddrnet.engine.checkpointing import load_training_checkpoint
    from ddrnet.models import CheckpointError

    weights = shutil.copy(camvid_model_file, tmp_path / "last.pt")  # safetensors inside
    with pytest.raises(CheckpointError, match=r"is a safetensors model file under another"):
        load_training_checkpoint(weights)
    # A run's best.safetensors was said to be "a safetensors file under another suffix".
    with pytest.raises(CheckpointError, match=r"a model file \(weights only\), not a training"):
        load_training_checkpoint(camvid_model_file)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(bytes(range(7, 200)))
    with pytest.raises(CheckpointError, match=r"not a PyTorch or safetensors file"):
        load_training_checkpoint(junk)


def test_an_override_that_cannot_apply_is_named_once(tmp_path, capsys) -> None:
    recipe = tmp_path / "flat.yaml"
    recipe.write_text("data: 5\n")
    error = one_line_cli_error(capsys, ["train", str(recipe), "data.root=/x"])
    assert error.endswith("error: override 'data.root=/x': data is not a section (it is 5)")
    error = one_line_cli_error(capsys, ["train", str(RECIPE), "data.crop_size=[64,96"])
    assert error.count("override 'data.crop_size=[64,96'") == 1


class _BadLabels(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int):
        from ddrnet.data.datasets import DatasetError

        raise DatasetError("a.png: label values [30] are not classes of mine: 0..10, 255")


def test_an_error_in_a_data_loader_worker_is_its_own_one_line_message() -> None:
    """torch re-raises a worker's error with the worker's traceback as its message; the
    command's line is the error's own message (data.check=false with workers: a bad label
    found while training)."""
    from ddrnet.data.datasets import DatasetError
    from ddrnet.errors import user_error_message

    with pytest.raises(DatasetError) as error:
        list(torch.utils.data.DataLoader(_BadLabels(), num_workers=1))
    assert "Original Traceback" in str(error.value)
    assert user_error_message(error.value) == (
        "a.png: label values [30] are not classes of mine: 0..10, 255"
    )


def test_float_images_with_no_readings_keep_their_other_pixels(tmp_path) -> None:
    """A float TIFF (a depth or thermal camera's) with one NaN or infinite pixel became all
    black: the min..max rescale took the non-finite value. By hand: 0, 1, 2 over 0..2."""
    import numpy as np
    from PIL import Image

    from ddrnet.data.io import ImageReadError, read_rgb

    for missing in (np.nan, np.inf):
        pixels = np.array([[0.0, 1.0], [2.0, missing]], np.float32)
        Image.fromarray(pixels, mode="F").save(tmp_path / "depth.tif")
        assert read_rgb(tmp_path / "depth.tif")[..., 0].tolist() == [[0, 128], [255, 0]]
    Image.fromarray(np.full((2, 2), np.nan, np.float32), mode="F").save(tmp_path / "none.tif")
    with pytest.raises(ImageReadError, match="none.tif: no pixel holds a finite value"):
        read_rgb(tmp_path / "none.tif")
