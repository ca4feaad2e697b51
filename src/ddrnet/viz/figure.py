"""What every figure of ``ddrnet.viz`` shares: its output check, a pyplot-free matplotlib
figure of an exact pixel size, and writing it (or a plain RGB array) as a PNG; and the
folder check and names of the sets of ranked pictures (``eval --show``, ``data --show``).

matplotlib is imported inside the functions that need it, so importing ``ddrnet.viz`` stays
cheap for commands that draw nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from ddrnet.atomic import atomic_write
from ddrnet.data.io import write_png
from ddrnet.engine.recordings import mixes_with_frames
from ddrnet.errors import UsageError

# Figures are saved without ``bbox_inches="tight"`` so that their pixel size is exactly
# ``figsize * DPI`` and predictable (tests and documentation rely on it).
DPI = 100
# The sets of ranked pictures, by the name ``ddrnet.atomic.staged_files`` lists them under:
# a rerun replaces its own set's files in a folder, and nothing else there.
WORST_FRAMES, LABEL_PICTURES = "worst-frames", "label-pictures"


def ranked_name(rank: int, stem: str) -> str:
    """The file name of a set's picture number ``rank`` (from 1): ``<rank, 3 digits>_<image
    stem>.png``, so that a folder lists them in rank order."""
    return f"{rank:03d}_{stem}.png"


def check_pictures_folder(dataset: Dataset, output: str | Path, option: str = "--show") -> Path:
    """``output`` as a folder for pictures of ``dataset``'s frames (``option`` names it in
    messages): a ``UsageError`` when it is a file, or holds images or labels of ``dataset``
    at any depth, or lies inside a folder of them (pictures there could replace them, and a
    rerun would read them as data, as a data set of recordings in sub-folders does), raised
    before any work."""
    if Path(output).exists() and not Path(output).is_dir():
        raise UsageError(f"{option} {output}: a file, where the pictures' folder is to be")
    if mixes_with_frames(output, dataset):
        raise UsageError(f"{option} {output}: the data set's own folder; choose another")
    return Path(output)


def prepare_output(output: str | Path) -> Path:
    """``output`` as a path to a ``.png`` file whose folder exists; another suffix is a
    ``UsageError`` (raised before any work, so a bad path fails fast)."""
    path = Path(output)
    if path.suffix.lower() != ".png":
        raise UsageError(f"{path}: the output must be a .png file")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def new_figure(size: tuple[int, int], rows: int, columns: int, **kwargs: Any) -> tuple[Any, Any]:
    """A matplotlib ``Figure`` of ``size`` = (width, height) pixels with a grid of axes.

    Built without pyplot: no global figure registry and no backend switch in the caller's
    process (a notebook keeps its backend); ``savefig`` renders with Agg by itself.
    """
    from matplotlib.figure import Figure

    figure = Figure(figsize=(size[0] / DPI, size[1] / DPI), dpi=DPI)
    return figure, figure.subplots(rows, columns, **kwargs)


def save_figure(figure: Any, output: str | Path) -> Path:
    """Write a figure of ``new_figure`` as a PNG on a white background, whole or not at all
    (a kill mid-write leaves an earlier figure of that name as it was); returns the path."""
    path = prepare_output(output)
    atomic_write(
        path, lambda stream: figure.savefig(stream, format="png", dpi=DPI, facecolor="white")
    )
    return path


def save_array(picture: np.ndarray, output: str | Path) -> Path:
    """Write an ``(H, W, 3)`` uint8 RGB array as a PNG of exactly its size, whole or not at
    all; returns the path."""
    path = prepare_output(output)
    write_png(path, picture)
    return path
