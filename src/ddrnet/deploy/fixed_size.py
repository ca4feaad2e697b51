"""Exported programs compiled for one input size (ExecuTorch ``.pte``, AOTInductor ``.pt2``)
behind the PyTorch model interface: what both do with an image of another size.

``torch.export`` of DDRNet with symbolic height and width fails or holds only for a narrow
range (the DAPPM pools and the resizes between branches give it guards it cannot prove), so
these files take one ``(H, W)``; an image of another size is resized to it and its logits
back, as close to a pass at its own size as resizing allows (a warning says so, once).
Here too: what their exports record beside the program (``export_record``) and the checks
``ddrnet export`` runs on them (``check_fixed_size_export``).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ddrnet.deploy.export import check_size
from ddrnet.deploy.onnx_file import EXPORT_OPTIONS_KEY, METADATA_KEY, ExportError
from ddrnet.deploy.verify import evaluate_on_camvid, real_frames, verify_fixed_size
from ddrnet.limits import check_min_side
from ddrnet.models.metadata import ModelMetadata, default_input_size

logger = logging.getLogger(__name__)


class FixedSizeSegmentationModel(nn.Module):
    """A logits program for one input size, run on the CPU.

    ``forward``: ``(N, 3, H, W)`` normalised float images -> ``(N, num_classes, h, w)``
    float32 logits on the input's device, ``h, w`` = ``ceil(H/8), ceil(W/8)`` (``H, W`` for
    files exported with ``upsample_to_input``). An image of another size than
    ``input_size`` is resized bilinearly (``align_corners=False``) to it and its logits back
    to ``h, w`` the same way, so the result is exactly the program's logits for the resized
    image, resized: close to, but not the same as, a pass at the image's own size. With
    ``resize=False`` such an input is a ``file_error`` naming the file's size.

    Subclasses set the attributes below in ``__init__`` and implement ``_run``.
    """

    runtime_name = ""  # as ``--runtime`` names it
    runtime_label = ""  # as people call it, in messages
    file_error: type[ExportError] = ExportError

    def _set_program(
        self,
        path: Path,
        metadata: ModelMetadata,
        options: dict[str, Any],
        input_size: tuple[int, int],
        output_size: tuple[int, int],
        resize: bool,
    ) -> None:
        """Record what the subclass read from its file: ``input_size`` ``(H, W)`` in pixels,
        ``output_size`` its logits' ``(h, w)`` at that size; ``options`` the export options
        (``upsample_to_input``, ``int8``)."""
        self.path, self.metadata, self.resize = path, metadata, resize
        self.num_classes = metadata.num_classes
        self.upsampled = bool(options.get("upsample_to_input", False))
        self.int8 = bool(options.get("int8", False))
        self.input_size = input_size
        self._output_size = output_size
        self._warned_resize = False

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """``(h, w)`` of the logits for an ``height x width`` input: the program's own
        output/input ratio (1/8 for DDRNet, 1 with ``upsample_to_input``), rounded up."""
        in_height, in_width = self.input_size
        out_height, out_width = self._output_size
        return math.ceil(height * out_height / in_height), math.ceil(width * out_width / in_width)

    def _run(self, batch: torch.Tensor) -> torch.Tensor:
        """``(N, 3, *input_size)`` float32 CPU images -> ``(N, C, *output)`` logits."""
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected (N, 3, H, W) images, got shape {tuple(images.shape)}")
        height, width = int(images.shape[-2]), int(images.shape[-1])
        batch = images.detach().float().cpu()
        resized = (height, width) != self.input_size
        if resized:
            self._check_resize(height, width)
            batch = F.interpolate(batch, self.input_size, mode="bilinear", align_corners=False)
        logits = self._run(batch.contiguous())
        if resized:
            size = self.output_size(height, width)
            logits = F.interpolate(logits, size, mode="bilinear", align_corners=False)
        return logits.to(images.device)

    def _check_resize(self, height: int, width: int) -> None:
        file_size = f"{self.input_size[0]}x{self.input_size[1]}"
        if not self.resize:
            raise self.file_error(
                f"{self.path}: exported for {file_size} inputs, got {height}x{width}; resize "
                f"the image or export again with --size {height}x{width}"
            )
        if not self._warned_resize:
            self._warned_resize = True
            logger.warning(
                "%s runs at its export size %s: %dx%d inputs are resized to it and the logits "
                "back (export with --size %dx%d for passes at this size)",
                self.path, file_size, height, width, height, width,
            )  # fmt: skip

    def extra_repr(self) -> str:
        precision = "int8" if self.int8 else "float32"
        size = f"{self.input_size[0]}x{self.input_size[1]}"
        return f"path={str(self.path)!r}, runtime={self.runtime_name}, {precision}, size={size}"


def program_size(model: nn.Module, size: tuple[int, int] | None) -> tuple[int, int]:
    """The one ``(height, width)`` a fixed-size program is compiled for: ``size``, else
    ``default_input_size(model)``. Every frame is resized to it, so a ``UsageError`` below
    ``MIN_WINDOW`` pixels a side, where the network's coarsest branch (1/64) has one pixel
    and the program would label every frame from a thumbnail."""
    height, width = check_size("size", size or default_input_size(model))
    check_min_side(
        (height, width), "--size", "a program of one input size (every frame is resized to it)"
    )
    return height, width


def export_record(
    model: nn.Module, size: tuple[int, int], int8: bool, upsample_to_input: bool
) -> dict[str, Any]:
    """What a fixed-size export carries besides the program: the model's metadata (its
    ``input_size`` set to ``size``, the one size the program takes) under ``METADATA_KEY``
    and the export options under ``EXPORT_OPTIONS_KEY``, as plain JSON types."""
    metadata = json.loads(model.metadata.to_json())
    metadata["input_size"] = list(size)
    options = {
        "argmax": False,
        "upsample_to_input": upsample_to_input,
        "input_size": list(size),
        "int8": int8,
    }
    return {METADATA_KEY: metadata, EXPORT_OPTIONS_KEY: options}


@torch.no_grad()
def frames_at(model: nn.Module, size: tuple[int, int], count: int = 2) -> list[torch.Tensor]:
    """The first ``count`` bundled demo frames (CamVid, 360x480) normalised as ``model``
    expects and resized bilinearly to ``size``: the inputs an export is checked on."""
    frames = real_frames(model, count)[:count]
    return [
        frame
        if tuple(frame.shape[-2:]) == tuple(size)
        else F.interpolate(frame, size=tuple(size), mode="bilinear", align_corners=False)
        for frame in frames
    ]


def check_fixed_size_export(
    model: nn.Module,
    deployed: FixedSizeSegmentationModel,
    *,
    evaluate_root: str | Path | None = None,
    evaluate_images: int | None = None,
    report: Callable[[str], Any] = print,
) -> None:
    """The checks ``ddrnet export`` runs on a file it wrote (``deployed``, loaded with
    ``resize=False``), each line passed to ``report``: the comparison with PyTorch float32 on
    real frames (the largest logit difference; INT8: the label agreement too), and with
    ``evaluate_root`` (a CamVid folder) the val mIoU of both (first ``evaluate_images``)."""
    name, size = deployed.runtime_label, deployed.input_size
    inputs = frames_at(model, size)
    if inputs:
        check = verify_fixed_size(model, deployed, inputs)
        where = f"on {len(inputs)} real frames at {size[0]}x{size[1]}"
        line = f"max abs logit difference {check.max_logit_difference:.2e}"
        if deployed.int8:
            line = f"labels agree on {100 * check.label_agreement:.2f}% of pixels, {line}"
        report(f"{name} vs PyTorch fp32 {where}: {line}")
    if evaluate_root is not None:
        reference, score, count = evaluate_on_camvid(
            model, deployed.path, evaluate_root, limit=evaluate_images, load=type(deployed)
        )
        report(f"CamVid val, {count} images: PyTorch fp32 mIoU {reference:.2f}")
        report(f"CamVid val, {count} images: {name} mIoU {score:.2f} ({score - reference:+.2f})")
