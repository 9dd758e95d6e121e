"""Open Inference Protocol (v2) abuse against the real server process, over HTTP and gRPC on
127.0.0.1: binary sections and header lengths that lie, hostile shapes, JSON nested past any
parser's depth, bodies that stall, and garbage on the gRPC port.

One server for the module, with small limits so each bound is reached quickly: 64 KiB bodies
(and gRPC messages), bodies within 1.5 s. Every answer is a 4xx in the protocol's shape (or a
gRPC client-error status), and afterwards the server still serves a normal request.
"""

from __future__ import annotations

import base64
import io
import json
import socket
import struct
import time

import grpc
import httpx
import pytest
from PIL import Image

from swin_serve.server.v2 import messages
from tests.support import free_port
from tests.support.v2 import length_prefixed

MAX_BODY = 64 * 1024
BODY_TIMEOUT_S = 1.5
EARLY_S = 0.1  # timers fire on the event loop's clock: allow them this much ahead of ours
HANG_GUARD_S = 15.0  # far past the body timeout: only a server that never answers hits it
HEADER_LENGTH = "Inference-Header-Content-Length"


@pytest.fixture(scope="module")
def server(start_module_server):
    return start_module_server(
        max_upload_bytes=MAX_BODY, body_timeout_s=BODY_TIMEOUT_S, grpc_port=free_port()
    )


@pytest.fixture(scope="module")
def model(server) -> dict:
    name = httpx.get(f"{server.base}/v1/models", timeout=10).json()["name"]
    return {"name": name, "url": f"{server.base}/v2/models/{name}/infer"}


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.grpc_address) as channel:
        yield channel


def rpc(channel, method: str, raw: bool = False):
    if raw:
        return channel.unary_unary(f"/{messages.SERVICE}/{method}")
    return channel.unary_unary(
        f"/{messages.SERVICE}/{method}",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=messages.response_type(method).FromString,
    )


def jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 32), (30, 120, 220)).save(buf, format="JPEG")
    return buf.getvalue()


def image_spec(n: int = 1, **extra) -> dict:
    return {"name": "image", "datatype": "BYTES", "shape": [n], **extra}


def post(model, body: bytes, headers: dict | None = None) -> httpx.Response:
    return httpx.post(model["url"], content=body, headers=headers or {}, timeout=10)


def assert_v2_error(resp: httpx.Response, status: int = 400) -> str:
    assert resp.status_code == status, resp.text[:300]
    body = resp.json()
    assert set(body) == {"error"} and isinstance(body["error"], str), body
    return body["error"]


def assert_still_serving(server, model, channel) -> None:
    """A normal request still succeeds over both protocols, and nothing was a server error."""
    image = jpeg()
    doc = {"inputs": [image_spec(data=[base64.b64encode(image).decode()])]}
    resp = httpx.post(model["url"], json=doc, timeout=10)
    assert resp.status_code == 200, resp.text[:300]
    request = messages.ModelInferRequest(
        model_name=model["name"],
        inputs=[image_spec()],
        raw_input_contents=[length_prefixed(image)],
    )
    assert len(rpc(channel, "ModelInfer")(request, timeout=10).outputs) == 6
    samples = server.metrics()
    errors = {
        labels: value
        for (name, labels), value in samples.items()
        if (name == "swin_requests_total" and dict(labels)["status"].startswith("5"))
        or (name == "swin_grpc_requests_total" and dict(labels)["code"] in ("INTERNAL", "UNKNOWN"))
    }
    assert not errors, errors


# -- HTTP -------------------------------------------------------------------------------------


def test_binary_sections_that_do_not_add_up(server, model, channel):
    section = length_prefixed(jpeg())

    def body(size: int, binary: bytes) -> tuple[bytes, dict]:
        header = json.dumps(
            {"inputs": [image_spec(parameters={"binary_data_size": size})]}
        ).encode()
        return header + binary, {HEADER_LENGTH: str(len(header))}

    cases = {
        "section cut short": body(len(section), section[:-100]),
        "section cut inside a length prefix": body(len(section), section[:2]),
        "bytes nobody claims": body(len(section), section + b"\x00" * 50),
        "an element claiming 2 GiB": body(8, struct.pack("<I", 2**31) + b"abcd"),
        "no binary section at all": body(len(section), b""),
    }
    for what, (content, headers) in cases.items():
        message = assert_v2_error(post(model, content, headers))
        assert "binary" in message or "BYTES" in message, (what, message)
    assert_still_serving(server, model, channel)


@pytest.mark.parametrize(
    "declared",
    ["-1", "99999999", "1e3", "0x10", "ten", "10", "9" * 5000],
)
def test_header_lengths_that_lie(server, model, channel, declared):
    section = length_prefixed(jpeg())
    header = json.dumps({"inputs": [image_spec(parameters={"binary_data_size": len(section)})]})
    assert_v2_error(post(model, header.encode() + section, {HEADER_LENGTH: declared}))
    # And a JSON-only body announced as if it had a binary section: the JSON is cut.
    doc = json.dumps({"inputs": [image_spec(data=["AA=="])]}).encode()
    assert_v2_error(post(model, doc, {HEADER_LENGTH: str(len(doc) // 2)}))
    assert_still_serving(server, model, channel)


@pytest.mark.parametrize(
    "shape",
    [[10**18] * 300, [2**62, 2**62], [2**64], [4_000_000_000], [10**4000, 0, 10**4000], [-1]],
    ids=["product_5400_digits", "past_int64", "dim_past_int64", "4e9", "zero_between", "negative"],
)
def test_huge_declared_shapes(server, model, channel, shape):
    doc = json.dumps({"inputs": [image_spec(data=["AA=="], shape=shape)]}, separators=(",", ":"))
    assert_v2_error(post(model, doc.encode()))
    pixels = {"name": "pixel_values", "datatype": "FP32", "shape": shape}
    doc = json.dumps({"inputs": [{**pixels, "parameters": {"binary_data_size": 8}}]}).encode()
    assert_v2_error(post(model, doc + b"\x00" * 8, {HEADER_LENGTH: str(len(doc))}))
    assert_still_serving(server, model, channel)


@pytest.mark.parametrize("where", ["data", "shape", "parameters", "outputs", "top"])
@pytest.mark.parametrize("depth", [500, 30_000])
def test_json_nested_past_the_parsers_depth(server, model, channel, where, depth):
    """Below Python's recursion limit the JSON parses and the tensor checks refuse it; past it
    json.loads raises RecursionError, which must still be a 400."""
    nested = "[" * depth + "1" + "]" * depth
    spec = {"name": "pixel_values", "datatype": "FP32", "shape": [1], "data": [1.0]}
    doc = json.dumps({"inputs": [spec]})
    target = {
        "data": '"data": [1.0]',
        "shape": '"shape": [1]',
        "parameters": '"name"',
        "outputs": '{"inputs"',
        "top": None,
    }[where]
    if where == "top":
        body = nested
    elif where == "parameters":
        body = doc.replace(target, f'"parameters": {{"x": {nested}}}, "name"', 1)
    elif where == "outputs":
        body = doc.replace(target, f'{{"outputs": {nested}, "inputs"', 1)
    else:
        key = target.split(":")[0]
        body = doc.replace(target, f"{key}: {nested}", 1)
    assert len(body) < MAX_BODY
    assert_v2_error(post(model, body.encode()))
    assert_still_serving(server, model, channel)


def test_a_v2_body_that_stalls_is_408_in_the_v2_shape(server, model, channel):
    path = model["url"].removeprefix(server.base)
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 50000\r\n\r\n"
    response = b""
    with server.connect(timeout=HANG_GUARD_S) as sock:
        t0 = time.monotonic()
        sock.sendall(head.encode() + b'{"inputs": [')
        # The client sends nothing more: only the server's body timer can end the request.
        while chunk := sock.recv(65536):  # answered, then closed
            response += chunk
        elapsed = time.monotonic() - t0
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), response[:300]
    assert isinstance(json.loads(body)["error"], str)
    assert elapsed >= BODY_TIMEOUT_S - EARLY_S  # not before the timeout
    assert_still_serving(server, model, channel)


def test_a_v2_body_over_the_cap_is_413_in_the_v2_shape(server, model, channel):
    assert "exceeds the limit" in assert_v2_error(post(model, b"[" * (MAX_BODY + 1)), 413)
    assert_still_serving(server, model, channel)


# -- gRPC -------------------------------------------------------------------------------------


def test_garbage_protobuf_is_invalid_argument_on_every_method(server, model, channel):
    garbage = [
        b"\xff" * 64,  # a varint that never ends
        b"\x0a\xff\xff\xff\xff\x0f",  # field 1, 4 GiB long, then nothing
        b"\x0a\x05ab",  # field 1, 5 bytes long, 2 sent
        bytes(range(256)),  # field number 0
    ]
    for method in messages.METHODS:
        for raw in garbage:
            with pytest.raises(grpc.RpcError) as caught:
                rpc(channel, method, raw=True)(raw, timeout=10)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, raw)
    assert_still_serving(server, model, channel)


def test_hostile_grpc_requests(server, model, channel):
    infer = rpc(channel, "ModelInfer")
    name = model["name"]
    cases = {
        "huge shape": messages.ModelInferRequest(
            model_name=name, inputs=[image_spec(shape=[2**63 - 1] * 2000)]
        ),
        "element claiming 2 GiB": messages.ModelInferRequest(
            model_name=name,
            inputs=[image_spec()],
            raw_input_contents=[struct.pack("<I", 2**31) + b"abcd"],
        ),
        "raw and inputs disagree": messages.ModelInferRequest(
            model_name=name, inputs=[image_spec()], raw_input_contents=[b"", b""]
        ),
    }
    for what, request in cases.items():
        with pytest.raises(grpc.RpcError) as caught:
            infer(request, timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, what
    too_big = messages.ModelInferRequest(
        model_name=name, inputs=[image_spec()], raw_input_contents=[b"\x00" * (MAX_BODY + 1)]
    )
    with pytest.raises(grpc.RpcError) as caught:
        infer(too_big, timeout=10)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert_still_serving(server, model, channel)


def test_garbage_on_the_grpc_port(server, model, channel):
    """Not HTTP/2, or HTTP/2 followed by garbage frames: the server hangs up at once."""
    host, port = server.grpc_address.rsplit(":", 1)
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    for junk in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x00" * 4096, preface + b"\xff" * 64):
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(junk)
            try:
                while sock.recv(65536):  # TimeoutError if the server kept it open
                    pass
            except ConnectionResetError:
                pass
    assert_still_serving(server, model, channel)
