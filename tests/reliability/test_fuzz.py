"""Fuzzing the real server process: schemathesis over its OpenAPI schema, hypothesis over image
bytes and over Open Inference Protocol (v2) requests, over HTTP and gRPC.

Bounded: a fixed number of examples per operation, and derandomised so that CI is repeatable (a
failure found once is found again). Run with ``--hypothesis-seed`` unset locally to explore more.
"""

from __future__ import annotations

import base64
import io
import json
import math
import re
import struct
import zlib

import grpc
import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from schemathesis.specs.openapi.checks import status_code_conformance

from tests.support import free_port
from tests.support.v2 import length_prefixed

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
        section = length_prefixed(*images)
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
        if n and not math.isfinite(value):
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


# -- Open Inference Protocol (v2) over gRPC ---------------------------------------------------

# docs/api.md, "Errors and gRPC statuses": what each kind of fault is answered with.
INVALID = grpc.StatusCode.INVALID_ARGUMENT  # 400, 415, 422: a malformed tensor or parameter
UNKNOWN_MODEL = grpc.StatusCode.NOT_FOUND  # 404: no such model or version
TOO_LARGE = grpc.StatusCode.RESOURCE_EXHAUSTED  # 413: over SWIN_MAX_UPLOAD_BYTES, or the pixels


@pytest.fixture(scope="module")
def live_grpc(start_module_server):
    port = free_port()
    server = start_module_server(max_upload_bytes=UPLOAD_CAP, grpc_port=port)
    info = httpx.get(f"{server.base}/v1/models", timeout=10).json()
    metadata = httpx.get(f"{server.base}/v2/models/{info['name']}", timeout=10).json()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    yield {
        "infer": infer,
        "model": info["name"],
        "size": info["input_size"],
        "num_classes": info["num_classes"],
        "outputs": [o["name"] for o in metadata["outputs"]],
    }
    channel.close()


def _png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header (CRC intact) declares ``width`` x ``height``: refused before decoding."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    png = bytearray(buf.getvalue())
    png[16:24] = struct.pack(">II", width, height)  # IHDR's data starts at byte 16
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    return bytes(png)


# Over SWIN_MAX_IMAGE_PIXELS (40 million by default): 413 image_too_large.
_HUGE_IMAGE = _png_declaring(10_000, 10_000)
# An image file and what it is answered with, when it is not a good one.
_GRPC_BLOBS = st.sampled_from(
    [(_GOOD_IMAGE, None)] * 3
    + [(b, INVALID) for b in (b"", b"\xff\xd8\xff\xe0", b"GIF89a", b"\x00" * 16)]
    + [(_HUGE_IMAGE, TOO_LARGE)]
)
# InferParameter values: classification must be an int64 or uint64 from 0 to num_classes.
_INTEGER_PARAMETERS = ["int64_param", "uint64_param"]
_OTHER_PARAMETERS = [
    {"bool_param": True},
    {"string_param": "5"},
    {"double_param": 2.5},
    {},
]


def _classification_fault(output: str, parameter: dict, num_classes: int) -> str | None:
    if list(parameter) not in ([p] for p in _INTEGER_PARAMETERS):
        return f"classification as {parameter!r}"
    (k,) = parameter.values()
    if not 0 <= k <= num_classes:
        return f"classification {k}"
    if k and output != "logits":
        return f"classification of {output!r}"
    return None


def _grpc_output_faults(outputs: list[dict], known: list[str], num_classes: int) -> list[str]:
    names = [o["name"] for o in outputs]
    faults = [f"unknown output {n!r}" for n in names if n not in known]
    if len(set(names)) != len(names):
        faults.append("an output requested twice")
    for output in outputs:
        if "classification" in output["parameters"]:
            param = output["parameters"]["classification"]
            faults.append(_classification_fault(output["name"], param, num_classes))
    return [f for f in faults if f]


def _last_field_start(request) -> int:
    """Where the serialized ``request``'s last field (or repeated element) begins: a cut after
    that and before the end is inside it, so never a message protobuf can read."""
    rest = type(request)()
    rest.CopyFrom(request)
    for field in sorted(rest.DESCRIPTOR.fields, key=lambda f: -f.number):
        value = getattr(rest, field.name)
        if field.is_repeated and len(value):
            del value[-1]
            break
        if not field.is_repeated and field.message_type is None and value:
            rest.ClearField(field.name)
            break
    return len(rest.SerializeToString())


_GRPC_FAULT_KINDS = [
    "none", "model", "version", "images", "pixels", "replace", "inputs", "data", "outputs",
    "cut", "large",
]  # fmt: skip


@st.composite
def _grpc_calls(draw, live: dict) -> tuple[bytes, list[tuple[grpc.StatusCode, str]], bool]:
    """A ModelInferRequest message the way clients build one, then maybe broken; every way it
    is malformed, each with the status docs/api.md answers it with (none: well formed); and
    whether protobuf can still read it.

    As for HTTP, half are broken anywhere at once and the other half in one way at most, so
    that one check the server lost is not hidden behind another that refuses the same call."""
    from swin_serve.server.v2 import messages

    size, num_classes = live["size"], live["num_classes"]
    chosen = draw(st.sampled_from(["any", *_GRPC_FAULT_KINDS]))

    def may(kind: str) -> bool:
        return chosen in ("any", kind)

    faults: list[tuple[grpc.StatusCode, str | None]] = []
    model = draw(
        st.sampled_from([live["model"]] * 4 + ["", "nope"])
        if may("model")
        else st.just(live["model"])
    )
    if model != live["model"]:
        faults.append((UNKNOWN_MODEL, f"model {model!r}"))
    version = draw(st.sampled_from(["", "", "1"] + (["2", "x"] if may("version") else [])))
    if version not in ("", "1"):
        faults.append((UNKNOWN_MODEL, f"version {version!r}"))

    # The input, its data in binary form and as contents; n images.
    if draw(st.booleans()):
        blobs = _GRPC_BLOBS if may("images") else st.just((_GOOD_IMAGE, None))
        images = draw(st.lists(blobs, min_size=0 if may("images") else 1, max_size=3))
        n = len(images)
        faults.extend((s, "an image file that is not a good one") for _, s in images if s)
        files = [b for b, _ in images]
        shape = draw(st.sampled_from([[n], [n, 1]]))
        tensor = {"name": "image", "datatype": "BYTES", "shape": shape}
        raw, contents = length_prefixed(*files), {"bytes_contents": files}
    else:
        n = draw(st.integers(0 if may("images") else 1, 2))
        values = [0.5, -1.0, 3.4e38] + ([float("nan"), float("inf")] if may("pixels") else [])
        value = draw(st.sampled_from(values))
        count = n * 3 * size * size
        tensor = {"name": "pixel_values", "datatype": "FP32", "shape": [n, 3, size, size]}
        raw, contents = struct.pack("<f", value) * count, {"fp32_contents": [value] * count}
        if n and not math.isfinite(value):  # NaN is not even equal to itself
            faults.append((INVALID, f"pixel values of {value}"))
    if n == 0:
        faults.append((INVALID, "no images"))
    equivalent = {"shape": [[n], [n, 1]] if tensor["name"] == "image" else [tensor["shape"]]}
    if may("replace") and draw(st.booleans()):
        key = draw(st.sampled_from(["name", "datatype", "shape"]))
        value = draw(
            {
                "name": st.sampled_from(["image", "pixel_values", "x", ""]),
                "datatype": st.sampled_from(["BYTES", "FP32", "INT8", ""]),
                "shape": st.sampled_from([[1], [2, 1], [n, 1], [1, 3, size, size], [0], [-1], []])
                | st.lists(st.integers(-(2**63), 2**63 - 1), max_size=5),
            }[key]
        )
        if value != tensor[key] and value not in equivalent.get(key, []):
            faults.append((INVALID, f"input {key!r} replaced by {value!r:.60}"))
        tensor[key] = value

    # How the data travels: raw_input_contents (one entry per input) or the tensor's contents.
    inputs = draw(st.sampled_from([1, 1, 1, 0, 2] if may("inputs") else [1]))
    if inputs != 1:
        faults.append((INVALID, f"{inputs} inputs"))
    # In "data", always one fault of the data's: one among many would rarely be drawn alone.
    broken = ["both", "neither", "extra", "short"]
    spoilt = draw(
        st.sampled_from(broken if chosen == "data" else ["none"] * 4 + broken)
        if may("data")
        else st.just("none")
    )
    carried = spoilt if spoilt in broken[:3] else draw(st.sampled_from(["raw", "contents"]))
    if carried in ("both", "contents"):
        tensor["contents"] = contents
    raws = [raw] * inputs if carried in ("raw", "both", "extra") else []
    if carried == "extra":
        raws.append(raw)
    if carried == "both" and inputs:
        faults.append((INVALID, "both contents and raw_input_contents"))
    elif carried == "extra":
        faults.append((INVALID, f"{len(raws)} raw_input_contents for {inputs} inputs"))
    elif carried == "neither" and n:
        faults.append((INVALID, "no data"))
    if spoilt == "short" and n:  # the data one element short, or one over
        if tensor.get("contents"):
            field = next(iter(contents))
            tensor["contents"] = {field: contents[field][:-1]}
            faults.append((INVALID, "contents one element short"))
        elif raws:
            raws = [r + b"\x01" for r in raws]
            faults.append((INVALID, "raw_input_contents with a byte past the data"))

    outputs = [
        {"name": name, "parameters": params}
        for name, params in draw(
            st.lists(
                st.tuples(
                    st.sampled_from([*live["outputs"], "nope"]),
                    st.fixed_dictionaries(
                        {},
                        optional={
                            "classification": st.tuples(
                                st.sampled_from(_INTEGER_PARAMETERS),
                                st.integers(-2, num_classes + 2) | st.just(2**63 - 1),
                            ).map(lambda p: {p[0]: max(p[1], 0) if p[0][0] == "u" else p[1]})
                            | st.sampled_from(_OTHER_PARAMETERS),
                            "x": st.sampled_from(_OTHER_PARAMETERS),  # ignored
                        },
                    ),
                ),
                max_size=3,
            )
            if may("outputs")
            else st.lists(st.sampled_from(live["outputs"]), unique=True, max_size=3).map(
                lambda names: [
                    (name, {"classification": {"int64_param": num_classes // 2}})
                    if name == "logits"
                    else (name, {})
                    for name in names
                ]
            )
        )
    ]
    faults.extend((INVALID, f) for f in _grpc_output_faults(outputs, live["outputs"], num_classes))
    request = messages.ModelInferRequest(
        model_name=model,
        model_version=version,
        inputs=[tensor] * inputs,
        outputs=outputs,
        raw_input_contents=raws,
    )
    data = request.SerializeToString()
    if may("large") and draw(st.booleans()):  # around SWIN_MAX_UPLOAD_BYTES, with an id
        request.id = "x" * draw(st.integers(max(0, UPLOAD_CAP - len(data) - 8), UPLOAD_CAP))
        data = request.SerializeToString()
    cut = draw(
        st.sampled_from(["keep", "keep", "keep", "short", "long"] if may("cut") else ["keep"])
    )
    if cut == "short" and data:
        data = data[: draw(st.integers(_last_field_start(request) + 1, len(data) - 1))]
        faults.append((INVALID, "message cut inside its last field"))
    elif cut == "long":
        # Led by a tag of field number 0, which no message has: never read as a field.
        data += b"\x00" + draw(st.binary(max_size=15))
        faults.append((INVALID, "message padded"))
    return data, [(status, f) for status, f in faults if f], cut == "keep" or not data


@settings(
    max_examples=GRPC_REQUESTS,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
@given(data=st.data())
def test_malformed_grpc_inferences_get_their_documented_status_and_only_they_succeed(
    live_grpc, data
):
    message, faults, readable = data.draw(_grpc_calls(live_grpc))
    # docs/api.md: RESOURCE_EXHAUSTED for a message over the cap (gRPC refuses it from its
    # length prefix, unread); INVALID_ARGUMENT for one protobuf cannot read (nothing else in
    # it can be); otherwise the status of any fault it carries, and OK only for none.
    if len(message) > UPLOAD_CAP:
        allowed = {TOO_LARGE}
    elif not readable:
        allowed = {INVALID}
    elif faults:
        allowed = {status for status, _ in faults}
    else:
        allowed = {grpc.StatusCode.OK}
    try:
        live_grpc["infer"](message, timeout=10)
        code, details = grpc.StatusCode.OK, ""
    except grpc.RpcError as exc:
        code, details = exc.code(), exc.details()
    assert code in allowed, (code, details, faults, len(message))
