"""OpenTelemetry spans with an in-memory exporter: the tree of one request, a model run linked to
every request it served, statuses of refused requests, exemplars, gRPC, and tracing off."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys

import grpc
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind, StatusCode

from swin_serve.server.observability import tracing
from swin_serve.server.observability.logs import ACCESS_LOGGER
from swin_serve.server.v2 import messages
from tests.support import ROOT, checkout_env, eventually, free_port, until
from tests.support.fakes import default_model, image_bytes

pytestmark = pytest.mark.anyio

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


def by_name(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def children(exporter: InMemorySpanExporter, parent: ReadableSpan) -> list[str]:
    return sorted(
        s.name
        for s in exporter.get_finished_spans()
        if s.parent is not None and s.parent.span_id == parent.context.span_id
    )


async def test_a_request_is_one_server_span_continuing_the_callers_trace(make_app, serve, spans):
    async with serve(make_app()) as client:
        answer = await client.post(
            "/classify",
            files={"file": image_bytes()},
            headers={"traceparent": TRACEPARENT, "tracestate": "vendor=1"},
        )
    assert answer.status_code == 200
    (server,) = by_name(spans, "POST /classify")
    assert server.kind is SpanKind.SERVER
    assert format(server.context.trace_id, "032x") == TRACE_ID
    assert format(server.parent.span_id, "016x") == PARENT_ID and server.parent.is_remote
    assert server.context.trace_state.get("vendor") == "1"
    assert server.attributes["http.request.method"] == "POST"
    assert server.attributes["http.route"] == "/classify"
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["swin.model"] == "fake_swin_32"
    assert server.status.status_code is StatusCode.UNSET
    # The model run is a child too: it is sampled with the first request of its batch.
    assert children(spans, server) == [
        "decode image",
        "model run",
        "queue",
        "read body",
        "response",
    ]
    (queue,) = by_name(spans, "queue")
    (run,) = by_name(spans, "model run")
    assert [link.context.span_id for link in queue.links] == [run.context.span_id]
    assert queue.start_time < queue.end_time <= run.end_time


async def test_a_batched_run_is_one_span_linked_to_every_request_it_served(
    make_app, serve, spans, gated_engine
):
    n = 4
    engine, release = gated_engine  # the model is busy until release is set
    app = make_app(engine, max_batch_size=n, parallel_batches=1)
    lifecycle = app.state.service.lifecycle
    async with serve(app) as client:
        # One image first, to hold the single run slot; the next four then queue and batch.
        first = asyncio.create_task(client.post("/classify", files={"file": image_bytes()}))
        await eventually(lambda: engine.calls, "the first image to reach the model")
        rest = [
            asyncio.create_task(client.post("/classify", files={"file": image_bytes()}))
            for _ in range(n)
        ]
        await eventually(
            lambda: default_model(lifecycle).batcher.depth == n, f"{n} images queued behind it"
        )
        release.set()
        answers = await asyncio.gather(first, *rest)
    assert all(a.status_code == 200 for a in answers)
    runs = by_name(spans, "model run")
    batched = [r for r in runs if r.attributes["swin.batch_size"] == n]
    assert len(batched) == 1, [r.attributes["swin.batch_size"] for r in runs]
    run = batched[0]
    servers = {s.context.span_id for s in by_name(spans, "POST /classify")}
    linked = {link.context.span_id for link in run.links}
    assert len(linked) == n and linked <= servers
    # A child of one request, so that it is sampled with it; linked to each of them.
    assert run.parent is not None and run.parent.span_id in linked
    assert run.attributes["swin.model"] == "fake_swin_32"
    assert run.attributes["swin.provider"] == "FakeExecutionProvider"
    back = [
        q
        for q in by_name(spans, "queue")
        if run.context.span_id in {link.context.span_id for link in q.links}
    ]
    assert len(back) == n  # and each request's queue span links back to the run


@pytest.mark.parametrize(
    ("make_request", "status"),
    [
        (
            lambda c: c.post(
                "/classify", content=b"x" * 2_000_000, headers={"content-type": "image/png"}
            ),
            413,
        ),
        (lambda c: c.post("/v1/models/nope/classify", files={"file": image_bytes()}), 404),
        (lambda c: c.post("/classify", files={"file": b"not an image"}), 400),
    ],
    ids=["413", "404", "400"],
)
async def test_a_refused_request_ends_its_span_with_its_status(
    make_app, serve, spans, make_request, status
):
    async with serve(make_app()) as client:
        answer = await make_request(client)
    assert answer.status_code == status
    (server,) = [s for s in spans.get_finished_spans() if s.kind is SpanKind.SERVER]
    assert server.attributes["http.response.status_code"] == status
    assert server.status.status_code is StatusCode.UNSET  # a client's error, not the server's


async def test_an_overloaded_request_ends_its_span_as_an_error(
    make_app, serve, spans, gated_engine
):
    engine, release = gated_engine
    app = make_app(
        engine, max_batch_size=1, queue_capacity=1, max_images_per_request=1, parallel_batches=1
    )
    async with serve(app) as client:
        # One image on the held model and one queued; the other four are refused meanwhile.
        posts = [
            asyncio.create_task(client.post("/classify", files={"file": image_bytes()}))
            for _ in range(6)
        ]
        await until(lambda: sum(p.done() for p in posts) == 4, timeout_s=30)
        release.set()
        answers = await asyncio.gather(*posts)
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200, 200, 503, 503, 503, 503]
    servers = [s for s in spans.get_finished_spans() if s.kind is SpanKind.SERVER]
    refused = [s for s in servers if s.attributes["http.response.status_code"] == 503]
    assert len(refused) == statuses.count(503)
    assert all(s.status.status_code is StatusCode.ERROR for s in refused)


async def test_latency_histograms_carry_trace_exemplars_for_openmetrics(make_app, serve, spans):
    async with serve(make_app()) as client:
        await client.post(
            "/classify", files={"file": image_bytes()}, headers={"traceparent": TRACEPARENT}
        )
        openmetrics = await client.get(
            "/metrics", headers={"accept": "application/openmetrics-text"}
        )
        plain = await client.get("/metrics")
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    (server,) = by_name(spans, "POST /classify")
    span_id = format(server.context.span_id, "016x")
    exemplar = f'# {{span_id="{span_id}",trace_id="{TRACE_ID}"}}'
    assert any(
        line.startswith("swin_request_duration_seconds_bucket") and exemplar in line
        for line in openmetrics.text.splitlines()
    )
    assert "trace_id" not in plain.text  # the classic format has no exemplars


async def test_grpc_calls_are_server_spans_continuing_the_callers_trace(make_app, serve, spans):
    port = free_port()
    async with (
        serve(make_app(grpc_port=port)),
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        ready = channel.unary_unary(
            f"/{messages.SERVICE}/ServerReady",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=messages.response_type("ServerReady").FromString,
        )
        await ready(messages.request_type("ServerReady")(), metadata=[("traceparent", TRACEPARENT)])
    (server,) = by_name(spans, f"{messages.SERVICE}/ServerReady")
    assert server.kind is SpanKind.SERVER
    assert format(server.context.trace_id, "032x") == TRACE_ID
    assert server.attributes["rpc.system"] == "grpc"
    assert server.attributes["rpc.method"] == "ServerReady"
    assert server.attributes["rpc.grpc.status_code"] == 0


async def test_with_tracing_off_nothing_is_recorded(make_app, serve):
    assert tracing.tracer() is None
    async with serve(make_app()) as client:
        answer = await client.post(
            "/classify", files={"file": image_bytes()}, headers={"traceparent": TRACEPARENT}
        )
        metrics = await client.get("/metrics", headers={"accept": "application/openmetrics-text"})
    assert answer.status_code == 200
    assert "trace_id" not in metrics.text


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, False),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": ""}, False),
    ],
)
def test_the_standard_variables_turn_tracing_on(environ, on):
    assert tracing.wanted(environ) is on


def test_configure_builds_the_exporter_the_protocol_names(monkeypatch):
    monkeypatch.setenv("OTEL_SERVICE_NAME", "swin-eu-1")
    for protocol, module in [
        ("grpc", "opentelemetry.exporter.otlp.proto.grpc.trace_exporter"),
        ("http/protobuf", "opentelemetry.exporter.otlp.proto.http.trace_exporter"),
    ]:
        environ = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
            "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        }
        try:
            assert tracing.configure(environ)
            provider = tracing._provider
            assert tracing.exporter_names == ["OTLPSpanExporter"]
            (exporter,) = tracing._exporters(environ)
            assert type(exporter).__module__ == module
            assert provider.resource.attributes["service.name"] == "swin-eu-1"
        finally:
            tracing.shutdown(timeout_s=0.5)
    assert tracing.tracer() is None


async def test_the_access_log_line_carries_the_ids_of_the_requests_span(
    make_app, serve, spans, caplog
):
    with caplog.at_level(logging.INFO, logger=ACCESS_LOGGER):
        async with serve(make_app()) as client:
            await client.post("/classify", files={"file": image_bytes()})
    (record,) = [r for r in caplog.records if r.name == ACCESS_LOGGER]
    (server,) = by_name(spans, "POST /classify")
    assert record.trace_id == format(server.context.trace_id, "032x")
    assert record.span_id == format(server.context.span_id, "016x")
    assert record.getMessage().startswith("POST /classify 200 ")


@pytest.mark.parametrize(
    ("environ", "service_name"),
    [
        ({}, "swin-serve"),
        ({"OTEL_SERVICE_NAME": "swin-eu-1"}, "swin-eu-1"),
        ({"OTEL_RESOURCE_ATTRIBUTES": "service.name=from-attributes"}, "from-attributes"),
    ],
)
def test_the_service_name_defaults_to_swin_serve(monkeypatch, environ, service_name):
    for name in ("OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    # An empty exporter variable is unset: the endpoint alone turns OTLP on.
    settings = {"OTEL_TRACES_EXPORTER": "", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}
    try:
        assert tracing.configure(settings)
        provider = tracing._provider
        assert provider.resource.attributes["service.name"] == service_name
        assert tracing.exporter_names == ["OTLPSpanExporter"]
    finally:
        tracing.shutdown(timeout_s=0.5)


async def test_a_caller_that_did_not_sample_gets_no_spans_and_no_orphan_run(make_app, serve, spans):
    unsampled = f"00-{TRACE_ID}-{PARENT_ID}-00"
    async with serve(make_app()) as client:
        answer = await client.post(
            "/classify", files={"file": image_bytes()}, headers={"traceparent": unsampled}
        )
    assert answer.status_code == 200
    assert spans.get_finished_spans() == ()  # the run too: it would link to nothing kept


async def test_with_a_ratio_sampler_every_kept_run_and_link_leads_to_a_kept_request(
    make_app, serve
):
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.5)))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    try:
        async with serve(make_app(max_batch_size=1)) as client:
            for _ in range(24):
                await client.post("/classify", files={"file": image_bytes()})
    finally:
        tracing.uninstall()
    kept = exporter.get_finished_spans()
    servers = {s.context.span_id for s in kept if s.kind is SpanKind.SERVER}
    runs = {s.context.span_id for s in kept if s.name == "model run"}
    assert 0 < len(servers) < 24 and len(runs) == len(servers)
    for span in kept:
        if span.name == "model run":
            assert {link.context.span_id for link in span.links} <= servers
        if span.name == "queue":
            assert {link.context.span_id for link in span.links} <= runs


async def test_a_method_http_does_not_define_never_names_a_span(make_app, serve, spans):
    async with serve(make_app()) as client:
        await client.request("SECRET-TOKEN", "/readyz")
    (server,) = [s for s in spans.get_finished_spans() if s.kind is SpanKind.SERVER]
    assert server.name == "HTTP" and server.attributes["http.request.method"] == "_OTHER"


def test_a_propagator_the_sdk_lacks_falls_back_to_w3c_rather_than_crash():
    code = (
        "from opentelemetry.sdk.trace import TracerProvider; from swin_serve.server.observability import tracing; "
        "tracing.install(TracerProvider()); print(type(tracing._propagator).__name__)"
    )
    env = {**checkout_env(), "OTEL_PROPAGATORS": "b3multi"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "CompositePropagator"


async def test_a_request_whose_deadline_passed_in_the_queue_still_shows_its_wait(
    make_app, serve, spans, gated_engine
):
    engine, release = gated_engine  # the model is busy until release is set
    async with serve(make_app(engine, max_batch_size=1, parallel_batches=1)) as client:
        first = asyncio.create_task(client.post("/classify", files={"file": image_bytes()}))
        await eventually(lambda: engine.calls, "the first image to reach the model")
        # The only run slot is held, so this one's 100 ms pass in the queue.
        late = await client.post(
            "/classify", files={"file": image_bytes()}, headers={"X-Request-Timeout-Ms": "100"}
        )
        release.set()
        await first
    assert late.status_code == 503
    waits = [q for q in by_name(spans, "queue") if "error.type" in q.attributes]
    assert [q.attributes["error.type"] for q in waits] == ["DeadlineExceeded"]
