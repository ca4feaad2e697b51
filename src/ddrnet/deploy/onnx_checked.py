"""``ddrnet export`` for the ONNX forms, checked where they are written: the float32 file
(``export_onnx``) compared with PyTorch on real frames, the INT8 file quantised from it
(``quantize_onnx_int8``) or a TensorRT engine built from it, and with a CamVid root each ONNX
form scored on val as ``ddrnet bench`` and ``ddrnet predict`` run them.

An INT8 file or engine ``NAME`` keeps its float32 model beside it (``NAME_fp32.onnx``): made
first under a temporary name, it takes its name last, so a run stopped in between leaves an
earlier pair as it was, never a new float32 file beside an old INT8 one; it replaces only an
earlier export's file of that name, never a user's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ddrnet.atomic import commit, remove_stale_temporaries, temporary_beside
from ddrnet.deploy.export import export_onnx
from ddrnet.deploy.onnx_file import METADATA_KEY, ExportError, onnx_file_properties
from ddrnet.deploy.quantize import ImageSource, quantize_onnx_int8
from ddrnet.deploy.verify import verify_onnx, verify_onnx_labels
from ddrnet.models.metadata import default_input_size

logger = logging.getLogger(__name__)

ONNX_FORMS = ("onnx", "onnx-int8", "tensorrt")
# INT8 weights: 7 bits run accurately on every CPU (x86 without VNNI saturates with 8).
DEFAULT_WEIGHT_BITS = 7


def kept_fp32_path(output: str | Path) -> Path:
    """The float32 ONNX file kept beside an INT8 file or TensorRT engine ``output``."""
    output = Path(output)
    return output.with_name(output.stem + "_fp32.onnx")


def check_fp32_companion(output: str | Path) -> None:
    """An ``ExportError`` when the float32 file an INT8 export or engine ``output`` keeps
    beside it would replace a file that no export of ours wrote (a user's own)."""
    path = kept_fp32_path(output)
    if not path.exists():
        return
    try:
        ours = METADATA_KEY in onnx_file_properties(path).metadata_props
    except ExportError:
        ours = False
    if not ours:
        raise ExportError(
            f"{path} is no ddrnet export, and this export writes its float32 model there: "
            "move it, or export under another name"
        )


def export_onnx_checked(
    model: nn.Module,
    path: str | Path,
    input_size: tuple[int, int] | None = None,
    *,
    form: str = "onnx",
    calibration: Sequence[ImageSource] = (),
    weight_bits: int | None = None,
    argmax: bool = False,
    upsample_to_input: bool = False,
    evaluate_root: str | Path | None = None,
    evaluate_images: int | None = None,
    report: Callable[[str], Any] = print,
) -> Path:
    """Write ``model`` as ``form`` (``ONNX_FORMS``) to ``path``, each step's check passed to
    ``report`` as a line: the float32 file against PyTorch, then for ``"onnx-int8"`` the INT8
    file calibrated on ``calibration`` (real images at ``input_size``, default the model's;
    ``weight_bits`` 7, the default, is accurate on every CPU, 8 only on VNNI/AMX or ARM) or for
    ``"tensorrt"`` an engine of ``input_size`` (float16 allowed). With ``evaluate_root`` (a
    CamVid folder) the ONNX forms' val mIoU (first ``evaluate_images`` frames). Returns
    ``path``."""
    if form not in ONNX_FORMS:
        raise ValueError(f"form must be one of {ONNX_FORMS}, got {form!r}")
    if weight_bits not in (None, 7, 8):
        raise ValueError(f"weight_bits must be 7 or 8, got {weight_bits!r}")
    bits = weight_bits or DEFAULT_WEIGHT_BITS
    path, size = Path(path), input_size or default_input_size(model)
    options = {"argmax": argmax, "upsample_to_input": upsample_to_input}
    if form == "onnx":
        _export_and_verify(model, path, size, options, report, shown=path, beside=False)
        if evaluate_root:
            _evaluate_forms(model, path, path, evaluate_root, evaluate_images, report)
        return path
    check_fp32_companion(path)
    fp32_path = kept_fp32_path(path)
    remove_stale_temporaries(path.parent, (fp32_path.name,))  # of a run killed before
    draft = temporary_beside(fp32_path, ".onnx")
    try:
        _export_and_verify(model, draft, size, options, report, shown=fp32_path, beside=True)
        if form == "tensorrt":
            _build_engine(draft, path, size, report)
        else:
            quantize_onnx_int8(draft, path, calibration, size=size, reduce_range=bits != 8)
            report(
                f"INT8 (QDQ, per-channel, {bits}-bit weights) written to {path}, "
                f"calibrated on {len(calibration)} images"
            )
        commit(draft, fp32_path)
    finally:
        draft.unlink(missing_ok=True)
    if evaluate_root and form != "tensorrt":
        _evaluate_forms(model, fp32_path, path, evaluate_root, evaluate_images, report)
    return path


def _export_and_verify(
    model: nn.Module, path: Path, size: tuple[int, int], options: dict[str, bool],
    report: Callable[[str], Any], shown: Path, beside: bool,
) -> None:  # fmt: skip
    """Write the float32 ONNX file and report how closely ONNX Runtime reproduces PyTorch;
    ``shown``: the name it will have (it may be written under a temporary one)."""
    export_onnx(model, path, size, **options)
    kept = " (the float32 model, kept beside the INT8 file)" if beside else ""
    report(f"ONNX written to {shown}{kept} (dynamic batch, height and width)")
    if options["argmax"]:
        agreement = verify_onnx_labels(model, path)
        report(f"ONNX Runtime vs PyTorch: labels agree on {100 * agreement:.3f}% of pixels")
    else:
        difference = verify_onnx(model, path)
        report(f"ONNX Runtime vs PyTorch: max abs logit difference {difference:.2e}")


def _build_engine(
    onnx_path: Path, output: Path, size: tuple[int, int], report: Callable[[str], Any]
) -> None:
    from ddrnet.deploy.gpu import build_tensorrt_engine

    height, width = size
    build_tensorrt_engine(onnx_path, output, (1, 3, height, width), fp16=True)
    report(f"TensorRT engine (float16 allowed, input 1x3x{height}x{width}) written to {output}")


def _evaluate_forms(
    model: nn.Module, fp32_path: Path, final: Path, root: str | Path, limit: int | None,
    report: Callable[[str], Any],
) -> None:  # fmt: skip
    """mIoU on CamVid val of the fp32 ONNX file with onnxruntime, and of every deployed form
    (OpenVINO, the INT8 file) against it, run as ``ddrnet bench`` runs them."""
    from ddrnet.data.camvid import camvid
    from ddrnet.deploy.runtime import openvino_precision
    from ddrnet.deploy.verify import evaluate_onnx, evaluate_onnx_forms
    from ddrnet.engine.device import resolve_precision

    dataset = camvid(str(root), "val")
    count = min(limit or len(dataset), len(dataset))
    report(f"scoring on {count} of the {len(dataset)} CamVid val images (--evaluate-images)")
    if model.metadata.trained_on("camvid", "val"):
        logger.warning(
            "this model was trained on CamVid val: its scores there are training-set "
            "figures; the held-out model is camvid_ddrnet23_slim_train (--checkpoint)"
        )
    reference = evaluate_onnx(fp32_path, dataset, limit=limit)
    report(f"fp32 ONNX with onnxruntime on CamVid val: mIoU {reference.miou:.2f}")
    # OpenVINO's float layers as --amp auto runs them: bf16 where the CPU computes it.
    precision = openvino_precision(resolve_precision("auto", torch.device("cpu"), "openvino"))
    layers = f"({precision} float layers)"
    forms = [(f"fp32 ONNX with openvino {layers}", fp32_path, "openvino", precision)]
    if final != fp32_path:
        forms += [
            ("INT8 ONNX with onnxruntime", final, "onnxruntime", "f32"),
            (f"INT8 ONNX with openvino {layers}", final, "openvino", precision),
        ]
    for name, deployed in evaluate_onnx_forms(forms, dataset, limit=limit).items():
        if deployed is None:
            report(f"{name}: not installed")
        else:
            change = deployed.miou - reference.miou
            report(f"{name} on CamVid val: mIoU {deployed.miou:.2f} ({change:+.2f})")
