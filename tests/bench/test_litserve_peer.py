"""The LitServe peer serves what the service serves, and the service benchmark loads it beside
the service, on the micro model (nothing here asserts a duration)."""

from __future__ import annotations

import json
import urllib.request

import pytest

from bench import suite as bench_main
from bench.common import SAMPLE_IMAGE
from bench.service import (
    litserve_configs,
    litserve_server,
    run_service_benchmark,
    running,
    service_server,
)
from tests.support import need_wrk


def _top5(base: str) -> list[int]:
    request = urllib.request.Request(
        f"{base}/classify?top_k=5",
        data=SAMPLE_IMAGE.read_bytes(),
        headers={"Content-Type": "image/jpeg"},
    )
    with urllib.request.urlopen(request, timeout=60) as r:
        answer = json.load(r)
    return [p["index"] for p in answer["results"][0]["predictions"]]


def test_litserve_answers_the_same_top_5_as_the_service_for_the_same_jpeg(tiny_export):
    ours = service_server(tiny_export.model_path, None, {"SWIN_PROVIDERS": "cpu"})
    peer = litserve_server(tiny_export.model_path, None, workers=1, threads=1)
    assert peer.health_path == "/health"
    with running([ours, peer]):
        assert _top5(peer.base) == _top5(ours.base)


@pytest.mark.parametrize(
    ("cpus", "configs"),
    [(1, [(1, 1)]), (2, [(1, 2), (2, 1)]), (8, [(1, 8), (8, 1), (2, 4)])],
)
def test_litserve_configurations_follow_the_cpu_count(cpus, configs):
    assert litserve_configs(cpus) == configs
    assert bench_main.peer_names(cpus) == ["peer", *(f"litserve_w{w}t{t}" for w, t in configs)]


def test_peers_are_chosen_by_name_or_family_and_unknown_names_refused():
    assert bench_main.parse_peers("all", 2) == ["peer", "litserve_w1t2", "litserve_w2t1"]
    assert bench_main.parse_peers("litserve", 2) == ["litserve_w1t2", "litserve_w2t1"]
    assert bench_main.parse_peers("litserve_w2t1,peer", 2) == ["litserve_w2t1", "peer"]
    assert bench_main.parse_peers("none", 2) == []
    with pytest.raises(SystemExit, match="litserve_w4t1"):
        bench_main.parse_peers("litserve_w4t1", 2)


def test_a_benchmark_with_litserve_records_idle_cpu_peak_rss_and_answers(tiny_export):
    need_wrk()
    servers = [
        service_server(tiny_export.model_path, None, {"SWIN_PROVIDERS": "cpu"}),
        litserve_server(tiny_export.model_path, None, workers=1, threads=1),
    ]
    res = run_service_benchmark(
        servers,
        SAMPLE_IMAGE,
        concurrency=(2,),
        duration_s=1.0,
        warmup_s=1.0,
        reps=1,
        loadgen_cpus=None,
        idle_s=1.0,
    )
    for name in ("service", "litserve_w1t1"):
        s = res[name]
        run = s["levels"]["2"]
        assert run["ok"] > 0 and run["statuses"] == {"200": run["requests"]}
        assert run["unexpected_all_reps"] == [0]
        assert s["idle_cpu_pct"] >= 0
        assert s["peak_rss_mb"] == run["peak_rss_mb"] > 0
