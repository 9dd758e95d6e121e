"""HTTP behaviour on a fake engine: endpoints, inputs, errors, headers, OpenAPI."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from tests.support import assert_same_predictions, metric, parse_metrics, until
from tests.support.fakes import default_model

pytestmark = pytest.mark.anyio


def _assert_error(resp, status: int, code: str) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body


async def test_healthz_and_readyz_ok_after_warmup(make_app, serve):
    app = make_app()
    async with serve(app) as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        assert (await client.get("/readyz")).json() == {"status": "ready"}
        assert default_model(app.state.service.lifecycle).engine.warmup_sizes == [1, 2, 4, 8]


async def test_readyz_is_503_until_warm_and_while_draining(make_app, make_engine, serve):
    gate = threading.Event()
    engine = make_engine(warmup_gate=gate)
    app = make_app(engine)
    async with serve(app, wait_for_warm_up=False) as client:
        lifecycle = app.state.service.lifecycle
        resp = await client.get("/readyz")  # warm-up is still blocked
        _assert_error(resp, 503, "not_ready")
        assert resp.headers["Retry-After"]
        # Requests are refused fast while not ready, and never reach the engine.
        _assert_error(await client.post("/classify", files={"file": b"x"}), 503, "not_ready")
        gate.set()
        await lifecycle.wait_for_warm_up()
        assert (await client.get("/readyz")).status_code == 200
        lifecycle.begin_drain()
        _assert_error(await client.get("/readyz"), 503, "draining")
        assert (await client.get("/healthz")).status_code == 200  # liveness unaffected
    assert engine.calls == []


async def test_requests_reaching_a_draining_server_still_complete(
    make_app, make_engine, serve, png
):
    engine = make_engine(delay_s=0.2)
    app = make_app(engine)
    async with serve(app) as client:
        running = asyncio.create_task(client.post("/classify", files={"file": png()}))
        await until(lambda: engine.calls)
        app.state.service.lifecycle.begin_drain()  # what SIGTERM does
        late = await client.post("/classify", files={"file": png()})  # on an open connection
        assert (await running).status_code == 200
        assert late.status_code == 200
        # What the lifespan does after uvicorn drained:
        await default_model(app.state.service.lifecycle).batcher.drain(5)
        _assert_error(await client.post("/classify", files={"file": png()}), 503, "draining")
    assert sum(engine.calls) == 2  # both ran; the one after drain() never did


async def test_classify_multipart_returns_sorted_softmax_topk(make_app, serve, png):
    async with serve(make_app()) as client:
        resp = await client.post("/classify?top_k=3", files={"file": ("a.png", png(), "image/png")})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["model"] == "fake_swin_32"
    assert "RANDOM" in body["warning"]
    (result,) = body["results"]
    preds = result["predictions"]
    assert len(preds) == 3
    scores = [p["score"] for p in preds]
    assert scores == sorted(scores, reverse=True)
    assert all(0 < s < 1 for s in scores)
    assert all(p["label"] == f"class{p['index']}" for p in preds)


async def test_classify_full_topk_probabilities_sum_to_one(make_app, serve, png):
    async with serve(make_app()) as client:
        resp = await client.post(
            "/classify?top_k=10", content=png(), headers={"Content-Type": "image/png"}
        )
    preds = resp.json()["results"][0]["predictions"]
    assert sorted(p["index"] for p in preds) == list(range(10))
    assert sum(p["score"] for p in preds) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("top_k", [0, -1, 11, "abc"])
async def test_classify_topk_out_of_range_is_422(make_app, make_engine, serve, png, top_k):
    engine = make_engine()
    async with serve(make_app(engine)) as client:
        resp = await client.post(f"/classify?top_k={top_k}", files={"file": png()})
    _assert_error(resp, 422, "validation_error")
    assert engine.calls == []


async def test_multi_image_request_keeps_order(make_app, serve, pngs):
    imgs = pngs(3)
    async with serve(make_app()) as client:
        multi = await client.post("/classify", files=[("file", im) for im in imgs])
        singles = [await client.post("/classify", files={"file": im}) for im in imgs]
    assert multi.status_code == 200
    assert_same_predictions(multi.json()["results"], [s.json()["results"][0] for s in singles])


async def test_request_larger_than_batch_is_split_across_batches(
    make_app, make_engine, serve, pngs
):
    engine = make_engine()
    async with serve(make_app(engine, max_batch_size=2, max_images_per_request=5)) as client:
        resp = await client.post("/features", files=[("file", im) for im in pngs(5)])
    assert resp.status_code == 200
    assert len(resp.json()["results"]) == 5
    assert max(engine.calls) <= 2 and sum(engine.calls) == 5


async def test_too_many_images_is_413(make_app, make_engine, serve, pngs):
    engine = make_engine()
    async with serve(make_app(engine, max_images_per_request=2)) as client:
        resp = await client.post("/classify", files=[("file", im) for im in pngs(3)])
    _assert_error(resp, 413, "too_many_images")
    assert engine.calls == []


@pytest.mark.parametrize(
    ("content_type", "status", "code"),
    [
        ("text/plain", 415, "unsupported_media_type"),
        ("application/json", 415, "unsupported_media_type"),
        (None, 415, "unsupported_media_type"),
    ],
)
async def test_non_image_content_type_is_415(make_app, serve, png, content_type, status, code):
    headers = {"Content-Type": content_type} if content_type else {}
    async with serve(make_app()) as client:
        resp = await client.post("/classify", content=png(), headers=headers)
    _assert_error(resp, status, code)


async def test_multipart_without_file_field_is_400(make_app, serve, png):
    async with serve(make_app()) as client:
        resp = await client.post("/classify", files={"image": png()})
    _assert_error(resp, 400, "bad_request")


async def test_undecodable_and_refused_formats(make_app, make_engine, serve, png):
    engine = make_engine()
    tiff = io.BytesIO()
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tiff, format="TIFF")
    async with serve(make_app(engine)) as client:
        _assert_error(
            await client.post("/classify", files={"file": b"hello, not an image"}),
            400,
            "invalid_image",
        )
        _assert_error(
            await client.post("/classify", files={"file": png()[:60]}), 400, "invalid_image"
        )
        _assert_error(await client.post("/classify", files={"file": b""}), 400, "invalid_image")
        _assert_error(
            await client.post("/classify", files={"file": tiff.getvalue()}),
            415,
            "unsupported_media_type",
        )
        _assert_error(
            await client.post("/classify", files={"file": b"%!PS-Adobe-3.0 EPSF-3.0\n"}),
            415,
            "unsupported_media_type",
        )
        _assert_error(
            await client.post("/classify", files={"file": png(size=(1200, 1000))}),
            413,
            "image_too_large",
        )
        # One bad image fails the whole request, before anything is queued.
        _assert_error(
            await client.post("/classify", files=[("file", png()), ("file", b"junk")]),
            400,
            "invalid_image",
        )
    assert engine.calls == []


async def test_body_over_limit_by_content_length_is_413(make_app, serve):
    async with serve(make_app(max_upload_bytes=4096)) as client:
        resp = await client.post(
            "/classify", content=b"\xff" * 5000, headers={"Content-Type": "image/jpeg"}
        )
    _assert_error(resp, 413, "payload_too_large")


async def test_chunked_body_over_limit_is_413_while_streaming(make_app, serve):
    consumed = 0

    async def body():
        nonlocal consumed
        for _ in range(100):
            consumed += 1
            yield b"\xff" * 1024

    async with serve(make_app(max_upload_bytes=4096)) as client:
        resp = await client.post(
            "/classify", content=body(), headers={"Content-Type": "image/jpeg"}
        )
    _assert_error(resp, 413, "payload_too_large")
    assert consumed < 100  # refused mid-stream, not after reading everything


async def test_features_json_shapes_for_avg_and_none(make_app, serve, png):
    async with serve(make_app()) as client:
        avg = await client.get("/features")  # wrong method first: a JSON 405
        _assert_error(avg, 405, "method_not_allowed")
        avg = await client.post(
            "/features?stages=stage1&stages=stage4&stages=embedding&stages=stage1",
            files={"file": png()},
        )
        full = await client.post("/features?stages=stage2&pool=none", files={"file": png()})
    body = avg.json()
    assert body["pool"] == "avg"
    assert list(body["shapes"]) == ["stage1", "stage4", "embedding"]
    assert body["shapes"] == {"stage1": [8], "stage4": [64], "embedding": [64]}
    assert len(body["results"][0]["stage1"]) == 8
    full_body = full.json()
    assert full_body["shapes"] == {"stage2": [16, 4, 4]}
    maps = np.asarray(full_body["results"][0]["stage2"])
    assert maps.shape == (16, 4, 4)
    # avg pooling is the spatial mean of the full map.
    np.testing.assert_allclose(np.asarray(avg.json()["results"][0]["stage1"]).shape, (8,))


async def test_features_avg_equals_mean_of_full_map(make_app, serve, png):
    async with serve(make_app()) as client:
        avg = (await client.post("/features?stages=stage3", files={"file": png()})).json()
        full = (
            await client.post("/features?stages=stage3&pool=none", files={"file": png()})
        ).json()
    np.testing.assert_allclose(
        np.asarray(full["results"][0]["stage3"]).mean(axis=(1, 2)),
        avg["results"][0]["stage3"],
        rtol=1e-6,
    )


async def test_features_npz_stacks_images(make_app, serve, pngs):
    async with serve(make_app()) as client:
        resp = await client.post(
            "/features?stages=stage1&stages=embedding&pool=none",
            files=[("file", im) for im in pngs(3)],
            headers={"Accept": "application/x-npz"},
        )
        js = await client.post("/features?stages=embedding", files=[("file", im) for im in pngs(3)])
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/x-npz"
    npz = np.load(io.BytesIO(resp.content))
    assert npz["stage1"].shape == (3, 8, 8, 8) and npz["stage1"].dtype == np.float32
    assert npz["embedding"].shape == (3, 64)
    np.testing.assert_allclose(
        npz["embedding"], [r["embedding"] for r in js.json()["results"]], rtol=1e-6
    )


async def test_unknown_stage_and_pool_are_422(make_app, serve, png):
    async with serve(make_app()) as client:
        _assert_error(
            await client.post("/features?stages=stage9", files={"file": png()}),
            422,
            "validation_error",
        )
        _assert_error(
            await client.post("/features?pool=max", files={"file": png()}), 422, "validation_error"
        )


async def test_every_response_has_server_timing(make_app, serve, png):
    async with serve(make_app()) as client:
        ok = await client.post("/classify", files={"file": png()})
        bad = await client.post("/classify", files={"file": b"junk"})
        health = await client.get("/healthz")
    for resp in (ok, bad, health):
        timing = resp.headers["Server-Timing"]
        for name in ("decode;dur=", "queue;dur=", "inference;dur=", "batch;desc=", "total;dur="):
            assert name in timing, timing
    assert 'batch;desc="1"' in ok.headers["Server-Timing"]
    decode_ms = float(ok.headers["Server-Timing"].split("decode;dur=")[1].split(",")[0])
    assert decode_ms > 0


async def test_v1_models_reports_model_provider_and_batching(make_app, serve):
    async with serve(make_app(max_batch_size=4)) as client:
        body = (await client.get("/v1/models")).json()
    assert body["variant"] == "fake_swin_32"
    assert body["input_size"] == 32 and body["num_classes"] == 10
    assert body["provider"] == "FakeExecutionProvider"
    assert body["weights"]["random"] is True and "RANDOM" in body["warning"]
    assert body["batching"]["max_batch_size"] == 4
    assert body["parity"] == {"passed": True}


async def test_v1_models_has_no_warning_for_official_weights(make_app, make_engine, serve):
    from swin_serve.artifact.contract import Manifest

    engine = make_engine()
    data = engine.manifest.model_dump()
    data["weights"] = {"source": "official", "random": False}
    engine.manifest = Manifest.model_validate(data)
    async with serve(make_app(engine)) as client:
        body = (await client.get("/v1/models")).json()
    assert body["warning"] is None and body["weights"]["source"] == "official"


async def test_unknown_path_is_json_404(make_app, serve):
    async with serve(make_app()) as client:
        _assert_error(await client.get("/nope"), 404, "not_found")


async def test_openapi_declares_error_responses(make_app, serve):
    async with serve(make_app()) as client:
        spec = (await client.get("/openapi.json")).json()
    for path in ("/classify", "/features"):
        op = spec["paths"][path]["post"]
        assert {"200", "400", "413", "415", "422", "500", "503"} <= set(op["responses"]), path
        assert "multipart/form-data" in op["requestBody"]["content"]
        assert "Retry-After" in op["responses"]["503"]["headers"]
    assert "503" in spec["paths"]["/readyz"]["get"]["responses"]


def test_importing_the_server_does_not_import_torch():
    root = Path(__file__).resolve().parents[3]
    code = "import swin_serve.server.http.app, swin_serve.server.__main__, sys; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True, timeout=60)


async def test_unhandled_error_becomes_json_500_and_is_counted(
    make_app, make_engine, serve, png, monkeypatch
):
    import swin_serve.server.http.inference_routes

    def boom(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(swin_serve.server.http.inference_routes, "softmax", boom)
    async with serve(make_app()) as client:
        resp = await client.post("/classify", files={"file": png()})
        health = await client.get("/healthz")
        samples = parse_metrics((await client.get("/metrics")).text)
    _assert_error(resp, 500, "internal_error")
    assert health.status_code == 200
    assert metric(samples, "swin_rejections_total", reason="internal_error") == 1
    assert metric(samples, "swin_requests_total", endpoint="/classify", status="500") == 1
