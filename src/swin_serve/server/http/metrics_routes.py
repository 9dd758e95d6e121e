"""The Prometheus scrape endpoint."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from swin_serve.server.http.deps import StateDep
from swin_serve.server.observability.metrics import OPENMETRICS_CONTENT_TYPE

router = APIRouter()


@router.get(
    "/metrics",
    summary="Prometheus metrics (OpenMetrics, with trace exemplars, when the scraper asks for it)",
    response_class=Response,
)
async def metrics(request: Request, state: StateDep) -> Response:
    if "application/openmetrics-text" in request.headers.get("accept", ""):
        body = state.metrics.render(openmetrics_format=True)
        return Response(body, media_type=OPENMETRICS_CONTENT_TYPE)
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
