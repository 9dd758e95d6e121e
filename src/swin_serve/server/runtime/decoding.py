"""The decode threads, and the deadline over the work they do.

A decode cannot be interrupted once it runs in a thread: libjpeg and zlib do not look at a
clock. So the deadline bounds the *answer*, not the work: a request whose deadline passes (or
whose client leaves, or whose drain budget runs out) while its image is decoding is answered at
once, and its decode is *abandoned*: it goes on to its end on its thread, and its result is
dropped.

Abandoned decodes must not starve the others. The pool therefore has two kinds of room:

- ``threads`` live slots: decodes somebody still waits for, at most this many at once (the
  setting SWIN_DECODE_THREADS), each waiting its turn within its deadline;
- ``max_abandoned`` spare threads, for decodes nobody waits for any more. A decode that is
  abandoned gives its live slot back at once, and keeps running on one of these, so fresh
  requests still find ``threads`` threads to run on.

Once ``max_abandoned`` decodes are still running, new decodes are refused at once (503
overloaded) and readiness goes 503, until one of them ends: the load balancer sends the traffic
elsewhere rather than into a server whose cores are all busy with work nobody will read. The
count only rises on the event loop and only falls there (from the thread's done callback), so it
needs no lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from swin_serve.server.errors import ApiError, ErrorCode

log = logging.getLogger(__name__)
T = TypeVar("T")


class DecodePool:
    """``threads`` live decodes at once, plus room for ``max_abandoned`` abandoned ones.

    ``on_saturated(bool)`` is called on the event loop when the abandoned decodes reach or fall
    below ``max_abandoned``: readiness follows it (``Lifecycle.track_decodes`` sets it).
    """

    def __init__(self, threads: int, max_abandoned: int) -> None:
        self.executor = ThreadPoolExecutor(
            max_workers=threads + max_abandoned, thread_name_prefix="swin-decode"
        )
        self.threads = threads
        self.max_abandoned = max_abandoned
        self.abandoned = 0  # still running, nobody waiting for them
        self.live = 0  # holding a live slot: queued for a thread or decoding
        self._slots = asyncio.Semaphore(threads)
        self.on_saturated: Callable[[bool], None] = lambda saturated: None
        self._closing: asyncio.Future[None] | None = None  # set: answer everyone "draining"

    @property
    def saturated(self) -> bool:
        return self.abandoned >= self.max_abandoned

    @property
    def running(self) -> int:
        """Decodes whose threads are still busy, abandoned ones included."""
        return self.live + self.abandoned

    async def run(self, fn: Callable[..., T], *args: Any, deadline: float) -> T:
        """``fn(*args)`` on a decode thread, answered by ``deadline`` (a ``time.monotonic()``
        instant) whatever the thread does. Raises ApiError: 503 overloaded (too many abandoned
        decodes), deadline_exceeded (waiting for a thread, or decoding) or draining."""
        self._admit()
        self.live += 1
        try:
            await self._take_slot(deadline)
            try:
                return await self._decode(self.executor.submit(fn, *args), deadline)
            finally:
                self._slots.release()
        finally:
            self.live -= 1

    def abandon_all(self) -> int:
        """Answer every decode that is waiting or running with 503 draining, now, and refuse new
        ones: the drain budget is nearly spent. Returns how many requests were answered."""
        answered = self.live
        self._closing_future().set_result(None)
        return answered

    def shutdown(self) -> None:
        """No more decodes; abandoned ones run on, and the process does not wait for them."""
        self.executor.shutdown(wait=False, cancel_futures=True)

    # -- the steps --------------------------------------------------------------------------------

    def _admit(self) -> None:
        if self._closing is not None and self._closing.done():
            raise ApiError(ErrorCode.DRAINING, "server is shutting down; retry on another replica")
        if self.saturated:
            raise ApiError(
                ErrorCode.OVERLOADED,
                f"server overloaded: {self.abandoned} decodes past their deadline still hold "
                "the decode threads",
            )

    async def _take_slot(self, deadline: float) -> None:
        slot = asyncio.ensure_future(self._slots.acquire())
        try:
            done = await self._first(slot, deadline)
        except asyncio.CancelledError:  # the client left while waiting: the slot is not ours
            self._give_back(slot)
            raise
        if slot in done:
            return
        self._give_back(slot)
        raise self._late("while waiting for a decode thread")

    def _give_back(self, slot: asyncio.Future[Any]) -> None:
        """Stop waiting for a slot; one granted in the same tick is released, or it would be
        held for good by nobody."""
        slot.cancel()
        if slot.done() and not slot.cancelled():
            self._slots.release()

    async def _decode(self, work: Future[T], deadline: float) -> T:
        answer = asyncio.wrap_future(work)
        try:
            done = await self._first(answer, deadline)
        except asyncio.CancelledError:  # the client left, or the server cancelled the request
            self._abandon(work, answer)
            raise
        if answer in done:
            return answer.result()
        self._abandon(work, answer)
        raise self._late("while decoding the image")

    async def _first(self, fut: asyncio.Future[Any], deadline: float) -> set[asyncio.Future[Any]]:
        """Wait for ``fut``, the deadline, or the drain's end, whichever comes first."""
        timeout = max(0.0, deadline - time.monotonic())
        done, _ = await asyncio.wait(
            {fut, self._closing_future()}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        return done

    def _late(self, where: str) -> ApiError:
        if self._closing_future().done():
            return ApiError(
                ErrorCode.DRAINING,
                f"server is not accepting work: the drain budget ran out {where}",
            )
        return ApiError(ErrorCode.DEADLINE_EXCEEDED, f"request deadline exceeded {where}")

    def _abandon(self, work: Future[Any], answer: asyncio.Future[Any]) -> None:
        answer.cancel()  # nobody reads its result: no "exception never retrieved" either
        if work.cancel():  # never started: nothing runs on
            return
        self.abandoned += 1
        if self.abandoned == self.max_abandoned:
            log.warning("%d abandoned decodes still running: refusing decodes", self.abandoned)
            self.on_saturated(True)
        loop = asyncio.get_running_loop()
        work.add_done_callback(lambda _: _call_soon(loop, self._abandoned_ended))

    def _abandoned_ended(self) -> None:
        self.abandoned -= 1
        if self.abandoned == self.max_abandoned - 1:
            log.warning("an abandoned decode ended: taking decodes again")
            self.on_saturated(False)

    def _closing_future(self) -> asyncio.Future[None]:
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_future()
        return self._closing


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[[], None]) -> None:
    """``fn`` on ``loop`` from a decode thread; dropped once the loop has closed (at exit)."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(fn)
