"""What every answered gRPC call leaves behind, whoever answered it (the service or the API-key
interceptor): its count by status, and its access-log line."""

from __future__ import annotations

import time

import grpc

from swin_serve.server.observability.logs import log_access
from swin_serve.server.observability.metrics import Metrics
from swin_serve.server.v2 import messages


def record_call(metrics: Metrics, method: str, code: grpc.StatusCode, started: float) -> None:
    """``method`` is one the service registered: a bounded label."""
    metrics.grpc_requests.labels(method=method, code=code.name).inc()
    log_access(
        protocol="grpc",
        method=method,
        route=messages.SERVICE,
        status=code.name,
        duration_s=time.perf_counter() - started,
    )
