"""The request batcher: a bounded queue per run and one worker thread that runs the model.

    batcher = Batcher("spam", run_batch, max_batch_size=32, max_wait_s=0.005, max_queue=64)
    batcher.start()
    result = await batcher.submit(texts, size=len(texts))   # QueueFull when the queue is full

The worker takes the first waiting job, then keeps taking jobs for up to `max_wait_s` while
their sizes fit in `max_batch_size`, and calls `run_batch(jobs)` once for all of them; each job's
future gets its own result. A job that gave up (timeout, client gone) before its batch started
is skipped; a running one sees `job.cancelled` set. `stop()` lets the jobs already queued finish
(a SIGTERM drains instead of dropping them).

Classification jobs (their texts) and generation jobs (decoded together by
`tunelab.sft.batch_decode`) are both batched this way; a generation batch runs until its last
request is done, and requests arriving meanwhile wait in the queue for the next one.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field


class QueueFull(Exception):
    """The run's queue holds `max_queue` jobs already."""


@dataclass
class Job:
    payload: object
    size: int
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    emit: Callable[[str], None] | None = None  # streamed text pieces, called from the worker thread
    cancelled: threading.Event = field(default_factory=threading.Event)


def answer_now(job: Job, result) -> None:
    """Hand `result` to the job's request from the worker thread before its batch has ended (a
    generation finished while its batch mates decode on); the batch's own hand-back is then a no-op."""
    job.loop.call_soon_threadsafe(_resolve, job.future, result)


def _resolve(future: asyncio.Future, result=None, error: BaseException | None = None) -> None:
    if future.done():  # the request already gave up
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class Batcher:
    def __init__(self, name: str, run_batch: Callable[[list[Job]], list], *, max_batch_size: int, max_wait_s: float,
                 max_queue: int, on_batch: Callable[[str, int], None] | None = None):
        self.name, self.run_batch = name, run_batch
        self.max_batch_size, self.max_wait_s = max_batch_size, max_wait_s
        self.queue: queue.Queue[Job] = queue.Queue(maxsize=max_queue)
        self.on_batch = on_batch
        self._carry: Job | None = None  # a job taken that did not fit the last batch
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name=f"tunelab-serve-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Finish the queued jobs, then end the worker."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def job(self, payload, size: int = 1, emit=None) -> Job:
        """Queue a job from the event loop; await `job.future` for its result."""
        loop = asyncio.get_running_loop()
        job = Job(payload, size, loop.create_future(), loop, emit)
        try:
            self.queue.put_nowait(job)
        except queue.Full:
            raise QueueFull(self.name) from None
        return job

    async def submit(self, payload, size: int = 1, timeout: float | None = None):
        job = self.job(payload, size)
        try:
            return await asyncio.wait_for(job.future, timeout)
        finally:
            job.cancelled.set()  # no-op once done; stops a job that timed out or lost its client

    def _next(self, timeout: float | None) -> Job | None:
        if self._carry is not None:
            job, self._carry = self._carry, None
            return job
        try:
            return self.queue.get(timeout=timeout) if timeout is None or timeout > 0 else self.queue.get_nowait()
        except queue.Empty:
            return None

    def _collect(self) -> list[Job]:
        """The first live job, then more until the batch is full or max_wait_s has passed."""
        first = None
        while first is None:
            first = self._next(0.05)
            if first is None and self._stopping.is_set() and self.queue.empty():
                return []
            if first is not None and first.cancelled.is_set():
                first = None
        jobs, size = [first], first.size
        deadline = time.perf_counter() + self.max_wait_s
        while size < self.max_batch_size:
            job = self._next(deadline - time.perf_counter())
            if job is None:
                break
            if job.cancelled.is_set():
                continue
            if size + job.size > self.max_batch_size:
                self._carry = job
                break
            jobs.append(job)
            size += job.size
        return jobs

    def _work(self) -> None:
        while True:
            jobs = self._collect()
            if not jobs:
                return
            if self.on_batch is not None:
                self.on_batch(self.name, sum(j.size for j in jobs))
            try:
                results = self.run_batch(jobs)
                for job, result in zip(jobs, results, strict=True):
                    job.loop.call_soon_threadsafe(_resolve, job.future, result)
            except Exception as err:  # handed to each request: the route answers it, the worker lives on
                for job in jobs:
                    job.loop.call_soon_threadsafe(_resolve, job.future, None, err)
