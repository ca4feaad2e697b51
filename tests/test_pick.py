"""``ddrnet pick``: the frames to label next. The uncertainty and the choice worked out by hand;
real CamVid frames, as images and as a video, picked through the command line; refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from ddrnet.cli import main
from ddrnet.pick import Candidate, choose, uncertainty

from helpers import one_line_cli_error


def test_uncertainty_is_the_mean_shortfall_of_the_winning_probability() -> None:
    assert uncertainty(torch.tensor([[1.0, 0.5], [0.75, 0.75]])) == pytest.approx(0.25)


def _candidate(group: str, position: int, value: float) -> Candidate:
    return Candidate(f"{group}/{position}", None, group, position, value)


def test_choose_takes_the_most_uncertain_at_least_gap_apart() -> None:
    candidates = [
        _candidate("a", 0, 0.30),
        _candidate("a", 1, 0.50),  # the most uncertain
        _candidate("a", 2, 0.45),  # within 2 of a/1: skipped
        _candidate("a", 3, 0.40),  # 2 from a/1: taken
        _candidate("b", 1, 0.45),  # another folder: gap does not apply
        _candidate("b", 2, 0.10),
    ]
    chosen = choose(candidates, 3, gap=2)
    assert [(c.group, c.position) for c in chosen] == [("a", 1), ("b", 1), ("a", 3)]
    assert [c.position for c in choose(candidates, 6, gap=0) if c.group == "a"] == [1, 2, 3, 0]
    assert len(choose(candidates, 10, gap=5)) == 2  # one per group


def test_real_frames_and_a_video_are_picked_through_the_cli(
    camvid_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    frames = sorted((camvid_root / "val").glob("*.png"))[:4]
    folder = tmp_path / "frames"
    folder.mkdir()
    for frame in frames:
        shutil.copy(frame, folder / frame.name)
    video = tmp_path / "drive.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (480, 360))
    for frame in frames:
        writer.write(cv2.imread(str(frame)))
    writer.release()
    out = tmp_path / "to_label"
    argv = [
        "pick",
        str(folder),
        str(video),
        "-n",
        "3",
        "--every",
        "2",
        "--gap",
        "2",
        "-o",
        str(out),
    ]
    assert main(argv) == 0
    assert "6 frames scored" in capsys.readouterr().out  # 4 images, video frames 0 and 2
    listing = json.loads((out / "picks.json").read_text())
    picked, scored = listing["picked"], listing["scored"]
    assert len(scored) == 6 and len(picked) == 3
    values = [p["uncertainty"] for p in picked]
    assert values == sorted(values, reverse=True) and values[0] == max(
        s["uncertainty"] for s in scored
    )
    assert 0 < min(values) and max(values) < 1
    positions = {}
    for pick in picked:
        for other in positions.get(pick["group"], []):
            assert abs(pick["position"] - other) >= 2
        positions.setdefault(pick["group"], []).append(pick["position"])
        written = out / pick["file"]
        if pick["frame"] is None:  # an image: copied byte for byte
            assert written.read_bytes() == Path(pick["source"]).read_bytes()
        else:  # a video frame: the decoded frame itself
            capture = cv2.VideoCapture(str(video))
            for _ in range(pick["frame"] + 1):
                ok, decoded = capture.read()
            capture.release()
            assert written.name == f"drive_f{pick['frame']:06d}.png"
            assert np.array_equal(cv2.imread(str(written)), decoded)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [*(p["file"] for p in picked), "picks.json"]
    )


def test_live_sources_and_an_output_among_the_inputs_are_refused(
    camvid_root: Path, capsys: pytest.CaptureFixture
) -> None:
    error = one_line_cli_error(capsys, ["pick", "camera:0", "-o", "x"])
    assert "camera:0: pick reads files, a camera or stream cannot be read twice" in error
    folder = str(camvid_root / "val")
    error = one_line_cli_error(capsys, ["pick", folder, "-o", folder])
    assert "is the input folder" in error
    error = one_line_cli_error(capsys, ["pick", folder, "--every", "3", "-o", "x"])
    assert error.endswith("--every applies to videos, and none is among the inputs")


def test_what_the_audit_found(
    camvid_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture, caplog
) -> None:
    from ddrnet.predict import unique_stems

    assert unique_stems(["a", "a", "a_1"]) == ["a", "a_2", "a_1"]  # no name given twice
    frame = sorted((camvid_root / "val").glob("*.png"))[0]
    for folder, name in (("d1", "a.png"), ("d2", "a.png"), ("d3", "a_1.png")):
        (tmp_path / folder).mkdir()
        shutil.copy(frame, tmp_path / folder / name)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "d3" / "tiny.png")
    (tmp_path / "broken.avi").write_bytes(b"not a video" * 50)
    out = tmp_path / "out"
    inputs = [str(tmp_path / d) for d in ("d1", "d2", "d3")]
    argv = ["pick", *inputs, inputs[0], str(tmp_path / "broken.avi"), "-o", str(out), "--gap", "0"]
    assert main(argv) == 0
    assert "3 frames scored" in capsys.readouterr().out  # d1 given twice counts once
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "a_1.png", "a_2.png", "picks.json"]
    files = [p["file"] for p in json.loads((out / "picks.json").read_text())["picked"]]
    assert sorted(files) == ["a.png", "a_1.png", "a_2.png"]
    logged = caplog.text
    assert "tiny.png: 8x8, too small to label" in logged and "skipped " in logged
    assert "broken.avi" in logged
    error = one_line_cli_error(capsys, ["pick", inputs[0], "-o", str(out)])
    assert "holds files already; pick into a new or empty folder" in error
    # nothing readable: refused, and no output folder is left behind
    none = tmp_path / "none"
    assert main(["pick", str(tmp_path / "broken.avi"), "-o", str(none)]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.endswith("no input frame could be read") and not none.exists()


def test_a_stopped_or_killed_pick_leaves_no_half_set(
    camvid_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The frames are written into a staging folder and moved out when all are written:
    a pick stopped midway leaves the output empty, and one killed (its staging folder left)
    does not block the next pick into the same folder."""
    import ddrnet.pick

    frames = sorted((camvid_root / "val").glob("*.png"))[:3]
    out = tmp_path / "to_label"
    argv = ["pick", *map(str, frames), "-n", "2", "--gap", "0", "-o", str(out)]
    copies = []
    real_copy = ddrnet.pick.atomic_copy

    def copy_then_stop(source: Path, target: Path) -> None:
        if copies:
            raise KeyboardInterrupt
        real_copy(source, target)
        copies.append(target)

    monkeypatch.setattr(ddrnet.pick, "atomic_copy", copy_then_stop)
    assert main(argv) == 130
    assert copies and copies[0].parent == out / ".partial"
    assert list(out.iterdir()) == []
    (out / ".partial").mkdir()  # what a kill (no clean-up) leaves
    shutil.copy(frames[0], out / ".partial" / frames[0].name)
    monkeypatch.undo()
    assert main(argv) == 0
    files = [p["file"] for p in json.loads((out / "picks.json").read_text())["picked"]]
    whole = sorted([*files, "picks.json"])
    assert sorted(p.name for p in out.iterdir()) == whole

    # Killed while moving the files out, one rename at a time: some frames out, the rest and
    # picks.json still staged. The next pick removes that half set and picks again.
    import ddrnet.atomic

    real_replace, moved = ddrnet.atomic.os.replace, []

    def replace_then_die(source, target) -> None:
        if Path(source).parent == again / ".partial" and Path(target).parent == again:
            if moved:
                raise SystemExit(137)  # a kill: nothing of the pick's clean-up runs
            moved.append(target)
        real_replace(source, target)

    again = tmp_path / "again"
    monkeypatch.setattr(ddrnet.atomic.os, "replace", replace_then_die)
    with pytest.raises(SystemExit):
        ddrnet.pick.write_picks(ddrnet.pick.choose(_candidates(frames), 2, 0), again)
    monkeypatch.undo()
    assert (again / ".partial").is_dir() and not (again / "picks.json").exists()
    assert main([*argv[:-1], str(again)]) == 0
    assert sorted(p.name for p in again.iterdir()) == whole
    # A finished pick is never taken for a stopped one: refused, left whole.
    assert main(argv) == 2 and sorted(p.name for p in out.iterdir()) == whole


def _candidates(frames: list[Path]) -> list:
    """Scored image candidates for ``frames``, the first the most uncertain."""
    from ddrnet.pick import Candidate

    return [
        Candidate(str(frame), None, str(frame.parent), index, 0.5 - index / 10)
        for index, frame in enumerate(frames)
    ]
