"""Files shipped inside the package: the bundled CamVid models and demo frames.

Two DDRNet-23-slim models trained by our CamVid recipe ship with the package (MODEL_CARD.md):

- ``camvid_ddrnet23_slim`` (the default of ``predict``, ``bench``, ``export`` and the web
  demo): the final model, trained on CamVid train + val. Its val score is a training-set
  figure, not a measure of accuracy on new scenes.
- ``camvid_ddrnet23_slim_train``: the same recipe trained on CamVid train only, so that its
  CamVid val mIoU is an honest held-out figure and can be reproduced with ``ddrnet eval``.
- ``camvid_ddrnet23_slim_fast`` and ``camvid_ddrnet23_slim_fast_train``: each of the two above
  channel-pruned to 40% of its multiply-adds (``ddrnet prune``) and fine-tuned on the same
  frames with distillation from its unpruned self: the fast models for CPUs.

Anywhere a checkpoint path is accepted, these names can be given instead of a path.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

DEFAULT_BUNDLED_MODEL = "camvid_ddrnet23_slim"
BUNDLED_MODELS: dict[str, str] = {
    "camvid_ddrnet23_slim": "CamVid train+val (468 frames), the final model",
    "camvid_ddrnet23_slim_train": "CamVid train only (367 frames): val mIoU is held out",
    "camvid_ddrnet23_slim_fast": "camvid_ddrnet23_slim pruned to 40% of the MACs, distilled",
    "camvid_ddrnet23_slim_fast_train": "camvid_ddrnet23_slim_train pruned to 40% of the MACs, "
    "distilled on train only: val mIoU is held out",
}


def assets_dir() -> Path:
    return Path(str(resources.files("ddrnet") / "assets"))


def bundled_model_path(name: str = DEFAULT_BUNDLED_MODEL) -> Path:
    """The file of a bundled model (a key of ``BUNDLED_MODELS``); see MODEL_CARD.md here."""
    if name not in BUNDLED_MODELS:
        raise ValueError(f"no bundled model {name!r}; bundled: {', '.join(BUNDLED_MODELS)}")
    path = assets_dir() / f"{name}.safetensors"
    if not path.is_file():
        raise FileNotFoundError(
            f"the bundled model {path} is missing from this installation; pass --checkpoint"
        )
    return path


def resolve_bundled_name(checkpoint: str | Path) -> Path:
    """``checkpoint`` itself, unless it is no existing file but the name of a bundled model
    (``camvid_ddrnet23_slim_train``), which becomes that model's file."""
    path = Path(checkpoint)
    if not path.exists() and str(checkpoint) in BUNDLED_MODELS:
        return bundled_model_path(str(checkpoint))
    return path


def demo_frames(folder: Path | None = None) -> list[Path]:
    """The images in ``folder`` (``ddrnet.data.io.image_files``; none when the folder does
    not exist), by default the demo road scenes shipped with the
    package (CamVid, CC BY-NC 4.0; see demo/README.md)."""
    from ddrnet.data.io import image_files

    folder = assets_dir() / "demo" if folder is None else Path(folder)
    return image_files(folder) if folder.is_dir() else []


def bundled_model_rows() -> list[dict[str, object]]:
    """One row per bundled model present in this installation, read from its metadata
    (no weights loaded): name, architecture, classes, data set, what it was trained on and
    its CamVid val mIoU."""
    from safetensors import safe_open

    from ddrnet.models.metadata import ModelMetadata

    rows = []
    for name, description in BUNDLED_MODELS.items():
        path = assets_dir() / f"{name}.safetensors"
        if not path.is_file():
            continue
        with safe_open(str(path), framework="pt") as handle:
            metadata = ModelMetadata.from_json((handle.metadata() or {})["ddrnet"], str(path))
        rows.append(
            {
                "name": name,
                "architecture": metadata.architecture,
                "classes": metadata.num_classes,
                "dataset": metadata.dataset,
                "trained_on": description,
                "val_mIoU": metadata.metrics.get("camvid_val_mIoU"),
                "val_held_out": not metadata.trained_on("camvid", "val"),
            }
        )
    return rows
