"""Inference speed of one model across backends (CPU, and NVIDIA GPUs where present),
measured the same way for each.

``benchmark`` times any callable with ``time.perf_counter`` (warm-up first, then per-call
latencies). ``ddrnet.deploy.backends.build_runner`` turns a model into a ready-to-call
backend (eager PyTorch, BN-folded, ``torch.compile``, ONNX Runtime, OpenVINO, ncnn, CUDA,
TensorRT). ``run_benchmarks`` times a list of backends in one process, in interleaved rounds, and
reports each one's speed relative to eager float32 measured in the same rounds, so machine
load, its drift and thread settings cancel out of the ratio. ``measure_conv_peak_gflops``
gives the CPU's achievable convolution throughput, the yardstick for "fraction of peak".

Peak memory is the process's peak resident set size (Linux ``VmHWM``) while a backend is
built and timed for the first time, minus the resident size just before: the extra memory
that backend needed at its worst (weights copies, workspace, compiled code), in MiB. The
peak is reset per backend through ``/proc/self/clear_refs``; where that is not possible (not
Linux, no permission) ``getrusage`` ``ru_maxrss`` is used, which never goes down, so a backend that
stays under an earlier backend's peak then reports 0. tracemalloc is no use here: it sees
only Python allocations, not PyTorch's or ONNX Runtime's.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ddrnet.choices import BENCH_ROUNDS, BENCH_SECONDS, BENCH_SIZE, BENCH_WARMUP_SECONDS
from ddrnet.deploy.backends import (
    BACKENDS,
    GPU_BACKENDS,
    REFERENCE_BACKEND,
    Runner,
    build_runner,
    check_backends,
    default_backends,
    torch_call,
)
from ddrnet.deploy.export import float_cpu_copy
from ddrnet.models.complexity import count_macs


def _percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Linear-interpolated percentile of already sorted values (``fraction`` in 0..1)."""
    position = fraction * (len(sorted_values) - 1)
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def _time_calls(
    fn: Callable[..., Any],
    inputs: Sequence[Any],
    warmup_seconds: float,
    min_seconds: float,
    min_iterations: int,
    max_iterations: int | None,
) -> list[float]:
    """Per-call wall-clock seconds of ``fn(*inputs)`` after at least one warm-up call."""
    if min_iterations < 1:
        raise ValueError(f"min_iterations must be >= 1, got {min_iterations}")
    if max_iterations is not None and max_iterations < min_iterations:
        raise ValueError(
            f"max_iterations ({max_iterations}) is below min_iterations ({min_iterations})"
        )
    deadline = time.perf_counter() + warmup_seconds
    fn(*inputs)
    while time.perf_counter() < deadline:
        fn(*inputs)
    latencies: list[float] = []
    started = time.perf_counter()
    while True:
        begin = time.perf_counter()
        fn(*inputs)
        end = time.perf_counter()
        latencies.append(end - begin)
        if max_iterations is not None and len(latencies) >= max_iterations:
            break
        if len(latencies) >= min_iterations and end - started >= min_seconds:
            break
    return latencies


def _latency_statistics(latencies: Sequence[float], batch_size: int) -> dict[str, float]:
    """The ``benchmark`` keys for per-call ``latencies`` in seconds."""
    total = sum(latencies)
    ordered = sorted(latencies)
    return {
        "iterations": len(latencies),
        "fps": batch_size * len(latencies) / total,
        "latency_ms_mean": 1000 * statistics.fmean(latencies),
        "latency_ms_p50": 1000 * _percentile(ordered, 0.50),
        "latency_ms_p90": 1000 * _percentile(ordered, 0.90),
        "latency_ms_p99": 1000 * _percentile(ordered, 0.99),
        "latency_ms_min": 1000 * ordered[0],
        "seconds": total,
    }


def benchmark(
    fn: Callable[..., Any],
    inputs: Sequence[Any] = (),
    warmup_seconds: float = 1.0,
    min_seconds: float = 3.0,
    *,
    min_iterations: int = 5,
    max_iterations: int | None = None,
    batch_size: int = 1,
) -> dict[str, float]:
    """Time ``fn(*inputs)``: warm up, then call it until ``min_seconds`` and
    ``min_iterations`` are both reached (or ``max_iterations``).

    Warm-up runs at least once, so one-time work (allocator growth, oneDNN primitive
    creation, compilation) stays out of the numbers. Returns:

    - ``iterations``: timed calls;
    - ``fps``: images per second, ``batch_size * iterations / total time``;
    - ``latency_ms_mean``, ``latency_ms_p50``, ``latency_ms_p90``, ``latency_ms_p99``,
      ``latency_ms_min``: per call, in milliseconds;
    - ``seconds``: total timed wall-clock time.
    """
    latencies = _time_calls(fn, inputs, warmup_seconds, min_seconds, min_iterations, max_iterations)
    return _latency_statistics(latencies, batch_size)


def _proc_status_bytes(field_name: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (``VmHWM``, ``VmRSS``) in bytes; None off Linux."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _peak_rss_bytes() -> int:
    """Peak resident set size of this process since the last reset, in bytes."""
    peak = _proc_status_bytes("VmHWM")
    if peak is not None:
        return peak
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def _current_rss_bytes() -> int:
    current = _proc_status_bytes("VmRSS")
    return current if current is not None else _peak_rss_bytes()


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS (Linux >= 4.0); False if not."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def run_benchmarks(
    model: nn.Module,
    input_size: tuple[int, int] = BENCH_SIZE,
    backends: Sequence[str] | None = None,
    seconds: float = BENCH_SECONDS,
    *,
    rounds: int = BENCH_ROUNDS,
    warmup_seconds: float = BENCH_WARMUP_SECONDS,
    batch_size: int = 1,
    threads: int | None = None,
    calibration_images: Sequence[Any] | None = None,
    peak_gflops: float | None = None,
    measure_peak: Callable[[], float] | None = None,
) -> list[dict[str, Any]]:
    """Time ``backends`` (default: ``default_backends()``, those that run well here) on
    ``model`` at ``input_size`` ``(H, W)``, one row per backend, in the order given; the
    defaults are ``ddrnet bench``'s.

    Eager float32 (``"eager"``) is the reference: it is timed first, and added if missing,
    so every ``speedup`` (``fps / eager fps``) compares runs made in the same process under
    the same load. A backend that cannot be built or run (``torch.compile`` without a
    compiler, OpenVINO not installed) gives a row with ``error`` (the exception as text)
    instead of numbers; the others still run.

    ``seconds`` of timed calls per backend are split into ``rounds`` round-robin passes over
    all backends (each pass: one warm-up call, then the timed calls of its share). A
    machine whose speed drifts (other processes, turbo, a noisy neighbour) then slows every
    backend of a pass alike: ``speedup`` is the median over passes of that pass's
    ``fps / eager fps``, and ``fps`` the median of the per-pass rates, with the per-pass
    values in ``speedup_rounds`` and ``fps_rounds``. Latency percentiles pool all calls.

    Row keys: ``backend``, ``description``, ``error`` (``None`` if it ran), the ``benchmark``
    keys (``fps``, ``latency_ms_*``, ``iterations``), ``rounds``, ``fps_rounds``,
    ``speedup``, ``speedup_rounds``, ``build_seconds`` (export/quantise/compile time),
    ``peak_memory_mib`` (see module docstring; measured while the backend is built and
    timed in the first pass), ``max_abs_diff`` (largest logit difference from eager float32
    on the timed input: ~1e-4 for float32 backends, larger for bf16/INT8), ``gmacs`` (per
    image), ``achieved_gflops`` (``2 * gmacs * fps``) and, with ``peak_gflops`` (from
    ``measure_conv_peak_gflops``), ``fraction_of_peak``. Give the float32 peak: bf16 and
    INT8 backends then show how far past float32's ceiling they get (values above 1).
    ``measure_peak`` (a function returning GFLOP/s, e.g. a short
    ``measure_conv_peak_gflops``) is called after every pass instead, so that each pass's
    rates are compared with a peak from the same minutes: ``fraction_of_peak`` is then the
    median over passes of ``achieved / peak`` and ``peak_gflops_rounds`` lists the peaks. A
    machine whose speed drifts by 25% between a peak measured once and the timed backends
    otherwise shows float32 backends "above the peak" (seen on an AMD Zen 2).

    GPU backends (``GPU_BACKENDS``, only where CUDA is available; elsewhere their rows carry
    the error) also report ``peak_gpu_memory_mib`` (``torch.cuda.max_memory_allocated``) and,
    when ``"cuda"`` was timed, ``speedup_vs_cuda_fp32``; their ``speedup`` still compares with
    eager float32 on the CPU.

    Threads: PyTorch uses ``torch.get_num_threads()``; keep it at or below the idle cores.
    OpenMP threads that compete with another busy process for cores spin and can run ten
    times slower, while ONNX Runtime degrades gracefully, which distorts every ratio.
    """
    # Backends that cannot run at this size are refused, before anything is timed.
    requested = check_backends(default_backends() if backends is None else backends, input_size)
    if seconds <= 0:
        raise ValueError(f"seconds must be positive, got {seconds}")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    order = list(dict.fromkeys([REFERENCE_BACKEND, *requested]))
    gmacs = count_macs(float_cpu_copy(model), input_size) / 1e9
    # At least 5 timed calls per backend in all, however slow it is.
    passes = _Passes(seconds / rounds, -(-5 // rounds))

    def build(name: str) -> Runner:
        return build_runner(
            name,
            model,
            input_size,
            batch_size=batch_size,
            threads=threads,
            calibration_images=calibration_images,
        )

    for name in order:  # the first pass, each backend built just before it is timed
        _build_and_time(passes, name, build, warmup_seconds)
    peaks = [measure_peak()] if measure_peak else []
    for _ in range(rounds - 1):
        _time_again(passes)
        if measure_peak:
            peaks.append(measure_peak())
    passes.runners.clear()  # release every backend's memory
    _summarise(passes, batch_size, gmacs, peaks, peak_gflops)
    return list(passes.rows.values())


@dataclass
class _Passes:
    """What ``run_benchmarks`` keeps from pass to pass: per backend its result row, its
    ``Runner`` (kept alive for the later passes) and the timed calls of each pass (s)."""

    seconds_per_round: float
    calls_per_round: int
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    runners: dict[str, Runner] = field(default_factory=dict)
    latencies: dict[str, list[list[float]]] = field(default_factory=dict)
    reference_output: torch.Tensor | None = None  # eager float32's logits

    def time(self, runner: Runner, warmup_seconds: float) -> list[float]:
        """One pass's share of timed calls of ``runner``, in seconds each."""
        return _time_calls(
            runner.fn,
            runner.inputs,
            warmup_seconds,
            self.seconds_per_round,
            self.calls_per_round,
            None,
        )


def _build_and_time(
    passes: _Passes, name: str, build: Callable[[str], Runner], warmup_seconds: float
) -> None:
    """Backend ``name``'s part of the first pass: build it, check its logits against eager
    float32's, time it, and record its row (with the error instead, if any step failed) and
    the peak memory all that took."""
    row: dict[str, Any] = {"backend": name, "description": BACKENDS[name], "error": None}
    passes.rows[name] = row
    exact_peak = _reset_peak_rss()
    rss_before = _current_rss_bytes() if exact_peak else _peak_rss_bytes()
    on_gpu = name in GPU_BACKENDS and torch.cuda.is_available()
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    try:
        runner = build(name)
        row["build_seconds"] = time.perf_counter() - started
        output = runner.output()
        if passes.reference_output is None:
            passes.reference_output = output
        elif output.shape == passes.reference_output.shape:
            row["max_abs_diff"] = float((output - passes.reference_output).abs().max())
        passes.latencies[name] = [passes.time(runner, warmup_seconds)]
        passes.runners[name] = runner
    except Exception as error:  # report any backend failure, keep benchmarking the rest
        row["error"] = f"{type(error).__name__}: {error}"
    row["peak_memory_mib"] = max(0, _peak_rss_bytes() - rss_before) / 2**20
    if on_gpu:
        row["peak_gpu_memory_mib"] = torch.cuda.max_memory_allocated() / 2**20


def _time_again(passes: _Passes) -> None:
    """One later pass over every backend still running (already warm)."""
    for name, runner in list(passes.runners.items()):
        try:
            passes.latencies[name].append(passes.time(runner, 0.0))
        except Exception as error:  # a backend that fails later is reported, not fatal
            passes.rows[name]["error"] = f"{type(error).__name__}: {error}"
            del passes.runners[name], passes.latencies[name]


def _summarise(
    passes: _Passes,
    batch_size: int,
    gmacs: float,
    peaks: list[float],
    peak_gflops: float | None,
) -> None:
    """Add the speed keys (``run_benchmarks`` lists them) to the row of every backend that
    ran: medians over passes of its rates and of its ratios to eager float32 (and to CUDA
    float32, for GPU backends) and to the convolution ``peaks`` of each pass (or the fixed
    ``peak_gflops``)."""
    round_fps = {
        name: [batch_size * len(calls) / sum(calls) for calls in per_round]
        for name, per_round in passes.latencies.items()
    }
    reference_fps, cuda_fps = round_fps.get(REFERENCE_BACKEND), round_fps.get("cuda")
    for name, per_round in passes.latencies.items():
        row, fps = passes.rows[name], round_fps[name]
        row.update(_latency_statistics([t for calls in per_round for t in calls], batch_size))
        row["rounds"] = len(per_round)
        row["fps_rounds"] = fps
        row["fps"] = statistics.median(fps)
        row["gmacs"] = gmacs
        row["achieved_gflops"] = 2 * gmacs * row["fps"]
        # Each pass against its own peak; a fixed peak stands for every pass.
        round_peaks = peaks or ([peak_gflops] * len(fps) if peak_gflops else [])
        if round_peaks and name not in GPU_BACKENDS:  # the peak is the CPU's
            fractions = [2 * gmacs * rate / peak for rate, peak in zip(fps, round_peaks)]
            row["fraction_of_peak"] = statistics.median(fractions)
            if peaks:
                row["peak_gflops_rounds"] = peaks
        if reference_fps:
            row["speedup_rounds"] = [a / b for a, b in zip(fps, reference_fps)]
            row["speedup"] = statistics.median(row["speedup_rounds"])
        if cuda_fps and name in GPU_BACKENDS:
            row["speedup_vs_cuda_fp32"] = statistics.median([a / b for a, b in zip(fps, cuda_fps)])


def float32_conv_peak(seconds: float = 1.0) -> float:
    """``measure_conv_peak_gflops`` for float32 only: the short per-pass peak that
    ``run_benchmarks(measure_peak=float32_conv_peak)`` takes."""
    return measure_conv_peak_gflops(seconds, dtypes=("float32",))["float32"]


def measured_peaks(rows: Sequence[dict[str, Any]]) -> list[float]:
    """The per-pass convolution peaks a ``run_benchmarks`` result holds (empty if none)."""
    return next((row["peak_gflops_rounds"] for row in rows if "peak_gflops_rounds" in row), [])


def measure_conv_peak_gflops(
    seconds: float = 2.0,
    *,
    channels: int = 256,
    spatial: tuple[int, int] = (128, 256),
    dtypes: Sequence[str] = ("float32", "bfloat16"),
) -> dict[str, float]:
    """Achievable convolution throughput of this CPU, in GFLOP/s per dtype.

    Times a large 3x3 convolution, ``channels -> channels`` on ``(1, channels, *spatial)``
    (by default 256 -> 256 on 128x256: 19.3 GMACs per call), for ``seconds`` per dtype and
    memory format (NCHW and channels-last; the faster counts) with PyTorch's current thread
    count. FLOP/s = 2 * MACs * calls / s. Dense 3x3 convs of this size reach the best a
    convolution library gets from the CPU, so a model's ``fraction of peak`` =
    ``2 * model GMACs * FPS / peak`` says how much of that the model's smaller, memory-bound
    layers achieve. ``bfloat16`` runs under autocast (oneDNN with AMX/AVX512-BF16 where
    present; emulated, slow, elsewhere).
    """
    conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False).eval()
    macs = channels * channels * 9 * spatial[0] * spatial[1]
    results: dict[str, float] = {}
    for dtype_name in dtypes:
        if dtype_name not in ("float32", "bfloat16"):
            raise ValueError(f"dtypes must be float32 or bfloat16, got {dtype_name!r}")
        best = 0.0
        for channels_last in (False, True):
            fn, image = torch_call(
                conv, torch.randn(1, channels, *spatial), dtype_name == "bfloat16", channels_last
            )
            timing = benchmark(fn, (image,), min(0.5, seconds / 4), seconds / 2, min_iterations=2)
            best = max(best, 2 * macs * timing["fps"] / 1e9)
        results[dtype_name] = best
    return results
