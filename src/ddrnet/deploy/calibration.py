"""Which real images INT8 calibration reads: one rule for ``ddrnet export`` and ``bench``.

Activation ranges measured on real frames decide an INT8 model's accuracy (a model
calibrated on two frames lost 11.5 mIoU on CamVid, see ``quantize_onnx_int8``), so an INT8
file for deployment needs a folder of real images. A speed measurement does not depend on
the ranges: there the bundled demo frames stand in when no folder is given.
"""

from __future__ import annotations

from pathlib import Path

from ddrnet.errors import UsageError


def calibration_folder(source: str | Path | None, what: str, *, demo_default: bool) -> Path:
    """The folder of real images that calibrates ``what`` (e.g. ``"--format onnx-int8"``):
    ``source`` when given, else with ``demo_default`` the bundled demo frames' folder.

    A ``UsageError`` naming ``what`` and ``--calibration`` when there is none; the folder's
    own problems (missing, no images) are reported when it is read
    (``load_calibration_images``).
    """
    if source is not None:
        return Path(source)
    if demo_default:
        from ddrnet.assets import demo_frames

        frames = demo_frames()
        if frames:
            return frames[0].parent
    raise UsageError(f"{what} needs --calibration (a folder of real images)")
