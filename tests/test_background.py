"""``WritingThread``: jobs in order in one thread, a bounded backlog, errors in the caller."""

from __future__ import annotations

import threading
import time

import pytest

from ddrnet.background import WritingThread


def test_jobs_run_in_one_thread_and_results_come_back_in_order() -> None:
    threads, results = set(), []

    def job(value: int):
        def run() -> int:
            threads.add(threading.current_thread().name)
            time.sleep(0.01 * (5 - value))  # earlier jobs take longer
            return value * 10

        return run

    with WritingThread("test-writer") as writer:
        for value in range(5):
            writer.submit(job(value), results.append)
    assert results == [0, 10, 20, 30, 40]
    assert len(threads) == 1 and threads.pop().startswith("test-writer")
    assert threading.current_thread().name not in threads


def test_submit_waits_once_more_than_the_backlog_waits() -> None:
    release, finished = threading.Event(), []
    writer = WritingThread("test-writer", backlog=2)
    writer.submit(release.wait, finished.append)
    writer.submit(lambda: 1, finished.append)
    assert finished == []  # two waiting: submit returned at once
    threading.Timer(0.05, release.set).start()
    writer.submit(lambda: 2, finished.append)  # a third: the oldest is finished first
    assert finished == [True]
    writer.close()
    assert finished == [True, 1, 2]


def test_an_error_is_raised_in_the_caller_and_a_failed_block_lets_the_jobs_finish() -> None:
    def failing() -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        with WritingThread("test-writer") as writer:
            writer.submit(failing)
    written, done = [], []
    with pytest.raises(KeyboardInterrupt):
        with WritingThread("test-writer") as writer:
            for value in range(2):
                writer.submit(lambda value=value: written.append(value), done.append)
            raise KeyboardInterrupt
    assert written == [0, 1] and done == []  # files finished, results no longer wanted
