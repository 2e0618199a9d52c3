"""Batcher: dynamic micro-batching for concurrent callers, with a bounded queue.

Callers submit one item at a time (from threads or asyncio); one worker thread forms batches of up to
`max_batch_size` items that share a bucket (e.g. a sequence-length bucket, so padding stays small),
waiting at most `max_delay_ms` after the oldest item arrived, runs them in one call, and resolves
each caller's future with its own result. A full queue fails fast with OverloadError; an exception
in one batch reaches exactly the callers in that batch; close() drains what was accepted.

The worker must outlive anything a caller or the model does: a caller may cancel its future at any
moment (an HTTP request that timed out, a client that left), so every hand-over to a future goes
through `_settle`, which skips one that is already done, and nothing raised by run_batch or a hook
escapes the loop. `alive` is what a health check should ask.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Sequence

from runtime.errors import ConfigError, KilnError, OverloadError

log = logging.getLogger("kiln.batcher")


class RequestTimeout(KilnError):
    """A request waited in the queue longer than its timeout."""


class BatcherClosed(KilnError):
    """The batcher is shutting down and accepts no new requests."""


@dataclass
class _Request:
    item: Any
    bucket: Hashable
    future: Future
    enqueued: float
    deadline: float | None


@dataclass
class BatcherStats:
    submitted: int = 0
    completed: int = 0
    failed: int = 0
    rejected: int = 0
    timed_out: int = 0
    batches: int = 0
    batch_sizes: dict[int, int] = field(default_factory=dict)


class Batcher:
    """run_batch(items) -> results (same length, same order). Hooks: on_batch(size, queue_depth, seconds)."""

    def __init__(self, run_batch: Callable[[list[Any]], Sequence[Any]], max_batch_size: int = 32,
                 max_delay_ms: float = 5.0, max_queue: int = 1024, bucket: Callable[[Any], Hashable] | None = None,
                 timeout_s: float | None = None, on_batch: Callable[[int, int, float], None] | None = None) -> None:
        if max_batch_size < 1:
            raise ConfigError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_delay_ms < 0:
            raise ConfigError(f"max_delay_ms must be >= 0, got {max_delay_ms}")
        if max_queue < 1:
            raise ConfigError(f"max_queue must be >= 1, got {max_queue}")
        if timeout_s is not None and timeout_s <= 0:
            raise ConfigError(f"timeout_s must be > 0, got {timeout_s}")
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_delay = max_delay_ms / 1000
        self.max_queue = max_queue
        self.bucket = bucket or (lambda _: 0)
        self.timeout_s = timeout_s
        self.on_batch = on_batch
        self.stats = BatcherStats()
        self._pending: list[_Request] = []
        self._cond = threading.Condition()
        self._closing = False
        self._worker = threading.Thread(target=self._loop, name="kiln-batcher", daemon=True)
        self._worker.start()

    # -- callers ---------------------------------------------------------------------------------
    def submit(self, item: Any, timeout_s: float | None = None) -> Future:
        """Queue one item; the Future resolves to its result. Raises OverloadError when the queue is full."""
        return self.submit_many([item], timeout_s)[0]

    def submit_many(self, items: Sequence[Any], timeout_s: float | None = None) -> list[Future]:
        """Queue all items or none: a request of N inputs is never half accepted."""
        timeout = timeout_s if timeout_s is not None else self.timeout_s
        now = time.monotonic()
        with self._cond:
            if self._closing:
                raise BatcherClosed("the batcher is closed and accepts no new requests")
            if len(self._pending) + len(items) > self.max_queue:
                self.stats.rejected += len(items)
                raise OverloadError(f"queue full ({len(self._pending)} of {self.max_queue} slots taken, "
                                    f"{len(items)} needed); retry later")
            futures = []
            for item in items:
                fut: Future = Future()
                self._pending.append(_Request(item, self.bucket(item), fut, now, now + timeout if timeout else None))
                futures.append(fut)
            self.stats.submitted += len(items)
            self._cond.notify()
        return futures

    def __call__(self, item: Any, timeout_s: float | None = None) -> Any:
        """Submit and wait (the sync API)."""
        return self.submit(item, timeout_s).result()

    async def asubmit(self, item: Any, timeout_s: float | None = None) -> Any:
        """Submit and await (the asyncio API); the event loop is never blocked."""
        return await asyncio.wrap_future(self.submit(item, timeout_s))

    @property
    def queue_depth(self) -> int:
        return len(self._pending)

    @property
    def alive(self) -> bool:
        """The worker thread is running (false after close, or if it ever died)."""
        return self._worker.is_alive()

    def close(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop accepting; finish every accepted request (or fail them with BatcherClosed if drain=False)."""
        with self._cond:
            self._closing = True
            if not drain:
                for req in self._pending:
                    _settle(req.future, error=BatcherClosed("the batcher closed before this request ran"))
                self._pending.clear()
            self._cond.notify_all()
        self._worker.join(timeout)

    def __enter__(self) -> Batcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- worker ----------------------------------------------------------------------------------
    def _take_batch(self) -> list[_Request] | None:
        """Block until a batch is due; None when closed and drained."""
        with self._cond:
            while True:
                self._expire_locked(time.monotonic())
                if not self._pending:
                    if self._closing:
                        return None
                    self._cond.wait()
                    continue
                oldest = self._pending[0]
                same = [r for r in self._pending if r.bucket == oldest.bucket]
                wait = oldest.enqueued + self.max_delay - time.monotonic()
                # closing: no point waiting for more requests that can no longer arrive
                if len(same) >= self.max_batch_size or wait <= 0 or self._closing:
                    batch = same[: self.max_batch_size]
                    taken = {id(r) for r in batch}
                    self._pending = [r for r in self._pending if id(r) not in taken]
                    return batch
                self._cond.wait(wait)

    def _expire_locked(self, now: float) -> None:
        """Drop cancelled requests (their slots are free again) and fail the ones past their deadline."""
        keep = []
        for r in self._pending:
            if r.future.cancelled():
                continue
            if r.deadline is not None and r.deadline <= now:
                self.stats.timed_out += 1
                _settle(r.future, error=RequestTimeout(
                    f"request waited {now - r.enqueued:.3f}s in the queue, over its timeout"))
                continue
            keep.append(r)
        self._pending = keep

    def _loop(self) -> None:
        while (batch := self._take_batch()) is not None:
            try:
                self._run(batch)
            except Exception:  # noqa: BLE001 - a bug here must not become an outage; the batch is failed below
                log.exception("batcher: unexpected error around a batch; the worker carries on")
                for r in batch:
                    _settle(r.future, error=RuntimeError("internal error in the batcher; see the server log"))

    def _run(self, batch: list[_Request]) -> None:
        # a future cancelled since it was queued is skipped; one that is running can no longer be cancelled
        live = [r for r in batch if r.future.set_running_or_notify_cancel()]
        if not live:
            return
        started = time.perf_counter()
        try:
            results = list(self.run_batch([r.item for r in live]))
            if len(results) != len(live):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(live)} items")
        except BaseException as e:  # noqa: BLE001 - delivered to exactly this batch's callers
            for r in live:
                _settle(r.future, error=e)
            self.stats.failed += len(live)
        else:
            for r, res in zip(live, results):
                _settle(r.future, result=res)
            self.stats.completed += len(live)
        seconds = time.perf_counter() - started
        self.stats.batches += 1
        self.stats.batch_sizes[len(live)] = self.stats.batch_sizes.get(len(live), 0) + 1
        if self.on_batch:
            try:
                self.on_batch(len(live), len(self._pending), seconds)
            except Exception:  # noqa: BLE001 - a metrics hook must not stop inference
                log.exception("batcher: on_batch hook failed")


def _settle(future: Future, result: Any = None, error: BaseException | None = None) -> None:
    """Resolve a future unless it is already done (a caller may cancel it at any moment)."""
    if future.done():
        return
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except Exception:  # noqa: BLE001 - InvalidStateError: cancelled between the check and the set
        pass
