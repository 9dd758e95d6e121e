"""Tracing switched on as an operator does it: ``swin-serve`` with only the standard OTEL_*
variables set, exporting over OTLP/HTTP to a sink in the test. The spans are read back off the
wire, so no tracer installed in-process (as tests/server/observability/test_tracing.py does) can stand in for
the start-up path that reads those variables."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from bench.span_sink import SpanSink
from swin_serve.server.v2 import messages
from tests.support.fakes import image_bytes
from tests.support.live_server import LiveServer, start_server
from tests.support.v2 import grpc_infer_image

SPAN_WAIT_S = 60.0  # the export interval is 0.1 s here: a minute is a busy machine, not a delay
RUN, QUEUE = "model run", "queue"


class KeepingSink(SpanSink):
    """bench's OTLP/HTTP sink, which only counts, keeping every span it receives too."""

    def __init__(self) -> None:
        super().__init__()
        self.kept: list[Span] = []

    def record(self, request: ExportTraceServiceRequest) -> int:
        with self._lock:
            self.kept.extend(
                span
                for resource_spans in request.resource_spans
                for scope_spans in resource_spans.scope_spans
                for span in scope_spans.spans
            )
        return super().record(request)

    def trace(self, trace_id: str) -> dict[str, list[Span]]:
        """The spans received so far of ``trace_id`` (hex), by name."""
        with self._lock:
            spans = [s for s in self.kept if s.trace_id.hex() == trace_id]
        by_name: dict[str, list[Span]] = {}
        for span in spans:
            by_name.setdefault(span.name, []).append(span)
        return by_name


@pytest.fixture(scope="module")
def sink() -> Iterator[KeepingSink]:
    with KeepingSink().running() as running:
        yield running


@pytest.fixture(scope="module")
def server(sink, tiny_model_path, tmp_path_factory) -> Iterator[LiveServer]:
    otel = {
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{sink.endpoint}/v1/traces",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    # Only these: a developer's own OTEL_* must not change what is tested, and start_server
    # passes none on.
    log_dir = tmp_path_factory.mktemp("tracing-live")
    with start_server(log_dir, model_path=tiny_model_path, env=otel) as server:
        yield server


def traceparent(trace_id: str, parent_id: str) -> str:
    return f"00-{trace_id}-{parent_id}-01"


def wait_for_trace(
    sink: KeepingSink, server: LiveServer, trace_id: str, names: set[str]
) -> dict[str, list[Span]]:
    """The spans of ``trace_id`` by name, once one of each of ``names`` has been exported."""
    deadline = time.monotonic() + SPAN_WAIT_S
    while not names <= (spans := sink.trace(trace_id)).keys():
        if time.monotonic() > deadline:
            pytest.fail(
                f"spans {sorted(names - spans.keys())} of trace {trace_id} not exported to the "
                f"OTLP sink within {SPAN_WAIT_S:.0f} s; all spans received, by name: "
                f"{sink.summary()['by_name']}\nserver log:\n{server.log()}"
            )
        time.sleep(0.05)
    return spans


def assert_one_run_served_the_request(spans: dict[str, list[Span]], request: Span) -> None:
    (run,) = spans[RUN]
    (queue,) = spans[QUEUE]
    # The run is the request's child, so that the sampler keeps it with it, and links to it.
    assert run.parent_span_id == request.span_id
    assert [link.span_id for link in run.links] == [request.span_id]
    assert [link.span_id for link in queue.links] == [run.span_id]
    assert queue.parent_span_id == request.span_id


def test_a_classify_request_reaches_the_collector_in_the_callers_trace(server, sink):
    trace_id, parent_id = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    answer = httpx.post(
        f"{server.base}/classify",
        files={"file": image_bytes()},
        headers={"traceparent": traceparent(trace_id, parent_id)},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    spans = wait_for_trace(sink, server, trace_id, {"POST /classify", RUN, QUEUE})
    (request,) = spans["POST /classify"]
    assert request.kind == Span.SPAN_KIND_SERVER
    assert request.parent_span_id.hex() == parent_id
    assert_one_run_served_the_request(spans, request)
    assert sink.summary()["services"] == ["swin-serve"]  # the default, with no OTEL_SERVICE_NAME


def test_a_grpc_model_infer_reaches_the_collector_in_the_callers_trace(server, sink, tiny_export):
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    image = image_bytes()
    grpc_infer_image(
        server.grpc_address,
        tiny_export.manifest.name,
        image,
        metadata=[("traceparent", traceparent(trace_id, parent_id))],
        timeout=60,
    )
    name = f"{messages.SERVICE}/ModelInfer"
    spans = wait_for_trace(sink, server, trace_id, {name, RUN, QUEUE})
    (call,) = spans[name]
    assert call.kind == Span.SPAN_KIND_SERVER
    assert call.parent_span_id.hex() == parent_id
    assert_one_run_served_the_request(spans, call)
