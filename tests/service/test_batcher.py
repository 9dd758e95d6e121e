"""The dynamic batcher on its own: batch forming, admission, deadlines, isolation, drain."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from service.batcher import (
    Batcher,
    DeadlineExceeded,
    DeviceFailed,
    Draining,
    InferenceFailed,
    Overloaded,
)
from service.metrics import Metrics
from tests.support import until

pytestmark = pytest.mark.anyio


def _img(value: float) -> np.ndarray:
    return np.full((3, 32, 32), value, dtype=np.float32)  # 3, S, S


def _batcher(engine, **kw) -> Batcher:
    opts = {
        "max_batch_size": 4,
        "max_batch_delay_s": 0.02,
        "queue_capacity": 16,
        "metrics": Metrics().for_model("m"),
    }
    opts.update(kw)
    return Batcher(engine, **opts)


def _far() -> float:
    return time.monotonic() + 10.0


async def test_concurrent_submits_share_batches_up_to_max(make_engine):
    engine = make_engine()
    b = _batcher(engine, max_batch_size=4)
    b.start()
    results = await asyncio.gather(*(b.submit([_img(i)], _far()) for i in range(10)))
    await b.drain(5)
    assert sum(engine.calls) == 10
    assert max(engine.calls) == 4  # cut at max_batch_size ...
    assert len(engine.calls) == 3  # ... so 4 + 4 + 2, not 10 runs
    for i, (r,) in enumerate(results):  # each caller got its own row back
        np.testing.assert_allclose(r.outputs["embedding"][:3], i)
        assert r.batch_size in (2, 4)


async def test_lone_request_waits_at_most_the_batch_delay(make_engine):
    engine = make_engine()
    b = _batcher(engine, max_batch_delay_s=0.05)
    b.start()
    t0 = time.monotonic()
    (r,) = await b.submit([_img(1)], _far())
    elapsed = time.monotonic() - t0
    await b.drain(5)
    assert engine.calls == [1]
    assert 0.04 <= elapsed < 0.5
    assert r.queue_wait_s >= 0.04


async def test_multi_image_request_counts_per_image_and_splits(make_engine):
    engine = make_engine()
    b = _batcher(engine, max_batch_size=4)
    b.start()
    results = await b.submit([_img(i) for i in range(10)], _far())
    await b.drain(5)
    assert engine.calls == [4, 4, 2]
    assert [float(r.outputs["embedding"][0]) for r in results] == list(range(10))


async def test_full_queue_rejects_at_once(make_engine):
    engine = make_engine(delay_s=1.0)
    b = _batcher(engine, max_batch_size=1, queue_capacity=3)
    b.start()
    first = asyncio.create_task(b.submit([_img(0)], _far()))
    await until(lambda: engine.calls)  # the first image is now running, the queue is empty
    queued = asyncio.create_task(b.submit([_img(1), _img(2), _img(3)], _far()))
    await asyncio.sleep(0)
    assert b.depth == 3
    with pytest.raises(Overloaded):
        await b.submit([_img(4)], _far())
    assert engine.run_ends == []  # refused while the first run was still going: no waiting
    await asyncio.gather(first, queued)
    await b.drain(5)
    assert sum(engine.calls) == 4  # the rejected image never ran


async def test_expired_request_never_reaches_the_engine(make_engine):
    engine = make_engine(delay_s=1.0)
    b = _batcher(engine, max_batch_size=1)
    b.start()
    busy = asyncio.create_task(b.submit([_img(0)], _far()))
    await until(lambda: engine.calls)
    t0 = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        await b.submit([_img(99)], time.monotonic() + 0.1)
    assert time.monotonic() - t0 >= 0.09  # not before its deadline
    assert engine.run_ends == []  # and not after the busy run either: it never waited for it
    await busy
    await b.drain(5)
    assert engine.calls == [1]
    assert all(float(m[0]) != 99 for m in engine.images_seen)
    assert b.depth == 0


async def test_already_expired_request_is_refused_without_running(make_engine):
    engine = make_engine()
    b = _batcher(engine)
    b.start()
    with pytest.raises(DeadlineExceeded):
        await b.submit([_img(1)], time.monotonic() - 1)
    await asyncio.sleep(0.05)
    await b.drain(5)
    assert engine.calls == []


async def test_failed_batch_fails_only_its_requests(make_engine):
    engine = make_engine(fail=lambda index, batch: index == 0)
    b = _batcher(engine, max_batch_size=2, max_batch_delay_s=0.05)
    b.start()
    first = await asyncio.gather(
        *(b.submit([_img(i)], _far()) for i in range(2)), return_exceptions=True
    )
    later = await asyncio.gather(
        *(b.submit([_img(i)], _far()) for i in range(2)), return_exceptions=True
    )
    await b.drain(5)
    assert all(isinstance(r, InferenceFailed) for r in first)
    assert all(isinstance(r, list) for r in later)
    assert engine.calls == [2, 2]


async def test_wrong_row_count_from_engine_fails_the_batch(make_engine):
    engine = make_engine()
    engine.outputs_for = lambda batch: {"logits": np.zeros((1, 10), np.float32)}  # always 1 row
    b = _batcher(engine, max_batch_delay_s=0.05)
    b.start()
    results = await asyncio.gather(
        *(b.submit([_img(i)], _far()) for i in range(2)), return_exceptions=True
    )
    await b.drain(5)
    assert engine.calls == [2]
    assert all(isinstance(r, InferenceFailed) and "row" in str(r) for r in results)


async def test_fatal_engine_error_calls_hook_and_stops_admission(make_engine):
    seen: list[BaseException] = []
    engine = make_engine(fail=lambda index, batch: True, fatal=True)
    b = _batcher(engine, on_fatal=seen.append)
    b.start()
    with pytest.raises(InferenceFailed):
        await b.submit([_img(1)], _far())
    assert len(seen) == 1 and "illegal memory access" in str(seen[0])
    with pytest.raises(DeviceFailed):
        await b.submit([_img(1)], _far())
    await b.drain(5)


async def test_cancelled_request_is_not_run(make_engine):
    engine = make_engine(delay_s=0.2)
    b = _batcher(engine, max_batch_size=1)
    b.start()
    busy = asyncio.create_task(b.submit([_img(0)], _far()))
    await until(lambda: engine.calls)
    gone = asyncio.create_task(b.submit([_img(7)], _far()))
    await until(lambda: b.depth == 1)
    gone.cancel()  # the client disconnected while queued
    await busy
    await asyncio.sleep(0.05)
    await b.drain(5)
    assert engine.calls == [1]
    assert b.depth == 0


async def test_drain_finishes_queued_work_then_refuses(make_engine):
    engine = make_engine(delay_s=0.05)
    b = _batcher(engine, max_batch_size=2)
    b.start()
    tasks = [asyncio.create_task(b.submit([_img(i)], _far())) for i in range(6)]
    await asyncio.sleep(0.01)
    assert await b.drain(5) is True
    # Every accepted image completed: its submitter only needs a turn of the loop to return.
    results = await asyncio.wait_for(asyncio.gather(*tasks), 0.5)
    assert [len(r) for r in results] == [1] * 6
    assert sum(engine.calls) == 6
    with pytest.raises(Draining):
        await b.submit([_img(1)], _far())


class _OverlapEngine:
    """Records how many runs were on the model at once; each run waits briefly for company."""

    def __init__(self, inner):
        self.inner, self.now, self.most = inner, 0, 0
        self.lock = threading.Lock()

    def run(self, batch):
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        time.sleep(0.1)
        with self.lock:
            self.now -= 1
        return self.inner.outputs_for(batch)


async def test_parallel_slots_run_batches_side_by_side_and_batches_grow_under_load(make_engine):
    engine = _OverlapEngine(make_engine())
    b = _batcher(engine, max_batch_size=4, max_batch_delay_s=0.0, parallel_batches=2)
    b.start()
    results = await asyncio.gather(*(b.submit([_img(i)], _far()) for i in range(12)))
    await b.drain(5)
    assert engine.most == 2  # two runs overlapped, never more than the slots
    for i, (r,) in enumerate(results):
        np.testing.assert_allclose(r.outputs["embedding"][:3], i)
    # With both slots busy the rest queued and went in larger batches, not 12 runs of 1.
    assert max(r.batch_size for (r,) in results) > 1


async def test_one_slot_never_overlaps_runs(make_engine):
    engine = _OverlapEngine(make_engine())
    b = _batcher(engine, max_batch_size=2, max_batch_delay_s=0.0, parallel_batches=1)
    b.start()
    await asyncio.gather(*(b.submit([_img(i)], _far()) for i in range(6)))
    await b.drain(5)
    assert engine.most == 1


async def test_drain_waits_for_every_running_batch(make_engine):
    engine = _OverlapEngine(make_engine())
    b = _batcher(engine, max_batch_size=1, max_batch_delay_s=0.0, parallel_batches=3)
    b.start()
    pending = [asyncio.ensure_future(b.submit([_img(i)], _far())) for i in range(5)]
    await until(lambda: engine.now)  # some batches are on the model now
    assert await b.drain(5)
    assert all(p.done() and not p.exception() for p in pending)


async def test_fatal_error_answers_queued_images_with_device_failed_instead_of_running_them(
    make_engine,
):
    engine = make_engine(delay_s=0.1, fail=lambda index, batch: True, fatal=True)
    b = _batcher(engine, max_batch_size=1, max_batch_delay_s=0.0, parallel_batches=1)
    b.start()
    first = asyncio.ensure_future(b.submit([_img(0)], _far()))
    await until(lambda: engine.calls)  # the first image is on the (failing) device
    queued = [asyncio.ensure_future(b.submit([_img(i)], _far())) for i in range(1, 4)]
    with pytest.raises(InferenceFailed):
        await first
    for q in queued:
        with pytest.raises(DeviceFailed):
            await q
    assert engine.calls == [1]  # the broken device saw only the first batch
    await b.drain(5)


async def test_drain_that_runs_out_of_time_answers_running_and_queued_images(make_engine):
    engine = make_engine(delay_s=0.5)
    b = _batcher(engine, max_batch_size=1, max_batch_delay_s=0.0, parallel_batches=1)
    b.start()
    pending = [asyncio.ensure_future(b.submit([_img(i)], _far())) for i in range(3)]
    await until(lambda: engine.calls and b.depth == 2)  # one on the model, two queued
    assert await b.drain(0.1) is False
    done, not_done = await asyncio.wait(pending, timeout=2)
    assert not not_done, "a request was left waiting forever"
    assert all(isinstance(p.exception(), Draining) for p in done)
