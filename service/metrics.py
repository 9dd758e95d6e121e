"""Every Prometheus metric of the service, declared in one place.

Each app gets its own CollectorRegistry, so tests that build many apps never collide. Label
values are bounded: endpoints are route templates (or "other"), reasons are ErrorCode values.
Times are in seconds, as Prometheus expects.
"""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from service.errors import ErrorCode

# Latency buckets from 1 ms to 30 s: covers a tiny model on GPU and Swin-B on a small CPU.
_TIME_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

ENDPOINTS = (
    "/classify",
    "/features",
    "/healthz",
    "/readyz",
    "/metrics",
    "/v1/models",
    "/v2",
    "/v2/health/live",
    "/v2/health/ready",
)
# The v2 model routes, by template: the model name and version never become label values.
_V2_MODEL = re.compile(r"^/v2/models/[^/]+(?:/versions/[^/]+)?(/ready|/infer)?$")


def endpoint_label(path: str) -> str:
    """Bounded label for a request path: a known route, or "other" (never the raw path)."""
    if path in ENDPOINTS:
        return path
    match = _V2_MODEL.match(path)
    if match:
        return f"/v2/models/{{name}}{match.group(1) or ''}"
    return "other"


class Metrics:
    """The service's metrics; only the HTTP layer, the batcher and the lifecycle update them."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self._declare_http(self.registry)
        self._declare_pipeline(self.registry)
        self._declare_service(self.registry)

    def _declare_http(self, r: CollectorRegistry) -> None:
        """Every HTTP request and gRPC call: how it was answered, and how long it took."""
        self.requests = Counter(
            "swin_requests",
            "HTTP requests answered, by endpoint and status code.",
            ["endpoint", "status"],
            registry=r,
        )
        self.request_latency = Histogram(
            "swin_request_duration_seconds",
            "Time from request start to response start.",
            ["endpoint"],
            buckets=_TIME_BUCKETS,
            registry=r,
        )

        self.grpc_requests = Counter(
            "swin_grpc_requests",
            "gRPC calls answered, by method and status code.",
            ["method", "code"],
            registry=r,
        )
        self.grpc_latency = Histogram(
            "swin_grpc_request_duration_seconds",
            "Time from a gRPC call's start to its answer.",
            ["method"],
            buckets=_TIME_BUCKETS,
            registry=r,
        )

    def _declare_pipeline(self, r: CollectorRegistry) -> None:
        """Where each image's time goes: decode, queue, batch, model run."""
        self.queue_wait = Histogram(
            "swin_queue_wait_seconds",
            "Per image: time from enqueue to the start of its batch.",
            buckets=_TIME_BUCKETS,
            registry=r,
        )
        self.decode_time = Histogram(
            "swin_decode_seconds",
            "Per image: decode and preprocessing time.",
            buckets=_TIME_BUCKETS,
            registry=r,
        )
        self.inference_time = Histogram(
            "swin_inference_seconds",
            "Per batch: model run time.",
            buckets=_TIME_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "swin_batch_size",
            "Images per model run.",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "swin_queue_depth",
            "Images waiting for a batch.",
            registry=r,
        )
        self.images = Counter(
            "swin_images",
            "Images that went through the model, by outcome (ok|failed).",
            ["outcome"],
            registry=r,
        )

    def _declare_service(self, r: CollectorRegistry) -> None:
        """What the service refused and why, whether it is ready, and which model it serves."""
        self.rejections = Counter(
            "swin_rejections",
            "Error responses, by reason (the error code).",
            ["reason"],
            registry=r,
        )
        self.ready = Gauge(
            "swin_ready", "1 when the model is loaded, warmed and not draining.", registry=r
        )
        self.model_info = Gauge(
            "swin_model_info",
            "Constant 1, labelled with the served model.",
            ["variant", "precision", "provider", "weights"],
            registry=r,
        )

    def rejected(self, code: ErrorCode) -> None:
        """Count one error response (or a client that left: ``CLIENT_DISCONNECTED``)."""
        self.rejections.labels(reason=code.value).inc()

    def set_model(self, *, variant: str, precision: str, provider: str, weights: str) -> None:
        self.model_info.labels(
            variant=variant, precision=precision, provider=provider, weights=weights
        ).set(1)

    def render(self) -> bytes:
        """Prometheus text exposition format."""
        return generate_latest(self.registry)
