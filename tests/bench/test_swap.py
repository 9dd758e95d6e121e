"""The swap benchmark's pure parts: the server's log lines, the latency windows, the memory
increments and the summary (no service is started; nothing here is timed)."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from bench.closedloop import ClosedLoop, Sample
from bench.loadclient import TRANSPORT_ERROR
from bench.service import histogram_totals
from bench.swap import (
    completed_within,
    histogram_delta,
    increments,
    latency_summary,
    load_times,
    medians,
    overlapping,
    render_markdown,
    unloads,
)

# As the server logs them (server/observability/logs.py), with the messages of
# server/repository/loading.py, sync.py, opening.py and retire.py.
LOG = """\
2026-12-01 23:30:00,001 INFO swin_serve.server: model swin_t: warm-up done (batch sizes [1, 2, 4])
2026-12-01 23:30:00,002 INFO swin_serve.server: model swin_t_int8: ready in 4.17 s
2026-12-01 23:30:10,000 INFO swin_serve.server: model swin_t: new content in /tmp/r/swin_t.onnx; loading it beside the serving one
2026-12-01 23:30:13,210 INFO swin_serve.server: model swin_t: swapped in 3.21 s
2026-12-01 23:30:13,400 INFO swin_serve.server: model swin_t: old version unloaded (drained)
2026-12-01 23:30:30,000 INFO swin_serve.server: model swin_t_b: swapped in 9.99 s
2026-12-01 23:30:40,000 INFO swin_serve.server: model swin_t: swapped in 12.50 s
"""


def test_load_times_reads_one_models_swaps_in_order():
    assert load_times(LOG, "swin_t", "swapped") == [3.21, 12.5]
    assert load_times(LOG, "swin_t_int8", "ready") == [4.17]
    assert load_times(LOG, "swin_t", "ready") == []  # a start-up model logs no "ready in"


def test_load_times_does_not_take_a_longer_name_for_the_model():
    assert load_times(LOG, "swin_t_b", "swapped") == [9.99]
    assert 9.99 not in load_times(LOG, "swin_t", "swapped")


def test_unloads_counts_old_versions_gone():
    assert unloads(LOG, "swin_t") == 1
    assert unloads(LOG, "swin_t_b") == 0


SAMPLES = [
    Sample(0.0, 0.5, 200),  # before the window
    Sample(9.0, 9.8, 200),  # before, completed before SIGHUP at 10
    Sample(9.5, 10.5, 200),  # straddles SIGHUP: slowed by the swap, so it is in the swap window
    Sample(10.5, 13.0, 503),
    Sample(12.9, 14.2, 200),  # sent before the window's end (14), answered after
    Sample(14.1, 14.5, 200),  # after the window
]


def test_before_window_takes_only_requests_completed_inside_it():
    assert completed_within(SAMPLES, 5.0, 10.0) == [SAMPLES[1]]


def test_swap_window_takes_every_request_in_flight_during_it():
    assert overlapping(SAMPLES, 10.0, 14.0) == SAMPLES[2:5]


def test_latency_summary_counts_non_200_and_takes_max_as_the_longest():
    summary = latency_summary(SAMPLES[2:5], seconds=4.0)
    assert summary["requests"] == 3
    assert summary["non_200"] == 1
    assert summary["ok_per_s"] == 0.5  # two 200s in 4 s
    assert summary["p50_ms"] == pytest.approx(1300.0)
    assert summary["max_ms"] == pytest.approx(2500.0)
    assert summary["p50_ms"] <= summary["p99_ms"] <= summary["max_ms"]


def test_latency_summary_of_an_empty_window_has_no_percentiles():
    summary = latency_summary([], seconds=1.0)
    assert summary["requests"] == 0
    assert summary["p99_ms"] is None


def _load_seconds_text(*observations: float) -> str:
    registry = CollectorRegistry()
    h = Histogram("swin_model_load_seconds", "load", registry=registry)
    for x in observations:
        h.observe(x)
    return generate_latest(registry).decode()


def test_histogram_delta_is_the_mean_of_the_observations_in_between():
    before = histogram_totals(_load_seconds_text(5.0))
    after = histogram_totals(_load_seconds_text(5.0, 3.0))
    assert histogram_delta(before, after, "swin_model_load_seconds") == pytest.approx(3.0)
    assert histogram_delta(after, after, "swin_model_load_seconds") is None


def test_increments_are_each_steps_growth_over_the_one_before():
    table = increments([("fp32", 700.04), ("fp32 + fp32", 1010.0), ("+ int8", 1100.5)])
    assert [s["increment_mb"] for s in table] == [None, 310.0, 90.5]
    assert table[0] == {"repository": "fp32", "rss_mb": 700.0, "increment_mb": None}


def _round(switch, log_s, p99_during, max_during):
    def window(p99, mx):
        return {"p50_ms": 100.0, "p99_ms": p99, "max_ms": mx, "ok_per_s": 10.0, "non_200": 0}

    return {
        "round": 1,
        "from": "fp32",
        "to": "int8",
        "sighup_to_switch_s": switch,
        "server_log_s": log_s,
        "load_seconds_metric": log_s,
        "peak_rss_mb": 1200.0,
        "before": window(150.0, 160.0),
        "during": window(p99_during, max_during),
    }


def test_medians_over_rounds_skip_a_round_without_a_figure():
    rounds = [_round(3.0, 2.5, 900.0, 1000.0), _round(5.0, None, 300.0, 400.0)]
    rounds.append(_round(4.0, 3.5, 600.0, 2000.0))
    m = medians(rounds)
    assert m["sighup_to_switch_s"] == 4.0
    assert m["server_log_s"] == 3.0  # the median of 2.5 and 3.5
    assert m["during"]["p99_ms"] == 600.0
    assert m["during"]["max_ms"] == 1000.0


def test_markdown_names_the_cpu_and_gives_the_figures():
    rounds = [_round(3.0, 2.5, 900.0, 1000.0)]
    results = {
        "meta": {
            "started": "2026-12-02 10:00 UTC",
            "mode": "full",
            "machine": {
                "cpus": 2,
                "cpu_model": "Test CPU",
                "cpu_features": ["AVX2"],
                "loadavg_at_start": [0.5, 0.4, 0.3],
            },
            "config": {"before_s": 10.0},
        },
        "swap": {
            "model": "swin_t",
            "route": "/v1/models/swin_t/classify",
            "clients": 4,
            "body": "flower.jpg, 1 bytes",
            "rounds": rounds,
            "median_by_target": {"int8": medians(rounds)},
            "all_requests": {"requests": 50, "non_200": 0},
        },
        "memory": {
            "measured": "RSS",
            "steps": increments([("fp32", 700.0), ("fp32 + fp32", 1000.0), ("+ int8", 1100.0)]),
            "per_extra_fp32_mb": 300.0,
            "per_extra_int8_mb": 100.0,
        },
    }
    text = render_markdown(results)
    assert "2 CPUs: Test CPU; AVX2" in text
    assert "| 1 | fp32 -> int8 | 3.00 | 2.50 |" in text
    assert "| 100 / 150 / 160 | 100 / 900 / 1000 |" in text
    assert "| median of 1 | -> int8 | 3.00 |" in text
    assert "+300 MB" in text and "+100 MB" in text


class _Flaky(BaseHTTPRequestHandler):
    """200 to odd requests, 503 to even ones, on keep-alive connections; the fourth gets no answer."""

    protocol_version = "HTTP/1.1"
    count = 0

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).count += 1
        if type(self).count == 4:
            self.close_connection = True
            return
        body = b"{}"
        self.send_response(503 if type(self).count % 2 == 0 else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_closed_loop_records_each_answer_and_a_dropped_connection():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        loop = ClosedLoop(server.server_address[1], "/x", b"jpeg", clients=1, per_client=5)
        samples = loop.start().join()
    finally:
        server.shutdown()
        server.server_close()
    assert [s.status for s in samples] == [200, 503, 200, TRANSPORT_ERROR, 200]
    assert all(s.ended >= s.started for s in samples)
