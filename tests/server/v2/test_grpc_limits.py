"""What a gRPC call may carry: one request message, of at most SWIN_MAX_UPLOAD_BYTES. A message
over the limit is refused by gRPC itself, and counted as an HTTP body over the cap is
(``payload_too_large``, here RESOURCE_EXHAUSTED), not as a client that left; a call carrying
more than one message (or none) is INVALID_ARGUMENT before any model runs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest

from swin_serve.server.observability.logs import ACCESS_LOGGER
from swin_serve.server.v2 import messages
from tests.support import free_port, metric, parse_metrics, until
from tests.support.v2 import length_prefixed

pytestmark = pytest.mark.anyio

MODEL = "fake_swin_32"  # tests/server/conftest.py: tiny_manifest
LIMIT = 64 * 1024
Code = grpc.StatusCode


def infer_request(image: bytes, model: str = MODEL) -> Any:
    return messages.ModelInferRequest(
        model_name=model,
        inputs=[{"name": "image", "datatype": "BYTES", "shape": [1]}],
        raw_input_contents=[length_prefixed(image)],
    )


def stub(channel: grpc.aio.Channel, method: str, *, stream: bool = False) -> Any:
    kind = channel.stream_unary if stream else channel.unary_unary
    return kind(
        f"/{messages.SERVICE}/{method}",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=messages.response_type(method).FromString,
    )


@pytest.fixture
def serving(make_app, serve, make_engine):
    """``async with serving() as (app, engine, channel)``: gRPC on a free port, messages capped
    at LIMIT bytes."""

    @asynccontextmanager
    async def start() -> AsyncIterator[tuple[Any, Any, grpc.aio.Channel]]:
        port, engine = free_port(), make_engine()
        app = make_app(engine, grpc_port=port, max_upload_bytes=LIMIT)
        async with (
            serve(app),
            grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
        ):
            yield app, engine, channel

    return start


def samples(app: Any) -> dict:
    return parse_metrics(app.state.service.metrics.render().decode())


def infer_codes(app: Any) -> dict[str, float]:
    """ModelInfer calls counted, by status code."""
    return {
        dict(labels)["code"]: value
        for (name, labels), value in samples(app).items()
        if name == "swin_grpc_requests_total" and dict(labels)["method"] == "ModelInfer"
    }


@pytest.fixture
def access_lines(caplog, monkeypatch) -> Any:
    """The access log's structured fields, line by line (on, whatever an earlier test set)."""
    monkeypatch.setattr(logging.getLogger(ACCESS_LOGGER), "disabled", False)
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    return lambda: [r.fields for r in caplog.records if r.name == ACCESS_LOGGER]


async def test_a_message_over_the_limit_is_counted_resource_exhausted_not_a_disconnect(
    serving, png, access_lines
):
    """gRPC refuses it from its length prefix; the handler sees only the call end. Several calls,
    because that end comes as an EOF from read() or as the task cancelled, whichever wins."""
    calls = 5
    async with serving() as (app, engine, channel):
        for _ in range(calls):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub(channel, "ModelInfer")(infer_request(b"\0" * (LIMIT * 3)), timeout=10)
            assert caught.value.code() is Code.RESOURCE_EXHAUSTED
        await until(lambda: sum(infer_codes(app).values()) == calls)
        after = await stub(channel, "ModelInfer")(infer_request(png()), timeout=10)
        counted = samples(app)
    assert after.outputs and engine.calls == [1]
    assert infer_codes(app) == {"RESOURCE_EXHAUSTED": calls, "OK": 1}
    assert metric(counted, "swin_rejections_total", reason="payload_too_large") == calls
    assert metric(counted, "swin_rejections_total", reason="client_disconnected") == 0
    statuses = [f["status"] for f in access_lines() if f["method"] == "ModelInfer"]
    assert statuses == ["RESOURCE_EXHAUSTED"] * calls + ["OK"]


async def test_a_client_that_cancels_while_sending_is_not_counted_too_large(serving, png):
    """The other side of the line drawn above: a call the client cancels before its message is
    complete is a client that left."""
    async with serving() as (app, engine, channel):
        held = asyncio.Event()

        async def never_finished() -> AsyncIterator[Any]:
            held.set()
            await asyncio.Event().wait()  # the message never comes
            yield infer_request(png())

        call = stub(channel, "ModelInfer", stream=True)(never_finished(), timeout=10)
        await held.wait()
        await until(lambda: app.state.service.slots.in_use == 1)  # admitted, reading
        call.cancel()
        await until(lambda: sum(infer_codes(app).values()) == 1)
        counted = samples(app)
    assert engine.calls == []
    assert infer_codes(app) == {"CANCELLED": 1}  # not a bad request, nor too large
    assert metric(counted, "swin_rejections_total", reason="client_disconnected") == 1


async def test_a_deadline_that_passes_before_the_message_arrives_is_deadline_exceeded(serving):
    async with serving() as (app, engine, channel):

        async def never_sent() -> AsyncIterator[Any]:
            await asyncio.Event().wait()
            yield infer_request(b"")

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub(channel, "ModelInfer", stream=True)(never_sent(), timeout=0.5)
        await until(lambda: sum(infer_codes(app).values()) == 1)
        counted = samples(app)
    assert caught.value.code() is Code.DEADLINE_EXCEEDED and engine.calls == []
    assert infer_codes(app) == {"DEADLINE_EXCEEDED": 1}
    assert metric(counted, "swin_rejections_total", reason="deadline_exceeded") == 1
    assert metric(counted, "swin_rejections_total", reason="invalid_tensor") == 0


async def test_a_second_message_is_invalid_argument_and_no_model_runs(serving, png):
    """gRPC alone would answer the first message and drop the second (an unknown model here)."""
    async with serving() as (app, engine, channel):
        two = [infer_request(png()), infer_request(png(), model="no-such-model")]
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub(channel, "ModelInfer", stream=True)(iter(two), timeout=10)
        counted = samples(app)
    assert caught.value.code() is Code.INVALID_ARGUMENT
    assert "more than one request message" in caught.value.details()
    assert engine.calls == []
    assert infer_codes(app) == {"INVALID_ARGUMENT": 1}
    assert metric(counted, "swin_rejections_total", reason="invalid_tensor") == 1


@pytest.mark.parametrize("count", [0, 2])
async def test_every_method_takes_exactly_one_message(serving, count):
    requests = [messages.request_type("ModelMetadata")(name=MODEL)] * count
    async with serving() as (_, _, channel):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub(channel, "ModelMetadata", stream=True)(iter(requests), timeout=10)
        live = await stub(channel, "ServerLive")(messages.request_type("ServerLive")(), timeout=10)
    assert caught.value.code() is Code.INVALID_ARGUMENT
    assert ("no request message" if count == 0 else "more than one") in caught.value.details()
    assert live.live


async def test_a_stream_that_half_closes_after_its_one_message_is_answered(serving, png):
    """The server reads up to the half-close: a client stream that sends its message and closes
    later (not in the same frame, as unary clients do) is served."""
    async with serving() as (_, engine, channel):
        sent = asyncio.Event()

        async def one_then_close() -> AsyncIterator[Any]:
            yield infer_request(png())
            sent.set()
            await asyncio.sleep(0.2)  # the half-close follows on its own

        response = await stub(channel, "ModelInfer", stream=True)(one_then_close(), timeout=10)
    assert sent.is_set() and response.outputs
    assert engine.calls == [1]


async def test_a_stream_that_never_half_closes_is_refused_at_the_body_timeout(
    make_app, serve, make_engine, png
):
    """A call without a deadline whose client sends its message and never closes would hold its
    request slot for ever: it gets the HTTP body's bound (408 there, DEADLINE_EXCEEDED here)."""
    port, engine = free_port(), make_engine()
    app = make_app(engine, grpc_port=port, body_timeout_s=0.5)
    release = asyncio.Event()

    async def one_then_hold() -> AsyncIterator[Any]:
        yield infer_request(png())
        await release.wait()

    async with serve(app), grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                # No deadline of its own; the bound here is only a hang guard for the test.
                call = stub(channel, "ModelInfer", stream=True)(one_then_hold())
                await asyncio.wait_for(call, 60)
        finally:
            release.set()
    assert caught.value.code() is Code.DEADLINE_EXCEEDED
    assert "SWIN_BODY_TIMEOUT_S" in caught.value.details()
    assert engine.calls == []
    assert metric(samples(app), "swin_rejections_total", reason="request_timeout") == 1
