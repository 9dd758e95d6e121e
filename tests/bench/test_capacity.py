"""bench/capacity.py: Erlang C against known values, the M/M/c quantities it derives, the plan's
fewest replicas, and the docs table it generates."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest

from bench import capacity
from bench.capacity import Replica, erlang_c, hpa_target, plan, replica_from_results


def erlang_c_exact(c: int, a: Fraction) -> Fraction:
    """The textbook sum, in exact arithmetic: an implementation independent of the recursion."""
    top = a**c / math.factorial(c) * c / (c - a)
    return top / (sum(a**k / math.factorial(k) for k in range(c)) + top)


@pytest.mark.parametrize(
    ("c", "a", "expected"),
    [
        # Published Erlang C table (10 Erlangs of traffic, staffing 11 to 14 agents).
        (11, 10.0, 0.6821),
        (12, 10.0, 0.4494),
        (13, 10.0, 0.2853),
        (14, 10.0, 0.1741),
        (10, 8.0, 0.4092),
        # M/M/1: an arrival waits exactly when the server is busy, P = rho.
        (1, 0.5, 0.5),
        (1, 0.9, 0.9),
        # M/M/2: P = a^2 / (2 + a); 1 Erlang on 2 servers waits a third of the time.
        (2, 1.0, 1 / 3),
    ],
)
def test_erlang_c_matches_known_values(c, a, expected):
    assert erlang_c(c, a) == pytest.approx(expected, abs=5e-5)


@pytest.mark.parametrize("c", [1, 2, 3, 4, 7, 16, 40])
@pytest.mark.parametrize("rho", [0.05, 0.3, 0.5, 0.8, 0.95, 0.999])
def test_erlang_c_agrees_with_the_exact_sum(c, rho):
    a = Fraction(rho).limit_denominator(10**6) * c
    assert erlang_c(c, float(a)) == pytest.approx(float(erlang_c_exact(c, a)), rel=1e-9)


def test_erlang_c_stays_finite_where_the_textbook_sum_overflows():
    p = erlang_c(1000, 950.0)  # 950**1000 overflows a float
    assert 0.0 < p < 1.0
    assert erlang_c(1000, 1.0) == pytest.approx(0.0, abs=1e-300)


@pytest.mark.parametrize(("c", "a"), [(2, 2.0), (2, 3.0), (1, -0.1), (0, 0.5)])
def test_erlang_c_refuses_an_unstable_or_meaningless_queue(c, a):
    with pytest.raises(ValueError):
        erlang_c(c, a)


REPLICA = Replica(slots=2, service_s=0.2, base_p99_s=0.25)  # 10 req/s at most


def test_queue_length_follows_littles_law_and_mm1_closed_form():
    rps = 7.0
    mean_wait = REPLICA.wait_probability(rps) / (REPLICA.capacity_rps - rps)
    assert REPLICA.mean_queue_length(rps) == pytest.approx(rps * mean_wait)
    mm1 = Replica(slots=1, service_s=0.1, base_p99_s=0.1)
    rho = 0.8
    assert mm1.mean_queue_length(8.0) == pytest.approx(rho**2 / (1 - rho))


def test_the_wait_quantile_is_where_the_tail_probability_is_one_percent():
    rps = 8.0
    t = REPLICA.wait_quantile_s(rps)
    tail = REPLICA.wait_probability(rps) * math.exp(-(REPLICA.capacity_rps - rps) * t)
    assert tail == pytest.approx(0.01)
    # Under light load fewer than 1% of requests wait at all: no queueing in the p99.
    assert REPLICA.wait_quantile_s(0.5) == 0.0
    assert REPLICA.p99_s(0.5) == REPLICA.base_p99_s


@pytest.mark.parametrize("rps", [0.5, 3.0, 10.0, 47.0, 400.0])
@pytest.mark.parametrize("p99_s", [0.3, 1.0, 2.0])
def test_the_plan_is_the_fewest_replicas_that_meet_the_p99(rps, p99_s):
    p = plan(REPLICA, rps, p99_s)
    assert p.predicted_p99_s <= p99_s
    assert p.utilisation < 1
    if p.replicas > 1:
        fewer = rps / (p.replicas - 1)
        assert fewer >= REPLICA.capacity_rps or REPLICA.p99_s(fewer) > p99_s


def test_a_p99_below_the_unqueued_p99_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="below a replica's p99 without any queue"):
        plan(REPLICA, 5.0, 0.2)


def test_the_hpa_target_is_the_queue_at_the_busiest_load_meeting_the_p99():
    most = REPLICA.max_rps(1.0)
    assert REPLICA.p99_s(most) == pytest.approx(1.0, abs=1e-6)
    assert hpa_target(REPLICA, 1.0) == pytest.approx(REPLICA.mean_queue_length(most))
    # A looser p99 allows a longer queue.
    assert hpa_target(REPLICA, 2.0) > hpa_target(REPLICA, 1.0)


def _results(levels: dict[int, dict], cpus: int = 2, precision: str = "fp32") -> dict:
    """A run whose default service (SWIN_PRECISION=auto) ran at ``precision``."""
    service = {"levels": {str(c): v for c, v in levels.items()}, "info": {"precision": precision}}
    return {
        "meta": {"started": "t", "machine": {"cpus": cpus, "cpu_model": "cpu"}},
        "service": {"servers": {"service": service}},
    }


def test_the_replica_is_the_service_at_fp32():
    """The deployment pins fp32: a bf16 run of the default service must not size it."""
    levels = {1: {"throughput_rps": 5.0, "p99_ms": 250.0}, 4: {"throughput_rps": 10.0}}
    bf16 = _results({1: levels[1], 4: {"throughput_rps": 30.0}}, precision="bf16")
    with pytest.raises(ValueError, match="no service at fp32"):
        replica_from_results(bf16)
    bf16["service"]["servers"]["service_fp32"] = {"levels": {str(c): v for c, v in levels.items()}}
    assert replica_from_results(bf16).capacity_rps == pytest.approx(10.0)
    assert replica_from_results(bf16, "service").capacity_rps == pytest.approx(30.0)


def test_a_replica_is_read_from_the_saturated_error_free_levels_of_a_run():
    results = _results(
        {
            1: {"throughput_rps": 5.0, "p99_ms": 250.0, "error_count": 0},
            2: {"throughput_rps": 9.0, "p99_ms": 300.0, "error_count": 0},  # < 2 per slot
            4: {"throughput_rps": 11.0, "p99_ms": 600.0, "error_count": 0},
            16: {"throughput_rps": 10.0, "p99_ms": 2000.0, "error_count": 0},
            64: {"throughput_rps": 8.0, "p99_ms": 6000.0, "error_count": 17},  # timed out
        }
    )
    replica = replica_from_results(results)
    assert replica.slots == 2  # the service's default on 2 CPUs
    assert replica.capacity_rps == pytest.approx(10.0)  # the lowest saturated, error-free level
    assert replica.base_p99_s == pytest.approx(0.25)
    assert (
        replica_from_results(
            _results(
                {
                    1: results["service"]["servers"]["service"]["levels"]["1"],
                    16: {"throughput_rps": 20.0, "error_count": 0},
                },
                cpus=8,
            )
        ).slots
        == 4
    )


def test_results_without_a_saturated_level_are_refused():
    with pytest.raises(ValueError, match="two clients per run slot"):
        replica_from_results(_results({1: {"throughput_rps": 5.0, "p99_ms": 250.0}}))


def test_the_docs_table_is_the_one_the_benchmark_results_give():
    page = capacity.DOCS_PAGE.read_text()
    assert capacity.docs_section(page) == capacity.render_table(capacity.load_replica()), (
        "docs/kubernetes.md's capacity table is stale: run `python -m bench.capacity --update-docs`"
    )


def test_the_cli_prints_the_replicas_and_the_hpa_target(capsys):
    assert (
        capacity.main(
            [
                "--rps",
                "40",
                "--p99-ms",
                "1000",
                "--slots",
                "2",
                "--service-ms",
                "200",
                "--base-p99-ms",
                "250",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    expected = plan(REPLICA, 40.0, 1.0).replicas
    assert f"replicas: {expected} for 40 req/s" in out
    assert f"{hpa_target(REPLICA, 1.0):.2f}" in out
    # Below the benchmarked replica's own p99 with no queue: no number of replicas meets it.
    too_tight = capacity.load_replica().base_p99_s * 1e3 / 2
    assert capacity.main(["--rps", "40", "--p99-ms", f"{too_tight:.1f}"]) == 2
    assert "below a replica's p99" in capsys.readouterr().err
