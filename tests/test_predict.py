"""Prediction on real frames: API, batch job, bad inputs (videos: test_video.py)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ddrnet
from ddrnet.models.weights import bundled_model_path
from ddrnet.predict import expand_inputs, run_prediction
from ddrnet.runner import SegmentationRunner

from helpers import run_ddrnet


def test_predictor_returns_label_maps_at_input_resolution(camvid_model_file, camvid_frames) -> None:
    predictor = ddrnet.Predictor(ddrnet.create_model(checkpoint=camvid_model_file))
    labels = predictor.predict(camvid_frames[0])
    assert labels.shape == (360, 480) and labels.dtype == np.uint8 and labels.max() < 11
    odd = np.asarray(Image.open(camvid_frames[0]).convert("RGB"))[:359, :479]
    assert predictor.predict(odd).shape == (359, 479)
    probabilities = predictor.predict_proba(camvid_frames[0])
    assert probabilities.shape == (11, 360, 480)
    assert np.allclose(probabilities.sum(axis=0), 1.0, atol=1e-4)
    assert np.array_equal(probabilities.argmax(axis=0), labels)


def test_inference_runs_batch_norm_folded_and_leaves_the_callers_model_alone(camvid_frames) -> None:
    """Predictor, predict, eval and serve run an eval-mode copy with Conv+BN folded (1.09-1.14x
    on a 2-core Zen 2), in channels_last; it computes the trained model's logits."""
    from torch import nn

    from ddrnet.engine.inference import normalize, to_fast_layout

    model = ddrnet.create_model(checkpoint=bundled_model_path("camvid_ddrnet23_slim_train"))
    model.train()
    batch_norms = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    fast, memory_format = to_fast_layout(model)
    remaining = sum(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    # Only DAPPM's and the heads' pre-activation BNs (BN -> ReLU -> conv) stay.
    assert batch_norms > 50 and 0 < remaining < 20
    assert model.training and not fast.training and memory_format == torch.channels_last
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == batch_norms
    assert fast.metadata == model.metadata
    image = torch.from_numpy(np.array(Image.open(camvid_frames[0]).convert("RGB"))).permute(2, 0, 1)
    batch = normalize(image[None], model.metadata.mean, model.metadata.std)
    with torch.no_grad():
        reference = model.eval()(batch)
        folded = fast(batch.contiguous(memory_format=memory_format))
    assert float((folded - reference).abs().max()) < 1e-4 * float(reference.abs().max())


def test_flip_and_multiscale_average_probabilities(camvid_model_file, camvid_frames) -> None:
    model = ddrnet.create_model(checkpoint=camvid_model_file)
    plain = ddrnet.Predictor(model).predict_proba(camvid_frames[0])
    tta = ddrnet.Predictor(model, scales=(0.75, 1.0), flip=True).predict_proba(camvid_frames[0])
    assert tta.shape == plain.shape and np.allclose(tta.sum(axis=0), 1.0, atol=1e-4)
    assert not np.allclose(tta, plain)


def test_batch_job_writes_outputs_and_skips_bad_files(
    camvid_model_file, camvid_frames, tmp_path
) -> None:
    bad = tmp_path / "inputs"
    bad.mkdir()
    (bad / "notes.png").write_text("not an image")
    truncated = bad / "truncated.png"
    truncated.write_bytes(camvid_frames[1].read_bytes()[:2000])
    grey = bad / "grey16.png"
    Image.fromarray((np.arange(64 * 80).reshape(64, 80) * 16).astype(np.uint16)).save(grey)
    runner = SegmentationRunner(
        ddrnet.create_model(checkpoint=camvid_model_file), torch.device("cpu")
    )
    # What an earlier run killed mid-write left of this run's outputs goes; others stay.
    (tmp_path / "out").mkdir()
    stale = f".{camvid_frames[0].stem}_confidence.png.k1ll3d00.tmp"
    (tmp_path / "out" / stale).write_bytes(b"partial")
    (tmp_path / "out" / ".elsewhere_overlay.png.k1ll3d00.tmp").write_bytes(b"partial")
    lines: list[str] = []
    warnings: list[str] = []
    summary = run_prediction(
        runner,
        [str(camvid_frames[0]), str(camvid_frames[2]), str(bad)],
        tmp_path / "out",
        kinds=("labels", "overlay", "side"),
        batch_size=2,
        progress=False,
        report=lines.append,
        warn=warnings.append,
    )
    assert sorted(Path(p).name for p in summary.failed) == ["notes.png", "truncated.png"]
    assert len(summary.processed) == 3  # two frames and the converted 16-bit image
    labels = np.asarray(Image.open(tmp_path / "out" / f"{camvid_frames[0].stem}_labels.png"))
    assert labels.shape == (360, 480) and labels.max() < 11
    overlay = Image.open(tmp_path / "out" / f"{camvid_frames[0].stem}_overlay.png")
    side = Image.open(tmp_path / "out" / f"{camvid_frames[0].stem}_side.png")
    assert overlay.height == 360 and overlay.width > 480  # legend on the right
    assert side.width > overlay.width
    assert Image.open(tmp_path / "out" / "grey16_labels.png").size == (80, 64)
    assert any("ms" in line and camvid_frames[0].name in line for line in lines)
    assert not any("skipped" in line for line in lines)  # failures go to `warn` only
    assert len(warnings) == 2 and any("notes.png" in line for line in warnings)
    assert all(line.startswith("skipped: ") for line in warnings)
    hidden = [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]
    assert hidden == [".elsewhere_overlay.png.k1ll3d00.tmp"]


def test_pictures_by_hand_and_png_files_read_back_exactly(tmp_path) -> None:
    """colorize, overlay and the legend's shares against hand values; an RGB picture and an
    indexed label map written by write_png read back pixel for pixel."""
    from ddrnet.data.io import read_label, read_rgb, write_png
    from ddrnet.render import colorize, legend_panel, overlay, with_legend

    palette = [[255, 0, 0], [0, 128, 0], [10, 20, 30]]
    labels = np.array([[0, 1, 2, 255]], dtype=np.uint8)  # 255: ignore, drawn black
    colours = colorize(labels, palette, 3)
    assert colours.tolist() == [[[255, 0, 0], [0, 128, 0], [10, 20, 30], [0, 0, 0]]]
    as_int32 = colorize(np.array([[2, 300]], dtype=np.int32), palette, 3)  # > 256 classes
    assert as_int32.tolist() == [[[10, 20, 30], [0, 0, 0]]]  # past the table: black
    # A model of 300 classes: every class keeps its own colour, in pictures and legends.
    many = [[i % 256, (i * 7) % 256, 5] for i in range(300)]
    wide_ids = np.array([[280, 299, 300, 1000]], dtype=np.int32)
    assert colorize(wide_ids, many, 300).tolist() == [
        [[24, 168, 5], [43, 45, 5], [0, 0, 0], [0, 0, 0]]
    ]
    panel = legend_panel([f"c{i}" for i in range(300)], many, 40, [280], {280: 100.0})
    assert (panel == [24, 168, 5]).all(axis=-1).any()
    image = np.array([[[100, 100, 100]] * 4], dtype=np.uint8)
    # 0.75 * 100 + 0.25 * colour, rounded: 75 + 63.75, 75 + 0, 75 + 32, 75 + 2.5, 75 + 7.5
    assert overlay(image, colours, 0.25).tolist() == [
        [[139, 75, 75], [75, 107, 75], [78, 80, 82], [75, 75, 75]]
    ]
    with pytest.raises(ValueError, match="differ in size"):
        overlay(image[:, :2], colours)
    names = ["road", "tree", "sign"]
    grid = np.array([[0, 0, 0, 1]] * 4, dtype=np.uint8)  # road 75%, tree 25%, no sign
    picture = with_legend(np.zeros((4, 4, 3), np.uint8), grid, names, palette)
    expected = legend_panel(names, palette, 4, [0, 1], {0: 75.0, 1: 25.0})
    assert np.array_equal(picture[:, 4:], expected)
    # A video's legend lists every class, drawn once and reused frame after frame.
    every = legend_panel(names, palette, 4)
    for _ in range(2):
        framed = with_legend(np.zeros((4, 4, 3), np.uint8), grid, names, palette, every_class=True)
        assert np.array_equal(framed[:, 4:], every) and framed.flags.writeable
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    write_png(tmp_path / "rgb.png", rgb)
    assert np.array_equal(read_rgb(tmp_path / "rgb.png"), rgb)
    ids = rng.integers(0, 3, (37, 53), dtype=np.uint8)
    write_png(tmp_path / "ids.png", ids, palette)
    indexed = Image.open(tmp_path / "ids.png")
    assert indexed.mode == "P" and np.array_equal(np.asarray(indexed), ids)
    assert indexed.getpalette()[:9] == [255, 0, 0, 0, 128, 0, 10, 20, 30]
    wide = np.array([[0, 300], [65535, 7]], dtype=np.int32)  # ids of a 300+ class model
    write_png(tmp_path / "wide.png", wide, palette)
    assert np.array_equal(read_label(tmp_path / "wide.png"), wide)


def test_a_failed_write_stops_the_job_with_its_error(
    camvid_model_file, camvid_frames, tmp_path, monkeypatch
) -> None:
    """Files are written in a thread of their own: its error still reaches the caller (the
    CLI prints it in one line), and what was written before stays."""
    import errno

    import ddrnet.predict as predict_module

    real_write = predict_module.write_png
    calls = []

    def write_until_full(path, array, palette=None):
        calls.append(path)
        if len(calls) > 2:  # the second image's labels: the disk is full
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_write(path, array, palette)

    monkeypatch.setattr(predict_module, "write_png", write_until_full)
    runner = SegmentationRunner(
        ddrnet.create_model(checkpoint=camvid_model_file), torch.device("cpu")
    )
    out = tmp_path / "out"
    with pytest.raises(OSError, match="No space left"):
        run_prediction(
            runner, [str(f) for f in camvid_frames[:3]], out, progress=False, report=print
        )
    first = camvid_frames[0].stem
    assert sorted(p.name for p in out.iterdir()) == [f"{first}_labels.png", f"{first}_overlay.png"]


def test_inputs_that_match_nothing_are_named(tmp_path) -> None:
    with pytest.raises(ValueError, match="nowhere.png"):
        expand_inputs([str(tmp_path / "nowhere.png")])
    with pytest.raises(ValueError, match="matches no files"):
        expand_inputs([str(tmp_path / "*.jpg")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="contains no images or videos"):
        expand_inputs([str(tmp_path / "empty")])
    (tmp_path / "empty" / "drive.mp4").write_bytes(b"")  # a folder's videos are inputs too
    assert expand_inputs([str(tmp_path / "empty")]) == ([], [str(tmp_path / "empty/drive.mp4")])


def test_cli_predict_exit_status_reports_failures(
    camvid_model_file, camvid_frames, tmp_path
) -> None:
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff broken jpeg")
    result = run_ddrnet(
        "predict",
        str(camvid_frames[0]),
        str(tmp_path / "bad.jpg"),
        "--checkpoint",
        str(camvid_model_file),
        "-o",
        str(tmp_path / "out"),
    )
    assert result.returncode == 1
    assert "1 of 2 inputs failed" in result.stderr and "skipped: " in result.stderr
    assert "bad.jpg" in result.stderr and "bad.jpg" not in result.stdout
    assert "1 input segmented" in result.stdout and "latency per image: mean" in result.stdout
    # kernel creation (OpenVINO: compilation) is reported apart, not as the frame's latency
    assert re.search(r"not counted: a first, untimed pass of \d+ ms", result.stdout)
    assert "Traceback" not in result.stderr
    assert (tmp_path / "out" / f"{camvid_frames[0].stem}_overlay.png").is_file()


@pytest.fixture(scope="module")
def onnx_files(camvid_model_file, tmp_path_factory) -> dict[str, Path]:
    """The test model exported as a logits file and as a labels (argmax) file."""
    from ddrnet.deploy import export_onnx

    folder = tmp_path_factory.mktemp("onnx")
    model = ddrnet.create_model(checkpoint=camvid_model_file)
    return {
        "logits": export_onnx(model, folder / "camvid.onnx"),
        "argmax": export_onnx(model, folder / "camvid_argmax.onnx", argmax=True),
    }


def test_an_exported_onnx_file_predicts_like_its_pytorch_model(
    camvid_model_file, onnx_files, camvid_frames, tmp_path
) -> None:
    from ddrnet.deploy import load_onnx_model

    reference = ddrnet.Predictor(ddrnet.create_model(checkpoint=camvid_model_file))
    for runtime in ("onnxruntime", "openvino"):
        model = load_onnx_model(onnx_files["logits"], runtime=runtime)
        assert model.num_classes == 11
        assert model.metadata.class_names[0] == "Sky"  # the metadata travelled in the file
        predictor = ddrnet.Predictor(model)
        for frame in camvid_frames[:2]:
            expected, labels = reference.predict(frame), predictor.predict(frame)
            assert labels.shape == expected.shape == (360, 480)
            # float32 either way; only pixels whose top two logits tie within rounding differ
            assert (labels == expected).mean() > 0.999, runtime
        odd = np.asarray(Image.open(camvid_frames[0]).convert("RGB"))[:359, :479]
        assert predictor.predict(odd).shape == (359, 479)  # another size: recompiled

    # A logits file leaves the class ids to the Predictor, whatever the runtime or precision.
    from ddrnet.engine.inference import normalize

    image = np.asarray(Image.open(camvid_frames[0]).convert("RGB"))[:359, :479]
    pixels = torch.from_numpy(image.copy()).permute(2, 0, 1)[None]
    for runtime, precision in (("onnxruntime", "f32"), ("openvino", "f32"), ("openvino", "bf16")):
        model = load_onnx_model(onnx_files["logits"], runtime, precision)
        assert model.class_ids(normalize(pixels, model.metadata.mean, model.metadata.std)) is None

    # precision="bf16" really runs OpenVINO's float layers in bf16 (on CPUs that have it)
    from ddrnet.deploy.runtime import openvino_core

    batch = torch.randn(1, 3, 96, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        exact = ddrnet.create_model(checkpoint=camvid_model_file).eval()(batch)
    f32_error = (load_onnx_model(onnx_files["logits"], "openvino")(batch) - exact).abs().max()
    bf16 = load_onnx_model(onnx_files["logits"], "openvino", precision="bf16")(batch)
    assert float(f32_error) < 1e-3 * float(exact.abs().max())
    if "BF16" in openvino_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        assert float((bf16 - exact).abs().max()) > 10 * float(f32_error)

    result = run_ddrnet(
        "predict", *map(str, camvid_frames), "--checkpoint", str(onnx_files["logits"]),
        "--runtime", "openvino", "--amp", "bf16", "--save", "labels", "-o", str(tmp_path / "ov"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    for frame in camvid_frames:
        written = np.asarray(Image.open(tmp_path / "ov" / f"{frame.stem}_labels.png"))
        # bf16 float layers flip near-ties that float32 keeps; this untrained model's logits
        # have small margins (98.8-98.9% of pixels agree), a trained model's agree better
        assert (written == reference.predict(frame)).mean() > 0.97


@pytest.mark.slow
def test_options_that_cannot_work_are_clear_errors(camvid_model_file, onnx_files, tmp_path) -> None:
    logits = str(onnx_files["logits"])
    (tmp_path / "broken.onnx").write_bytes(b"not a protobuf")
    cases = [
        (["--checkpoint", str(onnx_files["argmax"])], "exported with --argmax"),
        (["--checkpoint", logits, "--amp", "bf16"], "--runtime openvino --amp bf16"),
        (["--checkpoint", logits, "--device", "cuda"], "exported files run on the CPU"),
        (["--checkpoint", logits, "--model", "ddrnet_23"], "--model does not apply"),
        (["--checkpoint", str(camvid_model_file), "--runtime", "openvino"], "is a PyTorch model"),
        (["--checkpoint", str(tmp_path / "broken.onnx")], "not a readable ONNX file"),
        (["--checkpoint", str(tmp_path / "missing.onnx")], "missing.onnx: no such ONNX file"),
        (["--checkpoint", str(camvid_model_file), "--device", "gpu"], "--device gpu: Expected"),
        (["--checkpoint", str(camvid_model_file), "--device", "cuda:99"], "usable CUDA device"),
        # torch knows the type, but no model runs on it here (it was a RuntimeError traceback)
        (["--checkpoint", str(camvid_model_file), "--device", "meta"], "no usable meta device"),
    ]
    for options, message in cases:
        result = run_ddrnet("predict", *options, "-o", str(tmp_path / "out"))
        assert result.returncode == 2 and message in result.stderr, (options, result.stderr)
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_an_output_folder_in_or_around_an_input_folder_is_refused(
    camvid_model_file, camvid_frames, tmp_path
) -> None:
    from ddrnet.predict import PredictionInputError, check_output_folder

    inputs = tmp_path / "frames"
    (inputs / "sub").mkdir(parents=True)
    frame = inputs / camvid_frames[0].name
    frame.write_bytes(camvid_frames[0].read_bytes())
    cases = [
        ([str(inputs)], inputs, "is the input folder"),
        ([str(inputs)], inputs / "out", "is inside the input folder"),
        ([str(inputs)], tmp_path, "holds the input folder"),
        ([str(inputs / "**" / "*.png")], inputs / "sub", "is inside the input folder"),
        ([str(frame)], inputs, f"holds the input {frame}"),
    ]
    for arguments, output, message in cases:
        with pytest.raises(PredictionInputError, match=message):
            check_output_folder(output, arguments, [frame])
    check_output_folder(tmp_path / "elsewhere", [str(inputs)], [frame])  # no error

    result = run_ddrnet(
        "predict", str(inputs), "--checkpoint", str(camvid_model_file), "-o", str(inputs)
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().count("\n") == 0 and "is the input folder" in result.stderr
    assert sorted(p.name for p in inputs.iterdir()) == [camvid_frames[0].name, "sub"]  # untouched
    assert frame.read_bytes() == camvid_frames[0].read_bytes()


def test_a_huge_image_is_skipped_and_the_good_frame_beside_it_is_segmented(
    camvid_model_file, camvid_frames, tmp_path
) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    huge = inputs / "huge.png"
    Image.new("1", (16000, 16000)).save(huge)  # 256 megapixels, ~20 GB to segment
    assert huge.stat().st_size < 1_000_000
    (inputs / camvid_frames[0].name).write_bytes(camvid_frames[0].read_bytes())
    result = run_ddrnet(
        "predict", str(inputs), "--checkpoint", str(camvid_model_file), "--save", "labels",
        "-o", str(tmp_path / "out"),
    )  # fmt: skip
    assert result.returncode == 1, result.stderr[-2000:]
    # The failure is printed on stderr (a warning), beside the count that refers to it.
    assert "huge.png" not in result.stdout
    skipped = [line for line in result.stderr.splitlines() if "skipped" in line]
    assert skipped == [
        f"WARNING ddrnet.predict: skipped: {huge}: 16000x16000 is 256.0 megapixels, over the "
        "limit of 50.0 megapixels (ddrnet predict --max-pixels raises it)"
    ]
    assert "1 of 2 inputs failed" in result.stderr and "Traceback" not in result.stderr
    assert (tmp_path / "out" / f"{camvid_frames[0].stem}_labels.png").is_file()
    assert not (tmp_path / "out" / "huge_labels.png").exists()


def test_the_pixel_cap_counts_the_largest_scale(camvid_model_file, camvid_frames, tmp_path) -> None:
    model = ddrnet.create_model(checkpoint=camvid_model_file)
    runner = SegmentationRunner(model, torch.device("cpu"), scales=(0.5, 2.0))
    lines: list[str] = []
    summary = run_prediction(
        runner, [str(camvid_frames[0])], tmp_path / "out", kinds=("labels",), progress=False,
        warn=lines.append, max_pixels=500_000,
    )  # fmt: skip
    assert list(summary.failed) == [str(camvid_frames[0])] and not summary.processed
    assert not (tmp_path / "out").exists()  # a job that wrote nothing leaves no folder
    assert "480x360 is 0.2 megapixels, 0.7 megapixels at scale 2, over the limit of 0.5" in lines[0]
    summary = run_prediction(
        runner, [str(camvid_frames[0])], tmp_path / "out", kinds=("labels",), progress=False,
        report=lines.append, max_pixels=4 * 480 * 360,
    )  # fmt: skip
    assert summary.processed == [str(camvid_frames[0])]
    assert summary.warmup_ms is not None and len(summary.latencies_ms) == 1
    for scales in ((20.0,), (1e9,), (0.0,), (float("nan"),)):
        with pytest.raises(ValueError, match=r"outside \(0, 4\]"):
            SegmentationRunner(model, torch.device("cpu"), scales=scales)
        with pytest.raises(ValueError, match=r"outside \(0, 4\]"):
            ddrnet.Predictor(model, scales=scales).predict(np.zeros((8, 8, 3), np.uint8))


def test_predictor_refuses_images_over_its_pixel_cap_before_running_them() -> None:
    from ddrnet.limits import InputTooLargeError

    from helpers import camvid_model

    model = camvid_model()
    frame = np.zeros((10, 20, 3), np.uint8)  # 200 pixels
    with pytest.raises(InputTooLargeError, match=r"image: 20x10 is 0.0 megapixels, over the"):
        ddrnet.Predictor(model, max_pixels=199).predict(frame)
    assert ddrnet.Predictor(model, max_pixels=200).predict(frame).shape == (10, 20)
    # Test-time scales above 1 count: 200 pixels at scale 2 are 800.
    with pytest.raises(InputTooLargeError, match="at scale 2"):
        ddrnet.Predictor(model, scales=(1.0, 2.0), max_pixels=799).predict(frame)
    assert ddrnet.Predictor(model, max_pixels=None).predict(frame).shape == (10, 20)


def test_a_file_over_the_cap_is_refused_from_its_header(tmp_path) -> None:
    """A PNG that says 12000x12000 (and holds no pixels: decoding it would fail instead)."""
    import struct
    import zlib

    from ddrnet.limits import InputTooLargeError

    from helpers import camvid_model

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    path = tmp_path / "huge.png"
    header = struct.pack(">IIBBBBB", 12000, 12000, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")
    )
    with pytest.raises(InputTooLargeError, match=r"huge.png: 12000x12000 is 144.0 megapixels"):
        ddrnet.Predictor(camvid_model()).predict(str(path))


def test_streams_segment_frames_at_once_and_in_order(
    camvid_model_file, onnx_files, camvid_root, tmp_path
) -> None:
    """Two streams give the label files one stream gives, for the PyTorch model and the ONNX
    file under both runtimes, and report the images in their order (videos: in
    ``test_video_in_video_out_and_corrupt_video``)."""
    from ddrnet.deploy import load_onnx_model
    from ddrnet.predict import run_prediction
    from ddrnet.runner import SegmentationRunner

    frames = sorted((camvid_root / "val").glob("*.png"))[:5]
    folder = tmp_path / "frames"
    folder.mkdir()
    for frame in frames:
        (folder / frame.name).write_bytes(frame.read_bytes())
    cpu = torch.device("cpu")
    models = {
        "pytorch": lambda streams: ddrnet.create_model(checkpoint=camvid_model_file),
        "onnxruntime": lambda streams: load_onnx_model(onnx_files["logits"], streams=streams),
        "openvino": lambda streams: load_onnx_model(
            onnx_files["logits"], "openvino", threads=2, streams=streams
        ),
    }
    for name, make in models.items():
        written = {}
        for streams in (1, 2):
            runner = SegmentationRunner(make(streams), cpu, streams=streams)
            out = tmp_path / f"{name}_{streams}"
            summary = run_prediction(runner, [str(folder)], out, ("labels",), progress=False)
            assert summary.processed == [str(folder / f.name) for f in frames]
            assert len(summary.latencies_ms) == 5 and summary.seconds > 0
            written[streams] = [np.asarray(Image.open(path)) for path in summary.outputs]
        assert all(np.array_equal(a, b) for a, b in zip(written[1], written[2])), name
    # PyTorch's threads are shared out among the streams while they run, then restored.
    threads = torch.get_num_threads()
    runner = SegmentationRunner(models["pytorch"](2), cpu, streams=2)
    seen = list(runner.map(lambda item: (item, torch.get_num_threads()), range(6)))
    assert [item for item, _ in seen] == list(range(6))
    assert seen[0][1] == threads and torch.get_num_threads() == threads
    assert all(count == max(1, threads // 2) for _, count in seen[1:])  # the workers' share


def test_a_failing_frame_stops_the_streams_with_its_own_error(camvid_model_file) -> None:
    """``SegmentationRunner.map`` hands back results in order and raises an item's error
    where that item's result is due, after the items before it."""
    import time

    from ddrnet.runner import SegmentationRunner

    runner = SegmentationRunner(
        ddrnet.create_model(checkpoint=camvid_model_file), torch.device("cpu"), streams=3
    )

    def slow_square(item: int) -> int:
        time.sleep(0.02 * (5 - item))  # later items finish first
        if item == 4:
            raise ValueError("frame 4 is broken")
        return item * item

    results = runner.map(slow_square, range(8))
    assert [next(results) for _ in range(4)] == [0, 1, 4, 9]
    with pytest.raises(ValueError, match="frame 4 is broken"):
        next(results)
    with pytest.raises(ValueError, match="streams must be >= 1"):
        SegmentationRunner(ddrnet.create_model(checkpoint=camvid_model_file), "cpu", streams=0)


def test_runtime_models_leave_the_cores_to_their_runtime(camvid_model_file, onnx_files) -> None:
    """With an exported file, PyTorch only normalises and picks class ids, and its spinning
    OpenMP threads would hold the cores the runtime needs next: the runner runs PyTorch at one
    thread. A PyTorch model keeps every thread."""
    from ddrnet.deploy import load_onnx_model
    from ddrnet.serve import SegmentationService

    threads = torch.get_num_threads()
    cpu = torch.device("cpu")
    try:
        torch.set_num_threads(2)
        SegmentationRunner(ddrnet.create_model(checkpoint=camvid_model_file), cpu)
        assert torch.get_num_threads() == 2
        SegmentationRunner(load_onnx_model(onnx_files["logits"], runtime="openvino"), cpu)
        assert torch.get_num_threads() == 1
        torch.set_num_threads(2)  # and the server, the other place frames are segmented
        SegmentationService(load_onnx_model(onnx_files["logits"], runtime="onnxruntime"))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)


def test_predictor_reads_pixel_types_by_their_range_or_refuses_them() -> None:
    """uint8 is 0..255, uint16 its high bytes, float 0..1; 0..255 floats, other integer
    types, NaN and empty images would give wrong labels silently: refused."""
    from ddrnet.data.io import demo_frames, read_rgb

    predictor = ddrnet.Predictor(ddrnet.load("camvid_ddrnet23_slim_fast_train"))
    frame = read_rgb(demo_frames()[0])[100:164, 200:296]
    expected = predictor.predict(frame)
    assert np.array_equal(predictor.predict(frame.astype(np.uint16) * 257), expected)
    agree = np.mean(predictor.predict(frame / 255.0) == expected)
    assert agree > 0.99  # float32 rounding may move a boundary pixel
    for bad, message in [
        (frame.astype(np.float32), r"float images hold RGB values in 0..1, got \d+..255"),
        (frame.astype(np.int64), "expected uint8 RGB pixels .* got dtype int64"),
        (np.full((4, 4, 3), np.nan), "NaN or infinite"),
        (np.zeros((0, 0, 3), np.uint8), "the image is empty"),
    ]:
        with pytest.raises(ValueError, match=message):
            predictor.predict(bad)
    with pytest.raises(TypeError, match="a sequence of images"):
        predictor.predict_batch(str(demo_frames()[0]))


def test_a_scale_that_leaves_almost_nothing_of_the_image_is_logged_once(
    camvid_model_file, camvid_frames, caplog
) -> None:
    """eval/predict --scales 0.01 ran 480x360 frames as 8x8 passes without a word."""
    from ddrnet.engine.inference import _warn_tiny_pass

    _warn_tiny_pass.cache_clear()
    predictor = ddrnet.Predictor(
        ddrnet.create_model(checkpoint=camvid_model_file), scales=(0.01, 1)
    )
    with caplog.at_level("WARNING", logger="ddrnet.engine.inference"):
        predictor.predict(camvid_frames[0])
        predictor.predict(camvid_frames[1])
        ddrnet.Predictor(predictor.model, scales=(0.5, 1)).predict(camvid_frames[0])
    warnings = [r.getMessage() for r in caplog.records if "coarsest branch" in r.getMessage()]
    assert len(warnings) == 1
    assert "scale 0.01 takes 360x480 (height x width) images to 8x8 pixels" in warnings[0]


def test_options_the_inputs_would_ignore_and_unwritable_outputs_are_refused_up_front(
    camvid_frames, tmp_path, capsys
) -> None:
    """--max-frames on images, --batch-size on a video, --preview of pictures it cannot show
    were accepted and ignored; an output folder that cannot be made was found after the
    first input had been segmented. One line each, before the model is loaded."""
    from helpers import one_line_cli_error

    image, video = str(camvid_frames[0]), str(tmp_path / "drive.mp4")
    Path(video).write_bytes(b"not read: the refusal comes first")
    (tmp_path / "afile").write_text("in the way")
    cases = {
        "--max-frames applies to videos, cameras and streams, and none is among the inputs": [
            image, "--max-frames", "2"],
        "--drop-frames applies to videos": [image, "--drop-frames", "yes"],
        "--batch-size applies to images, and none is among the inputs": [
            video, "--batch-size", "2"],
        "--workers applies to images": [video, "--workers", "1"],
        "--preview shows overlays or side-by-side pictures, and --save labels makes neither": [
            image, "--save", "labels", "--preview", "18767"],
        f"--output {tmp_path / 'afile' / 'out'}: cannot create its folder": [
            image, "-o", str(tmp_path / "afile" / "out")],
    }  # fmt: skip
    for message, argv in cases.items():
        # The case's own -o, where it has one, comes last and wins.
        error = one_line_cli_error(capsys, ["predict", "-o", str(tmp_path / "o"), *argv])
        assert message in error, error
    assert not (tmp_path / "o").exists()
