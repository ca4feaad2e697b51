"""AOTInductor: the model compiled ahead of time by PyTorch Inductor into one ``.pt2`` package,
run without the model's Python code, from Python or from C++ through libtorch.

TorchScript (``torch.jit``) is deprecated from PyTorch 2.13; ``torch.export`` plus
AOTInductor is its successor for deployment inside a PyTorch stack. ``export_aoti`` exports
the BN-folded eval model (``folded_export_wrapper``: normalised float32 images in, logits
out) with ``torch.export`` at one fixed ``(H, W)`` and any batch of 1 to ``MAX_BATCH``, and
compiles it with ``torch._inductor.aoti_compile_and_package``: a shared library with the
weights inside, plus our metadata (``export_record``: classes, palette, mean/std, the export
options) in the package's own metadata, so the file describes itself. Loading:

    Python  torch._inductor.aoti_load_package("model.pt2")(images)   (or ddrnet.load)
    C++     torch::inductor::AOTIModelPackageLoader("model.pt2").run({images})

What a user must know about the file, each checked when it is loaded here:

* It runs with the PyTorch version that wrote it (the library links against libtorch).
* Compiling needs a C++ compiler (g++ or clang) on the exporting machine, not where it runs.
* Inductor's own kernels (the element-wise and pooling code between convolutions; the
  convolutions are PyTorch's, chosen when they run) are compiled for one vector instruction
  set. ``isa="portable"`` (the default) compiles them for AVX2 on x86, which every x86 CPU
  of the last decade runs; ``"native"`` for the widest this CPU has (AVX-512 here means the
  file refuses to load on an AVX2 laptop).
* One input size, as ExecuTorch's (``ddrnet.deploy.fixed_size``): other sizes are resized.
  ``torch.export`` with a symbolic height and width holds for too few sizes to be worth it:
  the shapes of the 1/64 branch and of DAPPM's pools specialise the program to 257-512
  pixels a side (PyTorch 2.13, DDRNet-23-slim).
"""

from __future__ import annotations

import contextlib
import json
import logging
import subprocess
import warnings
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ddrnet.atomic import commit, remove_stale_temporaries, temporary_beside
from ddrnet.deploy.export import example_input, folded_export_wrapper
from ddrnet.deploy.fixed_size import (
    FixedSizeSegmentationModel,
    check_fixed_size_export,
    export_record,
    program_size,
)
from ddrnet.deploy.formats import AOTI, is_aoti_file
from ddrnet.deploy.onnx_file import EXPORT_OPTIONS_KEY, METADATA_KEY, ExportError
from ddrnet.errors import UsageError
from ddrnet.hardware import is_x86, runs_inductor_isa
from ddrnet.models.metadata import ModelMetadata

logger = logging.getLogger(__name__)

MAX_BATCH = 32  # the largest batch the package takes; the runtime splits larger ones
ISAS = ("portable", "native")
# The package's metadata file (one per compiled model), written by AOTInductor.
_METADATA_FILE = "wrapper_metadata.json"
# PyTorch warns at every load of a package compiled for another (even a narrower) vector
# instruction set; this module checks compatibility itself and says what matters.
_PACKAGE_LOGGER = "torch.export.pt2_archive._package"


class AotiFileError(ExportError):
    """An AOTInductor package that cannot be run here; the message names the file and fix."""


def export_aoti(
    model: nn.Module,
    path: str | Path,
    size: tuple[int, int] | None = None,
    *,
    upsample_to_input: bool = False,
    isa: str = "portable",
) -> Path:
    """Compile ``model.forward`` (auxiliary head off) into the AOTInductor package ``path``.

    Args:
        model: a ``DDRNet`` with ``metadata``.
        path: the ``.pt2`` file; parent folders are created, an existing file is replaced
            only once the package is complete.
        size: ``(height, width)`` in pixels of the one input size; by default
            ``default_input_size(model)`` (360x480 for CamVid models).
        upsample_to_input: resize the logits bilinearly to the input size inside the graph.
        isa: ``"portable"`` (AVX2 kernels on x86) or ``"native"`` (this CPU's widest).

    Returns ``path``. Raises ``UsageError`` for a bad path, size or ``isa``, ``ExportError``
    when export or compilation fails (no C++ compiler, an unsupported layer).
    """
    path = Path(path)
    if not is_aoti_file(path):
        raise UsageError(f"{path}: an AOTInductor package is written to a NAME.pt2 file")
    if getattr(model, "metadata", None) is None:
        raise UsageError("the model has no metadata (classes, normalisation) to export with it")
    if isa not in ISAS:
        raise UsageError(f"isa must be one of {', '.join(ISAS)}; got {isa!r}")
    height, width = program_size(model, size)
    record = export_record(model, (height, width), False, upsample_to_input)
    wrapper = folded_export_wrapper(model, upsample_to_input)
    with torch.no_grad():
        record[EXPORT_OPTIONS_KEY]["output_size"] = list(
            wrapper(example_input(1, height, width)).shape[-2:]
        )
    configs: dict[str, Any] = {
        "aot_inductor.metadata": {key: json.dumps(value) for key, value in record.items()}
    }
    if isa == "portable" and is_x86():
        configs["cpp.simdlen"] = 256  # Inductor's AVX2 kernels
    remove_stale_temporaries(path.parent, (path.name,))  # of an export killed before
    temporary = temporary_beside(path, AOTI.suffix)
    try:
        _compile(wrapper, (height, width), configs, temporary)
        commit(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def _compile(wrapper: nn.Module, size: tuple[int, int], configs: dict, target: Path) -> None:
    """``torch.export`` with a symbolic batch (an example batch of 2: one of 1 would be fixed
    as 1), then AOTInductor into ``target``; failures as one-line ``ExportError``s."""
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    try:
        # FutureWarnings raised inside PyTorch's own code: nothing a user can act on.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            program = torch.export.export(
                wrapper, (example_input(2, *size),), dynamic_shapes=({0: batch},)
            )
            torch._inductor.aoti_compile_and_package(
                program, package_path=str(target), inductor_configs=configs
            )
    except (RuntimeError, OSError, subprocess.SubprocessError) as error:
        # No compiler (InvalidCxxCompiler), a compile failure (CppCompileError), export's
        # own refusals: RuntimeErrors; a compiler that cannot be started: OSError.
        lines = str(error).strip().splitlines()
        detail = lines[0] if lines else type(error).__name__
        raise ExportError(
            f"AOTInductor could not compile the model: {detail} (compiling needs a C++ "
            "compiler: g++ or clang)"
        ) from error


def read_package_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of the AOTInductor package ``path`` (ours under ``METADATA_KEY`` and
    ``EXPORT_OPTIONS_KEY``, as JSON text; AOTInductor's ``AOTI_*`` keys), read from the
    archive without loading it; an ``AotiFileError`` naming what is wrong."""
    path = Path(path)
    hint = "export one with `ddrnet export --format aoti -o NAME.pt2`"
    if not is_aoti_file(path):
        raise AotiFileError(f"{path}: not an AOTInductor .pt2 package; {hint}")
    if not path.is_file():
        raise AotiFileError(f"{path}: no such AOTInductor package")
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith(_METADATA_FILE)]
            values = json.loads(archive.read(names[0])) if names else None
            # The archive's own checksums (the shared library, the weights): a damaged copy
            # would load and label frames wrongly (a quarter of them, 64 bytes flipped).
            damaged = archive.testzip() if values is not None else None
    except (zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError, OSError) as error:
        raise AotiFileError(f"{path}: not an AOTInductor package ({error}); {hint}") from None
    if damaged is not None:
        raise AotiFileError(
            f"{path}: damaged (its {damaged.rsplit('/', 1)[-1]} fails the archive's checksum); "
            "copy it again or export it again"
        )
    if not isinstance(values, dict):
        raise AotiFileError(
            f"{path}: a .pt2 archive without a compiled model (a torch.export program?); {hint}"
        )
    if METADATA_KEY not in values or EXPORT_OPTIONS_KEY not in values:
        raise AotiFileError(
            f"{path}: an AOTInductor package without ddrnet's metadata (classes, "
            f"normalisation); {hint}"
        )
    return values


def _check_runs_here(path: Path, values: dict[str, str]) -> None:
    """Refuse a package for a GPU or for instructions this CPU lacks (it would crash)."""
    device = values.get("AOTI_DEVICE_KEY", "cpu")
    if device != "cpu":
        raise AotiFileError(f"{path}: compiled for {device}; ddrnet runs AOTInductor on the CPU")
    isa, machine = values.get("AOTI_CPU_ISA", ""), values.get("AOTI_MACHINE", "")
    if machine and not runs_inductor_isa(isa, machine):
        raise AotiFileError(
            f"{path}: compiled for {machine} CPUs with {isa or 'no vector'} instructions, "
            "which this CPU lacks; export it again with --isa portable (the default), or on "
            "this machine"
        )


@contextlib.contextmanager
def _quiet_package_warnings() -> Iterator[None]:
    package_logger = logging.getLogger(_PACKAGE_LOGGER)
    level = package_logger.level
    package_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        package_logger.setLevel(level)


class AotiSegmentationModel(FixedSizeSegmentationModel):
    """An AOTInductor package (``export_aoti``) run on the CPU, batches of any size, at its
    fixed input size (other sizes: ``FixedSizeSegmentationModel``). It uses PyTorch's CPU
    threads (``torch.set_num_threads``) and OpenMP's for its own kernels.

    Args:
        path: the ``.pt2`` file.
        resize: resize inputs of another size (True) or refuse them (False).
    """

    runtime_name = "aoti"
    runtime_label = "AOTInductor"
    file_error = AotiFileError

    def __init__(self, path: str | Path, resize: bool = True) -> None:
        super().__init__()
        path = Path(path)
        values = read_package_metadata(path)
        _check_runs_here(path, values)
        try:
            metadata = ModelMetadata.from_json(values[METADATA_KEY], source=str(path))
            options = json.loads(values[EXPORT_OPTIONS_KEY])
            input_size, output_size = options["input_size"], options["output_size"]
        except (ValueError, KeyError, TypeError) as error:
            raise AotiFileError(f"{path}: its ddrnet metadata is unreadable ({error})") from None
        try:
            with _quiet_package_warnings():
                self.runner: Callable = torch._inductor.aoti_load_package(str(path))
        except RuntimeError as error:
            first = (str(error).strip().splitlines() or ["failed"])[0]
            raise AotiFileError(
                f"{path}: PyTorch {torch.__version__} cannot load this package ({first}); "
                "export it again with this PyTorch version"
            ) from None
        self._set_program(
            path, metadata, options, tuple(input_size), tuple(output_size), resize
        )  # fmt: skip
        self.isa = values.get("AOTI_CPU_ISA", "")

    def _run(self, batch: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.runner(part) for part in batch.split(MAX_BATCH)])

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, isa={self.isa or 'none'}"


def load_aoti_model(path: str | Path, resize: bool = True) -> AotiSegmentationModel:
    """``AotiSegmentationModel(path, resize)``, in eval mode.

    >>> import ddrnet
    >>> model = load_aoti_model("camvid.pt2")
    >>> labels = ddrnet.Predictor(model).predict("street.png")
    """
    return AotiSegmentationModel(path, resize).eval()


def export_aoti_checked(
    model: nn.Module,
    path: str | Path,
    size: tuple[int, int] | None = None,
    *,
    upsample_to_input: bool = False,
    isa: str = "portable",
    evaluate_root: str | Path | None = None,
    evaluate_images: int | None = None,
    report: Callable[[str], Any] = print,
) -> Path:
    """``ddrnet export --format aoti``: ``export_aoti``, then ``check_fixed_size_export``
    (PyTorch against the package on real frames; CamVid val mIoU with ``evaluate_root``)."""
    size = program_size(model, size)
    path = export_aoti(model, path, size, upsample_to_input=upsample_to_input, isa=isa)
    deployed = AotiSegmentationModel(path, resize=False)
    report(
        f"AOTInductor package written to {path} (float32, fixed {size[0]}x{size[1]} input, "
        f"batches of 1-{MAX_BATCH}, {deployed.isa or 'generic'} kernels, PyTorch "
        f"{torch.__version__.split('+')[0]})"
    )
    check_fixed_size_export(
        model,
        deployed,
        evaluate_root=evaluate_root,
        evaluate_images=evaluate_images,
        report=report,
    )
    return path
