"""Steadier video (``ddrnet.engine.temporal``): the blend worked out by hand on a still scene,
the past following a moving object along the optical flow, the flicker counted by hand, and
on real CamVid frames (the validation clip is 15 Hz video) fewer flickering pixels through
``ddrnet eval --smooth`` and ``ddrnet predict --smooth``."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import Subset

from ddrnet.cli import main
from ddrnet.data.camvid import camvid
from ddrnet.engine.recordings import frame_recordings
from ddrnet.engine.temporal import Flicker, TemporalSmoother

from helpers import one_line_cli_error


def test_still_scene_blends_log_probabilities_by_hand() -> None:
    frame = torch.full((1, 3, 64, 64), 100, dtype=torch.uint8)  # no texture: no motion
    first, second = torch.randn(1, 5, 8, 8), torch.randn(1, 5, 8, 8)
    smoother = TemporalSmoother(0.25)
    assert torch.allclose(smoother(frame, first, logits=True), first.log_softmax(1))
    # The past's share: 0.25 * sqrt(1 - the new frame's winning probability), per pixel.
    share = 0.25 * (1 - second.softmax(1).amax(1, keepdim=True)).sqrt()
    expected = share * first.log_softmax(1) + (1 - share) * second.log_softmax(1)
    assert torch.allclose(smoother(frame, second, logits=True), expected, atol=1e-5)
    smoother.reset()  # a new video: the past is gone
    assert torch.allclose(smoother(frame, second, logits=True), second.log_softmax(1))
    # Probabilities (an averaged ensemble) are blended as their logarithms; a new size
    # starts again.
    probabilities = second.softmax(1)[..., :4, :4]
    small = torch.full((1, 3, 32, 32), 100, dtype=torch.uint8)
    assert torch.allclose(smoother(small, probabilities, logits=False), probabilities.log())


@pytest.mark.parametrize("height, width", [(1, 1), (8, 8), (12, 400), (400, 12)])
def test_tiny_and_thin_frames_are_smoothed(height: int, width: int) -> None:
    """OpenCV's flow refuses frames under 12 pixels and crashes the process on ones much
    wider than tall: the smoother gives it a safe shape and still blends as on any still
    scene."""
    frame = torch.full((1, 3, height, width), 90, dtype=torch.uint8)
    grid = (max(1, height // 8), max(1, width // 8))
    first, second = torch.randn(1, 3, *grid), torch.randn(1, 3, *grid)
    smoother = TemporalSmoother(0.5)
    smoother(frame, first, logits=True)
    share = 0.5 * (1 - second.softmax(1).amax(1, keepdim=True)).sqrt()
    expected = share * first.log_softmax(1) + (1 - share) * second.log_softmax(1)
    assert torch.allclose(smoother(frame, second, logits=True), expected, atol=1e-5)


def _textured(shift: int) -> torch.Tensor:
    """A 256x256 frame of smooth random texture, moved ``shift`` pixels to the right."""
    noise = np.random.default_rng(3).integers(0, 256, (256, 256, 3)).astype(np.uint8)
    texture = cv2.GaussianBlur(noise, (0, 0), 2.0)
    texture = cv2.normalize(texture, None, 0, 255, cv2.NORM_MINMAX)
    return torch.from_numpy(np.roll(texture, shift, axis=1)).permute(2, 0, 1)[None]


def _square(left: int) -> torch.Tensor:
    """Logits ``(1, 2, 32, 32)`` (the 1/8 grid) of a hesitant frame: class 1 (probability
    0.6) on rows 10-17, columns ``left``..``left + 7``, class 0 (0.6) elsewhere."""
    logits = torch.zeros(1, 2, 32, 32)
    logits[0, 0] = np.log(1.5)
    logits[0, :, 10:18, left : left + 8] = torch.tensor([0.0, np.log(1.5)])[:, None, None]
    return logits


def test_the_past_follows_the_motion() -> None:
    """Texture and object move 16 pixels (two cells of the 1/8 grid) to the right. Carried
    along the flow, the past agrees with the present. Blended in place (the same frames
    without motion), the hesitant present gives way to the past (its share: 0.95 *
    sqrt(0.4)), and the object would stay where it was."""
    moving, still = TemporalSmoother(0.95), TemporalSmoother(0.95)
    for smoother, shift in ((moving, 16), (still, 0)):
        smoother(_textured(0), _square(10), logits=True)
        ids = smoother(_textured(shift), _square(12), logits=True).argmax(1)[0]
        if smoother is moving:
            assert ids[10:18, 12:20].eq(1).all()  # where the object is now
            assert ids[10:18, 10:12].eq(0).all()  # where it was: background again
        else:  # what the flow avoids
            assert ids[10:18, 10:12].eq(1).all() and ids[10:18, 18:20].eq(0).all()


def test_flicker_counts_by_hand() -> None:
    flicker = Flicker(ignore_index=255)
    labels = [torch.tensor([[0, 0, 1, 255]]), torch.tensor([[0, 1, 1, 255]])]
    flicker.update(torch.tensor([[0, 0, 1, 1]]), labels[0])
    assert np.isnan(flicker.rate)
    # Stable true class at pixels 0 and 2 (1 changes, 3 is unlabelled); pixel 2 flips.
    flicker.update(torch.tensor([[0, 1, 0, 0]]), labels[1])
    assert (flicker.stable, flicker.changed, flicker.rate) == (2, 1, 50.0)
    flicker.start()  # a new video: no pair across the cut
    flicker.update(torch.tensor([[1, 1, 1, 1]]), labels[1])
    assert (flicker.stable, flicker.changed) == (2, 1)


def test_frame_recordings_through_subsets(camvid_root: Path) -> None:
    trainval = camvid(camvid_root, "trainval")
    names = [s.image.name[:6] for s in trainval.samples]
    subset = Subset(Subset(trainval, [0, 100, 400]), [2, 0])
    assert frame_recordings(subset) == [names[400], names[0]]
    assert frame_recordings(Subset(list(range(3)), [0, 1])) == [None, None]


def test_eval_smooth_steadies_real_frames(tmp_path: Path, capsys) -> None:
    """The first 24 frames of CamVid's validation clip (15 Hz)."""
    figures = {}
    for smooth in ([], ["--smooth", "0.8"]):
        report = tmp_path / f"eval{len(smooth)}.json"
        argv = ["eval", "camvid_ddrnet23_slim_train", "--max-images", "24", "--flicker"]
        assert main([*argv, *smooth, "--json", str(report)]) == 0
        document = json.loads(report.read_text())
        figures[len(smooth)] = (document["mIoU"], document["temporal"]["flicker"])
    assert "flicker:" in capsys.readouterr().out
    (plain_miou, plain_flicker), (smooth_miou, smooth_flicker) = figures[0], figures[2]
    assert smooth_flicker < 0.85 * plain_flicker
    assert abs(smooth_miou - plain_miou) < 2.0


def test_predict_smooth_on_an_image_sequence(camvid_root: Path, tmp_path: Path, capsys) -> None:
    """In batches of 4 as one at a time: the frames reach one smoother once each, in order
    (the runner's untimed first pass leaves it alone)."""
    import ddrnet
    from ddrnet.data.io import read_label
    from ddrnet.engine.predictor import Predictor

    frames = sorted((camvid_root / "val").glob("*.png"))[:6]
    out = tmp_path / "out"
    status = main(["predict", *map(str, frames), "-o", str(out), "--smooth", "0.5",
                   "--save", "labels", "confidence", "--batch-size", "4"])  # fmt: skip
    assert status == 0
    assert len(list(out.glob("*_labels.png"))) == len(list(out.glob("*_confidence.png"))) == 6
    predictor, smoother = Predictor(ddrnet.load()), TemporalSmoother(0.5)
    for frame in frames:
        expected = predictor.predict(str(frame), smoother)
        assert np.array_equal(read_label(out / f"{frame.stem}_labels.png"), expected), frame
    capsys.readouterr()
    error = one_line_cli_error(
        capsys, ["predict", str(frames[0]), "-o", str(out), "--smooth", "0.5", "--streams", "2"]
    )
    assert "--smooth with --streams 2" in error
    with pytest.raises(SystemExit):
        main(["predict", str(frames[0]), "--smooth", "1"])
    assert "--smooth: must be > 0 and < 1" in capsys.readouterr().err


def test_a_video_is_smoothed_frame_after_frame(camvid_root: Path, tmp_path: Path) -> None:
    """The video path feeds its frames in order through one smoother: its label frames
    equal the Predictor's with a smoother over the same decoded frames."""
    import ddrnet
    from ddrnet.data.io import read_label
    from ddrnet.engine.predictor import Predictor
    from ddrnet.predict import run_prediction
    from ddrnet.runner import SegmentationRunner

    video = tmp_path / "drive.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 15.0, (480, 360))
    for frame in sorted((camvid_root / "val").glob("*.png"))[:5]:
        writer.write(cv2.imread(str(frame)))
    writer.release()
    model = ddrnet.load("camvid_ddrnet23_slim_train")
    runner = SegmentationRunner(model, torch.device("cpu"), smooth=0.5)
    run_prediction(runner, [str(video)], tmp_path / "out", ["labels"], progress=False,
                   report=lambda _: None)  # fmt: skip
    written = [read_label(p) for p in sorted((tmp_path / "out" / "drive_labels").glob("*.png"))]
    capture, decoded = cv2.VideoCapture(str(video)), []
    while (frame := capture.read()[1]) is not None:
        decoded.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    predictor, smoother = Predictor(model), TemporalSmoother(0.5)
    expected = [predictor.predict_batch([frame], smoother)[0] for frame in decoded]
    plain = [predictor.predict(frame) for frame in decoded]
    assert len(written) == 5
    assert all(np.array_equal(a, b) for a, b in zip(written, expected))
    assert np.array_equal(written[0], plain[0])  # the first frame has no past
    assert not all(np.array_equal(a, b) for a, b in zip(written, plain))


def test_flicker_of_a_single_frame_is_not_measured(tmp_path: Path, capsys) -> None:
    report = tmp_path / "one.json"
    argv = ["eval", "camvid_ddrnet23_slim_train", "--max-images", "1", "--flicker"]
    assert main([*argv, "--json", str(report)]) == 0
    assert "flicker: not measured" in capsys.readouterr().out
    assert json.loads(report.read_text())["temporal"]["flicker"] is None  # plain JSON, no NaN


def test_flicker_of_unrelated_frames_says_it_takes_them_as_one_video(tmp_path, caplog) -> None:
    """A folder data set records no videos: --flicker says it takes the frames, in order, as
    one (CamVid's sequences need no such line)."""
    from ddrnet.data.folder import load_classes_file
    from ddrnet.models import save_model

    from helpers import folder_tree, labelled_model

    root = folder_tree(tmp_path)
    labels = load_classes_file(root / "classes.yaml").labels
    network = labelled_model(labels)
    model = save_model(network, tmp_path / "m.safetensors", network.metadata)
    argv = ["eval", str(model), "--dataset", "folder", "--root", str(root), "--split", "train"]
    with caplog.at_level("WARNING", logger="ddrnet"):
        assert main([*argv, "--flicker"]) == 0
    assert "--flicker and --smooth take its 2 frames, in order, as one video" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="ddrnet"):
        assert main(["eval", "camvid_ddrnet23_slim_train", "--max-images", "2", "--flicker"]) == 0
    assert "as one video" not in caplog.text
