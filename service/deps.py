"""Typed FastAPI dependencies: routes get state, manifest and batcher through these only."""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import Depends, Request

from service.batcher import Batcher
from service.errors import ApiError, ErrorCode
from service.manifest import Manifest
from service.state import RequestTimings, ServiceState


def get_state(request: Request) -> ServiceState:
    return cast(ServiceState, request.app.state.service)


StateDep = Annotated[ServiceState, Depends(get_state)]


def unavailable(state: ServiceState) -> ApiError:
    if state.draining:
        return ApiError(
            503, ErrorCode.DRAINING, "server is shutting down; retry on another replica"
        )
    if state.fatal is not None:
        return ApiError(503, ErrorCode.NOT_READY, "model device failed; the server is restarting")
    return ApiError(503, ErrorCode.NOT_READY, "model is loading or warming up")


def get_batcher(state: StateDep) -> Batcher:
    """The batcher, or 503 (not_ready) while warming up or after a fatal device error, so
    requests fail fast instead of queueing. Draining alone does not refuse (see begin_drain)."""
    if not state.warmed or state.fatal is not None or state.batcher is None:
        raise unavailable(state)
    return state.batcher


def get_manifest(state: StateDep) -> Manifest:
    if state.engine is None:
        raise unavailable(state)
    return state.engine.manifest


def get_timings(request: Request) -> RequestTimings:
    # The observability middleware puts one in every request's scope; a bare one otherwise.
    timings = getattr(request.state, "timings", None)
    return timings if isinstance(timings, RequestTimings) else RequestTimings()


BatcherDep = Annotated[Batcher, Depends(get_batcher)]
ManifestDep = Annotated[Manifest, Depends(get_manifest)]
TimingsDep = Annotated[RequestTimings, Depends(get_timings)]
