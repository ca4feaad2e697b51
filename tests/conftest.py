"""Shared fixtures: the real data beside the checkout, a saved CamVid test model, a
DDRNet-23-slim with BatchNorm statistics of real frames and its ONNX file (the deployment
tests'), one thread and a fixed seed for torch.

Real data: CamVid and the one-frame Cityscapes sample are read from ``../shared/data``, or
from ``$DDRNET_DATA``. Where a data set is missing, the tests that need it skip and say which
folder they looked in; on CI (``CI=true``, which CI sets) they fail instead, so that a CI run
never passes by skipping the real-data tests.

Markers (registered in pyproject.toml): ``slow`` for tests that take more than ~10 s on a
2-core CPU (``bash scripts/test.sh -m "not slow"`` runs the rest; CI runs everything), and
``cuda`` for those that need a CUDA GPU (they skip without one).

Plain functions shared by the tests (the command line in a subprocess, untrained labelled
models, training runs of seconds, a server on a free port) are in ``helpers.py``; the
independent re-implementation of the official networks in ``official_reference.py``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import ddrnet
from ddrnet.data.camvid import camvid
from ddrnet.data.labels import CAMVID
from ddrnet.deploy import export_onnx
from ddrnet.engine.inference import normalize

from helpers import REPO_ROOT, camvid_model
from official_reference import randomize_batchnorm

SHARED_DATA = Path(os.environ.get("DDRNET_DATA", REPO_ROOT.parent / "shared" / "data"))


def pytest_configure(config: pytest.Config) -> None:
    # One thread per test process: under pytest-xdist two workers share two cores, and OpenMP
    # threads that outnumber the cores spin against each other and slow everything down.
    torch.set_num_threads(1)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: object, error: object | None) -> None:
    """A pytest-xdist worker that went down: how its process ended (a signal, or the status
    it exited with), which xdist's "node down: Not properly terminated" leaves out."""
    popen = getattr(getattr(getattr(node, "gateway", None), "_io", None), "popen", None)
    if error is None or popen is None:
        return
    try:
        status = popen.wait(timeout=30)
    except subprocess.TimeoutExpired:
        status = None
    if status is not None and status < 0:
        ended = f"killed by {signal.Signals(-status).name}"
    else:
        ended = "still running" if status is None else f"exited with status {status}"
    print(f"\n[{node.gateway.id}] worker process {popen.pid}: {ended}", file=sys.stderr)


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)


def _data_folder(name: str, marker: str, what: str) -> Path:
    """``SHARED_DATA / name`` if ``marker`` exists in it; otherwise skip the test, or fail it
    on CI (see the module docstring)."""
    root = SHARED_DATA / name
    if not (root / marker).exists():
        message = f"{what} is expected at {root} (set DDRNET_DATA to the shared data folder)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return root


@pytest.fixture(scope="session")
def camvid_root() -> Path:
    """The CamVid folder (SegNet layout: ``train``, ``trainannot``, ``val``, ... and the
    ``*.txt`` lists; 480x360 frames)."""
    return _data_folder("camvid", "train.txt", "CamVid")


@pytest.fixture(scope="session")
def cityscapes_root() -> Path:
    """The Cityscapes sample: one val frame, frankfurt_000000_000294, at 256x128."""
    return _data_folder("cityscapes_sample", "gtFine", "the Cityscapes sample")


@pytest.fixture(scope="session")
def camvid_frames(camvid_root: Path) -> list[Path]:
    """The first three CamVid val frames in name order (480x360 RGB PNGs)."""
    return sorted((camvid_root / "val").glob("*.png"))[:3]


@pytest.fixture(scope="session")
def camvid_frame(camvid_frames: list[Path]) -> Path:
    """The first CamVid val frame (480x360 RGB PNG)."""
    return camvid_frames[0]


@pytest.fixture(scope="session")
def camvid_sample(camvid_root: Path) -> tuple[np.ndarray, np.ndarray]:
    """CamVid val frame 5 decoded: image ``(360, 480, 3)`` uint8 RGB, label ``(360, 480)``
    uint8 class ids (255: void). Read-only: the modules that share it cannot alter it."""
    arrays = camvid(camvid_root, "val").load(5)
    for array in arrays:
        array.setflags(write=False)
    return arrays


@pytest.fixture(scope="session")
def camvid_model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``helpers.camvid_model()`` (untrained, seed 1, CamVid metadata) saved as safetensors.
    Shared: tests must not write into its folder."""
    model = camvid_model()
    path = tmp_path_factory.mktemp("camvid_model") / "camvid.safetensors"
    return ddrnet.save_model(model, path, model.metadata)


@pytest.fixture(scope="session")
def camvid_val(camvid_root: Path):
    """The CamVid val split as a data set (101 frames of 0016E5)."""
    return camvid(camvid_root, "val")


@pytest.fixture(scope="session")
def calibrated_slim(camvid_root: Path) -> nn.Module:
    """DDRNet-23-slim (11 classes) with random BatchNorm affine parameters and running
    statistics re-estimated on real CamVid frames, in eval mode. Fresh BNs are identities
    (which would make folding and quantisation trivially exact), and random statistics
    leave activations far from anything real (logits in the thousands, which hides float32
    errors in the tolerance); re-estimated ones give logits of order 10-50, like a trained
    model's. Shared: tests must not change it."""
    torch.manual_seed(0)
    net = ddrnet.create_model("ddrnet_23_slim", num_classes=11)
    randomize_batchnorm(net, seed=1)
    train = camvid(camvid_root, "train")
    images = torch.stack([train[index][0] for index in range(0, len(train), 92)])
    for layer in net.modules():
        if isinstance(layer, nn.BatchNorm2d):
            layer.reset_running_stats()
            layer.momentum = None  # cumulative average: the statistics of exactly this batch
    net.train()
    with torch.no_grad():
        net(normalize(images, CAMVID.mean, CAMVID.std))
    net.eval()
    net.metadata.mean, net.metadata.std = list(CAMVID.mean), list(CAMVID.std)
    return net


@pytest.fixture(scope="session")
def calibrated_slim_onnx(calibrated_slim: nn.Module, tmp_path_factory) -> Path:
    """``calibrated_slim`` exported to ONNX (dynamic sizes, traced at 360x480)."""
    return export_onnx(calibrated_slim, tmp_path_factory.mktemp("onnx") / "slim.onnx", (360, 480))
