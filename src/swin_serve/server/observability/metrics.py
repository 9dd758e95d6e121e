"""Every Prometheus metric of the service, declared in one place.

Each app gets its own CollectorRegistry, so tests that build many apps never collide. Label
values are bounded: endpoints are route templates (or "other"), reasons are ErrorCode values,
and models are the names of the model files in the repository (a folder an operator controls,
not a client); a removed model's series go with it. Times are in seconds, as Prometheus expects.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.openmetrics import exposition as openmetrics

from swin_serve.server.errors import ErrorCode

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
# The model routes, by template: the model name and version never become label values.
_V2_MODEL = re.compile(r"^/v2/models/[^/]+(?:/versions/[^/]+)?(/ready|/infer)?$")
_V1_MODEL = re.compile(r"^/v1/models/[^/]+(/classify|/features)?$")
PIPELINE_HISTOGRAMS = ("queue_wait", "decode_time", "inference_time", "batch_size")


def endpoint_label(path: str) -> str:
    """Bounded label for a request path: a known route, or "other" (never the raw path)."""
    if path in ENDPOINTS:
        return path
    for pattern, prefix in ((_V2_MODEL, "/v2/models/{name}"), (_V1_MODEL, "/v1/models/{name}")):
        match = pattern.match(path)
        if match:
            return f"{prefix}{match.group(1) or ''}"
    return "other"


@dataclass(frozen=True)
class ModelMetrics:
    """One model's share of the pipeline metrics (each already labelled with its name): what its
    batcher and its requests update."""

    name: str
    queue_wait: Histogram
    decode_time: Histogram
    inference_time: Histogram
    batch_size: Histogram
    queue_depth: Gauge
    _images: Counter

    def images(self, outcome: str) -> Counter:
        return self._images.labels(model=self.name, outcome=outcome)


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
            ["model"],
            buckets=_TIME_BUCKETS,
            registry=r,
        )
        self.decode_time = Histogram(
            "swin_decode_seconds",
            "Per image: decode and preprocessing time.",
            ["model"],
            buckets=_TIME_BUCKETS,
            registry=r,
        )
        self.inference_time = Histogram(
            "swin_inference_seconds",
            "Per batch: model run time.",
            ["model"],
            buckets=_TIME_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "swin_batch_size",
            "Images per model run.",
            ["model"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "swin_queue_depth",
            "Images waiting for a batch.",
            ["model"],
            registry=r,
        )
        self.images = Counter(
            "swin_images",
            "Images that went through the model, by outcome (ok|failed).",
            ["model", "outcome"],
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
        self.decodes_abandoned = Gauge(
            "swin_decodes_abandoned",
            "Decodes still running after their request was answered (deadline, client gone, "
            "drain); at SWIN_MAX_ABANDONED_DECODES decodes are refused and readiness is 503.",
            registry=r,
        )
        self.model_info = Gauge(
            "swin_model_info",
            "Constant 1 per served model, labelled with what it is.",
            ["model", "variant", "precision", "provider", "weights"],
            registry=r,
        )
        self.model_ready = Gauge(
            "swin_model_ready",
            "1 while the model takes requests (loaded, self-checked, warm), else 0.",
            ["model"],
            registry=r,
        )
        self.model_loads = Counter(
            "swin_model_loads",
            "Model loads, by outcome: loaded, failed (load or self-check), refused "
            "(SWIN_MAX_MODELS reached).",
            ["model", "outcome"],
            registry=r,
        )
        self.model_load_time = Histogram(
            "swin_model_load_seconds",
            "Per loaded model: time to load, self-check and warm it up before it takes traffic.",
            buckets=_TIME_BUCKETS,
            registry=r,
        )

    def rejected(self, code: ErrorCode) -> None:
        """Count one error response (or a client that left: ``CLIENT_DISCONNECTED``)."""
        self.rejections.labels(reason=code.value).inc()

    def for_model(self, name: str) -> ModelMetrics:
        return ModelMetrics(
            name,
            *(getattr(self, h).labels(model=name) for h in PIPELINE_HISTOGRAMS),
            queue_depth=self.queue_depth.labels(model=name),
            _images=self.images,
        )

    def set_model(
        self, *, model: str, variant: str, precision: str, provider: str, weights: str
    ) -> None:
        self._forget(self.model_info, model)  # a replacement may differ in any other label
        self.model_info.labels(
            model=model, variant=variant, precision=precision, provider=provider, weights=weights
        ).set(1)

    def forget_model(self, name: str) -> None:
        """Drop every series of a model that is no longer served, so that labels stay bounded."""
        for family in (*(getattr(self, h) for h in PIPELINE_HISTOGRAMS), self.queue_depth):
            self._forget(family, name)
        for family in (self.images, self.model_info, self.model_ready, self.model_loads):
            self._forget(family, name)

    @staticmethod
    def _forget(family: Counter | Gauge | Histogram, name: str) -> None:
        names = family._labelnames
        for values in list(family._metrics):
            if dict(zip(names, values, strict=True)).get("model") == name:
                family.remove(*values)

    def render(self, *, openmetrics_format: bool = False) -> bytes:
        """Prometheus text exposition format, or OpenMetrics: only the latter carries exemplars."""
        if openmetrics_format:
            return openmetrics.generate_latest(self.registry)
        return generate_latest(self.registry)


OPENMETRICS_CONTENT_TYPE = openmetrics.CONTENT_TYPE_LATEST


def exemplar(ids: tuple[str, str] | None) -> dict[str, str] | None:
    """The exemplar labels of an observation made under a traced span: Grafana follows the
    trace_id from a slow bucket to its trace."""
    return None if ids is None else {"trace_id": ids[0], "span_id": ids[1]}
