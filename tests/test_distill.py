"""Knowledge distillation (issue 21, item 2): the losses against hand-computed values, the
teacher's checks, and a short distilled run that logs its terms and resumes."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from ddrnet.config import ConfigError, load_config
from ddrnet.data.labels import CAMVID, CITYSCAPES
from ddrnet.engine.config import Config, DistillConfig
from ddrnet.engine.distill import (
    Distiller,
    cwd_loss,
    kd_loss,
    labels_on_grid,
    load_teacher,
)
from ddrnet.engine.train import TrainingError, train
from ddrnet.models import save_model

from helpers import labelled_model, run_ddrnet, tiny_overrides

LN3 = math.log(3.0)


def test_kd_loss_equals_the_hand_computed_value_and_skips_ignored_pixels() -> None:
    # One image, 2 classes, 1 x 3 pixels. Pixel 0: teacher softmax [0.75, 0.25], student
    # [0.5, 0.5]; pixel 1: void (label 255), teacher and student far apart; pixel 2: equal.
    teacher = torch.tensor([[[[LN3, 0.0, 0.0]], [[0.0, 5.0, 1.0]]]])
    student = torch.tensor([[[[0.0, 5.0, 0.0]], [[0.0, 0.0, 1.0]]]])
    labels = torch.tensor([[[0, 255, 1]]])
    pixel0 = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)  # 0.130812 nats
    assert pixel0 == pytest.approx(0.130812, abs=1e-6)
    loss = kd_loss(student, teacher, 1.0, labels != 255)
    assert float(loss) == pytest.approx(pixel0 / 2, abs=1e-6)  # mean over the 2 valid pixels
    # T = 2: teacher softmax [sqrt(3), 1] / (sqrt(3) + 1) at pixel 0, student uniform; x T^2.
    p = math.sqrt(3) / (math.sqrt(3) + 1)
    at_t2 = 4 * (p * math.log(p / 0.5) + (1 - p) * math.log((1 - p) / 0.5))
    assert at_t2 == pytest.approx(0.145363, abs=1e-6)
    assert float(kd_loss(student, teacher, 2.0, labels != 255)) == pytest.approx(at_t2 / 2, 1e-5)
    # Without a mask every pixel counts, the void one included.
    assert float(kd_loss(student, teacher, 1.0)) > float(loss) * 3


def test_cwd_loss_equals_the_hand_computed_value() -> None:
    # 2 channels over 1 x 2 positions. Channel 0: teacher [0.75, 0.25] over the positions,
    # student uniform; channel 1: teacher uniform, student [0.25, 0.75].
    teacher = torch.tensor([[[[LN3, 0.0]], [[0.0, 0.0]]]])
    student = torch.tensor([[[[0.0, 0.0]], [[0.0, LN3]]]])
    channel0 = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)  # 0.130812
    channel1 = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)  # 0.143841
    expected = (channel0 + channel1) / 2  # / (N * C), tau^2 = 1
    assert expected == pytest.approx(0.137327, abs=1e-6)
    assert float(cwd_loss(student, teacher, 1.0)) == pytest.approx(expected, abs=1e-6)


def test_cwd_loss_matches_a_numpy_reference_on_random_logits() -> None:
    rng = np.random.default_rng(0)
    student, teacher = rng.normal(size=(2, 3, 4, 5)), rng.normal(size=(2, 3, 4, 5)) * 2
    tau = 4.0
    total = 0.0
    for n in range(2):
        for c in range(3):
            s, t = student[n, c].ravel() / tau, teacher[n, c].ravel() / tau
            p_t = np.exp(t - t.max()) / np.exp(t - t.max()).sum()
            p_s = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
            total += (p_t * np.log(p_t / p_s)).sum()
    expected = total * tau**2 / (2 * 3)
    got = cwd_loss(torch.from_numpy(student), torch.from_numpy(teacher), tau)
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_identical_logits_give_zero_loss() -> None:
    logits = torch.randn(2, 11, 5, 6) * 3
    labels = torch.randint(0, 11, (2, 5, 6))
    assert float(kd_loss(logits, logits.clone(), 2.0, labels != 255)) == pytest.approx(0, abs=1e-6)
    assert float(cwd_loss(logits, logits.clone(), 4.0)) == pytest.approx(0, abs=1e-6)


def test_labels_on_grid_reads_cell_centres() -> None:
    labels = torch.arange(16 * 16).view(1, 16, 16)
    assert labels_on_grid(labels, (2, 2)).tolist() == [
        [[4 * 16 + 4, 4 * 16 + 12], [12 * 16 + 4, 12 * 16 + 12]]
    ]
    assert labels_on_grid(labels, (16, 16)) is labels


def test_a_student_equal_to_its_teacher_has_zero_loss_and_renormalised_inputs(tmp_path) -> None:
    teacher = labelled_model(CAMVID, seed=3)
    path = save_model(teacher, tmp_path / "teacher.safetensors", teacher.metadata)
    loaded = load_teacher(str(path), CAMVID)
    assert not any(p.requires_grad for p in loaded.parameters()) and not loaded.training
    images = torch.rand(2, 3, 64, 96)
    mean, std = CAMVID.mean, CAMVID.std
    own = (images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        student = teacher(own)
    distiller = Distiller(loaded, DistillConfig(str(path), 1.0, 2.0, 3.0, 4.0), mean, std)
    labels = torch.randint(0, 11, (2, 64, 96))
    loss, parts = distiller(own, student, labels)
    assert float(loss) == pytest.approx(0, abs=1e-5) and set(parts) == {"loss_kd", "loss_cwd"}
    assert set(distiller.epoch_means()) == {"train_kd_loss", "train_cwd_loss"}
    # A run normalising with other statistics: the teacher still sees its own normalisation.
    other_mean, other_std = (0.5, 0.5, 0.5), (0.25, 0.2, 0.3)
    run = (images - torch.tensor(other_mean).view(1, 3, 1, 1)) / torch.tensor(other_std).view(
        1, 3, 1, 1
    )
    distiller = Distiller(loaded, DistillConfig(str(path)), other_mean, other_std)
    grid = tuple(student.shape[-2:])
    torch.testing.assert_close(distiller.teacher_logits(run, grid), student, atol=1e-4, rtol=1e-4)


def test_an_ensemble_teacher_gives_the_log_of_its_averaged_softmax(tmp_path) -> None:
    teacher = labelled_model(CAMVID, seed=4)
    path = save_model(teacher, tmp_path / "teacher.safetensors", teacher.metadata)
    loaded = load_teacher(str(path), CAMVID)
    images = torch.randn(2, 3, 64, 96)
    grid = (8, 12)
    with torch.no_grad():
        plain = teacher(images)

    def distiller(scales, flip):
        config = DistillConfig(str(path), teacher_scales=scales, teacher_flip=flip)
        return Distiller(loaded, config, CAMVID.mean, CAMVID.std)

    # Two identical passes average to one softmax: the logits up to a constant per pixel,
    # floored where a random network's large logits underflow the softmax.
    floor = torch.finfo(torch.float32).tiny
    twice = distiller([1.0, 1.0], False).teacher_logits(images, grid)
    expected = plain.log_softmax(1).clamp_min(math.log(floor))
    torch.testing.assert_close(twice, expected, atol=1e-4, rtol=1e-5)
    # Half and full scale, each also mirrored: each pass's logits resized to the grid,
    # mirrored back, softmaxed, then averaged.
    expected = torch.zeros_like(plain)
    with torch.no_grad():
        for size in ((32, 48), (64, 96)):
            scaled = torch.nn.functional.interpolate(images, size, mode="bilinear")
            for mirrored in (False, True):
                logits = teacher(scaled.flip(-1) if mirrored else scaled)
                logits = torch.nn.functional.interpolate(logits, grid, mode="bilinear")
                expected += (logits.flip(-1) if mirrored else logits).softmax(1) / 4
    ensemble = distiller([0.5, 1.0], True).teacher_logits(images, grid)
    torch.testing.assert_close(ensemble, expected.clamp_min(floor).log(), atol=1e-4, rtol=1e-5)


def test_a_teacher_of_other_classes_or_no_model_file_is_refused_in_one_line(tmp_path) -> None:
    other = labelled_model(CITYSCAPES)
    path = save_model(other, tmp_path / "cityscapes.safetensors", other.metadata)
    with pytest.raises(TrainingError, match=r"distill.teacher=.*19 classes.*has 11") as info:
        load_teacher(str(path), CAMVID)
    assert "\n" not in str(info.value)
    renamed = dataclasses.replace(CAMVID, class_names=tuple(reversed(CAMVID.class_names)))
    with pytest.raises(TrainingError, match=r"distill.teacher=.*classes differ.*class 0"):
        load_teacher("camvid_ddrnet23_slim", renamed)
    text = tmp_path / "notes.pt"
    text.write_text("not a model\n")
    with pytest.raises(TrainingError, match=r"^distill.teacher=.*notes.pt: not a usable model"):
        load_teacher(str(text), CAMVID)
    with pytest.raises(TrainingError, match=r"distill.teacher=missing.safetensors: "):
        load_teacher("missing.safetensors", CAMVID)


def test_distill_settings_are_checked() -> None:
    assert load_config(Config).distill.teacher is None  # off by default
    config = load_config(Config, None, ["distill.teacher=camvid_ddrnet23_slim"])
    assert config.distill.kd_weight == 1.0 and config.distill.cwd_weight == 0.0
    with pytest.raises(ConfigError, match="distill: temperature must be > 0"):
        load_config(Config, None, ["distill.temperature=0"])
    for scales, problem in (
        ("[1.0, 0]", r"scale 0 is outside \(0, 4\]"),
        ("[9]", r"scale 9 is outside \(0, 4\]"),
        ("[]", "give at least one scale"),
    ):
        override = f"distill.teacher_scales={scales}"
        expected = rf"^override '{re.escape(override)}': distill: teacher_scales: {problem}$"
        with pytest.raises(ConfigError, match=expected):
            load_config(Config, None, [override])
    with pytest.raises(ConfigError, match="kd_weight or cwd_weight must be > 0"):
        load_config(Config, None, ["distill.teacher=x.safetensors", "distill.kd_weight=0"])


def test_a_distilled_run_logs_its_terms_and_resumes(camvid_root, tmp_path) -> None:
    output = tmp_path / "run"
    overrides = tiny_overrides(camvid_root, output, epochs=2) + [
        "distill.teacher=camvid_ddrnet23_slim",
        "distill.temperature=2",
        "distill.cwd_weight=3",
        "train.ema_decay=0.9",
    ]
    train(load_config(Config, None, overrides + ["train.max_minutes=0"]))  # stops after 1
    train(load_config(Config, None, overrides), resume=True)  # the teacher is loaded again
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    for record in records:
        assert record["train_kd_loss"] > 0 and record["train_cwd_loss"] > 0
        assert record["train_loss"] > record["train_kd_loss"]
    assert torch.load(output / "last.pt", weights_only=True)["iteration"] == 4


def test_the_cli_refuses_a_teacher_of_other_classes_in_one_line(camvid_root, tmp_path) -> None:
    other = labelled_model(CITYSCAPES)
    path = save_model(other, tmp_path / "cityscapes.safetensors", other.metadata)
    result = run_ddrnet(
        "train", "camvid_ddrnet23_slim", *tiny_overrides(camvid_root, tmp_path / "run"),
        f"distill.teacher={path}", timeout=300,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if "error" in line]
    assert lines == [lines[0]] and "distill.teacher=" in lines[0] and "19 classes" in lines[0]
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_pruned_teacher_and_pruned_student(tmp_path) -> None:
    """A pruned model file is a teacher like any other (rebuilt from its metadata's widths),
    and a pruned student gets gradients from the distillation loss alone."""
    prune = pytest.importorskip("ddrnet.models.prune")
    pytest.importorskip("torch_pruning")
    result = prune.prune_to_macs(labelled_model(CAMVID), 0.5, input_size=(64, 96), max_trials=3)
    pruned = result.model
    path = save_model(pruned, tmp_path / "pruned.safetensors", pruned.metadata)
    teacher = load_teacher(str(path), CAMVID)
    assert sum(p.numel() for p in teacher.parameters()) == result.params_after
    student = prune.prune_to_macs(labelled_model(CAMVID, seed=2), 0.5, input_size=(64, 96),
                                  max_trials=3).model.train()  # fmt: skip
    distiller = Distiller(teacher, DistillConfig(str(path), 1.0, 2.0, 3.0, 4.0), CAMVID.mean,
                          CAMVID.std)  # fmt: skip
    images = torch.randn(2, 3, 64, 96)
    loss, _ = distiller(images, student(images), torch.randint(0, 11, (2, 64, 96)))
    loss.backward()
    assert float(loss.detach()) > 0
    assert all(p.grad is not None for p in student.head.parameters())


def test_torchrun_processes_each_load_the_teacher(camvid_root, tmp_path) -> None:
    output = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "ddrnet.cli", "train", "camvid_ddrnet23_slim",
        *tiny_overrides(camvid_root, output, epochs=1),
        "loss.class_weights=null", "train.threads=1",
        "distill.teacher=camvid_ddrnet23_slim", "distill.cwd_weight=3",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("distilling from camvid_ddrnet23_slim") == 2  # one per process
    record = json.loads((output / "metrics.jsonl").read_text().splitlines()[0])
    assert record["iteration"] == 2 and record["train_kd_loss"] > 0 < record["train_cwd_loss"]
