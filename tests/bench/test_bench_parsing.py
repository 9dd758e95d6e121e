"""The benchmark's parsing and report logic (nothing here is timed)."""

from __future__ import annotations

import json
import os
import sys

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from bench import cli
from bench.common import ROOT, interpolate_log2, percentile, write_json
from bench.loadgen import (
    MARKER,
    LoadGenError,
    lua_script,
    parse_wrk_output,
    unexpected_answers,
)
from bench.profile import (
    SERVER_BUCKETS,
    bucket_of,
    package_path,
    summarise_folded,
    summarise_ort_trace,
)
from bench.report import plot_names, render_markdown
from bench.server_process import Server
from bench.service import histogram_means, histogram_totals
from bench.soak import Tally, summarise
from bench.suite import parse_also, parse_env
from bench.targets import compute_targets

WRK_STDOUT = f"""Running 5s test @ http://127.0.0.1:8000/classify
  1 threads and 16 connections
{MARKER}{{"requests":100,"duration_us":5000000,"bytes":1000,"errors_connect":0,"errors_read":1,"errors_write":0,"errors_status":4,"errors_timeout":2,"lat_mean_us":12345.6,"lat_max_us":90000,"lat_p50_us":10000,"lat_p90_us":20000,"lat_p95_us":30000,"lat_p99_us":80000}}
"""


def test_wrk_output_gives_throughput_of_successful_requests_and_ms_latencies():
    r = parse_wrk_output(WRK_STDOUT)
    assert r["ok"] == 96  # 4 non-2xx answers are not throughput
    assert r["throughput_rps"] == pytest.approx(96 / 5.0)
    assert (r["p50_ms"], r["p95_ms"], r["p99_ms"]) == (10.0, 30.0, 80.0)
    assert r["non_2xx"] == 4
    assert r["error_count"] == 7  # status + read + timeout


def test_answers_are_counted_by_status_and_only_200_and_503_are_expected():
    line = WRK_STDOUT.replace(
        '"bytes":1000,', '"bytes":1000,"statuses":{"200":96,"503":3,"504":1},'
    )
    r = parse_wrk_output(line)
    assert r["statuses"] == {"200": 96, "503": 3, "504": 1}
    assert unexpected_answers(r) == 1 + 3  # the 504, plus read and timeout errors
    assert unexpected_answers(parse_wrk_output(WRK_STDOUT)) is None  # not counted by status


def test_wrk_output_without_the_marker_line_is_an_error_naming_it():
    with pytest.raises(LoadGenError, match="BENCH_JSON"):
        parse_wrk_output("Running 5s test\nsocket errors: connect 16\n")


def test_lua_script_posts_the_file_as_raw_jpeg_and_quotes_odd_paths(tmp_path):
    path = tmp_path / 'a "quoted" dir' / "x.jpg"
    script = lua_script(path)
    assert json.dumps(str(path)) in script  # a valid Lua string literal for the path
    assert 'wrk.method = "POST"' in script
    assert 'wrk.headers["Content-Type"] = "image/jpeg"' in script
    assert "latency:percentile(99)" in script
    assert "%%" not in script  # the Python template was expanded exactly once


PROM_BEFORE = """# HELP swin_batch_size Images per model run.
# TYPE swin_batch_size histogram
swin_batch_size_bucket{le="1.0"} 2.0
swin_batch_size_sum 10.0
swin_batch_size_count 5.0
# TYPE swin_request_duration_seconds histogram
swin_request_duration_seconds_sum{endpoint="/classify"} 1.0
swin_request_duration_seconds_count{endpoint="/classify"} 2.0
swin_request_duration_seconds_sum{endpoint="/metrics"} 0.5
swin_request_duration_seconds_count{endpoint="/metrics"} 1.0
"""
PROM_AFTER = """# TYPE swin_batch_size histogram
swin_batch_size_sum 40.0
swin_batch_size_count 9.0
# TYPE swin_request_duration_seconds histogram
swin_request_duration_seconds_sum{endpoint="/classify"} 5.0
swin_request_duration_seconds_count{endpoint="/classify"} 6.0
swin_request_duration_seconds_sum{endpoint="/metrics"} 0.5
swin_request_duration_seconds_count{endpoint="/metrics"} 1.0
"""


def test_mean_batch_size_is_the_histogram_difference_between_scrapes():
    means = histogram_means(histogram_totals(PROM_BEFORE), histogram_totals(PROM_AFTER))
    assert means["swin_batch_size"] == {"count": 4.0, "mean": 7.5}  # (40-10)/(9-5)
    # Label sets are added up: 4 s over 4 new requests.
    assert means["swin_request_duration_seconds"]["mean"] == pytest.approx(1.0)
    assert means["swin_decode_seconds"] == {"count": 0.0, "mean": None}


def test_histogram_totals_read_what_prometheus_client_exposes():
    registry = CollectorRegistry()
    latency = Histogram("swin_decode_seconds", "", ["endpoint"], registry=registry)
    latency.labels("/classify").observe(0.25)
    latency.labels("/features").observe(0.5)
    latency.labels("/features").observe(0.25)
    Counter("swin_requests", "", registry=registry).inc(7)  # not a histogram: left out
    totals = histogram_totals(generate_latest(registry).decode())
    # Buckets and the _created gauges are not observations; the label sets are added up.
    assert totals == {"swin_decode_seconds": (1.0, 3.0)}


def test_interpolation_is_linear_in_log2_batch_and_clamped():
    pts = {1: 10.0, 2: 20.0, 8: 50.0}
    assert interpolate_log2(pts, 2) == 20.0
    assert interpolate_log2(pts, 4) == pytest.approx(35.0)  # halfway from 2 to 8 in log2
    assert interpolate_log2(pts, 0.5) == 10.0
    assert interpolate_log2(pts, 64) == 50.0


def test_percentile_interpolates_between_samples():
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([5], 99) == 5


def test_folded_stacks_are_bucketed_by_innermost_known_frame():
    folded = (
        "process;<module> (src/swin_serve/server/__main__.py:1);_infer (src/swin_serve/server/runtime/batcher.py:280);"
        "run (onnxruntime/capi/onnxruntime_inference_collection.py:2) 30\n"
        "process;run (asyncio/events.py:1);decode_image (src/swin_serve/artifact/preprocess.py:9);"
        "resize (PIL/Image.py:3) 10\n"
        "process;run (uvicorn/server.py:1);h11 (h11/_connection.py:3) 10\n"
    )
    s = summarise_folded(folded)
    assert s["samples"] == 50
    assert s["share"]["inference (ORT session.run)"] == 0.6
    assert s["share"]["decode + preprocess"] == 0.2
    assert bucket_of("a (x.py:1);b (y.py:2)") == "other"


@pytest.mark.parametrize(
    ("innermost", "bucket"),
    [
        # Whatever the service's functions are called, the file they are in decides.
        ("renamed_decode (src/swin_serve/artifact/preprocess.py:9)", "decode + preprocess"),
        (
            "anything (src/swin_serve/artifact/preprocess.py:9);asarray (numpy/_core/numeric.py:3)",
            "decode + preprocess",
        ),
        (
            "anything (src/swin_serve/server/runtime/batcher.py:3);stack (numpy/_core/shape_base.py:4)",
            "batch stack/copy",
        ),
        ("anything (src/swin_serve/server/runtime/batcher.py:3)", "batcher loop"),
        (
            "anything (src/swin_serve/server/runtime/batcher.py:3);run (src/swin_serve/server/runtime/engine.py:1)",
            "inference (ORT session.run)",
        ),
        (
            "anything (src/swin_serve/server/http/inference_routes.py:1);inc (prometheus_client/metrics.py:2)",
            "metrics",
        ),
        (
            "anything (src/swin_serve/server/http/inference_routes.py:1);top_k (src/swin_serve/server/runtime/postprocess.py:1)",
            "response shaping + JSON",
        ),
        ("body (starlette/requests.py:1)", "request body read"),
        ("handle (starlette/routing.py:1)", "HTTP (uvicorn/h11/starlette)"),
        # py-spy --full-filenames: the same files, by absolute path.
        ("run_forever (/usr/lib/python3.11/asyncio/base_events.py:1)", "asyncio event loop"),
        ("decode (/srv/app/src/swin_serve/artifact/preprocess.py:9)", "decode + preprocess"),
        ("get (/usr/lib/python3.11/threading.py:1)", "thread pool idle/handoff"),
        ("x (mythreading.py:1)", "other"),
    ],
)
def test_a_sample_is_bucketed_by_the_file_of_its_innermost_known_frame(innermost, bucket):
    assert bucket_of(f"thread (0x7F01);main (app.py:1);{innermost}") == bucket


def test_every_service_file_the_profiler_buckets_exists():
    service_files = [package_path(m) for m in SERVER_BUCKETS if m.startswith("swin_serve.server.")]
    assert service_files
    assert [f for f in service_files if not (ROOT / "src" / f).is_file()] == []


def test_ort_trace_counts_node_kernel_time_by_operator():
    events = [
        {"cat": "Node", "name": "m_kernel_time", "dur": 30, "args": {"op_name": "MatMul"}},
        {"cat": "Node", "name": "m2_kernel_time", "dur": 10, "args": {"op_name": "Add"}},
        {"cat": "Node", "name": "m_fence_before", "dur": 99, "args": {"op_name": "MatMul"}},
        {"cat": "Session", "name": "model_run", "dur": 1000},
    ]
    s = summarise_ort_trace(events)
    assert s["share"] == {"MatMul": 0.75, "Add": 0.25}
    assert s["total_kernel_ms"] == 0.04


def _by_id(results):
    return {t["id"]: t for t in compute_targets(results)}


def test_targets_are_ratios_from_the_run_with_pass_and_miss(make_results):
    t = _by_id(make_results())
    before_peers = ["ort_vs_eager", "int8_vs_fp32", "service_vs_engine", "service_vs_peer"]
    assert [t[k]["status"] for k in [*before_peers, "c1_latency", "v2_vs_classify"]] == ["PASS"] * 6
    assert t["ort_vs_eager"]["measured"] == 2.6  # 26 / 10 at batch 8
    assert t["int8_vs_fp32"]["measured"] == pytest.approx(40 / 26, abs=1e-3)
    assert "top-1 agreement 1.000" in t["int8_vs_fp32"]["detail"]
    assert t["service_vs_engine"]["measured"] == pytest.approx(30 / 26, abs=1e-3)  # at batch 8
    assert t["service_vs_peer"]["measured"] == 3.0
    assert t["c1_latency"]["measured"] == pytest.approx(1.2 * (50 + 10) / 60)
    assert t["v2_vs_classify"]["measured"] == 0.97


def test_engine_ratio_is_the_median_of_per_repetition_ratios(make_results):
    r = make_results()
    batches = r["engine"]["runtimes"]
    # Rep 2 was hit by a burst on the ORT side only; pairing per repetition shrugs it off.
    batches["torch_eager"]["batches"]["8"]["samples_ms"] = [800.0, 800.0, 800.0]
    batches["ort_fp32"]["batches"]["8"]["samples_ms"] = [400.0, 4000.0, 500.0]
    assert _by_id(r)["ort_vs_eager"]["measured"] == pytest.approx(1.6)  # median of 2, 0.2, 1.6


def test_service_targets_prefer_the_engine_probe_taken_right_after_the_load_run(make_results):
    r = make_results()
    levels = r["service"]["servers"]["service"]["levels"]
    levels["16"]["engine_probe"] = {"batch": 8, "img_per_s": 20.0, "latency_ms": 400.0}
    levels["1"]["engine_probe"] = {
        "batch": 1,
        "img_per_s": 25.0,
        "latency_ms": 40.0,
        "decode_ms": 5.0,
    }
    t = _by_id(r)
    assert t["service_vs_engine"]["measured"] == 1.5  # 30 req/s / 20 img/s
    assert t["c1_latency"]["measured"] == pytest.approx(1.2 * 45 / 60)
    assert t["c1_latency"]["status"] == "MISS"


def test_service_vs_peer_pairs_the_repetitions(make_results):
    r = make_results()
    r["service"]["servers"]["service"]["levels"]["16"]["throughput_all_reps"] = [30.0, 12.0, 20.0]
    r["service"]["servers"]["peer"]["levels"]["16"]["throughput_all_reps"] = [10.0, 12.0, 5.0]
    assert _by_id(r)["service_vs_peer"]["measured"] == 3.0  # median of 3, 1, 4


def test_service_faster_than_peer_but_with_higher_p99_is_a_miss(make_results):
    peer_target = _by_id(make_results(svc_p99=300.0, peer_p99=200.0))["service_vs_peer"]
    assert peer_target["measured"] == 3.0
    assert peer_target["status"] == "MISS"
    assert "NOT lower" in peer_target["detail"]


def test_slow_p50_at_c1_is_a_miss(make_results):
    assert _by_id(make_results(svc1_p50=200.0))["c1_latency"]["status"] == "MISS"


def test_v2_costing_more_than_5_percent_throughput_is_a_miss(make_results):
    r = make_results()
    r["protocols"]["ratio"] = 0.94
    assert _by_id(r)["v2_vs_classify"]["status"] == "MISS"


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [("unclean_runs", 1, "non-200 or socket error"), ("answers", {"same_top": False}, "differ")],
)
def test_v2_comparison_with_a_failed_request_or_different_answers_is_invalid(
    key, value, says, make_results
):
    r = make_results()
    r["protocols"][key] = value
    target = _by_id(r)["v2_vs_classify"]
    assert target["measured"] == 0.97  # fast enough, but not a valid measurement
    assert target["status"] == "MISS"
    assert "INVALID" in target["detail"] and says in target["detail"]


def test_missing_sections_are_reported_not_run():
    assert {t["status"] for t in compute_targets({})} == {"NOT RUN"}


def test_markdown_report_holds_tables_targets_and_plot_links(make_results):
    md = render_markdown(make_results(), image_prefix="bench/results/")
    assert "at batch 8, 1 thread(s) (the service's setting) | 2.60 | >= 1.3 | **PASS**" in md
    assert "| service | 16 | 30.00 |" in md
    assert "| v2_binary | `/v2/models/m/infer`: binary | 9.70 | 720 | 1550 |" in md
    assert "| 2 | v2_binary | 10.00 | 9.60 | 0.960 | 0.25 / - | 0 |" in md  # v2 went first
    assert "v2 / classify throughput: **0.970** (median of 0.970, 0.960, 0.980)" in md
    engine_png, service_png = plot_names(make_results())
    assert f"![engine](bench/results/{engine_png}) ![service](bench/results/{service_png})" in md
    assert "### Analysis" not in md
    with_notes = render_markdown(make_results(), notes="Why int8 wins.\n")
    assert "### Analysis\n\nWhy int8 wins.\n" in with_notes


def test_extra_service_settings_are_parsed_and_checked():
    assert parse_also(["b2:SWIN_MAX_BATCH_SIZE=2,SWIN_MAX_BATCH_DELAY_MS=0"]) == [
        ("b2", {"SWIN_MAX_BATCH_SIZE": "2", "SWIN_MAX_BATCH_DELAY_MS": "0"})
    ]
    with pytest.raises(SystemExit):
        parse_env(["PATH=/tmp"])
    with pytest.raises(SystemExit):
        parse_also(["no-colon"])


def test_write_json_replaces_the_file_whole_and_leaves_no_temporary_on_failure(tmp_path):
    path = tmp_path / "sub" / "results.json"
    write_json(path, {"a": 1})
    write_json(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
    with pytest.raises(TypeError):
        write_json(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": 2}
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]


@pytest.mark.parametrize("inherit", [True, False])
def test_server_sees_this_shells_settings_only_when_it_inherits_them(monkeypatch, inherit):
    for key in [k for k in os.environ if k.startswith("SWIN_")]:  # e.g. the suite's own
        monkeypatch.delenv(key)
    monkeypatch.setenv("SWIN_FROM_SHELL", "1")
    show = "import os; print(sorted(k for k in os.environ if k.startswith('SWIN_')))"
    server = Server("s", "s", [sys.executable, "-c", show], {"SWIN_OWN": "1"}, port=0)
    server.inherit_settings = inherit
    server.start()
    server.proc.wait(timeout=30)
    shown = server.tail()
    assert server.stop() == 0
    expected = ["SWIN_FROM_SHELL", "SWIN_OWN"] if inherit else ["SWIN_OWN"]
    assert shown.strip() == str(expected)


def test_soak_judges_rss_on_the_second_half_of_the_run():
    # Arenas rise in the first minutes and stay; only growth after halfway counts as a leak.
    trend = [(0, 100.0), (60, 300.0), (120, 310.0), (180, 315.0), (240, 320.0), (240, 320.0)]
    summary = summarise(4.0, 50.0, Tally(), trend)
    assert summary["rss_growth_second_half_mib"] == 10.0  # 320 - 310 at the 2-minute mark
    assert summary["rss_growth_after_first_minute_mib"] == 20.0
    assert summary["p99_overloaded_503_ms"] is None


def test_a_v2_comparison_run_on_its_own_is_said_to_be_from_another_run(make_results):
    r = make_results()
    r["meta"] = {"started": "2026-01-01 10:00 UTC", "mode": "full"}
    assert "from this one run;" in render_markdown(r)
    r["protocols"]["meta"] = {"started": "2026-01-02 09:00 UTC", "mode": "full", "config": {}}
    md = render_markdown(r)
    assert "from this one run but the v2 comparison, measured on 2026-01-02 09:00 UTC;" in md
    assert "Run 2026-01-02 09:00 UTC (full mode)" in md  # the v2 section's own run line


def test_a_run_records_the_cpus_vector_instruction_sets():
    from bench.common import cpu_features, describe_cpu

    epyc = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse2 avx fma avx2 bmi2\n"
    xeon = (
        "processor\t: 0\nflags\t\t: avx2 fma avx512f avx512_vnni amx_tile\n\n"
        "processor\t: 1\nflags\t\t: sse2\n"
    )
    assert cpu_features(epyc) == ["AVX2", "FMA"]
    assert cpu_features(xeon) == ["AVX2", "FMA", "AVX-512", "AVX-512 VNNI", "AMX"]
    assert cpu_features("") == []
    machine = {"cpu_model": "AMD EPYC 7B13", "cpu_features": ["AVX2", "FMA"]}
    assert describe_cpu(machine) == "AMD EPYC 7B13; AVX2, FMA"
    assert describe_cpu({**machine, "cpu_features": []}) == "AMD EPYC 7B13; no AVX2 or newer"
    assert describe_cpu({"cpu_model": "old run"}) == "old run"  # results from before the field


def test_side_by_side_runners_count_the_images_of_every_copy():
    import time

    from bench.common import median
    from bench.engine_throughput import Runner, run_engine_benchmark

    def run(x):
        time.sleep(0.005)  # a call long enough to time; the figure checked is arithmetic

    runner = Runner("pair", "two side by side", run, (1, 4), copies=2)
    res = run_engine_benchmark([runner], reps=2, warmup=0, min_images=1, image_size=8)
    for batch in (1, 4):
        figures = res["pair"]["batches"][str(batch)]
        seconds = median(figures["samples_ms"]) / 1e3
        assert figures["img_per_s"] == pytest.approx(batch * 2 / seconds, rel=0.01)


def test_python_m_bench_without_a_command_runs_the_whole_suite(monkeypatch):
    from bench import cli

    seen = []
    monkeypatch.setattr(cli, "run_suite", lambda args: seen.append((args.what, args.quick)) or 0)
    assert cli.main(["--quick"]) == 0
    assert cli.main([]) == 0
    assert seen == [("all", True), ("all", False)]


@pytest.mark.parametrize(
    ("command", "module"),
    [("soak", "soak"), ("capacity", "capacity"), ("selfcheck-cost", "selfcheck_cost")],
)
def test_a_tool_with_its_own_command_line_gets_the_rest_of_it_whole(monkeypatch, command, module):
    import importlib

    seen = []
    monkeypatch.setattr(importlib.import_module(f"bench.{module}"), "main", seen.append)
    cli.main([command, "--help", "--minutes", "3"])
    assert seen == [["--help", "--minutes", "3"]]
