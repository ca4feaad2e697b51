"""`ddrnet viz`: the numeric helpers against hand values, and each figure written as a PNG
of the expected size from real CamVid frames, a hand-made evaluation JSON and metrics.jsonl."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ddrnet
from ddrnet.cli import main
from ddrnet.data.io import read_rgb
from ddrnet.data.labels import CAMVID
from ddrnet.errors import UsageError
from ddrnet.models.metadata import class_info, distinct_palette
from ddrnet.viz import (
    TITLE_HEIGHT,
    class_info_for_names,
    compare_pictures,
    confusion_figure_size,
    entropy_map,
    feature_figure_size,
    feature_panels,
    load_models,
    read_metrics_jsonl,
    robustness_figure_size,
    row_normalize,
    summarize_channels,
)

from helpers import camvid_model


@pytest.fixture(scope="module")
def checkpoints(camvid_model_file, tmp_path_factory) -> list[Path]:
    """Two untrained CamVid models that predict differently: seeds 1 and 2."""
    other = camvid_model(seed=2)
    path = tmp_path_factory.mktemp("models") / "seed2.safetensors"
    return [camvid_model_file, ddrnet.save_model(other, path, other.metadata)]


def test_row_normalize_by_hand() -> None:
    matrix = [[2, 1, 1], [0, 0, 0], [0, 3, 1]]
    result = row_normalize(matrix)
    assert np.allclose(result[0], [0.5, 0.25, 0.25]) and np.allclose(result[2], [0, 0.75, 0.25])
    assert np.isnan(result[1]).all()  # no ground-truth pixels: no fractions
    with pytest.raises(ValueError, match="square"):
        row_normalize([[1, 2, 3]])


def test_entropy_in_bits_by_hand() -> None:
    probabilities = torch.zeros(4, 1, 3)
    probabilities[:, 0, 0] = 0.25  # uniform over 4 classes: 2 bits
    probabilities[2, 0, 1] = 1.0  # certain: 0 bits
    probabilities[:2, 0, 2] = 0.5  # a coin flip: 1 bit
    assert np.allclose(entropy_map(probabilities), [[2.0, 0.0, 1.0]])
    assert np.allclose(entropy_map(probabilities, base=math.e), [[math.log(4), 0, math.log(2)]])


def test_channel_summaries() -> None:
    pattern = torch.tensor([[0.0, 1.0], [2.0, 4.0]])
    weights = torch.tensor([1.0, -3.0, 2.0])
    feature = weights[:, None, None] * pattern  # rank one: every channel is the pattern
    # mean |activation| = 2 * pattern, min-max scaled: pattern / 4.
    assert np.allclose(summarize_channels(feature, "mean-abs"), pattern / 4)
    # The first principal component is the pattern itself, its sign made to follow the energy.
    assert np.allclose(summarize_channels(feature, "pca"), pattern / 4, atol=1e-5)
    assert np.allclose(summarize_channels(torch.ones(2, 3, 3), "pca"), 0)  # no variation
    with pytest.raises(ValueError, match="unknown channel summary"):
        summarize_channels(feature, "max")


def test_class_info_falls_back_to_numbered_classes() -> None:
    info = class_info(camvid_model())
    assert info.names == CAMVID.class_names and info.palette == CAMVID.palette
    bare = ddrnet.create_model("ddrnet_23_slim", num_classes=3)
    assert class_info(bare).names == ("class 0", "class 1", "class 2")
    assert class_info_for_names(CAMVID.class_names).palette == CAMVID.palette
    assert class_info_for_names(["a", "b"]).palette == distinct_palette(2)


def test_features_figure(camvid_frame, checkpoints, tmp_path, caplog) -> None:
    image = read_rgb(camvid_frame)
    panels = feature_panels(camvid_model(), image, top_k=5)
    titles = [panel.title for panel in panels]
    # Both branches before and after both fusions of DDRNet-23, five DAPPM scales, entropy.
    for stage in ("3", "4"):
        for branch in ("high", "low"):
            for moment in ("before", "after"):
                assert any(
                    f"stage {stage}: {branch}-res branch, {moment} fusion" in t for t in titles
                )
    assert any(t.startswith("stage 3: high-res") and "1/8, 64 ch, 60x45" in t for t in titles)
    assert any(t.startswith("stage 4: low-res") and "1/32, 256 ch, 15x12" in t for t in titles)
    assert sum(t.startswith("DAPPM scale") for t in titles) == 5
    assert any("1/64" in t for t in titles if t.startswith("DAPPM"))
    assert any("entropy in bits" in t for t in titles)
    probability_maps = [p for p in panels if p.title.startswith("P(")]
    assert len(probability_maps) == 5
    for panel in probability_maps:
        assert panel.data.shape == (360, 480) and 0 <= panel.data.min() <= panel.data.max() <= 1

    output = tmp_path / "features.png"
    assert main(["viz", "features", str(camvid_frame), "--checkpoint", str(checkpoints[0]),
                 "--reduce", "pca", "-o", str(output)]) == 0  # fmt: skip
    assert Image.open(output).size == feature_figure_size(len(panels)) == (1600, 2090)
    # A bare --model draws an untrained network's maps: said, as compare says it.
    with caplog.at_level("WARNING", logger="ddrnet"):
        assert main(["viz", "features", str(camvid_frame), "--model", "ddrnet_23_slim",
                     "-o", str(output)]) == 0  # fmt: skip
    assert (
        "--model ddrnet_23_slim without --checkpoint: a network with random weights" in caplog.text
    )


def test_confusion_figure(tmp_path) -> None:
    names = list(CAMVID.class_names)
    matrix = np.diag(np.arange(1, 12) * 100)
    matrix[0, 1] = 50
    matrix[10] = 0  # Bicyclist absent from the ground truth: a blank row
    iou = {name: 100.0 * (i % 3) / 3 for i, name in enumerate(names)}
    iou["Bicyclist"] = float("nan")  # what 'ddrnet eval --json' writes for a class never seen
    metrics = tmp_path / "metrics.json"
    metrics.write_text(
        json.dumps(
            {
                "mIoU": 33.3,
                "dataset": "camvid",
                "per_class_IoU": iou,
                "confusion_matrix": matrix.tolist(),
            }
        )  # fmt: skip
    )
    output = tmp_path / "plots" / "confusion.png"
    assert main(["viz", "confusion", str(metrics), "-o", str(output)]) == 0
    assert Image.open(output).size == confusion_figure_size(11)

    # A second run stopped mid-write (Ctrl-C, or a kill) leaves the first figure whole.
    first = output.read_bytes()

    def interrupted(figure, stream, **options):
        stream.write(first[:100])
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("matplotlib.figure.Figure.savefig", interrupted)
        assert main(["viz", "confusion", str(metrics), "-o", str(output)]) == 130
    assert output.read_bytes() == first
    assert [p.name for p in output.parent.iterdir()] == ["confusion.png"]

    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"mIoU": 1.0}))
    assert main(["viz", "confusion", str(broken), "-o", str(tmp_path / "x.png")]) == 2
    assert main(["viz", "confusion", str(metrics), "-o", str(tmp_path / "x.jpg")]) == 2


def test_confusion_figure_draws_the_details_beside_each_iou(tmp_path) -> None:
    """With 'ddrnet eval --details', each class gets three bars: IoU, then its boundary IoU
    and its small objects found, hatched, in its colour, of the lengths in the file."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from ddrnet.viz.confusion import _detail_rows, _draw_iou_bars

    names = ["road", "pole"]
    document = {
        "boundary_IoU": {"road": 80.0, "pole": 20.0},
        "objects_found": {"small": {"per_class": {"road": None, "pole": 35.0}}},
    }
    rows = _detail_rows(document, names)
    assert [label for label, _ in rows] == ["boundary IoU", "small objects found"]
    assert np.isnan(rows[1][1][0]) and rows[1][1][1] == 35.0
    assert _detail_rows({"per_class_IoU": {}}, names) == []  # written without --details
    figure, axis = plt.subplots()
    info = class_info_for_names(names)
    _draw_iou_bars(axis, np.array([90.0, 30.0]), info, 60.0, rows)
    bars = sorted(axis.patches[:6], key=lambda bar: bar.get_y())
    assert [bar.get_width() for bar in bars] == [90.0, 80.0, 0.0, 30.0, 20.0, 35.0]
    assert [bar.get_hatch() for bar in bars] == [None, "////", "...", None, "////", "..."]
    assert bars[0].get_facecolor() == bars[2].get_facecolor() != bars[3].get_facecolor()
    plt.close(figure)


def test_robustness_figure(tmp_path, capsys) -> None:
    def evaluation(name: str, clean: float, fog: list[float]) -> Path:
        path = tmp_path / f"{name}.json"
        miou = {"fog": {str(s): v for s, v in enumerate(fog, 1)}, "dark": {"1": clean}}
        means = {"fog": sum(fog) / len(fog), "dark": clean}
        section = {"clean_mIoU": clean, "mIoU": miou, "mean_per_corruption": means}
        document = {
            "checkpoint": f"runs/{name}.safetensors",
            "per_class_IoU": {"road": clean},
            "confusion_matrix": [[1]],
            "corruptions": section,
        }
        path.write_text(json.dumps(document))
        return path

    first = evaluation("slim", 72.0, [60.0, 50.0, 40.0, 30.0, 20.0])
    second = evaluation("fast", 71.0, [58.0, 49.0, 39.0, 29.0, 19.0])
    output = tmp_path / "robustness.png"
    assert main(["viz", "robustness", str(first), str(second), "-o", str(output)]) == 0
    assert Image.open(output).size == robustness_figure_size(2) == (1600, 360)
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"per_class_IoU": {"road": 1.0}, "confusion_matrix": [[1]]}))
    capsys.readouterr()
    assert main(["viz", "robustness", str(plain), "-o", str(tmp_path / "x.png")]) == 2
    assert "no corruptions; write it with 'ddrnet eval" in capsys.readouterr().err
    # Reports edited by hand: one line naming the field (each was a traceback).
    document = json.loads(first.read_text())
    section = "corruptions"
    for edit, message in [
        (lambda d: d[section].update(clean_mIoU="x"), "corruptions.clean_mIoU: expected a number"),
        (lambda d: d[section]["mIoU"]["fog"].update(x=1.0), "corruptions.mIoU.fog: severities"),
        (lambda d: d.update(confusion_matrix=[[1, 2], [3]]), "confusion_matrix: rows of different"),
        (lambda d: d.update(confusion_matrix=[["x"]]), "confusion_matrix[0][0]: expected a number"),
        (lambda d: d.update(confusion_matrix=[[-1]]), "pixel counts must be >= 0"),
        (lambda d: d.update(per_class_IoU={f"c{i}": 1.0 for i in range(700)}), "700 classes, more"),
    ]:  # fmt: skip
        edited = json.loads(json.dumps(document))
        edit(edited)
        plain.write_text(json.dumps(edited))
        command = "confusion" if "confusion" in message or "classes" in message else "robustness"
        assert main(["viz", command, str(plain), "-o", str(tmp_path / "x.png")]) == 2
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and message in error, error


def test_training_curves(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    run.mkdir()
    lines = [
        {"epoch": e, "train_loss": 3 / e, "lr": 0.01 * (1 - e / 10), "images_per_second": 9.5}
        | ({"val_mIoU": 10.0 * e} if e % 2 == 0 else {})
        for e in range(1, 6)
    ]
    lines.append({"epoch": 4, "train_loss": 0.5, "lr": 0.004, "val_mIoU": 45.0})  # resumed
    text = "\n".join(json.dumps(line) for line in lines) + '\n{"epoch": 6, "train_lo'
    (run / "metrics.jsonl").write_text(text)  # the last line is still being written
    records = read_metrics_jsonl(run / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2, 3, 4, 5] and records[3]["val_mIoU"] == 45.0
    output = tmp_path / "curves.png"
    assert main(["viz", "curves", str(run), "-o", str(output)]) == 0
    assert Image.open(output).size == (1200, 800)

    (run / "metrics.jsonl").write_text('{"epoch": 1}\nnot json\n{"epoch": 2}\n')
    assert main(["viz", "curves", str(run), "-o", str(output)]) == 2
    assert "metrics.jsonl:2: not a JSON line" in capsys.readouterr().err
    # -o is checked before the run is read, and named (it was only the file, after)
    assert main(["viz", "curves", str(run), "-o", "/proc/curves.png"]) == 2
    assert "-o /proc/curves.png: cannot write in its folder" in capsys.readouterr().err
    (run / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": "x"}\n')  # was a traceback
    assert main(["viz", "curves", str(run), "-o", str(output)]) == 2
    assert (
        "metrics.jsonl:2: expected an object with a whole-number 'epoch'" in capsys.readouterr().err
    )


def test_compare_figure(camvid_frame, checkpoints, tmp_path) -> None:
    output = tmp_path / "compare.png"
    argv = ["viz", "compare", str(camvid_frame), "-o", str(output)]
    assert main(argv + [arg for path in checkpoints for arg in ("--checkpoint", str(path))]) == 0
    picture = np.asarray(Image.open(output))
    # Input, two predictions and a legend, each under a caption bar; the input is unchanged.
    assert picture.shape[0] == 360 + TITLE_HEIGHT and picture.shape[1] > 3 * 480 + 8 + 40
    assert np.array_equal(picture[TITLE_HEIGHT:, :480], read_rgb(camvid_frame))
    assert not np.array_equal(picture[TITLE_HEIGHT:, 484:964], picture[TITLE_HEIGHT:, 968:1448])

    other = ddrnet.create_model("ddrnet_23_slim", num_classes=11)  # no class names
    with pytest.raises(ValueError, match="one legend cannot describe both"):
        compare_pictures(
            read_rgb(camvid_frame)[:64, :64], [("camvid", camvid_model()), ("bare", other)]
        )
    assert main(["viz", "compare", str(camvid_frame), "-o", str(output)]) == 2
    # The bundled models by name, as wherever a checkpoint path is accepted.
    bundled = load_models(["camvid_ddrnet23_slim", "camvid_ddrnet23_slim_train"], [])
    assert [caption.split(":")[0] for caption, _ in bundled] == [
        "assets/camvid_ddrnet23_slim.safetensors",
        "assets/camvid_ddrnet23_slim_train.safetensors",
    ]
    # DDRNet's ImageNet classifier has no label maps: it crashed in the figure.
    with pytest.raises(UsageError, match="--model ddrnet_23_slim_imagenet: an ImageNet classifier"):
        load_models([], ["ddrnet_23_slim_imagenet"])
