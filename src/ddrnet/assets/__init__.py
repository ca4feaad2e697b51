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
  ``.CAMVID_FAST_TRAIN``): each of the two above channel-pruned to 41% of its multiply-adds
  (``ddrnet prune``) and fine-tuned on the same frames with distillation from its unpruned
  self: the fast models for CPUs.

Anywhere a checkpoint path is accepted, these names can be given instead of a path
(``ddrnet.models.weights.resolve_bundled_name``). This module only locates the shipped files.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def assets_dir() -> Path:
    return Path(str(resources.files("ddrnet") / "assets"))
