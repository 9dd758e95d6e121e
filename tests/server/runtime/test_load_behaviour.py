"""Batching, overload, deadlines, failure isolation and metrics, seen through HTTP (fake engine)."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.support import assert_same_predictions, metric, parse_metrics, until

pytestmark = pytest.mark.anyio

FAKE = "fake_swin_32"  # the fake engine's model: its name in every pipeline metric


async def _answered_at(request) -> tuple[httpx.Response, float]:
    """The response, and time.monotonic() when it arrived: compared with the fake engine's
    ``run_ends``, it tells whether an answer waited for the model, whatever the machine's load."""
    resp = await request
    return resp, time.monotonic()


async def test_concurrent_requests_form_batches_with_unbatched_results(
    make_app, make_engine, serve, pngs
):
    engine = make_engine(delay_s=0.02)
    imgs = pngs(16)
    async with serve(make_app(engine, max_batch_size=8, max_batch_delay_ms=30)) as client:
        batched = await asyncio.gather(
            *(client.post("/classify?top_k=10", files={"file": im}) for im in imgs)
        )
        samples = parse_metrics((await client.get("/metrics")).text)
        calls_batched = list(engine.calls)
        single = [await client.post("/classify?top_k=10", files={"file": im}) for im in imgs]
    assert all(r.status_code == 200 for r in batched)
    assert max(calls_batched) > 1, calls_batched
    # The batch-size histogram tells the same story: fewer runs than images.
    runs = metric(samples, "swin_batch_size_count", model=FAKE)
    assert runs == len(calls_batched) < 16
    assert metric(samples, "swin_batch_size_sum", model=FAKE) == 16
    for b, s in zip(batched, single, strict=True):
        assert_same_predictions(b.json()["results"], s.json()["results"])


async def test_overload_gives_fast_503_with_retry_after_and_the_rest_succeed(
    make_app, make_engine, serve, pngs
):
    engine = make_engine(delay_s=0.5)
    async with serve(
        make_app(engine, max_batch_size=1, queue_capacity=2, max_images_per_request=1)
    ) as client:
        outcomes = await asyncio.gather(
            *(_answered_at(client.post("/classify", files={"file": im})) for im in pngs(8))
        )
        samples = parse_metrics((await client.get("/metrics")).text)
    ok = [r for r, _ in outcomes if r.status_code == 200]
    rejected = [(r, dt) for r, dt in outcomes if r.status_code == 503]
    assert len(ok) + len(rejected) == 8
    assert len(ok) >= 3 and rejected
    for resp, answered in rejected:
        assert resp.json()["error"]["code"] == "overloaded"
        assert int(resp.headers["Retry-After"]) >= 1
        assert answered < engine.run_ends[0]  # refused at once, not after waiting for the model
    assert sum(engine.calls) == len(ok)
    assert metric(samples, "swin_rejections_total", reason="overloaded") == len(rejected)
    assert metric(samples, "swin_requests_total", endpoint="/classify", status="503") == len(
        rejected
    )


@pytest.mark.parametrize("how", ["header", "query", "server_default"])
async def test_request_past_its_deadline_is_503_and_never_runs(
    make_app, make_engine, serve, png, how
):
    engine = make_engine(delay_s=1.0)
    kw = {"request_timeout_ms": 100} if how == "server_default" else {}
    # One run slot: the busy request holds the model while the next one waits out its deadline.
    async with serve(make_app(engine, max_batch_size=1, parallel_batches=1, **kw)) as client:
        busy = asyncio.create_task(client.post("/classify", files={"file": png(color=(0, 0, 0))}))
        await until(lambda: engine.calls)
        url, headers = "/classify", {}
        if how == "header":
            headers["X-Request-Timeout-Ms"] = "100"
        elif how == "query":
            url += "?timeout_ms=100"
        else:
            url += "?timeout_ms=600000"  # asking for more than the server allows changes nothing
        resp, answered = await _answered_at(
            client.post(url, files={"file": png(color=(255, 255, 255))}, headers=headers)
        )
        assert (await busy).status_code == 200
        samples = parse_metrics((await client.get("/metrics")).text)
    assert resp.status_code == 503, resp.text
    assert resp.json()["error"]["code"] == "deadline_exceeded"
    assert "Retry-After" in resp.headers
    assert answered < engine.run_ends[0]  # answered at its deadline, not when the model got free
    assert engine.calls == [1]  # the white image never reached the engine
    assert metric(samples, "swin_rejections_total", reason="deadline_exceeded") == 1


async def test_failing_batch_affects_only_its_requests(make_app, make_engine, serve, pngs):
    engine = make_engine(fail=lambda index, batch: index == 0)
    async with serve(make_app(engine, max_batch_size=4, max_batch_delay_ms=50)) as client:
        first = await asyncio.gather(
            *(client.post("/classify", files={"file": im}) for im in pngs(3))
        )
        after = await asyncio.gather(
            *(client.post("/classify", files={"file": im}) for im in pngs(3))
        )
        ready = await client.get("/readyz")
    assert engine.calls[0] == 3
    assert [r.status_code for r in first] == [500] * 3
    assert all(r.json()["error"]["code"] == "inference_failed" for r in first)
    assert [r.status_code for r in after] == [200] * 3
    assert ready.status_code == 200  # an ordinary run error does not make the server unready


async def test_fatal_device_error_flips_readiness_and_calls_exit_hook(
    make_app, make_engine, serve, png
):
    fatal_seen: list[BaseException] = []
    engine = make_engine(fail=lambda index, batch: True, fatal=True)
    async with serve(make_app(engine, on_fatal=fatal_seen.append)) as client:
        resp = await client.post("/classify", files={"file": png()})
        ready = await client.get("/readyz")
        again = await client.post("/classify", files={"file": png()})
        health = await client.get("/healthz")
    assert resp.status_code == 500
    assert ready.status_code == 503 and ready.json()["error"]["code"] == "not_ready"
    assert again.status_code == 503
    assert health.status_code == 200
    assert len(fatal_seen) == 1
    assert engine.calls == [1]


async def test_metrics_parse_and_match_what_clients_saw(make_app, make_engine, serve, pngs):
    engine = make_engine()
    async with serve(make_app(engine)) as client:
        statuses = []
        for im in pngs(3):
            statuses.append((await client.post("/classify", files={"file": im})).status_code)
        statuses.append((await client.post("/classify", files={"file": b"junk"})).status_code)
        statuses.append(
            (await client.post("/classify?top_k=0", files={"file": pngs(1)[0]})).status_code
        )
        statuses.append(
            (await client.post("/features", files=[("file", im) for im in pngs(2)])).status_code
        )
        await client.get("/healthz")
        text = (await client.get("/metrics")).text
    samples = parse_metrics(text)
    assert statuses == [200, 200, 200, 400, 422, 200]
    assert metric(samples, "swin_requests_total", endpoint="/classify", status="200") == 3
    assert metric(samples, "swin_requests_total", endpoint="/classify", status="400") == 1
    assert metric(samples, "swin_requests_total", endpoint="/classify", status="422") == 1
    assert metric(samples, "swin_requests_total", endpoint="/features", status="200") == 1
    assert metric(samples, "swin_requests_total", endpoint="/healthz", status="200") == 1
    assert metric(samples, "swin_rejections_total", reason="invalid_image") == 1
    assert metric(samples, "swin_rejections_total", reason="validation_error") == 1
    assert metric(samples, "swin_images_total", model=FAKE, outcome="ok") == 5 == sum(engine.calls)
    decodes = metric(samples, "swin_decode_seconds_count", model=FAKE)
    assert decodes == 6  # 3 + junk + 2: every decode attempt
    assert metric(samples, "swin_queue_wait_seconds_count", model=FAKE) == 5
    assert metric(samples, "swin_request_duration_seconds_count", endpoint="/classify") == 5
    assert metric(samples, "swin_queue_depth", model=FAKE) == 0
    assert metric(samples, "swin_ready") == 1
    assert (
        metric(
            samples,
            "swin_model_info",
            model=FAKE,
            variant="fake_swin_32",
            precision="fp32",
            provider="FakeExecutionProvider",
            weights="random",
        )
        == 1
    )


async def test_unknown_paths_share_one_metric_label(make_app, serve):
    async with serve(make_app()) as client:
        for i in range(5):
            await client.get(f"/random-{i}")
        text = (await client.get("/metrics")).text
    assert "random-" not in text
    assert metric(parse_metrics(text), "swin_requests_total", endpoint="other", status="404") == 5


async def test_healthz_stays_fast_while_the_model_is_busy(make_app, make_engine, serve, pngs):
    engine = make_engine(delay_s=1.0)
    async with serve(make_app(engine, max_batch_size=1)) as client:
        busy = [asyncio.create_task(client.post("/classify", files={"file": im})) for im in pngs(2)]
        await until(lambda: engine.calls)
        health, answered = await _answered_at(client.get("/healthz"))
        await asyncio.gather(*busy)
    assert health.status_code == 200
    assert answered < engine.run_ends[0]  # answered while the model was still busy
