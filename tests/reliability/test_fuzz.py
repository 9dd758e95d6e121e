"""Fuzzing the real server process: schemathesis over its OpenAPI schema, hypothesis over image
bytes and over Open Inference Protocol (v2) requests, over HTTP and gRPC.

Bounded: a fixed number of examples per operation, and derandomised so that CI is repeatable (a
failure found once is found again). Run with ``--hypothesis-seed`` unset locally to explore more.
"""

from __future__ import annotations

import base64
import io
import json
import struct

import grpc
import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from schemathesis.specs.openapi.checks import status_code_conformance

from tests.support import free_port

EXAMPLES_PER_OPERATION = 40
RANDOM_IMAGES = 200
V2_REQUESTS = 200
GRPC_REQUESTS = 200


@pytest.fixture(scope="module")
def live(start_module_server):
    # A 64 KiB body cap keeps generated uploads small; everything else is the defaults.
    return start_module_server(max_upload_bytes=64 * 1024)


# The one 503 a ready, idle server may give a single client: a fuzzed ``timeout_ms=1`` rightly
# expires. overloaded, not_ready and draining cannot happen here, so they would be bugs too.
FUZZ_503_CODES = {"deadline_exceeded"}


def no_5xx_but_a_declared_503(ctx, response, case) -> None:
    """schemathesis' own not_a_server_error also fails 503, which we declare. Any other 5xx,
    or a 503 for any other reason, is a bug."""
    status = response.status_code
    assert status < 500 or status == 503, f"{status}: {response.text[:300]}"
    if status == 503:
        assert "retry-after" in {k.lower() for k in response.headers}, "503 without Retry-After"
        error = response.json()["error"]
        if case.path.startswith("/v2"):  # the protocol's shape has only the message
            assert error.startswith("request deadline exceeded"), f"503: {response.text[:300]}"
        else:
            assert error["code"] in FUZZ_503_CODES, f"503: {response.text[:300]}"


def test_no_operation_answers_5xx_or_an_undeclared_status(live):
    # Driven by hand rather than schemathesis' pytest plugin, which does not support this pytest.
    api = schemathesis.openapi.from_url(f"{live.base}/openapi.json")
    operations = [result.ok() for result in api.get_all_operations()]
    assert {op.path for op in operations} >= {"/classify", "/features", "/readyz", "/v1/models"}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        def check(case):
            case.call_and_validate(checks=[no_5xx_but_a_declared_503, status_code_conformance])

        check()


_MAGIC = st.sampled_from(
    [
        b"",
        b"\x89PNG\r\n\x1a\n",
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
        b"\xff\xd8\xff\xe0",
        b"\xff\xd8\xff\xdb",
        b"GIF89a",
        b"GIF87a",
        b"RIFF\x00\x00\x00\x00WEBPVP8 ",
        b"BM",
        b"II*\x00",
    ]
)


@settings(
    max_examples=RANDOM_IMAGES,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
@given(prefix=_MAGIC, tail=st.binary(max_size=2048), raw=st.booleans())
def test_random_bytes_as_an_image_are_a_4xx_never_a_5xx(live, prefix, tail, raw):
    data = prefix + tail
    if raw:
        resp = httpx.post(
            f"{live.base}/classify",
            content=data,
            headers={"Content-Type": "image/jpeg"},
            timeout=10,
        )
    else:
        resp = httpx.post(f"{live.base}/classify", files={"file": ("x.jpg", data)}, timeout=10)
    assert resp.status_code in (200, 400, 413, 415), (data[:64], resp.status_code, resp.text)
    if resp.status_code != 200:
        assert resp.json()["error"]["code"] in {
            "invalid_image",
            "image_too_large",
            "unsupported_media_type",
        }


# -- Open Inference Protocol (v2) requests -----------------------------------------------------


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (24, 20), (90, 10, 200)).save(buf, format="JPEG")
    return buf.getvalue()


# Image files for BYTES tensors: one good (so that valid requests are reachable), the rest not.
_BLOBS = st.sampled_from([_jpeg(), b"", b"\xff\xd8\xff\xe0", b"GIF89a", b"\x00" * 16])
_ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=16,
)
_HOSTILE_SHAPES = st.one_of(
    st.lists(st.integers(-2, 4) | st.integers(0, 2**64) | st.just(3) | st.just(64), max_size=5),
    _ANY_JSON,
)
_PARAM_VALUES = st.integers(-2, 20) | _ANY_JSON
_OUTPUTS = st.lists(
    st.fixed_dictionaries(
        {"name": st.sampled_from(["logits", "embedding", "stage4", "other"])},
        optional={
            "parameters": st.dictionaries(
                st.sampled_from(["binary_data", "classification"]), _PARAM_VALUES, max_size=2
            )
        },
    ),
    max_size=3,
)


def _length_prefixed(blobs: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in blobs)


@st.composite
def _v2_bodies(draw, size: int) -> tuple[dict, bytes]:
    """A request the way clients build one (``size``: the model's input size), then maybe
    broken: a field replaced, the binary section cut short or padded."""
    if draw(st.booleans()):
        images = draw(st.lists(_BLOBS, max_size=3))
        spec: dict = {"name": "image", "datatype": "BYTES", "shape": [len(images)]}
        section = _length_prefixed(images)
        json_data = [base64.b64encode(b).decode() for b in images]
    else:
        n = draw(st.integers(0, 2))
        value = draw(st.sampled_from([0.5, -1.0, float("nan"), float("inf"), 3.4e38]))
        pixels = struct.pack("<f", value) * (n * 3 * size * size)
        spec = {"name": "pixel_values", "datatype": "FP32", "shape": [n, 3, size, size]}
        section, json_data = pixels, [value] * (len(pixels) // 4)
    binary = b""
    if draw(st.booleans()):
        spec["parameters"] = {"binary_data_size": len(section)}
        binary = section
    else:
        spec["data"] = json_data
    for key, value in draw(
        st.dictionaries(
            st.sampled_from(["name", "datatype", "shape", "data", "parameters"]),
            st.one_of(_HOSTILE_SHAPES, _ANY_JSON, st.sampled_from(["image", "FP32", "BYTES"])),
            max_size=1,
        )
    ).items():
        spec[key] = value
    doc: dict = {"inputs": [spec]}
    if draw(st.booleans()):
        doc["outputs"] = draw(_OUTPUTS)
    if draw(st.booleans()):
        doc["parameters"] = {"binary_data_output": draw(st.booleans() | _ANY_JSON)}
    cut = draw(st.sampled_from(["keep", "keep", "keep", "short", "long"]))
    if cut == "short":
        binary = binary[: draw(st.integers(0, max(0, len(binary) - 1)))]
    elif cut == "long":
        binary += draw(st.binary(min_size=1, max_size=16))
    return doc, binary


@pytest.fixture(scope="module")
def v2_model(live) -> dict:
    info = httpx.get(f"{live.base}/v1/models", timeout=10).json()
    return {"url": f"{live.base}/v2/models/{info['name']}/infer", "size": info["input_size"]}


@settings(
    max_examples=V2_REQUESTS,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
@given(data=st.data())
def test_malformed_v2_requests_are_a_4xx_in_the_v2_shape_never_a_5xx(v2_model, data):
    doc, binary = data.draw(
        _v2_bodies(v2_model["size"]) | st.tuples(_ANY_JSON, st.binary(max_size=64))
    )
    header = json.dumps(doc).encode()
    headers = {"Content-Type": "application/json"}
    # The JSON header's length: the truth when there is a binary section; sometimes a lie.
    length = data.draw(
        st.sampled_from(["truth", "truth", "truth", "none"])
        | st.integers(-5, len(header) + len(binary) + 5).map(str)
        | st.from_regex(r"[!-~]{1,5}", fullmatch=True)  # any text a header value may be
    )
    if length == "truth" and binary:
        headers["Inference-Header-Content-Length"] = str(len(header))
    elif length not in ("truth", "none"):
        headers["Inference-Header-Content-Length"] = length
    resp = httpx.post(v2_model["url"], content=header + binary, headers=headers, timeout=10)
    assert resp.status_code in (200, 400, 413, 415), (resp.status_code, resp.text[:300])
    if resp.status_code != 200:
        body = resp.json()
        assert set(body) == {"error"} and isinstance(body["error"], str), body


# What a malformed call may be answered over gRPC: never INTERNAL or UNKNOWN, the 5xx of gRPC.
GRPC_CLIENT_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


@pytest.fixture(scope="module")
def live_grpc(start_module_server):
    port = free_port()
    server = start_module_server(max_upload_bytes=64 * 1024, grpc_port=port)
    info = httpx.get(f"{server.base}/v1/models", timeout=10).json()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    yield infer, info["name"], info["input_size"]
    channel.close()


_PARAMETERS = st.dictionaries(
    st.sampled_from(["classification", "binary_data", "x"]),
    st.sampled_from(
        [
            {"int64_param": 3},
            {"int64_param": -1},
            {"uint64_param": 10**12},
            {"bool_param": True},
            {"string_param": "5"},
            {"double_param": 2.5},
            {},
        ]
    ),
    max_size=2,
)


@st.composite
def _grpc_requests(draw, model: str, size: int):
    """A ModelInferRequest as clients build one, with any of its parts replaced or broken."""
    from service.v2 import messages

    # Mostly a well-formed tensor, so that calls get past the model and input checks.
    name, datatype = draw(
        st.sampled_from([("image", "BYTES")] * 3 + [("pixel_values", "FP32")] * 2)
        | st.tuples(
            st.sampled_from(["image", "pixel_values", "x", ""]),
            st.sampled_from(["BYTES", "FP32", "INT8", ""]),
        )
    )
    shape = draw(
        st.sampled_from([[1], [1], [2, 1], [1, 3, size, size], [0], [-1], [2**62], []])
        | st.lists(st.integers(-(2**63), 2**63 - 1), max_size=5)
    )
    tensor = {"name": name, "datatype": datatype, "shape": shape}
    if draw(st.booleans()):
        tensor["contents"] = draw(
            st.fixed_dictionaries({"bytes_contents": st.lists(_BLOBS, max_size=3)})
            | st.fixed_dictionaries(
                {"fp32_contents": st.lists(st.floats(width=32), max_size=3 * size * size)}
            )
        )
    request = messages.ModelInferRequest(
        model_name=draw(st.sampled_from([model] * 4 + ["", "nope"])),
        model_version=draw(st.sampled_from(["", "", "", "1", "2"])),
        inputs=[tensor] * draw(st.sampled_from([1, 1, 1, 0, 2])),
        outputs=[
            {"name": output, "parameters": draw(_PARAMETERS)}
            for output in draw(st.lists(st.sampled_from(["logits", "stage1", "nope"]), max_size=2))
        ],
    )
    raws = _BLOBS.map(lambda b: _length_prefixed([b])) | st.binary(max_size=64)
    if "contents" not in tensor or draw(st.booleans()):
        count = draw(st.sampled_from([len(request.inputs)] * 3 + [0, 2]))
        request.raw_input_contents.extend(draw(st.lists(raws, min_size=count, max_size=count)))
    data = request.SerializeToString()
    cut = draw(st.sampled_from(["keep"] * 6 + ["short", "garbage"]))
    if cut == "short":
        return data[: draw(st.integers(0, max(0, len(data) - 1)))]
    if cut == "garbage":
        return data + draw(st.binary(min_size=1, max_size=16))
    return data


@settings(
    max_examples=GRPC_REQUESTS,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
@given(data=st.data())
def test_malformed_grpc_inferences_are_client_errors_never_internal(live_grpc, data):
    infer, model, size = live_grpc
    try:
        infer(data.draw(_grpc_requests(model, size)), timeout=10)
    except grpc.RpcError as exc:
        assert exc.code() in GRPC_CLIENT_CODES, (exc.code(), exc.details())
