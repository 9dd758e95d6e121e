"""The Open Inference Protocol over HTTP, in-process on a fake engine: metadata and readiness,
JSON and binary inference against what the engine computes, the extensions, the shared batcher
and limits, and every malformed request answered 4xx in the protocol's ``{"error": "..."}``."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import threading

import numpy as np
import pytest
from tritonclient.utils import deserialize_bytes_tensor

from swin_serve.artifact.contract import random_weights_warning
from swin_serve.artifact.preprocess import decode_image
from tests.support import metric, parse_metrics, until
from tests.support.fakes import default_model, image_bytes, tiny_manifest
from tests.support.v2 import length_prefixed

pytestmark = pytest.mark.anyio

MODEL = "fake_swin_32"  # tests/server/conftest.py: tiny_manifest
INFER = f"/v2/models/{MODEL}/infer"
HEADER_LENGTH = "Inference-Header-Content-Length"
SIZE = 32
OUTPUTS = ["logits", "embedding", "stage1", "stage2", "stage3", "stage4"]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def images_input(images: list[bytes]) -> dict:
    return {
        "name": "image",
        "datatype": "BYTES",
        "shape": [len(images)],
        "data": list(map(b64, images)),
    }


def binary_body(doc: dict, sections: list[bytes]) -> tuple[bytes, dict[str, str]]:
    """Triton's binary tensor extension: the JSON header, then each section in input order."""
    header = json.dumps(doc).encode()
    return header + b"".join(sections), {HEADER_LENGTH: str(len(header))}


def decode_outputs(resp) -> dict[str, np.ndarray | list[bytes]]:
    """Each output of a 200 response, JSON or binary: FP32 as an array of its shape, BYTES as
    the list of its elements."""
    assert resp.status_code == 200, resp.text
    body = resp.content
    length = resp.headers.get(HEADER_LENGTH)
    if length is None:
        assert resp.headers["content-type"] == "application/json"
        header, binary = json.loads(body), b""
    else:
        assert resp.headers["content-type"] == "application/octet-stream"
        header, binary = json.loads(body[: int(length)]), body[int(length) :]
    out: dict = {}
    offset = 0
    for o in header["outputs"]:
        size = o.get("parameters", {}).get("binary_data_size")
        if size is None:
            data = o["data"]
            out[o["name"]] = (
                [s.encode() for s in data]
                if o["datatype"] == "BYTES"
                else np.asarray(data, np.float32).reshape(o["shape"])
            )
            continue
        raw, offset = binary[offset : offset + size], offset + size
        assert len(raw) == size
        if o["datatype"] == "BYTES":
            out[o["name"]] = list(deserialize_bytes_tensor(raw))  # Triton's own reader
        else:
            assert o["datatype"] == "FP32"
            out[o["name"]] = np.frombuffer(raw, "<f4").reshape(o["shape"])
    assert offset == len(binary), "the binary_data_size of the outputs add up to the section"
    return out


def expected(engine, manifest, images: list[bytes]) -> dict[str, np.ndarray]:
    """What the engine computes for these encoded images, decoded as the server decodes them."""
    batch = np.stack([decode_image(im, manifest.preprocess, max_pixels=1_000_000) for im in images])
    return engine.outputs_for(batch)


def assert_v2_error(resp, status: int) -> str:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"], body
    return body["error"]


# -- metadata and health ----------------------------------------------------------------------


async def test_server_and_model_metadata(make_app, serve, manifest):
    async with serve(make_app()) as client:
        server = (await client.get("/v2")).json()
        live = await client.get("/v2/health/live")
        ready = await client.get("/v2/health/ready")
        model = await client.get(f"/v2/models/{MODEL}")
        versioned = await client.get(f"/v2/models/{MODEL}/versions/1")
        model_ready = await client.get(f"/v2/models/{MODEL}/ready")
        version_ready = await client.get(f"/v2/models/{MODEL}/versions/1/ready")
    assert server["name"] == "swin-serve" and isinstance(server["version"], str)
    assert server["extensions"] == ["binary_tensor_data", "classification"]
    assert live.json() == {"live": True} and ready.json() == {"ready": True}
    meta = model.json()
    assert versioned.json() == meta
    assert meta["name"] == MODEL and meta["versions"] == ["1"]
    assert meta["parameters"]["preprocessing_source"] == "not recorded (crop_pct 0.875)"
    assert json.loads(meta["parameters"]["preprocess"]) == manifest.preprocess.model_dump(
        mode="json"
    )
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [
        {"name": "image", "datatype": "BYTES", "shape": [-1]},
        {"name": "pixel_values", "datatype": "FP32", "shape": [-1, 3, SIZE, SIZE]},
    ]
    assert {o["name"]: o["shape"] for o in meta["outputs"]} == {
        "logits": [-1, 10],
        "embedding": [-1, 64],
        "stage1": [-1, 8, 8, 8],
        "stage2": [-1, 16, 4, 4],
        "stage3": [-1, 32, 2, 2],
        "stage4": [-1, 64, 1, 1],
    }
    assert all(o["datatype"] == "FP32" for o in meta["outputs"])
    assert model_ready.json() == version_ready.json() == {"name": MODEL, "ready": True}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v2/models/other"),
        ("GET", f"/v2/models/{MODEL}/versions/2"),
        ("GET", "/v2/models/other/ready"),
        ("GET", f"/v2/models/{MODEL}/versions/0/ready"),
        ("POST", "/v2/models/other/infer"),
        ("POST", f"/v2/models/{MODEL}/versions/2/infer"),
        ("GET", "/v2/no/such/route"),
    ],
)
async def test_unknown_models_versions_and_routes_are_404_in_the_v2_shape(
    make_app, serve, png, method, path
):
    body = json.dumps({"inputs": [images_input([png()])]})
    async with serve(make_app()) as client:
        resp = await client.request(method, path, content=body if method == "POST" else None)
    assert_v2_error(resp, 404)


async def test_not_ready_is_503_with_retry_after_until_warm(make_app, make_engine, serve, png):
    gate = threading.Event()
    engine = make_engine(warmup_gate=gate)
    app = make_app(engine)
    async with serve(app, wait_for_warm_up=False) as client:
        assert (await client.get("/v2/health/live")).json() == {"live": True}
        body = {"inputs": [images_input([png()])]}
        for resp in (
            await client.get("/v2/health/ready"),
            await client.get(f"/v2/models/{MODEL}/ready"),
            await client.post(INFER, json=body),
        ):
            assert_v2_error(resp, 503)
            assert int(resp.headers["Retry-After"]) >= 1
        gate.set()
        await app.state.service.lifecycle.wait_for_warm_up()
        assert (await client.get("/v2/health/ready")).json() == {"ready": True}
        assert (await client.post(INFER, json=body)).status_code == 200
    assert engine.calls == [1]  # the refused request never reached the engine


# -- inference --------------------------------------------------------------------------------


async def test_json_inference_returns_every_output_as_the_engine_computes_it(
    make_app, make_engine, serve, pngs, manifest
):
    engine = make_engine()
    images = pngs(3)
    async with serve(make_app(engine)) as client:
        resp = await client.post(INFER, json={"id": "req-7", "inputs": [images_input(images)]})
    body = resp.json()
    assert body["model_name"] == MODEL and body["model_version"] == "1" and body["id"] == "req-7"
    assert [o["name"] for o in body["outputs"]] == OUTPUTS
    got, want = decode_outputs(resp), expected(engine, manifest, images)
    for name in OUTPUTS:
        assert got[name].shape == want[name].shape, name
        np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=1e-6, err_msg=name)
    assert engine.calls == [3]
    timing = resp.headers["Server-Timing"]
    assert "total;dur=" in timing and "decode;dur=" in timing and 'batch;desc="3"' in timing


@pytest.mark.parametrize("random_weights", [True, False])
async def test_random_weights_are_announced_in_every_answer(
    make_app, make_engine, serve, png, random_weights
):
    engine = make_engine(manifest=tiny_manifest(random_weights=random_weights))
    async with serve(make_app(engine)) as client:
        resp = await client.post(INFER, json={"inputs": [images_input([png()])]})
    assert resp.status_code == 200
    parameters = resp.json().get("parameters", {})
    expected = random_weights_warning(engine.manifest.variant)
    assert parameters == ({"warning": expected} if random_weights else {})


async def test_no_id_in_the_request_none_in_the_answer(make_app, serve, png):
    async with serve(make_app()) as client:
        resp = await client.post(
            f"/v2/models/{MODEL}/versions/1/infer",
            json={"inputs": [images_input([png()])], "outputs": [{"name": "logits"}]},
        )
    assert resp.status_code == 200 and "id" not in resp.json()
    assert [o["name"] for o in resp.json()["outputs"]] == ["logits"]


async def test_binary_inputs_and_outputs(make_app, make_engine, serve, pngs, manifest):
    """Triton's client by default: images as length-prefixed binary BYTES, outputs binary."""
    engine = make_engine()
    images = pngs(2)
    section = length_prefixed(*images)
    doc = {
        "id": "bin",
        "inputs": [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [2, 1],
                "parameters": {"binary_data_size": len(section)},
            }
        ],
        "outputs": [
            {"name": "stage2", "parameters": {"binary_data": True}},
            {"name": "logits", "parameters": {"binary_data": True}},
        ],
    }
    content, headers = binary_body(doc, [section])
    async with serve(make_app(engine)) as client:
        resp = await client.post(INFER, content=content, headers=headers)
    length = int(resp.headers[HEADER_LENGTH])
    header = json.loads(resp.content[:length])
    assert header["id"] == "bin"
    assert [(o["name"], o["shape"]) for o in header["outputs"]] == [
        ("stage2", [2, 16, 4, 4]),
        ("logits", [2, 10]),
    ]
    sizes = [o["parameters"]["binary_data_size"] for o in header["outputs"]]
    assert sizes == [2 * 16 * 4 * 4 * 4, 2 * 10 * 4]
    assert len(resp.content) == length + sum(sizes)
    assert all("data" not in o for o in header["outputs"])
    got, want = decode_outputs(resp), expected(engine, manifest, images)
    np.testing.assert_allclose(got["stage2"], want["stage2"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got["logits"], want["logits"], rtol=1e-6, atol=1e-6)


async def test_binary_data_output_is_the_default_each_output_may_override(make_app, serve, png):
    doc = {"inputs": [images_input([png()])], "parameters": {"binary_data_output": True}}
    async with serve(make_app()) as client:
        every = await client.post(INFER, json=doc)
        doc["outputs"] = [
            {"name": "logits"},
            {"name": "embedding", "parameters": {"binary_data": False}},
            {"name": "stage4", "parameters": {"binary_data": True}},
        ]
        mixed = await client.post(INFER, json=doc)
        none = await client.post(INFER, json={"inputs": doc["inputs"], "outputs": doc["outputs"]})
    length = int(every.headers[HEADER_LENGTH])
    assert all(
        "binary_data_size" in o["parameters"] for o in json.loads(every.content[:length])["outputs"]
    )
    length = int(mixed.headers[HEADER_LENGTH])
    outputs = {o["name"]: o for o in json.loads(mixed.content[:length])["outputs"]}
    assert "binary_data_size" in outputs["logits"]["parameters"]  # the request's default
    assert "data" in outputs["embedding"] and "parameters" not in outputs["embedding"]
    assert "binary_data_size" in outputs["stage4"]["parameters"]
    # Without binary_data_output, only the output that asks for it is binary.
    length = int(none.headers[HEADER_LENGTH])
    outputs = {o["name"]: o for o in json.loads(none.content[:length])["outputs"]}
    assert ["data" in outputs[n] for n in ("logits", "embedding", "stage4")] == [True, True, False]
    for resp in (every, mixed, none):
        decode_outputs(resp)  # every section where its header says


@pytest.mark.parametrize("binary", [False, True])
async def test_classification_is_the_top_k_logits_highest_first(
    make_app, make_engine, serve, pngs, manifest, binary
):
    engine = make_engine()
    images = pngs(2)
    params = {"classification": 4, "binary_data": binary}
    async with serve(make_app(engine)) as client:
        resp = await client.post(
            INFER,
            json={
                "inputs": [images_input(images)],
                "outputs": [{"name": "logits", "parameters": params}],
            },
        )
    got = decode_outputs(resp)["logits"]
    logits = expected(engine, manifest, images)["logits"]  # the same batch: the same numbers
    want = [f"{row[i]:f}:{i}:class{i}".encode() for row in logits for i in np.argsort(-row)[:4]]
    assert got == want
    header = (
        resp.json() if not binary else json.loads(resp.content[: int(resp.headers[HEADER_LENGTH])])
    )
    assert header["outputs"][0]["datatype"] == "BYTES" and header["outputs"][0]["shape"] == [2, 4]


@pytest.mark.parametrize("binary", [False, True])
async def test_pixel_values_run_as_given(make_app, make_engine, serve, manifest, binary):
    engine = make_engine()
    rng = np.random.default_rng(3)
    pixels = rng.normal(size=(2, 3, SIZE, SIZE)).astype(np.float32)
    spec = {"name": "pixel_values", "datatype": "FP32", "shape": list(pixels.shape)}
    if binary:
        spec["parameters"] = {"binary_data_size": pixels.nbytes}
        content, headers = binary_body({"inputs": [spec]}, [pixels.astype("<f4").tobytes()])
    else:
        spec["data"] = pixels.tolist()  # nested, row-major
        content, headers = json.dumps({"inputs": [spec]}).encode(), {}
    async with serve(make_app(engine)) as client:
        resp = await client.post(INFER, content=content, headers=headers)
    got, want = decode_outputs(resp), engine.outputs_for(pixels)
    for name in OUTPUTS:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=1e-6, err_msg=name)


async def test_v2_and_classify_requests_share_batches(make_app, make_engine, serve, pngs, manifest):
    engine = make_engine()
    first, second = pngs(2)
    # A batch of two closes as soon as both are queued; the long delay only waits for the second.
    app = make_app(engine, max_batch_size=2, max_batch_delay_ms=1000)
    async with serve(app) as client:
        v2, classify = await asyncio.gather(
            client.post(
                INFER, json={"inputs": [images_input([first])], "outputs": [{"name": "logits"}]}
            ),
            client.post("/classify?top_k=10", files={"file": second}),
        )
    assert engine.calls == [2]
    np.testing.assert_allclose(
        decode_outputs(v2)["logits"], expected(engine, manifest, [first])["logits"], rtol=1e-5
    )
    assert classify.status_code == 200
    want = np.argsort(-expected(engine, manifest, [second])["logits"][0])
    assert [p["index"] for p in classify.json()["results"][0]["predictions"]] == want.tolist()
    assert 'batch;desc="2"' in v2.headers["Server-Timing"]


# -- limits -----------------------------------------------------------------------------------


async def test_queue_full_is_a_fast_503_in_the_v2_shape(make_app, gated_engine, serve, pngs):
    engine, release = gated_engine
    app = make_app(
        engine, max_batch_size=1, parallel_batches=1, queue_capacity=2, max_images_per_request=1
    )
    requests = [{"inputs": [images_input([im])], "outputs": [{"name": "logits"}]} for im in pngs(4)]
    async with serve(app) as client:
        batcher = default_model(app.state.service.lifecycle).batcher
        running = asyncio.create_task(client.post(INFER, json=requests[0]))
        await until(lambda: engine.calls)
        queued = [asyncio.create_task(client.post(INFER, json=r)) for r in requests[1:3]]
        await until(lambda: batcher.depth == 2)
        refused = await client.post(INFER, json=requests[3])  # while the model is held
        release.set()
        done = await asyncio.gather(running, *queued)
        samples = parse_metrics((await client.get("/metrics")).text)
    assert "queue full" in assert_v2_error(refused, 503)
    assert refused.headers["Retry-After"] == "1"
    assert [r.status_code for r in done] == [200] * 3
    assert engine.calls == [1, 1, 1]
    assert metric(samples, "swin_rejections_total", reason="overloaded") == 1
    assert (
        metric(samples, "swin_requests_total", endpoint="/v2/models/{name}/infer", status="503")
        == 1
    )


async def test_a_request_past_its_timeout_header_is_503(make_app, gated_engine, serve, pngs):
    engine, release = gated_engine
    busy_image, image = pngs(2)
    async with serve(make_app(engine, max_batch_size=1, parallel_batches=1)) as client:
        busy = asyncio.create_task(
            client.post(INFER, json={"inputs": [images_input([busy_image])]})
        )
        await until(lambda: engine.calls)
        resp = await client.post(
            INFER, json={"inputs": [images_input([image])]}, headers={"X-Request-Timeout-Ms": "50"}
        )
        release.set()
        assert (await busy).status_code == 200
    assert "deadline" in assert_v2_error(resp, 503)
    assert "Retry-After" in resp.headers
    assert engine.calls == [1]  # it never ran


@pytest.mark.parametrize("value", ["0", "-5", "600001", "soon", "1.5"])
async def test_an_invalid_timeout_header_is_422_in_the_v2_shape(make_app, serve, png, value):
    async with serve(make_app()) as client:
        resp = await client.post(
            INFER, json={"inputs": [images_input([png()])]}, headers={"X-Request-Timeout-Ms": value}
        )
    assert "X-Request-Timeout-Ms" in assert_v2_error(resp, 422)


@pytest.mark.parametrize("declared", [True, False])
async def test_a_body_over_the_cap_is_413_in_the_v2_shape(make_app, serve, declared):
    cap = 1024 * 1024
    chunk = b"0" * 65536

    async def stream():
        for _ in range(cap // len(chunk) + 2):
            yield chunk

    content = chunk * (cap // len(chunk) + 2) if declared else stream()
    async with serve(make_app(max_upload_bytes=cap)) as client:
        resp = await client.post(INFER, content=content)
        after = await client.post(INFER, json={"inputs": []})  # the server goes on answering
    assert "exceeds the limit" in assert_v2_error(resp, 413)
    assert_v2_error(after, 400)


async def test_metric_labels_are_route_templates_never_the_model_name(make_app, serve, png):
    body = {"inputs": [images_input([png()])]}
    async with serve(make_app()) as client:
        await client.post(INFER, json=body)
        await client.post(f"/v2/models/{MODEL}/versions/1/infer", json=body)
        await client.post("/v2/models/secret-model-name/infer", json=body)
        await client.get(f"/v2/models/{MODEL}/ready")
        await client.get(f"/v2/models/{MODEL}")
        text = (await client.get("/metrics")).text
    samples = parse_metrics(text)
    endpoints = {dict(labels).get("endpoint") for _, labels in samples} - {None}
    v2 = {"/v2/models/{name}/infer", "/v2/models/{name}/ready", "/v2/models/{name}"}
    assert v2 <= endpoints <= v2 | {"/metrics"}
    assert "secret" not in text
    assert (
        metric(samples, "swin_requests_total", endpoint="/v2/models/{name}/infer", status="200")
        == 2
    )
    assert (
        metric(samples, "swin_requests_total", endpoint="/v2/models/{name}/infer", status="404")
        == 1
    )
    assert metric(samples, "swin_rejections_total", reason="not_found") == 1


# -- malformed requests -----------------------------------------------------------------------


def _png(size=(40, 48)) -> bytes:
    return image_bytes((10, 200, 30), size)


def _tiff() -> bytes:
    return image_bytes(size=(8, 8), fmt="TIFF")


def _json(doc) -> tuple[bytes, dict]:
    return json.dumps(doc).encode(), {}


def _images(*images: bytes, **extra) -> tuple[bytes, dict]:
    return _json({"inputs": [images_input(list(images))], **extra})


def _pixels(data, shape=(1, 3, SIZE, SIZE)) -> tuple[bytes, dict]:
    spec = {"name": "pixel_values", "datatype": "FP32", "shape": list(shape), "data": data}
    return json.dumps({"inputs": [spec]}).encode(), {}


def _nested(depth: int) -> tuple[bytes, dict]:
    data = "[" * depth + "1.0" + "]" * depth
    spec = f'{{"name":"pixel_values","datatype":"FP32","shape":[1],"data":{data}}}'
    doc = f'{{"inputs":[{spec}]}}'
    return doc.encode(), {}


_ONE = _png()
_SECTION = length_prefixed(_ONE)
_BINARY_SPEC = {"name": "image", "datatype": "BYTES", "shape": [1]}

# (status, (body, headers)): each refused with its status and a v2 error, never a 5xx.
MALFORMED = {
    "not_json": (400, (b"{", {})),
    "json_array": (400, (b"[1]", {})),
    "no_inputs": (400, _json({})),
    "deep_json": (400, (b'{"inputs":' + b"[" * 50_000, {})),
    "deep_data": (400, _nested(5_000)),
    "data_nested_past_numpy": (400, _nested(100)),
    "two_inputs": (400, _json({"inputs": [images_input([_ONE]), images_input([_ONE])]})),
    "zero_images": (400, _images()),
    "too_many_images": (400, _images(*[_ONE] * 9)),
    "unknown_input": (400, _json({"inputs": [{**images_input([_ONE]), "name": "img"}]})),
    "images_as_fp32": (400, _json({"inputs": [{**images_input([_ONE]), "datatype": "FP32"}]})),
    "bad_base64": (400, _json({"inputs": [{**images_input([_ONE]), "data": ["%%%"]}]})),
    "count_mismatch": (400, _json({"inputs": [{**images_input([_ONE]), "shape": [2]}]})),
    "huge_shape": (400, _json({"inputs": [{**images_input([_ONE]), "shape": [10**18] * 300}]})),
    "negative_shape": (400, _json({"inputs": [{**images_input([_ONE]), "shape": [-1]}]})),
    "bool_shape": (400, _json({"inputs": [{**images_input([_ONE]), "shape": [True]}]})),
    "not_an_image": (400, _images(b"hello, world")),
    "truncated_image": (400, _images(_ONE[:60])),
    "tiff": (415, _images(_tiff())),
    "too_many_pixels": (413, _images(_png((1001, 1000)))),
    "unknown_output": (400, _images(_ONE, outputs=[{"name": "probs"}])),
    "duplicate_output": (400, _images(_ONE, outputs=[{"name": "logits"}, {"name": "logits"}])),
    "classification_on_embedding": (
        400,
        _images(_ONE, outputs=[{"name": "embedding", "parameters": {"classification": 2}}]),
    ),
    "classification_too_large": (
        400,
        _images(_ONE, outputs=[{"name": "logits", "parameters": {"classification": 11}}]),
    ),
    "classification_string": (
        400,
        _images(_ONE, outputs=[{"name": "logits", "parameters": {"classification": "3"}}]),
    ),
    "binary_data_not_bool": (
        400,
        _images(_ONE, outputs=[{"name": "logits", "parameters": {"binary_data": 1}}]),
    ),
    "nan_pixels": (400, _pixels([float("nan")] * (3 * SIZE * SIZE))),
    "infinite_pixels": (400, _pixels([1e39] * (3 * SIZE * SIZE))),
    "pixels_as_strings": (400, _pixels(["0.5"] * (3 * SIZE * SIZE))),
    "pixels_null": (400, _pixels([None] * (3 * SIZE * SIZE))),
    "pixels_huge_int": (400, _pixels([10**400] + [0] * (3 * SIZE * SIZE - 1))),
    "pixels_ragged": (400, _pixels([[0.0] * 5, [0.0] * 3])),
    "pixels_wrong_shape": (400, _pixels([0.0] * 3 * SIZE * SIZE, shape=(1, 3, SIZE * SIZE))),
    "header_length_negative": (400, (_images(_ONE)[0], {HEADER_LENGTH: "-1"})),
    "header_length_not_a_number": (400, (_images(_ONE)[0], {HEADER_LENGTH: "ten"})),
    "header_length_past_the_body": (400, (_images(_ONE)[0], {HEADER_LENGTH: "100000"})),
    "header_length_short": (400, (_images(_ONE)[0], {HEADER_LENGTH: "10"})),
    "binary_section_truncated": (
        400,
        binary_body(
            {"inputs": [{**_BINARY_SPEC, "parameters": {"binary_data_size": len(_SECTION)}}]},
            [_SECTION[:-10]],
        ),
    ),
    "binary_section_left_over": (
        400,
        binary_body(
            {"inputs": [{**_BINARY_SPEC, "parameters": {"binary_data_size": len(_SECTION)}}]},
            [_SECTION + b"more"],
        ),
    ),
    "element_length_lies": (
        400,
        binary_body(
            {"inputs": [{**_BINARY_SPEC, "parameters": {"binary_data_size": 8}}]},
            [struct.pack("<I", 2**31) + b"abcd"],
        ),
    ),
    "data_and_binary": (
        400,
        binary_body(
            {
                "inputs": [
                    {
                        **images_input([_ONE]),
                        "parameters": {"binary_data_size": len(_SECTION)},
                    }
                ]
            },
            [_SECTION],
        ),
    ),
    "no_data": (400, _json({"inputs": [_BINARY_SPEC]})),
}


@pytest.mark.parametrize("case", MALFORMED)
async def test_malformed_requests_are_4xx_in_the_v2_shape(make_app, make_engine, serve, png, case):
    status, (content, headers) = MALFORMED[case]
    engine = make_engine()
    async with serve(make_app(engine)) as client:
        resp = await client.post(INFER, content=content, headers=headers)
        after = await client.post(INFER, json={"inputs": [images_input([png()])]})
    assert_v2_error(resp, status)
    assert after.status_code == 200
    assert engine.calls == [1]  # only the good request reached the engine


async def test_null_stands_for_an_absent_optional_field(make_app, serve, png):
    doc = {"id": None, "parameters": None, "outputs": None, "inputs": [images_input([png()])]}
    doc["inputs"][0]["parameters"] = None
    async with serve(make_app()) as client:
        resp = await client.post(INFER, json=doc)
    assert resp.status_code == 200, resp.text
    assert "id" not in resp.json() and len(resp.json()["outputs"]) == len(OUTPUTS)


@pytest.mark.parametrize("length", ["1_0", "+10", "10 0", "0x10"])
async def test_the_header_length_is_plain_digits(make_app, serve, length):
    async with serve(make_app()) as client:
        resp = await client.post(
            INFER,
            content=b'{"inputs": []}' + b"x" * 20,
            headers={"Inference-Header-Content-Length": length},
        )
    assert "must be between 0 and" in assert_v2_error(resp, 400)


async def test_nan_outputs_are_a_clear_500_in_json_and_served_in_binary(
    make_app, make_engine, serve, png
):
    engine = make_engine()
    real = engine.outputs_for
    engine.outputs_for = lambda batch: {k: np.full_like(v, np.nan) for k, v in real(batch).items()}
    logits = {"name": "logits"}
    async with serve(make_app(engine)) as client:
        as_json = await client.post(
            INFER, json={"inputs": [images_input([png()])], "outputs": [logits]}
        )
        binary = {**logits, "parameters": {"binary_data": True}}
        as_binary = await client.post(
            INFER, json={"inputs": [images_input([png()])], "outputs": [binary]}
        )
    assert "NaN or infinite" in assert_v2_error(as_json, 500)
    assert as_binary.status_code == 200
    assert np.isnan(decode_outputs(as_binary)["logits"]).all()
