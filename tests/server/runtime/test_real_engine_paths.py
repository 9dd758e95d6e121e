"""The batcher's harder paths, on the real ONNX Runtime engine (the exported micro Swin).

The fake-engine tests pin these down in detail; here each runs once against OnnxEngine, so a
difference between the fake and ONNX Runtime (threading, dtypes, shapes) cannot hide behind
them. ``SlowEngine`` holds each real run at a gate the test opens (or adds a fixed sleep, as the
reliability harness does), so the timing of queueing is decided by the test and not by the
machine's speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import numpy as np
import pytest

from swin_serve.server.http.app import create_app
from swin_serve.server.runtime.engine import OnnxEngine
from swin_serve.server.settings import Settings
from tests.support import assert_same_predictions, eventually, server_seconds, within
from tests.support.fakes import default_model

pytestmark = pytest.mark.anyio

# How late a deadline refusal may come. The deadline is a timer on the event loop, which a loaded
# machine may wake late; but a timer never fires early, so a refusal that is really 0.5 s late
# arrives at least 0.5 s after its deadline and fails any bound below that, every time. 0.3 s
# gives the machine three times the "well under 100 ms" RELIABILITY.md asks of a 503, and still
# catches a refusal 0.3 s late.
REFUSAL_LATENESS_S = 0.3


class SlowEngine:
    """OnnxEngine with ``delay_s`` of sleep before every run after warm-up, and a wait at ``gate``
    when there is one; records each run's batch size, (start, end) in time.monotonic(), and the
    first pixel of every image it saw."""

    def __init__(self, engine: OnnxEngine, *, delay_s: float = 0.0) -> None:
        self.engine, self.delay_s = engine, delay_s
        self.manifest, self.provider = engine.manifest, engine.provider
        self.golden_text = engine.golden_text
        self.warmup_gate: threading.Event | None = None
        # When set, each run waits (10 s at most) for the barrier's other parties to start too.
        self.rendezvous: threading.Barrier | None = None
        # When set, each run waits (30 s at most) until the test opens it: the model stays busy
        # for as long as the test decides, however fast or loaded the machine.
        self.gate: threading.Event | None = None
        self.warmed = False
        self.started: list[int] = []  # batch sizes, as each run (after warm-up) began
        self.runs: list[tuple[int, float, float]] = []
        self.first_pixels: list[float] = []
        self._lock = threading.Lock()

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if not self.warmed:  # the start-up self-check
            return self.engine.run(batch)
        start = time.monotonic()
        with self._lock:
            self.started.append(len(batch))
        if self.rendezvous is not None:
            with contextlib.suppress(threading.BrokenBarrierError):
                self.rendezvous.wait(timeout=10)
        if self.gate is not None:
            self.gate.wait(timeout=30)
        time.sleep(self.delay_s)
        out = self.engine.run(batch)
        with self._lock:
            self.runs.append((len(batch), start, time.monotonic()))
            self.first_pixels.extend(float(x) for x in batch[:, 0, 0, 0])
        return out

    def __getattr__(self, name: str):
        return getattr(self.engine, name)  # precision, layout, runners, ...: the real engine's

    def warmup(self, batch_sizes: list[int]) -> None:
        if self.warmup_gate is not None:
            assert self.warmup_gate.wait(timeout=30)
        self.engine.warmup(batch_sizes)
        self.warmed = True


@pytest.fixture
def real(tiny_model_path):
    def factory(*, delay_s: float = 0.0, **overrides) -> tuple:
        opts = {
            "model_path": tiny_model_path,
            "providers": "cpu",
            "max_batch_size": 4,
            "max_batch_delay_ms": 20,
            "queue_capacity": 32,
            "max_images_per_request": 8,
        }
        opts.update(overrides)
        settings = Settings(**opts)
        engine = SlowEngine(OnnxEngine.load(settings), delay_s=delay_s)
        return create_app(settings, engine), engine

    return factory


async def test_real_engine_refuses_a_request_at_its_deadline_and_never_runs_it(real, serve, png):
    app, engine = real(max_batch_size=1, parallel_batches=1)
    engine.gate = threading.Event()  # the busy run stays on the model until the test opens it
    timeout_s = 0.1
    async with serve(app) as client:
        busy = asyncio.create_task(client.post("/classify", files={"file": png((0, 0, 0))}))
        await eventually(lambda: engine.started, "the busy image to reach ONNX Runtime")
        late = await within(
            client.post(
                f"/classify?timeout_ms={timeout_s * 1e3:.0f}", files={"file": png((255, 255, 255))}
            ),
            "the late request's answer",
        )
        # The busy run is still held, so its end cannot have freed the slot or woken anyone: the
        # refusal came from the deadline alone.
        held = not engine.gate.is_set() and not engine.runs and not busy.done()
        engine.gate.set()
        assert (await within(busy, "the busy image's answer once released")).status_code == 200
    assert held, "the refusal came after the busy run ended"
    error = late.json()["error"]
    assert late.status_code == 503 and error["code"] == "deadline_exceeded"
    assert "still queued" in error["message"]  # refused in the queue, not while decoding
    # The server's own time for the request (from before its deadline was set, so this
    # overstates the lateness, never understates it), less the timeout it asked for.
    lateness = server_seconds(late) - timeout_s
    assert lateness < REFUSAL_LATENESS_S, f"refused {lateness:.3f} s after its deadline"
    assert [n for n, *_ in engine.runs] == [1]  # the white image never reached ONNX Runtime


async def test_real_engine_splits_a_request_larger_than_the_batch(real, serve, pngs):
    app, engine = real(max_batch_size=2)
    images = pngs(5)
    async with serve(app) as client:
        multi = await client.post("/classify", files=[("file", im) for im in images])
        singles = [await client.post("/classify", files={"file": im}) for im in images]
    assert multi.status_code == 200
    assert max(n for n, *_ in engine.runs) <= 2
    assert sum(n for n, *_ in engine.runs) == 5 + 5
    assert_same_predictions(multi.json()["results"], [s.json()["results"][0] for s in singles])


async def test_real_engine_never_runs_a_cancelled_queued_request(real, serve, png):
    app, engine = real(max_batch_size=1, parallel_batches=1)
    engine.gate = threading.Event()  # the busy run stays on the model until the test opens it
    async with serve(app) as client:
        busy = asyncio.create_task(client.post("/classify", files={"file": png((0, 0, 0))}))
        await eventually(lambda: engine.started, "the busy image to reach ONNX Runtime")
        gone = asyncio.create_task(client.post("/classify", files={"file": png((255, 0, 0))}))
        await eventually(
            lambda: default_model(app.state.service.lifecycle).batcher.depth == 1,
            "the second image to queue behind the busy one",
        )
        gone.cancel()  # the client went away while its image was queued
        engine.gate.set()
        assert (await within(busy, "the busy image's answer once released")).status_code == 200
        after = await client.post("/classify", files={"file": png((0, 255, 0))})
        depth = default_model(app.state.service.lifecycle).batcher.depth
    assert after.status_code == 200
    assert [n for n, *_ in engine.runs] == [1, 1]  # the busy image and the one after
    assert depth == 0


async def test_real_engine_runs_parallel_batches_at_once(real, serve, pngs):
    app, engine = real(max_batch_size=1, parallel_batches=2)
    images = pngs(2)
    async with serve(app) as client:
        # Two runs meet inside the engine only if the batcher really runs them at once;
        # serialised, the first would wait out the barrier's timeout and they would not overlap.
        engine.rendezvous = threading.Barrier(2)
        both = await asyncio.gather(
            *(client.post("/classify", files={"file": im}) for im in images)
        )
        engine.rendezvous = None
        singles = [await client.post("/classify", files={"file": im}) for im in images]
    assert [r.status_code for r in both] == [200, 200]
    (_, start_a, end_a), (_, start_b, end_b) = engine.runs[:2]
    assert max(start_a, start_b) < min(end_a, end_b)  # the two runs overlapped
    for b, s in zip(both, singles, strict=True):
        assert_same_predictions(b.json()["results"], s.json()["results"])


async def test_real_engine_is_not_ready_until_warm_up_ends(real, serve, png):
    app, engine = real()
    engine.warmup_gate = threading.Event()
    async with serve(app, wait_for_warm_up=False) as client:
        before = await client.get("/readyz")
        refused = await client.post("/classify", files={"file": png()})
        engine.warmup_gate.set()
        await app.state.service.lifecycle.wait_for_warm_up()
        after = await client.get("/readyz")
        served = await client.post("/classify", files={"file": png()})
    assert before.status_code == 503 and before.json()["error"]["code"] == "not_ready"
    assert refused.status_code == 503
    assert after.status_code == 200 and served.status_code == 200
    assert [n for n, *_ in engine.runs] == [1]  # only the image sent once ready
