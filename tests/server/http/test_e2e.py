"""End to end on the real exported tiny Swin (``tiny_model_path`` from tests/conftest.py):
swin_micro_patch4_window4_64 with random weights, served by the real app on ONNX Runtime."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from swin_serve.server.http.app import create_app
from swin_serve.server.settings import Settings
from tests.support import sample_images

pytestmark = pytest.mark.anyio

# What samples/images/README.md asks for each file (BMP: served, our documented choice).
SAMPLE_STATUS = {
    "broken.png": 400,
    "truncated_end_chunk.png": 400,
    "decompression_bomb.gif": 413,
}


@pytest.fixture
def e2e_app(tiny_model_path):
    def factory(**overrides):
        opts = {
            "model_path": tiny_model_path,
            "providers": "cpu",
            "max_batch_size": 8,
            "max_batch_delay_ms": 20,
            "queue_capacity": 64,
            "max_images_per_request": 16,
        }
        opts.update(overrides)
        return create_app(Settings(**opts))

    return factory


async def test_every_endpoint(e2e_app, serve, images_dir):
    photo = (images_dir / "hopper.jpg").read_bytes()
    async with serve(e2e_app()) as client:
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/readyz")).status_code == 200
        info = (await client.get("/v1/models")).json()
        cls = await client.post("/classify", files={"file": ("hopper.jpg", photo, "image/jpeg")})
        raw = await client.post("/classify", content=photo, headers={"Content-Type": "image/jpeg"})
        feats = await client.post("/features", files={"file": photo})
        metrics = (await client.get("/metrics")).text
        docs = await client.get("/docs")
        spec = (await client.get("/openapi.json")).json()
    assert info["variant"] == "swin_micro_patch4_window4_64" and info["input_size"] == 64
    assert info["provider"] == "CPUExecutionProvider"
    assert info["weights"]["random"] is True and "RANDOM" in info["warning"]
    assert cls.status_code == 200 and cls.json() == raw.json()
    preds = cls.json()["results"][0]["predictions"]
    assert len(preds) == 5 and preds[0]["score"] >= preds[-1]["score"]
    emb = feats.json()
    assert emb["shapes"] == {"embedding": [info["outputs"]["embedding"][1]]}
    assert "swin_requests_total" in metrics
    assert docs.status_code == 200 and "/classify" in spec["paths"]


async def test_every_sample_image_gets_its_documented_status(e2e_app, serve, images_dir):
    images = sample_images(images_dir)
    async with serve(e2e_app()) as client:
        for path in images:
            resp = await client.post("/classify", files={"file": (path.name, path.read_bytes())})
            expected = SAMPLE_STATUS.get(path.name, 200)
            assert resp.status_code == expected, (path.name, resp.text)
            if expected != 200:
                assert resp.json()["error"]["code"] in {"invalid_image", "image_too_large"}
        # The server is still healthy and correct after the bad ones.
        good = await client.post(
            "/classify", files={"file": (images_dir / "hopper.png").read_bytes()}
        )
    assert good.status_code == 200


async def test_same_photo_in_three_containers_gives_close_embeddings(e2e_app, serve, images_dir):
    async with serve(e2e_app()) as client:
        embs = {}
        for ext in ("png", "jpg", "webp"):
            data = (images_dir / f"hopper.{ext}").read_bytes()
            embs[ext] = np.asarray(
                (await client.post("/features", files={"file": data})).json()["results"][0][
                    "embedding"
                ]
            )
    for ext in ("jpg", "webp"):
        cos = embs[ext] @ embs["png"] / (np.linalg.norm(embs[ext]) * np.linalg.norm(embs["png"]))
        assert cos > 0.98, (ext, cos)


async def test_multi_image_request_matches_single_requests(e2e_app, serve, images_dir):
    names = ["hopper.jpg", "flower.jpg", "pil123rgba.png"]
    data = [(images_dir / n).read_bytes() for n in names]
    async with serve(e2e_app()) as client:
        multi = (
            await client.post("/features?stages=embedding", files=[("file", d) for d in data])
        ).json()
        singles = [(await client.post("/features", files={"file": d})).json() for d in data]
    assert len(multi["results"]) == 3
    for m, s in zip(multi["results"], singles, strict=True):
        np.testing.assert_allclose(
            m["embedding"], s["results"][0]["embedding"], rtol=1e-4, atol=1e-5
        )


async def test_pool_none_shapes_follow_the_manifest_and_npz_matches_json(
    e2e_app, serve, images_dir
):
    data = (images_dir / "flower.jpg").read_bytes()
    stages = ["stage1", "stage2", "stage3", "stage4", "embedding"]
    query = "&".join(f"stages={s}" for s in stages) + "&pool=none"
    async with serve(e2e_app()) as client:
        info = (await client.get("/v1/models")).json()
        js = (
            await client.post(f"/features?{query}", files=[("file", data), ("file", data)])
        ).json()
        npz_resp = await client.post(
            f"/features?{query}",
            files=[("file", data), ("file", data)],
            headers={"Accept": "application/x-npz"},
        )
        avg = (await client.post("/features?stages=stage3", files={"file": data})).json()
    npz = np.load(io.BytesIO(npz_resp.content))
    for s in stages:
        per_image = info["outputs"][s][1:]
        assert js["shapes"][s] == per_image
        assert np.asarray(js["results"][0][s]).shape == tuple(per_image)
        assert npz[s].shape == (2, *per_image) and npz[s].dtype == np.float32
        np.testing.assert_allclose(
            npz[s][1], np.asarray(js["results"][1][s], dtype=np.float32), rtol=1e-6
        )
    np.testing.assert_allclose(
        npz["stage3"][0].mean(axis=(1, 2)), avg["results"][0]["stage3"], rtol=1e-4, atol=1e-5
    )


async def test_top_k_bounds(e2e_app, serve, images_dir):
    data = (images_dir / "hopper.jpg").read_bytes()
    async with serve(e2e_app()) as client:
        k = (await client.get("/v1/models")).json()["num_classes"]
        full = await client.post(f"/classify?top_k={k}", files={"file": data})
        one = await client.post("/classify?top_k=1", files={"file": data})
        over = await client.post(f"/classify?top_k={k + 1}", files={"file": data})
        zero = await client.post("/classify?top_k=0", files={"file": data})
    preds = full.json()["results"][0]["predictions"]
    assert len(preds) == k and sum(p["score"] for p in preds) == pytest.approx(1.0, abs=1e-5)
    top = one.json()["results"][0]["predictions"][0]
    assert top["index"] == preds[0]["index"]
    assert top["score"] == pytest.approx(preds[0]["score"], abs=1e-6)
    assert over.status_code == 422 and zero.status_code == 422


async def test_sixteen_concurrent_requests_batch_and_match_unbatched(e2e_app, serve, images_dir):
    paths = [p for p in sample_images(images_dir) if p.name not in SAMPLE_STATUS]
    data = [paths[i % len(paths)].read_bytes() for i in range(16)]
    async with serve(e2e_app(max_batch_size=8, max_batch_delay_ms=50)) as client:
        batched = await asyncio.gather(
            *(
                client.post("/features?stages=embedding&stages=stage4", files={"file": d})
                for d in data
            )
        )
        text = (await client.get("/metrics")).text
        singles = [
            await client.post("/features?stages=embedding&stages=stage4", files={"file": d})
            for d in data
        ]
    sizes = {
        s.labels.get("le"): s.value
        for fam in text_string_to_metric_families(text)
        if fam.name == "swin_batch_size"
        for s in fam.samples
        if s.name == "swin_batch_size_bucket"
    }
    assert sizes["1.0"] < sizes["+Inf"], sizes  # at least one run held more than one image
    for b, s in zip(batched, singles, strict=True):
        assert b.status_code == 200 and 'batch;desc="1"' in s.headers["Server-Timing"]
        for name in ("embedding", "stage4"):
            np.testing.assert_allclose(
                b.json()["results"][0][name], s.json()["results"][0][name], rtol=1e-4, atol=1e-5
            )
