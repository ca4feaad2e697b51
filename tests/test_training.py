"""Training end to end on real CamVid frames: exact resume, SIGKILL, intact checkpoints."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import ddrnet
from ddrnet import atomic, limits
from ddrnet.config import ConfigError, load_config
from ddrnet.engine import train as train_module
from ddrnet.engine.checkpointing import atomic_save
from ddrnet.engine.config import Config
from ddrnet.engine.run_folder import metrics_text
from ddrnet.engine.train import TrainingError, train
from ddrnet.limits import InputTooLargeError

from helpers import straight_and_resumed, tiny_config, tiny_overrides


def test_run_writes_config_metrics_and_a_self_describing_model(camvid_root, tmp_path) -> None:
    output = train(tiny_config(camvid_root, tmp_path / "run", epochs=2))
    saved = load_config(Config, output / "config.yaml")
    assert saved.train.epochs == 2 and saved.data.crop_size == (64, 96)

    def strict(constant: str) -> None:  # NaN and Infinity are not JSON
        raise ValueError(f"metrics.jsonl holds {constant}")

    lines = (output / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line, parse_constant=strict) for line in lines]
    assert [r["epoch"] for r in records] == [1, 2]
    assert all(0 <= r["val_mIoU"] <= 100 for r in records)
    assert set(records[0]["val_per_class_IoU"]) >= {"Sky", "Road", "Bicyclist"}
    # A class neither labelled nor predicted in the validation frames has a nan IoU in the
    # history, and null in the file.
    record = {"epoch": 3, "val_per_class_IoU": {"Sky": float("nan"), "Road": 97.5}}
    assert (
        metrics_text([record]) == '{"epoch": 3, "val_per_class_IoU": {"Sky": null, "Road": 97.5}}\n'
    )

    model = ddrnet.create_model(checkpoint=output / "best.safetensors")
    assert model.metadata.class_names[3] == "Road" and model.metadata.dataset == "camvid"
    assert model.metadata.mean == pytest.approx([0.412, 0.425, 0.433])
    assert model.num_classes == 11 and model.metadata.training["config"]["train"]["epochs"] == 2


def test_resume_continues_exactly(camvid_root, tmp_path) -> None:
    straight, split = straight_and_resumed(camvid_root, tmp_path, epochs=3)
    a = torch.load(straight / "last.pt", weights_only=True)
    b = torch.load(split / "last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 3 and a["iteration"] == b["iteration"] == 6
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert a["history"][-1]["val_mIoU"] == b["history"][-1]["val_mIoU"]


def test_ema_run_resumes_exactly_and_ships_the_average(camvid_root, tmp_path) -> None:
    ema = ["train.ema_decay=0.9"]
    straight, split = straight_and_resumed(camvid_root, tmp_path, epochs=3, extra=ema)
    a = torch.load(straight / "last.pt", weights_only=True)
    b = torch.load(split / "last.pt", weights_only=True)
    for key, value in a["state_dict_ema"].items():
        assert torch.equal(value, b["state_dict_ema"][key]), key
    assert a["history"][-1]["val_mIoU"] == b["history"][-1]["val_mIoU"]
    assert 0 <= a["history"][-1]["val_mIoU_raw_weights"] <= 100
    # The average differs from the raw weights, and it is what every reader gets.
    weight = "backbone.stem.0.weight"
    assert not torch.equal(a["model"][weight], a["state_dict_ema"][weight])
    from_last = ddrnet.create_model(checkpoint=straight / "last.pt").state_dict()[weight]
    assert torch.equal(from_last, a["state_dict_ema"][weight])
    best = torch.load(straight / "best.pt", weights_only=True)
    from_best = ddrnet.create_model(checkpoint=straight / "best.safetensors").state_dict()[weight]
    assert torch.equal(from_best, best["state_dict_ema"][weight])
    # A run that had no average cannot be resumed with one.
    plain = tmp_path / "plain"
    train(tiny_config(camvid_root, plain, epochs=1))
    with pytest.raises(TrainingError, match="without train.ema_decay"):
        train(tiny_config(camvid_root, plain, epochs=2, extra=ema), resume=True)


def test_a_failed_epoch_leaves_the_last_checkpoint_intact(camvid_root, tmp_path) -> None:
    output = tmp_path / "run"
    train(tiny_config(camvid_root, output, epochs=1))
    before = (output / "last.pt").read_bytes()
    # An absurd learning rate makes the loss non-finite during the next epochs.
    config = tiny_config(camvid_root, output, epochs=6, extra=["optim.lr=1e12"])
    with pytest.raises(TrainingError, match=r"loss became .* last checkpoint .* is intact"):
        train(config, resume=True)
    assert (output / "last.pt").read_bytes() == before


def test_atomic_save_survives_a_crash_mid_write(tmp_path, monkeypatch) -> None:
    path = tmp_path / "last.pt"
    atomic_save({"epoch": 1}, path)

    def crash(payload, stream):
        stream.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"epoch": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_atomic_copy_replaces_whole_or_not_at_all(tmp_path, monkeypatch) -> None:
    source, target = tmp_path / "scratch.bin", tmp_path / "model.bin"
    source.write_bytes(b"new weights")
    target.write_bytes(b"old weights")

    def crash(stream, out):
        out.write(b"new w")
        raise OSError("disk full")

    monkeypatch.setattr(atomic.shutil, "copyfileobj", crash)
    with pytest.raises(OSError, match="disk full"):
        atomic.atomic_copy(source, target)
    monkeypatch.undo()
    assert target.read_bytes() == b"old weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin", "scratch.bin"]
    atomic.atomic_copy(source, target)
    assert target.read_bytes() == b"new weights" and source.exists()


def test_atomic_write_gives_the_mode_a_plain_write_gives(tmp_path) -> None:
    """mkstemp makes its file owner-only; the result must not stay so (model files and
    predictions shared on a machine would be unreadable to everyone else), and a rewritten
    file keeps its mode."""
    import os
    import stat

    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"x")
    written = tmp_path / "model.bin"
    atomic.atomic_write(written, lambda stream: stream.write(b"x"))
    mode = stat.S_IMODE(written.stat().st_mode)
    assert mode == stat.S_IMODE(plain.stat().st_mode)
    old_umask = os.umask(0o022)
    os.umask(old_umask)
    assert mode == 0o666 & ~old_umask
    # Rewriting keeps a file's own mode, as a plain write does.
    written.chmod(0o640)
    atomic.atomic_write(written, lambda stream: stream.write(b"y"))
    assert stat.S_IMODE(written.stat().st_mode) == 0o640 and written.read_bytes() == b"y"


@pytest.mark.slow
def test_sigkill_then_resume_loses_at_most_the_current_epoch(camvid_root, tmp_path) -> None:
    output = tmp_path / "killed"
    command = [sys.executable, "-m", "ddrnet.cli", "train", "camvid_ddrnet23_slim"]
    overrides = tiny_overrides(camvid_root, output, epochs=40)
    process = subprocess.Popen(
        command + overrides, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 240
    try:
        while not (output / "last.pt").exists():
            assert process.poll() is None, process.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.2)
        time.sleep(1.0)  # let it get into a later epoch, possibly mid-write
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    state = torch.load(output / "last.pt", weights_only=True)  # intact after SIGKILL
    done = state["epoch"]
    assert 1 <= done < 40
    resumed = subprocess.run(
        command + tiny_overrides(camvid_root, output, epochs=done + 1) + ["--resume"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed from {output / 'last.pt'} at epoch {done}" in resumed.stderr
    final = torch.load(output / "last.pt", weights_only=True)
    assert final["epoch"] == done + 1 and final["iteration"] == 2 * (done + 1)


def test_bad_recipe_keys_are_reported_by_the_cli(camvid_root, tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ddrnet.cli", "train", "camvid_ddrnet23_slim", "optim.lrate=1"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "unknown key optim.lrate; valid keys in optim:" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_data_root_names_the_folder(tmp_path) -> None:
    config = load_config(Config, None, [f"data.root={tmp_path / 'nowhere'}"])
    with pytest.raises(ValueError, match="nowhere"):
        train(config)


_IMPORT_SIDE_EFFECTS = """
import logging, os, sys, torch
import cv2  # sets LD_LIBRARY_PATH when imported: its doing, not ours
import torch.distributed as dist
environment, threads = dict(os.environ), torch.get_num_threads()
handlers, level = list(logging.getLogger().handlers), logging.getLogger().level
__import__(sys.argv[1])
print(dict(os.environ) == environment, torch.get_num_threads() == threads,
      logging.getLogger().handlers == handlers, logging.getLogger().level == level,
      dist.is_available() and dist.is_initialized())
"""


def test_module_has_no_side_effects_on_import() -> None:
    # In a fresh process: importing the training module sets no environment variable, thread
    # count or logging handler and starts no process group; train() does that when called.
    result = subprocess.run(
        [sys.executable, "-c", _IMPORT_SIDE_EFFECTS, train_module.__name__],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["True", "True", "True", "True", "False"]


@pytest.mark.slow
def test_two_process_torchrun_training_and_its_checkpoint_evaluates(camvid_root, tmp_path) -> None:
    output = tmp_path / "ddp"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "ddrnet.cli",
        "train",
        "camvid_ddrnet23_slim",
        *tiny_overrides(camvid_root, output, epochs=1),
        "train.threads=1",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    state = torch.load(output / "last.pt", weights_only=True)
    # Two iterations of two images on each of two processes.
    assert state["iteration"] == 2 and state["epoch"] == 1
    assert not any(k.startswith("module.") for k in state["model"])
    evaluation = subprocess.run(
        [
            sys.executable,
            "-m",
            "ddrnet.cli",
            "eval",
            str(output / "best.safetensors"),
            "--max-images",
            "2",
            "--json",
            str(tmp_path / "metrics.json"),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["images"] == 2 and 0 < metrics["mIoU"] <= 100
    assert len(metrics["per_class_IoU"]) == 11


def test_refusals_come_before_anything_is_written(camvid_root, tmp_path) -> None:
    run = tmp_path / "earlier_run"
    run.mkdir()
    atomic_save({"epoch": 7}, run / "last.pt")
    before = (run / "last.pt").read_bytes()
    with pytest.raises(TrainingError, match="already holds a run"):
        train(tiny_config(camvid_root, run))  # a new run must not replace the old one
    assert (run / "last.pt").read_bytes() == before and sorted(os.listdir(run)) == ["last.pt"]
    with pytest.raises(ValueError, match="holds weights, not a training run's state"):
        train(tiny_config(camvid_root, run), resume=True)
    fresh = tmp_path / "fresh"
    with pytest.raises(TrainingError, match="no checkpoint to resume from"):
        train(tiny_config(camvid_root, fresh), resume=True)
    with pytest.raises(TrainingError, match="at least 2 images per batch"):
        train(tiny_config(camvid_root, fresh, extra=["data.batch_size=1"]))
    with pytest.raises(TrainingError, match="at least 2 images per batch"):  # IBN's batch half
        train(tiny_config(camvid_root, fresh, extra=["data.batch_size=1", "model.norm=ibn"]))
    with pytest.raises(TrainingError, match="train.device=cuda:99"):
        train(tiny_config(camvid_root, fresh, extra=["train.device=cuda:99"]))
    without_aux = ["model.aux_head=false", "loss.aux_weight=0.2"]
    with pytest.raises(TrainingError, match=r"^loss.aux_weight=0.2 does nothing with model.aux"):
        train(tiny_config(camvid_root, fresh, extra=without_aux))
    with pytest.raises(
        TrainingError, match=r"^loss.label_stride=1000 is larger than the data.crop"
    ):
        train(tiny_config(camvid_root, fresh, extra=["loss.label_stride=1000"]))  # was a crash
    inside = f"train.output_dir={camvid_root / 'val' / 'runs'}"  # among the frames
    with pytest.raises(TrainingError, match=r"lies among the data set's frames"):
        train(tiny_config(camvid_root, fresh, extra=[inside]))
    assert not (camvid_root / "val" / "runs").exists()
    with pytest.raises(TrainingError, match=r"^train.output_dir=/proc/run: cannot write in its"):
        train(tiny_config(camvid_root, fresh, extra=["train.output_dir=/proc/run"]))
    # Quick refusals come before the file-by-file data check and name their setting.
    with pytest.raises(ValueError, match="train.amp=fp16 needs CUDA"):
        train(tiny_config(camvid_root, fresh, extra=["train.amp=fp16"]))
    with pytest.raises(ValueError, match=r"validation set \(data.val_split=tset\): CamVid split"):
        train(tiny_config(camvid_root, fresh, extra=["data.val_split=tset"]))
    with pytest.raises(
        ConfigError, match=r"^model.pretrained=.*/missing.pt: .*missing.pt does not"
    ):
        train(tiny_config(camvid_root, fresh, extra=[f"model.pretrained={tmp_path}/missing.pt"]))
    assert not fresh.exists()  # no stub folder, no config.yaml from refused runs


class Killed(BaseException):
    """Stands for SIGKILL: nothing catches it, nothing runs after it."""


def assert_consistent(run: Path) -> None:
    """best.* hold the epoch of last.pt's best_miou, metrics.jsonl one line per finished
    epoch, and no temporary file is left."""
    last = torch.load(run / "last.pt", weights_only=True)
    best_epoch = next(r["epoch"] for r in last["history"] if r["val_mIoU"] == last["best_miou"])
    best = torch.load(run / "best.pt", weights_only=True)
    assert (best["epoch"], best["best_miou"]) == (best_epoch, last["best_miou"])
    model = ddrnet.create_model(checkpoint=run / "best.safetensors")
    assert model.metadata.training["epoch"] == best_epoch
    assert model.metadata.metrics["val_mIoU"] == last["best_miou"]
    for key, value in model.state_dict().items():
        assert torch.equal(value, best["model"][key]), key
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == list(range(1, last["epoch"] + 1))
    assert [json.loads(line) for line in lines] == last["history"]
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("writes_done", [1, 2, 3])
def test_resume_repairs_an_epoch_whose_writes_a_kill_cut_short(
    camvid_root, tmp_path, monkeypatch, writes_done
) -> None:
    # The first epoch always improves on "no best yet": it writes last.pt, best.pt,
    # best.safetensors and metrics.jsonl. A kill after `writes_done` of them, mid-way into the
    # next, leaves that one's temporary file behind, as SIGKILL would.
    run = tmp_path / "run"
    written = []
    real_write = atomic.atomic_write

    def write_then_die(path: Path, write) -> None:
        if path.name == "config.yaml":  # written before the epochs
            return real_write(path, write)
        if len(written) == writes_done:
            (path.parent / f".{path.name}.k1ll3d.tmp").write_bytes(b"partial")
            raise Killed
        real_write(path, write)
        written.append(path.name)

    monkeypatch.setattr(atomic, "atomic_write", write_then_die)
    with pytest.raises(Killed):
        train(tiny_config(camvid_root, run, epochs=1))
    monkeypatch.undo()
    assert written == ["last.pt", "best.pt", "best.safetensors"][:writes_done]
    assert (run / "config.yaml").exists()
    (run / ".config.yaml.k1ll3d.tmp").write_text("partial")  # a resume killed as it began
    # Epoch 1 is committed in last.pt: resuming with nothing left to train only repairs.
    train(tiny_config(camvid_root, run, epochs=1), resume=True)
    assert_consistent(run)
    train(tiny_config(camvid_root, run, epochs=2), resume=True)
    assert_consistent(run)


def test_resume_drops_metrics_lines_of_epochs_that_last_pt_does_not_hold(
    camvid_root, tmp_path
) -> None:
    run = tmp_path / "run"
    train(tiny_config(camvid_root, run, epochs=1))
    with open(run / "metrics.jsonl", "a") as stream:  # as an older version could leave it
        stream.write(json.dumps({"epoch": 2, "iteration": 4}) + "\n")
    train(tiny_config(camvid_root, run, epochs=1), resume=True)
    assert_consistent(run)


def test_a_full_disk_while_checkpointing_keeps_the_previous_epoch(
    camvid_root, tmp_path, monkeypatch
) -> None:
    run = tmp_path / "run"
    train(tiny_config(camvid_root, run, epochs=1))
    checkpoints = ("last.pt", "best.pt", "best.safetensors", "metrics.jsonl")
    before = {name: (run / name).read_bytes() for name in checkpoints}

    def disk_full(payload, stream) -> None:
        stream.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", disk_full)
    message = rf"cannot write {run / 'last.pt'}: No space left on device; {run / 'last.pt'} "
    with pytest.raises(TrainingError, match=re.escape(message) + "holds epoch 1 intact"):
        train(tiny_config(camvid_root, run, epochs=2), resume=True)
    monkeypatch.undo()
    assert {name: (run / name).read_bytes() for name in checkpoints} == before
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]


def test_a_refused_run_or_resume_changes_nothing_of_the_old_run(camvid_root, tmp_path) -> None:
    run = tmp_path / "run"
    train(tiny_config(camvid_root, run, epochs=1))
    files = lambda: {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}  # noqa: E731
    before = files()
    other_model = tiny_config(camvid_root, run, epochs=2, extra=["model.name=ddrnet_23"])
    with pytest.raises(
        TrainingError,
        match=r"last.pt: it was written with model.name=ddrnet_23_slim \(this run: ddrnet_23\)",
    ):
        train(other_model, resume=True)
    assert files() == before  # config.yaml included
    # A checkpoint that does not say how it was made: load_state_dict's verdict, in one line.
    state = torch.load(run / "last.pt", weights_only=True)
    del state["config"]
    atomic_save(state, tmp_path / "anonymous.pt")
    fresh = tiny_config(camvid_root, tmp_path / "fresh", epochs=2, extra=["model.name=ddrnet_23"])
    with pytest.raises(TrainingError, match=r"its model does not fit this run's \(\d+ problems, "):
        train(fresh, resume=str(tmp_path / "anonymous.pt"))
    assert files() == before
    # Without last.pt, the folder still holds a run: a new one must not overwrite or append.
    (run / "last.pt").unlink()
    del before["last.pt"]
    with pytest.raises(
        TrainingError,
        match=r"already holds a run \(best.pt, best.safetensors, metrics.jsonl\); continue from",
    ):
        train(tiny_config(camvid_root, run, epochs=1))
    assert files() == before
    refused = tmp_path / "refused"
    with pytest.raises(ValueError):
        train(tiny_config(camvid_root, refused, extra=["data.val_split=tset"]))
    assert not refused.exists()


def test_a_failed_resume_is_one_line_from_the_cli(camvid_root, tmp_path) -> None:
    run = tmp_path / "run"
    train(tiny_config(camvid_root, run, epochs=1))
    config_before = (run / "config.yaml").read_text()
    command = [sys.executable, "-m", "ddrnet.cli", "train", "camvid_ddrnet23_slim"]
    overrides = tiny_overrides(camvid_root, run, epochs=2) + ["model.name=ddrnet_23"]
    result = subprocess.run(command + overrides + ["--resume"], capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith(
        f"ddrnet train: error: cannot resume from {run / 'last.pt'}: it was written with "
        "model.name=ddrnet_23_slim (this run: ddrnet_23)"
    )
    assert (run / "config.yaml").read_text() == config_before


def test_a_crop_too_large_for_memory_is_refused_in_one_line(
    camvid_root, tmp_path, monkeypatch
) -> None:
    monkeypatch.setattr(limits, "device_memory", lambda device: 64 * 2**30)
    fresh = tmp_path / "fresh"
    # 550 bytes per pixel (DDRNet-23-slim, float32) x 16 x 20000 x 20000 = 3.52e12 bytes.
    big = ["data.crop_size=[20000, 20000]", "data.batch_size=16"]
    with pytest.raises(
        InputTooLargeError,
        match=re.escape(
            "data.crop_size=[20000, 20000] with data.batch_size=16: a training step needs about "
            "3,278 GiB (550 bytes per pixel for this model), more than the 64 GiB of memory of "
            "cpu; use a smaller crop or batch"
        ),
    ):
        train(tiny_config(camvid_root, fresh, extra=big + ["train.device=cpu"]))
    assert not fresh.exists()
    # In bf16 half of it; the recipe's crop and batch fit easily.
    with pytest.raises(InputTooLargeError, match="1,639 GiB \\(275 bytes per pixel"):
        limits.check_training_crop((20000, 20000), 16, 32, torch.device("cpu"), True)
    limits.check_training_crop((352, 480), 8, 32, torch.device("cpu"))


def test_train_help_shows_how_to_make_a_short_run(capsys) -> None:
    from ddrnet.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "train.max_iterations_per_epoch=20 (optimiser steps per epoch)" in text
    assert "eval.max_images=20 (validation images)" in text and "train.output_dir=" in text


def test_fine_tuning_a_pruned_file_keeps_its_widths(camvid_root, tmp_path) -> None:
    """model.pretrained = a `ddrnet prune` file: the run trains the narrower network (it
    starts from the file's weights) and its model files rebuild it without a name."""
    pytest.importorskip("torch_pruning")
    from ddrnet.models.prune import prune_channels

    from helpers import camvid_model

    pruned = prune_channels(camvid_model(), {"backbone.layer1.0.conv1": [1, 4, 7]})
    start = ddrnet.save_model(pruned, tmp_path / "pruned.safetensors", pruned.metadata)
    extra = [f"model.pretrained={start}"]
    output = train(tiny_config(camvid_root, tmp_path / "run", epochs=1, extra=extra))
    tuned = ddrnet.create_model(checkpoint=output / "best.safetensors")
    assert tuned.metadata.channel_widths == pruned.metadata.channel_widths
    assert tuned.backbone.layer1[0].conv1.weight.shape[0] == 29
    before = pruned.state_dict()["backbone.layer1.0.conv1.weight"]
    after = tuned.state_dict()["backbone.layer1.0.conv1.weight"]
    assert before.shape == after.shape and not torch.equal(before, after)  # trained from it
    # The resume takes the widths from its checkpoint: the start file may have moved.
    start.rename(tmp_path / "moved.safetensors")
    train(tiny_config(camvid_root, output, epochs=2, extra=extra), resume=True)
    resumed = ddrnet.create_model(checkpoint=output / "last.pt")
    assert resumed.metadata.channel_widths == pruned.metadata.channel_widths


def test_a_group_norm_run_trains_on_single_images_and_its_files_record_it(
    camvid_root, tmp_path
) -> None:
    """model.norm=group: batches of one image train (BatchNorm refuses them) and the model
    files rebuild GroupNorm; a pretrained file of the other norm is refused in one line."""
    extra = ["model.norm=group", "model.norm_groups=16", "data.batch_size=1"]
    output = train(tiny_config(camvid_root, tmp_path / "run", epochs=1, extra=extra))
    model = ddrnet.create_model(checkpoint=output / "best.safetensors")
    assert model.metadata.spec["norm"] == "group" and model.metadata.spec["norm_groups"] == 16
    assert model.backbone.stem[1].num_groups == 16
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    with pytest.raises(TrainingError, match=r"model\.norm=group \(this run: batch\)"):
        train(tiny_config(camvid_root, output, epochs=2), resume=True)
    start = output / "best.safetensors"
    # An official file (no metadata) has BatchNorm.
    official = tmp_path / "official.pth"
    torch.save(ddrnet.create_model("ddrnet_23_slim", num_classes=11).state_dict(), official)
    fresh = tmp_path / "fresh"
    for pretrained, norm, trained, asked in (
        (start, [], "group (norm_groups=16)", "batch"),
        (start, ["model.norm=group"], "group (norm_groups=16)", "group (norm_groups=32)"),
        (official, ["model.norm=group"], "batch", "group (norm_groups=32)"),
    ):
        expected = (
            f"model.pretrained {pretrained} was trained with model.norm={trained}; "
            f"the recipe asks for model.norm={asked}"
        )
        with pytest.raises(ConfigError, match=re.escape(expected)):
            train(tiny_config(camvid_root, fresh, extra=[*norm, f"model.pretrained={pretrained}"]))
    assert not fresh.exists()


def test_resume_takes_this_runs_optimiser_settings_and_refuses_what_would_mislead(
    camvid_root, tmp_path, caplog
) -> None:
    """The checkpoint brings the optimiser's buffers, this run its settings (they were the
    checkpoint's, while config.yaml said otherwise). Refused, nothing changed: dropping the
    weight average, fewer epochs than trained, and another run's checkpoint into a folder
    that holds a run."""
    run, other = tmp_path / "run", tmp_path / "other"
    ema = ["train.ema_decay=0.99"]
    train(tiny_config(camvid_root, run, epochs=1, extra=ema))
    train(tiny_config(camvid_root, other, epochs=1, extra=ema))
    before = (run / "last.pt").read_bytes()
    for extra, resume, message in [
        (["train.ema_decay=null"], True, "was written with train.ema_decay"),
        (ema, other / "last.pt", "holds another run (last.pt"),
    ]:
        with pytest.raises(TrainingError, match=re.escape(message)):
            train(tiny_config(camvid_root, run, epochs=2, extra=extra), resume=resume)
    assert (run / "last.pt").read_bytes() == before
    changed = [*ema, "optim.momentum=0.5", "optim.weight_decay=0.01", "optim.nesterov=true"]
    changed += ["optim.warmup_epochs=3"]
    with caplog.at_level("INFO", logger="ddrnet.engine"):
        train(
            tiny_config(camvid_root, run, epochs=2, extra=changed),
            resume=True,
        )
    said = "settings changed on resume: optim.momentum: 0.9 -> 0.5"
    assert said in caplog.text
    assert "optim.warmup_epochs=3 covers all 2 epochs: the learning rate never" in caplog.text
    (group,) = torch.load(run / "last.pt", weights_only=True)["optimizer"]["param_groups"]
    assert (group["momentum"], group["weight_decay"], group["nesterov"]) == (0.5, 0.01, True)
    with pytest.raises(TrainingError, match="has trained 2 epochs already, more than train"):
        train(tiny_config(camvid_root, run, epochs=1, extra=ema), resume=True)
