"""ncnn files (from ``ddrnet export --format ncnn``) behind the PyTorch model interface, so
that ``ddrnet predict``, ``ddrnet eval``, ``ddrnet serve`` and ``ddrnet.Predictor`` run the
deployed form itself, as ``OnnxSegmentationModel`` does for ONNX files.

An export is three files side by side: ``NAME.param`` (the graph, ncnn's text format),
``NAME.bin`` (float32 weights) and ``NAME.json`` (our sidecar: the model's ``ModelMetadata``
under ``"ddrnet"``, the export options under ``"ddrnet.export"``, the ncnn blob names under
``"ncnn"``; the keys of the ONNX file's metadata). ``-o model.ncnn.param`` therefore writes
``model.ncnn.param``, ``model.ncnn.bin`` and ``model.ncnn.json``.

ncnn (``pip install ncnn``, the ``edge`` extra) is imported when a file is loaded, so
importing this module needs only PyTorch.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ddrnet.atomic import file_digest
from ddrnet.deploy.formats import is_ncnn_file
from ddrnet.deploy.onnx_file import EXPORT_OPTIONS_KEY, METADATA_KEY, ExportError
from ddrnet.deploy.sidecar import (
    NCNN_KEY,
    check_sidecar_is_own,
    read_sidecar_values,
    restore_interrupted_export,
)
from ddrnet.models.metadata import ModelMetadata

logger = logging.getLogger(__name__)

NCNN_MAGIC = "7767517"  # the first line of every ncnn .param text file
INSTALL_HINT = "pip install ncnn (or pip install 'ddrnet[edge]')"


class NcnnFileError(ExportError):
    """An ncnn file that cannot be run as asked; the message names the file and the fix."""


@dataclass(frozen=True)
class NcnnFiles:
    """The three files of one ncnn export, named from its ``.param`` file."""

    param: Path
    weights: Path  # NAME.bin
    sidecar: Path  # NAME.json

    @classmethod
    def of(cls, param: str | Path) -> NcnnFiles:
        param = Path(param)
        return cls(param, param.with_suffix(".bin"), param.with_suffix(".json"))

    @property
    def paths(self) -> tuple[Path, Path, Path]:
        """The three, in the order ``ddrnet.file_sets.replaced_together`` takes them."""
        return self.param, self.weights, self.sidecar


def import_ncnn(path: str | Path) -> object:
    """The ``ncnn`` module, or an ``NcnnFileError`` saying what to install to run ``path``."""
    try:
        import ncnn
    except ImportError as error:
        raise NcnnFileError(
            f"running {path} needs the ncnn package ({error}): {INSTALL_HINT}"
        ) from None
    return ncnn


def check_ncnn_files(path: str | Path) -> NcnnFiles:
    """The files of the export ``path`` (a ``.param``), or an ``NcnnFileError`` naming what
    is wrong: another format, a missing file, a ``.param`` without its ``.bin``."""
    files = NcnnFiles.of(path)
    if not is_ncnn_file(files.param):
        raise NcnnFileError(
            f"{files.param}: not an ncnn .param file; --runtime ncnn runs the NAME.param "
            "(with NAME.bin beside it) written by `ddrnet export --format ncnn -o NAME.param`"
        )
    restore_interrupted_export(files.paths)
    if not files.param.is_file():
        raise NcnnFileError(f"{files.param}: no such ncnn .param file")
    with files.param.open("rb") as stream:
        first_line = stream.readline(64).strip()
    if first_line != NCNN_MAGIC.encode():
        raise NcnnFileError(
            f"{files.param}: not an ncnn .param file (it does not start with ncnn's magic "
            f"number {NCNN_MAGIC}); export one with `ddrnet export --format ncnn`"
        )
    if not files.weights.is_file():
        raise NcnnFileError(
            f"{files.param}: its weights {files.weights} are missing; give the .bin written "
            "beside it by `ddrnet export --format ncnn` (same name, .bin)"
        )
    return files


def check_files_belong_together(files: NcnnFiles, sidecar: dict[str, object]) -> None:
    """Refuse a ``.param``/``.bin`` pair other than the one its sidecar was written with (an
    export killed between its three writes leaves new files beside old ones; they would load
    and give wrong labels)."""
    check_sidecar_is_own(sidecar, NCNN_KEY, files.param, files.sidecar, NcnnFileError)
    blobs = sidecar.get(NCNN_KEY)
    if not isinstance(blobs, dict):
        return  # a foreign file, or one exported before the digests were recorded
    for path, key in ((files.param, "param_blake2b"), (files.weights, "bin_blake2b")):
        if key in blobs and file_digest(path) != blobs[key]:
            raise NcnnFileError(
                f"{files.param}: {path.name} is not the file {files.sidecar.name} was written "
                "with (an export interrupted while writing?); export it again"
            )


def read_sidecar(files: NcnnFiles) -> dict[str, object]:
    """The sidecar JSON of an export (empty when there is none: a foreign ncnn file)."""
    if not files.sidecar.is_file():
        return {}
    return read_sidecar_values(files.sidecar, NCNN_KEY, NcnnFileError)


def ncnn_net(files: NcnnFiles, threads: int | None = None) -> object:
    """An ``ncnn.Net`` loaded from ``files``, set up for float32 on the CPU.

    ncnn's own fast paths stay on (they are its defaults): Winograd F(6,3)/F(4,3)/F(2,3) for
    3x3 convolutions, sgemm for the rest, packed (SIMD-width) layouts. fp16/bf16 storage and
    arithmetic are switched off so that the file runs in float32 everywhere (on ARM boards,
    ncnn's default fp16 arithmetic is faster; see the README). ``threads``: by default
    ``torch.get_num_threads()``. (ncnn's ``openmp_blocktime`` is left alone: the pip wheel
    runs on libgomp, and setting it to 0 changed nothing measurable here.)
    """
    ncnn = import_ncnn(files.param)
    net = ncnn.Net()
    options = net.opt
    options.num_threads = threads or torch.get_num_threads()
    for name in ("use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic", "use_bf16_storage"):
        setattr(options, name, False)
    options.use_winograd_convolution = True
    options.use_packing_layout = True
    if net.load_param(str(files.param)) != 0:
        raise NcnnFileError(f"{files.param}: ncnn cannot parse this .param file")
    if net.load_model(str(files.weights)) != 0:
        raise NcnnFileError(
            f"{files.weights}: ncnn cannot read these weights for {files.param} (a .bin of "
            "another export?); export again with `ddrnet export --format ncnn`"
        )
    return net


class NcnnSegmentationModel(nn.Module):
    """An ncnn logits model (``ddrnet export --format ncnn``) run on the CPU by ncnn.

    ``forward``: ``(N, 3, H, W)`` normalised float images -> ``(N, num_classes, h, w)``
    float32 logits (``h, w`` = ``ceil(H/8), ceil(W/8)``, or ``H, W`` for files exported with
    ``--upsample``), on the input's device; any input size (every resize in the graph takes
    its size from a blob). ncnn runs one image at a time, so a batch is run image by image.
    The file's ``ModelMetadata`` (classes, palette, mean/std) comes from the sidecar JSON; a
    foreign file without one gets classes by number and ImageNet normalisation.

    Args:
        path: the ``.param`` file; ``NAME.bin`` must lie beside it.
        threads: ncnn threads; by default ``torch.get_num_threads()``.

    ncnn's OpenMP threads, like PyTorch's, slow down badly when other processes keep the
    cores busy (single 360x480 passes took 0.04-4 s on a loaded 2-core machine).
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        super().__init__()
        files = check_ncnn_files(path)
        self._ncnn = import_ncnn(files.param)
        sidecar = read_sidecar(files)
        check_files_belong_together(files, sidecar)
        blobs = sidecar.get(NCNN_KEY) or {}
        self.net = ncnn_net(files, threads)
        self.input_name = str(blobs.get("input") or self.net.input_names()[0])
        self.output_name = str(blobs.get("output") or self.net.output_names()[0])
        self.path, self.files, self.threads = files.param, files, threads
        options = sidecar.get(EXPORT_OPTIONS_KEY) or {}
        self.upsampled = bool(options.get("upsample_to_input", False))
        if METADATA_KEY in sidecar:
            self.metadata = ModelMetadata.from_json(
                json.dumps(sidecar[METADATA_KEY]), source=str(files.sidecar)
            )
        else:  # a foreign file: classes by number, ImageNet normalisation (ModelMetadata's)
            logger.warning(
                "%s: no %s beside it (a ddrnet export's classes, palette and normalisation): "
                "classes by number and ImageNet normalisation; for a ddrnet export, copy its "
                ".json with the .param and .bin",
                files.param, files.sidecar.name,
            )  # fmt: skip
            channels = int(self._run(np.zeros((3, 64, 64), np.float32)).shape[0])
            self.metadata = ModelMetadata(
                architecture=files.param.name.split(".")[0], num_classes=channels, spec={}
            )
        self.num_classes = self.metadata.num_classes

    def _run(self, image: np.ndarray) -> np.ndarray:
        """One ``(3, H, W)`` float32 image -> ``(C, h, w)`` float32 logits (a copy)."""
        # ncnn.Mat borrows the array's memory: the array must outlive the extraction (a
        # temporary copy made inline, for a non-contiguous image, would be freed under it).
        data = np.ascontiguousarray(image, dtype=np.float32)
        with self.net.create_extractor() as extractor:
            extractor.input(self.input_name, self._ncnn.Mat(data))
            status, output = extractor.extract(self.output_name)
            if status != 0:
                raise NcnnFileError(
                    f"{self.path}: ncnn failed to compute blob {self.output_name!r} "
                    f"(status {status}) for a {image.shape[1]}x{image.shape[2]} input"
                )
            return np.array(output, dtype=np.float32, copy=True)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected (N, 3, H, W) images, got shape {tuple(images.shape)}")
        batch = images.detach().float().cpu().numpy()
        logits = np.stack([self._run(image) for image in batch])
        return torch.from_numpy(logits).to(images.device)

    def extra_repr(self) -> str:
        return f"path={str(self.path)!r}, runtime=ncnn"


def load_ncnn_model(path: str | Path, threads: int | None = None) -> NcnnSegmentationModel:
    """``NcnnSegmentationModel(path, threads)``, in eval mode.

    >>> import ddrnet
    >>> model = load_ncnn_model("camvid.ncnn.param")
    >>> labels = ddrnet.Predictor(model).predict("street.png")
    """
    return NcnnSegmentationModel(path, threads).eval()
