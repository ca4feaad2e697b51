"""Plain functions shared by the test modules (the fixtures are in ``conftest.py``): the command
line in a subprocess or in this process, untrained models that carry a data set's metadata,
training runs that take seconds, a server on a free loopback port, and a fake camera.

Import them by name (``from helpers import run_ddrnet``): pytest puts ``tests/`` on
``sys.path``, as it does for ``official_reference``.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import ddrnet
from ddrnet.config import load_config
from ddrnet.data.datasets import DatasetError
from ddrnet.data.labels import CAMVID, LabelSet
from ddrnet.engine.config import Config
from ddrnet.engine.inference import normalize
from ddrnet.models import ModelMetadata

from official_reference import randomize_batchnorm

REPO_ROOT = Path(__file__).resolve().parents[1]


def run_ddrnet(*arguments: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m ddrnet.cli ARGUMENTS``, as a user would run it; stdout and stderr captured
    as text, ``timeout`` in seconds."""
    return subprocess.run(
        [sys.executable, "-m", "ddrnet.cli", *arguments],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_line_cli_error(capsys: Any, argv: list[str]) -> str:
    """Run ``ddrnet ARGV`` in this process (``ddrnet.cli.main``) and check that it refuses
    with exit status 2 and a one-line message on stderr, which is returned, stripped.
    ``capsys`` is pytest's fixture."""
    from ddrnet.cli import main

    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1, error
    return error


def labelled_model(
    labels: LabelSet = CAMVID, seed: int = 1, width_multiplier: float = 1.0
) -> nn.Module:
    """An untrained DDRNet-23-slim in eval mode with a data set's metadata (class names,
    palette, normalisation), for the tests that need a model but no trained one;
    ``width_multiplier`` < 1 makes it narrower (faster to export).

    Weights drawn from ``seed``, so every run tests the same model; random BatchNorm
    statistics make its feature maps and predictions vary over the image. Logits
    ``(N, labels.num_classes, ceil(H/8), ceil(W/8))`` for ``(N, 3, H, W)`` inputs.
    """
    with torch.random.fork_rng():  # the same weights in every run, global RNG untouched
        torch.manual_seed(seed)
        model = ddrnet.create_model(
            "ddrnet_23_slim", num_classes=labels.num_classes, width_multiplier=width_multiplier
        )
    randomize_batchnorm(model, seed=seed)
    model.metadata = ModelMetadata(
        architecture="ddrnet_23_slim",
        num_classes=labels.num_classes,
        spec=model.spec.to_dict(),
        class_names=list(labels.class_names),
        palette=[list(c) for c in labels.palette],
        mean=list(labels.mean),
        std=list(labels.std),
        dataset=labels.name,
    )
    return model.eval()


def exported_through_cli(
    model: nn.Module, folder: Path, export_format: str, output_name: str, size: str
) -> Path:
    """``model`` saved in ``folder`` and exported by ``ddrnet export --format export_format
    --size size -o folder/output_name``; the output's path."""
    from ddrnet.cli import main
    from ddrnet.models import save_model

    save_model(model, folder / "model.safetensors", model.metadata)
    output = folder / output_name
    argv = ["export", "--checkpoint", str(folder / "model.safetensors"), "--format"]
    assert main([*argv, export_format, "--size", size, "-o", str(output)]) == 0
    return output


def check_cli_runs_file(deployed: nn.Module, path: Path, camvid_root: Path, output: Path) -> None:
    """``ddrnet eval`` of the exported file ``path`` scores 2 CamVid val frames as the
    evaluation loop scores ``deployed`` (the file loaded here), and ``ddrnet predict`` writes
    the labels ``Predictor(deployed)`` gives (into ``output``)."""
    from ddrnet.data.camvid import camvid
    from ddrnet.data.io import demo_frames
    from ddrnet.engine.evaluate import evaluate
    from ddrnet.engine.predictor import Predictor

    argv = ["eval", str(path), "--dataset", "camvid", "--root", str(camvid_root)]
    result = run_ddrnet(*argv, "--max-images", "2")
    assert result.returncode == 0, result.stderr
    line = next(row for row in result.stdout.splitlines() if row.startswith("mIoU"))
    dataset = torch.utils.data.Subset(camvid(str(camvid_root), "val"), range(2))
    mean, std = deployed.metadata.mean, deployed.metadata.std
    reference = evaluate(deployed, dataset, 11, mean, std, progress=False)
    assert float(line.split()[-1]) == pytest.approx(reference.miou, abs=0.01)

    frame = str(demo_frames()[0])
    argv = ["predict", frame, "--checkpoint", str(path), "-o", str(output), "--save", "labels"]
    result = run_ddrnet(*argv)
    assert result.returncode == 0, result.stderr
    (labels,) = output.rglob("*.png")
    assert np.array_equal(np.asarray(Image.open(labels)), Predictor(deployed).predict(frame))


def camvid_model(seed: int = 1) -> nn.Module:
    """An untrained 11-class CamVid model (see ``labelled_model``); the ``camvid_model_file``
    fixture is this model (seed 1) saved as safetensors."""
    return labelled_model(CAMVID, seed)


def tiny_overrides(camvid_root: Path, output: Path, epochs: int = 2) -> list[str]:
    """Config overrides for a CamVid training run of seconds into ``output``: 64x96 crops,
    batches of two, two iterations an epoch, two validation images."""
    return [
        f"data.root={camvid_root}",
        "data.crop_size=[64, 96]",
        "data.batch_size=2",
        "data.num_workers=0",
        "data.cache_images=false",
        "data.check=false",
        "loss.ohem_min_kept=1000",
        "eval.max_images=2",
        "eval.every_epochs=1",
        f"train.epochs={epochs}",
        "train.max_iterations_per_epoch=2",
        "train.amp=none",
        f"train.output_dir={output}",
    ]


def tiny_config(camvid_root: Path, output: Path, epochs: int = 2, extra=()) -> Config:
    """``tiny_overrides`` followed by the ``extra`` overrides, as a loaded ``Config``."""
    return load_config(Config, None, tiny_overrides(camvid_root, output, epochs) + list(extra))


def straight_and_resumed(
    camvid_root: Path, folder: Path, epochs: int, extra=()
) -> tuple[Path, Path]:
    """Two tiny runs of ``epochs`` epochs with the ``extra`` overrides: ``folder/straight``
    trained in one go, and ``folder/split`` stopped after its first epoch
    (``train.max_minutes=0``), then resumed; returns both run folders."""
    from ddrnet.engine.train import train

    straight, split = folder / "straight", folder / "split"
    train(tiny_config(camvid_root, straight, epochs, extra))
    train(tiny_config(camvid_root, split, epochs, [*extra, "train.max_minutes=0"]))
    assert torch.load(split / "last.pt", weights_only=True)["epoch"] == 1
    train(tiny_config(camvid_root, split, epochs, extra), resume=True)
    return straight, split


@contextmanager
def serving(app: Any, **options: Any) -> Iterator[Any]:
    """``ddrnet.serve.make_server(app, "127.0.0.1", 0, **options)`` answering in a daemon
    thread; yields the server (its port: ``server.server_port``) and stops it afterwards."""
    from ddrnet.serve import make_server

    server = make_server(app, "127.0.0.1", 0, **options)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def save_image(path: Path, array: np.ndarray) -> Path:
    """Write ``array`` (``(H, W)`` or ``(H, W, 3)`` uint8) as an image, making its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def check_problems(dataset: Any) -> str:
    """The report of a data set's ``check()``, which must fail."""
    with pytest.raises(DatasetError) as error:
        dataset.check()
    return str(error.value)


# A folder data set of three classes (the user's own data), as a classes file and colours.
CLASSES_YAML = """
classes:
  - {name: road, color: [128, 64, 128]}
  - {name: car, color: [0, 0, 142]}
  - {name: person, color: [220, 20, 60]}
ignore_index: 200
ignore_colors: [[0, 0, 0]]
mean: [0.5, 0.4, 0.3]
std: [0.2, 0.25, 0.3]
"""
ROAD, CAR, PERSON = (128, 64, 128), (0, 0, 142), (220, 20, 60)


def folder_tree(tmp_path: Path) -> Path:
    """Two frames: ``a.png`` with an index mask, ``b.jpg`` with a colour mask."""
    root = tmp_path / "mine"
    (root / "classes.yaml").parent.mkdir(parents=True)
    (root / "classes.yaml").write_text(CLASSES_YAML)
    save_image(root / "images/train/a.png", np.full((2, 3, 3), 50, np.uint8))
    save_image(root / "masks/train/a.png", np.array([[0, 1, 2], [200, 1, 0]], np.uint8))
    save_image(root / "images/train/b.jpg", np.full((2, 3, 3), 90, np.uint8))
    colour = np.array([[ROAD, CAR, (0, 0, 0)], [PERSON, PERSON, ROAD]], np.uint8)
    save_image(root / "masks/train/b.png", colour)
    return root


def coco_stuff_tree(tmp_path: Path, maps: dict[str, np.ndarray], suffix: str = ".png") -> Path:
    """A COCO-Stuff layout under ``tmp_path/coco``: flat grey val2017 images and the given
    ``(H, W)`` maps (raw ids or train ids by ``suffix``), one per stem."""
    root = tmp_path / "coco"
    for stem, values in maps.items():
        image = np.full(values.shape + (3,), 100, dtype=np.uint8)
        save_image(root / "images" / "val2017" / f"{stem}.jpg", image)
        save_image(root / "annotations" / "val2017" / f"{stem}{suffix}", values.astype(np.uint8))
    return root


# Input sizes that are not multiples of the network's stride 64.
ODD_SIZES = ((360, 480), (361, 479), (64, 64))


def real_inputs(dataset: Any, sizes=ODD_SIZES, index: int = 3) -> list[torch.Tensor]:
    """One real frame, normalised and resized to each ``(H, W)``: ``(1, 3, H, W)`` float32."""
    image = normalize(dataset[index][0][None], CAMVID.mean, CAMVID.std)
    return [F.interpolate(image, size=s, mode="bilinear", align_corners=False) for s in sizes]


class FakeCamera:
    """A ``cv2.VideoCapture`` stand-in: ``count`` frames of 48x64, frame i filled with i
    modulo 256 (BGR), then the end. ``period`` seconds between frames, as a camera paces them; with
    ``gate`` (a semaphore), each read first waits for a permit instead."""

    def __init__(self, count: int, period: float = 0.0, gate: threading.Semaphore | None = None):
        self.count, self.period, self.gate = count, period, gate
        self.reads = 0
        self.released = False

    def isOpened(self) -> bool:  # noqa: N802 (OpenCV's name)
        return True

    def get(self, prop: int) -> float:
        sizes = {cv2.CAP_PROP_FRAME_WIDTH: 64, cv2.CAP_PROP_FRAME_HEIGHT: 48}
        return {**sizes, cv2.CAP_PROP_FPS: 30.0, cv2.CAP_PROP_FRAME_COUNT: -1}.get(prop, 0.0)

    def read(self) -> tuple[bool, np.ndarray | None]:
        if self.gate is not None:
            self.gate.acquire()
        time.sleep(self.period)
        if self.reads == self.count:
            return False, None
        self.reads += 1
        # Modulo: a slow machine lets a paced camera run past 256 frames before a test stops it.
        return True, np.full((48, 64, 3), (self.reads - 1) % 256, np.uint8)

    def release(self) -> None:
        self.released = True


CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
needs_chromium = pytest.mark.skipif(
    not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()),
    reason="needs Debian's chromium and chromium-driver in /usr/bin (scripts/test.sh "
    "installs them on CI)",
)


@contextmanager
def headless_chromium(profile: Path, *flags: str) -> Iterator[Any]:
    """A Selenium driver of a headless Chromium with its profile in ``profile`` and the
    command-line ``flags`` added, quit after (mark the test ``@needs_chromium``)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",  # /dev/shm is small in containers
        f"--user-data-dir={profile}",
        "--window-size=1280,1000",
        *flags,
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


def sharded_counts(predictor, images, num_classes: int, make, option: str) -> list[torch.Tensor]:
    """The ``counts`` of the accumulators (``make()``, passed to ``evaluate_predictor`` as
    ``option``, in a list for ``frame_accumulators``) of the two processes of a distributed
    evaluation, each taking every second image: run here as ranks 0 and 1 of two
    (world_size 2 turns the collectives on) in a one-process gloo group."""
    import torch.distributed as dist

    from ddrnet.engine.distributed import DistributedContext
    from ddrnet.engine.evaluate import evaluate_predictor

    store = dist.HashStore()
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        shards = []
        for rank in (0, 1):
            accumulator = make()
            context = DistributedContext(rank=rank, world_size=2)
            evaluate_predictor(
                predictor, images, num_classes, context=context, progress=False,
                **{option: [accumulator] if option == "frame_accumulators" else accumulator},
            )  # fmt: skip
            shards.append(accumulator.counts)
    finally:
        dist.destroy_process_group()
    return shards
