"""Fuzzing the real server process: schemathesis over its OpenAPI schema, hypothesis over image
bytes and over Open Inference Protocol (v2) requests, over HTTP and gRPC.

Bounded: a fixed number of examples per operation, and derandomised so that CI is repeatable (a
failure found once is found again). Run with ``--hypothesis-seed`` unset locally to explore more.
"""

from __future__ import annotations

import base64
import io
import json
import re
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


UPLOAD_CAP = 64 * 1024


@pytest.fixture(scope="module")
def live(start_module_server):
    # A 64 KiB body cap keeps generated uploads small; everything else is the defaults.
    return start_module_server(max_upload_bytes=UPLOAD_CAP)


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
_GOOD_IMAGE = _jpeg()
_BLOBS = st.sampled_from([_GOOD_IMAGE, b"", b"\xff\xd8\xff\xe0", b"GIF89a", b"\x00" * 16])
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


def _same(a, b) -> bool:
    """Equal as JSON: ``True == 1`` in Python, not in a request."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _replacement_fault(spec: dict, key: str, value, images: list[bytes] | None) -> str | None:
    """What replacing ``spec[key]`` by ``value`` breaks (docs/api.md, "Inputs and outputs" and
    "Tensor data"), or None where the request stays well formed."""
    original = spec.get(key)
    if key in spec and _same(value, original):
        return None
    if key == "shape" and images is not None and _same(value, [len(images), 1]):
        return None  # BYTES takes [N] or [N, 1]
    if key == "parameters" and "data" in spec and (value is None or isinstance(value, dict)):
        return None  # null is absent; parameters other than binary_data_size are ignored
    return f"input {key!r} replaced by {value!r:.60}"


def _output_faults(outputs: list[dict], num_classes: int) -> list[str]:
    """What is wrong with the requested outputs, as the protocol and docs/api.md say."""
    names = [o["name"] for o in outputs]
    faults = [f"unknown output {n!r}" for n in names if n == "other"]
    if len(set(names)) != len(names):
        faults.append("an output requested twice")
    for output in outputs:
        params = output.get("parameters", {})
        k = params.get("classification")
        # 0 is accepted as "no classification" (docs/api.md says k is 1 to num_classes).
        if k is not None and not (_is_int(k) and 0 <= k <= num_classes):
            faults.append(f"classification {k!r:.40}")
        elif k and output["name"] != "logits":
            faults.append(f"classification of {output['name']!r}")
        if "binary_data" in params and not isinstance(params["binary_data"], bool):
            faults.append(f"binary_data {params['binary_data']!r:.40}")
    return faults


_FAULT_KINDS = ["none", "images", "pixels", "replace", "outputs", "parameters", "cut", "length"]


@st.composite
def _v2_bodies(draw, size: int, num_classes: int) -> tuple[dict, bytes, list[str], bool]:
    """A request the way clients build one (``size``: the model's input size), then maybe
    broken: a field replaced, the binary section cut short or padded. With it, every way it
    is malformed (none: it is well formed), and whether its header length may lie.

    Half are broken anywhere at once; the other half in one way at most, so that one check
    the server lost is not hidden behind another that refuses the same request."""
    chosen = draw(st.sampled_from(["any", *_FAULT_KINDS]))

    def may(kind: str) -> bool:
        return chosen in ("any", kind)

    faults = []
    images: list[bytes] | None = None
    if draw(st.booleans()):
        blobs = _BLOBS if may("images") else st.just(_GOOD_IMAGE)
        images = draw(st.lists(blobs, min_size=0 if may("images") else 1, max_size=3))
        spec: dict = {"name": "image", "datatype": "BYTES", "shape": [len(images)]}
        section = _length_prefixed(images)
        json_data = [base64.b64encode(b).decode() for b in images]
        n = len(images)
        if any(b != _GOOD_IMAGE for b in images):
            faults.append("an image file that is not one")
    else:
        n = draw(st.integers(0 if may("images") else 1, 2))
        values = [0.5, -1.0, 3.4e38] + ([float("nan"), float("inf")] if may("pixels") else [])
        value = draw(st.sampled_from(values))
        pixels = struct.pack("<f", value) * (n * 3 * size * size)
        spec = {"name": "pixel_values", "datatype": "FP32", "shape": [n, 3, size, size]}
        section, json_data = pixels, [value] * (len(pixels) // 4)
        if n and value in (float("nan"), float("inf")):
            faults.append(f"pixel values of {value}")
    if n == 0:
        faults.append("no images")
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
            max_size=1 if may("replace") else 0,
        )
    ).items():
        faults.append(_replacement_fault(spec, key, value, images))
        spec[key] = value
    doc: dict = {"inputs": [spec]}
    if draw(st.booleans()):
        doc["outputs"] = draw(_OUTPUTS if may("outputs") else _good_outputs(num_classes))
        faults.extend(_output_faults(doc["outputs"], num_classes))
    if draw(st.booleans()):
        flags = st.booleans() | _ANY_JSON if may("parameters") else st.booleans()
        doc["parameters"] = {"binary_data_output": draw(flags)}
        if not isinstance(doc["parameters"]["binary_data_output"], bool):
            faults.append("binary_data_output not true or false")
    cut = draw(
        st.sampled_from(["keep", "keep", "keep", "short", "long"] if may("cut") else ["keep"])
    )
    if cut == "short" and binary:
        binary = binary[: draw(st.integers(0, len(binary) - 1))]
        faults.append("binary section cut short")
    elif cut == "long":
        # Led by a byte that is not JSON whitespace: the padding is never part of the JSON.
        binary += b"\x00" + draw(st.binary(max_size=15))
        faults.append("binary section padded")
    return doc, binary, [f for f in faults if f], may("length")


def _good_outputs(num_classes: int):
    """Requested outputs as the docs allow them."""
    return st.lists(
        st.sampled_from(["logits", "embedding", "stage4"]), unique=True, max_size=3
    ).map(
        lambda names: [
            {"name": n, "parameters": {"classification": num_classes // 2}}
            if n == "logits"
            else {"name": n}
            for n in names
        ]
    )


@pytest.fixture(scope="module")
def v2_model(live) -> dict:
    info = httpx.get(f"{live.base}/v1/models", timeout=10).json()
    return {
        "url": f"{live.base}/v2/models/{info['name']}/infer",
        "size": info["input_size"],
        "num_classes": info["num_classes"],
    }


@settings(
    max_examples=V2_REQUESTS,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
@given(data=st.data())
def test_malformed_v2_requests_are_a_4xx_in_the_v2_shape_and_only_they(v2_model, data):
    doc, binary, faults, may_lie = data.draw(
        _v2_bodies(v2_model["size"], v2_model["num_classes"])
        # Never a request: a tensor needs "datatype", longer than any key _ANY_JSON makes.
        | st.tuples(
            _ANY_JSON, st.binary(max_size=64), st.just(["not an inference request"]), st.just(True)
        )
    )
    header = json.dumps(doc).encode()
    headers = {"Content-Type": "application/json"}
    # The JSON header's length: the truth when there is a binary section; sometimes a lie.
    length = data.draw(
        st.sampled_from(["truth", "truth", "truth", "none"])
        | st.integers(-5, len(header) + len(binary) + 5).map(str)
        | st.from_regex(r"[!-~]{1,5}", fullmatch=True)  # any text a header value may be
        if may_lie
        else st.just("truth")
    )
    if length == "truth" and binary:
        headers["Inference-Header-Content-Length"] = str(len(header))
    elif length not in ("truth", "none"):
        headers["Inference-Header-Content-Length"] = length
        if not (re.fullmatch(r"[0-9]+", length) and int(length) == len(header)):
            faults = [*faults, f"Inference-Header-Content-Length {length!r}"]
    elif length == "none" and binary:
        faults = [*faults, "a binary section without Inference-Header-Content-Length"]
    body = header + binary
    resp = httpx.post(v2_model["url"], content=body, headers=headers, timeout=10)
    # docs/api.md: 413 for a body over the cap (checked first), 400 invalid_tensor for a
    # malformed request, 400 or 415 for an image file that is not one; and 200 otherwise.
    if len(body) > UPLOAD_CAP:
        allowed = {413}
    elif faults:
        allowed = {400, 415} if faults == ["an image file that is not one"] else {400}
    else:
        allowed = {200}
    assert resp.status_code in allowed, (resp.status_code, faults, resp.text[:300], doc)
    if resp.status_code != 200:
        answer = resp.json()
        assert set(answer) == {"error"} and isinstance(answer["error"], str), answer


# What a malformed call may be answered over gRPC: never INTERNAL or UNKNOWN, the 5xx of gRPC.
GRPC_CLIENT_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


@pytest.fixture(scope="module")
def live_grpc(start_module_server):
    port = free_port()
    server = start_module_server(max_upload_bytes=UPLOAD_CAP, grpc_port=port)
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
