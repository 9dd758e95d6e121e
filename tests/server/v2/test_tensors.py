"""Open Inference Protocol tensors and codecs, without a server: BYTES and FP32 (de)serialisation,
HTTP bodies and gRPC messages parsed into InferenceRequests, and the checks against the model.

Every malformed input must be an ApiError ``invalid_tensor`` (400): any other exception would
reach the client as a 5xx (HTTP) or INTERNAL (gRPC).
"""

from __future__ import annotations

import base64
import json
import struct

import numpy as np
import pytest
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

from swin_serve.server.errors import ApiError, ErrorCode
from swin_serve.server.v2 import grpc_codec, http_codec, infer, messages, tensors
from swin_serve.server.v2.tensors import (
    BYTES,
    FP32,
    MAX_ELEMENTS,
    InferenceRequest,
    InputTensor,
    OutputTensor,
    RequestedOutput,
    bytes_from_json,
    check_shape,
    deserialize_bytes,
    element_count,
    fp32_from_bytes,
    fp32_from_json,
    serialize_bytes,
)
from tests.support.v2 import length_prefixed

SIZE = 32  # the fake model's image size (tests/server/conftest.py)


def assert_invalid(fn, *args, match: str = ""):
    """``fn(*args)`` is refused as the client's fault: invalid_tensor, 400, a useful message."""
    with pytest.raises(ApiError) as caught:
        fn(*args)
    error = caught.value
    assert error.code is ErrorCode.INVALID_TENSOR and error.status == 400
    assert match in error.message and len(error.message) <= 500, error.message
    return error


# -- BYTES ------------------------------------------------------------------------------------

ELEMENTS = [b"", b"a", b"\x00" * 300, bytes(range(256)), "é".encode()]


def test_bytes_round_trip_and_the_wire_format_is_tritons():
    raw = serialize_bytes(ELEMENTS)
    assert raw == length_prefixed(*ELEMENTS)
    assert deserialize_bytes("image", raw, len(ELEMENTS)) == ELEMENTS
    theirs = serialize_byte_tensor(np.array(ELEMENTS, dtype=np.object_)).item()
    assert theirs == raw
    assert list(deserialize_bytes_tensor(raw)) == ELEMENTS
    assert deserialize_bytes("image", b"", 0) == []


@pytest.mark.parametrize(
    ("raw", "count", "match"),
    [
        (b"\x01\x00", 1, "inside an element's length"),  # truncated length prefix
        (length_prefixed(b"abc") + b"\x05\x00\x00", 2, "inside an element's length"),
        (struct.pack("<I", 10) + b"abc", 1, "declares 10 bytes, 3 remain"),  # element overrun
        (struct.pack("<I", 0xFFFFFFFF), 1, "declares 4294967295 bytes"),
        (length_prefixed(b"a", b"b"), 3, "shape holds 3 elements, the data 2"),
        (length_prefixed(b"a", b"b"), 1, "the data holds more than the shape's 1 elements"),
        (b"", 1, "shape holds 1 elements, the data 0"),
    ],
)
def test_malformed_binary_bytes(raw, count, match):
    assert_invalid(deserialize_bytes, "image", raw, count, match=match)


def test_bytes_from_json_decodes_base64_flat_or_nested():
    encoded = [base64.b64encode(e).decode() for e in ELEMENTS[:4]]
    assert bytes_from_json("image", encoded, 4) == ELEMENTS[:4]
    assert bytes_from_json("image", [[encoded[0]], [encoded[1]]], 2) == ELEMENTS[:2]


@pytest.mark.parametrize(
    "data",
    [
        ["aGVsbG8"],  # padding missing
        ["aGVs bG8="],  # whitespace
        ["aGVs\nbG8="],
        ["a-_b"],  # the URL-safe alphabet
        ["aGVsbG8=="],  # too much padding
        ["é"],  # not ASCII
        [3],  # not a string
        [None],
        [{"b64": "aGVsbG8="}],
    ],
)
def test_bytes_in_json_must_be_strict_base64_strings(data):
    assert_invalid(bytes_from_json, "image", data, 1)


def test_bytes_in_json_count_and_depth():
    good = base64.b64encode(b"x").decode()
    assert_invalid(bytes_from_json, "image", [good, good], 3, match="shape holds 3 elements")
    nested: object = good
    for _ in range(20):
        nested = [nested]
    assert_invalid(bytes_from_json, "image", nested, 1, match="nested too deeply")


# -- FP32 -------------------------------------------------------------------------------------


def test_fp32_from_little_endian_bytes():
    values = np.array([1.5, -2.0, 3.25e-3, 0.0], dtype="<f4")
    out = fp32_from_bytes("pixel_values", values.tobytes(), 4)
    assert out.dtype == np.float32 and out.tolist() == values.tolist()
    big_endian = values.astype(">f4").tobytes()  # bytes in the wrong order read differently
    assert fp32_from_bytes("pixel_values", big_endian, 4).tolist() != values.tolist()
    assert_invalid(fp32_from_bytes, "pixel_values", values.tobytes()[:-1], 4, match="got 15")
    assert_invalid(fp32_from_bytes, "pixel_values", values.tobytes(), 5, match="take 20 bytes")


def test_fp32_from_json_flat_or_nested_row_major():
    nested = [[[1, 2.5], [3, 4]], [[5, 6], [7, -8e-3]]]
    out = fp32_from_json("pixel_values", nested, 8)
    assert out.dtype == np.float32 and out.shape == (8,)
    np.testing.assert_allclose(out, [1, 2.5, 3, 4, 5, 6, 7, -8e-3], rtol=1e-6)
    assert fp32_from_json("pixel_values", [], 0).shape == (0,)


@pytest.mark.parametrize(
    ("data", "count"),
    [
        ([1.0, 2.0], 3),  # wrong count
        ([[1.0, 2.0], [3.0]], 3),  # ragged
        (["1.5"], 1),  # a number in a string
        (["abc"], 1),
        ([1.0, "a"], 2),
        ([None], 1),  # null is not NaN
        ([True], 1),
        ([{"v": 1}], 1),
        ({"v": 1}, 1),
        ("abc", 1),
        ([10**400], 1),  # too large for any float
    ],
)
def test_fp32_json_data_must_be_numbers_of_the_right_count(data, count):
    assert_invalid(fp32_from_json, "pixel_values", data, count)


def test_fp32_json_nested_deeper_than_any_array_is_refused():
    nested: object = [1.0]
    for _ in range(200):
        nested = [nested]
    assert_invalid(fp32_from_json, "pixel_values", nested, 1)


# -- shapes -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape",
    [
        [-1],
        [1, -3],
        [True],
        [1.0],
        ["1"],
        [None],
        "4",
        4,
        None,
        {"0": 1},
        [[1]],
        [2**62, 2**62],  # more elements than an int64 can count
        [10**18] * 300,  # the product would have 5400 digits
        [10**4000, 1],
    ],
)
def test_hostile_shapes_are_refused(shape):
    assert_invalid(check_shape, "image", shape, match="shape")


def test_shapes_and_element_counts():
    assert check_shape("x", [2, 3, 4]) == (2, 3, 4)
    assert check_shape("x", []) == () and element_count(()) == 1
    assert element_count((3, 0, 5)) == 0
    assert element_count((MAX_ELEMENTS,)) == MAX_ELEMENTS
    assert check_shape("x", [2**62, 2**62, 0]) == (2**62, 2**62, 0)  # holds nothing
    assert element_count((2**40, 2**40, 2**40)) == MAX_ELEMENTS + 1  # capped, not exact


# -- HTTP bodies ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("length", "header", "binary"),
    [(None, b'{"a":1}xyz', b""), ("7", b'{"a":1}', b"xyz"), ("0", b"", b'{"a":1}xyz')],
)
def test_split_body(length, header, binary):
    assert http_codec.split_body(b'{"a":1}xyz', length) == (header, binary)


@pytest.mark.parametrize("length", ["-1", "11", "99999999999999999999", "7.0", "seven", "", "0x7"])
def test_split_body_refuses_a_header_length_outside_the_body(length):
    assert_invalid(http_codec.split_body, b'{"a":1}xyz', length, match=http_codec.HEADER_LENGTH)


def image_spec(n: int = 1, **extra) -> dict:
    spec = {"name": "image", "datatype": BYTES, "shape": [n]}
    if "parameters" not in extra and "data" not in extra:
        spec["data"] = [base64.b64encode(b"img%d" % i).decode() for i in range(n)]
    spec.update(extra)
    return spec


def parse_http(doc: dict | bytes, binary: bytes = b"") -> InferenceRequest:
    header = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return http_codec.parse_request(header, binary, "fake", "")


def test_http_json_request_parses():
    parsed = parse_http(
        {
            "id": "r1",
            "inputs": [image_spec(2)],
            "parameters": {"binary_data_output": True},
            "outputs": [
                {"name": "logits", "parameters": {"classification": 3, "binary_data": False}},
                {"name": "embedding"},
            ],
        }
    )
    assert (parsed.model_name, parsed.id, parsed.binary_outputs) == ("fake", "r1", True)
    assert parsed.inputs == [InputTensor("image", BYTES, (2,), [b"img0", b"img1"])]
    assert parsed.outputs == [
        RequestedOutput("logits", binary=False, classification=3),
        RequestedOutput("embedding", binary=True),  # the request's default
    ]


def test_http_binary_sections_are_handed_out_in_input_order():
    pixels = np.arange(6, dtype="<f4")
    images = length_prefixed(b"one", b"two")
    doc = {
        "inputs": [
            {"name": "a", "datatype": FP32, "shape": [2, 3]},
            {"name": "b", "datatype": BYTES, "shape": [2, 1]},
            {"name": "c", "datatype": FP32, "shape": [1], "data": [7]},
        ]
    }
    doc["inputs"][0]["parameters"] = {"binary_data_size": pixels.nbytes}
    doc["inputs"][1]["parameters"] = {"binary_data_size": len(images)}
    parsed = parse_http(doc, pixels.tobytes() + images)
    assert parsed.inputs[0].data.tolist() == pixels.tolist()  # type: ignore[union-attr]
    assert parsed.inputs[1].data == [b"one", b"two"]
    assert parsed.inputs[2].data.tolist() == [7.0]  # type: ignore[union-attr]


BINARY_IMAGE = length_prefixed(b"img")


@pytest.mark.parametrize(
    ("doc", "binary", "match"),
    [
        (b"{not json", b"", "not valid JSON"),
        (b"\xff\xfe\x00garbage", b"", "not valid JSON"),
        (b"[" * 100_000, b"", "not valid JSON"),  # the parser's RecursionError
        (b"[]", b"", "JSON object"),
        (b'"inputs"', b"", "JSON object"),
        ({}, b"", "'inputs'"),
        ({"inputs": []}, b"", "'inputs'"),
        ({"inputs": {"name": "image"}}, b"", "'inputs'"),
        ({"inputs": ["image"]}, b"", "each input must be an object"),
        ({"inputs": [{"name": "image", "shape": [1]}]}, b"", "'datatype'"),
        ({"inputs": [{"name": 3, "datatype": BYTES, "shape": [1]}]}, b"", "'name'"),
        ({"inputs": [image_spec(datatype="INT8")]}, b"", "'INT8' is not served"),
        ({"inputs": [image_spec(shape=[-1])]}, b"", "shape"),
        ({"inputs": [image_spec(shape=[True])]}, b"", "shape"),
        ({"inputs": [image_spec(shape=[10**19, 10**19])]}, b"", "shape"),
        ({"inputs": [image_spec(shape=None)]}, b"", "shape"),
        ({"inputs": [image_spec(data=None, parameters={})]}, b"", "must be strings"),
        ({"inputs": [image_spec(parameters={})]}, b"", "no 'data'"),
        (
            {"inputs": [image_spec(data=["eA=="], parameters={"binary_data_size": 7})]},
            BINARY_IMAGE,
            "both 'data' and binary_data_size",
        ),
        ({"inputs": [image_spec(parameters=[])]}, b"", "'parameters' must be an object"),
        ({"inputs": [image_spec(parameters={"binary_data_size": "7"})]}, BINARY_IMAGE, "size"),
        ({"inputs": [image_spec(parameters={"binary_data_size": -1})]}, BINARY_IMAGE, "size"),
        ({"inputs": [image_spec(parameters={"binary_data_size": 7.0})]}, BINARY_IMAGE, "size"),
        ({"inputs": [image_spec(parameters={"binary_data_size": True})]}, BINARY_IMAGE, "size"),
        # binary_data_size adding up to less than the binary section, and to more
        (
            {"inputs": [image_spec(parameters={"binary_data_size": 7})]},
            BINARY_IMAGE + b"junk",
            "has 11 bytes; the inputs' binary_data_size add up to 7",
        ),
        ({"inputs": [image_spec(parameters={"binary_data_size": 8})]}, BINARY_IMAGE, "only 7"),
        ({"inputs": [image_spec(parameters={"binary_data_size": 6})]}, BINARY_IMAGE, "2 remain"),
        ({"inputs": [image_spec()]}, BINARY_IMAGE, "add up to 0"),  # no input claims it
        (
            {"inputs": [image_spec(2, parameters={"binary_data_size": 7})]},
            BINARY_IMAGE,
            "shape holds 2 elements, the data 1",
        ),
        ({"inputs": [image_spec()], "id": 7}, b"", "'id'"),
        ({"inputs": [image_spec()], "parameters": "yes"}, b"", "'parameters'"),
        (
            {"inputs": [image_spec()], "parameters": {"binary_data_output": 1}},
            b"",
            "binary_data_output",
        ),
        ({"inputs": [image_spec()], "outputs": {"name": "logits"}}, b"", "'outputs'"),
        ({"inputs": [image_spec()], "outputs": ["logits"]}, b"", "string 'name'"),
        ({"inputs": [image_spec()], "outputs": [{"name": None}]}, b"", "string 'name'"),
        (
            {"inputs": [image_spec()], "outputs": [{"name": "logits", "parameters": 1}]},
            b"",
            "'parameters' must be an object",
        ),
        (
            {
                "inputs": [image_spec()],
                "outputs": [{"name": "logits", "parameters": {"binary_data": "true"}}],
            },
            b"",
            "binary_data",
        ),
    ]
    + [
        (
            {
                "inputs": [image_spec()],
                "outputs": [{"name": "logits", "parameters": {"classification": k}}],
            },
            b"",
            "classification",
        )
        for k in ("3", 2.5, -1, True, [3])
    ],
)
def test_malformed_http_requests(doc, binary, match):
    assert_invalid(parse_http, doc, binary, match=match)


def test_http_response_body_with_and_without_a_binary_section():
    request = InferenceRequest("fake", id="r7")
    logits = np.array([[1.5, -2.0]], dtype=np.float32)
    body, length = http_codec.response_body(request, [OutputTensor("x", FP32, (1, 2), logits)])
    assert length is None
    assert json.loads(body) == {
        "model_name": "fake",
        "model_version": "1",
        "id": "r7",
        "outputs": [{"name": "x", "datatype": FP32, "shape": [1, 2], "data": [1.5, -2.0]}],
    }
    binary = OutputTensor("x", FP32, (1, 2), logits, binary=True)
    labels = OutputTensor("c", BYTES, (1, 1), [b"1.500000:0:cat"], binary=True)
    body, length = http_codec.response_body(request, [binary, labels])
    header = json.loads(body[:length])
    assert [o["parameters"]["binary_data_size"] for o in header["outputs"]] == [8, 18]
    assert "data" not in header["outputs"][0]
    assert body[length : length + 8] == logits.astype("<f4").tobytes()
    assert body[length + 8 :] == length_prefixed(b"1.500000:0:cat")


# -- gRPC messages ----------------------------------------------------------------------------


def grpc_request(**fields) -> messages.ModelInferRequest:
    return messages.ModelInferRequest(model_name="fake", **fields)


def image_tensor(n: int = 1, **fields) -> dict:
    return {"name": "image", "datatype": BYTES, "shape": [n], **fields}


def classification(**param) -> dict:
    return {"name": "logits", "parameters": {"classification": messages.InferParameter(**param)}}


def test_grpc_request_parses_raw_and_typed_contents():
    raw = grpc_request(
        id="g1", inputs=[image_tensor(2)], raw_input_contents=[length_prefixed(b"a", b"bc")]
    )
    parsed = grpc_codec.parse_request(raw)
    assert (parsed.model_name, parsed.id) == ("fake", "g1")
    assert parsed.inputs == [InputTensor("image", BYTES, (2,), [b"a", b"bc"])]
    typed = grpc_request(inputs=[image_tensor(2, contents={"bytes_contents": [b"a", b"bc"]})])
    assert grpc_codec.parse_request(typed).inputs == parsed.inputs

    pixels = {"name": "pixel_values", "datatype": FP32, "shape": [1, 2]}
    as_raw = grpc_request(inputs=[pixels], raw_input_contents=[np.array([1, 2], "<f4").tobytes()])
    as_typed = grpc_request(inputs=[{**pixels, "contents": {"fp32_contents": [1, 2]}}])
    for message in (as_raw, as_typed):
        assert grpc_codec.parse_request(message).inputs[0].data.tolist() == [1.0, 2.0]

    outputs = [classification(int64_param=3), classification(uint64_param=2), {"name": "x"}]
    assert [
        o.classification for o in grpc_codec.parse_request(grpc_request(outputs=outputs)).outputs
    ] == [3, 2, 0]


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"inputs": [image_tensor()], "raw_input_contents": [b"", b""]}, "2 entries for 1"),
        ({"inputs": [image_tensor(), image_tensor()], "raw_input_contents": [b""]}, "1 entries"),
        (
            {
                "inputs": [image_tensor(contents={"bytes_contents": [b"a"]})],
                "raw_input_contents": [length_prefixed(b"a")],
            },
            "both contents and raw_input_contents",
        ),
        ({"inputs": [image_tensor(contents={"bytes_contents": [b"a", b"b"]})]}, "the data 2"),
        ({"inputs": [image_tensor(contents={"fp32_contents": [1.0]})]}, "the data 0"),
        ({"inputs": [image_tensor()], "raw_input_contents": [b"\x09\x00\x00\x00ab"]}, "9 bytes"),
        ({"inputs": [image_tensor()], "raw_input_contents": [b"\x01"]}, "element's length"),
        ({"inputs": [image_tensor(datatype="UINT8")]}, "'UINT8' is not served"),
        ({"inputs": [image_tensor(shape=[-1])]}, "shape"),
        ({"inputs": [image_tensor(shape=[2**62, 2**62])]}, "shape"),
        ({"inputs": [image_tensor(shape=[2**63 - 1] * 1000)]}, "shape"),
        (
            {
                "inputs": [{"name": "pixel_values", "datatype": FP32, "shape": [1, 2]}],
                "raw_input_contents": [b"\x00" * 7],
            },
            "take 8 bytes, got 7",
        ),
        (
            {
                "inputs": [
                    {
                        "name": "pixel_values",
                        "datatype": FP32,
                        "shape": [3],
                        "contents": {"fp32_contents": [1.0]},
                    }
                ]
            },
            "shape holds 3 elements",
        ),
        ({"outputs": [classification(string_param="3")]}, "must be an integer"),
        ({"outputs": [classification(bool_param=True)]}, "must be an integer"),
        ({"outputs": [classification(double_param=3.0)]}, "must be an integer"),
        ({"outputs": [classification(int64_param=-1)]}, "non-negative"),
    ],
)
def test_malformed_grpc_requests(fields, match):
    assert_invalid(grpc_codec.parse_request, grpc_request(**fields), match=match)


# -- the checks against the served model --------------------------------------------------------


def request_with(*inputs: InputTensor, outputs=()) -> InferenceRequest:
    return InferenceRequest("fake", inputs=list(inputs), outputs=list(outputs))


def images(n: int, shape=None) -> InputTensor:
    return InputTensor("image", BYTES, tuple(shape or (n,)), [b"x"] * n)


def pixels(n: int, shape=None, datatype=FP32) -> InputTensor:
    shape = tuple(shape or (n, 3, SIZE, SIZE))
    return InputTensor("pixel_values", datatype, shape, np.zeros(element_count(shape), np.float32))


def test_image_counts(manifest):
    for tensor, n in [(images(3), 3), (images(2, (2, 1)), 2), (pixels(4), 4), (images(8), 8)]:
        assert infer.image_count(request_with(tensor), manifest, 8) == n


@pytest.mark.parametrize(
    ("inputs", "match"),
    [
        ((), "exactly one input"),
        ((images(1), images(1)), "exactly one input"),
        ((images(1), pixels(1)), "exactly one input"),
        ((images(0),), "batch of 0"),
        ((pixels(0),), "batch of 0"),
        ((images(9),), "batch of 9; send 1 to 8"),
        ((pixels(9),), "batch of 9"),
        ((InputTensor("IMAGE", BYTES, (1,), [b"x"]),), "unknown input 'IMAGE'"),
        ((InputTensor("image", FP32, (1,), np.zeros(1, np.float32)),), "is BYTES"),
        ((pixels(1, datatype=BYTES),), "is FP32"),
        ((images(2, (1, 2)),), "[N] or [N, 1]"),
        ((images(1, (1, 1, 1)),), "[N] or [N, 1]"),
        ((InputTensor("image", BYTES, (), [b"x"]),), "[N] or [N, 1]"),
        ((pixels(1, (1, 3, SIZE, SIZE + 1)),), f"[N, 3, {SIZE}, {SIZE}]"),
        ((pixels(1, (3, SIZE, SIZE)),), f"[N, 3, {SIZE}, {SIZE}]"),
    ],
)
def test_inputs_that_do_not_fit_the_model(manifest, inputs, match):
    assert_invalid(infer.image_count, request_with(*inputs), manifest, 8, match=match)


def test_outputs_default_to_every_output_with_the_requests_binary_default(manifest):
    request = request_with(images(1))
    request.binary_outputs = True
    wanted = infer.check_outputs(request, manifest)
    assert [o.name for o in wanted] == list(manifest.outputs)
    assert all(o.binary and not o.classification for o in wanted)


@pytest.mark.parametrize(
    ("outputs", "match"),
    [
        ([RequestedOutput("probabilities")], "unknown output 'probabilities'"),
        ([RequestedOutput("logits"), RequestedOutput("logits")], "requested twice"),
        (
            [RequestedOutput("logits"), RequestedOutput("logits", classification=2)],
            "requested twice",
        ),
        ([RequestedOutput("embedding", classification=1)], "applies to 'logits'"),
        ([RequestedOutput("logits", classification=11)], "between 1 and 10, got 11"),
        ([RequestedOutput("logits", classification=2**64 - 1)], "between 1 and 10"),
    ],
)
def test_outputs_that_do_not_fit_the_model(manifest, outputs, match):
    request = request_with(images(1), outputs=outputs)
    assert_invalid(infer.check_outputs, request, manifest, match=match)


def test_classification_of_every_class_is_allowed(manifest):
    wanted = [RequestedOutput("logits", classification=10), RequestedOutput("stage4")]
    assert infer.check_outputs(request_with(images(1), outputs=wanted), manifest) == wanted


def test_the_bytes_element_cap_is_the_most_images_any_configuration_allows():
    from swin_serve.server.settings import Settings

    field = Settings.model_fields["max_images_per_request"]
    assert next(m.le for m in field.metadata if hasattr(m, "le")) == tensors.MAX_BYTES_ELEMENTS
    with pytest.raises(ApiError, match="at most 1000 images"):
        tensors.deserialize_bytes("image", b"", tensors.MAX_BYTES_ELEMENTS + 1)
