"""A dynamic micro-batcher with Triton's semantics, between async request handlers and one worker thread.

Handlers `submit` work items and await their results. The worker takes the oldest waiting item and flushes a batch
when the queued items add up to `max_size` or when the oldest has waited `max_delay_us`, whichever comes first, and
hands the batch to `process_batch` in one call. Sizes are in whatever unit `size_of` counts: the service counts
candidates (its `max_batch_candidates` setting), not requests as Triton's `max_batch_size` does, because the
ranker's cost grows with candidates. A single item larger than `max_size` still runs, alone. The queue is bounded
(`QueueFull` when it is full), and an item whose deadline has passed while queued is dropped before inference
(`DeadlineExceeded`).

There is exactly one worker thread per batcher, so whatever its `process_batch` touches has one owner: the service's
ranking batcher is the only user of the FAISS indexes (GPU FAISS indexes are not thread-safe), and its encode
batcher the only user of the MiniLM session.

Batchers chain (`submit(..., then=Then(next_stage, make))`): the worker queues `make(result)` on the next stage itself,
so that an item goes from one stage to the next without waiting for the event loop, which under load is busy
parsing other requests; the caller awaits the last stage's result.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, overload

Item = TypeVar("Item")
Result = TypeVar("Result")
Next = TypeVar("Next")
Final = TypeVar("Final")


class QueueFull(RuntimeError):
    """The batcher's queue is at capacity; the caller should retry later."""


class DeadlineExceeded(TimeoutError):
    """The request's deadline passed before it reached inference; it was dropped unprocessed."""


class ShuttingDown(RuntimeError):
    """The batcher was closed before this item was processed."""


@dataclass
class _Pending(Generic[Item]):
    item: Item
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    size: int
    enqueued: float
    deadline: float | None
    then: Then[Any, Any, Any] | None = None


@dataclass(frozen=True)
class Then(Generic[Result, Next, Final]):
    """Where an item goes after its stage: `make(result)` is queued on `stage` by the worker that made `result`,
    with the same deadline, and the caller gets `stage`'s result."""

    stage: MicroBatcher[Next, Final]
    make: Callable[[Result], Next]


@dataclass
class Batched(Generic[Item]):
    """An item as `process_batch` sees it, with the time it spent queued."""

    item: Item
    queue_seconds: float


def _resolve(future: asyncio.Future, value: object, error: BaseException | None) -> None:
    if future.done():  # the awaiting handler was cancelled (client went away)
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


@dataclass
class MicroBatcher(Generic[Item, Result]):
    """Groups concurrent work items into batches processed on one worker thread."""

    process_batch: Callable[[list[Batched[Item]]], list[Result | Exception]]
    size_of: Callable[[Item], int]
    max_size: int = 4096  # in size_of units
    max_delay_us: int = 0
    max_queue: int = 512
    name: str = "batcher"  # the worker thread's name
    _queue: deque[_Pending[Item]] = field(default_factory=deque, init=False)
    _cond: threading.Condition = field(default_factory=threading.Condition, init=False)
    _closed: bool = field(default=False, init=False)
    _busy: bool = field(default=False, init=False)  # process_batch is running
    _thread: threading.Thread | None = field(default=None, init=False)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        return len(self._queue)

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing being processed: the worker thread is asleep. A hint, read without the lock:
        work may arrive the moment after."""
        return not self._busy and not self._queue

    @overload
    async def submit(self, item: Item, deadline: float | None = None) -> Result: ...

    @overload
    async def submit(self, item: Item, deadline: float | None, then: Then[Result, Next, Final]) -> Final: ...

    async def submit(
        self, item: Item, deadline: float | None = None, then: Then[Result, Any, Any] | None = None
    ) -> Any:
        """Queue `item` and wait for its result, or with `then`, for the result of the stage it goes on to.
        `deadline` is a time.perf_counter() value, or None."""
        loop = asyncio.get_running_loop()
        pending = _Pending(item, loop.create_future(), loop, self.size_of(item), time.perf_counter(), deadline, then)
        self._enqueue(pending)
        return await pending.future

    def _enqueue(self, pending: _Pending[Item]) -> None:
        """Queue `pending` (from the event loop, or from a previous stage's worker); QueueFull or ShuttingDown."""
        with self._cond:
            if self._closed:
                raise ShuttingDown("the service is shutting down")
            if len(self._queue) >= self.max_queue:
                raise QueueFull(f"the request queue is full ({self.max_queue} waiting)")
            self._queue.append(pending)
            self._cond.notify()

    def close(self, timeout: float = 5.0) -> None:
        """Stop accepting work, let the worker finish what is queued, then stop it."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def _take_batch(self) -> list[_Pending[Item]] | None:
        """Block until a batch is due; None when closed and drained."""
        delay = self.max_delay_us / 1e6
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait()
            flush_at = self._queue[0].enqueued + delay
            while not self._closed and sum(p.size for p in self._queue) < self.max_size:
                remaining = flush_at - time.perf_counter()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            batch: list[_Pending[Item]] = []
            size = 0
            while self._queue and (not batch or size + self._queue[0].size <= self.max_size):
                pending = self._queue.popleft()
                batch.append(pending)
                size += pending.size
            return batch

    @staticmethod
    def _forward(pending: _Pending[Item], then: Then[Any, Any, Any], result: object) -> None:
        """Queue the next stage's item for `pending`'s caller, from this worker thread; a refusal (a full or closed
        next stage) or a failing `make` is the caller's error."""
        try:
            item = then.make(result)
            stage = then.stage
            stage._enqueue(
                _Pending(item, pending.future, pending.loop, stage.size_of(item), time.perf_counter(), pending.deadline)
            )
        except Exception as exc:
            pending.loop.call_soon_threadsafe(_resolve, pending.future, None, exc)

    def _run(self) -> None:
        while (batch := self._take_batch()) is not None:
            now = time.perf_counter()
            live = []
            for pending in batch:
                if pending.deadline is not None and now > pending.deadline:
                    expired = DeadlineExceeded("the request's deadline passed while it was queued")
                    pending.loop.call_soon_threadsafe(_resolve, pending.future, None, expired)
                else:
                    live.append(pending)
            if not live:
                continue
            self._busy = True
            try:
                results = self.process_batch([Batched(p.item, now - p.enqueued) for p in live])
            except Exception as exc:  # a bug in process_batch must fail its requests, not kill the worker
                results = [exc] * len(live)
            finally:
                self._busy = False
            for pending, result in zip(live, results, strict=True):
                if pending.then is not None and not isinstance(result, Exception):
                    self._forward(pending, pending.then, result)
                else:
                    error = result if isinstance(result, Exception) else None
                    pending.loop.call_soon_threadsafe(_resolve, pending.future, result, error)
        with self._cond:
            leftovers = list(self._queue)
            self._queue.clear()
        for pending in leftovers:
            pending.loop.call_soon_threadsafe(_resolve, pending.future, None, ShuttingDown("shutting down"))
