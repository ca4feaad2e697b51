"""Video sources: files, cameras and network streams; live sources skip to their newest frame.

A camera is stood in for by ``FakeCamera``, a capture that delivers frames at its own rate
(or when the test allows), patched in where ``ddrnet.video_source`` opens captures; a stream by a
file served over HTTP on a loopback port.
"""

from __future__ import annotations

import _thread
import functools
import http.server
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import ddrnet
import ddrnet.video_source
from ddrnet.errors import UsageError
from ddrnet.models.weights import bundled_model_path
from ddrnet.predict import expand_inputs, run_prediction
from ddrnet.runner import SegmentationRunner
from ddrnet.video import VideoOutputs
from ddrnet.video_source import VideoSource, is_live, source_stem

from helpers import FakeCamera, run_ddrnet


def _wait_for(condition, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def _frame_count(path: Path) -> int:
    capture = cv2.VideoCapture(str(path))
    frames = 0
    while capture.read()[0]:
        frames += 1
    capture.release()
    return frames


def test_urls_and_cameras_are_video_sources_with_file_safe_names() -> None:
    url = "rtsp://user:pw@cam.local:554/live/ch1.sdp?channel=1"  # '?' is no glob here
    assert expand_inputs([url, "camera:0", "http://127.0.0.1/clip.mp4"]) == (
        [],
        [url, "camera:0", "http://127.0.0.1/clip.mp4"],
    )
    assert source_stem(url) == "ch1"
    assert source_stem("rtsp://10.0.0.2:8554") == "10.0.0.2"
    assert source_stem("camera:1") == "camera1"
    assert source_stem("udp://@:1234/my stream") == "my_stream"
    assert source_stem("drive/day 1.mp4") == "day 1"  # a file: named as an image is
    assert [is_live(s) for s in (url, "camera:0", "srt://h:9000", "http://h/a.mp4", "a.mp4")] == [
        True,
        True,
        True,
        False,
        False,
    ]


def test_a_live_source_hands_out_its_newest_frame_and_counts_the_ones_it_skipped(
    monkeypatch,
) -> None:
    gate = threading.Semaphore(0)
    camera = FakeCamera(10, gate=gate)
    monkeypatch.setattr(ddrnet.video_source, "_open_capture", lambda source: camera)
    with ddrnet.VideoSource("camera:0") as video:  # the package exports it
        assert video.drops and video.frame_count is None
        frames = video.frames()
        for _ in range(3):
            gate.release()
        _wait_for(lambda: video.frames_read == 3)  # frames 0, 1, 2 read, none taken yet
        index, frame = next(frames)
        assert index == 2 and frame.shape == (48, 64, 3) and (frame == 2).all()
        gate.release()
        _wait_for(lambda: video.frames_read == 4)
        assert next(frames)[0] == 3 and video.dropped == 2
        for _ in range(7):  # six more frames, then the end
            gate.release()
        video._thread.join(10)
        assert [index for index, _ in frames] == [9]  # the newest, then nothing
        assert (video.dropped, video.frames_read) == (7, 10)
    assert camera.released


def test_drop_frames_no_gives_every_frame_and_a_file_that_drops_plays_at_its_rate(
    monkeypatch,
) -> None:
    monkeypatch.setattr(ddrnet.video_source, "_open_capture", lambda source: FakeCamera(6))
    with VideoSource("camera:0", drop_frames="no") as video:
        frames = video.frames()
        _wait_for(lambda: video.frames_read == ddrnet.video_source.READ_AHEAD)
        time.sleep(0.05)
        assert video.frames_read == ddrnet.video_source.READ_AHEAD  # it waits for room
        assert [int(frame[0, 0, 0]) for _, frame in frames] == list(range(6))
        assert video.dropped == 0
    with VideoSource("drive.mp4", drop_frames="yes") as video:  # 30 frames per second
        start = time.perf_counter()
        for _ in video.frames():
            pass
        # Frame 5 is read no sooner than 5/30 s after frame 0, as a camera would send it.
        assert time.perf_counter() - start >= 5 / 30 and video.frames_read == 6


@pytest.fixture(scope="module")
def fast_runner() -> SegmentationRunner:
    model = ddrnet.create_model(checkpoint=bundled_model_path("camvid_ddrnet23_slim_fast_train"))
    return SegmentationRunner(model, torch.device("cpu"))


def test_a_live_source_slower_network_keeps_the_sources_timeline(
    monkeypatch, tmp_path, fast_runner
) -> None:
    """Frames every 2 ms, 10 ms or more a frame to segment: the network falls behind, skips
    to the newest frame, and the video repeats results in the skipped frames' places."""
    monkeypatch.setattr(
        ddrnet.video_source, "_open_capture", lambda s: FakeCamera(60, period=0.002)
    )
    segmented = []
    labels = fast_runner.labels

    def recording(images, *options):
        segmented.append(int(images[0][0, 0, 0]))  # frame i is filled with i
        time.sleep(0.01)  # a network slower than the camera on any machine
        return labels(images, *options)

    monkeypatch.setattr(fast_runner, "labels", recording)
    summary = run_prediction(
        fast_runner, ["camera:0"], tmp_path, kinds=["labels", "overlay"], progress=False
    )
    assert segmented == sorted(set(segmented)) and segmented[-1] == 59  # newer each time
    dropped, read = summary.dropped["camera:0"]
    assert read == 60 and dropped == 60 - len(segmented) > 0
    assert len(summary.latencies_ms) == len(segmented)
    assert _frame_count(tmp_path / "camera0_overlay.mp4") == 60
    # A label map for each frame segmented, named by its number: gaps where frames dropped.
    names = sorted(path.name for path in (tmp_path / "camera0_labels").iterdir())
    assert names == [f"{index:06d}.png" for index in segmented]


@pytest.mark.parametrize("source", ["camera:0", "drive.mp4"])
def test_ctrl_c_ends_a_live_source_and_stops_a_file_with_playable_videos(
    monkeypatch, tmp_path, fast_runner, source, request
) -> None:
    camera = FakeCamera(10_000, period=0.005)
    monkeypatch.setattr(ddrnet.video_source, "_open_capture", lambda s: camera)
    monkeypatch.setattr(ddrnet.predict, "expand_inputs", lambda inputs: ([], list(inputs)))
    labels, calls = fast_runner.labels, []
    # interrupt_main does nothing while SIGINT is ignored or not Python's, as a library that
    # an earlier test of this process imported may have left it: Python's own, for this test.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))

    def interrupted_at_the_fourth(images, *options):
        calls.append(1)
        if len(calls) == 4:
            _thread.interrupt_main()  # as Ctrl-C does, once this call returns
        return labels(images, *options)

    monkeypatch.setattr(fast_runner, "labels", interrupted_at_the_fourth)
    out = tmp_path / "out"
    if source == "camera:0":
        summary = run_prediction(fast_runner, [source], out, progress=False)
        assert summary.processed == [source] and not summary.failed
        video = out / "camera0_overlay.mp4"
    else:
        with pytest.raises(KeyboardInterrupt):
            run_prediction(fast_runner, [source], out, progress=False)
        video = out / "drive_overlay.mp4"
    assert 3 <= _frame_count(video) < 10_000  # closed, so playable; the reader stopped
    assert camera.released


@pytest.mark.parametrize("streams", [1, 2])
def test_video_in_video_out_and_corrupt_video(camvid_frames, tmp_path, streams) -> None:
    video = tmp_path / "drive.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (480, 360))
    noise = np.random.default_rng(0).integers(0, 256, (360, 480, 3), dtype=np.uint8)
    pictures = [cv2.imread(str(frame)) for frame in camvid_frames] + [noise, noise * 0]
    for picture in pictures:
        writer.write(picture)
    writer.release()
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x01garbage" * 100)
    # The trained bundled model: its predictions (and so its legends) follow the frames.
    runner = SegmentationRunner(
        ddrnet.create_model(checkpoint=bundled_model_path()), torch.device("cpu"), streams=streams
    )
    summary = run_prediction(
        runner,
        [str(video), str(tmp_path / "broken.mp4")],
        tmp_path / "out",
        progress=False,
        report=lambda _: None,
    )
    assert str(tmp_path / "broken.mp4") in summary.failed
    assert len(summary.latencies_ms) == 5
    capture = cv2.VideoCapture(str(tmp_path / "out" / "drive_overlay.mp4"))
    # Every frame written, although per-frame legends (classes present) differ in width:
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 5
    assert int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)) == 360
    widths = set()
    for picture in pictures:
        rgb = cv2.cvtColor(picture, cv2.COLOR_BGR2RGB)
        (labels,), _, _ = runner.labels([rgb])
        widths.add(runner.pictures(rgb, labels, ["overlay"])["overlay"].shape[1])
    assert len(widths) > 1  # what made the writer drop frames before


def test_two_videos_of_one_name_keep_both_outputs(camvid_frames, tmp_path, fast_runner) -> None:
    for folder, frames in (("a", camvid_frames[:2]), ("b", camvid_frames[:3])):
        (tmp_path / folder).mkdir()
        with VideoOutputs(tmp_path / folder, "drive", 10.0) as video:
            for frame in frames:
                video.write({"clip": cv2.cvtColor(cv2.imread(str(frame)), cv2.COLOR_BGR2RGB)})
    sources = [str(tmp_path / "a" / "drive_clip.mp4"), str(tmp_path / "b" / "drive_clip.mp4")]
    fast_runner.labels([np.zeros((360, 480, 3), np.uint8)])  # warmed up before the job
    summary = run_prediction(fast_runner, sources, tmp_path / "out", progress=False)
    assert summary.processed == sources and summary.warmup_ms is None  # no first pass in it
    assert _frame_count(tmp_path / "out" / "drive_clip_overlay.mp4") == 2
    assert _frame_count(tmp_path / "out" / "drive_clip_1_overlay.mp4") == 3


def test_video_outputs_repeat_a_picture_and_refuse_another_size(tmp_path) -> None:
    picture = np.zeros((32, 48, 3), np.uint8)
    with VideoOutputs(tmp_path, "clip", 10.0) as video:
        video.write({"overlay": picture})
        video.write({"overlay": picture + 200}, times=3)
        with pytest.raises(ValueError, match="frame 4 is 40x32, the video 48x32"):
            video.write({"overlay": np.zeros((32, 40, 3), np.uint8)})
    assert video.paths == [tmp_path / "clip_overlay.mp4"] and video.frames == 4
    assert _frame_count(tmp_path / "clip_overlay.mp4") == 4


def test_a_video_served_over_http_is_segmented(camvid_frames, tmp_path, fast_runner) -> None:
    served = tmp_path / "served"
    served.mkdir()
    # Motion JPEG in AVI: readable front to back. (An mp4 from OpenCV keeps its index at the
    # end, which FFmpeg fetches with a range request that this test server does not answer.)
    writer = cv2.VideoWriter(
        str(served / "street.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (480, 360)
    )
    for frame in camvid_frames:
        writer.write(cv2.imread(str(frame)))
    writer.release()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/street.avi"
        summary = run_prediction(fast_runner, [url], tmp_path / "out", max_frames=2, progress=False)
    finally:
        server.shutdown()
        server.server_close()
    assert summary.processed == [url] and summary.dropped == {}  # a file: every frame
    assert _frame_count(tmp_path / "out" / "street_overlay.mp4") == 2


def test_sources_that_cannot_be_opened_are_one_line_each(tmp_path) -> None:
    checkpoint = ["--checkpoint", "camvid_ddrnet23_slim_fast_train", "-o", str(tmp_path / "out")]
    result = run_ddrnet("predict", "rtsp://127.0.0.1:9/none", "camera:99", *checkpoint)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == [
        "WARNING ddrnet.predict: skipped rtsp://127.0.0.1:9/none: cannot open the video: "
        "unreachable or refused, no stream at that address, or not a video (waited 10 s at "
        "most)",
        "WARNING ddrnet.predict: skipped camera:99: cannot open the video: no such camera, or "
        "it is in use",
        "2 of 2 inputs failed (listed above)",
    ]
    # A camera that is no number names nothing: refused before the model is loaded.
    named = run_ddrnet("predict", "camera:front", *checkpoint)
    assert named.returncode == 2
    assert named.stderr.strip().endswith("input camera:front: give a camera number, e.g. camera:0")
    bad = run_ddrnet("predict", "camera:0", "--drop-frames", "sometimes")
    assert bad.returncode == 2 and "--drop-frames: invalid choice: 'sometimes'" in bad.stderr
    none = run_ddrnet("predict", "camera:0", "--max-frames", "0")
    assert none.returncode == 2 and "argument --max-frames: must be" in none.stderr


def test_an_error_in_the_reading_thread_reaches_the_reader(monkeypatch) -> None:
    class Failing(FakeCamera):
        def read(self):
            if self.reads == 3:
                raise cv2.error("decoder crashed")
            return super().read()

    monkeypatch.setattr(ddrnet.video_source, "_open_capture", lambda source: Failing(10))
    with VideoSource("drive.mp4") as video:
        taken = []
        with pytest.raises(cv2.error, match="decoder crashed"):
            for index, _ in video.frames():
                taken.append(index)
    assert taken == [0, 1, 2]  # every frame before the error, then the error itself


def test_a_videos_labels_are_a_folder_of_indexed_pngs_only_when_asked(
    camvid_frames, tmp_path, fast_runner
) -> None:
    with VideoOutputs(tmp_path, "drive", 10.0) as video:
        for frame in camvid_frames:
            video.write({"clip": cv2.cvtColor(cv2.imread(str(frame)), cv2.COLOR_BGR2RGB)})
    source = str(tmp_path / "drive_clip.mp4")
    run_prediction(fast_runner, [source], tmp_path / "labels", kinds=["labels"], progress=False)
    assert sorted(p.name for p in (tmp_path / "labels").iterdir()) == ["drive_clip_labels"]
    capture = cv2.VideoCapture(source)
    for index in range(3):
        decoded = cv2.cvtColor(capture.read()[1], cv2.COLOR_BGR2RGB)
        written = Image.open(tmp_path / "labels" / "drive_clip_labels" / f"{index:06d}.png")
        (expected,), _, _ = fast_runner.labels([decoded])
        assert written.mode == "P" and np.array_equal(np.asarray(written), expected)
    assert written.getpalette()[:6] == [*fast_runner.palette[0], *fast_runner.palette[1]]
    run_prediction(fast_runner, [source], tmp_path / "default", progress=False)
    assert sorted(p.name for p in (tmp_path / "default").iterdir()) == ["drive_clip_overlay.mp4"]


def test_the_command_says_how_many_frames_a_live_source_skipped(
    monkeypatch, tmp_path, capsys
) -> None:
    from ddrnet.cli import main

    command = ["predict", "camera:0", "--checkpoint", "camvid_ddrnet23_slim_fast_train"]
    # 48x64 frames take milliseconds: 2 frames a second are all segmented (a frame is lost
    # only if the next two come while one is segmented) ...
    monkeypatch.setattr(ddrnet.video_source, "_open_capture", lambda s: FakeCamera(4, period=0.5))
    assert main([*command, "-o", str(tmp_path / "slow")]) == 0
    assert "camera:0: all 4 frames segmented" in capsys.readouterr().out
    # ... 1000 a second are not.
    monkeypatch.setattr(
        ddrnet.video_source, "_open_capture", lambda s: FakeCamera(200, period=0.001)
    )
    assert main([*command, "-o", str(tmp_path / "fast")]) == 0
    said = re.search(
        r"camera:0: (\d+) of 200 frames skipped for newer ones", capsys.readouterr().out
    )
    assert said and int(said.group(1)) > 0


def test_a_killed_video_leaves_the_earlier_one_whole(tmp_path) -> None:
    """Videos are written under a temporary name and renamed when closed: a job killed
    mid-video (its outputs never closed) leaves the earlier run's video playable, and the next
    run clears the temporary it left."""
    frame = {"overlay": np.full((32, 48, 3), 120, np.uint8)}
    with VideoOutputs(tmp_path, "drive", 10.0) as video:
        video.write(frame, times=6)
    killed = VideoOutputs(tmp_path, "drive", 10.0)
    killed.write(frame, times=2)  # ... and the process dies: no close()
    assert _frame_count(tmp_path / "drive_overlay.mp4") == 6
    assert len(list(tmp_path.glob(".drive_overlay.mp4.*.tmp.mp4"))) == 1
    killed._writers.clear()  # what the kill took with it
    with VideoOutputs(tmp_path, "drive", 10.0) as video:
        video.write(frame, times=3)
    assert _frame_count(tmp_path / "drive_overlay.mp4") == 3
    assert [p.name for p in tmp_path.iterdir()] == ["drive_overlay.mp4"]


@pytest.mark.slow
def test_sigterm_stops_predict_with_its_video_playable(camvid_frames, tmp_path) -> None:
    """SIGTERM (systemd, docker stop, timeout) stops the job as Ctrl-C stops a file: the
    video so far closed under its name, one line, exit status 143; it used to kill the
    process at once, leaving an unplayable temporary and no video."""
    pictures = [cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB) for f in camvid_frames]
    with VideoOutputs(tmp_path, "drive", 10.0) as video:
        for index in range(60):  # 6 s when replayed at its frame rate
            video.write({"clip": pictures[index % len(pictures)]})
    output = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, "-m", "ddrnet.cli", "predict", str(tmp_path / "drive_clip.mp4"),
         "--checkpoint", "camvid_ddrnet23_slim_fast_train", "--drop-frames", "yes",
         "-o", str(output)],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        _wait_for(lambda: any(output.glob(".drive_clip_overlay.mp4.*")), seconds=120)
        time.sleep(1.0)  # a few frames segmented
        process.send_signal(signal.SIGTERM)
        _, errors = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 143, errors[-2000:]
    assert errors.strip().splitlines()[-1] == "terminated (SIGTERM)" and "Traceback" not in errors
    assert [p.name for p in output.iterdir()] == ["drive_clip_overlay.mp4"]
    assert 0 < _frame_count(output / "drive_clip_overlay.mp4") < 60


def test_a_stopped_video_keeps_the_finished_one(tmp_path) -> None:
    """Ctrl-C (or an error) in a second run over the same video: the first run's finished
    file stays; the frames so far go beside it as .partial.mp4. Without an earlier file,
    the partial video takes the name."""
    frame = {"overlay": np.full((32, 48, 3), 120, np.uint8)}
    with VideoOutputs(tmp_path, "drive", 10.0) as video:
        video.write(frame, times=6)
    with pytest.raises(KeyboardInterrupt):
        with VideoOutputs(tmp_path, "drive", 10.0) as video:
            video.write(frame, times=2)
            raise KeyboardInterrupt
    assert _frame_count(tmp_path / "drive_overlay.mp4") == 6
    assert _frame_count(tmp_path / "drive_overlay.partial.mp4") == 2
    with pytest.raises(KeyboardInterrupt):
        with VideoOutputs(tmp_path, "first", 10.0) as video:
            video.write(frame, times=2)
            raise KeyboardInterrupt
    assert _frame_count(tmp_path / "first_overlay.mp4") == 2


def test_a_video_that_cannot_be_written_whole_replaces_nothing(tmp_path) -> None:
    """OpenCV's writer reports no error: on a full disk it leaves a file cut short, which
    replaced the earlier run's video and the job said nothing. The file is read back first."""
    frame = {"overlay": np.full((32, 48, 3), 120, np.uint8)}
    with VideoOutputs(tmp_path, "drive", 10.0) as video:
        video.write(frame, times=6)
    video = VideoOutputs(tmp_path, "drive", 10.0)
    video.write(frame, times=3)
    writer, temporary = video._writers["overlay"], video._temporaries["overlay"]

    class CutShort:  # what a full disk leaves: the end of the file, an MP4's index, missing
        def release(self) -> None:
            writer.release()
            temporary.write_bytes(temporary.read_bytes()[:200])

    video._writers["overlay"] = CutShort()
    with pytest.raises(
        OSError, match="could not be written whole .a full disk.*earlier one is kept"
    ):
        video.close()
    assert _frame_count(tmp_path / "drive_overlay.mp4") == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["drive_overlay.mp4"]


def test_ctrl_c_in_a_file_replayed_at_its_rate_keeps_the_finished_videos(
    monkeypatch, tmp_path, fast_runner, request
) -> None:
    """--drop-frames yes on a file replays it as a camera would deliver it; Ctrl-C stops it
    as it stops any file (it ended it as a camera's end, and the summary said "all N frames
    segmented"): the finished run's video stays, the frames so far go to .partial.mp4."""
    monkeypatch.setattr(ddrnet.video_source, "_open_capture", lambda s: FakeCamera(6, period=0.01))
    monkeypatch.setattr(ddrnet.predict, "expand_inputs", lambda inputs: ([], list(inputs)))
    out = tmp_path / "out"
    run_prediction(fast_runner, ["drive.mp4"], out, progress=False, drop_frames="yes")
    finished = _frame_count(out / "drive_overlay.mp4")
    assert finished == 6
    monkeypatch.setattr(
        ddrnet.video_source, "_open_capture", lambda s: FakeCamera(10_000, period=0.005)
    )
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
    labels, calls = fast_runner.labels, []

    def interrupted_at_the_fourth(images, *options):
        calls.append(1)
        if len(calls) == 4:
            _thread.interrupt_main()
        return labels(images, *options)

    monkeypatch.setattr(fast_runner, "labels", interrupted_at_the_fourth)
    with pytest.raises(KeyboardInterrupt):
        run_prediction(fast_runner, ["drive.mp4"], out, progress=False, drop_frames="yes")
    assert _frame_count(out / "drive_overlay.mp4") == finished
    assert 3 <= _frame_count(out / "drive_overlay.partial.mp4") < 10_000


def _labels_run(folder: Path, frames: int, value: int, close: bool = True) -> VideoOutputs:
    """A run that writes ``frames`` label maps filled with ``value`` into ``folder``."""
    video = VideoOutputs(folder, "drive", 10.0, labels=True)
    for index in range(frames):
        video.add(index, {}, np.full((4, 6), value, np.uint8))
    if close:
        video.close()
    return video


def _label_values(folder: Path) -> dict[str, int]:
    return {p.name: int(np.asarray(Image.open(p)).max()) for p in sorted(folder.iterdir())}


def test_a_label_folder_is_replaced_whole_and_a_kill_leaves_the_earlier_one(tmp_path) -> None:
    """Label maps fill a temporary folder that takes the name when the video is closed: a
    rerun with fewer frames leaves none of the earlier run's, a killed run leaves the earlier
    folder as it was (the next run clears what it left), and a stopped one puts its frames
    beside it in ``<stem>_labels.partial``."""
    _labels_run(tmp_path, 5, 1)
    _labels_run(tmp_path, 3, 2)
    assert _label_values(tmp_path / "drive_labels") == {f"{i:06d}.png": 2 for i in range(3)}
    killed = _labels_run(tmp_path, 2, 3, close=False)
    killed._encoder.close()  # the frames are on disk; the process dies before its close
    assert _label_values(tmp_path / "drive_labels") == {f"{i:06d}.png": 2 for i in range(3)}
    assert len(list(tmp_path.glob(".drive_labels.*.tmp"))) == 1
    with pytest.raises(KeyboardInterrupt):
        with VideoOutputs(tmp_path, "drive", 10.0, labels=True) as video:
            video.add(0, {}, np.full((4, 6), 4, np.uint8))
            raise KeyboardInterrupt
    assert _label_values(tmp_path / "drive_labels") == {f"{i:06d}.png": 2 for i in range(3)}
    assert _label_values(tmp_path / "drive_labels.partial") == {"000000.png": 4}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["drive_labels", "drive_labels.partial"]
    plain = tmp_path / "plain"
    plain.mkdir()  # the folder has the mode mkdir gives, not mkdtemp's owner-only one
    assert (tmp_path / "drive_labels").stat().st_mode == plain.stat().st_mode


def test_a_kill_between_the_renames_of_a_label_folder_loses_nothing(tmp_path, monkeypatch) -> None:
    """The earlier folder is renamed aside before the new one takes its name: a kill between
    the two left the name empty, and the next run deleted the earlier folder as a stale
    temporary. It now goes back to its name."""
    import os

    _labels_run(tmp_path, 3, 2)
    second = _labels_run(tmp_path, 2, 3, close=False)
    second._encoder.close()  # its label maps are written
    real_replace, calls = os.replace, []

    class Killed(BaseException):
        pass

    def replace(source, target):
        calls.append(target)
        if len(calls) == 2:  # the earlier folder is aside; the new one not yet in
            raise Killed
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(Killed):
        second.close()
    monkeypatch.setattr(os, "replace", real_replace)
    assert not (tmp_path / "drive_labels").exists()
    VideoOutputs(tmp_path, "drive", 10.0, labels=True)._clear_stale()  # the next run's first step
    assert _label_values(tmp_path / "drive_labels") == {f"{i:06d}.png": 2 for i in range(3)}


def test_a_label_folder_with_other_files_is_not_replaced(
    camvid_frames, tmp_path, fast_runner
) -> None:
    (tmp_path / "drive_labels").mkdir()
    (tmp_path / "drive_labels" / "000000.png").write_bytes(b"mine")
    (tmp_path / "drive_labels" / "notes.txt").write_text("corrected by hand")
    with pytest.raises(UsageError, match=r"drive_labels holds 'notes.txt'.*--output"):
        _labels_run(tmp_path, 1, 1)
    assert (tmp_path / "drive_labels" / "000000.png").read_bytes() == b"mine"
    assert not list(tmp_path.glob(".drive*"))
    # predict refuses the video before its first frame: no overlay video of it either.
    with VideoOutputs(tmp_path / "in", "drive", 10.0) as video:
        for frame in camvid_frames:
            video.write({"clip": cv2.cvtColor(cv2.imread(str(frame)), cv2.COLOR_BGR2RGB)})
    (tmp_path / "drive_clip_labels").mkdir()
    (tmp_path / "drive_clip_labels" / "notes.txt").write_text("corrected by hand")
    source = str(tmp_path / "in" / "drive_clip.mp4")
    summary = run_prediction(
        fast_runner, [source], tmp_path, kinds=["labels", "overlay"], progress=False
    )
    assert list(summary.failed) == [source]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["drive_clip_labels", "drive_labels", "in"]


def test_a_rerun_clears_a_killed_runs_videos_of_every_kind_and_only_its_own(tmp_path) -> None:
    """A killed run that wrote an overlay and a side video leaves their temporaries; a rerun
    asking only for labels removes them too, but not those of a video named ``drive_clip``."""
    frame = np.full((32, 48, 3), 120, np.uint8)
    killed = VideoOutputs(tmp_path, "drive", 10.0)
    killed.write({"overlay": frame, "side": frame})
    other = VideoOutputs(tmp_path, "drive_clip", 10.0)
    other.write({"overlay": frame})
    assert len(list(tmp_path.glob(".*.tmp.mp4"))) == 3
    _labels_run(tmp_path, 1, 1)
    left = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert len(left) == 1 and left[0].startswith(".drive_clip_overlay.mp4.")
    for video in (killed, other):
        video._writers.clear()  # what the kill took with it
    # ... and a file where the label folder goes is named.
    shutil.rmtree(tmp_path / "drive_labels")
    (tmp_path / "drive_labels").write_text("a file")
    with pytest.raises(NotADirectoryError) as error:
        _labels_run(tmp_path, 1, 1)
    assert error.value.filename == str(tmp_path / "drive_labels")


def test_a_folder_in_the_way_of_an_output_is_named(tmp_path) -> None:
    from ddrnet.data.io import write_png

    (tmp_path / "drive_overlay.mp4").mkdir()
    with pytest.raises(IsADirectoryError) as error:
        VideoOutputs(tmp_path, "drive", 10.0).write({"overlay": np.zeros((8, 8, 3), np.uint8)})
    assert error.value.filename == str(tmp_path / "drive_overlay.mp4")
    (tmp_path / "a.png").mkdir()  # the rename of an atomic write fails on it
    with pytest.raises(IsADirectoryError) as error:
        write_png(tmp_path / "a.png", np.zeros((4, 4), np.uint8))
    assert error.value.filename == str(tmp_path / "a.png")
    assert not list(tmp_path.glob(".a.png.*"))


def test_a_cut_off_video_is_segmented_as_far_as_it_goes_and_counts_as_failed(
    camvid_frames, tmp_path, fast_runner, caplog
) -> None:
    """A damaged copy of a video segmented before: the whole video's results stay, the frames
    read go to .partial.mp4, and the input counts as failed (the command exits 1)."""
    whole = tmp_path / "whole.avi"
    writer = cv2.VideoWriter(str(whole), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (480, 360))
    for frame in (camvid_frames * 4)[:10]:
        writer.write(cv2.imread(str(frame)))
    writer.release()
    data = whole.read_bytes()
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "cut.avi").write_bytes(whole.read_bytes())
    out = tmp_path / "out"
    run_prediction(fast_runner, [str(tmp_path / "in" / "cut.avi")], out, progress=False,
                   report=lambda _: None)  # fmt: skip
    (tmp_path / "in" / "cut.avi").write_bytes(data[: len(data) // 2])
    with caplog.at_level("WARNING"):
        summary = run_prediction(fast_runner, [str(tmp_path / "in" / "cut.avi")], out,
                                 progress=False, report=lambda _: None)  # fmt: skip
    decoded = len(summary.latencies_ms)
    assert 0 < decoded < 10 and list(summary.failed) == [str(tmp_path / "in" / "cut.avi")]
    assert f"cut.avi: {decoded} of its 10 frames could be decoded" in caplog.text
    assert _frame_count(out / "cut_overlay.mp4") == 10
    assert _frame_count(out / "cut_overlay.partial.mp4") == decoded


def test_frames_dropped_before_the_first_result_get_it(tmp_path) -> None:
    """A live source whose frames 0-2 went by before the network was ready: the video still
    starts at the source's frame 0 (the first result stands in), and keeps its length."""
    first = {"overlay": np.full((32, 48, 3), 40, np.uint8)}
    second = {"overlay": np.full((32, 48, 3), 200, np.uint8)}
    with VideoOutputs(tmp_path, "cam", 10.0) as video:
        video.add(3, first)
        video.add(6, second)  # 4 and 5 dropped: the first result again
    assert _frame_count(tmp_path / "cam_overlay.mp4") == 7


def test_a_video_that_cannot_be_created_names_the_video() -> None:
    """sysfs takes no new files, whoever we are: the error names the video asked for, not
    the temporary it is written under."""
    from ddrnet.atomic import temporary_beside

    with pytest.raises(OSError) as error:
        temporary_beside(Path("/sys/drive_overlay.mp4"), ".mp4")
    assert error.value.filename == "/sys/drive_overlay.mp4"
