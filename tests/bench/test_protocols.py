"""bench/protocols.py: the v2 request it builds, the answers it reads, how it orders and sums up
rounds, and a run against a real server (nothing here is timed)."""

from __future__ import annotations

import json
import os
import struct

import pytest

from bench import cli, protocols, suite
from bench import common as bench_common
from bench.common import SAMPLE_IMAGE, machine_cpu_seconds
from bench.config import SUITE
from bench.loadgen import MARKER, lua_script, parse_wrk_output
from bench.protocols import (
    CLASSIFY,
    V2_BINARY,
    check_answers,
    classify_top,
    round_order,
    routes,
    run_protocols_benchmark,
    summarise,
    v2_binary_request,
    v2_top,
)
from bench.service import others_load, running, service_server
from swin_serve.server.v2.http_codec import parse_request, split_body
from swin_serve.server.v2.tensors import BYTES
from tests.support import need_wrk

JPEG = b"\xff\xd8\xff\xe0 not really a jpeg \xff\xd9"


def test_v2_body_is_the_json_header_then_one_length_prefixed_element():
    body, n = v2_binary_request(JPEG, top_k=5)
    header = json.loads(body[:n])
    assert header == {
        "inputs": [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [1],
                "parameters": {"binary_data_size": 4 + len(JPEG)},
            }
        ],
        "outputs": [{"name": "logits", "parameters": {"classification": 5}}],
    }
    assert body[n:] == struct.pack("<I", len(JPEG)) + JPEG


def test_the_services_codec_reads_the_bench_request_as_one_image_and_a_top_5():
    route = routes(JPEG, "swin_x")[V2_BINARY]
    header, binary = split_body(route.body, route.headers["Inference-Header-Content-Length"])
    request = parse_request(header, binary, "swin_x", "")
    (tensor,) = request.inputs
    assert (tensor.name, tensor.datatype, tensor.shape, tensor.data) == (
        "image",
        BYTES,
        (1,),
        [JPEG],
    )
    (output,) = request.outputs
    assert (output.name, output.classification, output.binary) == ("logits", 5, False)


def test_both_routes_post_the_same_image_for_the_same_top_k():
    by_name = routes(JPEG, "a/b", top_k=3)
    classify, v2 = by_name[CLASSIFY], by_name[V2_BINARY]
    assert (classify.path, classify.body) == ("/classify?top_k=3", JPEG)
    assert classify.headers == {"Content-Type": "image/jpeg"}
    assert v2.path == "/v2/models/a%2Fb/infer"  # the model name is one path segment
    assert v2.body.endswith(JPEG)
    assert '"classification":3' in v2.body.decode(errors="replace")


def test_top_classes_are_read_from_either_answer_best_first():
    classify = {"results": [{"predictions": [{"index": 7, "score": 0.5}, {"index": 2}]}]}
    assert classify_top(classify) == [7, 2]
    v2 = {
        "outputs": [
            {"name": "embedding", "data": [0.1]},
            {"name": "logits", "data": ["1.500000:7:cat", "-0.250000:2:a: label with colons"]},
        ]
    }
    assert v2_top(v2) == [7, 2]


def test_rounds_alternate_which_path_goes_first():
    assert [round_order(i)[0] for i in range(4)] == [CLASSIFY, V2_BINARY, CLASSIFY, V2_BINARY]
    assert all(sorted(round_order(i)) == sorted(protocols.PATHS) for i in range(4))


def _run(rps, p99=100.0, errors=0, non_200=0):
    return {
        "throughput_rps": rps,
        "p50_ms": p99 / 2,
        "p99_ms": p99,
        "server_cpu_s_per_request": 0.2,
        "mean_batch_size": 3.0,
        "error_count": errors,
        "non_2xx": errors,
        "non_200": non_200,
    }


def _round(classify_rps, v2_rps, **v2_extra):
    runs = {CLASSIFY: _run(classify_rps), V2_BINARY: _run(v2_rps, **v2_extra)}
    return {"runs": runs, "ratio": v2_rps / classify_rps, "order": [CLASSIFY, V2_BINARY]}


def test_summary_is_the_median_of_per_round_ratios_not_the_ratio_of_medians():
    # The machine slowed down in round 2; each round's own ratio does not care.
    rounds = [_round(10.0, 9.8), _round(5.0, 4.5), _round(10.0, 10.0)]
    s = summarise(rounds)
    assert s["ratio"] == pytest.approx(0.98)  # median of 0.98, 0.90, 1.00
    assert s["ratio_all_rounds"] == pytest.approx([0.98, 0.9, 1.0])
    assert s["paths"][V2_BINARY]["throughput_rps"] == 9.8
    assert s["paths"][CLASSIFY]["throughput_all_rounds"] == [10.0, 5.0, 10.0]
    assert s["unclean_runs"] == 0


def test_a_run_with_a_non_200_or_an_uncounted_status_is_unclean():
    rounds = [_round(10.0, 10.0, non_200=1), _round(10.0, 10.0, non_200=None), _round(10.0, 10.0)]
    assert summarise(rounds)["unclean_runs"] == 2


def test_lua_script_sends_the_given_headers_and_counts_non_200_answers(tmp_path):
    script = lua_script(
        tmp_path / "b", {"Content-Type": "a/b", "Inference-Header-Content-Length": "9"}
    )
    assert 'wrk.headers["Inference-Header-Content-Length"] = "9"' in script
    assert 'wrk.headers["Content-Type"] = "a/b"' in script
    assert "image/jpeg" not in script
    assert "if status ~= 200 then non_200 = non_200 + 1 end" in script
    assert 't:get("non_200")' in script


def test_wrk_output_reports_the_scripts_non_200_count_when_it_has_one():
    line = (
        f'{MARKER}{{"requests":10,"duration_us":1000000,"bytes":1,"non_200":3,"errors_connect":0,'
        '"errors_read":0,"errors_write":0,"errors_status":1,"errors_timeout":0,"lat_mean_us":1,'
        '"lat_max_us":1,"lat_p50_us":1,"lat_p90_us":1,"lat_p95_us":1,"lat_p99_us":1}'
    )
    assert parse_wrk_output(line)["non_200"] == 3
    assert parse_wrk_output(line.replace('"non_200":3,', ""))["non_200"] is None


def test_a_protocols_run_keeps_the_run_line_of_the_tables_it_does_not_measure(monkeypatch):
    monkeypatch.setattr(bench_common, "plan_cpus", lambda: (None, None, "not pinned"))
    monkeypatch.setattr("bench.model_files.ensure_models", lambda: None)
    monkeypatch.setattr(suite, "run_protocols", lambda *a: {"ratio": 1.0})
    args = cli.build_parser().parse_args(["protocols"])
    earlier = {"started": "earlier", "what": "all"}
    results = {"meta": earlier, "service": {"kept": True}}
    suite.measure(args, SUITE.full, results)
    assert results["meta"] == earlier
    assert results["service"] == {"kept": True}
    assert results["protocols"]["ratio"] == 1.0
    assert results["protocols"]["meta"]["what"] == "protocols"


def _micro_server(tiny_export):
    return service_server(tiny_export.model_path, None, {"SWIN_PROVIDERS": "cpu"})


def test_both_paths_of_a_real_server_answer_200_with_the_same_top_5(tiny_export):
    server = _micro_server(tiny_export)
    by_name = routes(SAMPLE_IMAGE.read_bytes(), tiny_export.manifest.name)
    with running([server]):
        answers = check_answers(server.base, by_name)
    assert answers["same_top"] is True
    assert len(answers["top"][CLASSIFY]) == 5
    assert answers["top"][V2_BINARY] == answers["top"][CLASSIFY]


def test_a_path_that_does_not_answer_200_stops_the_benchmark_before_any_load(tiny_export):
    server = _micro_server(tiny_export)
    by_name = routes(SAMPLE_IMAGE.read_bytes(), "no_such_model")
    with running([server]), pytest.raises(RuntimeError, match="answered 404"):
        check_answers(server.base, by_name)


def test_interleaved_rounds_against_a_real_server_are_clean_and_recorded(tiny_export):
    need_wrk()
    server = _micro_server(tiny_export)
    by_name = routes(SAMPLE_IMAGE.read_bytes(), tiny_export.manifest.name)
    res = run_protocols_benchmark(
        server, by_name, rounds=2, duration_s=1.0, warmup_s=1.0, loadgen_cpus=None, connections=4
    )
    assert [r["order"][0] for r in res["rounds"]] == [CLASSIFY, V2_BINARY]
    assert res["unclean_runs"] == 0
    for r in res["rounds"]:
        for run in r["runs"].values():
            assert run["non_200"] == 0 and run["ok"] > 0
            assert run["server_breakdown_ms"]["decode_per_image"] is not None
    assert res["ratio_all_rounds"] == [r["ratio"] for r in res["rounds"]]
    assert res["answers"]["same_top"] is True


def test_others_load_is_the_machines_busy_time_less_the_server_and_wrk():
    stat = "cpu  {} 0 {} 500 7 0 0 {} 0 0\ncpu0 1 2 3\n"
    tick = os.sysconf("SC_CLK_TCK")
    before = machine_cpu_seconds(stat.format(0, 0, 0))
    after = machine_cpu_seconds(stat.format(3 * tick, 1 * tick, tick // 2))  # 4 s busy in 2 s
    assert after == pytest.approx((4.0, 0.5), abs=1 / tick)
    load = others_load(before, after, server_cpu_s=2.5, loadgen_share=0.25, wall_s=2.0)
    # 2 cores busy on average: 1.25 the server, 0.25 wrk, 0.5 everything else.
    assert load == {"others_cores": pytest.approx(0.5, abs=0.01), "steal_cores": 0.25}
