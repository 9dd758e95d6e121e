"""The CPU one request's tracing costs, measured alone: the spans of a ``/classify`` request made
through ``swin_serve.server.observability.tracing`` the way the server makes them, batched and OTLP-encoded by the SDK.

A throughput ratio between two servers on a shared machine cannot resolve a cost of a few
percent (its rounds differ by more than that); CPU time per request, measured in a loop, can. The
exporter here encodes each batch as the OTLP exporter does, then drops it: the HTTP post to a
collector is left out, as is the collector's own work.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from swin_serve.server.observability import tracing

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
ATTRIBUTES = {"http.request.method": "POST", "http.route": "/classify", "url.path": "/classify"}


class EncodingExporter(SpanExporter):
    """Encodes spans as OTLP protobuf, as the OTLP exporters do before sending, then drops them."""

    def __init__(self) -> None:
        self.spans = 0
        self.bytes = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.bytes += len(encode_spans(spans).SerializeToString())
        self.spans += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def one_request(batch_size: int, pending: list[Any], last_run: list[Any]) -> None:
    """The spans, attributes and links of one request, in the server's order; a run span for
    every ``batch_size`` requests (``pending`` holds their contexts), linked to each of them."""
    with tracing.server_span("POST /classify", {"traceparent": TRACEPARENT}, ATTRIBUTES) as span:
        with tracing.step("read body"):
            pass
        with tracing.step("decode image", **{"swin.model": "swin_t"}):
            pass
        enqueued = time.monotonic()
        pending.append(tracing.current_context())
        if len(pending) == batch_size:
            run = tracing.start_run(
                pending, {"swin.batch_size": batch_size, "swin.model": "swin_t"}
            )
            tracing.end_run(run)
            last_run[:] = [run.get_span_context()] if run is not None else []
            pending.clear()
        attributes = {"swin.images": 1, "swin.batch_size": batch_size, "swin.queue_wait_ms": 1.0}
        tracing.annotate(**attributes)
        tracing.record_queue_wait(enqueued, time.monotonic(), last_run, **attributes)
        with tracing.step("response"):
            pass
        tracing.set_http_status(span, 200)
        tracing.trace_ids()  # the exemplar and the access log line


def cpu_per_request_us(requests: int, *, traced: bool, batch_size: int = 4) -> dict[str, Any]:
    """Process CPU time (every thread: the SDK's exporter thread too) per request, in µs."""
    exporter = EncodingExporter()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=65536))
    if traced:
        tracing.install(provider)
    try:
        pending: list[Any] = []
        last_run: list[Any] = []
        started = time.process_time()
        for _ in range(requests):
            one_request(batch_size, pending, last_run)
        provider.force_flush()
        took = time.process_time() - started
    finally:
        tracing.uninstall()
        provider.shutdown()
    return {
        "traced": traced,
        "requests": requests,
        "cpu_us_per_request": round(took / requests * 1e6, 2),
        "spans": exporter.spans,
        "otlp_bytes_per_request": round(exporter.bytes / requests, 1),
    }


def measure(requests: int = 5000) -> dict[str, Any]:
    """Tracing off and on, the better of three tries each (the least disturbed by the machine)."""
    off = min((cpu_per_request_us(requests, traced=False) for _ in range(3)), key=_cost)
    on = min((cpu_per_request_us(requests, traced=True) for _ in range(3)), key=_cost)
    return {"off": off, "on": on}


def _cost(result: dict[str, Any]) -> float:
    return result["cpu_us_per_request"]
