"""bench/tracing_overhead.py and bench/span_sink.py: the collector reads what the OpenTelemetry SDK exports, and its summary
and checks say what the run showed (nothing here starts a server or times anything)."""

from __future__ import annotations

import gzip
import json
import os
import urllib.error
import urllib.request

import pytest
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import Link, SpanKind
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.openmetrics.exposition import generate_latest

from bench import cli, tracing_overhead
from bench import common as bench_common
from bench.run_record import Run
from bench.span_sink import SpanSink, decode_export, without_inherited_otel
from bench.tracing_overhead import (
    CLASSIFY_SPAN,
    OFF,
    ON,
    RUN_SPAN,
    problems,
    read_exposition,
    render_markdown,
    round_order,
    summarise,
    today_reference,
    tracing_env,
)
from swin_serve.server.observability import tracing as service_tracing
from swin_serve.server.observability import tracing as tracing_module


def export_request(service: str = "swin-serve") -> ExportTraceServiceRequest:
    """Two requests' server spans and the one model run that served both, linked to them."""

    def span(name: str, kind: int, span_id: int, links: int = 0) -> Span:
        return Span(
            trace_id=bytes(15) + bytes([span_id]),
            span_id=bytes(7) + bytes([span_id]),
            name=name,
            kind=kind,
            links=[Span.Link(trace_id=bytes(16), span_id=bytes(8)) for _ in range(links)],
        )

    spans = [
        span(CLASSIFY_SPAN, Span.SPAN_KIND_SERVER, 1),
        span(CLASSIFY_SPAN, Span.SPAN_KIND_SERVER, 2),
        span(RUN_SPAN, Span.SPAN_KIND_INTERNAL, 3, links=2),
    ]
    resource = ResourceSpans(scope_spans=[ScopeSpans(spans=spans)])
    resource.resource.attributes.append(
        KeyValue(key="service.name", value=AnyValue(string_value=service))
    )
    return ExportTraceServiceRequest(resource_spans=[resource])


# ---- the collector -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoding", "encode"),
    [("", bytes), ("identity", bytes), ("gzip", gzip.compress), ("GZIP ", gzip.compress)],
)
def test_an_export_is_read_plain_or_compressed(encoding, encode):
    request = export_request()
    assert decode_export(encode(request.SerializeToString()), encoding) == request


@pytest.mark.parametrize(
    ("body", "encoding"),
    [(b"\xff\xff\xff", ""), (b"not gzip", "gzip"), (b"x", "br")],
)
def test_what_is_not_an_export_is_a_value_error(body, encoding):
    with pytest.raises(ValueError):
        decode_export(body, encoding)


def test_the_sink_counts_spans_by_name_server_spans_links_and_services():
    sink = SpanSink()
    assert sink.record(export_request()) == 3
    assert sink.record(export_request("other")) == 3
    summary = sink.summary()
    assert summary["spans"] == 6
    assert summary["by_name"] == {CLASSIFY_SPAN: 4, RUN_SPAN: 2}
    assert (summary["server_spans"], summary["links"], summary["exports"]) == (4, 4, 2)
    assert summary["services"] == ["other", "swin-serve"]


@pytest.mark.parametrize("compression", [Compression.NoCompression, Compression.Gzip])
def test_the_sdks_otlp_exporter_delivers_to_the_sink(compression):
    """The SDK's own OTLP/HTTP exporter, as the on server uses it: every span arrives, with its
    links, and the sink's answer counts as a success (else the SDK would retry and log)."""
    sink = SpanSink()
    with sink.running():
        exporter = OTLPSpanExporter(
            endpoint=f"{sink.endpoint}/v1/traces", compression=compression, timeout=5
        )
        provider = TracerProvider(resource=Resource.create({"service.name": "swin-serve"}))
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        tracer = provider.get_tracer("test")
        contexts = []
        for _ in range(3):
            with tracer.start_as_current_span(CLASSIFY_SPAN, kind=SpanKind.SERVER) as span:
                contexts.append(span.get_span_context())
        tracer.start_span(RUN_SPAN, links=[Link(c) for c in contexts]).end()
        provider.shutdown()
    summary = sink.summary()
    assert summary["by_name"] == {CLASSIFY_SPAN: 3, RUN_SPAN: 1}
    assert (summary["server_spans"], summary["links"]) == (3, 3)
    assert summary["services"] == ["swin-serve"]
    assert summary["refused_exports"] == 0


def test_the_sink_answers_as_a_collector_and_refuses_what_it_cannot_read():
    sink = SpanSink()
    with sink.running():

        def post(path: str, body: bytes) -> tuple[int, bytes]:
            request = urllib.request.Request(
                f"{sink.endpoint}{path}",
                data=body,
                headers={"Content-Type": "application/x-protobuf"},
            )
            try:
                with urllib.request.urlopen(request, timeout=5) as r:
                    return r.status, r.read()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read()

        status, body = post("/v1/traces", export_request().SerializeToString())
        assert status == 200
        assert ExportTraceServiceResponse.FromString(body) == ExportTraceServiceResponse()
        assert post("/v1/traces", b"\xff\xff\xff")[0] == 400
        assert post("/v1/metrics", export_request().SerializeToString())[0] == 404
    assert sink.summary()["spans"] == 3
    assert sink.summary()["refused_exports"] == 1


def test_the_on_servers_variables_turn_the_services_tracing_on_and_sample_everything():
    env = tracing_env("http://127.0.0.1:4318")
    assert service_tracing.wanted(env)
    assert env["OTEL_TRACES_SAMPLER"] == "always_on"
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://127.0.0.1:4318"  # the SDK adds /v1/traces


def test_the_shells_otel_variables_reach_neither_server_and_come_back_after(monkeypatch):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "mine")
    with without_inherited_otel() as dropped:
        assert dropped == ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SERVICE_NAME"]
        assert not [k for k in os.environ if k.startswith("OTEL_")]
    assert os.environ["OTEL_SERVICE_NAME"] == "mine"


def test_trace_exemplars_and_answered_classify_requests_are_read_from_openmetrics():
    registry = CollectorRegistry()
    latency = Histogram("latency_seconds", "x", buckets=(0.1, 1.0), registry=registry)
    latency.observe(0.05, {"trace_id": "0af7651916cd43dd8448eb211c80319c", "span_id": "b7ad"})
    latency.observe(0.5)  # untraced: no exemplar
    latency.observe(0.7, {"other": "x"})
    requests = Counter("swin_requests", "x", ["endpoint", "status"], registry=registry)
    requests.labels(endpoint="/classify", status="200").inc(40)
    requests.labels(endpoint="/classify", status="503").inc(2)
    requests.labels(endpoint="/metrics", status="200").inc(5)
    text = generate_latest(registry).decode()
    assert read_exposition(text) == {"exemplars": 1, "classify": 42}


# ---- the summary and its checks ------------------------------------------------------------------


def level(rps: float, p99: float = 2000.0, non_200: int = 0) -> dict:
    return {
        "throughput_rps": rps,
        "p50_ms": 1500.0,
        "p99_ms": p99,
        "server_cpu_s_per_request": 0.2,
        "mean_batch_size": 3.9,
        "error_count": 0,
        "non_200": non_200,
    }


def rounds_of(*pairs: tuple[float, float]) -> list[dict]:
    return [
        {
            "round": i + 1,
            "order": list(round_order(i)),
            "runs": {OFF: level(off), ON: level(on)},
            "ratio": round(on / off, 4),
        }
        for i, (off, on) in enumerate(pairs)
    ]


def test_rounds_alternate_which_mode_goes_first():
    assert [round_order(i) for i in range(3)] == [(OFF, ON), (ON, OFF), (OFF, ON)]


def test_the_overhead_is_the_median_of_per_round_ratios_not_the_ratio_of_medians():
    # Medians 10 (off) and 9.9 (on): 0.99; the rounds' own ratios say 0.98.
    result = summarise(rounds_of((10.0, 9.8), (12.0, 11.76), (8.0, 9.9)))
    assert result["modes"][OFF]["throughput_rps"] == 10.0
    assert result["modes"][ON]["throughput_rps"] == 9.9
    assert result["ratio"] == 0.98
    assert result["overhead_pct"] == 2.0
    assert result["within_budget"] is True
    assert result["unclean_runs"] == 0


def test_more_than_3_percent_is_over_budget_and_a_non_200_is_unclean():
    done = rounds_of((10.0, 9.6), (10.0, 9.65))
    done[0]["runs"][ON]["non_200"] = 1
    result = summarise(done)
    assert result["ratio"] == 0.9625
    assert result["within_budget"] is False
    assert result["unclean_runs"] == 1


def run_result(**changes) -> dict:
    sink = SpanSink()
    for _ in range(20):
        sink.record(export_request())
    result = {
        "connections": 16,
        **summarise(rounds_of((10.0, 9.9), (10.0, 9.8))),
        "rounds": rounds_of((10.0, 9.9), (10.0, 9.8)),
        "sink": sink.summary(),
        "classify_answered_on": 40,
        "classify_coverage": 1.0,
        "exemplars": {OFF: 0, ON: 12},
    }
    return {**result, **changes}


def test_a_run_where_tracing_ran_only_where_asked_has_no_problem():
    assert problems(run_result()) == []


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"sink": SpanSink().summary()}, "no span"),
        ({"classify_coverage": 0.8}, "spans per"),
        ({"classify_coverage": 1.2}, "spans per"),
        ({"classify_coverage": None}, "spans per"),
        ({"exemplars": {OFF: 3, ON: 12}}, "off server"),
        ({"exemplars": {OFF: 0, ON: 0}}, "on server's histograms"),
        ({"unclean_runs": 2}, "non-200"),
    ],
)
def test_a_run_that_does_not_show_tracing_on_and_off_is_invalid(changes, says):
    found = problems(run_result(**changes))
    assert any(says in p for p in found), found


def results_doc(run: dict, today=None) -> dict:
    machine = {"cpus": 2, "cpu_model": "Xeon", "cpu_features": ["AVX2"], "loadavg_at_start": [1]}
    return {
        "meta": {
            "started": "2026-12-02 10:00 UTC",
            "mode": "full",
            "machine": machine,
            "config": {"duration_s": 15.0},
            "on_env": tracing_env("http://127.0.0.1:1"),
        },
        "today": today,
        "tracing": {**run, "problems": problems(run)},
    }


def test_the_report_gives_the_ratio_the_verdict_and_the_spans():
    today = {"started": "2026-12-01 22:05 UTC", "throughput_rps": 10.96, "p99_ms": 2003.0}
    text = render_markdown(results_doc(run_result(), today))
    assert "**On / off throughput: 0.9850**" in text and "**PASS**" in text
    assert "`OTEL_TRACES_SAMPLER=always_on`" in text
    assert "10.96 req/s" in text
    assert f"40 {CLASSIFY_SPAN!r}" in text and "20 'model run'" in text
    assert "INVALID" not in text
    invalid = render_markdown(results_doc(run_result(exemplars={OFF: 1, ON: 1})))
    assert "**INVALID**" in invalid and "no `make bench` results" in invalid


def test_todays_figure_comes_only_from_a_run_on_a_machine_like_this_one(tmp_path):
    machine = {"cpu_model": "Xeon", "cpus": 2, "cpu_features": ["AVX2"]}
    path = tmp_path / "results.json"
    level16 = {"throughput_rps": 11.0, "p99_ms": 2000.0}
    doc = {
        "meta": {"started": "then", "machine": machine},
        "service": {"servers": {"service": {"levels": {"16": level16}}}},
    }
    path.write_text(json.dumps(doc))
    assert today_reference(path, machine) == {"started": "then", **level16}
    assert today_reference(path, {**machine, "cpus": 4}) is None
    assert today_reference(tmp_path / "missing.json", machine) is None


def test_python_m_bench_tracing_runs_the_tracing_benchmark(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr(bench_common, "plan_cpus", lambda: ([0], [1], "pinned"))
    monkeypatch.setattr(tracing_overhead, "main", lambda run, **kw: seen.update(run=run, **kw) or 0)
    argv = ["tracing", "--quick", "--rounds", "3", "--out", str(tmp_path)]
    assert cli.main([*argv, "--service-env", "SWIN_MAX_BATCH_SIZE=8"]) == 0
    assert seen == {
        "run": Run(tmp_path, quick=True, rounds=3, server_cpus=[0], loadgen_cpus=[1]),
        "env": {"SWIN_MAX_BATCH_SIZE": "8"},
    }


def test_span_cost_measures_the_spans_of_a_request_and_nothing_while_off():
    from bench import span_cost

    on = span_cost.cpu_per_request_us(40, traced=True, batch_size=4)
    off = span_cost.cpu_per_request_us(40, traced=False, batch_size=4)
    # server, read body, decode image, queue, response per request; a run per 4 requests
    assert on["spans"] == 40 * 5 + 10 and on["otlp_bytes_per_request"] > 0
    assert off["spans"] == 0 and off["otlp_bytes_per_request"] == 0
    assert tracing_module.tracer() is None  # left as found


def test_span_cost_lines_give_the_share_of_a_requests_cpu():
    cost = {
        "on": {"cpu_us_per_request": 500.0, "requests": 10, "otlp_bytes_per_request": 800.0},
        "off": {"cpu_us_per_request": 5.0},
    }
    (_, line) = tracing_overhead.span_cost_lines(cost, 0.2)
    assert "on 500 µs, off 5.0 µs" in line and "0.25 % of the 200 ms" in line
