"""The FastAPI application factory. The model is loaded in the lifespan, never at import."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.batcher import Batcher, Draining
from service.engine import Engine, OnnxEngine, warmup_batch_sizes
from service.errors import ApiError, ErrorCode, code_for_status, error_body
from service.metrics import Metrics
from service.middleware import (
    BodyLimitMiddleware,
    ConcurrencyLimitMiddleware,
    ObservabilityMiddleware,
)
from service.preprocess import configure_pillow
from service.routes import router
from service.selfcheck import SelfCheckFailed, SelfCheckReport, check_engine
from service.settings import Settings
from service.state import ServiceState
from service.ui import router as ui_router

log = logging.getLogger("service")

FatalHook = Callable[[BaseException], None]

_DESCRIPTION = """
Swin Transformer image classification and feature extraction on ONNX Runtime, with server-side
dynamic batching.

* `POST /classify` - top-k ImageNet classes per image: `curl -F file=@cat.jpg localhost:8000/classify`
* `POST /features` - stage maps and/or the pooled embedding, as JSON or `.npz`
* Errors are always `{"error": {"code": ..., "message": ...}}`; 503s carry `Retry-After`.
"""


_RANDOM_BANNER = (
    "\n" + "!" * 78 + "\n"
    "!!  %s has RANDOM WEIGHTS: every prediction is meaningless.\n"
    "!!  Export official weights: python -m export --checkpoint official\n" + "!" * 78
)


def create_app(
    settings: Settings | None = None,
    engine: Engine | None = None,
    *,
    on_fatal: FatalHook | None = None,
) -> FastAPI:
    """Build the app. ``engine`` lets tests inject a fake; otherwise the lifespan loads
    ``settings.model_path``. ``on_fatal`` is called (after readiness went 503) when the device
    fails for good; ``python -m service`` uses it to exit non-zero so the orchestrator restarts us.
    """
    settings = settings if settings is not None else Settings()
    metrics = Metrics()
    state = ServiceState(settings=settings, metrics=metrics)

    def handle_fatal(exc: BaseException) -> None:
        log.critical("FATAL device error, readiness now 503; the process must restart: %s", exc)
        state.mark_fatal(exc)
        if on_fatal is not None:
            on_fatal(exc)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_pillow()
        # A missing or corrupt model raises here: uvicorn then exits non-zero with the message,
        # rather than serving a half-alive process.
        eng = engine if engine is not None else await asyncio.to_thread(OnnxEngine.load, settings)
        state.self_check = await asyncio.to_thread(_self_check, eng, settings.model_path)
        state.engine = eng
        manifest = eng.manifest
        metrics.set_model(
            variant=manifest.variant,
            precision=manifest.precision,
            provider=eng.provider,
            weights="random" if manifest.weights.random else manifest.weights.source,
        )
        if manifest.weights.random:
            log.warning(_RANDOM_BANNER, manifest.variant)
        state.decode_executor = ThreadPoolExecutor(
            max_workers=settings.resolved_decode_threads(), thread_name_prefix="swin-decode"
        )
        on_gpu = eng.provider == "CUDAExecutionProvider"
        state.batcher = Batcher(
            eng,
            max_batch_size=settings.resolved_max_batch_size(on_gpu=on_gpu),
            max_batch_delay_s=settings.max_batch_delay_ms / 1e3,
            queue_capacity=settings.queue_capacity,
            metrics=metrics,
            on_fatal=handle_fatal,
            parallel_batches=settings.resolved_parallel_batches(on_gpu=on_gpu),
        )
        state.batcher.start()
        state.warmup_task = asyncio.create_task(
            _warm_up(state, eng, handle_fatal), name="swin-warmup"
        )
        watchdog = asyncio.create_task(_drain_watchdog(state), name="swin-drain-watchdog")
        try:
            yield
        finally:
            state.begin_drain()
            state.warmup_task.cancel()
            watchdog.cancel()
            # uvicorn has already spent part of the drain budget finishing HTTP requests (which
            # empties the queue); the batcher gets the rest, so the process exits in time.
            finished = await state.batcher.drain(max(0.5, state.drain_time_left()))
            state.decode_executor.shutdown(wait=False, cancel_futures=True)
            log.info("drained (%s)", "all requests finished" if finished else "timed out")

    app = FastAPI(
        title="Swin Transformer inference service",
        version="0.1.0",
        description=_DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.service = state
    app.include_router(router)
    app.include_router(ui_router)
    _install_error_handlers(app, metrics)
    # Starlette wraps in reverse order: observability is outermost, so it also times and counts
    # the 503s of the concurrency limit and the 413s the body limit sends itself.
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_upload_bytes,
        timeout_s=settings.body_timeout_s,
        metrics=metrics,
    )
    app.add_middleware(
        ConcurrencyLimitMiddleware, max_requests=settings.max_concurrent_requests, metrics=metrics
    )
    app.add_middleware(ObservabilityMiddleware, metrics=metrics)
    return app


# How long before the drain budget ends unfinished requests are answered 503: uvicorn cancels
# whatever is left at the budget's end, and a cancelled request gets its bare text 500.
DRAIN_ANSWER_MARGIN_S = 0.3
_DRAIN_POLL_S = 0.05


async def _drain_watchdog(state: ServiceState) -> None:
    """Once a drain has begun, wait out its budget, then answer what is left with 503 draining.

    The drain starts in a signal handler, where no task can be scheduled, hence the polling
    (a flag read every 50 ms).
    """
    while not state.draining:
        await asyncio.sleep(_DRAIN_POLL_S)
    await asyncio.sleep(max(0.0, state.drain_time_left() - DRAIN_ANSWER_MARGIN_S))
    if state.batcher is not None:
        failed = state.batcher.abandon(Draining("the drain budget ran out before this image ran"))
        if failed:
            log.error("drain budget spent: answered %d unfinished images with 503", failed)


def _self_check(engine: Engine, source: object) -> SelfCheckReport:
    """Replay the exporter's golden inputs before anything else; raise if the answers differ."""
    try:
        report = check_engine(engine)
    except SelfCheckFailed as exc:  # golden answers that cannot be read or do not fit
        log.error("%s: %s", source, exc)
        raise SelfCheckFailed(f"{source}: {exc}") from exc
    if report.status == "failed":
        message = report.failure_message(str(source))
        log.error("%s", message)
        raise SelfCheckFailed(message)
    if report.status == "skipped":
        log.warning("golden self-check skipped: %s", report.reason)
    else:
        bounds = {k: v for k, v in asdict(report.tolerance).items() if v is not None}
        log.info(
            "golden self-check passed: %d inputs, every output within %s, in %.0f ms",
            report.inputs,
            bounds,
            report.took_ms,
        )
    return report


async def _warm_up(state: ServiceState, engine: Engine, handle_fatal: FatalHook) -> None:
    """Run batch sizes 1, 2, 4, ... up to the largest the batcher forms, then flip readiness on."""
    assert state.batcher is not None
    sizes = warmup_batch_sizes(state.batcher.max_batch_size)
    try:
        await asyncio.to_thread(engine.warmup, sizes)
    except Exception as exc:  # a model that cannot run a zero batch must not report ready
        handle_fatal(exc)
        return
    state.mark_ready()
    log.info("warm-up done (batch sizes %s); ready", sizes)


def _install_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    def respond(
        status: int, code: ErrorCode, body: dict, headers: dict[str, str] | None = None
    ) -> JSONResponse:
        metrics.rejections.labels(reason=code.value).inc()
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return respond(exc.status, exc.code, exc.body(), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def request_validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        # Only location, message and type: echoing the input could reflect arbitrary client bytes.
        details = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        summary = "; ".join(f"{'.'.join(map(str, d['loc']))}: {d['msg']}" for d in details)
        code = ErrorCode.VALIDATION_ERROR
        return respond(422, code, error_body(code, f"invalid request: {summary}", details))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = code_for_status(exc.status_code)
        headers = dict(exc.headers or {})
        return respond(exc.status_code, code, error_body(code, str(exc.detail)), headers)
