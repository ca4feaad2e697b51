"""Deployment: ONNX and TorchScript export at odd sizes, BN folding, ONNX evaluation, the
benchmark harness and OpenVINO's compiled plans (INT8 quantisation: ``test_quantize.py``).

The model is ``conftest.calibrated_slim``: DDRNet-23-slim with BatchNorm statistics of real
CamVid frames, so that folding is not trivially exact and logits are of a trained model's
order.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ddrnet
from ddrnet.data.labels import CAMVID
from ddrnet.deploy import (
    BACKENDS,
    ExportError,
    benchmark,
    conv_bn_pairs,
    evaluate_onnx,
    export_onnx,
    export_torchscript,
    fuse_conv_bn,
    load_calibration_images,
    measure_conv_peak_gflops,
    onnx_file_properties,
    onnx_session,
    quantize_onnx_int8,
    read_onnx_metadata,
    run_benchmarks,
    verify_onnx,
    verify_onnx_labels,
)
from ddrnet.deploy.export import static_resize_nodes
from ddrnet.deploy.runtime import onnx_logits
from ddrnet.engine.inference import normalize, segment_logits
from ddrnet.engine.metrics import ConfusionMatrix
from ddrnet.errors import UsageError
from ddrnet.models import count_macs

from helpers import real_inputs
from official_reference import randomize_batchnorm


@pytest.fixture(scope="module")
def model(calibrated_slim: nn.Module) -> nn.Module:
    return calibrated_slim


def test_onnx_export_is_dynamic_and_matches_pytorch_at_odd_sizes(
    model, calibrated_slim_onnx, camvid_val
):
    graph = onnx.load(str(calibrated_slim_onnx))
    assert static_resize_nodes(graph) == []
    assert sum(node.op_type == "Resize" for node in graph.graph.node) == 7
    dims = [d.dim_param for d in graph.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "", "height", "width"]
    # No auxiliary head in the graph: only the main head's classifier has 11 outputs.
    assert read_onnx_metadata(calibrated_slim_onnx)["num_classes"] == 11

    inputs = real_inputs(camvid_val)
    with torch.no_grad():
        logit_scale = max(float(model(x).abs().max()) for x in inputs)
    assert 5 < logit_scale < 500  # a realistic scale, so 1e-3 is a meaningful tolerance
    assert verify_onnx(model, calibrated_slim_onnx, inputs=inputs) < 1e-3
    # Random inputs at other batch sizes: shapes must follow (ceil(H/8), ceil(W/8)).
    session = onnx_session(calibrated_slim_onnx)
    output = onnx_logits(session, np.random.default_rng(0).normal(size=(2, 3, 33, 17)))
    assert output.shape == (2, 11, 5, 3)


def test_an_export_without_a_size_takes_the_models_own(tmp_path, capsys, monkeypatch) -> None:
    """Exports, pruning and fixed-size programs share one default: the size the model
    records, else its data set's usual one (a Cityscapes model is not exported at CamVid's
    360x480), else 512x512; the command line's --size defaults to it as well."""
    from ddrnet.cli import main
    from ddrnet.deploy import onnx_checked
    from ddrnet.models.metadata import default_input_size

    model = ddrnet.create_model("ddrnet_23_slim", num_classes=19)
    assert default_input_size(model) == (512, 512)  # no data set recorded
    model.metadata.dataset = "cityscapes"
    assert default_input_size(model) == (1024, 2048)
    model.metadata.input_size = [64, 96]
    assert default_input_size(model) == (64, 96)
    assert default_input_size(torch.nn.Conv2d(3, 3, 1)) == (512, 512)  # no metadata at all
    export_onnx(model, tmp_path / "fixed.onnx", dynamic=False)
    shape = onnx.load(str(tmp_path / "fixed.onnx")).graph.input[0].type.tensor_type.shape
    assert [d.dim_value for d in shape.dim] == [1, 3, 64, 96]
    ddrnet.save_model(model, tmp_path / "m.safetensors", model.metadata)
    sizes = []

    def recording_export(model, path, input_size=None, **options):
        sizes.append(input_size)
        return export_onnx(model, path, input_size, **options)

    monkeypatch.setattr(onnx_checked, "export_onnx", recording_export)
    argv = ["export", "--checkpoint", str(tmp_path / "m.safetensors")]
    assert main([*argv, "-o", str(tmp_path / "m.onnx")]) == 0 and sizes == [(64, 96)]
    assert main(["prune", str(tmp_path / "m.safetensors"), "--macs", "0.5",
                 "-o", str(tmp_path / "p.safetensors")]) == 0  # fmt: skip
    assert "pruned " + str(tmp_path / "m.safetensors") + " at 64x96:" in capsys.readouterr().out


def test_the_checked_onnx_export_runs_from_python(model, tmp_path) -> None:
    """``ddrnet export``'s ONNX path is the library's: each check a line to ``report``, the
    float32 file kept beside an INT8 one, a user's file of that name refused."""
    from ddrnet.data.io import demo_frames
    from ddrnet.deploy.onnx_checked import export_onnx_checked

    lines: list[str] = []
    images = [str(frame) for frame in demo_frames()[:1]]
    path = export_onnx_checked(model, tmp_path / "m.onnx", (64, 64), form="onnx-int8",
                               calibration=images, report=lines.append)  # fmt: skip
    assert lines[0].startswith(f"ONNX written to {tmp_path / 'm_fp32.onnx'} (the float32 model")
    assert float(lines[1].rsplit(" ", 1)[-1]) < 1e-2  # max abs logit difference to PyTorch
    assert lines[2].startswith(f"INT8 (QDQ, per-channel, 7-bit weights) written to {path}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m_fp32.onnx"]
    (tmp_path / "n_fp32.onnx").write_text("my notes")
    with pytest.raises(ExportError, match="n_fp32.onnx is no ddrnet export"):
        export_onnx_checked(model, tmp_path / "n.onnx", (64, 64), form="onnx-int8",
                            calibration=images, report=lines.append)  # fmt: skip
    assert (tmp_path / "n_fp32.onnx").read_text() == "my notes"
    with pytest.raises(ValueError, match="weight_bits must be 7 or 8, got 6"):
        export_onnx_checked(model, tmp_path / "w.onnx", form="onnx-int8", weight_bits=6)
    assert not (tmp_path / "w.onnx").exists() and not (tmp_path / "w_fp32.onnx").exists()


def test_a_rerun_removes_what_a_killed_export_or_save_left(model, tmp_path) -> None:
    """A kill (SIGKILL) mid-copy leaves ``.<name>.<random>.tmp``: the next write of that
    file removes it, and only temporaries of the files it writes."""
    left = [".m.onnx.k1ll3d00.tmp", ".m.pt.k1ll3d00.tmp", ".p.safetensors.k1ll3d00.tmp"]
    for name in [*left, ".other.onnx.k1ll3d00.tmp"]:
        (tmp_path / name).write_bytes(b"partial")
    export_onnx(model, tmp_path / "m.onnx", (64, 64))
    export_torchscript(model, tmp_path / "m.pt", (64, 64))
    ddrnet.save_model(model, tmp_path / "p.safetensors", model.metadata)
    hidden = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))
    assert hidden == [".other.onnx.k1ll3d00.tmp"]


def test_onnx_argmax_graph_equals_torch_argmax(model, camvid_val, tmp_path):
    (image,) = real_inputs(camvid_val, sizes=((361, 479),))
    with torch.no_grad():
        logits = model(image)
    for upsample in (False, True):
        path = export_onnx(
            model,
            tmp_path / f"labels_{upsample}.onnx",
            (360, 480),
            argmax=True,
            upsample_to_input=upsample,
        )
        labels = onnx_logits(onnx_session(path), image.numpy())
        reference = logits
        if upsample:
            reference = F.interpolate(logits, size=(361, 479), mode="bilinear", align_corners=False)
        assert labels.dtype == np.uint8
        assert labels.shape == ((1, 361, 479) if upsample else (1, 46, 60))
        expected = reference.argmax(dim=1).numpy()
        # Float rounding may flip only pixels whose two best classes are (nearly) tied.
        top2 = reference.topk(2, dim=1).values
        margin = (top2[:, 0] - top2[:, 1]).numpy()
        assert np.all((labels == expected) | (margin < 1e-3))
        assert (labels == expected).mean() > 0.999
        with pytest.raises(ValueError, match="not logits"):
            verify_onnx(model, path)
        assert verify_onnx_labels(model, path, inputs=[image]) > 0.999
    # Checked against other weights (BN statistics re-drawn), the same file disagrees.
    other = copy.deepcopy(model)
    randomize_batchnorm(other, seed=7)
    assert verify_onnx_labels(other.eval(), path, inputs=[image]) < 0.8
    with pytest.raises(ValueError, match="use verify_onnx"):
        verify_onnx_labels(model, export_onnx(model, tmp_path / "logits.onnx"))


def test_onnx_upsampled_logits_and_bad_arguments(model, camvid_val, tmp_path):
    path = export_onnx(model, tmp_path / "full.onnx", (64, 64), upsample_to_input=True)
    assert verify_onnx(model, path, inputs=real_inputs(camvid_val, ((361, 479), (64, 64)))) < 1e-3
    with pytest.raises(ValueError, match="input_size"):
        export_onnx(model, tmp_path / "bad.onnx", (0, 64))
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        verify_onnx(model, tmp_path / "missing.onnx")


def test_static_resize_is_detected(tmp_path):
    class FixedResize(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.interpolate(x, size=(8, 8), mode="bilinear", align_corners=False)

    class ScaledResize(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)

    for module, frozen in ((FixedResize(), 1), (ScaledResize(), 0)):
        path = tmp_path / "resize.onnx"
        with pytest.warns(DeprecationWarning):  # the legacy exporter announces its removal
            torch.onnx.export(
                module,
                (torch.zeros(1, 3, 4, 4),),
                str(path),
                dynamo=False,
                input_names=["x"],
                dynamic_axes={"x": {0: "batch", 2: "height", 3: "width"}},
            )
        assert len(static_resize_nodes(onnx.load(str(path)))) == frozen


def test_a_refused_or_failed_export_leaves_the_previous_file(model, tmp_path, monkeypatch):
    from ddrnet.deploy import quantize as quantize_module
    from ddrnet.deploy.onnx_file import ExportError

    target = tmp_path / "model.onnx"
    target.write_bytes(b"the user's earlier export")
    photo = tmp_path / "street.png"  # not an ONNX name: the API refuses it as the CLI does
    photo.write_bytes(b"a picture")
    with pytest.raises(UsageError, match=r"street.png: an ONNX export is written to a NAME.onnx"):
        export_onnx(model, photo)
    assert photo.read_bytes() == b"a picture"
    photo.unlink()  # the listing below counts what the exports leave

    def refuse(model):
        raise onnx.checker.ValidationError("made-up defect")

    monkeypatch.setattr(onnx.checker, "check_model", refuse)
    with pytest.raises(ExportError, match=r"model.onnx: the ONNX checker rejects"):
        export_onnx(model, target)
    monkeypatch.undo()
    assert target.read_bytes() == b"the user's earlier export"
    fp32 = export_onnx(model, tmp_path / "fp32.onnx")
    int8 = tmp_path / "int8.onnx"
    int8.write_bytes(b"an earlier INT8 file")

    def crash(path):
        raise OSError("killed")

    monkeypatch.setattr(quantize_module, "_mark_openvino_fixed_size", crash)
    with pytest.raises(OSError, match="killed"):
        quantize_onnx_int8(fp32, int8, [np.zeros((64, 64, 3), np.uint8)], size=(64, 64))
    assert int8.read_bytes() == b"an earlier INT8 file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fp32.onnx", "int8.onnx", "model.onnx"]


def test_torchscript_runs_at_other_sizes_and_batches(model, camvid_val, tmp_path):
    path = export_torchscript(model, tmp_path / "slim.pt", (360, 480))
    loaded = torch.jit.load(str(path))
    inputs = real_inputs(camvid_val, ((361, 479), (64, 64)))
    inputs.append(torch.cat([inputs[1], inputs[1].flip(-1)]))  # batch of 2
    with torch.no_grad():
        for x in inputs:
            expected = model(x)
            actual = loaded(x)
            assert actual.shape == expected.shape
            assert float((actual - expected).abs().max()) < 1e-3


def test_fuse_conv_bn_folds_every_conv_bn_pair_exactly(model, camvid_val):
    pairs = conv_bn_pairs(model)
    bn_count = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    fused = fuse_conv_bn(model)
    assert len(pairs) == 43  # all but the 12 pre-activation BNs of DAPPM and the head
    assert conv_bn_pairs(fused) == []
    assert sum(isinstance(m, nn.BatchNorm2d) for m in fused.modules()) == bn_count - len(pairs)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == bn_count  # untouched
    assert fused.metadata == model.metadata

    (image,) = real_inputs(camvid_val, sizes=((361, 479),))
    model64 = copy.deepcopy(model).double()
    with torch.no_grad():
        # In float64 folding is exact but for rounding.
        exact = model64(image.double())
        fused64 = fuse_conv_bn(model64)(image.double())
        assert float((fused64 - exact).abs().max()) < 1e-4
        # In float32 the folded model is as accurate as the original (both ~1e-4 from fp64
        # on logits of order 10-50, from summation order alone).
        error_fused = float((fused(image).double() - exact).abs().max())
        error_plain = float((model(image).double() - exact).abs().max())
    assert error_fused < 2 * error_plain + 1e-5


def test_a_group_norm_model_is_left_unfolded_and_exports_to_onnx(camvid_val, tmp_path):
    """GroupNorm normalises by each image's statistics: no Conv+GroupNorm pair can be folded,
    so ``fuse_conv_bn`` changes nothing, and the ONNX file computes what PyTorch does."""
    torch.manual_seed(0)
    net = ddrnet.create_model("ddrnet_23_slim", num_classes=11, norm="group")
    randomize_batchnorm(net, seed=1)  # non-trivial GroupNorm scales and shifts
    group_norms = sum(isinstance(m, nn.GroupNorm) for m in net.modules())
    fused = fuse_conv_bn(net)
    assert conv_bn_pairs(net) == [] and group_norms == 55
    assert sum(isinstance(m, nn.GroupNorm) for m in fused.modules()) == group_norms
    inputs = real_inputs(camvid_val, sizes=((96, 128), (65, 97)))
    with torch.no_grad():
        for image in inputs:
            torch.testing.assert_close(fused(image), net(image), atol=1e-5, rtol=0)
        logit_scale = max(float(net(x).abs().max()) for x in inputs)
    assert 1 < logit_scale < 500  # a scale at which 1e-3 is a meaningful tolerance
    path = export_onnx(net, tmp_path / "gn.onnx", (96, 128))
    assert read_onnx_metadata(path)["spec"]["norm"] == "group"
    assert verify_onnx(net, path, inputs=inputs) < 1e-3
    batch = torch.randn(2, 3, 33, 17)  # another batch size: each image its own statistics
    output = onnx_logits(onnx_session(path), batch.numpy())
    with torch.no_grad():
        np.testing.assert_allclose(output, net(batch).numpy(), atol=1e-3)


def test_an_ibn_model_folds_its_batch_norms_only_and_exports_to_onnx(camvid_val, tmp_path):
    """The convs that feed an instance-batch mix stay unfolded (the instance half depends on
    the input); every other Conv+BN pair folds, and the ONNX file computes what PyTorch does."""
    torch.manual_seed(0)
    net = ddrnet.create_model("ddrnet_23_slim", num_classes=11, norm="ibn")
    randomize_batchnorm(net, seed=1)
    plain = ddrnet.create_model("ddrnet_23_slim", num_classes=11)
    assert len(conv_bn_pairs(net)) == len(conv_bn_pairs(plain)) - 8
    fused = fuse_conv_bn(net)
    inputs = real_inputs(camvid_val, sizes=((96, 128), (65, 97)))
    exact_net = copy.deepcopy(net).double()
    with torch.no_grad():
        for image in inputs:
            # As for BatchNorm models: the folded form is as close to float64 as the original.
            exact = exact_net(image.double())
            error_fused = float((fused(image).double() - exact).abs().max())
            error_plain = float((net(image).double() - exact).abs().max())
            assert error_fused < 2 * error_plain + 1e-5
    path = export_onnx(net, tmp_path / "ibn.onnx", (96, 128))
    assert read_onnx_metadata(path)["spec"]["norm"] == "ibn"
    assert verify_onnx(net, path, inputs=inputs) < 1e-3


def test_evaluate_onnx_matches_pytorch_evaluation(model, calibrated_slim_onnx, camvid_val):
    metrics = evaluate_onnx(calibrated_slim_onnx, camvid_val, limit=3)  # mean/std from the file
    matrix = ConfusionMatrix(11)
    for index in range(3):
        image, label = camvid_val[index]
        batch = normalize(image[None], CAMVID.mean, CAMVID.std)
        matrix.update(segment_logits(model, batch).argmax(dim=1)[0], label)
    expected = matrix.compute()
    assert int(metrics.matrix.sum()) == int(expected.matrix.sum()) > 0
    # Identical up to pixels whose top two classes tie within float rounding.
    assert (metrics.matrix - expected.matrix).abs().sum() <= 1e-4 * expected.matrix.sum()
    assert abs(metrics.miou - expected.miou) < 0.05


def test_benchmark_statistics():
    calls = []
    result = benchmark(lambda x: calls.append(x), (1,), 0.0, 0.01, min_iterations=20)
    assert result["iterations"] >= 20 and len(calls) >= 21  # plus at least one warm-up call
    assert result["fps"] > 0
    assert result["latency_ms_min"] <= result["latency_ms_p50"] <= result["latency_ms_p90"]
    assert result["latency_ms_p90"] <= result["latency_ms_p99"]
    assert benchmark(lambda: None, (), 0.0, 10.0, max_iterations=5)["iterations"] == 5


def test_run_benchmarks_rows(model, monkeypatch):
    def broken_compile(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken_compile)
    backends = ["bn_folded", "eager_bf16_channels_last", "ort", "compile", "openvino"]
    rows = run_benchmarks(
        model, (64, 96), backends, seconds=0.1, warmup_seconds=0.0, peak_gflops=100.0
    )
    by_name = {row["backend"]: row for row in rows}
    assert [row["backend"] for row in rows] == ["eager", *backends]  # reference first
    assert "no compiler here" in by_name["compile"]["error"]
    for name, row in by_name.items():
        if name == "compile" or (name == "openvino" and row["error"]):
            continue  # OpenVINO is optional
        assert row["error"] is None, row
        assert row["fps"] > 0 and row["iterations"] >= 5
        assert row["latency_ms_p50"] <= row["latency_ms_p99"]
        assert row["speedup"] > 0 and row["peak_memory_mib"] >= 0
        assert row["fraction_of_peak"] == pytest.approx(row["achieved_gflops"] / 100.0)
    assert by_name["eager"]["speedup"] == 1.0
    for name in ("bn_folded", "ort"):
        assert by_name[name]["max_abs_diff"] < 1e-3  # float32 backends compute the same
    with pytest.raises(ValueError, match="unknown backends"):
        run_benchmarks(model, (64, 64), ["tensorrt"])
    assert "ort_int8" in BACKENDS


def test_run_benchmarks_takes_medians_of_interleaved_rounds(model, monkeypatch):
    """Per-round rates and ratios by hand: eager 10, 5, 10 FPS; ort 20, 10, 40 FPS over the
    same three rounds, so the ratios are 2, 2, 4 (median 2) although ort's own median rate
    (20) over eager's (10) would also say 2, and its mean (23.3) would say 2.3."""
    from ddrnet.deploy import bench

    schedule = {  # seconds per timed call, in call order: the passes go eager, ort, eager...
        "eager": [[0.1, 0.1], [0.2, 0.2], [0.1, 0.1]],
        "ort": [[0.05, 0.05], [0.1, 0.1], [0.025, 0.025]],
    }
    calls = []

    def fake_time_calls(fn, inputs, warmup, seconds, min_iterations, max_iterations):
        name = {"run": "eager", "run_ort": "ort"}[fn.__name__]  # the runners' closures
        calls.append(name)
        assert seconds == pytest.approx(0.3 / 3) and min_iterations == 2  # ceil(5 / 3)
        return schedule[name][calls.count(name) - 1]

    monkeypatch.setattr(bench, "_time_calls", fake_time_calls)
    # The convolution peak is measured after each pass; in units of one image's FLOPs per
    # second it is 40, 5, 20: ort's fractions 20/40, 10/5, 40/20 (median 2), eager's
    # 10/40, 5/5, 10/20 (median 0.5). ort's median rate over the first peak would say 0.5,
    # over the median peak 1.
    flops = 2 * count_macs(model, (32, 32)) / 1e9
    peaks = iter([40 * flops, 5 * flops, 20 * flops])

    def fake_peak() -> float:
        calls.append("peak")
        return next(peaks)

    rows = run_benchmarks(
        model, (32, 32), ["ort"], seconds=0.3, rounds=3, warmup_seconds=0.0, measure_peak=fake_peak
    )
    eager, ort = rows
    assert calls == ["eager", "ort", "peak"] * 3  # interleaved, not one backend after the other
    assert ort["fraction_of_peak"] == pytest.approx(2.0)
    assert eager["fraction_of_peak"] == pytest.approx(0.5)
    assert ort["peak_gflops_rounds"] == pytest.approx([40 * flops, 5 * flops, 20 * flops])
    assert eager["fps_rounds"] == pytest.approx([10, 5, 10]) and eager["fps"] == pytest.approx(10)
    assert ort["fps_rounds"] == pytest.approx([20, 10, 40]) and ort["fps"] == pytest.approx(20)
    assert ort["speedup_rounds"] == pytest.approx([2, 2, 4]) and ort["speedup"] == pytest.approx(2)
    assert eager["speedup"] == pytest.approx(1.0) and ort["rounds"] == 3
    assert ort["iterations"] == 6 and ort["latency_ms_p50"] == pytest.approx(50)
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        run_benchmarks(model, (32, 32), ["ort"], rounds=0)


def test_measure_conv_peak_gflops():
    peak = measure_conv_peak_gflops(0.2, channels=32, spatial=(32, 32))
    assert set(peak) == {"float32", "bfloat16"}
    assert all(value > 0 for value in peak.values())


def test_export_errors_name_the_problem(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no .*png"):
        load_calibration_images(empty)
    with pytest.raises(FileNotFoundError, match="absent"):
        load_calibration_images(tmp_path / "absent")
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf")
    with pytest.raises(ExportError, match="junk.onnx: not a readable ONNX file"):
        onnx_file_properties(tmp_path / "junk.onnx")


def test_ctrl_c_after_openvino_plans_were_freed_is_an_interrupt_not_a_crash(
    calibrated_slim_onnx,
) -> None:
    """Plans freed out of order (a fourth size evicting the first) used to leave the thread
    on the signal stack of a freed OpenVINO Core, and Ctrl-C then killed the process with
    SIGSEGV (so did a child's exit under PyTorch's SIGCHLD handler: a pytest-xdist worker
    died that way). Run in a process of its own, which the old behaviour would kill."""
    script = f"""
import gc, signal
import numpy as np
from ddrnet.deploy.runtime import OpenVinoPlans
# Python's own Ctrl-C handler: pytest-xdist's workers ignore SIGINT, and a child inherits that.
signal.signal(signal.SIGINT, signal.default_int_handler)
plans = OpenVinoPlans({str(calibrated_slim_onnx)!r}, 1, "f32", keep=2)
for height in (32, 64, 96):
    plans(np.zeros((1, 3, height, 64), np.float32))
del plans
gc.collect()
try:
    signal.raise_signal(signal.SIGINT)
except KeyboardInterrupt:
    print("interrupted")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert (result.returncode, result.stdout) == (0, "interrupted\n"), result.stderr[-2000:]


def test_openvino_under_an_onednn_cap_runs_as_the_capped_cpu(calibrated_slim_onnx) -> None:
    """``ONEDNN_MAX_CPU_ISA=AVX2`` alone (a PyTorch user's knob) left OpenVINO's plugin
    choosing bf16 kernels on an AVX512-BF16 CPU that oneDNN then refused: compiling with the
    bf16 hint failed ("Supported primitive descriptors list is empty"). OpenVINO now gets the
    same cap, and runs the hint in float32 as on an AVX2 CPU. In a process of its own: both
    libraries read their caps once."""
    script = f"""
import numpy as np
from ddrnet.deploy.runtime import openvino_core, openvino_logits_function
run = openvino_logits_function({str(calibrated_slim_onnx)!r}, 1, "bf16")
assert run(np.zeros((1, 3, 64, 64), np.float32)).shape[-2:] == (8, 8)
print(sorted(openvino_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")))
"""
    environment = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    environment.pop("OV_CPU_MAX_ISA", None)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=environment
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "BF16" not in result.stdout and "FP32" in result.stdout


def test_openvino_plans_compile_once_per_size_and_keep_the_last_few(
    calibrated_slim_onnx, monkeypatch
):
    from ddrnet.deploy import runtime

    compiled = []

    def fake_compile(path, threads, precision, input_shape, fixed_size_ok, streams):
        # The plans pass on the answer they got once, so nothing parses the file again.
        assert fixed_size_ok is (input_shape is not None)
        compiled.append(input_shape if streams == 1 else (f"{streams} streams", input_shape))
        return lambda batch: batch.shape

    monkeypatch.setattr(runtime, "openvino_logits_function", fake_compile)
    plans = runtime.OpenVinoPlans(calibrated_slim_onnx, 1, "f32", keep=2)
    assert plans.fixed_size  # a float file
    for height in (8, 8, 16, 8, 24, 16):
        assert plans(np.zeros((1, 3, height, 8), np.float32)) == (1, 3, height, 8)
    # 24 evicts 16 (8 was used more recently), so 16 compiles again.
    assert compiled == [(1, 3, 8, 8), (1, 3, 16, 8), (1, 3, 24, 8), (1, 3, 16, 8)]

    compiled.clear()
    monkeypatch.setattr(runtime, "openvino_fixed_size_ok", lambda path: False)
    dynamic = runtime.OpenVinoPlans(calibrated_slim_onnx, 1, "f32")
    for height in (8, 16, 24):
        dynamic(np.zeros((1, 3, height, 8), np.float32))
    assert compiled == [None]  # one dynamic plan for every size
    compiled.clear()
    runtime.OpenVinoPlans(calibrated_slim_onnx, 2, "f32", streams=2)(
        np.zeros((1, 3, 8, 8), np.float32)
    )
    assert compiled == [("2 streams", None)]
    # A caller that knows the answer passes it, and it wins over the (patched, False) check:
    # a plan per size again.
    compiled.clear()
    told = runtime.OpenVinoPlans(calibrated_slim_onnx, 1, "f32", fixed_size=True)
    for height in (8, 16):
        told(np.zeros((1, 3, height, 8), np.float32))
    assert compiled == [(1, 3, 8, 8), (1, 3, 16, 8)]
