"""Our Cityscapes evaluation agrees with the official cityscapesScripts on the same predictions."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ddrnet.data.labels import CITYSCAPES
from ddrnet.models import save_model

from helpers import labelled_model, run_ddrnet

official = pytest.importorskip("cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling")


def test_miou_and_class_iou_match_the_official_script(
    cityscapes_root, tmp_path, monkeypatch
) -> None:
    # cityscapesScripts 2.3 still calls np.in1d, which NumPy 2.4 removed; np.isin on the
    # flattened array is what in1d was.
    if not hasattr(np, "in1d"):
        monkeypatch.setattr(
            np, "in1d", lambda a, b, **kw: np.isin(np.ravel(a), b, **kw), raising=False
        )
    model = labelled_model(CITYSCAPES, seed=7)  # varied predictions: many classes, errors
    path = save_model(model, tmp_path / "cityscapes.safetensors", model.metadata)
    result = run_ddrnet(
        "eval",
        str(path),
        "--dataset",
        "cityscapes",
        "--root",
        str(cityscapes_root),
        "--json",
        str(tmp_path / "ours.json"),
        "--submission",
        str(tmp_path / "submission"),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    ours = json.loads((tmp_path / "ours.json").read_text())
    frame = "frankfurt_000000_000294"
    prediction = tmp_path / "submission" / f"{frame}_leftImg8bit.png"
    ground_truth = cityscapes_root / "gtFine/val/frankfurt" / f"{frame}_gtFine_labelIds.png"
    args = official.args
    args.quiet, args.JSONOutput, args.evalPixelAccuracy = True, False, True
    args.exportFile = str(tmp_path / "official.json")
    scores = official.evaluateImgLists([str(prediction)], [str(ground_truth)], args)
    official_miou = scores["averageScoreClasses"] * 100
    assert ours["mIoU"] == pytest.approx(official_miou, abs=1e-6)
    for name, value in ours["per_class_IoU"].items():
        reference = scores["classScores"][name]
        if math.isnan(reference):  # class absent from ground truth and prediction
            assert value is None, name  # JSON has no nan
        else:
            assert value == pytest.approx(reference * 100, abs=1e-6), name
    assert 0 < official_miou < 100
