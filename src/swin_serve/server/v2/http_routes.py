"""The Open Inference Protocol over HTTP, on the API's port: health, metadata and inference.

Errors are the protocol's ``{"error": "message"}``, with the statuses of the rest of the API
(``swin_serve.server.errors``). Inference shares the batcher, limits, deadlines and metrics of
``/classify``.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel

from swin_serve.server.http.deps import ServedDep, StateDep, TimingsDep, unavailable
from swin_serve.server.http.routes import TimeoutHeader
from swin_serve.server.observability import tracing
from swin_serve.server.repository.models import LoadedModel
from swin_serve.server.repository.registry import ModelState, not_ready
from swin_serve.server.runtime.inference import (
    effective_deadline,
    off_loop,
    refuse_if_full,
    unless_client_left,
)
from swin_serve.server.state import RequestTimings, ServiceState
from swin_serve.server.v2 import infer
from swin_serve.server.v2.http_codec import (
    BINARY_MEDIA_TYPE,
    HEADER_LENGTH,
    parse_body,
    response_body,
)
from swin_serve.server.v2.model import check_version, model_metadata, server_metadata, warning

router = APIRouter(prefix="/v2", tags=["Open Inference Protocol (KServe v2)"])


class V2Error(BaseModel):
    """Body of every error on /v2: the protocol's error object."""

    error: str


_ERROR_CAUSES = {
    400: "A malformed request or tensor, or an image that cannot be decoded",
    404: "Unknown model or version",
    408: "Body not received within SWIN_BODY_TIMEOUT_S",
    413: "Body over SWIN_MAX_UPLOAD_BYTES, or an image over SWIN_MAX_IMAGE_PIXELS",
    415: "An image format that is not accepted",
    422: "A bad X-Request-Timeout-Ms header",
    500: "The model run failed (only this batch)",
    503: "Overloaded, deadline passed while queued or decoding, not ready or draining; retry later",
}
_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The error answers a route can give, for OpenAPI (and so for schemathesis)."""
    return {
        status: {
            "model": V2Error,
            "description": _ERROR_CAUSES[status],
            **({"headers": _RETRY_AFTER} if status == 503 else {}),
        }
        for status in statuses
    }


_MODEL_ERRORS = _errors(404, 503)
_INFER_ERRORS = _errors(400, 404, 408, 413, 415, 422, 500, 503)

_MODEL = "/models/{name}"
_VERSIONED = "/models/{name}/versions/{version}"

_INFER_BODY = {
    "requestBody": {
        "required": True,
        "description": "An inference request (JSON), optionally followed by binary tensor data "
        f"whose JSON header length is given in the {HEADER_LENGTH} header.",
        "content": {
            "application/json": {"schema": {"type": "object"}},
            BINARY_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


@router.get("", summary="Server metadata: name, version, protocol extensions")
async def metadata() -> dict[str, Any]:
    return server_metadata()


@router.get("/health/live", summary="Liveness: the process is up")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get(
    "/health/ready",
    summary="Readiness: loaded, warmed up and not draining (503 if not)",
    responses=_errors(503),
)
async def ready(state: StateDep) -> dict[str, bool]:
    if not state.lifecycle.ready:
        raise unavailable(state.lifecycle)
    return {"ready": True}


@router.get(_MODEL, summary="Model metadata: its inputs and outputs", responses=_MODEL_ERRORS)
async def model(state: StateDep, name: str) -> dict[str, Any]:
    return _metadata(state, name, "")


@router.get(_VERSIONED, summary="Model metadata, for a version", responses=_MODEL_ERRORS)
async def model_version(state: StateDep, name: str, version: str) -> dict[str, Any]:
    return _metadata(state, name, version)


def _metadata(state: ServiceState, name: str, version: str) -> dict[str, Any]:
    entry = state.lifecycle.registry.entry(name)
    check_version(name, version)
    if entry.model is None:
        raise not_ready(entry)
    return model_metadata(name, entry.model.engine)


@router.get(
    f"{_MODEL}/ready", summary="Model readiness (503 while not ready)", responses=_MODEL_ERRORS
)
async def model_ready(state: StateDep, name: str) -> dict[str, Any]:
    return _model_ready(state, name, "")


@router.get(
    f"{_VERSIONED}/ready", summary="Model readiness, for a version", responses=_MODEL_ERRORS
)
async def model_version_ready(state: StateDep, name: str, version: str) -> dict[str, Any]:
    return _model_ready(state, name, version)


def _model_ready(state: ServiceState, name: str, version: str) -> dict[str, Any]:
    lifecycle = state.lifecycle
    entry = lifecycle.registry.entry(name)
    check_version(name, version)
    if lifecycle.draining or not lifecycle.taking_requests:
        raise unavailable(lifecycle)
    if entry.state is not ModelState.READY:
        raise not_ready(entry)
    return {"name": name, "ready": True}


@router.post(
    f"{_MODEL}/infer",
    summary="Inference: BYTES images or FP32 pixel_values in, any outputs back",
    responses=_INFER_ERRORS,
    openapi_extra=_INFER_BODY,
)
async def model_infer(
    request: Request,
    state: StateDep,
    model: ServedDep,
    timings: TimingsDep,
    name: str,
    timeout_header: TimeoutHeader = None,
) -> Response:
    return await _infer(request, state, model, timings, name, "", timeout_header)


@router.post(
    f"{_VERSIONED}/infer",
    summary="Inference, for a version",
    responses=_INFER_ERRORS,
    openapi_extra=_INFER_BODY,
)
async def model_version_infer(
    request: Request,
    state: StateDep,
    model: ServedDep,
    timings: TimingsDep,
    name: str,
    version: str,
    timeout_header: TimeoutHeader = None,
) -> Response:
    return await _infer(request, state, model, timings, name, version, timeout_header)


async def _infer(
    request: Request,
    state: ServiceState,
    model: LoadedModel,
    timings: RequestTimings,
    name: str,
    version: str,
    timeout_ms: int | None,
) -> Response:
    started = time.monotonic()
    check_version(name, version)
    refuse_if_full(model.batcher)
    with tracing.step("read body"):
        body, header_length = await request.body(), request.headers.get(HEADER_LENGTH)
    parsed = await off_loop(state, parse_body, body, header_length, name, version)
    del body
    deadline = effective_deadline(state, started, timeout_ms)
    outputs = await unless_client_left(request, infer.run(state, model, parsed, timings, deadline))
    with tracing.step("response"):
        body, header_length = await off_loop(
            state, response_body, parsed, outputs, warning(model.engine.manifest)
        )
    if header_length is None:
        return Response(body, media_type="application/json")
    return Response(body, media_type=BINARY_MEDIA_TYPE, headers={HEADER_LENGTH: str(header_length)})
