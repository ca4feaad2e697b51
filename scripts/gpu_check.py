#!/usr/bin/env python3
"""Prove ddrnet's GPU paths on a real NVIDIA GPU in one command, each step timed.

    python scripts/gpu_check.py OUT_DIR [--data CAMVID_ROOT] [--steps STEP ...]

Run it from a checkout on a machine with an NVIDIA GPU and PyTorch with CUDA already
installed; nothing is fetched. It installs ddrnet from the checkout with
``pip install --no-deps --no-build-isolation -e .`` (falling back to ``PYTHONPATH=src`` when
pip cannot), and needs beside PyTorch: numpy, pillow, pyyaml, safetensors, tqdm,
opencv-python-headless (the core); onnx, onnxruntime, onnxscript (export); flask and
waitress (serve; the step reports what is missing); pytest (pytest-xdist optional);
tensorrt (optional: its rows are skipped with the reason without it).

Steps (``--steps`` picks some; the order is fixed):
  environment  GPU, driver, torch/CUDA/cuDNN versions, CPU cores
  install      ddrnet from this checkout
  tests        tests/test_cuda.py (marked ``cuda``) plus the model and checkpoint tests
  train_fp16   a short real CamVid run, fp16 autocast + GradScaler, channels_last: loss falls
  train_bf16   the same in bf16, stopped after one epoch (train.max_minutes=0), then --resume
  eval         the bf16 run and the bundled train-only model on CamVid val, on the GPU
  bench        ddrnet bench at 1024x2048, batch 1: rows cuda, cuda_fp16 (and tensorrt_fp16
               where TensorRT is installed) for the three variants, beside the paper's FPS
  predict      ddrnet predict --device cuda on the demo frames; labels against the CPU's
  serve        ddrnet serve --device cuda: /health and a /predict request
  export       ONNX export (checked against PyTorch) and a TensorRT engine where installed

Everything goes to OUT_DIR: ``gpu_check.log`` (every command and its output) and
``gpu_check.json`` (per step: status passed/failed/skipped, seconds, reason, figures). The
exit status is 1 when a step failed. Calling it again with the same OUT_DIR and ``--steps``
reruns those steps and keeps the other steps' records. On a machine without CUDA every GPU step is skipped
with the reason, so CI keeps the script working; ``--cpu-smoke`` instead runs each step on
the CPU at toy sizes (the suite does this to check the commands the script builds).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "camvid"
VARIANTS = ("ddrnet_23_slim", "ddrnet_23", "ddrnet_39")
# The paper's Table (Cityscapes, 1024x2048, batch 1, one RTX 2080Ti, BN folded).
PAPER_FPS = {"ddrnet_23_slim": 101.6, "ddrnet_23": 37.1, "ddrnet_39": 22.0}
STEPS = (
    "environment", "install", "tests", "train_fp16", "train_bf16", "eval", "bench",
    "predict", "serve", "export",
)  # fmt: skip
GPU_STEPS = set(STEPS) - {"environment", "install"}


class StepFailed(Exception):
    """A check that did not hold: the step is reported failed with this message."""


class Checker:
    """Runs the steps, logs every command's output and collects one record per step."""

    def __init__(self, out: Path, data: Path, cpu_smoke: bool) -> None:
        self.out, self.data, self.cpu_smoke = out, data, cpu_smoke
        self.log = out / "gpu_check.log"
        started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        with self.log.open("a") as log:
            log.write(f"\ngpu_check.py {' '.join(sys.argv[1:])}, started {started}\n")
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", DDRNET_DATA=str(data.parent))
        self.env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO / "src"), str(REPO / "tests")]
            + [p for p in [os.environ.get("PYTHONPATH")] if p]
        )
        self.device = "cpu" if cpu_smoke else "cuda"
        self.epochs = [1, 2] if cpu_smoke else [1, 2, 3, 4]  # of each training run
        # A later call into the same folder reruns the steps it names and keeps the others'
        # records: fix what failed on the GPU, then rerun that step alone.
        previous = out / "gpu_check.json"
        self.records: list[dict[str, Any]] = (
            json.loads(previous.read_text())["steps"] if previous.is_file() else []
        )

    # -- running commands ----------------------------------------------------------------
    def run(self, args: list[str], timeout: float, check: bool = True) -> str:
        """Run ``args`` (a ``ddrnet`` command when it starts with "ddrnet"), append its output
        to the log, and return it; a non-zero exit raises ``StepFailed`` when ``check``."""
        if args[0] == "ddrnet":
            args = [sys.executable, "-m", "ddrnet.cli", *args[1:]]
        start = time.perf_counter()
        try:
            done = subprocess.run(
                args, cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout
            )
            output, code = done.stdout + done.stderr, done.returncode
        except subprocess.TimeoutExpired as error:
            output = f"{error.stdout or ''}{error.stderr or ''}\nTIMED OUT after {timeout:.0f} s"
            code = -1
        seconds = time.perf_counter() - start
        with self.log.open("a") as log:
            log.write(f"\n$ {' '.join(args)}\n{output}\n[exit {code}, {seconds:.1f} s]\n")
        if check and code != 0:
            tail = " | ".join(output.strip().splitlines()[-3:])
            raise StepFailed(f"{' '.join(args[2:5])} ... exited {code}: {tail[-400:]}")
        return output

    def ddrnet_train(self, name: str, amp: str, extra: list[str], resume: bool = False) -> Path:
        output = self.out / name
        epochs, iterations, workers = len(self.epochs), 2 if self.cpu_smoke else 60, 6
        args = [
            "ddrnet", "train", "camvid_ddrnet23_slim", f"data.root={self.data}",
            "data.train_split=train", f"train.device={self.device}",
            f"train.amp={amp}", "train.channels_last=true", f"train.epochs={epochs}",
            f"train.max_iterations_per_epoch={iterations}", f"eval.every_epochs={epochs}",
            f"data.num_workers={0 if self.cpu_smoke else workers}",
            "eval.max_images=" + ("2" if self.cpu_smoke else "null"), "optim.warmup_epochs=1",
            f"train.output_dir={output}", *extra,
        ]  # fmt: skip
        if self.cpu_smoke:
            args += ["data.crop_size=[64,96]", "data.batch_size=2", "train.threads=1"]
        self.run(args + (["--resume"] if resume else []), timeout=600)
        return output

    # -- the steps -----------------------------------------------------------------------
    def step(self, name: str, function: Callable[[], dict[str, Any] | None]) -> None:
        record: dict[str, Any] = {"step": name}
        start = time.perf_counter()
        skip = self.skip_reason(name)
        if skip:
            record.update(status="skipped", reason=skip)
        else:
            try:
                record.update(status="passed", **(function() or {}))
            except StepFailed as error:
                record.update(status="failed", reason=str(error))
            except Exception as error:  # a crash in a step must not stop the others
                record.update(status="failed", reason=f"{type(error).__name__}: {error}")
        record["seconds"] = round(time.perf_counter() - start, 1)
        self.records = [r for r in self.records if r["step"] != name] + [record]
        self.records.sort(key=lambda r: STEPS.index(r["step"]))
        print(f"{name:<12} {record['status']:<8} {record['seconds']:>7.1f} s  "
              f"{record.get('reason', '')}", flush=True)  # fmt: skip
        self.write_json()

    def skip_reason(self, name: str) -> str | None:
        import torch

        if name in GPU_STEPS and not self.cpu_smoke and not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else "no visible GPU"
            return f"no CUDA GPU here (torch {torch.__version__}, {build})"
        if name.startswith(("train", "eval")) and not (self.data / "train").is_dir():
            return f"no CamVid data at {self.data} (give --data)"
        return None

    def write_json(self) -> None:
        failed = [r["step"] for r in self.records if r["status"] == "failed"]
        result = {"cpu_smoke": self.cpu_smoke, "failed": failed, "steps": self.records}
        (self.out / "gpu_check.json").write_text(json.dumps(result, indent=2))


def environment(checker: Checker) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cpu_count": os.cpu_count(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=props.name,
            capability=f"{props.major}.{props.minor}",
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            cudnn=torch.backends.cudnn.version(),
        )
        if shutil.which("nvidia-smi"):
            query = "--query-gpu=driver_version,clocks.max.sm,power.limit"
            info["nvidia_smi"] = checker.run(
                ["nvidia-smi", query, "--format=csv,noheader"], 60, check=False
            ).strip()
    return info


def install(checker: Checker) -> dict[str, Any]:
    import importlib.util

    spec = importlib.util.find_spec("ddrnet")
    if spec is not None and Path(spec.origin).resolve().is_relative_to(REPO / "src"):
        return {"installed": f"already, from this checkout ({Path(spec.origin).parent})"}
    pip = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-e", "."]
    output = checker.run(pip + ["--quiet"], timeout=300, check=False)
    failed = "error" in output.lower()
    return {"installed": "with pip" if not failed else "pip failed: from PYTHONPATH=src only"}


def tests(checker: Checker) -> dict[str, Any]:
    files = ["tests/test_cuda.py"]
    if not checker.cpu_smoke:
        files += ["tests/test_models.py", "tests/test_checkpoints.py"]
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files]
    try:
        import xdist  # noqa: F401

        args += ["-n", "4"] if not checker.cpu_smoke else []
    except ImportError:
        pass
    output = checker.run(args, timeout=900)
    # pytest's last line may be a plugin's warning: the summary is the line with the counts.
    counts = [line for line in output.splitlines() if re.search(r"\d+ (passed|failed)", line)]
    summary = counts[-1].strip() if counts else output.strip().splitlines()[-1]
    return {"summary": summary, "cuda_tests_skipped": "skipped" in summary}


def _metrics(run: Path) -> list[dict[str, Any]]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _training_figures(run: Path, epochs: list[int], smoke: bool) -> dict[str, Any]:
    """Per-epoch figures of a finished run; its loss must fall (a GPU run has 240 steps; the
    CPU smoke run's few steps prove nothing about learning)."""
    records = _metrics(run)
    got = [r["epoch"] for r in records]
    if got != epochs:
        raise StepFailed(f"{run}/metrics.jsonl has epochs {got}, expected {epochs}")
    losses = [r["train_loss"] for r in records]
    if not smoke and not losses[-1] < losses[0]:
        raise StepFailed(f"loss did not fall: {losses}")
    return {
        "train_loss_by_epoch": losses,
        "images_per_second": [r["images_per_second"] for r in records],
        "val_mIoU": records[-1].get("val_mIoU"),
    }


def train_fp16(checker: Checker) -> dict[str, Any]:
    amp = "none" if checker.cpu_smoke else "fp16"
    run = checker.ddrnet_train("train_fp16", amp, [])
    return _training_figures(run, checker.epochs, checker.cpu_smoke)


def train_bf16(checker: Checker) -> dict[str, Any]:
    amp = "none" if checker.cpu_smoke else "bf16"
    run = checker.ddrnet_train("train_bf16", amp, ["train.max_minutes=0"])
    if [r["epoch"] for r in _metrics(run)] != [1]:
        raise StepFailed("train.max_minutes=0 did not stop after the first epoch")
    checker.ddrnet_train("train_bf16", amp, ["train.max_minutes=null"], resume=True)
    figures = _training_figures(run, checker.epochs, checker.cpu_smoke)
    uninterrupted = checker.out / "train_fp16" / "metrics.jsonl"
    if checker.cpu_smoke and uninterrupted.is_file():
        # Both ran in float32 on the CPU: stopping and resuming must change nothing.
        expected = [r["train_loss"] for r in _metrics(uninterrupted.parent)]
        if figures["train_loss_by_epoch"] != expected:
            raise StepFailed(f"resumed losses {figures['train_loss_by_epoch']} != {expected}")
    return figures


def evaluate(checker: Checker) -> dict[str, Any]:
    figures = {}
    limit = ["--max-images", "2"] if checker.cpu_smoke else []
    for name, model in [
        ("bf16_run", str(checker.out / "train_bf16" / "last.pt")),
        ("bundled_train_only", "camvid_ddrnet23_slim_train"),
    ]:
        result = checker.out / f"eval_{name}.json"
        checker.run(
            ["ddrnet", "eval", model, "--root", str(checker.data), "--device", checker.device,
             "--json", str(result), *limit],
            timeout=600,
        )  # fmt: skip
        figures[f"{name}_mIoU"] = round(json.loads(result.read_text())["mIoU"], 2)
    return figures


def bench(checker: Checker) -> dict[str, Any]:
    import torch

    backends = ["cuda", "cuda_fp16"]
    try:
        import tensorrt  # noqa: F401

        backends.append("tensorrt_fp16")
    except ImportError:
        pass
    if checker.cpu_smoke:
        backends, size, seconds = ["eager"], "64x128", ["--seconds", "0.5", "--rounds", "1"]
    else:
        size, seconds = "1024x2048", ["--seconds", "4", "--rounds", "2", "--warmup", "1"]
    figures: dict[str, Any] = {"backends": backends, "size": size}
    for variant in VARIANTS if not checker.cpu_smoke else VARIANTS[:1]:
        result = checker.out / f"bench_{variant}.json"
        checker.run(
            ["ddrnet", "bench", "--model", variant, "--size", size, "--backends", *backends,
             *seconds, "--json", str(result)],
            timeout=600,
        )  # fmt: skip
        rows = {row["backend"]: row for row in json.loads(result.read_text())["rows"]}
        failed = {name: row["error"] for name, row in rows.items() if row.get("error")}
        if failed:
            raise StepFailed(f"{variant}: {failed}")
        figures[variant] = {
            name: {"fps": round(row["fps"], 1), "p50_ms": round(row["latency_ms_p50"], 2),
                   "peak_gpu_mib": row.get("peak_gpu_memory_mib")}
            for name, row in rows.items()
        }  # fmt: skip
        figures[variant]["paper_fps_2080ti"] = PAPER_FPS[variant]
    figures["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return figures


def predict(checker: Checker) -> dict[str, Any]:
    import numpy as np
    from PIL import Image

    folders = {}
    for device in dict.fromkeys([checker.device, "cpu"]):
        folders[device] = checker.out / f"predict_{device}"
        checker.run(
            ["ddrnet", "predict", "--device", device, "--save", "labels", "-o",
             str(folders[device])],
            timeout=300,
        )  # fmt: skip
    labels = sorted(folders["cpu"].rglob("*.png"))
    if not labels:
        raise StepFailed(f"ddrnet predict wrote no label PNG to {folders['cpu']}")
    agreement = []
    for cpu_file in labels:
        gpu_file = folders[checker.device] / cpu_file.relative_to(folders["cpu"])
        cpu_ids, gpu_ids = (np.asarray(Image.open(f)) for f in (cpu_file, gpu_file))
        agreement.append(float((cpu_ids == gpu_ids).mean()))
    if min(agreement) < 0.99:
        raise StepFailed(f"GPU labels agree with the CPU's on only {min(agreement):.4f}")
    return {"frames": len(labels), "min_label_agreement_with_cpu": round(min(agreement), 5)}


def serve(checker: Checker) -> dict[str, Any]:
    # The demo frame by path: this process may not import ddrnet (the install step's pip
    # writes an editable hook that only later processes see).
    demo_frame = sorted((REPO / "src" / "ddrnet" / "assets" / "demo").glob("*.png"))[0]
    args = [sys.executable, "-m", "ddrnet.cli", "serve", "--device", checker.device,
            "--port", "0"]  # fmt: skip
    log = (checker.out / "serve.log").open("w")
    server = subprocess.Popen(args, cwd=REPO, env=checker.env, stdout=subprocess.PIPE,
                              stderr=log, text=True)  # fmt: skip
    try:
        address = None
        deadline = time.monotonic() + 180
        while address is None and time.monotonic() < deadline:
            line = server.stdout.readline()
            if not line:
                raise StepFailed(f"ddrnet serve exited {server.wait()}: see serve.log")
            found = re.search(r"http://[^\s/]+:\d+/", line)
            address = found.group(0) if found else None
        if address is None:
            raise StepFailed("ddrnet serve printed no address within 180 s")
        health = json.loads(urllib.request.urlopen(address + "health", timeout=30).read())
        request = urllib.request.Request(
            address + "predict?format=json",
            data=demo_frame.read_bytes(),
            headers={"Content-Type": "image/png"},
        )
        start = time.perf_counter()
        answer = json.loads(urllib.request.urlopen(request, timeout=60).read())
        health = {key: health.get(key) for key in ("status", "architecture", "num_classes")}
        return {"health": health, "request_ms": round(1000 * (time.perf_counter() - start), 1),
                "answer_keys": sorted(answer)}  # fmt: skip
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def export(checker: Checker) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    onnx_file = checker.out / "camvid.onnx"
    output = checker.run(["ddrnet", "export", "--format", "onnx", "-o", str(onnx_file)], 600)
    figures["onnx"] = output.strip().splitlines()[-1][-200:]
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        figures["tensorrt"] = "skipped: the tensorrt package is not installed"
        return figures
    engine = checker.out / "camvid_fp16.engine"
    output = checker.run(
        ["ddrnet", "export", "--format", "tensorrt", "--size", "1024x2048", "-o", str(engine)], 600
    )
    figures["tensorrt"] = output.strip().splitlines()[-1][-200:]
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="folder for gpu_check.log, gpu_check.json, runs")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="CamVid root")
    parser.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS))
    parser.add_argument("--cpu-smoke", action="store_true", help="run every step on the CPU")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    checker = Checker(args.out.resolve(), args.data.resolve(), args.cpu_smoke)
    functions = {
        "environment": environment, "install": install, "tests": tests,
        "train_fp16": train_fp16, "train_bf16": train_bf16, "eval": evaluate, "bench": bench,
        "predict": predict, "serve": serve, "export": export,
    }  # fmt: skip
    for name in STEPS:
        if name in args.steps:
            checker.step(name, lambda name=name: functions[name](checker))
    failed = [r["step"] for r in checker.records if r["status"] == "failed"]
    print(f"{len(checker.records) - len(failed)} passed or skipped, {len(failed)} failed; "
          f"details in {checker.out / 'gpu_check.json'}")  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
