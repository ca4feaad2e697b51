"""Which real images INT8 calibration reads: one rule for ``ddrnet export`` and ``bench``.

Activation ranges measured on real frames decide an INT8 model's accuracy (a model
calibrated on two frames lost 11.5 mIoU on CamVid, see ``quantize_onnx_int8``), so an INT8
file for deployment needs a folder of real images. A speed measurement does not depend on
the ranges: there the bundled demo frames stand in when no folder is given.
"""

from __future__ import annotations

from pathlib import Path

from ddrnet.data.io import IMAGE_SUFFIXES, image_files
from ddrnet.errors import MissingFileError, UsageError


def calibration_folder(source: str | Path | None, what: str, *, demo_default: bool) -> Path:
    """The folder of real images that calibrates ``what`` (e.g. ``"--format onnx-int8"``):
    ``source`` when given, else with ``demo_default`` the bundled demo frames' folder.

    A ``UsageError`` naming ``what`` and ``--calibration`` when there is none, and the
    folder's own problems (missing, a file, no images) at once, before any export work.
    """
    if source is not None:
        calibration_files(Path(source))
        return Path(source)
    if demo_default:
        from ddrnet.data.io import demo_frames

        frames = demo_frames()
        if frames:
            return frames[0].parent
    raise UsageError(f"{what} needs --calibration (a folder of real images)")


def calibration_files(folder: Path) -> list[Path]:
    """The image files directly in ``folder``, sorted by name; a one-line error naming the
    folder when it does not exist, is a file or holds no images."""
    if not folder.exists():
        raise MissingFileError(f"calibration folder {folder} does not exist")
    if not folder.is_dir():
        raise UsageError(f"calibration folder {folder} is a file; give a folder of images")
    files = image_files(folder)
    if not files:
        raise UsageError(f"calibration folder {folder} has no {'/'.join(IMAGE_SUFFIXES)} files")
    return files
