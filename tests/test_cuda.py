"""The CUDA paths on a real GPU: the networks, the bundled model, mixed precision, the
benchmark rows, ONNX export and the NCCL collectives. Every test here is marked ``cuda`` and
skips on machines without a CUDA GPU; ``scripts/gpu_check.py`` runs them where one is lent.

Tolerances: float32 on the GPU runs with TF32 disabled, so it differs from the CPU only by
the order of summation (1e-5 relative); float16/bfloat16 are compared by the labels they
give on real CamVid frames, which is what a user sees.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

import ddrnet
from ddrnet.data.io import read_rgb
from ddrnet.engine.distributed import DistributedContext, all_reduce_sum, any_process
from ddrnet.models.weights import bundled_model_path

from official_reference import official_network, randomize_batchnorm

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

SEGMENTATION = ddrnet.list_models("segmentation")


@pytest.fixture(autouse=True)
def _exact_float32() -> None:
    """float32 means float32: TF32 matrix units would round inputs to 10-bit mantissas."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


@pytest.fixture(scope="module")
def val_frames(camvid_root: Path) -> list[np.ndarray]:
    """Four real CamVid val frames (480x360 RGB; PNG, or JPEG where a copy was made small
    enough to send to a GPU machine)."""
    names = sorted(p for p in (camvid_root / "val").iterdir() if p.suffix in (".png", ".jpg"))[:4]
    return [read_rgb(name) for name in names]


@pytest.mark.parametrize("name", SEGMENTATION)
def test_every_variant_on_cuda_matches_the_cpu(name: str) -> None:
    model = ddrnet.create_model(name, num_classes=19, aux_head=True)
    randomize_batchnorm(model)
    model.eval()
    images = torch.randn(1, 3, 250, 330)  # odd size: padding and resizing paths too
    with torch.no_grad():
        expected = model(images)
        actual = model.cuda()(images.cuda()).cpu()
    assert actual.shape == expected.shape == (1, 19, 32, 42)
    assert (actual - expected).abs().max() <= 1e-4 * expected.abs().max()


@pytest.mark.parametrize("fusion", ["cbam", "pixel", "transformer"])
def test_attention_fusions_match_the_cpu_and_train_in_float16(fusion: str) -> None:
    """The attention forms (``model.fusion``) compute on the GPU what they compute on the
    CPU, and a float16 training pass through them stays finite, gradients included."""
    model = ddrnet.create_model("ddrnet_23_slim", num_classes=11, aux_head=True, fusion=fusion)
    randomize_batchnorm(model)
    model.eval()
    images = torch.randn(1, 3, 250, 330)
    with torch.no_grad():
        expected = model(images)
        actual = model.cuda()(images.cuda()).cpu()
    assert (actual - expected).abs().max() <= 1e-4 * expected.abs().max()
    model.train()
    with torch.autocast("cuda", torch.float16):
        main, aux = model.forward_with_aux(torch.randn(2, 3, 128, 160, device="cuda"))
    assert torch.isfinite(main).all() and torch.isfinite(aux).all()
    (main.float().mean() + aux.float().mean()).backward()
    gradients = [p.grad for p in model.parameters() if p.grad is not None]
    assert gradients and all(torch.isfinite(g).all() for g in gradients)


@pytest.mark.parametrize("name", SEGMENTATION)
def test_official_network_and_ours_agree_on_cuda(name: str) -> None:
    official = official_network(name, augment=True)
    randomize_batchnorm(official)
    state = {f"model.{k}": v for k, v in official.state_dict().items()}
    ours = ddrnet.create_model(name, aux_head=True)
    report = ddrnet.load_weights(ours, state)
    assert report.layout == "official" and not report.missing
    images = torch.randn(1, 3, 128, 192, device="cuda")
    with torch.no_grad():
        expected = official.cuda().eval()(images)
        main, aux = ours.cuda().eval().forward_with_aux(images)
    assert (main - expected[0]).abs().max() < 1e-4
    assert (aux - expected[1]).abs().max() < 1e-4


@pytest.mark.parametrize(
    ("amp_dtype", "min_agreement"),
    [(None, 0.9999), (torch.float16, 0.995), (torch.bfloat16, 0.99)],
)
def test_bundled_model_labels_on_cuda_match_the_cpu(
    val_frames: list[np.ndarray], amp_dtype: torch.dtype | None, min_agreement: float
) -> None:
    """The same labels as the CPU float32 path on real frames; half precision may flip only
    pixels on class boundaries."""
    model = ddrnet.create_model(checkpoint=bundled_model_path())
    on_cpu = ddrnet.Predictor(model)
    on_gpu = ddrnet.Predictor(
        ddrnet.create_model(checkpoint=bundled_model_path()), device="cuda", amp_dtype=amp_dtype
    )
    for frame in val_frames:
        expected, actual = on_cpu.predict(frame), on_gpu.predict(frame)
        assert actual.shape == expected.shape == frame.shape[:2]
        assert (actual == expected).mean() >= min_agreement


def test_checkpoint_round_trip_from_cuda(tmp_path: Path) -> None:
    """A model trained on the GPU saves CPU tensors and loads back on either device."""
    model = ddrnet.create_model(checkpoint=bundled_model_path()).cuda()
    path = ddrnet.save_model(model, tmp_path / "gpu.safetensors", model.metadata)
    restored = ddrnet.create_model(checkpoint=path)
    for (key, value), (other_key, other) in zip(
        model.state_dict().items(), restored.state_dict().items()
    ):
        assert key == other_key and other.device.type == "cpu"
        assert torch.equal(value.cpu(), other)


@pytest.mark.parametrize("amp_dtype", [torch.float16, torch.bfloat16])
def test_training_steps_in_mixed_precision_and_channels_last(amp_dtype: torch.dtype) -> None:
    """Forward and backward with the auxiliary head under autocast in channels_last, with
    the trainer's optimizer and fp16 loss scaling: the steps the scaler skips (the first
    ones overflow at its initial scale) change nothing, and the others lower the loss on a
    fixed batch."""
    from ddrnet.engine.config import OptimConfig
    from ddrnet.engine.schedules import build_optimizer

    model = ddrnet.create_model("ddrnet_23_slim", num_classes=11, aux_head=True).cuda()
    model = model.to(memory_format=torch.channels_last).train()
    images = torch.randn(2, 3, 181, 243, device="cuda").contiguous(
        memory_format=torch.channels_last
    )
    target = torch.randint(0, 11, (2, 181, 243), device="cuda")
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    config = OptimConfig(lr=0.01, momentum=0.9, weight_decay=5e-4)
    optimizer = build_optimizer(
        config, model.parameters(), torch.device("cuda"), scaler.is_enabled()
    )
    losses = []
    for _ in range(30):
        with torch.autocast("cuda", dtype=amp_dtype):
            main, aux = model.forward_with_aux(images)
            size = target.shape[-2:]
            main = torch.nn.functional.interpolate(main, size, mode="bilinear")
            aux = torch.nn.functional.interpolate(aux, size, mode="bilinear")
            loss = torch.nn.functional.cross_entropy(main.float(), target)
            loss = loss + 0.4 * torch.nn.functional.cross_entropy(aux.float(), target)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        assert all(p.grad.dtype == torch.float32 for p in model.parameters() if p.grad is not None)
        scaler.step(optimizer)
        scaler.update()
        losses.append(loss.item())
    assert all(np.isfinite(losses)), losses
    assert np.mean(losses[-3:]) < losses[0], losses


def test_cuda_benchmark_rows_run_and_agree_with_eager() -> None:
    from ddrnet.deploy import run_benchmarks

    model = ddrnet.create_model(checkpoint=bundled_model_path())
    rows = {
        row["backend"]: row
        for row in run_benchmarks(
            model, (256, 512), ["eager", "cuda", "cuda_fp16"], seconds=1.0, warmup_seconds=0.2
        )
    }
    for name in ("cuda", "cuda_fp16"):
        assert rows[name]["error"] is None, rows[name]["error"]
        assert rows[name]["fps"] > 0 and rows[name]["peak_gpu_memory_mib"] > 0
    assert rows["cuda"]["max_abs_diff"] < 1e-3  # float32: summation order only
    assert rows["cuda_fp16"]["max_abs_diff"] < 0.5  # logits of order 10 in float16


def test_onnx_export_of_a_cuda_model_matches_pytorch(tmp_path: Path, val_frames) -> None:
    from ddrnet.deploy import export_onnx, verify_onnx
    from ddrnet.engine.inference import normalize

    model = ddrnet.create_model(checkpoint=bundled_model_path()).cuda().eval()
    path = export_onnx(model, tmp_path / "gpu.onnx", (360, 480))
    frame = torch.from_numpy(val_frames[0]).permute(2, 0, 1)[None]
    inputs = [normalize(frame, model.metadata.mean, model.metadata.std)]
    assert verify_onnx(model.cpu(), path, inputs=inputs) < 1e-3


def test_nccl_collectives_take_the_tensors_we_give_them(tmp_path: Path) -> None:
    """``any_process`` and the evaluation's ``all_reduce_sum`` under NCCL (a one-process
    group: NCCL refuses CPU tensors whatever the group's size)."""
    if not dist.is_nccl_available():
        pytest.skip("this PyTorch build has no NCCL")
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("nccl", store=store, rank=0, world_size=1)
    try:
        context = DistributedContext(rank=0, world_size=2)  # "enabled": the collectives run
        assert any_process(True, context) is True
        assert any_process(False, context) is False
        total = all_reduce_sum(torch.arange(4.0, device="cuda"), context)
        assert total.tolist() == [0.0, 1.0, 2.0, 3.0]
    finally:
        dist.destroy_process_group()


def test_cuda_device_names_in_the_environment_are_respected() -> None:
    from ddrnet.engine.device import pick_device

    assert pick_device("auto").type == "cuda"
    assert pick_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(ValueError, match="usable CUDA device"):
        pick_device(f"cuda:{torch.cuda.device_count()}")
