"""The Open Inference Protocol over HTTP, on the API's port: health, metadata and inference.

A thin transport over the data plane (``swin_serve.server.dataplane``), as gRPC is. Errors are
the protocol's ``{"error": "message"}``, with the statuses of the rest of the API
(``swin_serve.server.errors``). Inference shares the batcher, limits, deadlines and metrics of
``/classify``.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel

from swin_serve.server.dataplane import DataPlane, weights_warning
from swin_serve.server.http.deps import PlaneDep, ServedDep, TimingsDep
from swin_serve.server.http.disconnect import unless_client_left
from swin_serve.server.http.params import TimeoutHeader
from swin_serve.server.observability import tracing
from swin_serve.server.repository.models import LoadedModel
from swin_serve.server.state import RequestTimings
from swin_serve.server.v2.http_codec import (
    BINARY_MEDIA_TYPE,
    HEADER_LENGTH,
    parse_body,
    response_body,
)
from swin_serve.server.v2.model import server_metadata

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
async def ready(plane: PlaneDep) -> dict[str, bool]:
    plane.check_server_ready()
    return {"ready": True}


@router.get(_MODEL, summary="Model metadata: its inputs and outputs", responses=_MODEL_ERRORS)
async def model(plane: PlaneDep, name: str) -> dict[str, Any]:
    return plane.model_metadata(name)


@router.get(_VERSIONED, summary="Model metadata, for a version", responses=_MODEL_ERRORS)
async def model_version(plane: PlaneDep, name: str, version: str) -> dict[str, Any]:
    return plane.model_metadata(name, version)


@router.get(
    f"{_MODEL}/ready", summary="Model readiness (503 while not ready)", responses=_MODEL_ERRORS
)
async def model_ready(plane: PlaneDep, name: str) -> dict[str, Any]:
    return _model_ready(plane, name, "")


@router.get(
    f"{_VERSIONED}/ready", summary="Model readiness, for a version", responses=_MODEL_ERRORS
)
async def model_version_ready(plane: PlaneDep, name: str, version: str) -> dict[str, Any]:
    return _model_ready(plane, name, version)


def _model_ready(plane: DataPlane, name: str, version: str) -> dict[str, Any]:
    refusal = plane.why_not_ready(name, version)
    if refusal is not None:
        raise refusal
    return {"name": name, "ready": True}


@router.post(
    f"{_MODEL}/infer",
    summary="Inference: BYTES images or FP32 pixel_values in, any outputs back",
    responses=_INFER_ERRORS,
    openapi_extra=_INFER_BODY,
)
async def model_infer(
    request: Request,
    plane: PlaneDep,
    model: ServedDep,
    timings: TimingsDep,
    name: str,
    timeout_header: TimeoutHeader = None,
) -> Response:
    return await _infer(request, plane, model, timings, name, "", timeout_header)


@router.post(
    f"{_VERSIONED}/infer",
    summary="Inference, for a version",
    responses=_INFER_ERRORS,
    openapi_extra=_INFER_BODY,
)
async def model_version_infer(
    request: Request,
    plane: PlaneDep,
    model: ServedDep,
    timings: TimingsDep,
    name: str,
    version: str,
    timeout_header: TimeoutHeader = None,
) -> Response:
    return await _infer(request, plane, model, timings, name, version, timeout_header)


async def _infer(
    request: Request,
    plane: DataPlane,
    model: LoadedModel,
    timings: RequestTimings,
    name: str,
    version: str,
    timeout_ms: int | None,
) -> Response:
    started = time.monotonic()
    plane.admit(model, name, version)
    with tracing.step("read body"):
        body, header_length = await request.body(), request.headers.get(HEADER_LENGTH)
    parsed = await plane.off_loop(parse_body, body, header_length, name, version)
    del body
    deadline = plane.deadline(started, timeout_ms)
    work = plane.infer_tensors(model, parsed, timings, deadline)
    outputs = await unless_client_left(request, work)
    with tracing.step("response"):
        warning = weights_warning(model.engine.manifest)
        body, header_length = await plane.off_loop(response_body, parsed, outputs, warning)
    if header_length is None:
        return Response(body, media_type="application/json")
    return Response(body, media_type=BINARY_MEDIA_TYPE, headers={HEADER_LENGTH: str(header_length)})
