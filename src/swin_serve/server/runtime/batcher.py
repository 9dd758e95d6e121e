"""Server-side dynamic batching: one background task, one future per image.

The task waits for a free run slot and the first queued image, then keeps taking images until
it has ``max_batch_size`` of them or ``max_batch_delay`` has passed since the first was queued.
It runs the engine on a dedicated thread (never on the event loop), checks that every output has
one row per input, and resolves each image's future. A failed run fails only its own futures.
Up to ``parallel_batches`` batches run at once, each on its own thread; while every slot is busy
the queue grows, so batches grow with the load.

Admission is bounded in images, not requests: a request with N images needs N free slots, or it
is refused at once (Overloaded). Each image carries a deadline; one that is still queued when its
deadline passes is answered DeadlineExceeded and never reaches the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from opentelemetry.trace import SpanContext
from prometheus_client import Gauge

from swin_serve.server.observability import tracing
from swin_serve.server.observability.metrics import ModelMetrics, exemplar
from swin_serve.server.runtime.engine import Engine, FatalEngineError

log = logging.getLogger(__name__)


class BatcherError(Exception):
    """Base of the errors a submit can end with."""


class Overloaded(BatcherError):
    """The queue has no room for the request's images."""


class Draining(BatcherError):
    """The batcher is shutting down: it no longer accepts work."""


class DeviceFailed(BatcherError):
    """The inference device failed for good: the batcher no longer accepts work."""


class DeadlineExceeded(BatcherError):
    """The request's deadline passed before all its images left the queue."""


class InferenceFailed(BatcherError):
    """The model run of this image's batch failed."""


@dataclass(frozen=True, slots=True)
class ImageResult:
    """One image's share of a batch run."""

    outputs: dict[str, np.ndarray]  # every model output for this image, batch axis removed
    queue_wait_s: float  # enqueue -> start of its batch
    inference_s: float  # duration of the whole batch run
    batch_size: int  # images in that run
    started: float = 0.0  # time.monotonic() at the start of that run
    run: SpanContext | None = None  # that run's span, while tracing


@dataclass(eq=False, slots=True)
class _Item:
    image: np.ndarray  # (3, S, S) float32
    future: asyncio.Future[ImageResult]  # done: the image's answer is given
    enqueued: float  # time.monotonic()
    deadline: float  # time.monotonic()
    request: SpanContext | None  # the span of the request it came with, while tracing


class _Queue:
    """Images waiting for a batch, oldest first; the queue-depth gauge follows its length.

    An image leaves it for a batch, or when its request gives up: removal is O(1) either way.
    The gauge is moved by differences, never set: while a model is replaced, its old and new
    batchers count into the same gauge.
    """

    def __init__(self, depth: Gauge) -> None:
        self._items: OrderedDict[_Item, None] = OrderedDict()
        self._depth = depth

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, item: _Item) -> bool:
        return item in self._items

    def extend(self, items: Iterable[_Item]) -> None:
        before = len(self._items)
        self._items.update(dict.fromkeys(items))
        self._depth.inc(len(self._items) - before)

    def popleft(self) -> _Item | None:
        if not self._items:
            return None
        item, _ = self._items.popitem(last=False)
        self._depth.dec()
        return item

    def remove(self, items: Iterable[_Item]) -> None:
        before = len(self._items)
        for item in items:
            self._items.pop(item, None)
        self._depth.dec(before - len(self._items))

    def take_all(self) -> list[_Item]:
        items = list(self._items)
        self.remove(items)
        return items


class Batcher:
    """Owns the queue and the batching loop; knows nothing of HTTP.

    An image is in exactly one of three states: queued (in ``_queue``), taken into a batch that
    is forming or running (in ``_taken``), or answered (its future is done).
    """

    def __init__(
        self,
        engine: Engine,
        *,
        max_batch_size: int,
        max_batch_delay_s: float,
        queue_capacity: int,
        metrics: ModelMetrics,
        on_fatal: Callable[[BaseException], None] | None = None,
        parallel_batches: int = 1,
    ) -> None:
        self._engine = engine
        self._max_batch_size = max_batch_size
        self._max_batch_delay_s = max_batch_delay_s
        self._capacity = queue_capacity
        self._metrics = metrics
        self._on_fatal = on_fatal
        self._parallel_batches = parallel_batches
        self._queue = _Queue(metrics.queue_depth)
        self._taken: set[_Item] = set()
        self._wakeup = asyncio.Event()  # set when an image is queued or the batcher closes
        # One thread per run slot: a batch fills while the others run.
        self._executor = ThreadPoolExecutor(
            max_workers=parallel_batches, thread_name_prefix="swin-infer"
        )
        self._slots = asyncio.Semaphore(parallel_batches)
        self._runs: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        # Set once the batcher stops accepting work: what a submit is refused with from then on.
        self._closed_by: type[Draining | DeviceFailed] | None = None

    # -- public API -----------------------------------------------------------------------------

    @property
    def max_batch_size(self) -> int:
        return self._max_batch_size

    @property
    def parallel_batches(self) -> int:
        return self._parallel_batches

    @property
    def depth(self) -> int:
        """Images waiting for a batch."""
        return len(self._queue)

    def has_room(self, n: int = 1) -> bool:
        """Whether ``n`` more images would be admitted now (a cheap pre-check; submit decides)."""
        return len(self._queue) + n <= self._capacity

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="swin-batcher")

    async def submit(self, images: Sequence[np.ndarray], deadline: float) -> list[ImageResult]:
        """Queue ``images`` (each (3, S, S) float32) and wait for their results, in order.

        ``deadline`` is a ``time.monotonic()`` instant by which every image must have left the
        queue. Raises Overloaded / Draining / DeviceFailed at once, DeadlineExceeded at the
        deadline, or InferenceFailed when a batch holding one of the images failed.
        """
        if self._closed_by is not None:
            raise self._closed_by("not accepting new work")
        n = len(images)
        if len(self._queue) + n > self._capacity:
            raise Overloaded(
                f"queue full ({len(self._queue)}/{self._capacity} images queued, {n} more asked)"
            )
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        request = tracing.current_context()
        items = [_Item(img, loop.create_future(), now, deadline, request) for img in images]
        futures = [it.future for it in items]
        self._queue.extend(items)
        self._wakeup.set()
        try:
            await asyncio.wait(
                futures, timeout=max(0.0, deadline - now), return_when=asyncio.FIRST_EXCEPTION
            )
            failed = next(
                (f for f in futures if f.done() and not f.cancelled() and f.exception()), None
            )
            if failed is not None:
                raise failed.exception()  # type: ignore[misc]
            queued = sum(it in self._queue for it in items)
            if queued:
                raise DeadlineExceeded(f"deadline passed with {queued} of {n} images still queued")
            # Every image has left the queue: the rest are in a running batch; wait for it.
            return list(await asyncio.gather(*futures))
        finally:
            # On error, timeout or client disconnect: images still queued never run, and the
            # answers of those in a batch have nobody to go to.
            self._queue.remove(items)
            for future in futures:
                future.cancel()

    async def drain(self, timeout_s: float) -> bool:
        """Stop accepting, finish everything queued and running; True if done within ``timeout_s``."""
        self._close(Draining)
        try:
            if self._task is not None:
                await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
            return True
        except TimeoutError:
            log.error(
                "drain: %d images still queued after %.1f s; failing them",
                len(self._queue),
                timeout_s,
            )
            self.abandon(Draining("server shut down before this image ran"))
            self._task.cancel()  # type: ignore[union-attr]
            return False
        finally:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def abandon(self, error: BatcherError) -> int:
        """Stop accepting and fail every queued and taken image with ``error`` now; returns how
        many images were failed. A running batch still finishes on the model, but its results
        are dropped: used when the drain budget is nearly spent, so that clients get a 503 they
        can retry rather than a dropped connection."""
        self._close(Draining)
        pending = [it for it in [*self._queue.take_all(), *self._taken] if not it.future.done()]
        self._fail(pending, error)
        return len(pending)

    # -- the loop -------------------------------------------------------------------------------

    async def _loop(self) -> None:
        try:
            while True:
                # A slot first: while every slot is busy, images queue up and the next batch
                # is formed from all of them.
                await self._slots.acquire()
                batch = await self._form_batch()
                if batch is None:
                    self._slots.release()
                    return  # closed and nothing left
                run = asyncio.get_running_loop().create_task(self._run_batch(batch))
                self._runs.add(run)
                run.add_done_callback(functools.partial(self._end_run, batch))
        finally:
            if self._runs:  # drain waits for this task: let the running batches finish
                await asyncio.gather(*self._runs, return_exceptions=True)

    def _end_run(self, batch: list[_Item], run: asyncio.Task[None]) -> None:
        # A run cancelled before it started never reached its own handlers: answer it here.
        self._fail(batch, Draining("server shut down before this image's batch ran"))
        self._runs.discard(run)
        self._slots.release()

    async def _form_batch(self) -> list[_Item] | None:
        first = await self._wait_first()
        if first is None:
            return None
        batch = [first]
        flush_at = first.enqueued + self._max_batch_delay_s
        while len(batch) < self._max_batch_size:
            item = self._take()
            if item is not None:
                batch.append(item)
                continue
            remaining = flush_at - time.monotonic()
            if remaining <= 0 or self._closed_by is not None:
                break
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), remaining)
        return batch

    async def _wait_first(self) -> _Item | None:
        while True:
            item = self._take()
            if item is not None:
                return item
            if self._closed_by is not None:
                return None
            # No await between the empty check and clear(): a submit cannot slip in unseen.
            self._wakeup.clear()
            await self._wakeup.wait()

    def _take(self) -> _Item | None:
        """The next queued image that should run, now taken; answers expired ones on the way."""
        now = time.monotonic()
        while (item := self._queue.popleft()) is not None:
            if now < item.deadline:
                self._taken.add(item)
                return item
            self._fail([item], DeadlineExceeded("deadline passed while queued"))
        return None

    async def _run_batch(self, batch: list[_Item]) -> None:
        n = len(batch)
        started = time.monotonic()
        for item in batch:
            wait = started - item.enqueued
            self._metrics.queue_wait.observe(wait, exemplar(tracing.context_ids(item.request)))
        self._metrics.batch_size.observe(n)
        span = None
        if tracing.tracer() is not None:
            links = [it.request for it in batch if it.request]
            span = tracing.start_run(links, self._run_attributes(n))
        loop = asyncio.get_running_loop()
        try:
            outputs = await loop.run_in_executor(
                self._executor, self._infer, [it.image for it in batch]
            )
            bad = {k: v.shape for k, v in outputs.items() if v.ndim == 0 or v.shape[0] != n}
            if bad:
                raise InferenceFailed(f"engine returned wrong row counts for a batch of {n}: {bad}")
        except asyncio.CancelledError:
            # Cancelled at the end of a drain that ran out of time: answer, never leave a
            # request waiting on a future nobody will resolve.
            self._fail(batch, Draining("server shut down before this image's batch finished"))
            tracing.end_run(span, "cancelled by the drain")
            raise
        except Exception as exc:
            self._batch_failed(batch, exc)
            tracing.end_run(span, f"model run failed: {type(exc).__name__}")
            return
        elapsed = time.monotonic() - started
        tracing.end_run(span)
        run = span.get_span_context() if span is not None else None
        self._metrics.inference_time.observe(elapsed, exemplar(tracing.context_ids(run)))
        self._metrics.images("ok").inc(n)
        for i, item in enumerate(batch):
            row = {name: value[i] for name, value in outputs.items()}
            self._answer(item, ImageResult(row, started - item.enqueued, elapsed, n, started, run))

    def _run_attributes(self, n: int) -> dict[str, object]:
        return {
            "swin.model": self._metrics.name,
            "swin.batch_size": n,
            "swin.provider": self._engine.provider,
            "swin.precision": self._engine.precision,
        }

    def _batch_failed(self, batch: list[_Item], exc: Exception) -> None:
        fatal = isinstance(exc, FatalEngineError)
        log.error("batch of %d failed%s: %s", len(batch), " (FATAL)" if fatal else "", exc)
        self._metrics.images("failed").inc(len(batch))
        error = (
            exc if isinstance(exc, InferenceFailed) else InferenceFailed(f"model run failed: {exc}")
        )
        self._fail(batch, error)
        if fatal:
            # The device is gone: queued images would only fail on it one batch at a time;
            # answer them with a 503 the client can retry elsewhere.
            self._close(DeviceFailed)
            self._fail(self._queue.take_all(), DeviceFailed("the inference device failed; retry"))
            if self._on_fatal is not None:
                self._on_fatal(exc)

    def _infer(self, images: list[np.ndarray]) -> dict[str, np.ndarray]:
        # Runs on the inference thread: the stack copy stays off the event loop too.
        return self._engine.run(np.stack(images))  # N, 3, S, S

    # -- answers --------------------------------------------------------------------------------

    def _close(self, refusal: type[Draining | DeviceFailed]) -> None:
        """Accept no more work (refusing it with ``refusal``); the loop ends once the queue is empty."""
        if self._closed_by is None:
            self._closed_by = refusal
        self._wakeup.set()

    def _answer(self, item: _Item, result: ImageResult) -> None:
        self._taken.discard(item)
        if not item.future.done():  # its request may have given up meanwhile
            item.future.set_result(result)

    def _fail(self, items: Iterable[_Item], error: BatcherError) -> None:
        for item in items:
            self._taken.discard(item)
            if not item.future.done():
                item.future.set_exception(error)
