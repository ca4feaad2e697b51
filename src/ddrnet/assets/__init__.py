"""Files shipped inside the package: the bundled CamVid model and demo frames."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

BUNDLED_MODEL_NAME = "camvid_ddrnet23_slim.safetensors"


def assets_dir() -> Path:
    return Path(str(resources.files("ddrnet") / "assets"))


def bundled_model_path() -> Path:
    """The DDRNet-23-slim trained on CamVid by our own recipe (see MODEL_CARD.md here)."""
    path = assets_dir() / BUNDLED_MODEL_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"the bundled model {path} is missing from this installation; pass --checkpoint"
        )
    return path


def demo_frames() -> list[Path]:
    """The demo road scenes shipped with the package (CamVid, CC BY-NC 4.0; see demo/README.md)."""
    return sorted((assets_dir() / "demo").glob("*.png"))
