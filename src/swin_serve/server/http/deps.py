"""Typed FastAPI dependencies: routes get the state and the model they run on through these only."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, cast

from fastapi import Depends, Request

from swin_serve.server.errors import ApiError, ErrorCode
from swin_serve.server.lifecycle import Lifecycle
from swin_serve.server.observability import tracing
from swin_serve.server.repository.models import LoadedModel
from swin_serve.server.state import RequestTimings, ServiceState


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


def served_model(state: ServiceState, name: str | None) -> LoadedModel:
    """The model a request under ``name`` (None: the default) is queued on: 503 during start-up
    or after a fatal device error, 404 for an unknown name, 503 for a model not ready."""
    lifecycle = state.lifecycle
    if not lifecycle.taking_requests:
        raise unavailable(lifecycle)
    return lifecycle.registry.model_for_requests(name)


async def get_served(request: Request, state: StateDep) -> AsyncIterator[LoadedModel]:
    """The model this request runs on (named by the route's ``{name}``, else the default),
    leased until the request is answered: a swap or a removal never pulls it away mid-request.
    (An async generator: FastAPI would run a plain one on a worker thread.)"""
    model = served_model(state, request.path_params.get("name"))
    tracing.annotate(**{"swin.model": model.name})
    request.state.model = model.name  # for the access log line
    with model.leased():
        yield model


# "function": given back once the route has answered, not after the response is sent: a client
# that reads a large answer slowly must not keep a replaced model in memory.
ServedDep = Annotated[LoadedModel, Depends(get_served, scope="function")]


def get_timings(request: Request) -> RequestTimings:
    # The observability middleware puts one in every request's scope; a bare one otherwise.
    timings = getattr(request.state, "timings", None)
    return timings if isinstance(timings, RequestTimings) else RequestTimings()


TimingsDep = Annotated[RequestTimings, Depends(get_timings)]
