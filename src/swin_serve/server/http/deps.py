"""Typed FastAPI dependencies over the data plane: routes get the state, the data plane and the
model they run on through these only."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, cast

from fastapi import Depends, Request

from swin_serve.server.dataplane import DataPlane
from swin_serve.server.repository.models import LoadedModel
from swin_serve.server.state import RequestTimings, ServiceState


async def get_state(request: Request) -> ServiceState:
    # async, as every dependency here: FastAPI runs a plain function on a worker thread.
    return cast(ServiceState, request.app.state.service)


StateDep = Annotated[ServiceState, Depends(get_state)]


async def get_plane(state: StateDep) -> DataPlane:
    return DataPlane(state)


PlaneDep = Annotated[DataPlane, Depends(get_plane)]


async def get_served(request: Request, plane: PlaneDep) -> AsyncIterator[LoadedModel]:
    """The model this request runs on (named by the route's ``{name}``, else the default),
    leased until the request is answered. (An async generator: FastAPI would run a plain one on
    a worker thread.)"""
    with plane.lease(request.path_params.get("name")) as model:
        request.state.model = model.name  # for the access log line
        yield model


# "function": given back once the route has answered, not after the response is sent: a client
# that reads a large answer slowly must not keep a replaced model in memory.
ServedDep = Annotated[LoadedModel, Depends(get_served, scope="function")]


def get_timings(request: Request) -> RequestTimings:
    # The observability middleware puts one in every request's scope; a bare one otherwise.
    timings = getattr(request.state, "timings", None)
    return timings if isinstance(timings, RequestTimings) else RequestTimings()


TimingsDep = Annotated[RequestTimings, Depends(get_timings)]
