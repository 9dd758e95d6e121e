"""The lifecycle on its own terms: phases, the readiness gauge, the drain deadline, a signal."""

from __future__ import annotations

import asyncio
import signal
import threading

import pytest

from swin_serve.server.lifecycle import Phase
from tests.support import eventually, metric, parse_metrics, until, within
from tests.support.fakes import default_model

pytestmark = pytest.mark.anyio


def _ready_gauge(lifecycle) -> float:
    return metric(parse_metrics(lifecycle.metrics.render().decode()), "swin_ready")


async def test_phases_follow_load_warm_up_drain_and_stop_with_the_readiness_gauge(
    make_app, make_engine
):
    gate = threading.Event()
    app = make_app(make_engine(warmup_gate=gate))
    lifecycle = app.state.service.lifecycle
    seen = [(lifecycle.phase, _ready_gauge(lifecycle))]
    async with app.router.lifespan_context(app):
        seen.append((lifecycle.phase, _ready_gauge(lifecycle)))
        gate.set()
        await lifecycle.wait_for_warm_up()
        seen.append((lifecycle.phase, _ready_gauge(lifecycle)))
        lifecycle.begin_drain()
        seen.append((lifecycle.phase, _ready_gauge(lifecycle)))
    seen.append((lifecycle.phase, _ready_gauge(lifecycle)))
    assert seen == [
        (Phase.LOADING, 0),
        (Phase.WARMING, 0),
        (Phase.READY, 1),
        (Phase.DRAINING, 0),
        (Phase.STOPPED, 0),
    ]


async def test_a_warm_up_that_fails_is_fatal_and_never_ready(make_app, make_engine, serve):
    engine = make_engine()

    def broken_warmup(batch_sizes):
        raise RuntimeError("cannot run a zero batch")

    engine.warmup = broken_warmup
    failures: list[BaseException] = []
    app = make_app(engine, on_fatal=failures.append)
    async with serve(app) as client:  # waits for the warm-up: it ends, in failure
        ready = await client.get("/readyz")
        refused = await client.post("/classify", files={"file": b"x"})
    assert app.state.service.lifecycle.phase is Phase.FATAL
    assert [str(f) for f in failures] == ["cannot run a zero batch"]
    assert ready.status_code == 503 and ready.json()["error"]["code"] == "not_ready"
    assert refused.status_code == 503
    assert engine.calls == []


async def test_the_drain_deadline_answers_unfinished_requests_while_the_model_is_still_busy(
    make_app, gated_engine, serve, pngs
):
    # One image held on the model until the test releases it, one queued behind it; a drain
    # budget of 1 s. While the run is held, only the drain deadline can answer either of them.
    engine, release = gated_engine
    app = make_app(engine, max_batch_size=1, parallel_batches=1, drain_timeout_s=1.0)
    lifecycle = app.state.service.lifecycle
    async with serve(app) as client:
        requests = [
            asyncio.create_task(client.post("/classify", files={"file": im})) for im in pngs(2)
        ]
        await eventually(
            lambda: engine.calls and default_model(lifecycle).batcher.depth == 1,
            "one image on the model and one queued behind it",
        )
        in_flight_at_drain = not release.is_set() and not any(r.done() for r in requests)
        lifecycle.begin_drain()  # what SIGTERM does; nothing else happens until the deadline
        answers = await within(asyncio.gather(*requests), "the drain deadline's answers")
        answered_while_held = not release.is_set()
        release.set()  # the run ends only now; its answer has nobody left to go to
    assert in_flight_at_drain, "the drain began after a request had already ended"
    assert answered_while_held, "the requests were answered only once the run ended"
    assert [r.status_code for r in answers] == [503, 503]
    assert {r.json()["error"]["code"] for r in answers} == {"draining"}
    # The drain deadline's own words: not a refusal at the door, not the run's end.
    assert all("drain budget ran out" in r.json()["error"]["message"] for r in answers)


async def test_a_signal_begins_the_drain_on_the_event_loop(make_app, serve):
    app = make_app()
    lifecycle = app.state.service.lifecycle
    seen_in_handler: list[bool] = []

    def handler(sig, frame) -> None:
        lifecycle.request_drain()
        seen_in_handler.append(lifecycle.draining)  # not yet: the loop runs the transition

    previous = signal.signal(signal.SIGUSR1, handler)
    try:
        async with serve(app) as client:
            signal.raise_signal(signal.SIGUSR1)
            await until(lambda: lifecycle.draining)
            ready = await client.get("/readyz")
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert seen_in_handler == [False]
    assert ready.status_code == 503 and ready.json()["error"]["code"] == "draining"


async def test_ready_hooks_run_once_warm_up_has_made_the_server_ready(make_app, serve):
    app = make_app()
    lifecycle = app.state.service.lifecycle
    phases_seen: list[str] = []
    lifecycle.on_ready(lambda: phases_seen.append(lifecycle.phase))
    async with serve(app) as client:
        await lifecycle.wait_for_warm_up()
        assert (await client.get("/readyz")).status_code == 200
    assert phases_seen == ["ready"]


async def test_a_dead_device_is_reported_once_however_many_runs_fail(make_app, serve):
    app = make_app()
    lifecycle = app.state.service.lifecycle
    hooks: list[str] = []
    lifecycle.on_fatal(lambda exc: hooks.append(str(exc)))
    async with serve(app):
        lifecycle.fail(RuntimeError("first batch"))
        lifecycle.fail(RuntimeError("second batch"))  # a parallel run on the same dead device
    assert hooks == ["first batch"] and lifecycle.phase is Phase.FATAL


async def test_waiting_for_warm_up_ends_when_stop_cancels_it(make_app, make_engine):
    gate = threading.Event()  # warm-up never finishes on its own
    app = make_app(make_engine(warmup_gate=gate))
    lifecycle = app.state.service.lifecycle
    try:
        async with app.router.lifespan_context(app):
            assert lifecycle.phase is Phase.WARMING
        await asyncio.wait_for(lifecycle.wait_for_warm_up(), timeout=5)  # stop() cancelled it
    finally:
        gate.set()  # let the worker thread go
    assert not lifecycle.ready
