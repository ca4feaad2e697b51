"""Engine building blocks against hand-computed values."""

from __future__ import annotations

import math
import platform
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ddrnet.config import ConfigError, load_config
from ddrnet.engine.config import Config
from ddrnet.engine.ema import ModelEma
from ddrnet.engine.losses import (
    DeepSupervisionLoss,
    OhemCrossEntropy,
    bilinear_matrix,
    class_balance_weights,
    resize_logits,
    subsample_labels,
)
from ddrnet.engine.metrics import ConfusionMatrix
from ddrnet.engine.schedules import poly_lr


def test_poly_schedule_with_warmup() -> None:
    assert poly_lr(0, 100, 0.01) == pytest.approx(0.01)
    assert poly_lr(50, 100, 0.01, power=0.9) == pytest.approx(0.01 * 0.5**0.9)
    assert poly_lr(100, 100, 0.01) == 0.0
    assert poly_lr(0, 100, 0.01, warmup_iterations=10, warmup_ratio=0.1) == pytest.approx(0.001)
    assert poly_lr(5, 100, 0.01, warmup_iterations=10, warmup_ratio=0.1) == pytest.approx(0.0055)
    assert poly_lr(99, 100, 0.01) == pytest.approx(0.01 * 0.01**0.9)
    assert poly_lr(100, 100, 0.01, min_lr=1e-4) == pytest.approx(1e-4)


def test_confusion_matrix_metrics_by_hand() -> None:
    # 3 classes; ground truth / prediction pairs, 255 ignored.
    target = torch.tensor([0, 0, 1, 1, 2, 255, 0])
    prediction = torch.tensor([0, 1, 1, 1, 0, 2, 0])
    confusion = ConfusionMatrix(3)
    confusion.update(prediction, target)
    assert confusion.matrix.tolist() == [[2, 1, 0], [0, 2, 0], [1, 0, 0]]
    metrics = confusion.compute()
    # IoU: class 0: 2 / (3 + 3 - 2) = 0.5; class 1: 2 / (2 + 3 - 2) = 2/3; class 2: 0 / 1 = 0.
    assert metrics.iou == pytest.approx([50.0, 200 / 3, 0.0])
    assert metrics.miou == pytest.approx((50 + 200 / 3 + 0) / 3)
    assert metrics.pixel_accuracy == pytest.approx(4 / 6 * 100)
    assert metrics.mean_accuracy == pytest.approx((2 / 3 + 1 + 0) / 3 * 100)


def test_absent_class_is_nan_and_left_out_of_the_mean() -> None:
    confusion = ConfusionMatrix(3)
    confusion.update(torch.tensor([0, 1]), torch.tensor([0, 1]))
    metrics = confusion.compute()
    assert math.isnan(metrics.iou[2]) and metrics.miou == pytest.approx(100.0)


def test_ohem_keeps_pixels_below_threshold_by_hand() -> None:
    # Four pixels of one image, two classes. True-class probabilities: sigmoid of the logit gap.
    gaps = torch.tensor([4.0, 0.0, -1.0, 3.0])  # p = 0.982, 0.5, 0.269, 0.953
    logits = torch.stack([gaps, torch.zeros(4)]).view(1, 2, 2, 2)
    target = torch.zeros(1, 2, 2, dtype=torch.long)
    probabilities = torch.sigmoid(gaps)
    losses = -torch.log(probabilities)
    # threshold 0.9, min_kept 1: kept are p < max(0.9, 2nd smallest p = 0.5) -> 0.5 and 0.269.
    loss = OhemCrossEntropy(threshold=0.9, min_kept=1)(logits, target)
    assert loss.item() == pytest.approx(((losses[1] + losses[2]) / 2).item(), rel=1e-5)
    # min_kept 3: threshold rises to the 4th smallest p (0.982): three pixels kept.
    loss = OhemCrossEntropy(threshold=0.9, min_kept=3)(logits, target)
    assert loss.item() == pytest.approx(((losses[1] + losses[2] + losses[3]) / 3).item(), rel=1e-5)


def test_ohem_ignores_void_and_handles_all_void() -> None:
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    target = torch.full((1, 4, 4), 255)
    loss = OhemCrossEntropy()(logits, target)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(logits.grad, torch.zeros_like(logits))  # void pixels teach nothing


def test_resize_matches_interpolate_and_gradients_flow() -> None:
    logits = torch.randn(2, 5, 45, 60, requires_grad=True)
    expected = F.interpolate(logits, size=(360, 480), mode="bilinear", align_corners=False)
    assert (resize_logits(logits, (360, 480)) - expected).abs().max() < 1e-5
    matrix = bilinear_matrix(2, 4)
    # Output centres at 0.125*... hand values: x_src = (i + 0.5) / 2 - 0.5 -> 0 (clamped), 0.25,
    # 0.75, 1.25 -> clamped upper index.
    assert matrix.tolist() == [[1.0, 0.0], [0.75, 0.25], [0.25, 0.75], [0.0, 1.0]]


def test_label_subsampling_takes_cell_centres() -> None:
    target = torch.arange(64).view(1, 8, 8)
    assert subsample_labels(target, 4).tolist() == [[[9, 13], [41, 45]]]
    assert subsample_labels(target, 1) is target


def test_deep_supervision_weights() -> None:
    criterion = DeepSupervisionLoss(torch.nn.MSELoss(), main_weight=1.0, aux_weight=0.4)
    main, aux, target = torch.ones(2), torch.zeros(2), torch.zeros(2)
    total, parts = criterion(main, aux, target)
    assert total.item() == pytest.approx(1.0) and parts == {"loss_main": 1.0, "loss_aux": 0.0}


def test_class_balance_weights_by_hand() -> None:
    counts = torch.tensor([600, 300, 100])
    enet = 1 / torch.log(1.02 + torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64))
    assert class_balance_weights(counts, "enet").tolist() == pytest.approx(
        (enet / enet.mean()).tolist(), rel=1e-6
    )
    median = torch.tensor([0.3 / 0.6, 1.0, 0.3 / 0.1])
    assert class_balance_weights(counts, "median_frequency").tolist() == pytest.approx(
        (median / median.mean()).tolist(), rel=1e-6
    )
    with pytest.raises(ValueError, match="enet"):
        class_balance_weights(counts, "inverse")


def test_config_overrides_and_errors(tmp_path) -> None:
    config = load_config(Config, None, ["optim.lr=0.02", "data.crop_size=[64, 96]"])
    assert config.optim.lr == 0.02 and config.data.crop_size == (64, 96)
    with pytest.raises(ConfigError, match=r"optim\.learning_rate.*valid keys in optim: .*lr"):
        load_config(Config, None, ["optim.learning_rate=0.1"])
    with pytest.raises(ConfigError, match=r"train\.epochs: expected an integer"):
        load_config(Config, None, ["train.epochs=ten"])
    with pytest.raises(ConfigError, match=r"train\.amp: 'fp8' is not one of"):
        load_config(Config, None, ["train.amp=fp8"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  name: ddrnet_23_slim\nschedule:\n  epochs: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown key schedule; valid keys: data"):
        load_config(Config, bad)
    # PyYAML's own message spans five lines; the error keeps its position and problem in one.
    bad.write_text("model:\n  name: [ddrnet_23_slim\n")
    with pytest.raises(ConfigError) as error:
        load_config(Config, bad)
    assert str(error.value) == (
        f"{bad}: invalid YAML (line 3, column 1: expected ',' or ']', but got '<stream end>')"
    )
    bad.write_text("# a recipe cut off before its first section\n")  # trained the defaults
    with pytest.raises(ConfigError, match=r"bad\.yaml: empty \(no sections\)"):
        load_config(Config, bad)
    with pytest.raises(ConfigError) as error:
        load_config(Config, None, ["train.epochs=[1,"])
    assert "\n" not in str(error.value)
    assert str(error.value).endswith(
        "cannot parse value (line 1, column 4: expected the node content, but found '<stream end>')"
    )


@pytest.mark.parametrize(
    ("override", "guess"),
    [
        ("output_dir=runs/x", "train.output_dir"),  # a key given without its section
        ("batch_size=4", "data.batch_size or eval.batch_size"),
        ("train.epoch=3", "train.epochs"),  # a typo
        ("optim.lrate=0.1", None),  # nothing close enough: the list of valid keys only
    ],
)
def test_unknown_keys_suggest_the_one_meant(override: str, guess: str | None) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(Config, None, [override])
    message = str(error.value)
    assert "valid keys" in message
    if guess is None:
        assert "did you mean" not in message
    else:
        assert message.endswith(f"; did you mean {guess}?")


def test_ema_follows_the_weights_by_hand() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(1, 1, bias=False), torch.nn.BatchNorm1d(1))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
    ema = ModelEma(model, decay=0.5)
    assert not any(p.requires_grad for p in ema.module.parameters())
    # Update 1: the ramp gives min(0.5, 2/11) = 2/11, so ema = 1 + (3 - 1) * 9/11.
    with torch.no_grad():
        model[0].weight.fill_(3.0)
        model[1].running_mean.fill_(11.0)
        model[1].num_batches_tracked.fill_(7)
    ema.update()
    assert ema.module[0].weight.item() == pytest.approx(1 + 2 * 9 / 11)
    assert ema.module[1].running_mean.item() == pytest.approx(11 * 9 / 11)
    assert ema.module[1].num_batches_tracked.item() == 7  # integers are copied
    # Many updates later the ramp (1 + n) / (10 + n) exceeds 0.5 and the decay is 0.5.
    ema.updates = 100
    before = ema.module[0].weight.item()
    with torch.no_grad():
        model[0].weight.fill_(-1.0)
    ema.update()
    assert ema.module[0].weight.item() == pytest.approx(0.5 * before - 0.5)
    with pytest.raises(ValueError, match="ema_decay must be between 0 and 1"):
        ModelEma(model, decay=1.0)


def test_class_indices_is_argmax_with_first_index_on_ties() -> None:
    from ddrnet.engine.inference import class_indices

    scores = torch.tensor(
        [[[[0.0, 2.0]], [[1.0, 2.0]], [[1.0, -1.0]]]]  # (1, 3, 1, 2): a tie at each pixel
    )
    assert class_indices(scores).tolist() == [[[1, 0]]]  # first of the tied classes
    random = torch.randn(2, 11, 37, 53, generator=torch.Generator().manual_seed(0))
    assert torch.equal(class_indices(random), random.argmax(dim=1))
    assert class_indices(random[0], dim=0).shape == (37, 53)


def test_normalize_by_hand_for_uint8_float_and_channels_last_input() -> None:
    from ddrnet.engine.inference import normalize

    mean, std = (0.5, 0.25, 0.0), (0.25, 0.5, 2.0)
    # One pixel per channel value: (x / 255 - mean) / std.
    pixels = torch.tensor([[[[255]], [[0]], [[51]]]], dtype=torch.uint8)  # (1, 3, 1, 1)
    expected = [2.0, -0.5, 0.1]  # (1 - .5) / .25, (0 - .25) / .5, (.2 - 0) / 2
    assert normalize(pixels, mean, std).flatten().tolist() == pytest.approx(expected, abs=1e-6)
    floats = pixels.float() / 255
    assert normalize(floats, mean, std).flatten().tolist() == pytest.approx(expected, abs=1e-6)
    # A decoded (H, W, 3) frame permuted to NCHW is a channels-last view: same values, and
    # the result is plain contiguous float32.
    frame = torch.randint(0, 256, (1, 5, 7, 3), dtype=torch.uint8)
    result = normalize(frame.permute(0, 3, 1, 2), mean, std)
    reference = frame.permute(0, 3, 1, 2).float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)
    reference = reference / torch.tensor(std).view(1, 3, 1, 1)
    assert result.dtype == torch.float32 and result.is_contiguous()
    assert torch.allclose(result, reference, atol=1e-6)


@pytest.mark.parametrize(
    "low, high",
    [
        ((45, 60), (360, 480)),  # whole factors: only the cells between classes interpolated
        ((5, 7), (15, 14)),  # odd and unequal whole factors
        ((45, 60), (90, 60)),  # a factor of 1 on one side
        ((46, 61), (361, 479)),  # other sizes: OpenCV's resize
        ((10, 10), (3, 4)),
    ],
)
def test_upsampled_class_ids_is_argmax_of_the_bilinear_resize(low, high) -> None:
    from ddrnet.engine.inference import upsampled_class_ids

    logits = 4 * torch.randn(2, 11, *low, generator=torch.Generator().manual_seed(0))
    ids = upsampled_class_ids(logits, high)
    # The reference in float64: where the fast path (OpenCV's float32 resize) picks another
    # class, the two classes must tie to float32 rounding.
    exact = F.interpolate(logits.double(), size=high, mode="bilinear", align_corners=False)
    best = exact.max(dim=1)
    assert ids.shape == (2, *high) and ids.dtype == torch.int64
    differ = ids != best.indices
    assert differ.float().mean() < 1e-4
    picked = exact.gather(1, ids.unsqueeze(1)).squeeze(1)
    assert torch.all((best.values - picked)[differ] < 1e-5)
    # A model that already answers at the input size is arg-maxed as it is.
    assert torch.equal(upsampled_class_ids(logits, low), logits.max(dim=1).indices)
    assert not upsampled_class_ids(logits[:, :1], high).any()  # one class: all zeros


@pytest.mark.parametrize("low, high", [((45, 60), (360, 480)), ((46, 61), (361, 479))])
def test_upsampled_winning_class_is_the_softmax_of_the_bilinear_resize(low, high) -> None:
    """The confidence tail: ids as ``upsampled_class_ids``'s reference, and the winning
    class's probability as the softmax of the float64 resize gives it."""
    from ddrnet.engine.inference import upsampled_winning_class

    logits = 4 * torch.randn(2, 11, *low, generator=torch.Generator().manual_seed(1))
    ids, confidence = upsampled_winning_class(logits, high)
    exact = F.interpolate(logits.double(), size=high, mode="bilinear", align_corners=False)
    probabilities = exact.softmax(dim=1)
    best = probabilities.max(dim=1)
    assert ids.shape == confidence.shape == (2, *high) and ids.dtype == torch.int64
    assert confidence.dtype == torch.float32
    differ = ids != best.indices
    assert differ.float().mean() < 1e-4
    assert torch.allclose(confidence.double(), best.values, atol=1e-5)
    assert float(confidence.min()) >= 1 / 11 - 1e-6 and float(confidence.max()) <= 1 + 1e-6
    # The Predictor's confidence maps go through it: one class everywhere is certain.
    certain = torch.zeros(1, 3, *low)
    certain[:, 1] = 50.0
    ids, confidence = upsampled_winning_class(certain, high)
    assert bool((ids == 1).all()) and torch.allclose(confidence, torch.ones_like(confidence))


def test_upsampled_class_ids_of_a_real_frame_match_pytorchs_resize(camvid_root) -> None:
    """The bundled model's logits of a CamVid val frame (smooth, so most cells between four
    logit pixels share one class and are filled without interpolating): the same ids as
    ``F.interpolate`` + arg-max, save float32 near-ties, and a real share of cells skipped."""
    import ddrnet
    from ddrnet.data.camvid import camvid
    from ddrnet.engine.inference import (
        _class_ids_at_whole_scale,
        normalize,
        upsampled_class_ids,
    )

    model = ddrnet.create_model(checkpoint="camvid_ddrnet23_slim_train").eval()
    image = camvid(camvid_root, "val")[0][0]
    with torch.no_grad():
        logits = model(normalize(image[None], model.metadata.mean, model.metadata.std))
    assert logits.shape[-2:] == (45, 60)
    ids = upsampled_class_ids(logits, (360, 480))
    exact = F.interpolate(logits.double(), size=(360, 480), mode="bilinear", align_corners=False)
    best = exact.max(dim=1)
    differ = ids != best.indices
    assert differ.sum() <= 10
    picked = exact.gather(1, ids.unsqueeze(1)).squeeze(1)
    assert torch.all((best.values - picked)[differ] < 1e-5)
    corners = np.pad(logits[0].numpy().argmax(0), 1, mode="edge")
    top_left = corners[:-1, :-1]
    mixed = (
        (top_left != corners[:-1, 1:])
        | (top_left != corners[1:, :-1])
        | (top_left != corners[1:, 1:])
    )
    assert 0.02 < mixed.mean() < 0.5  # boundaries: a minority of the cells, but some
    direct = _class_ids_at_whole_scale(logits[0].numpy(), (8, 8))
    assert np.array_equal(direct, ids[0].numpy())
    # Under the caller's bf16 autocast (evaluation during a bf16 training run): the same
    # float32 logits give the same ids (it raised a TypeError on the bf16 product).
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(upsampled_class_ids(logits, (360, 480)), ids)
    # And through the Predictor, the network itself in bf16: nearly all pixels as in float32.
    bf16_ids = ddrnet.Predictor(model, amp_dtype=torch.bfloat16).class_ids(image[None])
    assert bf16_ids.shape == (1, 360, 480) and (bf16_ids == ids).float().mean() > 0.98


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.batch_size=0", "data: batch_size must be >= 1, got 0"),
        ("data.scale_range=[2, 0.5]", "scale_range must be 0 < low <= high"),
        ("data.crop_size=[0, 0]", "crop_size must be at least 8 x 8"),
        ("optim.lr=-1", "optim: lr must be > 0"),
        ("loss.ohem_threshold=2", "ohem_threshold must be in \\(0, 1\\]"),
        ("eval.every_epochs=0", "every_epochs must be >= 1"),
        ("eval.scales=[0]", "eval: scales: scale 0 is outside \\(0, 4\\]"),
        ("eval.scales=[9]", "eval: scales: scale 9 is outside \\(0, 4\\]"),
        ("train.epochs=0", "train: epochs must be >= 1"),
        ("train.threads=-1", "threads must be >= 1"),
        ("model.width_multiplier=0", "width_multiplier must be > 0"),
        ("model.width_multiplier=100", "width_multiplier must be at most 8 for ddrnet_23_slim"),
        ("model.norm=layer", "model.norm: 'layer' is not one of \\['batch', 'group', 'ibn'\\]"),
        ("model.norm_groups=0", "model: norm_groups must be >= 1, got 0"),
        ("model.blocks=[1, 0, 1, 1]", "model: blocks must be four counts of 1 to 16"),
        ("model.blocks=[1, 1, 1]", "model.blocks: expected 4 values, got \\[1, 1, 1\\]"),
        ("model.planes=300", "model: planes must be at most 256, got 300"),
        ("model.head_planes=0", "model: head_planes must be a positive integer, got 0"),
        ("model.name=ddrnet_23_slim_imagenet", "model: name must be one of \\['ddrnet_23_slim'"),
        (
            "loss.class_weights=enett",
            "class_weights must be one of \\['enet', 'median_frequency'\\]",
        ),
        ("loss.class_weights=[1, 0]", "class_weights must be > 0 per class"),
        ("loss.label_stride=0", "loss: label_stride must be >= 1"),
        ("data.val_sequences=[]", "val_sequences must be a non-empty list \\(or null: all\\)"),
    ],
)
def test_settings_out_of_range_are_named(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(Config, None, [override])


def test_a_custom_width_and_the_width_multiplier_are_refused_together() -> None:
    with pytest.raises(ConfigError, match=r"planes must be null with width_multiplier"):
        load_config(Config, None, ["model.planes=24", "model.width_multiplier=2"])
    config = load_config(Config, None, ["model.blocks=[1, 1, 2, 1]", "model.dappm_planes=64"])
    assert config.model.blocks == (1, 1, 2, 1) and config.model.dappm_planes == 64


_FAULTS_PER_CYCLE = """
import resource, sys, torch
from ddrnet.engine.allocator import retain_freed_memory

def faults(cycles=20):
    for _ in range(3):  # 64 MiB blocks; glibc settles after the first two
        torch.empty(16 << 20).fill_(1.0)
    counts = []
    for _ in range(cycles):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        torch.empty(16 << 20).fill_(1.0)  # allocate, touch every page, free
        counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return min(counts)

default = faults()
applied = retain_freed_memory()
print(default, faults(), applied)
"""


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)
def test_retained_memory_is_reused_without_page_faults() -> None:
    # In a child process: the setting lasts for the process's lifetime. With glibc's defaults a
    # freed 64 MiB block (above the 32 MiB its adaptive threshold reaches) goes back to the
    # kernel, and its 16 384 pages fault in again on reuse, every cycle. With the setting, the
    # first 0-5 cycles still fault all their pages (measured over 12 runs) before malloc's heap
    # settles, so the median of ten cycles fell on either side; the fewest of twenty is
    # compared.
    output = subprocess.run(
        [sys.executable, "-c", _FAULTS_PER_CYCLE], capture_output=True, text=True, check=True
    ).stdout.split()
    default, retained, applied = float(output[0]), float(output[1]), output[2]
    assert applied == "True"
    assert default > 10_000
    assert retained < 100


@pytest.mark.parametrize("native_bf16", [False, True])
def test_amp_auto_takes_bf16_only_where_the_cpu_computes_it(monkeypatch, caplog, native_bf16):
    """Emulated bf16 ran a training step 10x slower than float32 on an AMD Zen 2 (AVX2):
    auto must not pick it there, and an explicit bf16 is obeyed with a warning."""
    from ddrnet.engine import device as inference

    monkeypatch.setattr(inference, "cpu_has_native_bf16", lambda: native_bf16)
    cpu = torch.device("cpu")
    assert inference.resolve_precision("auto", cpu) == (torch.bfloat16 if native_bf16 else None)
    assert inference.resolve_precision("none", cpu) is None
    with caplog.at_level("WARNING", logger="ddrnet.engine.device"):
        assert inference.resolve_precision("bf16", cpu, option="train.amp") == torch.bfloat16
    warnings = [r.getMessage() for r in caplog.records]
    if native_bf16:
        assert warnings == []
    else:
        assert len(warnings) == 1 and warnings[0].startswith("train.amp=bf16: this CPU")
    with pytest.raises(ValueError, match=r"--amp=fp16 needs CUDA"):
        inference.resolve_precision("fp16", cpu, option="--amp")
    with pytest.raises(ValueError, match=r"choose one of auto, none, bf16, fp16"):
        inference.resolve_precision("half", cpu)
    assert Config().train.amp == "auto"


def test_cpu_capabilities_come_from_the_cpu_flags(monkeypatch) -> None:
    """bf16 and int8 dot products as /proc/cpuinfo reports them: a Zen 2 (AVX2 only), a
    Sapphire Rapids (AMX, AVX512-BF16, VNNI), and ARM, which has no int16 saturation."""
    from ddrnet import hardware

    for cap in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):  # an instruction-set cap hides them
        monkeypatch.delenv(cap, raising=False)
    if platform.system() == "Linux":  # the real file parses: flags on x86, Features on ARM
        assert {"avx2", "asimd", "sse2"} & hardware._cpu_flags()
    monkeypatch.setattr(hardware, "_torch_cpu_check", lambda name: False)
    monkeypatch.setattr(hardware.platform, "machine", lambda: "x86_64")
    zen2 = frozenset("fpu sse2 avx fma avx2 f16c sha_ni".split())
    sapphire_rapids = zen2 | {"avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8"}
    laptop_with_avx_vnni = zen2 | {"avx_vnni"}
    cases = [
        (zen2, False, False),
        (sapphire_rapids, True, True),
        (laptop_with_avx_vnni, False, True),
    ]
    for flags, bf16, int8 in cases:
        monkeypatch.setattr(hardware, "_cpu_flags", lambda f=flags: f)
        assert (hardware.cpu_has_native_bf16(), hardware.cpu_has_int8_dot_product()) == (bf16, int8)
    monkeypatch.setattr(hardware.platform, "machine", lambda: "aarch64")
    monkeypatch.setattr(hardware, "_cpu_flags", lambda: frozenset({"fp", "asimd", "bf16"}))
    assert hardware.cpu_has_native_bf16() and hardware.cpu_has_int8_dot_product()
    monkeypatch.setattr(hardware, "_cpu_flags", lambda: frozenset({"fp", "asimd"}))
    assert not hardware.cpu_has_native_bf16()


def test_an_onednn_isa_cap_hides_what_the_kernels_may_not_use(monkeypatch) -> None:
    """ONEDNN_MAX_CPU_ISA makes PyTorch's and OpenVINO's kernels run as on a lesser CPU: on a
    Sapphire Rapids capped to AVX2 neither bf16 nor VNNI is there; AVX512_CORE_VNNI keeps VNNI
    only; AVX512_CORE_AMX (or no cap, or ALL) keeps both; the older DNNL_ name counts too."""
    from ddrnet import hardware

    monkeypatch.setattr(hardware, "_torch_cpu_check", lambda name: False)
    monkeypatch.setattr(hardware.platform, "machine", lambda: "x86_64")
    flags = frozenset("avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_int8".split())
    monkeypatch.setattr(hardware, "_cpu_flags", lambda: flags)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    cases = [
        ("avx2", False, False),
        ("AVX512_CORE", False, False),
        ("AVX512_CORE_VNNI", False, True),
        ("AVX512_CORE_AMX", True, True),
        ("ALL", True, True),
        ("", True, True),
    ]
    for cap, bf16, int8 in cases:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
        assert (hardware.cpu_has_native_bf16(), hardware.cpu_has_int8_dot_product()) == (bf16, int8)
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", "AVX2")
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    assert hardware.onednn_isa_cap() == "AVX2" and not hardware.cpu_has_int8_dot_product()
    assert hardware.describe_cpu().endswith("oneDNN capped to AVX2)")


def test_steps_skipped_by_fp16_loss_scaling_leave_the_optimizer_state_finite() -> None:
    """GradScaler skips a step whose gradients overflowed; the optimizer must then change
    nothing. Fused SGD wrote such gradients into its momentum buffers (and the next step
    into the weights: an fp16 run on a GPU died of a NaN loss), so loss scaling takes the
    unfused implementation. On the CPU, float16 autocast overflows the same way."""
    from ddrnet import create_model
    from ddrnet.engine.config import OptimConfig
    from ddrnet.engine.schedules import build_optimizer

    model = create_model("ddrnet_23_slim", num_classes=11, aux_head=True).train()
    config = OptimConfig(lr=0.005, momentum=0.9, weight_decay=5e-4)
    cpu = torch.device("cpu")
    assert build_optimizer(config, model.parameters(), cpu, loss_scaling=False).defaults["fused"]
    optimizer = build_optimizer(config, model.parameters(), cpu, loss_scaling=True)
    scaler = torch.amp.GradScaler("cpu")  # 65536 at first: the first steps overflow
    images, target = torch.randn(2, 3, 96, 128), torch.randint(0, 11, (2, 96, 128))
    skipped = 0
    for _ in range(3):
        with torch.autocast("cpu", dtype=torch.float16):
            main, _aux = model.forward_with_aux(images)
        logits = torch.nn.functional.interpolate(main.float(), (96, 128), mode="bilinear")
        loss = torch.nn.functional.cross_entropy(logits, target)
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scale = scaler.get_scale()
        scaler.step(optimizer)
        scaler.update()
        skipped += scaler.get_scale() < scale
    assert skipped >= 1  # the case this test is about happened
    buffers = [s["momentum_buffer"] for s in optimizer.state.values() if "momentum_buffer" in s]
    assert all(torch.isfinite(b).all() for b in buffers)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_sliding_windows_cover_the_image_and_tiny_ones_are_refused(camvid_sample) -> None:
    """A window the size of the image is one plain pass; overlapping windows average their
    logits where they overlap; a window under 64 pixels a side is refused by name."""
    from ddrnet.engine.predictor import Predictor, image_batch
    from ddrnet.errors import UsageError

    from helpers import camvid_model

    image, _ = camvid_sample
    model = camvid_model()
    batch = image_batch([image])
    plain = Predictor(model).scores(batch)
    whole = Predictor(model, window=(360, 480)).scores(batch)
    assert torch.allclose(whole, plain, atol=1e-4)
    tiled = Predictor(model, window=(192, 256), stride=(168, 224)).scores(batch)
    assert tiled.shape == plain.shape and torch.isfinite(tiled).all()
    # Where no windows overlap, a pixel's logits are its one window's.
    corner = Predictor(model).scores(batch[..., :192, :256])
    assert torch.allclose(tiled[..., :168, :224], corner[..., :168, :224], atol=1e-4)
    with pytest.raises(
        UsageError, match="--window 7x3: under 64 pixels a side, too small for a sliding window"
    ):
        Predictor(model, window=(7, 3))


def test_reports_write_scores_never_scored_as_null_and_tables_as_a_dash(tmp_path) -> None:
    """Python writes nan as ``NaN``, which is not JSON (JavaScript refuses the file): a class
    neither labelled nor predicted is ``null`` in a report and ``-`` in a table."""
    import json
    import math

    from ddrnet.atomic import atomic_write_json, nan_for_null
    from ddrnet.engine.metrics import SegmentationMetrics

    # class 1 is in neither the labels nor the predictions: its IoU is nan
    metrics = SegmentationMetrics.from_matrix(torch.tensor([[3, 0, 1], [0, 0, 0], [1, 0, 5]]))
    assert math.isnan(metrics.iou[1]) and metrics.miou == pytest.approx((3 / 5 + 5 / 7) * 50)
    path = tmp_path / "report.json"
    atomic_write_json({**metrics.to_dict(["a", "b", "c"]), "nested": [math.inf, (1.5,)]}, path)

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    document = json.loads(path.read_text(), parse_constant=refuse)
    assert document["per_class_IoU"] == {"a": 60.0, "b": None, "c": pytest.approx(500 / 7)}
    assert document["nested"] == [None, [1.5]]
    read_back = nan_for_null(document)  # as the figures read a report: nan, no point drawn
    assert math.isnan(read_back["per_class_IoU"]["b"]) and read_back["nested"][1] == [1.5]
    assert metrics.table(["a", "b", "c"]).splitlines()[3].split() == ["b", "-"]


def test_a_set_of_files_replaces_only_what_its_list_names(tmp_path) -> None:
    """``staged_files`` with a set name deletes the files its earlier set listed, never
    others: not a user's file beside them, not a path a hand-edited list points outside."""
    from ddrnet.atomic import staged_files

    folder, outside = tmp_path / "pictures", tmp_path / "precious.png"
    outside.write_bytes(b"outside")
    folder.mkdir()
    (folder / "001_user.png").write_bytes(b"the user's")
    with staged_files(folder, "set") as staging:
        for name in ("001_a.png", "002_b.png"):
            (staging / name).write_bytes(name.encode())
    assert (folder / ".ddrnet-set").read_text() == "001_a.png\n002_b.png\n"
    with pytest.raises(KeyboardInterrupt), staged_files(folder, "set") as staging:
        (staging / "001_c.png").write_bytes(b"c")
        raise KeyboardInterrupt  # stopped midway: the earlier set stays whole
    assert sorted(p.name for p in folder.glob("*.png")) == [
        "001_a.png",
        "001_user.png",
        "002_b.png",
    ]
    (folder / ".ddrnet-set").write_text("001_a.png\n002_b.png\n../precious.png\n" + f"{outside}\n")
    with staged_files(folder, "set") as staging:
        (staging / "001_c.png").write_bytes(b"c")
    assert sorted(p.name for p in folder.glob("*.png")) == ["001_c.png", "001_user.png"]
    assert outside.read_bytes() == b"outside" and not (folder / ".partial").exists()
    assert (folder / ".ddrnet-set").read_text() == "001_c.png\n"


def test_scratch_folders_of_killed_processes_are_removed_by_the_next(tmp_path, monkeypatch) -> None:
    """An export killed with SIGKILL never removes its scratch folder (graphs of tens of
    MB): the next scratch folder removes those whose process has ended, and only those,
    also where the process id has since been given to another process."""
    import os
    import tempfile
    from pathlib import Path

    from ddrnet.atomic import process_tag, scratch_folder

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    gone = 2**22 + 12345  # above Linux's largest process id: no such process
    init_start = int(process_tag(1).split("-")[1])
    names = [f"ddrnet-onnx-{gone}-0-k1ll3d", f"ddrnet-onnx-1-{init_start + 1}-reused",
             f"ddrnet-bench-ncnn-{process_tag(os.getpid())}-alive0",
             f"ddrnet-onnx-{process_tag(1)}-init", "ddrnet-onnx-oldstyle", "mine"]  # fmt: skip
    for name in names:
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.onnx").write_bytes(b"graph")
    with scratch_folder("pnnx") as folder:
        assert Path(folder).name.startswith(f"ddrnet-pnnx-{process_tag(os.getpid())}-")
        left = sorted(path.name for path in tmp_path.iterdir() if path.name != Path(folder).name)
    assert left == sorted(names[2:])


@pytest.mark.parametrize("earlier", [True, False], ids=["replacing", "first"])
def test_files_replaced_together_are_whole_after_a_kill_at_any_rename(
    tmp_path, monkeypatch, earlier
) -> None:
    """An ncnn export's .param, .bin and sidecar only work together: a kill at each rename of
    the swap leaves, once the next reader or writer has looked, the whole earlier set (or, for
    a first export, none) or the whole new one, and no staging folder."""
    import os

    from ddrnet import file_sets

    class Killed(BaseException):
        pass

    real_replace = os.replace
    outcomes = set()
    for kill_at in range(7):  # three files moved aside, three into place: 6 renames
        folder = tmp_path / f"kill{kill_at}"
        folder.mkdir()
        paths = [folder / name for name in ("m.param", "m.bin", "m.json")]
        for path in paths if earlier else ():
            path.write_text("old " + path.name)
        calls = []

        def replace(source, target, calls=calls, kill_at=kill_at):
            calls.append(target)
            if len(calls) > kill_at:
                raise Killed
            real_replace(source, target)

        monkeypatch.setattr(os, "replace", replace)
        try:
            with file_sets.replaced_together(paths) as staged:
                for path in paths:
                    staged[path].write_text("new " + path.name)
        except Killed:
            pass
        monkeypatch.setattr(os, "replace", real_replace)
        restored = file_sets.restored_before_reading(paths)
        contents = {path.read_text() if path.exists() else None for path in paths}
        if not earlier and contents == {None}:
            outcome = "none"
        else:
            assert len({text.split()[0] for text in contents}) == 1, (kill_at, contents)
            outcome = next(iter(contents)).split()[0]
        assert restored == (earlier and outcome == "old" and 0 < kill_at)
        outcomes.add(outcome)
        assert sorted(p.name for p in folder.iterdir()) == (
            ["m.bin", "m.json", "m.param"] if outcome != "none" else []
        )
    assert outcomes == {"old" if earlier else "none", "new"}


def test_a_set_whose_writing_fails_leaves_the_earlier_one(tmp_path) -> None:
    from ddrnet.file_sets import replaced_together

    paths = [tmp_path / "m.pte", tmp_path / "m.json"]
    for path in paths:
        path.write_text("old")
    with pytest.raises(RuntimeError, match="did not write m.json"):
        with replaced_together(paths) as staged:
            staged[paths[0]].write_text("new")
    assert [path.read_text() for path in paths] == ["old", "old"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.pte"]


def test_a_set_being_replaced_by_a_running_process_is_left_to_it(tmp_path) -> None:
    """A reader that loads the files while another process exports them must not undo that
    export; a swap whose process is gone is undone, also when its id now names another
    process (ids are reused: the start time tells them apart)."""
    from ddrnet.atomic import process_tag
    from ddrnet.file_sets import restore_interrupted_set

    paths = [tmp_path / "m.pte", tmp_path / "m.json"]
    for path in paths:
        path.write_text("new")
    running = tmp_path / f".m.pte.ddrnet-new.{process_tag(1)}"  # process 1 (init) runs
    for writer in (f"{2**22 + 7}-5", f"1-{int(process_tag(1).split('-')[1]) + 1}"):  # gone
        for path in paths:
            path.write_text("new")
        new, old = (tmp_path / f".m.pte.ddrnet-{kind}.{writer}" for kind in ("new", "old"))
        for folder in (running, new, old):
            folder.mkdir(exist_ok=True)
        (old / "m.pte").write_text("old")
        (old / "m.json").write_text("old")
        assert restore_interrupted_set(paths), writer
        assert [path.read_text() for path in paths] == ["old", "old"]
        assert sorted(p.name for p in tmp_path.iterdir()) == [running.name, "m.json", "m.pte"]


# An override that did nothing, what it was refused with, and what makes it apply.
DEAD_SETTINGS = [
    ("optim.momentum=0.5", "left at 0.9 unless optimizer is sgd", "optim.optimizer=sgd"),
    ("loss.ohem_threshold=0.5", "left at 0.9 unless ohem is true", "loss.ohem=true"),
    ("loss.ohem_min_kept=10", "left at 131072 unless ohem is true", "loss.ohem=true"),
    ("loss.boundary_width=7", "left at 3 unless boundary_weight is set", "loss.boundary_weight=1"),
    ("model.norm_groups=7", "left at 32 unless norm is group", "model.norm=group"),
    ("optim.warmup_ratio=0.5", "left at 0.1 unless warmup_epochs > 0", "optim.warmup_epochs=1"),
]


@pytest.mark.parametrize(("override", "message", "applies"), DEAD_SETTINGS)
def test_settings_that_would_do_nothing_are_refused_by_name(override, message, applies) -> None:
    """Each was accepted, trained without any effect, and said nothing."""
    off = {"optim.": "optim.optimizer=adamw", "loss.ohem": "loss.ohem=false"}
    context = [value for prefix, value in off.items() if override.startswith(prefix)]
    with pytest.raises(
        ConfigError, match=f"{override.split('=')[0].split('.')[1]} must be {message}"
    ):
        load_config(Config, None, [*context[:1], override])
    load_config(Config, None, [applies, override])  # where it applies, it is taken


def test_a_stop_during_a_save_is_a_stop_not_the_savers_error(tmp_path) -> None:
    """torch.save interrupted by Ctrl-C (or SIGTERM) mid-write raises its own RuntimeError
    while closing its zip writer: the command printed that traceback instead of stopping."""
    from ddrnet.atomic import atomic_write
    from ddrnet.errors import Terminated

    target = tmp_path / "last.pt"
    target.write_bytes(b"the earlier checkpoint")

    def save(stream) -> None:
        try:
            stream.write(b"half")
            raise Terminated
        finally:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos")

    with pytest.raises(Terminated):
        atomic_write(target, save)
    assert target.read_bytes() == b"the earlier checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    with pytest.raises(RuntimeError, match="unexpected pos"):  # a plain failure stays one
        atomic_write(target, lambda stream: (_ for _ in ()).throw(RuntimeError("unexpected pos")))


def test_an_empty_resume_or_pretrained_path_is_refused(tmp_path) -> None:
    """`--resume "$RUN"` or `model.pretrained=$CKPT` with an empty variable started a run
    from scratch without a word."""
    from ddrnet.engine.checkpointing import TrainingError
    from ddrnet.engine.run_folder import checked_output

    with pytest.raises(TrainingError, match="--resume '': give a checkpoint or run folder"):
        checked_output(tmp_path / "run", "")
    with pytest.raises(ConfigError, match="pretrained must be a file"):
        load_config(Config, None, ["model.pretrained=''"])
