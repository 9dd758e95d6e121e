"""``python -m bench overload-refusal``: how fast the server refuses work it has no room for.

docs/RELIABILITY.md promises that a full queue is answered 503 at once ("well under 100 ms"),
never after a wait. That is a time, so it is measured here rather than asserted by a test: on a
loaded 2-core CI machine the test's client and the server fight for the cores, and a time bound
there fails at random (tests/reliability/test_overload.py asserts what the server decides: only
200s and 503s, every refusal counted).

The real server (``swin-serve``, this checkout, the bench's Swin-T fp32 export) runs with a
queue of ``QUEUE_BATCHES`` batches, so that overload reaches it within a second. Its capacity is
measured first (closed loop, ``CALIBRATE_CLIENTS`` clients); then it is offered ``OFFER`` times
that, open loop, for ``duration_s`` on 127.0.0.1 (bench.loadclient: one request per connection,
only the status line parsed). The figures are the refusals' (503 ``overloaded``) latencies: the
server's own (its Server-Timing "total", which leaves out the client's waits for a CPU) and the
client's, p50, p99 and max. The run passes when only 200s and 503s came back, both did, and the
server-side p99 of the refusals is under ``BUDGET_S``.

Results: ``overload_refusal.json`` in bench/results/ (``--quick``: raw/quick/). Times are in
seconds unless a name says ``_ms``.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from pathlib import Path
from typing import Any

from bench.common import SAMPLE_IMAGE, percentile, progress
from bench.config import OVERLOAD_REFUSAL, OverloadRefusal
from bench.loadclient import Outcome, build_request, open_loop
from bench.run_record import Run, RunClock, write_results
from bench.service import running, service_server
from bench.soak import measure_capacity

OFFER = 2.0  # times the measured capacity
QUEUE_BATCHES = 2  # queue capacity, in batches of the server's (CPU) default size
MAX_BATCH_SIZE = 4  # the server's CPU default, set explicitly so the queue size is known
BUDGET_S = 0.1  # server-side p99 of a refusal (docs/RELIABILITY.md: "well under 100 ms")
CALIBRATE_CLIENTS = 8


def server_env() -> dict[str, str]:
    return {
        "SWIN_MAX_BATCH_SIZE": str(MAX_BATCH_SIZE),
        "SWIN_QUEUE_CAPACITY": str(QUEUE_BATCHES * MAX_BATCH_SIZE),
        "SWIN_MAX_IMAGES_PER_REQUEST": "1",
    }


def summarise(seconds: list[float]) -> dict[str, float | None]:
    """p50, p99 and max in ms (None when there is nothing to summarise)."""
    if not seconds:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    return {
        "p50_ms": round(percentile(seconds, 50) * 1e3, 2),
        "p99_ms": round(percentile(seconds, 99) * 1e3, 2),
        "max_ms": round(max(seconds) * 1e3, 2),
    }


def judge(outcomes: list[Outcome]) -> dict[str, Any]:
    """The figures of one overload run, and what (if anything) makes it fail."""
    by_status = Counter(str(o.status) for o in outcomes)
    by_code = Counter(o.code for o in outcomes if o.status == 503)
    refused = [o for o in outcomes if o.status == 503 and o.code == "overloaded"]
    server_s = [o.server_s for o in refused if o.server_s is not None]
    server = summarise(server_s)
    problems = []
    if set(by_status) - {"200", "503"}:
        problems.append(f"statuses other than 200 and 503: {dict(by_status)}")
    if not refused or not by_status["200"]:
        problems.append(f"not overloaded: {dict(by_status)} (offer more, or a smaller queue)")
    if len(server_s) < len(refused):
        problems.append(f"{len(refused) - len(server_s)} refusals without Server-Timing")
    if server["p99_ms"] is not None and server["p99_ms"] > BUDGET_S * 1e3:
        problems.append(f"refusal p99 {server['p99_ms']} ms (server-side) > {BUDGET_S * 1e3:g} ms")
    starts = [o.started for o in outcomes]
    span_s = max(starts) - min(starts)
    return {
        "requests": len(outcomes),
        # What the client managed to start: below the offer, it was short of CPU itself.
        "started_per_s": round((len(outcomes) - 1) / span_s, 2) if span_s > 0 else None,
        "by_status": dict(by_status),
        "refusals_by_code": dict(by_code),
        "refusal_server": server,
        "refusal_client": summarise([o.seconds for o in refused]),
        "ok_client": summarise([o.seconds for o in outcomes if o.status == 200]),
        "budget_ms": BUDGET_S * 1e3,
        "problems": problems,
        "status": "INVALID" if problems and not refused else ("FAIL" if problems else "PASS"),
    }


def run(
    model: Path,
    cfg: OverloadRefusal,
    server_cpus: list[int] | None,
    loadgen_cpus: list[int] | None,
) -> dict[str, Any]:
    server = service_server(model, server_cpus, server_env())
    request = build_request("/classify", SAMPLE_IMAGE.read_bytes(), "image/jpeg")
    if loadgen_cpus:
        os.sched_setaffinity(0, loadgen_cpus)  # the client never competes with a pinned server
    with running([server]):
        capacity = asyncio.run(
            measure_capacity(server.port, request, cfg.calibrate_s, CALIBRATE_CLIENTS)
        )
        rate = OFFER * capacity
        progress(f"capacity {capacity:.1f} images/s; offering {rate:.1f}/s open loop")

        def offer(seconds: float) -> list[Outcome]:
            requests = [request] * max(1, int(rate * seconds))
            return asyncio.run(open_loop("127.0.0.1", server.port, requests, rate))

        offer(cfg.warmup_s)
        outcomes = offer(cfg.duration_s)
    return {
        "server": server.label,
        "server_env": server_env(),
        "capacity_img_s": round(capacity, 2),
        "offered_per_s": round(rate, 2),
        **judge(outcomes),
    }


def main(run: Run, model: Path | None = None) -> int:
    out_dir, quick = run.out_dir, run.quick
    server_cpus, loadgen_cpus = run.server_cpus, run.loadgen_cpus
    if model is None:
        from bench.model_files import ensure_models

        model = ensure_models().fp32
    cfg = OVERLOAD_REFUSAL.pick(quick)
    clock = RunClock()
    result = run(model, cfg, server_cpus, loadgen_cpus)
    constants = {"offer": OFFER, "calibrate_clients": CALIBRATE_CLIENTS}
    cpus = {"server_cpus": server_cpus, "client_cpus": loadgen_cpus}
    meta = clock.meta(quick=quick, config=cfg, constants=constants, model=model.name, **cpus)
    server = result["refusal_server"]
    progress(
        f"{result['status']}: {result['by_status']}; refusal p50 {server['p50_ms']} ms, p99 "
        f"{server['p99_ms']} ms server-side (client p99 {result['refusal_client']['p99_ms']} ms); "
        f"budget {BUDGET_S * 1e3:g} ms"
    )
    for problem in result["problems"]:
        progress(f"  {problem}")
    write_results(out_dir, "overload_refusal", {"meta": meta, "overload_refusal": result})
    return 0 if result["status"] == "PASS" else 1
