"""Files shipped inside the package: the bundled CamVid models and demo frames.

Four DDRNet-23-slim models trained by our CamVid recipe ship with the package (MODEL_CARD.md);
``ddrnet.models.weights.DDRNet23Slim_Weights`` describes them, one typed entry each:

- ``camvid_ddrnet23_slim`` (``.CAMVID``, the ``DEFAULT`` of ``predict``, ``bench``,
  ``export`` and the web demo): the final model, trained on CamVid train + val. Its val score
  is a training-set figure, not a measure of accuracy on new scenes.
- ``camvid_ddrnet23_slim_train`` (``.CAMVID_TRAIN``): the same recipe trained on CamVid train
  only, so that its CamVid val mIoU is an honest held-out figure and can be reproduced with
  ``ddrnet eval``.
- ``camvid_ddrnet23_slim_fast`` and ``camvid_ddrnet23_slim_fast_train`` (``.CAMVID_FAST``,
  ``.CAMVID_FAST_TRAIN``): each of the two above channel-pruned to 40% of its multiply-adds
  (``ddrnet prune``) and fine-tuned on the same frames with distillation from its unpruned
  self: the fast models for CPUs.

Anywhere a checkpoint path is accepted, these names can be given instead of a path.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def assets_dir() -> Path:
    return Path(str(resources.files("ddrnet") / "assets"))


def bundled_model_path(name: str | None = None) -> Path:
    """The file of a bundled model, by its string name (``camvid_ddrnet23_slim_train``; the
    default model when ``None``); ``UsageError`` for an unknown name, ``MissingFileError``
    when this installation lacks the file."""
    from ddrnet.models.weights import DDRNet23Slim_Weights, get_weights

    weights = DDRNet23Slim_Weights.DEFAULT if name is None else get_weights(name)
    return weights.path


def resolve_bundled_name(checkpoint: str | Path) -> Path:
    """``checkpoint`` itself, unless it is no existing file but the name of a bundled model
    (``camvid_ddrnet23_slim_train``), which becomes that model's file."""
    from ddrnet.models.weights import bundled_names

    path = Path(checkpoint)
    if not path.exists() and str(checkpoint) in bundled_names():
        return bundled_model_path(str(checkpoint))
    return path


def demo_frames(folder: Path | None = None) -> list[Path]:
    """The images in ``folder`` (``ddrnet.data.io.image_files``; none when the folder does
    not exist), by default the demo road scenes shipped with the
    package (CamVid, CC BY-NC 4.0; see demo/README.md)."""
    from ddrnet.data.io import image_files

    folder = assets_dir() / "demo" if folder is None else Path(folder)
    return image_files(folder) if folder.is_dir() else []
