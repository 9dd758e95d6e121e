"""OpenTelemetry traces: a span per request, its steps, and each model run linked to the requests
it served. Off unless the standard OTEL_* variables turn it on (see ``configure``).

While off, ``tracer()`` is None and every helper here returns before touching OpenTelemetry, so
tracing costs a None check. While on, spans go through the official SDK's batch processor and
OTLP exporter; nothing here formats or sends spans itself.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, Status, StatusCode

log = logging.getLogger(__name__)

INSTRUMENTATION = "swin-serve"
_tracer: trace.Tracer | None = None
_provider: Any = None  # the SDK's TracerProvider, flushed at exit
_propagator: Any = None  # reads a caller's trace context (OTEL_PROPAGATORS)
exporter_names: list[str] = []  # what configure() set up, for the log and for tests


def tracer() -> trace.Tracer | None:
    """The tracer, or None while tracing is off."""
    return _tracer


def install(provider: Any) -> None:
    """Trace through ``provider`` (an SDK TracerProvider); tests give one with an in-memory
    exporter. The global provider is left alone: OpenTelemetry lets it be set once."""
    global _tracer, _provider, _propagator
    _propagator = _propagators()
    _provider = provider
    _tracer = provider.get_tracer(INSTRUMENTATION)


def uninstall() -> None:
    global _tracer, _provider
    _tracer = _provider = None


def _propagators() -> Any:
    """OTEL_PROPAGATORS' propagators; W3C tracecontext and baggage if one cannot be loaded (the
    SDK raises at import for a name it lacks, such as b3 without its package)."""
    try:
        from opentelemetry import propagate
    except ValueError as exc:
        from opentelemetry.baggage.propagation import W3CBaggagePropagator
        from opentelemetry.propagators.composite import CompositePropagator
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        log.warning("OTEL_PROPAGATORS: %s; using tracecontext,baggage", exc)
        return CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])
    return propagate.get_global_textmap()


def wanted(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the standard variables ask for traces: an exporter other than none, or an OTLP
    endpoint; OTEL_SDK_DISABLED=true wins over both."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return bool(
        environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    )


def configure(environ: Mapping[str, str] = os.environ) -> bool:
    """Turn tracing on if the OTEL_* variables ask for it; True if on. The SDK itself reads the
    rest: OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER(_ARG), the
    exporter's endpoint, headers, timeout and compression, and OTEL_BSP_* for the batching."""
    if not wanted(environ):
        return False
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create()  # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: INSTRUMENTATION}))
    exporters = _exporters(environ)
    if not exporters:  # spans made at full cost and sent nowhere: better off
        log.warning("tracing off: OTEL_TRACES_EXPORTER names no supported exporter")
        return False
    provider = TracerProvider(resource=resource)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    install(provider)
    exporter_names[:] = [type(e).__name__ for e in exporters]
    log.info(
        "tracing on: %s (sampler %s)",
        ", ".join(exporter_names),
        provider.sampler.get_description(),
    )
    return True


def _exporters(environ: Mapping[str, str]) -> list[Any]:
    """OTEL_TRACES_EXPORTER's exporters (default otlp), each as the spec names them."""
    chosen = environ.get("OTEL_TRACES_EXPORTER") or "otlp"  # empty is unset, as the spec says
    names = [n.strip().lower() for n in chosen.split(",")]
    exporters = []
    for name in filter(None, names):
        if name == "none":
            continue
        if name == "otlp":
            exporters.append(_otlp_exporter(environ))
        elif name == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            exporters.append(ConsoleSpanExporter())
        else:
            log.warning("OTEL_TRACES_EXPORTER=%s is not supported (otlp, console): ignored", name)
    return exporters


def _otlp_exporter(environ: Mapping[str, str]) -> Any:
    """OTLP over HTTP/protobuf (the spec's default) or gRPC, as OTEL_EXPORTER_OTLP(_TRACES)_PROTOCOL says."""
    protocol = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        if protocol != "http/protobuf":
            log.warning("OTLP protocol %r is not supported: using http/protobuf", protocol)
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    return OTLPSpanExporter()


def shutdown(timeout_s: float = 2.0) -> None:
    """Send what is still buffered, for at most ``timeout_s``: an unreachable collector must not
    hold the exit past the orchestrator's grace period (the exporter would retry for 10 s)."""
    provider = _provider
    if provider is None:
        return
    uninstall()
    sender = threading.Thread(target=provider.shutdown, name="otel-shutdown", daemon=True)
    sender.start()
    sender.join(timeout_s)
    if sender.is_alive():
        log.warning("tracing: spans still unsent after %.0f s at exit; dropped", timeout_s)


# -- spans -------------------------------------------------------------------------------------


def incoming(carrier: Mapping[str, str]) -> otel_context.Context:
    """The caller's context from its W3C ``traceparent``/``tracestate`` (OTEL_PROPAGATORS)."""
    return _propagator.extract(carrier) if _propagator is not None else otel_context.Context()


@contextlib.contextmanager
def server_span(
    name: str, carrier: Mapping[str, str], attributes: dict[str, Any]
) -> Iterator[Span | None]:
    """The span of one request (SERVER kind), current for the code it wraps; None while off."""
    active = _tracer
    if active is None:
        yield None
        return
    span = active.start_span(
        name, context=incoming(carrier), kind=SpanKind.SERVER, attributes=attributes
    )
    with trace.use_span(
        span, end_on_exit=True, record_exception=False, set_status_on_exception=False
    ):
        yield span


@contextlib.contextmanager
def step(name: str, **attributes: Any) -> Iterator[Span | None]:
    """A child span of the current one, for one step of a request; None while off."""
    active = _tracer
    if active is None:
        yield None
        return
    # Not an exception's message or trace: a decode error's text comes from the client's bytes.
    with active.start_as_current_span(
        name, attributes=attributes, record_exception=False, set_status_on_exception=False
    ) as span:
        yield span


def annotate(**attributes: Any) -> None:
    """Add ``attributes`` to the current span (the request's), while tracing."""
    if _tracer is not None:
        trace.get_current_span().set_attributes(attributes)


def current_context() -> SpanContext | None:
    """The current span's context, to link a model run to it; None while off or unsampled."""
    if _tracer is None:
        return None
    context = trace.get_current_span().get_span_context()
    return context if context.is_valid else None


def start_run(links: list[SpanContext], attributes: dict[str, Any]) -> Span | None:
    """The span of one model run, linked to the span of every sampled request with an image in
    it; None when none of them is sampled. It is a child of the first of them, so that the
    sampler decides it with that request (a root would be sampled on its own, and its links
    would point at traces that were never kept)."""
    active = _tracer
    if active is None:
        return None
    sampled = {(c.trace_id, c.span_id): c for c in links if c.trace_flags.sampled}
    if not sampled:
        return None
    unique = list(sampled.values())
    parent = trace.set_span_in_context(trace.NonRecordingSpan(unique[0]))
    return active.start_span(
        "model run",
        context=parent,
        kind=SpanKind.INTERNAL,
        links=[Link(c) for c in unique],
        attributes=attributes,
    )


def end_run(span: Span | None, error: str | None = None) -> None:
    if span is None:
        return
    if error is not None:
        span.set_status(Status(StatusCode.ERROR, error))
    span.end()


def context_ids(context: SpanContext | None) -> tuple[str, str] | None:
    """``context``'s trace and span ids in hex, if it is a sampled span's."""
    if context is None or not context.is_valid or not context.trace_flags.sampled:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


def record_queue_wait(
    enqueued: float, started: float, runs: list[SpanContext], **attributes: Any
) -> None:
    """A span for the time a request's images waited for their batches (``enqueued`` and
    ``started`` are time.monotonic()), after the fact, linked to the runs that served them: the
    other direction of the run span's links."""
    active = _tracer
    if active is None:
        return
    to_epoch = time.time_ns() - time.monotonic_ns()
    span = active.start_span(
        "queue",
        start_time=int(enqueued * 1e9) + to_epoch,
        links=[Link(c) for c in {(c.trace_id, c.span_id): c for c in runs}.values()],
        attributes=attributes,
    )
    span.end(end_time=int(started * 1e9) + to_epoch)


def set_http_status(span: Span | None, status: int) -> None:
    """``http.response.status_code``; a server span is an error for 5xx only (4xx is the
    client's, per the semantic conventions)."""
    if span is None:
        return
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        span.set_status(Status(StatusCode.ERROR))


def set_rpc_status(span: Span | None, code: int, error: bool) -> None:
    """``rpc.grpc.status_code``; ``error`` for the codes the conventions count as a server's."""
    if span is None:
        return
    span.set_attribute("rpc.grpc.status_code", code)
    if error:
        span.set_status(Status(StatusCode.ERROR))


def trace_ids() -> tuple[str, str] | None:
    """The current span's trace and span ids in hex, if it is a sampled span's: for exemplars,
    which must lead to a trace that was kept."""
    if _tracer is None:
        return None
    return context_ids(trace.get_current_span().get_span_context())


def log_ids() -> tuple[str, str] | None:
    """The current span's trace and span ids in hex, sampled or not: a log line's ids still join
    it to the caller's logs, and to its trace wherever the caller's sampler kept it."""
    if _tracer is None:
        return None
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")
