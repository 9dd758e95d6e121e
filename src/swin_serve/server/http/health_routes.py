"""Liveness and readiness probes of the plain HTTP API."""

from __future__ import annotations

from fastapi import APIRouter

from swin_serve.server.errors import ErrorResponse
from swin_serve.server.http.deps import PlaneDep
from swin_serve.server.http.schemas import Status

router = APIRouter()


@router.get("/healthz", response_model=Status, summary="Liveness: the process is up")
async def healthz() -> Status:
    return Status(status="ok")


@router.get(
    "/readyz",
    response_model=Status,
    responses={
        503: {"model": ErrorResponse, "description": "Loading, warming up, draining or failed"}
    },
    summary="Readiness: the default model loaded and warm, and not draining",
)
async def readyz(plane: PlaneDep) -> Status:
    plane.check_server_ready()
    return Status(status="ready")
