"""How a search trains its candidates' runs: one after another in the search's own process
(``InlineRuns``: the progress bar shows, an error stops the search where it happens), or
several at once, each in a child process of its own (``ParallelRuns``).

Where one run cannot keep every core busy (a small candidate's layers split over many
threads wait on each other more than they compute), runs side by side at a share of the cores
each finish the search sooner (``benchmarks/search_workers.py`` measures it).
``ParallelRuns`` gives each child ``threads // workers`` threads where the recipe sets none:
processes that each start a thread per core oversubscribe the CPU (two training runs at two
threads each on two cores ran many times slower, OpenMP threads waiting for each other).

A child writes its log (a line per epoch; progress bars are drawn on terminals only) to
``<run>.log`` beside its run folder and exits 0 when the run has finished; a problem with
the user's input (a ``DDRNetError``) is written to ``<run>.error`` as one line, which the
search raises as such; anything else leaves its traceback in the log, which the search names
with the log's last lines. A child ends with the search (Linux's parent-death signal), so
that no orphan trains on after a kill.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import multiprocessing.connection
import os
import sys
import time
from pathlib import Path

from ddrnet.engine.config import Config
from ddrnet.engine.run_folder import LAST
from ddrnet.engine.train import train
from ddrnet.errors import DDRNetError, UsageError

logger = logging.getLogger(__name__)

STOP_GRACE_SECONDS = 5.0  # for children to end on their own after the search stops


def usable_cores() -> int:
    """The cores this process may run on (its affinity where the OS tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class InlineRuns:
    """Each run trained in this process when it is started; ``wait`` hands it back."""

    def __init__(self) -> None:
        self._done: list[Path] = []

    def has_room(self) -> bool:
        return not self._done

    def busy(self) -> bool:
        return bool(self._done)

    def start(self, config: Config) -> None:
        """Train ``config``'s run (``train.output_dir``), resuming what a kill left."""
        self._done.append(_train_run(config))

    def wait(self) -> list[Path]:
        done, self._done = self._done, []
        return done

    def stop(self) -> None:
        self._done.clear()


class ParallelRuns:
    """Up to ``workers`` runs at once, each in a child process (``spawn``: a fresh
    interpreter, nothing of this process's threads or state)."""

    def __init__(self, workers: int) -> None:
        if workers < 2:
            raise ValueError(f"ParallelRuns needs at least 2 workers, got {workers}")
        self.workers = workers
        self._context = multiprocessing.get_context("spawn")
        self._children: dict[Path, multiprocessing.process.BaseProcess] = {}

    def has_room(self) -> bool:
        return len(self._children) < self.workers

    def busy(self) -> bool:
        return bool(self._children)

    def start(self, config: Config) -> None:
        """Start training ``config``'s run in a child (resuming what a kill left), at
        ``threads // workers`` threads each where the recipe sets no ``train.threads``."""
        run = Path(config.train.output_dir)
        if config.train.threads is None:
            threads = max(1, usable_cores() // self.workers)
            config = dataclasses.replace(
                config, train=dataclasses.replace(config.train, threads=threads)
            )
        run.parent.mkdir(parents=True, exist_ok=True)
        log, error = _log_path(run), _error_path(run)
        error.unlink(missing_ok=True)
        child = self._context.Process(
            target=_train_in_child, args=(config, str(log), str(error)), name=f"ddrnet-{run.name}"
        )
        child.start()
        self._children[run] = child
        logger.info("training %s in process %d (log: %s)", run, child.pid, log)

    def wait(self) -> list[Path]:
        """Block until one run or more has ended; their folders. A run that failed raises:
        ``UsageError`` with the child's one line for a problem with the input, else
        ``RuntimeError`` naming the log that holds the traceback."""
        sentinels = {child.sentinel: run for run, child in self._children.items()}
        ended = [sentinels[ready] for ready in multiprocessing.connection.wait(list(sentinels))]
        for run in ended:
            child = self._children.pop(run)
            child.join()
            _raise_if_failed(run, child.exitcode)
        return ended

    def stop(self) -> None:
        """End every child still training (after an error or Ctrl-C in the search). A
        terminal's Ctrl-C reached them too: they get a few seconds to end on their own, the
        rest are terminated. Their runs resume from their last epoch next time."""
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for child in self._children.values():
            child.join(timeout=max(0.0, deadline - time.monotonic()))
        for child in self._children.values():
            if child.is_alive():
                child.terminate()
                child.join()
        self._children.clear()


def _train_run(config: Config) -> Path:
    """Train ``config``'s run (``train.output_dir``), resuming what a kill left; its folder."""
    run = Path(config.train.output_dir)
    train(config, resume=(run / LAST).is_file())
    return run


def _log_path(run: Path) -> Path:
    return run.with_name(f"{run.name}.log")


def _error_path(run: Path) -> Path:
    return run.with_name(f"{run.name}.error")


def _raise_if_failed(run: Path, exitcode: int | None) -> None:
    if exitcode == 0:
        return
    error = _error_path(run)
    if error.is_file():
        raise UsageError(error.read_text().strip())
    raise RuntimeError(
        f"training {run} stopped (exit status {exitcode}); its log {_log_path(run)} ends:\n"
        + "".join(_last_lines(_log_path(run), 15))
    )


def _last_lines(path: Path, count: int) -> list[str]:
    try:
        text = path.read_text(errors="replace").replace("\r", "\n")
    except OSError:
        return []
    return [line + "\n" for line in text.splitlines() if line.strip()][-count:]


def _train_in_child(config: Config, log: str, error: str) -> None:
    """A child's work: its output to ``log``, the run trained (resumed where a kill left it),
    a user's problem written to ``error`` as one line (exit status 2)."""
    stream = open(log, "a", buffering=1)  # noqa: SIM115 (the process's output until it ends)
    os.dup2(stream.fileno(), 1)
    os.dup2(stream.fileno(), 2)
    sys.stdout = sys.stderr = stream
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    _end_with_parent()
    run = Path(config.train.output_dir)
    try:
        _train_run(config)
    except DDRNetError as problem:
        Path(error).write_text(f"{run}: {problem}\n")
        sys.exit(2)
    except KeyboardInterrupt:  # the terminal's Ctrl-C reaches the search's whole group
        print("interrupted", flush=True)
        sys.exit(130)


def _end_with_parent() -> None:
    """Ask Linux to end this process when the search ends (SIGTERM): a search killed with
    SIGKILL would otherwise leave its children training. Elsewhere, nothing."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent ended before the request took hold
        os._exit(1)
