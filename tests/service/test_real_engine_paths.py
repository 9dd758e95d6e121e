"""The batcher's harder paths, on the real ONNX Runtime engine (the exported micro Swin).

The fake-engine tests pin these down in detail; here each runs once against OnnxEngine, so a
difference between the fake and ONNX Runtime (threading, dtypes, shapes) cannot hide behind
them. ``SlowEngine`` adds a fixed sleep before each real run, as the reliability harness does,
so the timing of queueing is decided by the test and not by the machine's speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import numpy as np
import pytest

from service.app import create_app
from service.engine import OnnxEngine
from service.settings import Settings
from tests.support import assert_same_predictions, until

pytestmark = pytest.mark.anyio


class SlowEngine:
    """OnnxEngine with ``delay_s`` of sleep before every run after warm-up; records each run's
    batch size, (start, end) in time.monotonic(), and the first pixel of every image it saw."""

    def __init__(self, engine: OnnxEngine, *, delay_s: float = 0.0) -> None:
        self.engine, self.delay_s = engine, delay_s
        self.manifest, self.provider = engine.manifest, engine.provider
        self.golden_text = engine.golden_text
        self.warmup_gate: threading.Event | None = None
        # When set, each run waits (10 s at most) for the barrier's other parties to start too.
        self.rendezvous: threading.Barrier | None = None
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
        time.sleep(self.delay_s)
        out = self.engine.run(batch)
        with self._lock:
            self.runs.append((len(batch), start, time.monotonic()))
            self.first_pixels.extend(float(x) for x in batch[:, 0, 0, 0])
        return out

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


async def test_real_engine_request_past_its_deadline_never_runs(real, serve, png):
    app, engine = real(delay_s=1.0, max_batch_size=1, parallel_batches=1)
    async with serve(app) as client:
        busy = asyncio.create_task(client.post("/classify", files={"file": png((0, 0, 0))}))
        await until(lambda: engine.started)
        late = await client.post("/classify?timeout_ms=100", files={"file": png((255, 255, 255))})
        answered = time.monotonic()
        assert (await busy).status_code == 200
    assert late.status_code == 503 and late.json()["error"]["code"] == "deadline_exceeded"
    assert answered < engine.runs[0][2]  # at its deadline, before the busy run ended
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
    app, engine = real(delay_s=0.5, max_batch_size=1, parallel_batches=1)
    async with serve(app) as client:
        busy = asyncio.create_task(client.post("/classify", files={"file": png((0, 0, 0))}))
        await until(lambda: engine.started)
        gone = asyncio.create_task(client.post("/classify", files={"file": png((255, 0, 0))}))
        await until(lambda: app.state.service.lifecycle.model.batcher.depth == 1)
        gone.cancel()  # the client went away while its image was queued
        assert (await busy).status_code == 200
        after = await client.post("/classify", files={"file": png((0, 255, 0))})
        depth = app.state.service.lifecycle.model.batcher.depth
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
