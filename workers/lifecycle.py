"""Process plumbing of a stopping worker: the handler threads it counts, the tasks it cancels
until they end, and the exit that does not wait for what cannot be interrupted."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, NoReturn

import structlog

log = structlog.get_logger(__name__)


class HandlerThreads(ThreadPoolExecutor):
    """The sync handlers' thread pool; counts the calls still running, finished or not awaited."""

    def __init__(self, *, max_workers: int, thread_name_prefix: str) -> None:
        super().__init__(max_workers=max_workers, thread_name_prefix=thread_name_prefix)
        self._lock = threading.Lock()
        self.running = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        with self._lock:
            self.running += 1
        future = super().submit(fn, *args, **kwargs)
        future.add_done_callback(self._finished)
        return future

    def _finished(self, _future: Future[Any]) -> None:
        with self._lock:
            self.running -= 1


async def cancel_until_done(tasks: Iterable[asyncio.Task[Any]], *, until: float, worker: str) -> int:
    """Cancel the tasks until they end or the monotonic time `until`; log those that outlived
    every cancel and return how many did.

    One cancel is not enough: Python 3.11's asyncio.wait_for, which redis-py wraps around every
    socket write, swallows a cancel that arrives as the write completes (CPython gh-86296), and
    the worker's loops then run on forever.
    """
    pending = {t for t in tasks if not t.done()}
    while pending and time.monotonic() < until:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.1)
    for task in pending:
        where = [f"{f.f_code.co_filename}:{f.f_lineno} {f.f_code.co_name}" for f in task.get_stack(limit=8)]
        log.warning("worker_task_ignored_cancel", worker=worker, task=task.get_name(), stack=where)
    return len(pending)


def exit_now(code: int, *, threads: HandlerThreads, worker: str) -> NoReturn:
    """Exit without joining the handler threads or awaiting stuck tasks.

    Sync handlers that ignored their timeout still hold threads that cannot be interrupted, and
    the interpreter joins every pool thread at exit; a task that outlived its cancels would be
    awaited by the event loop's shutdown: either would keep the process alive past its drain
    timeout. Their attempts were reported as timed out or are left pending for another worker.
    """
    if threads.running:
        log.warning("worker_abandoned_handler_threads", worker=worker, threads=threads.running)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
