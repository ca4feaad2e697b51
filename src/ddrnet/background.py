"""``WritingThread``: files written in a thread of their own while the next frames are read
and segmented, the one way ``ddrnet predict`` writes image results and encodes videos.

PNG (zlib) and video encoding release the GIL, so a second thread overlaps them with the
network. A few jobs at most wait, so memory stays bounded when writing is slower than
segmenting; their results are handed back in order, and a job's error is raised in the
caller's thread, at the latest when the writer is closed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

# Jobs that may wait for the writing thread before ``submit`` waits for the oldest.
BACKLOG = 2


class WritingThread:
    """Runs jobs one after another in one thread; ``submit`` returns at once unless more
    than ``backlog`` wait, then it first finishes the oldest. ``done(result)``, if given
    with a job, runs in the caller's thread once the job is finished, in submission order.
    Use it as a context manager: leaving the block normally finishes every job (raising the
    first error); leaving it by an exception lets the submitted jobs finish (no file is
    left half written) without their ``done``."""

    def __init__(self, name: str, backlog: int = BACKLOG) -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=name)
        self._pending: deque[tuple[Future, Callable[[Any], None] | None]] = deque()
        self._backlog = backlog

    def submit(self, job: Callable[[], Any], done: Callable[[Any], None] | None = None) -> None:
        self._pending.append((self._executor.submit(job), done))
        while len(self._pending) > self._backlog:
            self._finish_oldest()

    def drain(self) -> None:
        """Finish every job submitted, in order."""
        while self._pending:
            self._finish_oldest()

    def close(self) -> None:
        """``drain``, then stop the thread (also when a job failed: its error is raised)."""
        try:
            self.drain()
        finally:
            self._executor.shutdown(wait=True, cancel_futures=True)

    def _finish_oldest(self) -> None:
        future, done = self._pending.popleft()
        result = future.result()  # a job's error: raised here
        if done is not None:
            done(result)

    def __enter__(self) -> WritingThread:
        return self

    def __exit__(self, kind: type | None, *exc_info: object) -> None:
        if kind is None:
            self.close()
        else:  # the caller failed: the jobs run out, their results are not wanted
            self._pending.clear()
            self._executor.shutdown(wait=True)
