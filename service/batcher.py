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
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from service.engine import Engine, FatalEngineError
from service.metrics import Metrics

log = logging.getLogger(__name__)


class BatcherError(Exception):
    """Base of the errors a submit can end with."""


class Overloaded(BatcherError):
    """The queue has no room for the request's images."""


class Draining(BatcherError):
    """The batcher no longer accepts work (shutting down, or the device failed)."""


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


@dataclass(eq=False, slots=True)
class _Item:
    image: np.ndarray  # (3, S, S) float32
    future: asyncio.Future[ImageResult]
    enqueued: float  # time.monotonic()
    deadline: float  # time.monotonic()
    queued: bool = field(default=True)  # still counted in the queue depth


class Batcher:
    """Owns the queue and the batching loop; knows nothing of HTTP."""

    def __init__(
        self,
        engine: Engine,
        *,
        max_batch_size: int,
        max_batch_delay_s: float,
        queue_capacity: int,
        metrics: Metrics,
        on_fatal: Callable[[BaseException], None] | None = None,
        parallel_batches: int = 1,
    ) -> None:
        self._engine = engine
        self._max_batch_size = max_batch_size
        self._max_batch_delay_s = max_batch_delay_s
        self._capacity = queue_capacity
        self._metrics = metrics
        self._on_fatal = on_fatal
        self._queue: deque[_Item] = deque()
        self._depth = 0  # images queued and not dropped; what the capacity bounds
        self._wakeup = asyncio.Event()
        # One thread per run slot: a batch fills while the others run.
        self._executor = ThreadPoolExecutor(
            max_workers=parallel_batches, thread_name_prefix="swin-infer"
        )
        self._parallel_batches = parallel_batches
        self._slots = asyncio.Semaphore(parallel_batches)
        self._runs: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._accepting = True
        self._closing = False
        self._running: list[list[_Item]] = []  # batches handed to a run slot, not yet answered
        self._forming: list[_Item] = []  # the batch being filled now (out of the queue already)

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
        return self._depth

    def has_room(self, n: int = 1) -> bool:
        """Whether ``n`` more images would be admitted now (a cheap pre-check; submit decides)."""
        return self._depth + n <= self._capacity

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="swin-batcher")

    async def submit(self, images: Sequence[np.ndarray], deadline: float) -> list[ImageResult]:
        """Queue ``images`` (each (3, S, S) float32) and wait for their results, in order.

        ``deadline`` is a ``time.monotonic()`` instant by which every image must have left the
        queue. Raises Overloaded / Draining at once, DeadlineExceeded at the deadline, or
        InferenceFailed when a batch holding one of the images failed.
        """
        if not self._accepting:
            raise Draining("not accepting new work")
        n = len(images)
        if self._depth + n > self._capacity:
            raise Overloaded(
                f"queue full ({self._depth}/{self._capacity} images queued, {n} more asked)"
            )
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        items = [_Item(img, loop.create_future(), now, deadline) for img in images]
        self._queue.extend(items)
        self._set_depth(self._depth + n)
        self._wakeup.set()
        try:
            futures = [it.future for it in items]
            await asyncio.wait(
                futures, timeout=max(0.0, deadline - now), return_when=asyncio.FIRST_EXCEPTION
            )
            failed = next(
                (f for f in futures if f.done() and not f.cancelled() and f.exception()), None
            )
            if failed is not None:
                raise failed.exception()  # type: ignore[misc]
            if any(it.queued for it in items):
                raise DeadlineExceeded(
                    f"deadline passed with {sum(it.queued for it in items)} of {n} images still queued"
                )
            # Every image has left the queue: the rest are in a running batch; wait for it.
            return list(await asyncio.gather(*futures))
        finally:
            # On error, timeout or client disconnect: images still queued never run.
            self._drop(items)

    async def drain(self, timeout_s: float) -> bool:
        """Stop accepting, finish everything queued and running; True if done within ``timeout_s``."""
        self._accepting = False
        self._closing = True
        self._wakeup.set()
        try:
            if self._task is not None:
                await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
            return True
        except TimeoutError:
            log.error(
                "drain: %d images still queued after %.1f s; failing them", self._depth, timeout_s
            )
            self.abandon(Draining("server shut down before this image ran"))
            self._task.cancel()  # type: ignore[union-attr]
            return False
        finally:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def abandon(self, error: BatcherError) -> int:
        """Stop accepting and fail every queued, forming and running image with ``error`` now;
        returns how many images were failed. A running batch still finishes on the model, but
        its results are dropped: used when the drain budget is nearly spent, so that clients get
        a 503 they can retry rather than a dropped connection."""
        self._accepting = False
        pending = [it for it in self._queue if it.queued and not it.future.done()]
        pending += [it for it in self._forming if not it.future.done()]
        pending += [it for batch in self._running for it in batch if not it.future.done()]
        self._fail_queued(error)
        for item in pending:
            if not item.future.done():
                item.future.set_exception(error)
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
                    return  # closing and nothing left
                self._running.append(batch)  # visible to abandon() before the task starts
                run = asyncio.get_running_loop().create_task(self._run_batch(batch))
                self._runs.add(run)
                run.add_done_callback(functools.partial(self._release_slot, batch))
        finally:
            if self._runs:  # drain waits for this task: let the running batches finish
                await asyncio.gather(*self._runs, return_exceptions=True)

    def _release_slot(self, batch: list[_Item], run: asyncio.Task[None]) -> None:
        # A run cancelled before it started never reached its own handlers: answer it here.
        self._fail_items(batch, Draining("server shut down before this image's batch ran"))
        self._retire(batch)
        self._runs.discard(run)
        self._slots.release()

    def _retire(self, batch: list[_Item]) -> None:
        if any(b is batch for b in self._running):
            self._running = [b for b in self._running if b is not batch]

    async def _form_batch(self) -> list[_Item] | None:
        first = await self._wait_first()
        if first is None:
            return None
        batch = self._forming = [first]
        flush_at = first.enqueued + self._max_batch_delay_s
        while len(batch) < self._max_batch_size:
            item = self._pop_live()
            if item is not None:
                batch.append(item)
                continue
            remaining = flush_at - time.monotonic()
            if remaining <= 0 or self._closing:
                break
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), remaining)
        self._forming = []
        return batch

    async def _wait_first(self) -> _Item | None:
        while True:
            item = self._pop_live()
            if item is not None:
                return item
            if self._closing:
                return None
            # No await between the empty check and clear(): a submit cannot slip in unseen.
            self._wakeup.clear()
            await self._wakeup.wait()

    def _pop_live(self) -> _Item | None:
        """Next image that should run; answers expired ones and skips dropped ones on the way."""
        now = time.monotonic()
        while self._queue:
            item = self._queue.popleft()
            if not item.queued:
                continue  # its request gave up (deadline, error or disconnect)
            item.queued = False
            self._set_depth(self._depth - 1)
            if item.future.done():
                continue
            if now >= item.deadline:
                item.future.set_exception(DeadlineExceeded("deadline passed while queued"))
                continue
            return item
        return None

    async def _run_batch(self, batch: list[_Item]) -> None:
        n = len(batch)
        started = time.monotonic()
        for item in batch:
            self._metrics.queue_wait.observe(started - item.enqueued)
        self._metrics.batch_size.observe(n)
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
            self._fail_items(batch, Draining("server shut down before this image's batch finished"))
            raise
        except Exception as exc:
            fatal = isinstance(exc, FatalEngineError)
            log.error("batch of %d failed%s: %s", n, " (FATAL)" if fatal else "", exc)
            self._metrics.images.labels(outcome="failed").inc(n)
            error = (
                exc
                if isinstance(exc, InferenceFailed)
                else InferenceFailed(f"model run failed: {exc}")
            )
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(error)
            if fatal:
                # The device is gone: queued images would only fail on it one batch at a
                # time; answer them with a 503 the client can retry elsewhere.
                self._accepting = False
                self._closing = True
                self._fail_queued(Draining("the inference device failed; retry"))
                if self._on_fatal is not None:
                    self._on_fatal(exc)
            return
        finally:
            self._retire(batch)
        elapsed = time.monotonic() - started
        self._metrics.inference_time.observe(elapsed)
        self._metrics.images.labels(outcome="ok").inc(n)
        for i, item in enumerate(batch):
            if not item.future.done():  # its request may have been cancelled meanwhile
                row = {name: value[i] for name, value in outputs.items()}
                item.future.set_result(ImageResult(row, started - item.enqueued, elapsed, n))

    def _infer(self, images: list[np.ndarray]) -> dict[str, np.ndarray]:
        # Runs on the inference thread: the stack copy stays off the event loop too.
        return self._engine.run(np.stack(images))  # N, 3, S, S

    # -- bookkeeping ----------------------------------------------------------------------------

    def _set_depth(self, depth: int) -> None:
        self._depth = depth
        self._metrics.queue_depth.set(depth)

    def _drop(self, items: list[_Item]) -> None:
        dropped = 0
        for item in items:
            if item.queued:
                item.queued = False
                dropped += 1
            if not item.future.done():
                item.future.cancel()
        if dropped:
            self._set_depth(self._depth - dropped)

    @staticmethod
    def _fail_items(items: list[_Item], error: BatcherError) -> None:
        for item in items:
            if not item.future.done():
                item.future.set_exception(error)

    def _fail_queued(self, error: BatcherError) -> None:
        while self._queue:
            item = self._queue.popleft()
            if item.queued:
                item.queued = False
                self._set_depth(self._depth - 1)
            if not item.future.done():
                item.future.set_exception(error)
