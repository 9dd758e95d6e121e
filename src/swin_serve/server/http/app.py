"""The FastAPI application factory. The model is loaded in the lifespan, never at import."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from swin_serve import __version__
from swin_serve.artifact.preprocess import configure_pillow
from swin_serve.server.auth import install_api_keys
from swin_serve.server.errors import ApiError, ErrorCode, code_for_status, is_v2_path
from swin_serve.server.http.health_routes import router as health_router
from swin_serve.server.http.inference_routes import router as inference_router
from swin_serve.server.http.metrics_routes import router as metrics_router
from swin_serve.server.http.middleware import (
    BodyLimitMiddleware,
    ConcurrencyLimitMiddleware,
    ObservabilityMiddleware,
)
from swin_serve.server.http.model_routes import router as model_router
from swin_serve.server.http.ui import router as ui_router
from swin_serve.server.lifecycle import FatalHook, Lifecycle
from swin_serve.server.observability import tracing
from swin_serve.server.observability.metrics import Metrics
from swin_serve.server.repository.models import Opener
from swin_serve.server.runtime.decoding import DecodePool
from swin_serve.server.runtime.engine import Engine
from swin_serve.server.runtime.engines import open_engine
from swin_serve.server.runtime.model_file import ModelFile
from swin_serve.server.settings import Settings
from swin_serve.server.state import RequestSlots, ServiceState
from swin_serve.server.v2.grpc_server import GrpcServer
from swin_serve.server.v2.http_routes import router as v2_router

_DESCRIPTION = """
Swin Transformer image classification and feature extraction on ONNX Runtime, with server-side
dynamic batching.

* `POST /classify` - top-k ImageNet classes per image: `curl -F file=@cat.jpg localhost:8000/classify`
* `POST /features` - stage maps and/or the pooled embedding, as JSON or `.npz`
* `/v2/...` - the Open Inference Protocol (KServe v2), as Triton's and KServe's clients speak it
* Errors are `{"error": {"code": ..., "message": ...}}` (on `/v2`, `{"error": "message"}`); 503s
  carry `Retry-After`.
"""


def create_app(
    settings: Settings | None = None,
    engine: Engine | None = None,
    *,
    on_fatal: FatalHook | None = None,
    opener: Opener | None = None,
) -> FastAPI:
    """Build the app. ``engine`` lets tests inject a fake (as the one model of
    ``settings.model_path``), and ``opener`` one that turns each model file into an engine;
    otherwise the lifespan loads the model repository or ``settings.model_path`` into ONNX
    Runtime. ``on_fatal`` is called (after readiness went 503) when the device
    fails for good. The app's lifecycle is ``app.state.service.lifecycle``.
    """
    settings = settings if settings is not None else Settings()
    metrics = Metrics()
    if opener is None:
        opener = _always(engine) if engine is not None else functools.partial(open_engine, settings)
    lifecycle = Lifecycle(settings, metrics, opener)
    if on_fatal is not None:
        lifecycle.on_fatal(on_fatal)
    state = ServiceState(
        settings=settings,
        metrics=metrics,
        lifecycle=lifecycle,
        slots=RequestSlots(settings.max_concurrent_requests),
    )
    app = FastAPI(
        title="Swin Transformer inference service",
        version=__version__,
        description=_DESCRIPTION,
        lifespan=_lifespan(state),
    )
    app.state.service = state
    app.include_router(inference_router)
    app.include_router(health_router)
    app.include_router(metrics_router)
    app.include_router(model_router)
    app.include_router(ui_router)
    app.include_router(v2_router)
    _install_error_handlers(app, metrics)
    _install_middleware(app, state)
    return app


def _always(engine: Engine) -> Opener:
    def opener(file: ModelFile) -> Engine:
        return engine

    return opener


def _lifespan(state: ServiceState) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_pillow(state.settings.max_image_pixels)
        # The OTEL_* variables may turn tracing on (a test may have installed its own tracer).
        traced_here = tracing.tracer() is None and tracing.configure()
        # A missing or corrupt model raises here: uvicorn then exits non-zero with the message,
        # rather than serving a half-alive process.
        await state.lifecycle.start()
        state.decoder = DecodePool(
            state.settings.resolved_decode_threads(),
            state.settings.resolved_max_abandoned_decodes(),
        )
        state.lifecycle.track_decodes(state.decoder)
        state.metrics.decodes_abandoned.set_function(lambda: state.decoder.abandoned)
        grpc_server = None
        try:
            grpc_server = await _start_grpc(state)
            yield
        finally:
            if grpc_server is not None:  # its calls finish before the batcher drains
                await grpc_server.stop()
            await state.lifecycle.stop()
            state.decoder.shutdown()
            if traced_here:
                tracing.shutdown()  # sends the spans still buffered, briefly

    return lifespan


async def _start_grpc(state: ServiceState) -> GrpcServer | None:
    """The gRPC endpoint, when SWIN_GRPC_PORT is set: it refuses new inference calls once a drain
    begins, and stops at the lifespan's end."""
    if not state.settings.grpc_port:
        return None
    server = GrpcServer(state)
    await server.start()
    lifecycle = state.lifecycle
    lifecycle.on_drain(server.begin_drain)
    if lifecycle.draining:  # the drain began while the model loaded
        server.begin_drain()
    state.grpc_port = server.port
    return server


def _install_middleware(app: FastAPI, state: ServiceState) -> None:
    settings, metrics = state.settings, state.metrics
    # Starlette wraps in reverse order: observability is outermost, so it also times and counts
    # the 503s of the concurrency limit and the 413s the body limit sends itself.
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_upload_bytes,
        timeout_s=settings.body_timeout_s,
        metrics=metrics,
    )
    app.add_middleware(ConcurrencyLimitMiddleware, slots=state.slots, metrics=metrics)
    install_api_keys(app, settings, metrics)  # 401s take no slot, and are counted and logged
    app.add_middleware(ObservabilityMiddleware, metrics=metrics)


def _install_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        metrics.rejected(exc.code)
        return exc.response(v2=is_v2_path(request.url.path))

    @app.exception_handler(RequestValidationError)
    async def request_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        # Only location, message and type: echoing the input could reflect arbitrary client bytes.
        details = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        summary = "; ".join(f"{'.'.join(map(str, d['loc']))}: {d['msg']}" for d in details)
        error = ApiError(ErrorCode.VALIDATION_ERROR, f"invalid request: {summary}", details=details)
        metrics.rejected(error.code)
        return error.response(v2=is_v2_path(request.url.path))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # The framework's own errors (routing's 404 and 405, say): its status and headers stand.
        error = ApiError(code_for_status(exc.status_code), str(exc.detail))
        metrics.rejected(error.code)
        body = error.body(v2=is_v2_path(request.url.path))
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)
