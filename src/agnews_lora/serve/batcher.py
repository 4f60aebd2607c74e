"""Micro-batching for the HTTP service: many small concurrent requests, one batch on the model.

Requests join a FIFO queue on the event loop.  One dispatcher task takes the oldest request,
waits at most ``max_wait_ms`` *from that request's arrival* for more (only when there is company:
a lone request after a lone request runs at once, so one client never pays the wait), takes requests in order
while their texts fit into ``max_batch_size``, and runs the batch function in one of ``workers``
dedicated threads, so the event loop never waits on the model.  While batches run, new requests
queue up and form the next batch.  With several workers, the queued texts are shared out among the
idle workers (32 queued texts and 2 idle workers: two batches of 16 that run at the same time), so
that a CPU's cores each run a forward pass instead of one pass waiting for the next.
A `ThreadPolicy` (``serve.threads``) decides each batch's torch thread count when it starts: a batch
that starts alone, with nothing else queued, gets all the threads and the cores to itself.

A batch that raises is retried request by request, so an exception fails only the request(s)
that cause it; the dispatcher itself never dies.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .threads import ThreadPolicy

log = logging.getLogger(__name__)


class Overloaded(Exception):
    """The queue already holds ``max_queue_texts`` texts: the caller should retry later."""


class ShuttingDown(Exception):
    """The batcher has stopped and takes no new work."""


@dataclass
class _Job:
    texts: Sequence[str]
    future: asyncio.Future
    arrived: float


@dataclass
class BatcherStats:
    requests: int = 0
    texts: int = 0
    batches: int = 0
    failed_requests: int = 0
    rejected_overload: int = 0
    largest_batch_texts: int = 0
    largest_batch_requests: int = 0
    solo_batches: int = 0  # batches that ran alone on all the threads
    busy_seconds: float = 0.0
    _started: float = field(default_factory=time.monotonic, repr=False)

    def to_dict(self, queued_texts: int, running_texts: int) -> dict:
        d = {k: v for k, v in self.__dict__.items() if not k.startswith("_")}
        d["busy_seconds"] = round(self.busy_seconds, 3)
        d["mean_texts_per_batch"] = round(self.texts / self.batches, 2) if self.batches else 0.0
        d["queued_texts"] = queued_texts
        d["running_texts"] = running_texts
        d["uptime_seconds"] = round(time.monotonic() - self._started, 1)
        return d


class MicroBatcher:
    """Gather concurrent ``submit`` calls into batches for ``fn(texts) -> results`` (one result per text).

    ``batching=False`` sends every request through ``fn`` on its own (the unbatched baseline).
    ``workers``: how many batches may run at once (``fn`` must then be thread-safe).
    ``on_batch(texts, requests, seconds, ok)`` is called on the event loop after every batch.
    ``threads``: the thread count of each batch (default: one, fixed); ``set_threads(n)`` is
    called in the worker thread before each batch (e.g. `serve.threads.set_torch_threads`).
    Must be started (``start()``) and used from a single running event loop.
    """

    def __init__(
        self,
        fn: Callable[[list[str]], list],
        max_batch_size: int = 32,
        max_wait_ms: float = 5.0,
        max_queue_texts: int = 4096,
        batching: bool = True,
        workers: int = 1,
        on_batch: Callable[[int, int, float, bool], None] | None = None,
        threads: ThreadPolicy | None = None,
        set_threads: Callable[[int], None] | None = None,
    ):
        if max_batch_size < 1 or workers < 1:
            raise ValueError("max_batch_size and workers must be >= 1")
        self.fn = fn
        self.max_batch_size = max_batch_size
        self.max_wait = max(0.0, max_wait_ms) / 1000.0
        self.max_queue_texts = max_queue_texts
        self.batching = batching
        self.stats = BatcherStats()
        self.on_batch = on_batch  # (texts, requests, seconds, ok) after every batch (metrics)
        self._queue: collections.deque[_Job] = collections.deque()
        self._queued_texts = 0
        self._running_texts = 0
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._stopping = False
        self._last_batch_requests = (
            1  # a lone request after a lone request is not held back for company
        )
        self.workers = workers
        self.threads = threads or ThreadPolicy(1, workers, 1, adaptive=False)
        self.set_threads = set_threads
        self._idle_workers = workers
        self._solo_running = False  # a batch with all the threads runs: nothing else starts
        self._in_flight: set[asyncio.Task] = set()
        self._executor = ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="agnews-serve-model"
        )
        # a batch alone on all the threads runs in a thread of its own, so that no thread ever
        # changes its thread count (torch clears oneDNN's primitive cache on every change)
        self._solo_executor = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="agnews-serve-solo")
            if self.threads.adaptive
            else None
        )

    @property
    def queued_texts(self) -> int:
        return self._queued_texts

    @property
    def running_texts(self) -> int:
        return self._running_texts

    def stats_dict(self) -> dict:
        return self.stats.to_dict(self._queued_texts, self._running_texts)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done() and not self._stopping

    def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(
            self._dispatch_forever(), name="micro-batcher"
        )

    async def stop(self) -> None:
        """Finish the batches already queued, then stop the dispatcher and the worker thread."""
        self._stopping = True
        if self._wakeup is not None:
            self._wakeup.set()
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)
        if self._solo_executor is not None:
            self._solo_executor.shutdown(wait=True)

    async def submit(self, texts: Sequence[str]) -> list:
        """Results for ``texts`` (in order), computed in some batch; raises what ``fn`` raised for them."""
        if (
            not self.running
        ):  # stopping, not started, or (a bug) the dispatcher died: never queue forever
            raise ShuttingDown("the server is shutting down")
        if self._queued_texts + len(texts) > self.max_queue_texts and self._queue:
            self.stats.rejected_overload += 1
            raise Overloaded(
                f"{self._queued_texts} texts are already queued (limit {self.max_queue_texts})"
            )
        loop = asyncio.get_running_loop()
        job = _Job(list(texts), loop.create_future(), loop.time())
        self._queue.append(job)
        self._queued_texts += len(job.texts)
        self._wakeup.set()
        return await job.future

    # -- dispatcher ------------------------------------------------------------------------

    def _take_batch(self) -> list[_Job]:
        batch: list[_Job] = []
        n = 0
        # share the queued texts out among the idle workers (never more than max_batch_size in one batch)
        limit = min(self.max_batch_size, -(-self._queued_texts // max(1, self._idle_workers)))
        while self._queue:
            job = self._queue[0]
            if batch and (not self.batching or n + len(job.texts) > limit):
                break
            self._queue.popleft()
            self._queued_texts -= len(job.texts)
            if job.future.done():  # the caller went away (cancelled) while queued
                continue
            batch.append(job)
            n += len(job.texts)
            if not self.batching:
                break
        return batch

    async def _dispatch_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue or not self._idle_workers or self._solo_running:
                if self._stopping and not self._queue:
                    if self._in_flight:
                        await asyncio.gather(*self._in_flight, return_exceptions=True)
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
            if (
                self.batching
                and self.max_wait > 0
                and (len(self._queue) > 1 or self._last_batch_requests > 1)
            ):
                # gather: wait until the batch is full or the oldest request has waited max_wait
                deadline = self._queue[0].arrived + self.max_wait
                while self._queued_texts < self.max_batch_size and not self._stopping:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    self._wakeup.clear()
                    try:
                        await asyncio.wait_for(self._wakeup.wait(), remaining)
                    except asyncio.TimeoutError:
                        break
            batch = self._take_batch()
            if batch:
                self._last_batch_requests = len(batch)
                threads = self.threads.threads_for(len(self._in_flight), self._queued_texts)
                solo = self.threads.is_solo(threads)
                self._solo_running = solo
                self.stats.solo_batches += solo
                self._idle_workers -= 1
                task = loop.create_task(self._run_batch(batch, threads))
                self._in_flight.add(task)
                task.add_done_callback(functools.partial(self._batch_done, batch, solo))

    def _batch_done(self, batch: list[_Job], solo: bool, task: asyncio.Task) -> None:
        self._in_flight.discard(task)
        self._idle_workers += 1
        if solo:
            self._solo_running = False
        exc = None if task.cancelled() else task.exception()
        if (
            exc is not None
        ):  # a bug here, not in fn (_run_batch handles fn's errors): never leave a caller waiting
            log.error("micro-batch task failed: %r", exc)
            for job in batch:
                if not job.future.done():
                    self._fail(job, exc)
        self._wakeup.set()

    def _call(self, texts: list[str], threads: int) -> list:
        """In a worker thread: this thread's thread count for the batch, then the batch."""
        if self.set_threads is not None:
            self.set_threads(threads)
        return self.fn(texts)

    async def _run_batch(self, batch: list[_Job], threads: int = 1) -> None:
        loop = asyncio.get_running_loop()
        texts = [t for job in batch for t in job.texts]
        t0 = time.perf_counter()
        self._running_texts += len(texts)
        try:
            solo = self.threads.is_solo(threads)
            executor = self._solo_executor if solo else self._executor
            results = await loop.run_in_executor(executor, self._call, texts, threads)
            if len(results) != len(texts):
                raise RuntimeError(
                    f"batch function returned {len(results)} results for {len(texts)} texts"
                )
        except Exception as exc:  # noqa: BLE001 - isolate the failure to the requests that cause it
            self._running_texts -= len(texts)
            self.stats.busy_seconds += time.perf_counter() - t0
            self.stats.batches += 1
            self._note_batch(len(texts), len(batch), time.perf_counter() - t0, False)
            if len(batch) == 1:
                log.error(
                    "batch of 1 request (%d texts) failed: %s: %s",
                    len(texts),
                    type(exc).__name__,
                    exc,
                    exc_info=log.isEnabledFor(logging.DEBUG),
                )
                self._fail(batch[0], exc)
                return
            log.warning(
                "batch of %d requests failed (%s: %s); retrying them one by one",
                len(batch),
                type(exc).__name__,
                exc,
            )
            for job in batch:
                await self._run_batch([job], threads)
            return
        self._running_texts -= len(texts)
        self.stats.busy_seconds += time.perf_counter() - t0
        self.stats.batches += 1
        self.stats.largest_batch_texts = max(self.stats.largest_batch_texts, len(texts))
        self.stats.largest_batch_requests = max(self.stats.largest_batch_requests, len(batch))
        self._note_batch(len(texts), len(batch), time.perf_counter() - t0, True)
        start = 0
        for job in batch:
            part = results[start : start + len(job.texts)]
            start += len(job.texts)
            self.stats.requests += 1
            self.stats.texts += len(job.texts)
            if not job.future.done():
                job.future.set_result(part)

    def _note_batch(self, texts: int, requests: int, seconds: float, ok: bool) -> None:
        if self.on_batch is not None:
            try:
                self.on_batch(texts, requests, seconds, ok)
            except Exception:  # noqa: BLE001 - metrics never fail a request
                log.exception("on_batch hook failed")

    def _fail(self, job: _Job, exc: Exception) -> None:
        self.stats.failed_requests += 1
        if not job.future.done():
            job.future.set_exception(exc)
