"""Typed FastAPI dependencies: routes get state, model, manifest and batcher through these only."""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import Depends, Request

from service.batcher import Batcher
from service.contract import Manifest
from service.errors import ApiError, ErrorCode
from service.lifecycle import Lifecycle, LoadedModel
from service.state import RequestTimings, ServiceState


def get_state(request: Request) -> ServiceState:
    return cast(ServiceState, request.app.state.service)


StateDep = Annotated[ServiceState, Depends(get_state)]


def unavailable(lifecycle: Lifecycle) -> ApiError:
    """The 503 for a server that cannot take this request in its present phase."""
    if lifecycle.draining:
        return ApiError(ErrorCode.DRAINING, "server is shutting down; retry on another replica")
    if lifecycle.failed:
        return ApiError(ErrorCode.NOT_READY, "model device failed; the server is restarting")
    return ApiError(ErrorCode.NOT_READY, "model is loading or warming up")


def get_model(state: StateDep) -> LoadedModel:
    """The loaded model (maybe still warming up), or 503 before it is loaded."""
    if state.lifecycle.model is None:
        raise unavailable(state.lifecycle)
    return state.lifecycle.model


def get_batcher(state: StateDep) -> Batcher:
    """The batcher, or 503 (not_ready) while warming up or after a fatal device error, so
    requests fail fast instead of queueing. Draining alone does not refuse (see begin_drain)."""
    model = state.lifecycle.model_for_requests()
    if model is None:
        raise unavailable(state.lifecycle)
    return model.batcher


ModelDep = Annotated[LoadedModel, Depends(get_model)]


def get_manifest(model: ModelDep) -> Manifest:
    return model.engine.manifest


def get_timings(request: Request) -> RequestTimings:
    # The observability middleware puts one in every request's scope; a bare one otherwise.
    timings = getattr(request.state, "timings", None)
    return timings if isinstance(timings, RequestTimings) else RequestTimings()


BatcherDep = Annotated[Batcher, Depends(get_batcher)]
ManifestDep = Annotated[Manifest, Depends(get_manifest)]
TimingsDep = Annotated[RequestTimings, Depends(get_timings)]
