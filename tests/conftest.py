"""Shared fixtures: paths to the real data beside the checkout, deterministic torch."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DDRNET_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def camvid_root() -> Path:
    root = SHARED_DATA / "camvid"
    if not (root / "train.txt").is_file():
        pytest.fail(f"CamVid is expected at {root} (set DDRNET_DATA to the shared data folder)")
    return root


@pytest.fixture(scope="session")
def cityscapes_root() -> Path:
    root = SHARED_DATA / "cityscapes_sample"
    if not (root / "gtFine").is_dir():
        pytest.fail(f"the Cityscapes sample is expected at {root}")
    return root


def pytest_configure(config: pytest.Config) -> None:
    # One thread per test process: under pytest-xdist two workers share two cores, and OpenMP
    # threads that outnumber the cores spin against each other and slow everything down.
    torch.set_num_threads(1)
