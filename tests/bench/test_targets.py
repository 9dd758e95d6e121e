"""The targets against LitServe, the best engine configuration and the service's footprint
(nothing here is timed)."""

from __future__ import annotations

import pytest

from bench.loadgen import unexpected_answers
from bench.report import render_markdown, servers_table, service_table
from bench.targets import PEAK_RSS_MB, best_litserve, compute_targets
from tests.bench.made_up_results import load_level


def _level(rps, p50, p99, **extra):
    return load_level(rps, p50, p99, **{"non_2xx": 0, **extra})


def _with_litserve(results, w1t2=(10.0, 8.0), w2t1=(9.0, 12.0), p99_16=(900.0, 800.0)):
    """LitServe's two 2-CPU configurations: (c=1, c=16) req/s each, and their c=16 p99s."""
    servers = results["service"]["servers"]
    for (name, (c1, c16)), p99 in zip(
        {"litserve_w1t2": w1t2, "litserve_w2t1": w2t1}.items(), p99_16, strict=True
    ):
        servers[name] = {
            "label": name,
            "idle_cpu_pct": 20.0,
            "peak_rss_mb": 900.0,
            "levels": {"1": _level(c1, 100.0, 120.0), "16": _level(c16, 1500.0, p99)},
        }
    return results


def _by_id(results):
    return {t["id"]: t for t in compute_targets(results)}


def test_the_best_litserve_configuration_is_chosen_per_level(make_results):
    r = _with_litserve(make_results(), w1t2=(10.0, 8.0), w2t1=(9.0, 12.0))
    assert best_litserve(r, 1)[0] == "litserve_w1t2"
    assert best_litserve(r, 16)[0] == "litserve_w2t1"
    t = _by_id(r)
    assert t["c1_vs_litserve"]["measured"] == 1.5  # 15 / 10, against w1t2
    assert "best: litserve_w1t2" in t["c1_vs_litserve"]["detail"]
    assert t["c16_vs_litserve"]["measured"] == 2.5  # 30 / 12, against w2t1
    assert "best: litserve_w2t1" in t["c16_vs_litserve"]["detail"]
    assert t["c16_vs_litserve"]["status"] == "PASS"  # p99 100 < 800


def test_litserve_ratios_pair_the_repetitions(make_results):
    r = _with_litserve(make_results())
    r["service"]["servers"]["service"]["levels"]["1"]["throughput_all_reps"] = [15.0, 8.0, 12.0]
    r["service"]["servers"]["litserve_w1t2"]["levels"]["1"]["throughput_all_reps"] = [10.0, 8, 6]
    assert _by_id(r)["c1_vs_litserve"]["measured"] == 1.5  # median of 1.5, 1, 2


@pytest.mark.parametrize(
    ("svc16_rps", "svc_p99", "status", "says"),
    [
        (12.5, 700.0, "MISS", "(lower)"),  # 12.5 / 12 = 1.04 < 1.05
        (13.0, 700.0, "PASS", "(lower)"),
        (30.0, 900.0, "MISS", "(NOT lower)"),  # fast enough, but a higher p99
    ],
)
def test_c16_against_litserve_needs_5_percent_more_and_a_lower_p99(
    make_results, svc16_rps, svc_p99, status, says
):
    r = _with_litserve(make_results(svc16_rps=svc16_rps, svc_p99=svc_p99))
    target = _by_id(r)["c16_vs_litserve"]
    assert target["status"] == status
    assert says in target["detail"]


def test_litserve_targets_without_litserve_runs_are_not_run_and_say_why(make_results):
    t = _by_id(make_results())
    assert t["c1_vs_litserve"]["status"] == "NOT RUN"
    assert "no LitServe configuration run at c=1" in t["c1_vs_litserve"]["detail"]


def test_c1_latency_is_against_the_engine_with_every_cpu(make_results):
    r = make_results(svc1_p50=60.0)
    assert _by_id(r)["c1_vs_engine_all_cpus"]["status"] == "NOT RUN"
    assert (
        "no ORT fp32 batch-1 latency with every CPU"
        in (_by_id(r)["c1_vs_engine_all_cpus"]["detail"])
    )
    r["engine"]["runtimes"]["ort_fp32_t2"] = {
        "label": "ONNX Runtime fp32, 2 threads",
        "batches": {"1": {"img_per_s": 25.0, "latency_ms": 40.0}},
    }
    t = _by_id(r)["c1_vs_engine_all_cpus"]
    assert t["measured"] == pytest.approx(60 / (40 + 10))  # p50 / (engine + decode) = 1.2
    assert (t["op"], t["threshold"], t["status"]) == ("<=", 1.1, "MISS")
    assert "2 threads" in t["name"]


def test_an_engine_run_with_every_cpu_as_the_services_threads_counts_as_every_cpu(make_results):
    r = make_results(svc1_p50=60.0)
    r["meta"] = {"machine": {"cpus": 1}}  # the engine ran its one thread on the one CPU
    t = _by_id(r)["c1_vs_engine_all_cpus"]
    assert t["measured"] == pytest.approx(60 / (50 + 10))
    assert t["status"] == "PASS"


def test_an_engine_pinned_to_the_servers_cpus_counts_as_every_cpu_they_have(make_results):
    # From 4 CPUs the benchmark keeps one for wrk: the engine's threads are the servers' CPUs.
    r = make_results(svc1_p50=60.0)
    r["meta"] = {"machine": {"cpus": 8}}
    r["engine"]["threads"] = 7
    assert _by_id(r)["c1_vs_engine_all_cpus"]["status"] == "NOT RUN"  # 7 of 8: not every CPU
    r["engine"]["cpus"] = 7
    assert _by_id(r)["c1_vs_engine_all_cpus"]["measured"] == pytest.approx(60 / (50 + 10))


def test_c16_is_against_the_best_engine_configuration_over_threads_and_batches(make_results):
    r = make_results(svc16_rps=30.0)
    assert _by_id(r)["c16_vs_best_engine"]["measured"] == pytest.approx(30 / 26, abs=1e-3)
    r["engine"]["runtimes"]["ort_fp32_t2"] = {
        "label": "ONNX Runtime fp32, 2 threads",
        "batches": {"1": {"img_per_s": 33.0}, "8": {"img_per_s": 31.0}},
    }
    t = _by_id(r)["c16_vs_best_engine"]
    assert t["measured"] == pytest.approx(30 / 33, abs=1e-3)
    assert t["status"] == "MISS"  # 0.91 < 0.95
    assert "ONNX Runtime fp32, 2 threads, batch 1" in t["detail"]
    r["engine"]["runtimes"]["ort_fp32_x2"] = {  # two single-threaded runs count as one
        "label": "ONNX Runtime fp32, 2 single-threaded runs side by side",
        "batches": {"4": {"img_per_s": 36.0}},
    }
    t = _by_id(r)["c16_vs_best_engine"]
    assert t["measured"] == pytest.approx(30 / 36, abs=1e-3)
    assert "side by side, batch 4" in t["detail"]


@pytest.mark.parametrize(
    ("peak", "idle", "statuses"),
    [(800.0, 1.9, ("PASS", "PASS")), (PEAK_RSS_MB + 1, 2.0, ("MISS", "MISS"))],
)
def test_peak_rss_and_idle_cpu_are_upper_bounds(make_results, peak, idle, statuses):
    r = _with_litserve(make_results())
    r["service"]["servers"]["service"].update(peak_rss_mb=peak, idle_cpu_pct=idle)
    t = _by_id(r)
    assert (t["peak_rss"]["status"], t["idle_cpu"]["status"]) == statuses
    assert "peers: litserve_w1t2 900, litserve_w2t1 900" in t["peak_rss"]["detail"]
    assert "peers: litserve_w1t2 20.0, litserve_w2t1 20.0" in t["idle_cpu"]["detail"]
    md = render_markdown(r)
    assert f"| {peak:.2f} | <= 810.0 | **{statuses[0]}** |" in md
    assert f"| {idle:.2f} | < 2.0 | **{statuses[1]}** |" in md


def _c64(statuses, socket_errors=0):
    n = sum(statuses.values())
    non_2xx = sum(v for k, v in statuses.items() if int(k) >= 400)
    return _level(
        1.0,
        5000.0,
        6000.0,
        statuses=statuses,
        non_2xx=non_2xx,
        error_count=non_2xx + socket_errors,
        requests=n,
    )


@pytest.mark.parametrize(
    ("runs", "measured", "status"),
    [
        ([_c64({"200": 90, "503": 10})], 0, "PASS"),
        ([_c64({"200": 90, "503": 10}), _c64({"200": 90, "504": 1})], 1, "MISS"),
        ([_c64({"200": 90}, socket_errors=2)], 2, "MISS"),
    ],
    ids=["200 and 503 only", "a 504 in another repetition", "socket errors"],
)
def test_c64_allows_only_200_and_503_answers_in_every_repetition(
    make_results, runs, measured, status
):
    r = make_results()
    shown = dict(runs[0])
    shown["unexpected_all_reps"] = [unexpected_answers(x) for x in runs]
    r["service"]["servers"]["service"]["levels"]["64"] = shown
    t = _by_id(r)["c64_answers"]
    assert (t["measured"], t["status"]) == (measured, status)


def test_c64_from_a_run_that_did_not_count_statuses_is_not_run(make_results):
    r = make_results()
    r["service"]["servers"]["service"]["levels"]["64"] = _level(1.0, 5000.0, 6000.0)
    assert _by_id(r)["c64_answers"]["status"] == "NOT RUN"


def test_the_service_table_shows_503s_apart_from_other_errors_and_rss(make_results):
    r = make_results()
    r["service"]["servers"]["service"]["levels"]["64"] = {
        **_c64({"200": 90, "503": 7, "500": 2}, socket_errors=1),
        "peak_rss_mb": 612.4,
    }
    r["service"]["servers"]["service"].update(idle_cpu_pct=0.4, peak_rss_mb=612.4)
    table = service_table(r)
    assert "| service | 64 | 1.00 | 5000 | 6000 | 6000 | 7 | 3 | - | - | 612 |" in table
    assert "| service | 1 | 15.00 | 60 | 80 | 80 | - | 0 |" in table  # no status counts: "-"
    assert "| service | svc | 0.4 | 612 |" in servers_table(r)
