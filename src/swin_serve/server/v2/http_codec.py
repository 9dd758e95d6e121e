"""v2 HTTP bodies <-> InferenceRequest and outputs: JSON, and Triton's binary tensor extension.

With the extension, ``Inference-Header-Content-Length: n`` says the body's first n bytes are the
JSON header and the rest is binary data: each input with ``parameters.binary_data_size`` takes
that many bytes of it, in input order. Outputs asked for with ``binary_data`` (or every output,
with the request parameter ``binary_data_output``) come back the same way.
"""

from __future__ import annotations

import json
import re
from typing import Any

from swin_serve.server.errors import ApiError, ErrorCode
from swin_serve.server.v2.model import VERSION
from swin_serve.server.v2.tensors import (
    BYTES,
    FP32,
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
    invalid,
)

HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_MEDIA_TYPE = "application/octet-stream"


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """(JSON header, binary section) of a request body."""
    if header_length is None:
        return body, b""
    # Plain ASCII digits: int() would also take "1_0" or other scripts' digits.
    n = int(header_length) if re.fullmatch(r"[0-9]{1,12}", header_length) else -1
    if not 0 <= n <= len(body):
        raise invalid(
            f"{HEADER_LENGTH} must be between 0 and the body's {len(body)} bytes, "
            f"got {header_length[:40]!r}"
        )
    return body[:n], body[n:]


def parse_body(
    body: bytes, header_length: str | None, model: str, version: str
) -> InferenceRequest:
    """The request a whole body carries, with or without a binary section."""
    return parse_request(*split_body(body, header_length), model, version)


def parse_request(header: bytes, binary: bytes, model: str, version: str) -> InferenceRequest:
    """The request in ``header`` (JSON) and ``binary``; 400 for anything malformed."""
    doc = _json_object(header)
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise invalid("'inputs' must be a non-empty list")
    reader = _BinaryReader(binary)
    tensors = [_input(spec, reader) for spec in inputs]
    reader.check_consumed()
    request_id = _optional(doc, "id", "")
    if not isinstance(request_id, str):
        raise invalid("'id' must be a string")
    binary_default = _bool_param(_params(doc, "request"), "binary_data_output")
    outputs = _optional(doc, "outputs", [])
    if not isinstance(outputs, list):
        raise invalid("'outputs' must be a list")
    wanted = [_requested_output(spec, binary_default) for spec in outputs]
    return InferenceRequest(model, version, request_id, tensors, wanted, binary_default)


def _json_object(header: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(header)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise invalid(
            f"the request is not valid JSON ({str(exc)[:200]}); binary tensor data needs the "
            f"{HEADER_LENGTH} header"
        ) from exc
    if not isinstance(doc, dict):
        raise invalid("the request must be a JSON object")
    return doc


def _optional(spec: dict[str, Any], key: str, default: Any) -> Any:
    """An optional field: null counts as absent, as clients with optional fields send it."""
    value = spec.get(key)
    return default if value is None else value


def _params(spec: dict[str, Any], what: str) -> dict[str, Any]:
    params = _optional(spec, "parameters", {})
    if not isinstance(params, dict):
        raise invalid(f"{what} 'parameters' must be an object")
    return params


def _bool_param(params: dict[str, Any], key: str) -> bool:
    value = params.get(key, False)
    if not isinstance(value, bool):
        raise invalid(f"parameter {key!r} must be true or false")
    return value


def _int_param(params: dict[str, Any], key: str) -> int | None:
    value = params.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise invalid(f"parameter {key!r} must be a non-negative integer")
    return value


class _BinaryReader:
    """The binary section, handed out to the inputs that declare a binary_data_size."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._offset = 0

    def take(self, name: str, size: int) -> bytes:
        end = self._offset + size
        if end > len(self._data):
            raise invalid(
                f"input {name!r}: binary_data_size is {size}, but only "
                f"{len(self._data) - self._offset} bytes of binary data remain"
            )
        chunk, self._offset = self._data[self._offset : end], end
        return chunk

    def check_consumed(self) -> None:
        if self._offset != len(self._data):
            raise invalid(
                f"the binary section has {len(self._data)} bytes; the inputs' binary_data_size "
                f"add up to {self._offset}"
            )


def _input(spec: Any, reader: _BinaryReader) -> InputTensor:
    if not isinstance(spec, dict):
        raise invalid("each input must be an object")
    name, datatype = spec.get("name"), spec.get("datatype")
    if not isinstance(name, str) or not isinstance(datatype, str):
        raise invalid("each input needs a string 'name' and 'datatype'")
    shape = check_shape(name, spec.get("shape"))
    count = element_count(shape)
    size = _int_param(_params(spec, f"input {name!r}"), "binary_data_size")
    if datatype not in (FP32, BYTES):
        raise invalid(f"input {name!r}: datatype {datatype!r} is not served; use BYTES or FP32")
    if size is not None:
        if "data" in spec:
            raise invalid(f"input {name!r} has both 'data' and binary_data_size")
        raw = reader.take(name, size)
        if datatype == FP32:
            return InputTensor(name, datatype, shape, fp32_from_bytes(name, raw, count))
        return InputTensor(name, datatype, shape, deserialize_bytes(name, raw, count))
    if "data" not in spec:
        raise invalid(f"input {name!r} has no 'data' and no binary_data_size")
    if datatype == FP32:
        return InputTensor(name, datatype, shape, fp32_from_json(name, spec["data"], count))
    return InputTensor(name, datatype, shape, bytes_from_json(name, spec["data"], count))


def _requested_output(spec: Any, binary_default: bool) -> RequestedOutput:
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise invalid("each requested output must be an object with a string 'name'")
    params = _params(spec, f"output {spec['name']!r}")
    binary = _bool_param(params, "binary_data") if "binary_data" in params else binary_default
    classification = _int_param(params, "classification") or 0
    return RequestedOutput(spec["name"], binary, classification)


def response_body(
    request: InferenceRequest, outputs: list[OutputTensor], warning: str | None = None
) -> tuple[bytes, int | None]:
    """The response body, and its JSON header's length when a binary section follows.
    ``warning`` (random weights, say) goes in the response's parameters."""
    entries, sections = [], []
    for output in outputs:
        entry: dict[str, Any] = {
            "name": output.name,
            "datatype": output.datatype,
            "shape": list(output.shape),
        }
        if output.binary:
            raw = output.to_bytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            sections.append(raw)
        else:
            entry["data"] = output.to_json_data()
        entries.append(entry)
    doc: dict[str, Any] = {"model_name": request.model_name, "model_version": VERSION}
    if request.id:
        doc["id"] = request.id
    if warning:
        doc["parameters"] = {"warning": warning}
    doc["outputs"] = entries
    try:
        header = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
    except ValueError as exc:  # NaN or infinity, which JSON cannot carry
        raise ApiError(
            ErrorCode.INFERENCE_FAILED,
            "the model returned NaN or infinite values, which JSON cannot carry; "
            "ask for binary output (binary_data) to receive them",
        ) from exc
    if not sections:
        return header, None
    return header + b"".join(sections), len(header)
