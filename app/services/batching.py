"""Micro-batching: concurrent requests computed together, as TEI and Triton batch their model calls. The
service batches the uncached /v1/recommend path (`Recommender.compute_many`): requests that arrive together
share one profile read, one user-encoder call, one FAISS search per platform and one scorer call.

One worker thread takes requests from a bounded queue:
- when it is free and requests are waiting, it takes them all (up to `max_batch`) at once;
- when none is waiting, it blocks for the next one; then, only while requests have been arriving closer
  together than the window (an estimate of the arrival rate), it waits for others until `window` after the
  moment it could have started that first one, or until none has come for twice the usual gap. A request
  is never held longer than the window for company, and a lone request (slow traffic) is not held at all.
A full queue refuses a request (`Overloaded`) instead of making every later one late.

Two stages (`prepare` given): the worker runs `prepare(items)` and hands its result to a second thread that
runs `process(prepared)` and answers, then takes the next batch at once. One batch's model calls (which
release the GIL: ONNX Runtime, FAISS, Redis I/O) then overlap the other batch's Python, so a second core is
used within one process. Results are the same: each batch still goes through both stages in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from app.services.errors import Overloaded

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _Job(Generic[T]):
    item: T
    future: Future
    arrived: float  # time.monotonic()
    # `run`'s callers: their asyncio future, set from the loop (one wake-up of the loop per batch, not per job)
    loop: asyncio.AbstractEventLoop | None = None
    waiter: asyncio.Future | None = None


@dataclass
class BatchStats:
    """Totals since start (or `reset`): what tests and the benchmark read."""

    batches: int = 0
    requests: int = 0
    largest: int = 0
    max_hold_s: float = 0.0  # the longest a request waited for others to join its batch


@dataclass
class _Failed:
    """`prepare` failed as a whole: every request of its batch gets the error."""

    error: Exception


class MicroBatcher(Generic[T, R]):
    """`process(items)` returns one result or exception per item, in order; `after_batch()` runs once the
    batch's answers are out (work the answers do not wait for). With `prepare`, the batch is
    `process(prepare(items))`, the two calls in two threads (a two-stage pipeline)."""

    def __init__(self, process: Callable[[Any], Sequence[R | BaseException]], *, window_s: float,
                 max_batch: int, max_queue: int, after_batch: Callable[[], None] | None = None,
                 observe: Callable[[int, list[float]], None] | None = None, name: str = "xrec-batcher",
                 prepare: Callable[[list[T]], Any] | None = None) -> None:
        self.process = process
        self.prepare = prepare
        self.after_batch = after_batch
        self.observe = observe  # (batch size, each request's hold in seconds)
        self.window = max(float(window_s), 0.0)
        self.max_batch = max(int(max_batch), 1)
        self.name = name
        self.stats = BatchStats()
        self.max_queue = max(int(max_queue), 1)
        self._queue: queue.Queue[_Job[T] | None] = queue.Queue(self.max_queue)
        # Mean gap between arrivals (exponentially weighted; a gap counts at most 10 windows, so one idle
        # minute does not hide the burst after it). Starts "slow": nobody is held until traffic says so.
        self._cap = max(10 * self.window, 1e-3)
        self._gap = self._cap
        self._last = time.monotonic()
        self._thread: threading.Thread | None = None
        self._finisher: threading.Thread | None = None
        # prepared batches on their way to the second stage; one at most, so a slow second stage makes the
        # first wait (and requests gather into larger batches) instead of piling up prepared work
        self._handoff: queue.Queue[tuple[list[_Job[T]], Any] | None] = queue.Queue(1)
        self._lock = threading.Lock()

    # ---- lifecycle ---------------------------------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name=self.name, daemon=True)
                self._thread.start()
            if self.prepare is not None and (self._finisher is None or not self._finisher.is_alive()):
                self._finisher = threading.Thread(target=self._finish_work, name=f"{self.name}-2", daemon=True)
                self._finisher.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Finish the batch in progress, fail the requests still waiting."""
        with self._lock:
            thread, self._thread = self._thread, None
            finisher, self._finisher = self._finisher, None
        if thread is None:
            return
        with contextlib.suppress(queue.Full):  # full: the worker is stuck; it is a daemon thread
            self._queue.put(None, timeout=timeout_s)
        thread.join(timeout_s)
        if finisher is not None:  # the worker handed it a stop after its last batch
            finisher.join(timeout_s)
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None and job.future.set_running_or_notify_cancel():
                _settle([job], [RuntimeError("the service is shutting down")])

    # ---- callers -------------------------------------------------------------------------------------------

    def submit(self, item: T, keep_free: int = 0) -> Future:
        """Queue one item; its future gets the result. Raises Overloaded when the queue is full, or (for
        work that may wait, `keep_free`) when fewer than that many places are left for the others."""
        if keep_free and self._queue.qsize() >= self._queue.maxsize - keep_free:
            raise Overloaded(f"fewer than {keep_free} places left in the queue")
        return self._put(item).future

    def _put(self, item: T, loop: asyncio.AbstractEventLoop | None = None) -> _Job[T]:
        if self._thread is None:
            self.start()
        now = time.monotonic()
        self._gap += 0.2 * (min(now - self._last, self._cap) - self._gap)
        self._last = now
        job = _Job(item, Future(), now, loop, loop.create_future() if loop is not None else None)
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise Overloaded(f"{self._queue.maxsize} requests are already waiting to be computed") from None
        return job

    async def run(self, item: T) -> R:
        """`submit` for the event loop: awaits the result without blocking the loop. A batch's answers reach
        the loop in one wake-up (`_deliver`): one per request cost ~8% of a cold request's CPU at c=16."""
        job = self._put(item, asyncio.get_running_loop())
        assert job.waiter is not None
        # the caller gone (client disconnected): the worker skips the job if it has not started it
        job.waiter.add_done_callback(lambda w: job.future.cancel() if w.cancelled() else None)
        return await job.waiter

    # ---- the worker ----------------------------------------------------------------------------------------

    def _work(self) -> None:
        free_at = time.monotonic()  # when the worker last became free to start a batch
        while True:
            first = self._queue.get()
            if first is None:
                break
            batch, stop = self._collect(first, free_at)
            self._run(batch, free_at)
            free_at = time.monotonic()
            if stop:
                break
        if self.prepare is not None:
            self._handoff.put(None)  # after the last prepared batch: the finisher answers it, then stops

    def _finish_work(self) -> None:
        while True:
            handed = self._handoff.get()
            if handed is None:
                return
            self._complete(*handed)

    @property
    def busy(self) -> bool:
        """Whether requests arrive closer together than the window: only then is one held for company."""
        return self._gap < self.window

    def _collect(self, first: _Job[T], free_at: float) -> tuple[list[_Job[T]], bool]:
        """`first` and whatever joins it: everything already waiting, and (busy traffic only) what arrives
        until `window` after `first` could have started."""
        batch = [first]
        start = max(first.arrived, free_at)
        deadline = start + self.window if self.busy else start
        linger = 2 * self._gap  # no arrival for twice the usual gap: the burst is over, stop waiting
        while len(batch) < self.max_batch:
            wait = min(deadline - time.monotonic(), linger)
            try:
                job = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return batch, True
            batch.append(job)
        return batch, False

    def _run(self, batch: list[_Job[T]], free_at: float) -> None:
        began = time.monotonic()
        holds = [began - max(j.arrived, free_at) for j in batch]
        live = [j for j in batch if j.future.set_running_or_notify_cancel()]  # not cancelled (client gone)
        s = self.stats
        s.batches += 1
        s.requests += len(live)
        s.largest = max(s.largest, len(live))
        s.max_hold_s = max(s.max_hold_s, *holds)
        if self.observe is not None:
            self.observe(len(live), holds)
        items = [j.item for j in live]
        if self.prepare is None:
            self._complete(live, items)
            return
        prepared: Any = _Failed(RuntimeError("nothing to prepare"))
        if live:
            try:
                prepared = self.prepare(items)
            except Exception as e:  # as in `_complete`: a bug, not one request's fault
                log.exception("%s: a batch failed as a whole", self.name)
                prepared = _Failed(e)
        self._handoff.put((live, prepared))

    def _complete(self, live: list[_Job[T]], prepared: Any) -> None:
        """The second stage (or the only one): answers out, then `after_batch`."""
        if live:
            if isinstance(prepared, _Failed):
                results: Sequence[R | BaseException] = [prepared.error] * len(live)
            else:
                try:
                    results = self.process(prepared)
                except Exception as e:  # process answers per item; this is a bug in it, not in one request
                    log.exception("%s: a batch failed as a whole", self.name)
                    results = [e] * len(live)
            _settle(live, results)
        if self.after_batch is not None:
            try:
                self.after_batch()
            except Exception:  # e.g. a profile write-back: the answers are out, the next request redoes it
                log.exception("%s: after-batch work failed", self.name)

    def reset_stats(self) -> None:
        self.stats = BatchStats()


def _settle(jobs: Sequence[_Job], results: Sequence[object]) -> None:
    """Each job's result or exception into its future; `run`'s jobs in one call per event loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future, object]]] = {}
    for job, result in zip(jobs, results, strict=True):
        if job.loop is not None and job.waiter is not None:
            by_loop.setdefault(job.loop, []).append((job.waiter, result))
        elif isinstance(result, BaseException):
            job.future.set_exception(result)
        else:
            job.future.set_result(result)
    for loop, pairs in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(_deliver, pairs)


def _deliver(pairs: list[tuple[asyncio.Future, object]]) -> None:
    for waiter, result in pairs:
        if waiter.done():  # cancelled meanwhile
            continue
        if isinstance(result, BaseException):
            waiter.set_exception(result)
        else:
            waiter.set_result(result)
