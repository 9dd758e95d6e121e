"""Images through decode and the batcher, for every protocol: the HTTP API, v2 HTTP and gRPC.

The data plane (``swin_serve.server.dataplane``) calls these; each transport renders their
ApiErrors its own way. Nothing here knows a transport.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from swin_serve.artifact.preprocess import ImageRejected, decode_image
from swin_serve.server.errors import ApiError, ErrorCode
from swin_serve.server.observability import tracing
from swin_serve.server.observability.metrics import exemplar
from swin_serve.server.repository.models import LoadedModel
from swin_serve.server.runtime.batcher import (
    Batcher,
    BatcherError,
    DeadlineExceeded,
    DeviceFailed,
    Draining,
    ImageResult,
    InferenceFailed,
    Overloaded,
)
from swin_serve.server.state import RequestTimings, ServiceState

T = TypeVar("T")

# What each way a submit can end tells the client: its code, and the words before the cause.
_SUBMIT_ERRORS: dict[type[BatcherError], tuple[ErrorCode, str]] = {
    Overloaded: (ErrorCode.OVERLOADED, "server overloaded: "),
    DeadlineExceeded: (ErrorCode.DEADLINE_EXCEEDED, "request deadline exceeded: "),
    Draining: (ErrorCode.DRAINING, "server is not accepting work: "),
    DeviceFailed: (ErrorCode.DRAINING, "server is not accepting work: "),
    InferenceFailed: (ErrorCode.INFERENCE_FAILED, ""),
}


async def off_loop(state: ServiceState, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` on the decode threads: CPU-heavy work never runs on the event loop.

    For work whose cost the body's size bounds (parsing, encoding answers); an image decode goes
    through ``decode_all``, whose cost the body does not bound, under the request's deadline."""
    executor = state.decoder.executor if state.decoder is not None else None
    return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)


def effective_deadline(state: ServiceState, started: float, *requested_ms: float | None) -> float:
    """Monotonic deadline: the server default, or the client's shorter ask (never longer)."""
    timeout_ms = min(
        [state.settings.request_timeout_ms, *(t for t in requested_ms if t is not None)]
    )
    return started + timeout_ms / 1e3


def refuse_if_full(batcher: Batcher, n: int = 1) -> None:
    """503 before reading or decoding anything: under overload that work would be wasted, and
    it would slow down the 503s themselves. (A request with room for only part of its images
    is still refused by submit, after decoding.)"""
    if not batcher.has_room(n):
        raise ApiError(ErrorCode.OVERLOADED, "server overloaded: queue full")


async def decode_all(
    state: ServiceState,
    model: LoadedModel,
    timings: RequestTimings,
    bodies: Sequence[bytes],
    deadline: float,
) -> list[np.ndarray]:
    """Each body decoded and preprocessed for ``model`` on the decode threads, one after another,
    answered by ``deadline`` (``time.monotonic()``) even while a decode still runs."""
    if state.decoder is None:
        raise ApiError(ErrorCode.NOT_READY, "server is not serving yet")
    decode = functools.partial(
        decode_image,
        spec=model.engine.manifest.preprocess,
        max_pixels=state.settings.max_image_pixels,
        max_scans=state.settings.max_jpeg_scans,
    )
    decode_time = state.metrics.decode_time.labels(model=model.name)
    inputs = []
    for data in bodies:
        t0 = time.perf_counter()
        try:
            with tracing.step("decode image", **{"swin.model": model.name}):
                inputs.append(await state.decoder.run(decode, data, deadline=deadline))
        except ImageRejected as exc:
            raise ApiError(ErrorCode(exc.code), exc.message) from exc
        finally:
            elapsed = time.perf_counter() - t0
            timings.decode_s += elapsed
            decode_time.observe(elapsed, exemplar(tracing.trace_ids()))
    return inputs


async def submit(
    batcher: Batcher, inputs: Sequence[np.ndarray], deadline: float, timings: RequestTimings
) -> list[ImageResult]:
    """Run model inputs (each (3, S, S) float32) through the batcher; record where time went."""
    enqueued = time.monotonic()
    try:
        results = await batcher.submit(inputs, deadline)
    except BatcherError as exc:
        # The wait still shows in the trace: a deadline passed in the queue is worth seeing.
        tracing.record_queue_wait(
            enqueued, time.monotonic(), [], **{"error.type": type(exc).__name__}
        )
        # By class, subclasses included: a new kind of BatcherError must not become a KeyError.
        code, prefix = next(_SUBMIT_ERRORS[c] for c in type(exc).__mro__ if c in _SUBMIT_ERRORS)
        raise ApiError(code, f"{prefix}{exc}"[:500]) from exc
    timings.queue_s = max(r.queue_wait_s for r in results)
    timings.inference_s = max(r.inference_s for r in results)
    timings.batch_size = max(r.batch_size for r in results)
    if tracing.tracer() is not None:
        attributes = {
            "swin.images": len(results),
            "swin.queue_wait_ms": timings.queue_s * 1e3,
            "swin.batch_size": timings.batch_size,
        }
        tracing.annotate(**attributes)  # the request's own span
        runs = [r.run for r in results if r.run is not None]
        tracing.record_queue_wait(enqueued, max(r.started for r in results), runs, **attributes)
    return results
