"""Typed per-app state (kept on ``app.state.service``) and per-request timings."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from service.batcher import Batcher
from service.engine import Engine
from service.metrics import Metrics
from service.selfcheck import SelfCheckReport
from service.settings import Settings


@dataclass
class RequestTimings:
    """What one request spent where (seconds); rendered as its Server-Timing header."""

    decode_s: float = 0.0  # all its images, one after another
    queue_s: float = 0.0  # the longest wait of its images
    inference_s: float = 0.0  # the longest run among its images' batches
    batch_size: int = 0  # the largest batch its images ran in (0: none ran)

    def header(self, total_s: float) -> str:
        return (
            f"decode;dur={self.decode_s * 1e3:.2f}, queue;dur={self.queue_s * 1e3:.2f}, "
            f'inference;dur={self.inference_s * 1e3:.2f}, batch;desc="{self.batch_size}", '
            f"total;dur={total_s * 1e3:.2f}"
        )


@dataclass
class ServiceState:
    """Everything the routes need, created by ``create_app`` and filled in by the lifespan."""

    settings: Settings
    metrics: Metrics
    engine: Engine | None = None
    self_check: SelfCheckReport | None = None  # the golden self-check run at load
    batcher: Batcher | None = None
    decode_executor: ThreadPoolExecutor | None = None
    warmup_task: asyncio.Task[None] | None = None
    warmed: bool = False  # warm-up finished: requests may be queued
    ready: bool = False  # what /readyz says: warmed, not draining, device healthy
    draining: bool = False  # SIGTERM seen: readiness 503, accepted requests still finish
    fatal: BaseException | None = None
    drain_started: float | None = None  # time.monotonic() of the first begin_drain()
    _ready_event: asyncio.Event = field(default_factory=asyncio.Event)

    def mark_ready(self) -> None:
        self.warmed = True
        if not self.draining and self.fatal is None:
            self.ready = True
            self.metrics.ready.set(1)
        self._ready_event.set()

    def begin_drain(self) -> None:
        """Readiness goes 503 at once, so the load balancer stops sending us traffic.

        Requests keep being served: uvicorn has stopped accepting connections, and whatever
        reached us (on connections already open) is accepted work that should complete. The
        batcher refuses new work only once uvicorn has drained HTTP and the lifespan ends.
        """
        if self.drain_started is None:
            self.drain_started = time.monotonic()
        self.draining = True
        self.ready = False
        self.metrics.ready.set(0)

    def drain_time_left(self) -> float:
        """Seconds of ``settings.drain_timeout_s`` not yet used since the drain began."""
        if self.drain_started is None:
            return self.settings.drain_timeout_s
        return self.settings.drain_timeout_s - (time.monotonic() - self.drain_started)

    def mark_fatal(self, exc: BaseException) -> None:
        self.fatal = exc
        self.ready = False
        self.metrics.ready.set(0)
        self._ready_event.set()  # wake waiters so they see the failure

    async def wait_ready(self) -> None:
        """Until warm-up finished (or failed); for tests and tools, not for request handling."""
        await self._ready_event.wait()
