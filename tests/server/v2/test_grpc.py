"""The Open Inference Protocol over gRPC, in-process on a fake engine: the six RPCs with our own
messages and with Triton's client (imported in the same process), statuses for every malformed
request, the shared batcher, queue and request slots, deadlines, trailing metadata and metrics."""

from __future__ import annotations

import asyncio
import struct
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tritongrpc
import tritonclient.grpc.aio as tritongrpc_aio
from tritonclient.grpc import service_pb2 as triton_pb2
from tritonclient.utils import InferenceServerException, deserialize_bytes_tensor

from swin_serve.artifact.contract import random_weights_warning
from swin_serve.artifact.preprocess import decode_image
from swin_serve.server.v2 import messages
from tests.support import free_port, metric, parse_metrics, until
from tests.support.fakes import default_model, image_bytes, tiny_manifest
from tests.support.v2 import length_prefixed

pytestmark = pytest.mark.anyio

MODEL = "fake_swin_32"  # tests/server/conftest.py: tiny_manifest
SIZE = 32
OUTPUTS = ["logits", "embedding", "stage1", "stage2", "stage3", "stage4"]
Code = grpc.StatusCode


class Served:
    """An app with gRPC on a free port, its HTTP client and a channel to its gRPC port."""

    def __init__(self, app: Any, client: Any, channel: grpc.aio.Channel, port: int) -> None:
        self.app, self.client, self.channel, self.port = app, client, channel, port
        self.state = app.state.service

    def stub(self, method: str) -> grpc.aio.UnaryUnaryMultiCallable:
        return self.channel.unary_unary(
            f"/{messages.SERVICE}/{method}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=messages.response_type(method).FromString,
        )

    async def call(self, method: str, metadata: tuple = (), **fields: Any) -> Any:
        return await self.stub(method)(messages.request_type(method)(**fields), metadata=metadata)

    async def infer(self, request: Any, metadata: tuple = ()) -> Any:
        return await self.stub("ModelInfer")(request, metadata=metadata)

    async def refused(self, request: Any, metadata: tuple = ()) -> grpc.aio.AioRpcError:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await self.infer(request, metadata)
        return caught.value

    def metrics(self) -> dict:
        return parse_metrics(self.state.metrics.render().decode())


@pytest.fixture
def grpc_serving(make_app, serve) -> Callable[..., Any]:
    """``async with grpc_serving(engine=None, **settings) as served``."""

    @asynccontextmanager
    async def start(engine: Any = None, **settings: Any) -> AsyncIterator[Served]:
        port = free_port()
        app = make_app(engine, grpc_port=port, **settings)
        async with (
            serve(app) as client,
            grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
        ):
            yield Served(app, client, channel, port)

    return start


def image_request(images: list[bytes], outputs: list | None = None, **fields: Any) -> Any:
    """A ModelInferRequest as Triton's client sends it: images in raw_input_contents."""
    return messages.ModelInferRequest(
        **{"model_name": MODEL, **fields},
        inputs=[{"name": "image", "datatype": "BYTES", "shape": [len(images)]}],
        raw_input_contents=[length_prefixed(*images)],
        outputs=outputs or [],
    )


def classification(k: int, kind: str = "int64_param") -> dict:
    return {
        "name": "logits",
        "parameters": {"classification": messages.InferParameter(**{kind: k})},
    }


def decode_outputs(response: Any) -> dict[str, np.ndarray | list[bytes]]:
    assert len(response.outputs) == len(response.raw_output_contents)
    out: dict = {}
    for tensor, raw in zip(response.outputs, response.raw_output_contents, strict=True):
        if tensor.datatype == "BYTES":
            out[tensor.name] = list(deserialize_bytes_tensor(raw))  # Triton's own reader
        else:
            assert tensor.datatype == "FP32"
            out[tensor.name] = np.frombuffer(raw, "<f4").reshape(list(tensor.shape))
    return out


def expected(engine, manifest, images: list[bytes]) -> dict[str, np.ndarray]:
    batch = np.stack([decode_image(im, manifest.preprocess, max_pixels=1_000_000) for im in images])
    return engine.outputs_for(batch)


def top_k_strings(logits: np.ndarray, k: int) -> list[bytes]:
    return [f"{row[i]:f}:{i}:class{i}".encode() for row in logits for i in np.argsort(-row)[:k]]


def assert_close(got, want, names=OUTPUTS) -> None:
    for name in names:
        assert got[name].shape == want[name].shape, name
        np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=1e-6, err_msg=name)


# -- the six RPCs -----------------------------------------------------------------------------


async def test_every_rpc_with_our_own_messages(grpc_serving, make_engine, pngs, manifest):
    engine = make_engine()
    images = pngs(2)
    async with grpc_serving(engine) as served:
        live = await served.call("ServerLive")
        ready = await served.call("ServerReady")
        server = await served.call("ServerMetadata")
        model = await served.call("ModelMetadata", name=MODEL)
        versioned = await served.call("ModelMetadata", name=MODEL, version="1")
        model_ready = await served.call("ModelReady", name=MODEL, version="1")
        call = served.stub("ModelInfer")(image_request(images, id="g-1"))
        response = await call
        trailing = dict(await call.trailing_metadata())
    assert live.live and ready.ready and model_ready.ready
    assert server.name == "swin-serve" and server.version
    assert list(server.extensions) == ["binary_tensor_data", "classification"]
    assert model == versioned
    assert (model.name, list(model.versions), model.platform) == (MODEL, ["1"], "onnxruntime_onnx")
    assert [(t.name, t.datatype, list(t.shape)) for t in model.inputs] == [
        ("image", "BYTES", [-1]),
        ("pixel_values", "FP32", [-1, 3, SIZE, SIZE]),
    ]
    assert [(t.name, list(t.shape)) for t in model.outputs] == [
        ("logits", [-1, 10]),
        ("embedding", [-1, 64]),
        ("stage1", [-1, 8, 8, 8]),
        ("stage2", [-1, 16, 4, 4]),
        ("stage3", [-1, 32, 2, 2]),
        ("stage4", [-1, 64, 1, 1]),
    ]
    assert (response.model_name, response.model_version, response.id) == (MODEL, "1", "g-1")
    assert [o.name for o in response.outputs] == OUTPUTS
    assert_close(decode_outputs(response), expected(engine, manifest, images))
    timing = trailing["server-timing"]
    assert "total;dur=" in timing and 'batch;desc="2"' in timing
    assert engine.calls == [2]


@pytest.mark.parametrize("random_weights", [True, False])
async def test_random_weights_are_announced_in_every_answer(
    grpc_serving, make_engine, pngs, random_weights
):
    engine = make_engine(manifest=tiny_manifest(random_weights=random_weights))
    async with grpc_serving(engine) as served:
        response = await served.stub("ModelInfer")(image_request(pngs(1)))
    warning = (
        response.parameters["warning"].string_param if "warning" in response.parameters else None
    )
    expected = random_weights_warning(engine.manifest.variant)
    assert warning == (expected if random_weights else None)


async def test_typed_contents_fp32_and_bytes(grpc_serving, make_engine, pngs, manifest):
    engine = make_engine()
    images = pngs(2)
    pixels = np.random.default_rng(5).normal(size=(1, 3, SIZE, SIZE)).astype(np.float32)
    as_bytes = messages.ModelInferRequest(
        model_name=MODEL,
        inputs=[
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [2, 1],
                "contents": {"bytes_contents": images},
            }
        ],
    )
    as_floats = messages.ModelInferRequest(
        model_name=MODEL,
        inputs=[
            {
                "name": "pixel_values",
                "datatype": "FP32",
                "shape": [1, 3, SIZE, SIZE],
                "contents": {"fp32_contents": pixels.reshape(-1).tolist()},
            }
        ],
        outputs=[{"name": "logits"}, {"name": "stage3"}],
    )
    raw_floats = messages.ModelInferRequest(
        model_name=MODEL,
        inputs=[{"name": "pixel_values", "datatype": "FP32", "shape": [1, 3, SIZE, SIZE]}],
        raw_input_contents=[pixels.astype("<f4").tobytes()],
    )
    async with grpc_serving(engine) as served:
        from_bytes = await served.infer(as_bytes)
        from_floats = await served.infer(as_floats)
        from_raw = await served.infer(raw_floats)
    assert_close(decode_outputs(from_bytes), expected(engine, manifest, images))
    assert [o.name for o in from_floats.outputs] == ["logits", "stage3"]
    assert_close(decode_outputs(from_floats), engine.outputs_for(pixels), ["logits", "stage3"])
    assert_close(decode_outputs(from_raw), engine.outputs_for(pixels))


@pytest.mark.parametrize("kind", ["int64_param", "uint64_param"])
async def test_classification(grpc_serving, make_engine, pngs, manifest, kind):
    engine = make_engine()
    images = pngs(3)
    async with grpc_serving(engine) as served:
        response = await served.infer(image_request(images, [classification(5, kind)]))
    (tensor,) = response.outputs
    assert (tensor.name, tensor.datatype, list(tensor.shape)) == ("logits", "BYTES", [3, 5])
    logits = expected(engine, manifest, images)["logits"]  # the same batch: the same numbers
    assert decode_outputs(response)["logits"] == top_k_strings(logits, 5)


async def test_tritons_client_in_the_same_process(grpc_serving, make_engine, pngs, manifest):
    """Triton's client registers ``inference.*`` in the default descriptor pool; ours live in
    a pool of their own, so both load in one process and each parses what the other writes."""
    ours = image_request(pngs(1), [classification(2)], id="x")
    theirs = triton_pb2.ModelInferRequest.FromString(ours.SerializeToString())
    assert theirs.outputs[0].parameters["classification"].int64_param == 2
    assert type(ours).DESCRIPTOR.file.pool is not triton_pb2.DESCRIPTOR.pool
    assert messages.ModelInferRequest.FromString(theirs.SerializeToString()) == ours

    engine = make_engine()
    images = pngs(2)
    pixels = np.random.default_rng(1).normal(size=(1, 3, SIZE, SIZE)).astype(np.float32)
    async with grpc_serving(engine) as served:
        url = f"127.0.0.1:{served.port}"
        client = tritongrpc_aio.InferenceServerClient(url)
        try:
            assert await client.is_server_live() and await client.is_server_ready()
            assert await client.is_model_ready(MODEL)
            meta = await client.get_model_metadata(MODEL)
            assert meta.name == MODEL and [i.name for i in meta.inputs] == ["image", "pixel_values"]
            image_input = tritongrpc_aio.InferInput("image", [2], "BYTES")
            image_input.set_data_from_numpy(np.array(images, dtype=np.object_))
            wanted = [
                tritongrpc_aio.InferRequestedOutput("logits", class_count=3),
                tritongrpc_aio.InferRequestedOutput("embedding"),
            ]
            result = await client.infer(MODEL, [image_input], outputs=wanted, request_id="t1")
            pixel_input = tritongrpc_aio.InferInput("pixel_values", list(pixels.shape), "FP32")
            pixel_input.set_data_from_numpy(pixels)
            from_pixels = await client.infer(MODEL, [pixel_input])
        finally:
            await client.close()

        def sync_client_error() -> InferenceServerException:
            # The blocking client, off the event loop that serves it.
            with tritongrpc.InferenceServerClient(url) as sync:
                assert sync.is_model_ready(MODEL, "1")
                bad = tritongrpc.InferInput("image", [1], "BYTES")
                bad.set_data_from_numpy(np.array([b"not an image"], dtype=np.object_))
                with pytest.raises(InferenceServerException) as caught:
                    sync.infer(MODEL, [bad])
                return caught.value

        error = await asyncio.to_thread(sync_client_error)
    want = expected(engine, manifest, images)
    assert result.get_response().id == "t1"
    classes = result.as_numpy("logits")
    assert classes.shape == (2, 3) and list(classes.reshape(-1)) == top_k_strings(want["logits"], 3)
    np.testing.assert_allclose(result.as_numpy("embedding"), want["embedding"], rtol=1e-6)
    assert_close({n: from_pixels.as_numpy(n) for n in OUTPUTS}, engine.outputs_for(pixels))
    assert error.status() == "StatusCode.INVALID_ARGUMENT" and error.message()


# -- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "fields"),
    [
        ("ModelMetadata", {"name": "other"}),
        ("ModelMetadata", {"name": MODEL, "version": "2"}),
        ("ModelReady", {"name": "other"}),
        ("ModelReady", {"name": MODEL, "version": "0"}),
    ],
)
async def test_unknown_models_and_versions_are_not_found(grpc_serving, method, fields):
    async with grpc_serving() as served:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await served.call(method, **fields)
    assert caught.value.code() is Code.NOT_FOUND and MODEL in caught.value.details()


@pytest.mark.parametrize("method", list(messages.METHODS))
async def test_malformed_protobuf_is_invalid_argument(grpc_serving, method):
    async with grpc_serving() as served:
        raw = served.channel.unary_unary(
            f"/{messages.SERVICE}/{method}", request_serializer=None, response_deserializer=None
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await raw(b"\x0a\xff\xff\xff\xff\x0f-truncated")  # field 1, 4 GiB long
        assert caught.value.code() is Code.INVALID_ARGUMENT
        assert "malformed protobuf" in caught.value.details()
        assert (await served.call("ServerLive")).live


def _png(size=(40, 48)) -> bytes:
    return image_bytes((10, 200, 30), size)


def _tiff() -> bytes:
    return image_bytes(size=(8, 8), fmt="TIFF")


def _pixels(values: list, shape=(1, 3, SIZE, SIZE)) -> Any:
    spec = {"name": "pixel_values", "datatype": "FP32", "shape": list(shape)}
    return messages.ModelInferRequest(
        model_name=MODEL, inputs=[{**spec, "contents": {"fp32_contents": values}}]
    )


_ONE = _png()
_IMAGE = {"name": "image", "datatype": "BYTES", "shape": [1]}
_NUMEL = 3 * SIZE * SIZE

MALFORMED: dict[str, tuple[Code, Any]] = {
    "unknown_model": (Code.NOT_FOUND, image_request([_ONE], model_name="other")),
    "wrong_version": (Code.NOT_FOUND, image_request([_ONE], model_version="2")),
    "raw_count_mismatch": (
        Code.INVALID_ARGUMENT,
        messages.ModelInferRequest(
            model_name=MODEL, inputs=[_IMAGE], raw_input_contents=[b"", length_prefixed(_ONE)]
        ),
    ),
    "contents_and_raw": (
        Code.INVALID_ARGUMENT,
        messages.ModelInferRequest(
            model_name=MODEL,
            inputs=[{**_IMAGE, "contents": {"bytes_contents": [_ONE]}}],
            raw_input_contents=[length_prefixed(_ONE)],
        ),
    ),
    "no_data": (
        Code.INVALID_ARGUMENT,
        messages.ModelInferRequest(model_name=MODEL, inputs=[_IMAGE]),
    ),
    "no_inputs": (Code.INVALID_ARGUMENT, messages.ModelInferRequest(model_name=MODEL)),
    "two_inputs": (
        Code.INVALID_ARGUMENT,
        messages.ModelInferRequest(
            model_name=MODEL,
            inputs=[_IMAGE, _IMAGE],
            raw_input_contents=[length_prefixed(_ONE)] * 2,
        ),
    ),
    "zero_images": (Code.INVALID_ARGUMENT, image_request([])),
    "too_many_images": (Code.INVALID_ARGUMENT, image_request([_ONE] * 9)),
    "element_overrun": (
        Code.INVALID_ARGUMENT,
        messages.ModelInferRequest(
            model_name=MODEL, inputs=[_IMAGE], raw_input_contents=[struct.pack("<I", 2**31) + b"ab"]
        ),
    ),
    "huge_shape": (
        Code.INVALID_ARGUMENT,
        messages.ModelInferRequest(
            model_name=MODEL, inputs=[{**_IMAGE, "shape": [2**63 - 1] * 600}]
        ),
    ),
    "negative_shape": (
        Code.INVALID_ARGUMENT,
        messages.ModelInferRequest(model_name=MODEL, inputs=[{**_IMAGE, "shape": [-2]}]),
    ),
    "unknown_datatype": (
        Code.INVALID_ARGUMENT,
        messages.ModelInferRequest(model_name=MODEL, inputs=[{**_IMAGE, "datatype": "INT64"}]),
    ),
    "not_an_image": (Code.INVALID_ARGUMENT, image_request([b"hello"])),
    "tiff": (Code.INVALID_ARGUMENT, image_request([_tiff()])),
    "too_many_pixels": (Code.RESOURCE_EXHAUSTED, image_request([_png((1001, 1000))])),
    "unknown_output": (Code.INVALID_ARGUMENT, image_request([_ONE], [{"name": "probs"}])),
    "duplicate_output": (
        Code.INVALID_ARGUMENT,
        image_request([_ONE], [{"name": "stage1"}, {"name": "stage1"}]),
    ),
    "classification_as_string": (
        Code.INVALID_ARGUMENT,
        image_request(
            [_ONE],
            [{"name": "logits", "parameters": {"classification": {"string_param": "3"}}}],
        ),
    ),
    "classification_negative": (Code.INVALID_ARGUMENT, image_request([_ONE], [classification(-1)])),
    "classification_too_large": (
        Code.INVALID_ARGUMENT,
        image_request([_ONE], [classification(2**64 - 1, "uint64_param")]),
    ),
    "classification_on_stage": (
        Code.INVALID_ARGUMENT,
        image_request(
            [_ONE],
            [{"name": "stage2", "parameters": {"classification": {"int64_param": 1}}}],
        ),
    ),
    "nan_pixels": (Code.INVALID_ARGUMENT, _pixels([float("nan")] * _NUMEL)),
    "infinite_pixels": (Code.INVALID_ARGUMENT, _pixels([float("inf")] * _NUMEL)),
    "pixels_count_mismatch": (Code.INVALID_ARGUMENT, _pixels([0.0] * (_NUMEL - 1))),
    "pixels_wrong_shape": (Code.INVALID_ARGUMENT, _pixels([0.0] * _NUMEL, (1, 3, SIZE * SIZE))),
}


@pytest.mark.parametrize("case", MALFORMED)
async def test_malformed_requests_get_their_status(grpc_serving, make_engine, png, case):
    code, request = MALFORMED[case]
    engine = make_engine()
    async with grpc_serving(engine) as served:
        error = await served.refused(request)
        after = await served.infer(image_request([png()]))
    assert error.code() is code, (error.code(), error.details())
    assert error.details()
    assert [o.name for o in after.outputs] == OUTPUTS
    assert engine.calls == [1]  # only the good request reached the engine


@pytest.mark.parametrize("value", ["0", "-3", "600001", "soon", "1.5"])
async def test_an_invalid_timeout_metadata_is_invalid_argument(grpc_serving, png, value):
    async with grpc_serving() as served:
        error = await served.refused(image_request([png()]), (("x-request-timeout-ms", value),))
    assert error.code() is Code.INVALID_ARGUMENT and "x-request-timeout-ms" in error.details()


async def test_a_call_past_its_timeout_metadata_is_deadline_exceeded(
    grpc_serving, gated_engine, pngs
):
    engine, release = gated_engine
    busy_image, image = pngs(2)
    async with grpc_serving(engine, max_batch_size=1, parallel_batches=1) as served:
        busy = asyncio.ensure_future(served.infer(image_request([busy_image])))
        await until(lambda: engine.calls)
        error = await served.refused(image_request([image]), (("x-request-timeout-ms", "50"),))
        release.set()
        await busy
        samples = served.metrics()
    assert error.code() is Code.DEADLINE_EXCEEDED
    assert engine.calls == [1]  # it never ran
    assert metric(samples, "swin_rejections_total", reason="deadline_exceeded") == 1


async def test_not_ready_is_unavailable(make_engine, make_app, serve, png):
    gate = threading.Event()
    engine = make_engine(warmup_gate=gate)
    port = free_port()
    app = make_app(engine, grpc_port=port)
    async with (
        serve(app, wait_for_warm_up=False),
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        served = Served(app, None, channel, port)
        assert (await served.call("ServerLive")).live
        assert not (await served.call("ServerReady")).ready
        assert not (await served.call("ModelReady", name=MODEL)).ready
        error = await served.refused(image_request([png()]))
        gate.set()
        await app.state.service.lifecycle.wait_for_warm_up()
        assert (await served.call("ServerReady")).ready
        await served.infer(image_request([png()]))
    assert error.code() is Code.UNAVAILABLE and "warming up" in error.details()
    assert engine.calls == [1]


async def test_queue_full_is_unavailable_at_once(grpc_serving, gated_engine, pngs):
    engine, release = gated_engine
    settings = {
        "max_batch_size": 1,
        "parallel_batches": 1,
        "queue_capacity": 2,
        "max_images_per_request": 1,
    }
    requests = [image_request([im], [{"name": "logits"}]) for im in pngs(4)]
    async with grpc_serving(engine, **settings) as served:
        batcher = default_model(served.state.lifecycle).batcher
        running = asyncio.ensure_future(served.infer(requests[0]))
        await until(lambda: engine.calls)
        queued = [asyncio.ensure_future(served.infer(r)) for r in requests[1:3]]
        await until(lambda: batcher.depth == 2)
        error = await served.refused(requests[3])  # while the model is held
        release.set()
        done = await asyncio.gather(running, *queued)
        samples = served.metrics()
    assert error.code() is Code.UNAVAILABLE and "queue full" in error.details()
    assert len(done) == 3 and engine.calls == [1, 1, 1]
    assert metric(samples, "swin_rejections_total", reason="overloaded") == 1
    assert metric(samples, "swin_grpc_requests_total", method="ModelInfer", code="UNAVAILABLE") == 1


async def test_http_and_grpc_share_the_request_slots(grpc_serving, gated_engine, pngs):
    engine, release = gated_engine
    images = pngs(4)
    v2 = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["AA=="]}]}
    async with grpc_serving(
        engine, max_concurrent_requests=2, max_batch_size=1, parallel_batches=1
    ) as served:
        slots = served.state.slots
        # HTTP requests hold both slots: a gRPC inference is refused, metadata still answered.
        held = [
            asyncio.ensure_future(served.client.post("/classify", files={"file": im}))
            for im in images[:2]
        ]
        await until(lambda: slots.in_use == 2)
        by_grpc = await served.refused(image_request([images[2]]))
        assert (await served.call("ModelReady", name=MODEL)).ready
        release.set()
        assert [r.status_code for r in await asyncio.gather(*held)] == [200, 200]
        # And the other way round.
        release.clear()
        held = [asyncio.ensure_future(served.infer(image_request([im]))) for im in images[:2]]
        await until(lambda: slots.in_use == 2)
        by_http = await served.client.post(f"/v2/models/{MODEL}/infer", json=v2)
        assert (await served.client.get("/v2/health/ready")).status_code == 200
        release.set()
        await asyncio.gather(*held)
        after = await served.infer(image_request([images[3]]))
        samples = served.metrics()
    assert by_grpc.code() is Code.UNAVAILABLE and "overloaded" in by_grpc.details()
    assert by_http.status_code == 503 and "overloaded" in by_http.json()["error"]
    assert by_http.headers["Retry-After"] == "1"
    assert after.outputs and slots.in_use == 0
    assert engine.calls == [1] * 5
    assert metric(samples, "swin_rejections_total", reason="overloaded") == 2


async def test_calls_are_counted_by_method_and_code(grpc_serving, png):
    async with grpc_serving() as served:
        await served.call("ServerLive")
        await served.call("ServerLive")
        await served.infer(image_request([png()]))
        await served.refused(image_request([b"junk"]))
        await served.refused(image_request([png()], model_name="secret-name"))
        samples = served.metrics()
        text = served.state.metrics.render().decode()
    counted = {
        (dict(labels)["method"], dict(labels)["code"]): value
        for (name, labels), value in samples.items()
        if name == "swin_grpc_requests_total"
    }
    assert counted == {
        ("ServerLive", "OK"): 2,
        ("ModelInfer", "OK"): 1,
        ("ModelInfer", "INVALID_ARGUMENT"): 1,
        ("ModelInfer", "NOT_FOUND"): 1,
    }
    assert metric(samples, "swin_grpc_request_duration_seconds_count", method="ModelInfer") == 3
    assert metric(samples, "swin_rejections_total", reason="invalid_image") == 1
    assert metric(samples, "swin_rejections_total", reason="not_found") == 1
    assert "secret" not in text


async def test_a_long_model_name_is_not_found_with_a_message_that_fits_in_metadata(grpc_serving):
    async with grpc_serving() as served:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await served.call("ModelMetadata", name="m" * 1_000_000)
    assert caught.value.code() is Code.NOT_FOUND
    assert len(caught.value.details()) < 1000


async def test_a_call_whose_client_deadline_passes_is_counted_deadline_exceeded(
    grpc_serving, gated_engine, pngs
):
    engine, release = gated_engine
    async with grpc_serving(engine) as served:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await served.stub("ModelInfer")(image_request(pngs(1)), timeout=0.3)
        await until(
            lambda: (
                metric(
                    served.metrics(),
                    "swin_grpc_requests_total",
                    method="ModelInfer",
                    code="DEADLINE_EXCEEDED",
                )
                == 1
            )
        )
        samples = served.metrics()
        release.set()
    assert caught.value.code() is Code.DEADLINE_EXCEEDED
    assert metric(samples, "swin_rejections_total", reason="deadline_exceeded") == 1
    assert metric(samples, "swin_rejections_total", reason="client_disconnected") == 0


class _Refusing:
    """A ServicerContext that records what the handler does with it."""

    def __init__(self) -> None:
        self.reads = 0
        self.aborted: tuple | None = None

    async def read(self) -> bytes:
        self.reads += 1
        return b""

    async def abort(self, code, details) -> None:
        self.aborted = (code, details)
        raise grpc.aio.AbortError()

    def time_remaining(self) -> None:
        return None


@pytest.mark.parametrize("why", ["draining", "no free request slot"])
async def test_an_inference_call_is_refused_before_its_message_is_read(make_app, serve, why):
    """ModelInfer takes its slot first: a flood of large calls is refused without holding
    their bytes (gRPC reads a unary call's whole message before its handler runs)."""
    from swin_serve.server.v2.grpc_server import GrpcServer

    app = make_app(max_concurrent_requests=1)
    async with serve(app):
        state = app.state.service
        server = GrpcServer(state)
        observed = server._observed("ModelInfer", lambda message, context: None)
        if why == "draining":
            server._draining = True
        else:
            assert state.slots.try_take()
        context = _Refusing()
        with pytest.raises(grpc.aio.AbortError):
            await observed(None, context)
    assert context.reads == 0
    assert context.aborted[0] is Code.UNAVAILABLE


async def test_model_metadata_carries_the_transform_as_parameters_triton_can_skip(grpc_serving):
    """The protocol's optional model parameters: what a client sending pixel_values must do.
    Triton's own message lacks the field, and still parses the answer."""
    async with grpc_serving() as served:
        meta = await served.call("ModelMetadata", name=MODEL)
    parameters = {k: v.string_param for k, v in meta.parameters.items()}
    assert parameters["preprocessing_source"] == "not recorded (crop_pct 0.875)"
    assert parameters["preprocessing"].startswith("resize shorter side to 36, centre crop 32")
    assert '"resize_shorter":36' in parameters["preprocess"]
    theirs = triton_pb2.ModelMetadataResponse.FromString(meta.SerializeToString())
    assert theirs.name == MODEL and [i.name for i in theirs.inputs] == ["image", "pixel_values"]
